"""Metrics on cases with known answers, the empty-mask conventions, results.csv, and bad inputs."""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.evaluation import METRICS, evaluate_files
from HyperSpaceSegmentationLib.evaluation.metrics import Comparison, compute
from HyperSpaceSegmentationLib.io.images import write_labels

from conftest import OBLIQUE


def ball(shape, spacing, radius, centre=None, norm=2):
    """Mask of points within ``radius`` mm of the centre (norm 2: sphere, inf: cube); array-axis order."""
    centre = centre if centre is not None else [(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    axes = np.meshgrid(*[np.arange(n) * s - c for n, s, c in zip(shape, spacing, centre)], indexing="ij")
    if norm == 2:
        return np.sqrt(sum(a ** 2 for a in axes)) <= radius
    return np.max(np.abs(np.stack(axes)), axis=0) <= radius


def scores(reference, prediction, spacing, tolerance=1.0, **kwargs):
    comparison = Comparison(reference, prediction, spacing, tolerance, **kwargs)
    return {name: compute(metric, comparison) for name, metric in METRICS.items()} | {"empty": comparison.empty}


GRIDS = {"isotropic": (1.0, 1.0, 1.0), "anisotropic": (2.5, 0.6, 0.7)}


def shape_for(spacing, extent=64.0):
    return tuple(int(extent / s) for s in spacing)


def test_identical_masks_are_perfect():
    spacing = GRIDS["anisotropic"]
    mask = ball(shape_for(spacing), spacing, 12.0)
    s = scores(mask, mask, spacing)
    assert s["dice"] == s["jaccard"] == s["surf_dice"] == s["precision"] == s["recall"] == s["fbeta"] == 1.0
    assert s["hausdorff"] == s["haus95"] == s["avg_surf"] == s["mae"] == s["abs_vol_diff"] == 0.0
    assert s["conformity"] == 1.0 and s["empty"] == "none"


@pytest.mark.parametrize("grid", GRIDS)
def test_concentric_spheres_give_the_radius_difference(grid):
    spacing = GRIDS[grid]
    shape = shape_for(spacing)
    inner, outer = ball(shape, spacing, 10.0), ball(shape, spacing, 14.0)
    s = scores(inner, outer, spacing)
    step = max(spacing)
    for name in ("hausdorff", "haus95", "avg_surf"):
        assert s[name] == pytest.approx(4.0, abs=step / 2 + 0.3), name
    assert s["surf_dice"] == 0.0  # every element is ~4 mm from the other surface
    assert scores(inner, outer, spacing, tolerance=4.0 - step)["surf_dice"] < 0.2
    assert scores(inner, outer, spacing, tolerance=4.0 + step)["surf_dice"] == 1.0
    volume_ratio = (10 / 14) ** 3
    assert s["dice"] == pytest.approx(2 * volume_ratio / (1 + volume_ratio), abs=0.02)
    assert s["vol_pred"] == pytest.approx(4 / 3 * math.pi * 14 ** 3 / 1000, rel=0.03)


@pytest.mark.parametrize("grid", GRIDS)
def test_concentric_cubes_corners_and_faces(grid):
    spacing = GRIDS[grid]
    shape = shape_for(spacing)
    inner, outer = ball(shape, spacing, 8.0, norm=np.inf), ball(shape, spacing, 12.0, norm=np.inf)
    comparison = Comparison(inner, outer, spacing)
    # the gap between the voxelised faces along each axis (4 mm up to the grid's rounding)
    gaps = np.array([(np.ptp(np.flatnonzero(outer.any(axis=tuple(a for a in range(3) if a != axis))))
                      - np.ptp(np.flatnonzero(inner.any(axis=tuple(a for a in range(3) if a != axis))))) / 2 * s
                     for axis, s in enumerate(spacing)])
    assert np.allclose(gaps, 4.0, atol=max(spacing))
    # every point of the inner cube's surface lies one gap away from the outer one ...
    distances = comparison.surfaces.reference_to_prediction
    assert gaps.min() - 1e-4 <= distances.min() and distances.max() <= gaps.max() + 1e-4
    # ... while the outer corners lie sqrt(sum of squared gaps) from the inner cube (4 sqrt(3) when isotropic)
    assert compute(METRICS["hausdorff"], comparison) == pytest.approx(np.linalg.norm(gaps), abs=1e-4)


def test_disjoint_cubes():
    spacing = (1.0, 1.0, 1.0)
    shape = (20, 20, 60)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[5:15, 5:15, 5:15] = True
    b[5:15, 5:15, 35:45] = True
    s = scores(a, b, spacing)
    assert s["dice"] == 0.0 and s["surf_dice"] == 0.0 and math.isnan(s["conformity"])
    assert s["hausdorff"] == pytest.approx(30.0, abs=1.0)  # a face of one to the far face of the other


def test_symmetric_metrics_are_symmetric():
    spacing = GRIDS["anisotropic"]
    shape = shape_for(spacing)
    a = ball(shape, spacing, 12.0)
    b = ball(shape, spacing, 9.0, centre=[33.0, 30.0, 29.0])
    ab, ba = scores(a, b, spacing), scores(b, a, spacing)
    for name in ("dice", "jaccard", "hausdorff", "haus95", "avg_surf", "surf_dice", "abs_vol_diff", "mae", "conformity"):
        assert ab[name] == pytest.approx(ba[name], rel=1e-9), name
    assert ab["precision"] == pytest.approx(ba["recall"])


def test_prediction_inside_the_reference_has_full_precision_and_partial_recall():
    """A prediction that is a strict subset of the reference: TP 400, FP 0, FN 600 voxels of 2 mm^3."""
    reference, prediction = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    reference[1:11, 1:11, 1:11] = True  # 1000 voxels
    prediction[1:11, 1:11, 1:5] = True  # 400 of them
    s = scores(reference, prediction, (2.0, 1.0, 1.0))
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(0.4)
    assert s["dice"] == pytest.approx(800 / 1400) and s["jaccard"] == pytest.approx(0.4)
    assert s["specificity"] == 1.0 and s["rel_vol_diff"] == pytest.approx(-0.6)
    assert s["vol_ref"] == pytest.approx(2.0) and s["vol_pred"] == pytest.approx(0.8)
    assert s["fbeta"] == pytest.approx(0.52 / 0.7)  # 1.3 * 1 * 0.4 / (0.3 * 1 + 0.4)
    swapped = scores(prediction, reference, (2.0, 1.0, 1.0))
    assert swapped["precision"] == pytest.approx(0.4) and swapped["recall"] == 1.0


# Reference values from DeepMind's surface-distance library (PyPI surface-distance 0.1, installed in a scratch
# environment only): r = compute_surface_distances(reference, prediction, spacing); haus95 and hausdorff are
# compute_robust_hausdorff(r, 95 / 100), surf_dice is compute_surface_dice_at_tolerance(r, 1.0), avg_surf is
# sum(distances * surfel areas) over both directions / sum of both areas. Boxes are [low, high) per array axis.
# The same percentile with equal weights per element gives 5.657, 5.0, 9.0 and 10.28 mm: far outside the tolerance.
DEEPMIND_CASES = {
    "grown box, 4 x 4 x 1 mm": ((10, 16, 16), (4.0, 4.0, 1.0), ((2, 2, 3), (8, 8, 9)), ((1, 1, 2), (9, 9, 8)),
                                 {"haus95": 4.12310563, "hausdorff": 5.74456265, "avg_surf": 1.77974144,
                                  "surf_dice": 0.679081395}),
    "crossing boxes, 1 x 2 x 3 mm": ((10, 16, 16), (1.0, 2.0, 3.0), ((1, 1, 2), (6, 4, 5)), ((1, 3, 1), (9, 5, 4)),
                                      {"haus95": 4.0, "hausdorff": 5.0, "avg_surf": 2.05601577, "surf_dice": 0.307441373}),
    "shifted box, 0.7 x 0.7 x 3 mm": ((10, 16, 16), (0.7, 0.7, 3.0), ((3, 1, 2), (8, 5, 8)), ((5, 3, 2), (9, 4, 11)),
                                       {"haus95": 6.04069532, "hausdorff": 9.02718118, "avg_surf": 1.37615561,
                                        "surf_dice": 0.543681245}),
    "2D rectangles, 0.6 x 2 mm": ((20, 16), (0.6, 2.0), ((3, 2), (12, 9)), ((5, 4), (18, 14)),
                                  {"haus95": 10.1607086, "hausdorff": 10.6282642, "avg_surf": 3.61388996,
                                   "surf_dice": 0.0822936138}),
}


@pytest.mark.parametrize("case", DEEPMIND_CASES)
def test_surface_metrics_match_deepmind_surface_distance(case):
    shape, spacing, reference_box, prediction_box, expected = DEEPMIND_CASES[case]
    masks = []
    for low, high in (reference_box, prediction_box):
        mask = np.zeros(shape, bool)
        mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
        masks.append(mask)
    s = scores(*masks, spacing)
    for name, value in expected.items():
        assert s[name] == pytest.approx(value, abs=1e-5), name


def test_empty_mask_conventions():
    spacing = (2.0, 1.0, 1.0)
    shape = (10, 20, 30)
    empty, full = np.zeros(shape, bool), np.zeros(shape, bool)
    full[2:5, 5:10, 5:10] = True
    both = scores(empty, empty, spacing)
    assert both["empty"] == "both"
    assert both["dice"] == both["surf_dice"] == both["precision"] == both["recall"] == both["fbeta"] == 1.0
    assert both["hausdorff"] == both["haus95"] == both["avg_surf"] == 0.0
    diagonal = math.sqrt(20 ** 2 + 20 ** 2 + 30 ** 2)
    for reference, prediction, case in ((full, empty, "prediction"), (empty, full, "reference")):
        one = scores(reference, prediction, spacing)
        assert one["empty"] == case
        assert one["dice"] == one["surf_dice"] == one["fbeta"] == 0.0
        assert one["hausdorff"] == one["haus95"] == one["avg_surf"] == pytest.approx(diagonal)


def test_ife_measures_counted_right_on_large_masks():
    """The IFE code's uint8 counts wrap at 256 voxels; ours count TP=60000, FP=20000, FN=40000 exactly."""
    shape = (100, 100, 100)
    reference, prediction = np.zeros(shape, bool), np.zeros(shape, bool)
    reference[:10] = True  # 100,000 voxels
    prediction[4:12] = True  # 80,000 voxels, 60,000 shared
    s = scores(reference, prediction, (1.0, 1.0, 1.0))
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.6)
    assert s["fbeta"] == pytest.approx(0.585 / 0.825)  # by hand: 1.3 x 0.75 x 0.6 / (0.3 x 0.75 + 0.6)
    assert s["conformity"] == pytest.approx(0.0)  # 1 - (20000 + 40000) / 60000
    assert s["mae"] == pytest.approx(60000 / 1e6)
    probabilities = prediction * 0.8
    assert scores(reference, prediction, (1.0, 1.0, 1.0), probabilities=probabilities)["mae"] == pytest.approx(
        (60000 * 0.2 + 20000 * 0.8 + 40000 * 1.0) / 1e6)


def test_2d_concentric_circles():
    spacing = (0.5, 0.8)
    shape = (160, 100)
    s = scores(ball(shape, spacing, 15.0), ball(shape, spacing, 20.0), spacing)
    assert s["haus95"] == pytest.approx(5.0, abs=0.6)
    assert s["avg_surf"] == pytest.approx(5.0, abs=0.6)


def write_image(path, array, spacing, direction=None, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin(origin)
    if direction:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def two_label_case(tmp_path, name, spacing=(2.5, 0.6, 0.7), direction=None, shift=0.0):
    shape = shape_for(spacing)
    reference = ball(shape, spacing, 14.0).astype(np.uint8) + ball(shape, spacing, 7.0)
    prediction = ball(shape, spacing, 15.0, centre=[31.5 + shift, 31.5, 31.5]).astype(np.uint8) + ball(shape, spacing, 7.0)
    return (write_image(tmp_path / f"{name}_ref.nii.gz", reference, spacing, direction),
            write_image(tmp_path / f"{name}_pred.nii.gz", prediction, spacing, direction))


def test_oblique_direction_does_not_change_the_values(tmp_path):
    plain = evaluate_files(*two_label_case(tmp_path, "plain"))
    oblique = evaluate_files(*two_label_case(tmp_path, "oblique", direction=OBLIQUE))
    assert plain.keys() == oblique.keys() and list(plain)[:2] == ["1_dice", "1_jaccard"]
    for key, value in plain.items():
        assert oblique[key] == pytest.approx(value) if isinstance(value, float) else oblique[key] == value


def test_segment_names_of_seg_nrrd_files_name_the_classes(tmp_path):
    reference, prediction = two_label_case(tmp_path, "seg")
    names = {0: "background", 1: "tissue", 2: "core"}
    files = []
    for path in (reference, prediction):
        files.append(write_labels(sitk.ReadImage(str(path)), tmp_path / path.name.replace(".nii.gz", ".seg.nrrd"), names))
    by_name = evaluate_files(*files)
    by_value = evaluate_files(reference, prediction)
    # the seg.nrrd keeps each segment separately: "tissue" is label 1 alone, as in the label map
    assert by_name["tissue_dice"] == pytest.approx(by_value["1_dice"])
    assert by_name["core_haus95"] == pytest.approx(by_value["2_haus95"])


def write_seg_nrrd_with_label_values(path, labels, names):
    """A one-layer .seg.nrrd written with slicerio itself, each segment keeping its own ``labelValue``."""
    import slicerio

    from HyperSpaceSegmentationLib.io.images import ijk_to_lps

    voxels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    segments = []
    for value, name in names.items():
        inside = np.nonzero(voxels == value)
        segments.append({"id": f"Segment_{value}", "name": name, "labelValue": value, "layer": 0,
                         "extent": [int(v) for axis in inside for v in (axis.min(), axis.max())]})
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk_to_lps(labels), "segments": segments})
    return path


@pytest.mark.parametrize("writer", ["slicerio", "write_labels"])
def test_seg_nrrd_with_non_contiguous_labels_against_a_label_map(tmp_path, writer):
    """Labels {1, 2, 4}: the .seg.nrrd's segment 4 is the label map's 4, in either role, and names the class."""
    spacing = (2.0, 0.8, 0.7)
    shape = shape_for(spacing, 40.0)
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, spacing, 15.0)] = 1
    labels[ball(shape, spacing, 8.0, centre=[20.0, 14.0, 17.0])] = 2
    labels[ball(shape, spacing, 6.0, centre=[18.0, 26.0, 24.0])] = 4
    label_map = write_image(tmp_path / "labels.nii.gz", labels, spacing, OBLIQUE, origin=(-12.0, 30.0, 5.5))
    image = sitk.ReadImage(str(label_map))
    names = {1: "organ", 2: "cyst", 4: "tumour"}
    if writer == "slicerio":
        segmentation = write_seg_nrrd_with_label_values(tmp_path / "labels.seg.nrrd", image, names)
    else:
        segmentation = write_labels(image, tmp_path / "labels.seg.nrrd", {0: "background", **names})
    moved = labels.copy()
    moved[moved == 4] = 2  # a label map whose 4 was written as another value is no perfect match
    for reference, prediction in ((label_map, segmentation), (segmentation, label_map)):
        row = evaluate_files(reference, prediction, metrics=["dice", "haus95"])
        assert {k: v for k, v in row.items() if k.endswith("_dice")} == {
            "organ_dice": 1.0, "cyst_dice": 1.0, "tumour_dice": 1.0}
        assert row["tumour_haus95"] == 0.0 and row["tumour_empty"] == "none"
    wrong = write_image(tmp_path / "wrong.nii.gz", moved, spacing, OBLIQUE, origin=(-12.0, 30.0, 5.5))
    assert evaluate_files(segmentation, wrong, metrics=["dice"])["tumour_dice"] == 0.0


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_results_csv_with_summary_rows_and_a_failed_case(tmp_path, capsys):
    rows = []
    for index, shift in enumerate([0.0, 1.5, 3.0]):
        reference, prediction = two_label_case(tmp_path, f"case{index}", shift=shift)
        rows.append({"id": f"case{index}", "mask": reference.name, "prediction": prediction.name})
    rows.append({"id": "broken", "mask": "case0_ref.nii.gz", "prediction": "missing.nii.gz"})
    paths = tmp_path / "paths.csv"
    with paths.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "mask", "prediction"])
        writer.writeheader()
        writer.writerows(rows)
    config = tmp_path / "classes.json"
    config.write_text(json.dumps({"classes": {"whole": [1, 2], "core": [2]}, "metrics": ["dice", "haus95"]}))
    output = tmp_path / "results.csv"
    code, _, err = run(capsys, "evaluate", "--paths-csv", paths, "--config", config, "-o", output, "--workers", "2")
    assert code == 0, err
    assert "case broken failed" in err
    with output.open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["id"] for r in table] == ["case0", "case1", "case2", "broken", "Mean", "Std", "25th Percentile",
                                        "Median", "75th Percentile"]
    assert list(table[0])[:3] == ["id", "whole_dice", "whole_haus95"]
    dice = [float(r["whole_dice"]) for r in table[:3]]
    assert dice[0] > dice[1] > dice[2]  # a larger shift scores worse
    assert table[3]["whole_dice"] == "" and "does not exist" in table[3]["error"]
    assert float(table[4]["whole_dice"]) == pytest.approx(np.mean(dice), abs=1e-5)  # NaN-aware: the failed row is left out
    assert float(table[7]["whole_dice"]) == pytest.approx(np.median(dice), abs=1e-5)
    code, _, err = run(capsys, "evaluate", "--paths-csv", paths, "-o", output)
    assert code == 2 and "--overwrite" in err


def test_mismatched_grids_need_resampling(tmp_path, capsys):
    reference, _ = two_label_case(tmp_path, "a")
    _, other = two_label_case(tmp_path, "b", spacing=(2.0, 0.8, 0.8))
    code, _, err = run(capsys, "evaluate", reference, other)
    assert code == 2 and err.count("\n") == 1 and "different grids" in err and "spacing" in err
    assert "--resample-to-reference" in err
    code, out, err = run(capsys, "evaluate", reference, other, "--resample-to-reference", "--json")
    assert code == 0, err
    assert json.loads(out)["1_dice"] > 0.85


@pytest.mark.parametrize("problem", ["missing", "intensity", "tolerance", "metric", "both-modes"])
def test_bad_evaluation_inputs(problem, tmp_path, capsys):
    reference, prediction = two_label_case(tmp_path, "x")
    intensity = tmp_path / "t1.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 30, (20, 20, 20)).astype(np.int16)), str(intensity))
    argv = {
        "missing": [reference, tmp_path / "none.nii.gz"],
        "intensity": [reference, intensity],
        "tolerance": [reference, prediction, "--tolerance", "-1"],
        "metric": [reference, prediction, "--metrics", "dice", "accuracy"],
        "both-modes": [reference, prediction, "--paths-csv", "x.csv"],
    }[problem]
    code, _, err = run(capsys, "evaluate", *argv)
    assert code == 2 and err.startswith("hyperspace: error:") and err.count("\n") == 1, err


def test_a_class_in_neither_image_scores_perfect_with_a_note(tmp_path, capsys):
    reference, prediction = two_label_case(tmp_path, "x")
    code, out, err = run(capsys, "evaluate", reference, prediction, "--labels", "7", "2", "--metrics", "dice")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "class 7 is in neither the reference nor the prediction" in notes[0]
    assert [line.split() for line in out.splitlines()[1:]] == [["7", "1"], ["2", "1"]]
    code, _, err = run(capsys, "evaluate", reference, prediction, "--labels", "2")
    assert code == 0 and "note:" not in err


def test_probability_map_against_a_multi_class_reference_is_refused(tmp_path, capsys):
    reference, _ = two_label_case(tmp_path, "x")
    labels = sitk.ReadImage(str(reference))
    probabilities = sitk.GetImageFromArray((sitk.GetArrayFromImage(labels) > 0) * np.float32(0.9))
    probabilities.CopyInformation(labels)
    sitk.WriteImage(probabilities, str(tmp_path / "probabilities.nii.gz"))
    code, _, err = run(capsys, "evaluate", reference, tmp_path / "probabilities.nii.gz")
    assert code == 2 and err.count("\n") == 1 and "probability map" in err and "(1, 2)" in err, err
    # a floating-point image of whole numbers is a label map, whatever its range
    mask = sitk.Cast(sitk.BinaryThreshold(labels, 2, 2), sitk.sitkFloat32)
    sitk.WriteImage(mask, str(tmp_path / "core.nii.gz"))
    code, out, err = run(capsys, "evaluate", reference, tmp_path / "core.nii.gz", "--json", "--metrics", "dice")
    assert code == 0, err
    assert json.loads(out)["1_dice"] == pytest.approx(0.0) and json.loads(out)["2_empty"] == "prediction"


def test_overlapping_segments_of_a_layered_seg_nrrd(tmp_path):
    import slicerio

    spacing = (2.0, 1.0, 1.0)  # array order; slicerio's voxels are (i, j, k)
    shape = (20, 30, 30)
    outer, inner = ball(shape, spacing, 12.0), ball(shape, spacing, 5.0)
    matrix = np.diag([1.0, 1.0, 2.0, 1.0])
    matrix[:3, 3] = (4.0, -3.0, 7.0)
    files = []
    for name, shrink in (("ref", 0.0), ("pred", 1.0)):
        segmentation = slicerio.create_segmentation(shape[::-1], matrix)
        slicerio.add_segment(segmentation, ball(shape, spacing, 12.0 - shrink).transpose(2, 1, 0), {"name": "organ"})
        slicerio.add_segment(segmentation, inner.transpose(2, 1, 0), {"name": "lesion"})  # overlaps: a second layer
        assert segmentation["voxels"].ndim == 4
        files.append(tmp_path / f"{name}.seg.nrrd")
        slicerio.write_segmentation(str(files[-1]), segmentation)
    row = evaluate_files(*files, metrics=["dice", "vol_ref", "haus95"])
    assert set(row) == {"organ_dice", "organ_vol_ref", "organ_haus95", "organ_empty",
                        "lesion_dice", "lesion_vol_ref", "lesion_haus95", "lesion_empty"}
    assert row["lesion_dice"] == 1.0 and row["lesion_haus95"] == 0.0
    assert row["organ_vol_ref"] == pytest.approx(outer.sum() * 2.0 / 1000)  # the lesion does not hide organ voxels
    assert 0.8 < row["organ_dice"] < 1.0 and row["organ_haus95"] == pytest.approx(1.0, abs=1.0)  # 1 mm, 2 mm slices


def test_segments_named_in_one_file_only_score_as_missed_or_extra(tmp_path):
    """Two .seg.nrrd files: a structure the prediction adds, or misses, is scored against an empty mask."""
    array = np.zeros((12, 20, 24), np.uint8)
    array[2:8, 3:10, 4:12] = 1
    array[5:10, 12:18, 14:20] = 2
    labels = sitk.GetImageFromArray(array)
    labels.SetSpacing((0.8, 0.9, 2.0))
    reference = write_labels(labels, tmp_path / "reference.seg.nrrd", {0: "background", 1: "liver"})
    prediction = write_labels(labels, tmp_path / "prediction.seg.nrrd", {0: "background", 1: "liver", 2: "cyst"})
    row = evaluate_files(reference, prediction, metrics=["dice", "vol_pred"])
    assert row["liver_dice"] == 1.0 and row["liver_empty"] == "none"
    assert row["cyst_dice"] == 0.0 and row["cyst_empty"] == "reference"
    assert row["cyst_vol_pred"] == pytest.approx((array == 2).sum() * 0.8 * 0.9 * 2.0 / 1000)
    swapped = evaluate_files(prediction, reference, metrics=["dice"])
    assert swapped["cyst_dice"] == 0.0 and swapped["cyst_empty"] == "prediction"


@pytest.mark.parametrize("content, expected", [
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe{", "not UTF-8"),
    (b'{"classes": {"w": [1.5]}}', "integer label values"),
    (b'{"classes": {"w": [true]}}', "integer label values"),
    (b'{"classes": {"w": ["a"]}}', "integer label values"),
    (b'{"metrics": ["dice", 3]}', "'metrics' must be"),
    (b'{"tolerance": "wide"}', "'tolerance' must be"),
])
def test_malformed_configs_give_one_line_errors(tmp_path, capsys, content, expected):
    reference, prediction = two_label_case(tmp_path, "x")
    config = tmp_path / "c.json"
    config.write_bytes(content)
    code, _, err = run(capsys, "evaluate", reference, prediction, "--config", config)
    assert code == 2 and err.startswith("hyperspace: error:") and err.count("\n") == 1, err
    assert expected in err


def test_a_single_metric_string_in_a_config_is_one_metric(tmp_path, capsys):
    reference, prediction = two_label_case(tmp_path, "x")
    config = tmp_path / "c.json"
    config.write_text('{"metrics": "dice"}')
    code, out, err = run(capsys, "evaluate", reference, prediction, "--config", config, "--json")
    assert code == 0, err
    assert {key for key in json.loads(out) if key.endswith("_dice")} == {"1_dice", "2_dice"}
    assert not any(key.endswith("_haus95") for key in json.loads(out))


@pytest.mark.parametrize("label", ["1,,2", "1.5", "", "1,2,", " "])
def test_malformed_label_values_are_refused(tmp_path, capsys, label):
    reference, prediction = two_label_case(tmp_path, "x")
    code, _, err = run(capsys, "evaluate", reference, prediction, "--labels", label)
    assert code == 2 and err.count("\n") == 1, err
    expected = "--labels is empty" if not label.strip() else f"{label!r} is not a valid label value or group"
    assert expected in err and "segments: none" not in err


def test_a_name_on_plain_label_maps_says_names_are_for_segments(tmp_path, capsys):
    reference, prediction = two_label_case(tmp_path, "x")
    code, _, err = run(capsys, "evaluate", reference, prediction, "--labels", "liver")
    assert code == 2 and err.count("\n") == 1 and "'liver' is not a valid label value or group" in err, err
    assert ".seg.nrrd" in err


@pytest.mark.parametrize("which", ["reference", "prediction"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, capsys, which, monkeypatch):
    reference, prediction = two_label_case(tmp_path, "x")
    target = tmp_path / "same.csv"
    target.write_bytes({"reference": reference, "prediction": prediction}[which].read_bytes())
    argv = [target, prediction] if which == "reference" else [reference, target]
    monkeypatch.chdir(tmp_path)
    before = target.read_bytes()
    code, _, err = run(capsys, "evaluate", *argv, "-o", "./same.csv", "--overwrite")
    assert code == 2 and err.count("\n") == 1 and f"is the {which}" in err, err
    assert target.read_bytes() == before


def test_a_folder_as_config_is_called_a_folder(tmp_path, capsys):
    reference, prediction = two_label_case(tmp_path, "x")
    code, _, err = run(capsys, "evaluate", reference, prediction, "--config", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "is a folder" in err and "does not exist" not in err, err


@pytest.mark.parametrize("change, expected", [
    ("origin", "has origin (0, 0, 0); prediction {} has origin (5, 0, 0)"),
    ("spacing", "has spacing (1, 1, 1); prediction {} has spacing (2, 1, 1)"),
    ("size", "has size (4, 5, 6); prediction {} has size (4, 5, 7)"),
    ("dimension", "is 3D, prediction {} 2D"),
])
def test_grid_differences_name_each_file_with_its_own_values(tmp_path, capsys, change, expected):
    array = np.zeros((6, 5, 4), np.uint8)
    array[2:4, 2:4, 1:3] = 1
    reference = write_image(tmp_path / "x_ref.nrrd", array, (1.0, 1.0, 1.0))
    other = {"origin": lambda: write_image(tmp_path / "x_pred.nrrd", array, (1.0, 1.0, 1.0), origin=(5.0, 0.0, 0.0)),
             "spacing": lambda: write_image(tmp_path / "x_pred.nrrd", array, (1.0, 1.0, 2.0)),
             "size": lambda: write_image(tmp_path / "x_pred.nrrd", np.zeros((7, 5, 4), np.uint8), (1.0, 1.0, 1.0)),
             "dimension": lambda: write_image(tmp_path / "x_pred.nrrd", array[3], (1.0, 1.0), origin=(0.0, 0.0)),
             }[change]()
    code, _, err = run(capsys, "evaluate", reference, other)
    assert code == 2 and err.count("\n") == 1, err
    assert f"reference {reference} {expected.format(other)}" in err


def test_two_empty_images_without_labels_are_an_error(tmp_path, capsys):
    empty = write_image(tmp_path / "empty.nrrd", np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0))
    code, out, err = run(capsys, "evaluate", empty, empty)
    assert code == 2 and err.count("\n") == 1 and "no foreground label" in err and "--labels" in err, err
    assert out == ""
    code, out, err = run(capsys, "evaluate", empty, empty, "--labels", "1", "--metrics", "dice")
    assert code == 0 and out.splitlines()[1].split() == ["1", "1"]


def test_hd95_is_the_smallest_distance_covering_95_percent_of_the_surface_area():
    from HyperSpaceSegmentationLib.evaluation.surface import _percentile

    rng = np.random.default_rng(0)
    distances = rng.permutation(np.arange(1.0, 21.0))  # 20 elements of equal area, distances 1..20 mm
    assert _percentile(distances, np.ones(20), 95) == 19.0  # 19 of 20 elements are exactly 95%
    assert _percentile(distances, np.full(20, 0.25), 95) == 19.0  # the unit of area does not matter
    assert _percentile(distances, np.ones(20), 100) == 20.0
    # unequal areas: the element at 1 mm holds 95% of the area on its own, the two others 4% and 1%
    assert _percentile(np.array([3.0, 1.0, 2.0]), np.array([1.0, 95.0, 4.0]), 95) == 1.0
    # ... and with 94% it takes the 2 mm element too; an unweighted percentile would say about 2.9 mm
    assert _percentile(np.array([3.0, 1.0, 2.0]), np.array([1.0, 94.0, 5.0]), 95) == 2.0
    # a tiny far element is beyond the 95%, a large one is not
    assert _percentile(np.array([1.0, 10.0]), np.array([96.0, 4.0]), 95) == 1.0
    assert _percentile(np.array([1.0, 10.0]), np.array([90.0, 10.0]), 95) == 10.0


def test_grids_a_thousandth_of_a_mm_apart_show_the_difference(tmp_path, capsys):
    """Origins 0.001 mm apart printed with 4 digits looked the same: the message gives digits that tell them apart
    and the difference itself."""
    array = np.zeros((6, 5, 4), np.uint8)
    array[2:4, 2:4, 1:3] = 1
    reference = write_image(tmp_path / "ref.nrrd", array, (1.0, 1.0, 1.0), origin=(120.5, -80.25, 33.0))
    other = write_image(tmp_path / "pred.nrrd", array, (1.0, 1.0, 1.0), origin=(120.501, -80.25, 33.0))
    code, _, err = run(capsys, "evaluate", reference, other)
    assert code == 2 and err.count("\n") == 1, err
    assert f"reference {reference} has origin (120.5, -80.25, 33); prediction {other} has origin (120.501, -80.25, 33)" in err
    assert "origins differ by 0.001 mm" in err and "--resample-to-reference" in err
    spaced = write_image(tmp_path / "spaced.nrrd", array, (1.0, 1.0, 1.0005))
    plain = write_image(tmp_path / "plain.nrrd", array, (1.0, 1.0, 1.0))
    code, _, err = run(capsys, "evaluate", plain, spaced)
    assert code == 2 and "has spacing (1, 1, 1);" in err and "has spacing (1.0005, 1, 1)" in err, err
    assert "spacings differ by 0.0005 mm" in err


def test_a_2d_prediction_for_a_volume_is_not_sent_to_resampling(tmp_path, capsys):
    array = np.zeros((6, 5, 4), np.uint8)
    array[2:4, 2:4, 1:3] = 1
    reference = write_image(tmp_path / "ref.nrrd", array, (1.0, 1.0, 1.0))
    flat = write_image(tmp_path / "flat.nrrd", array[3], (1.0, 1.0), origin=(0.0, 0.0))
    for options in ([], ["--resample-to-reference"]):
        code, _, err = run(capsys, "evaluate", reference, flat, *options)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"reference {reference} is 3D, prediction {flat} 2D" in err and "different dimensions" in err
        assert "pass --resample-to-reference" not in err


def test_a_label_map_saved_as_seg_nrrd_is_refused_not_scored_as_empty(tmp_path, capsys):
    """A label map written under the .seg.nrrd name by another tool has no segments: it was read as all
    background (Dice 0, exit 0)."""
    reference, prediction = two_label_case(tmp_path, "case")
    disguised = tmp_path / "labels.seg.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(prediction)), str(disguised))
    code, out, err = run(capsys, "evaluate", reference, disguised)
    assert code == 2 and err.count("\n") == 1 and out == "", err
    assert "no segments" in err and "values 1, 2" in err and "rename it to .nrrd" in err
    renamed = tmp_path / "labels.nrrd"
    disguised.rename(renamed)
    code, out, err = run(capsys, "evaluate", reference, renamed, "--json")
    assert code == 0 and json.loads(out)["1_dice"] > 0.8, err


def test_an_empty_slicer_segmentation_is_still_read_as_empty(tmp_path):
    """A .seg.nrrd without segments and without labelled voxels (an empty segmentation) is no label map in
    disguise: it is read, empty."""
    import slicerio

    from HyperSpaceSegmentationLib.evaluation.labels import read_segmentation

    path = tmp_path / "empty.seg.nrrd"
    slicerio.write_segmentation(str(path), {"voxels": np.zeros((4, 5, 6), np.uint8), "ijkToLPS": np.eye(4),
                                            "segments": []})
    segmentation = read_segmentation(path)
    assert segmentation.segments == {} and not segmentation.values.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_voxels_in_a_label_map_are_named(tmp_path, capsys, bad):
    reference, _ = two_label_case(tmp_path, "case")
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).astype(np.float32)
    array[0, 0, :3] = bad
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(sitk.ReadImage(str(reference)))
    sitk.WriteImage(damaged, str(tmp_path / "damaged.nrrd"))
    code, _, err = run(capsys, "evaluate", reference, tmp_path / "damaged.nrrd")
    assert code == 2 and err.count("\n") == 1, err
    assert "holds 3 NaN or infinite voxels" in err and "whole numbers" in err
