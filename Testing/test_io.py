"""Files: Slicer segmentations keep label values and geometry; unreadable inputs and unwritable outputs fail early."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.evaluation import evaluate_files
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.io.images import atomic_output, read_image, write_labels
from HyperSpaceSegmentationLib.io.model_file import load_model, save_model
from HyperSpaceSegmentationLib.preprocessing import Normalisation

from conftest import OBLIQUE, phantom, tiny_model

NAMES = {0: "background", 1: "liver", 2: "spleen", 4: "tumour"}
COLORS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 4: (0.2, 0.3, 0.95)}
FLIPPED_PERMUTED = (0.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0)


def asymmetric_labels(size=(21, 17, 9), spacing=(0.7, 1.3, 2.9), origin=(12.5, -40.25, 7.0), direction=OBLIQUE):
    """A label image with values {0, 1, 2, 4} in off-centre blocks of different sizes."""
    array = np.zeros(size[::-1], np.uint8)
    array[1:4, 2:9, 3:15] = 1
    array[5:8, 10:16, 1:6] = 2
    array[6:9, 1:4, 16:20] = 4
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def test_seg_nrrd_keeps_label_values_names_and_colours(tmp_path):
    import slicerio

    labels = asymmetric_labels()
    path = write_labels(labels, tmp_path / "labels.seg.nrrd", NAMES, COLORS)
    segmentation = slicerio.read_segmentation(str(path))
    array = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert set(by_name) == {"liver", "spleen", "tumour"}
    for value in (1, 2, 4):
        segment = by_name[NAMES[value]]
        assert segment["labelValue"] == value
        assert np.allclose(segment["color"], COLORS[value], atol=1e-6)
        assert np.array_equal(slicerio.segment_mask(segmentation, segment), array == value)


def test_seg_nrrd_segments_without_a_model_colour_get_distinct_colours(tmp_path):
    import slicerio

    path = write_labels(asymmetric_labels(), tmp_path / "labels.seg.nrrd", NAMES)
    colours = [tuple(s["color"]) for s in slicerio.read_segmentation(str(path))["segments"]]
    assert len(colours) == 3 and len(set(colours)) == 3


def test_seg_nrrd_prediction_scores_perfectly_against_the_label_map(tmp_path):
    labels = asymmetric_labels()
    reference = tmp_path / "reference.nii.gz"
    sitk.WriteImage(labels, str(reference))
    prediction = write_labels(labels, tmp_path / "prediction.seg.nrrd", NAMES, COLORS)
    for first, second in ((reference, prediction), (prediction, reference)):
        scores = evaluate_files(first, second, metrics=["dice"])
        dice = {k: v for k, v in scores.items() if k.endswith("_dice")}
        assert len(dice) == 3 and all(v == 1.0 for v in dice.values()), scores


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED_PERMUTED], ids=["oblique", "flipped-permuted"])
def test_seg_nrrd_geometry_matches_the_source_image(direction, tmp_path):
    """Read back by another reader (ITK's NRRD reader): same grid, and each voxel at the same physical point."""
    labels = asymmetric_labels(direction=direction)
    path = write_labels(labels, tmp_path / "labels.seg.nrrd", NAMES, COLORS)
    written = sitk.ReadImage(str(path))
    assert written.GetSize() == labels.GetSize()
    # OBLIQUE is a rotation to 4 decimals, which ITK's reader re-normalises
    assert np.allclose(written.GetSpacing(), labels.GetSpacing(), atol=1e-3)
    assert np.allclose(written.GetOrigin(), labels.GetOrigin(), atol=1e-6)
    assert np.allclose(written.GetDirection(), labels.GetDirection(), atol=1e-3)
    source = sitk.GetArrayFromImage(labels)
    for index in zip(*np.nonzero(source)):
        point = labels.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
        assert written[written.TransformPhysicalPointToIndex(point)] == source[index]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *words):
    """Exit 2, one error line, and nothing else but progress lines (no traceback, no ITK warning)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hyperspace: error:"), err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def truncated_nifti(tmp_path, kind):
    """A phantom written as NIfTI and then cut short: the plain file, the gzip stream, or a whole gzip of a cut file."""
    image, _ = phantom(size=(24, 20, 16))
    full = tmp_path / "full.nii"
    sitk.WriteImage(image, str(full))
    data = full.read_bytes()
    if kind == "nii":
        path, content = tmp_path / "cut.nii", data[: len(data) - 1000]
    elif kind == "gz-stream":
        path, content = tmp_path / "cut.nii.gz", gzip.compress(data)[:-200]
    else:
        path, content = tmp_path / "cut.nii.gz", gzip.compress(data[: len(data) - 1000])
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", ["nii", "gz-stream", "gz-content"])
def test_truncated_nifti_is_refused_by_segment_and_evaluate(kind, tmp_path, capsys, tiny_model_file):
    path = truncated_nifti(tmp_path, kind)
    output = tmp_path / "out.nrrd"
    code, _, err = run(capsys, "segment", path, "-o", output, "--model", tiny_model_file)
    assert_one_line_error(code, err, "truncated", path.name)
    assert not output.exists()
    labels = tmp_path / "labels.nii.gz"
    sitk.WriteImage(phantom(size=(24, 20, 16))[1], str(labels))
    for pair in ((labels, path), (path, labels)):
        code, _, err = run(capsys, "evaluate", *pair)
        assert_one_line_error(code, err, "truncated", path.name)


def test_complete_nifti_files_are_read_unchanged(tmp_path):
    image, _ = phantom(size=(24, 20, 16))
    for name in ("whole.nii", "whole.nii.gz"):
        sitk.WriteImage(image, str(tmp_path / name))
        assert np.array_equal(sitk.GetArrayFromImage(read_image(tmp_path / name)), sitk.GetArrayFromImage(image))


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.nrrd"
    sitk.WriteImage(phantom(size=(24, 20, 16))[0], str(path))
    return path


def test_output_under_a_file_fails_before_any_work(tmp_path, capsys, image_file, tiny_model_file):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder is expected")
    code, _, err = run(capsys, "segment", image_file, "-o", blocker / "out.nrrd", "--model", tiny_model_file)
    assert_one_line_error(code, err, "notes.txt is a file, not a folder")
    assert "[1/5]" not in err  # refused before loading anything
    labels = tmp_path / "labels.nrrd"
    sitk.WriteImage(phantom(size=(24, 20, 16))[1], str(labels))
    code, _, err = run(capsys, "evaluate", labels, labels, "-o", blocker / "sub" / "results.csv")
    assert_one_line_error(code, err, "notes.txt is a file, not a folder")
    for folder in (blocker, blocker / "sub"):
        code, _, err = run(capsys, "demo", "--output-dir", folder)
        assert_one_line_error(code, err, "--output-dir")
    assert blocker.read_text() == "a file where a folder is expected"


def test_read_only_folder_fails_before_any_work(capsys, image_file, tiny_model_file, read_only_folder):
    code, _, err = run(capsys, "segment", image_file, "-o", read_only_folder / "out.nrrd", "--model", tiny_model_file)
    assert_one_line_error(code, err, "cannot write in folder")
    assert "[1/5]" not in err


def test_output_that_is_the_input_or_a_folder_is_refused(tmp_path, capsys, image_file, tiny_model_file):
    before = image_file.read_bytes()
    code, _, err = run(capsys, "segment", image_file, "-o", image_file, "--model", tiny_model_file, "--overwrite")
    assert_one_line_error(code, err, "is the input image")
    assert image_file.read_bytes() == before
    (tmp_path / "results").mkdir()
    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "results", "--model", tiny_model_file)
    assert_one_line_error(code, err, "is a folder")
    code, _, err = run(capsys, "info", tmp_path / "results")
    assert_one_line_error(code, err, "is a folder, not a model file")


def test_demo_checks_every_result_before_writing_any(tmp_path, capsys):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "coarse-3mm.seg.nrrd").write_text("an earlier result")
    code, _, err = run(capsys, "demo", "--output-dir", folder)
    assert_one_line_error(code, err, "coarse-3mm.seg.nrrd exists", "--overwrite")
    assert sorted(p.name for p in folder.iterdir()) == ["coarse-3mm.seg.nrrd"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_that_appears_during_the_write_is_kept_unless_overwrite(overwrite, tmp_path):
    path = tmp_path / "result.csv"

    def write_while_another_run_finishes():
        with atomic_output(path, overwrite=overwrite) as temporary:
            temporary.write_text("this run")
            path.write_text("the other run")

    if overwrite:
        write_while_another_run_finishes()
        assert path.read_text() == "this run"
    else:
        with pytest.raises(UserError, match="appeared while this run was writing it"):
            write_while_another_run_finishes()
        assert path.read_text() == "the other run"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]  # no temporary left behind


BAD_METADATA = {
    "zero spacing range": (lambda p: p.update(spacing_range=[0.0, 0.0]), "spacing range"),
    "reversed spacing range": (lambda p: p.update(spacing_range=[3.0, 1.0]), "spacing range"),
    "hypernetwork range": (lambda p: p["hyper"].update(spacing_min=0.0), "hypernetwork spacing range"),
    "no background": (lambda p: p.update(labels={1: "a", 2: "b", 3: "c"}), "lack 0"),
    "label above 255": (lambda p: p.update(labels={0: "background", 1: "a", 300: "b"}), "0-255"),
    "label count": (lambda p: p.update(labels={0: "background", 1: "a"}), "2 labels for a network with 3 classes"),
    "modality": (lambda p: p["normalisation"].update(modality="pet"), "modality 'pet'"),
    "ct window": (lambda p: p["normalisation"].update(modality="ct", clip_low=5.0, clip_high=5.0), "ct window"),
    "colour": (lambda p: p.update(colors={1: [2.0, 0.0, 0.0]}), "colour of label 1"),
    "fs without spacing": (lambda p: p.update(method="fs", hyper=None, fixed_spacing=None), "fixed spacing"),
    # the network's shape: each crashed info, ensembles and the Slicer logic with an IndexError or worse
    "no features": (lambda p: p["unet"].update(features=[]), "U-Net features []"),
    "zero features": (lambda p: p["unet"].update(features=[4, 0, 8, 16]), "U-Net features [4, 0, 8, 16]"),
    "negative features": (lambda p: p["unet"].update(features=[-4, 8, 8, 16]), "U-Net features"),
    "absurd features": (lambda p: p["unet"].update(features=[4, 8, 8, 10**9]), "U-Net features"),
    "no classes": (lambda p: p["unet"].update(num_classes=0), "U-Net classes 0"),
    "no convolutions": (lambda p: p["unet"].update(convs_per_level=0), "convolutions per level 0"),
    "zero rank": (lambda p: p["hyper"].update(rank=0), "hypernetwork rank 0"),
    "zero width": (lambda p: p["hyper"].update(hidden=0), "hypernetwork hidden width 0"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_model_with_invalid_metadata_is_refused_by_info_and_segment(case, tmp_path, capsys, image_file):
    import torch

    from HyperSpaceSegmentationLib.io.model_file import save_model

    from conftest import tiny_model

    change, words = BAD_METADATA[case]
    method = "fs" if case.startswith("fs") else "hyperspace"
    payload = torch.load(save_model(tiny_model(method), tmp_path / "good.pt"), weights_only=True)
    change(payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    code, out, err = run(capsys, "info", path)
    assert_one_line_error(code, err, "invalid metadata", words)
    assert out == ""
    output = tmp_path / "out.nrrd"
    code, _, err = run(capsys, "segment", image_file, "-o", output, "--model", path)
    assert_one_line_error(code, err, "invalid metadata", words)
    assert not output.exists()


def test_itk_warnings_do_not_precede_the_error(tmp_path, capfd, tiny_model_file):
    (tmp_path / "not-dicom").mkdir()
    (tmp_path / "not-dicom" / "readme.txt").write_text("no images here")
    code = main(["segment", str(tmp_path / "not-dicom"), "-o", str(tmp_path / "out.nrrd"), "--model", str(tiny_model_file)])
    assert_one_line_error(code, capfd.readouterr().err, "without a dicom series")


def test_single_slice_volume_is_segmented_by_a_3d_model(tmp_path, capsys, tiny_model_file):
    image, _ = phantom(size=(48, 48, 3), spacing=(0.9, 1.1, 2.0), origin=(5.0, -3.0, 1.0))
    single = image[:, :, 1:2]
    sitk.WriteImage(single, str(tmp_path / "slice.nrrd"))
    code, _, err = run(capsys, "segment", tmp_path / "slice.nrrd", "-o", tmp_path / "seg.nrrd", "--model", tiny_model_file)
    assert code == 0, err
    result = sitk.ReadImage(str(tmp_path / "seg.nrrd"))
    assert result.GetSize() == (48, 48, 1)
    assert np.allclose(result.GetOrigin(), single.GetOrigin()) and np.allclose(result.GetSpacing(), single.GetSpacing())


@pytest.mark.parametrize("argv,command", [(["segment", "x.nrrd"], "hyperspace segment"), (["bogus"], "hyperspace"),
                                          (["segment", "x.nrrd", "-o", "y.nrrd", "--spacing"], "hyperspace segment")])
def test_usage_errors_end_with_what_to_do(argv, command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hyperspace: error: ") and last.endswith(f"run '{command} --help' for the options"), err


def test_nan_and_infinite_voxels_give_a_note(tmp_path, capsys, tiny_model_file):
    image, _ = phantom(size=(24, 20, 16))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :3] = np.nan
    array[2, 5, 7] = np.inf
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(image)
    sitk.WriteImage(damaged, str(tmp_path / "nan.nrrd"))
    code, _, err = run(capsys, "segment", tmp_path / "nan.nrrd", "-o", tmp_path / "seg.nrrd", "--model", tiny_model_file)
    assert code == 0, err
    assert "note: 4 voxels are NaN or infinite; they are treated as 0" in err


# --- found by the hostile-input round ---------------------------------------------------------------------------

@pytest.mark.parametrize("output,words", [("", ["-o/--output is empty", "unset shell variable"]), ("labels.mhd", ["unsupported output format"]),
                                          ("labels.nhdr", ["unsupported output format"])])
def test_outputs_that_cannot_be_one_file_are_refused(output, words, tmp_path, capsys, image_file, tiny_model_file,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "segment", image_file, "-o", output, "--model", tiny_model_file)
    assert_one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image_file.name, tiny_model_file.name])


def test_a_failed_demo_leaves_no_folder_behind(tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    code, _, err = run(capsys, "demo", "--output-dir", tmp_path / "new" / "demo", "--model", broken)
    assert_one_line_error(code, err, "corrupt")
    assert not (tmp_path / "new").exists()


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path, capsys, tiny_model_file):
    from test_cli import write_dicom_series

    image, _ = phantom(size=(24, 20, 10), spacing=(0.8, 0.8, 2.0))
    write_dicom_series(image, tmp_path / "series")
    slices = sorted((tmp_path / "series").iterdir())
    slices[len(slices) // 2].unlink()
    output = tmp_path / "out.nrrd"
    code, _, err = run(capsys, "segment", tmp_path / "series", "-o", output, "--model", tiny_model_file)
    assert_one_line_error(code, err, "unevenly spaced slices", "2 to 4 mm")
    assert not output.exists()


def test_a_model_with_nan_weights_is_refused_as_corrupt(tmp_path, capsys, image_file):
    import torch

    from HyperSpaceSegmentationLib.io.model_file import save_model

    model = tiny_model()
    with torch.no_grad():
        next(model.trainable().parameters()).fill_(float("nan"))
    path = save_model(model, tmp_path / "nan.pt")
    for argv in (["info", path], ["segment", image_file, "-o", tmp_path / "out.nrrd", "--model", path]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "corrupt", "NaN")


def test_mr_normalisation_z_scores_the_foreground_and_survives_huge_intensities():

    image, _ = phantom(size=(24, 20, 16))  # 0 outside the object, about 100 and 200 inside
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    normal = Normalisation("mr").apply(array)
    inside = array != 0
    assert normal[inside].mean() == pytest.approx(0.0, abs=1e-5) and normal[inside].std() == pytest.approx(1.0, abs=1e-4)
    assert np.all(normal[~inside] == 0)
    assert np.allclose(Normalisation("mr").apply(array * np.float32(1e30)), normal, atol=1e-4)


def test_the_memory_error_suggests_a_spacing_that_the_command_line_takes(tmp_path, capsys, image_file, tiny_model_file):
    from HyperSpaceSegmentationLib.inference import parse_spacing

    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "o.nrrd", "--model", tiny_model_file,
                       "--spacing", "0.002", "--allow-extrapolation")
    assert_one_line_error(code, err, "coarser spacing")
    suggestion = err.strip().splitlines()[-1].split("--spacing ")[1].split()
    assert parse_spacing(suggestion).mode == "explicit" and len(suggestion) == 3


def test_model_files_keep_their_normalisation_version(tmp_path):
    """A file written before versions existed reads as version 1 (the z-score), a new one keeps its version, and a
    version this program does not know is refused in one line."""
    import torch

    model = tiny_model()
    model.normalisation = Normalisation("mr", version=2)
    path = save_model(model, tmp_path / "v2.pt")
    assert load_model(path).normalisation.version == 2
    payload = torch.load(path, weights_only=True)
    del payload["normalisation"]["version"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.normalisation.version == 1
    scan = np.where(np.arange(1000).reshape(10, 10, 10) > 300, 100.0, 0.0).astype(np.float32)
    scan[5:] += 50
    np.testing.assert_allclose(old.normalisation.apply(scan), Normalisation("mr").apply(scan))
    assert not np.allclose(old.normalisation.apply(scan), Normalisation("mr", version=2).apply(scan))
    payload["normalisation"]["version"] = 3
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(UserError, match="normalisation version 3 is not one of 1, 2"):
        load_model(tmp_path / "future.pt")
