"""Postprocessing (MIST's, opt-in and per class): object sizes in mm^3 on the image's grid, full-connected objects,
enclosed holes only, other classes untouched, the input's grid kept; ``hyperspace segment`` options end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.io import model_file
from HyperSpaceSegmentationLib.postprocessing import PostprocessingStep, postprocess

from conftest import OBLIQUE, asymmetric_phantom, on_grid, oracle_model


def labels_image(array: np.ndarray, spacing=None, origin=None, direction=None) -> sitk.Image:
    spacing = spacing or (1.0,) * array.ndim
    return on_grid(array.astype(np.uint8), spacing, origin or (0.0,) * array.ndim, direction)


def apply(array: np.ndarray, *steps: PostprocessingStep, spacing=None) -> np.ndarray:
    image = labels_image(array, spacing)
    result, _ = postprocess(image, steps)
    return sitk.GetArrayFromImage(result)


def test_remove_smaller_than_measures_mm3_on_an_anisotropic_grid():
    # spacing (x, y, z) = (0.5, 0.25, 2.0): a voxel is 0.25 mm^3, so voxel counts and mm^3 differ fourfold
    array = np.zeros((12, 12, 20), np.uint8)  # (z, y, x)
    array[1:3, 1:3, 1:5] = 3  # 16 voxels = 4 mm^3: exactly the size, kept
    array[6:8, 6:8, 6:8] = 3  # 8 voxels = 2 mm^3: removed
    array[6:8, 8:10, 8:10] = 3  # 8 more touching the last only by an edge: one full-connected object of 4 mm^3, kept
    array[10, 10, 10:13] = 3  # 3 voxels = 0.75 mm^3: removed
    array[10:12, 1:3, 14:16] = 3  # 8 voxels = 2 mm^3 ...
    array[10, 1, 12] = 7  # ... and a small object of another class, untouched
    result = apply(array, PostprocessingStep("remove_smaller_than", (3,), 4.0), spacing=(0.5, 0.25, 2.0))
    expected = array.copy()
    expected[10, 10, 10:13] = 0
    expected[10:12, 1:3, 14:16] = 0
    assert np.array_equal(result, expected)


def test_largest_component_keeps_the_largest_object_of_each_class_chosen():
    array = np.zeros((16, 16, 16), np.uint8)
    array[1:3, 1:3, 1:3] = 3  # 8 voxels, met first in memory order
    array[8:11, 8:11, 8:11] = 3  # 27 voxels
    array[12:14, 1:5, 1:5] = 3  # 32 voxels: the largest, met last
    array[1:3, 12:15, 12:15] = 7  # two objects of class 7
    array[14, 14, 14] = 7
    only_3 = apply(array, PostprocessingStep("largest_component", (3,)))
    expected = np.where(array == 3, 0, array)
    expected[12:14, 1:5, 1:5] = 3
    assert np.array_equal(only_3, expected)  # class 7's two objects untouched
    both = apply(array, PostprocessingStep("largest_component", (3, 7)))
    expected[14, 14, 14] = 0
    assert np.array_equal(both, expected)


def test_fill_holes_fills_an_enclosed_cavity_but_not_an_open_one_or_another_class():
    k, j, i = np.meshgrid(*[np.arange(24)] * 3, indexing="ij")
    radius = np.sqrt((i - 8) ** 2 + (j - 8) ** 2 + (k - 8) ** 2)
    array = np.zeros((24, 24, 24), np.uint8)
    array[(radius >= 4) & (radius < 6)] = 3  # a hollow sphere ...
    array[8, 8, 8] = 7  # ... with an object of another class inside
    array[14:22, 14:22, 14:22] = 3  # a cup: a hollow box with its top (k = 21) open
    array[15:22, 15:21, 15:21] = 0
    array[0:4, 14:20, 14:20] = 3  # a box cut open by the image border (k = 0)
    array[0:3, 15:19, 15:19] = 0
    result = apply(array, PostprocessingStep("fill_holes", (3,)))
    expected = array.copy()
    expected[(radius < 4) & (array == 0)] = 3
    assert np.array_equal(result, expected)
    assert result[8, 8, 8] == 7


def test_steps_apply_in_the_documented_order_whatever_order_they_are_given():
    # a hollow box (98 voxels of wall, 125 filled) and a solid box (100 voxels): largest component, then fill holes
    array = np.zeros((12, 12, 24), np.uint8)
    array[1:6, 1:6, 1:6] = 3
    array[2:5, 2:5, 2:5] = 0
    array[1:5, 1:6, 10:15] = 3
    steps = (PostprocessingStep("fill_holes", (3,)), PostprocessingStep("largest_component", (3,)))
    expected = np.zeros_like(array)
    expected[1:5, 1:6, 10:15] = 3
    assert np.array_equal(apply(array, *steps), expected)


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_output_is_on_the_input_grid_with_a_report(direction):
    array = np.zeros((10, 12, 14), np.uint8)
    array[1:4, 1:4, 1:4] = 3
    array[6:8, 6:8, 6:8] = 3
    image = labels_image(array, (0.7, 1.3, 2.9), (5.0, -3.0, 11.0), direction)
    result, report = postprocess(image, [PostprocessingStep("largest_component", (3,))])
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection", "GetPixelID"):
        assert getattr(result, attribute)() == getattr(image, attribute)(), attribute
    assert report == [{"operation": "largest_component", "labels": [3], "voxels_changed": {"3": 8}}]
    assert sitk.GetArrayFromImage(image)[6, 6, 6] == 3  # the input is left as it was


def test_2d_images_use_areas_and_8_connected_objects():
    array = np.zeros((10, 12), np.uint8)  # (y, x), spacing (x, y) = (0.5, 1.0): a pixel is 0.5 mm^2
    array[1:5, 1:5] = 3  # a ring with a hole
    array[2:4, 2:4] = 0
    array[7, 7] = 3  # two pixels touching by a corner: one object of 1 mm^2, kept
    array[8, 8] = 3
    array[8, 1] = 3  # one pixel: 0.5 mm^2, removed
    result = apply(array, PostprocessingStep("remove_smaller_than", (3,), 1.0),
                   PostprocessingStep("fill_holes", (3,)), spacing=(0.5, 1.0))
    expected = array.copy()
    expected[2:4, 2:4] = 3
    expected[8, 1] = 0
    assert np.array_equal(result, expected)


# the command line, end to end with the intensity oracle (the labels at native spacing are the phantom's exactly)

@pytest.fixture
def oracle_case(tmp_path, monkeypatch):
    image, truth = asymmetric_phantom()
    intensity = sitk.GetArrayFromImage(image)
    intensity[28:30, 2:4, 35:37] = -100.0  # a stray fragment of class 3 (8 voxels)
    k, j, i = np.meshgrid(*[np.arange(n) for n in intensity.shape], indexing="ij")
    cavity = (i - 28) ** 2 + (j - 21.6) ** 2 + (k - 12.8) ** 2 < 9  # inside the ball (class 7)
    intensity[cavity] = 0.0
    noisy = sitk.GetImageFromArray(intensity)
    noisy.CopyInformation(image)
    sitk.WriteImage(noisy, str(tmp_path / "image.nrrd"))
    model = tmp_path / "oracle.pt"  # loads as the 3D intensity oracle
    model.write_bytes(b"")
    real = model_file.load_model
    monkeypatch.setattr(model_file, "load_model", lambda p: oracle_model() if Path(p) == model else real(p))
    return tmp_path / "image.nrrd", model, sitk.GetArrayFromImage(truth), cavity


def segment(capsys, image, model, output, *options):
    code = main([str(a) for a in ["segment", image, "-o", output, "--model", model, "--patch", "32", "--device",
                                  "cpu", "--json", *options]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_postprocesses_the_labels_before_writing_and_reports_it(oracle_case, tmp_path, capsys):
    image, model, truth, cavity = oracle_case
    code, out, err = segment(capsys, image, model, tmp_path / "plain.nrrd")
    assert code == 0, err
    plain = json.loads(out)
    assert plain["postprocessing"] == [] and "postprocess" not in [s["name"] for s in plain["stages"]]
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain.nrrd")))
    assert raw[28, 2, 35] == 3 and raw[cavity].max() == 0  # the fragment and the cavity are there

    output = tmp_path / "out.nrrd"
    code, out, err = segment(capsys, image, model, output, "--fill-holes", "--largest-component", "3",
                             "--remove-smaller-than", "1000", "7")
    assert code == 0, err
    summary = json.loads(out)
    assert [s["name"] for s in summary["stages"]][-2:] == ["postprocess", "write"]
    assert "[6/7] postprocess" in err
    assert summary["postprocessing"] == [
        {"operation": "remove_smaller_than", "labels": [7], "min_volume_mm3": 1000.0, "voxels_changed": {"7": 0}},
        {"operation": "largest_component", "labels": [3], "voxels_changed": {"3": 8}},
        {"operation": "fill_holes", "labels": [3, 7], "voxels_changed": {"3": 0, "7": int(cavity.sum())}},
    ]
    result = sitk.ReadImage(str(output))
    assert result.GetSize() == sitk.ReadImage(str(image)).GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(result), truth)


@pytest.mark.parametrize("options, words", [
    (["--fill-holes", "5"], ["--fill-holes", "5", "3 (class 3), 7 (class 7)"]),
    (["--largest-component", "0"], ["--largest-component", "0", "3 (class 3)"]),
    (["--remove-smaller-than", "10", "3", "4"], ["--remove-smaller-than", "4", "7 (class 7)"]),
    (["--remove-smaller-than", "-5"], ["--remove-smaller-than", "-5", "0 mm^3 or more"]),
    (["--remove-smaller-than", "nan"], ["--remove-smaller-than", "0 mm^3 or more"]),
    (["--remove-smaller-than", "10", "3.5"], ["3.5", "whole numbers"]),
    (["--largest-component", "x"], ["--largest-component", "x"]),
])
def test_bad_postprocessing_options_are_one_line_errors(oracle_case, tmp_path, capsys, options, words):
    image, model, _, _ = oracle_case
    output = tmp_path / "out.nrrd"
    if options[-1] == "x":  # argparse's own usage error exits through SystemExit
        with pytest.raises(SystemExit) as exit_:
            segment(capsys, image, model, output, *options)
        code, err = exit_.value.code, capsys.readouterr().err
    else:
        code, _, err = segment(capsys, image, model, output, *options)
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    assert not output.exists()


def test_volumes_are_measured_at_the_input_spacing_when_it_is_given(oracle_case, tmp_path, capsys):
    """The header says 1 mm, the scan's true spacing is 3 mm (--input-spacing): the ball of class 7 is 27 times the
    volume its header gives, so a size between the two keeps it."""
    image, model, truth, cavity = oracle_case
    ball = int((truth == 7).sum()) - int(cavity.sum())  # as segmented: the cavity is background
    size = 2.0 * ball  # mm^3: above its volume at 1 mm per voxel, far below it at 27 mm^3
    output = tmp_path / "out.nrrd"
    code, out, err = segment(capsys, image, model, output, "--input-spacing", "3", "3", "3",
                             "--remove-smaller-than", str(size), "7")
    assert code == 0, err
    assert json.loads(out)["postprocessing"][0]["voxels_changed"] == {"7": 0}
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert (result == 7).sum() == ball
    assert sitk.ReadImage(str(output)).GetSpacing() == (1.0, 1.0, 1.0)  # the output keeps the input's header
    code, out, err = segment(capsys, image, model, tmp_path / "header.nrrd", "--remove-smaller-than", str(size), "7")
    assert code == 0, err
    assert json.loads(out)["postprocessing"][0]["voxels_changed"] == {"7": ball}  # at the header's 1 mm, removed


def test_postprocess_measures_with_the_spacing_given():
    array = np.zeros((5, 6, 7), np.uint8)
    array[1:3, 1:3, 1:3] = 1  # 8 voxels: 8 mm^3 at the header's 1 mm, 216 mm^3 at 3 mm
    step = PostprocessingStep("remove_smaller_than", (1,), 100.0)
    image = labels_image(array)
    assert sitk.GetArrayFromImage(postprocess(image, [step])[0]).sum() == 0
    assert sitk.GetArrayFromImage(postprocess(image, [step], (3.0, 3.0, 3.0))[0]).sum() == 8


@pytest.mark.parametrize("options", [[[10, 2], [20, 1, 2]], [[10], [20, 1]], [[10], [20]]])
def test_steps_refuse_two_sizes_for_one_class_whoever_asks(options):
    """The command line and the Slicer logic build their steps here: neither may give one class two sizes."""
    from HyperSpaceSegmentationLib.errors import UserError
    from HyperSpaceSegmentationLib.postprocessing import steps_from_options

    with pytest.raises(UserError, match="two sizes"):
        steps_from_options(options, None, None)
    assert len(steps_from_options([[10, 1], [10, 1], [5, 2]], None, None)) == 3  # the same size twice is no conflict
