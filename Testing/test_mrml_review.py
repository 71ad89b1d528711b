"""The Slicer logic's review options on real MRML nodes (slicer-core, headless): test-time augmentation, the
uncertainty volume node and its display threshold, postprocessing (label values or class names) and ensembles
passed to the engine, and the most uncertain slice."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import OBLIQUE, asymmetric_phantom, tiny_model
from HyperSpaceSegmentationLib import cli
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.io.images import ijk_to_lps
from HyperSpaceSegmentationLib.io.model_file import save_model
from HyperSpaceSegmentationLib.mrml_logic import postprocessing_words
from test_mrml_logic import (  # noqa: F401 (fixtures)
    COLORS, LPS_TO_RAS, NAMES, labels_on_volume_grid, logic, model_file, scene, volume_node,
)


def cli_segment(tmp_path, image, *options) -> tuple[np.ndarray, str]:
    """The command line's labels for ``image`` with ``options``, and the folder of its files."""
    folder = tmp_path / f"cli{len(list(tmp_path.glob('cli*')))}"
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "scan.nrrd"))
    assert cli.main(["segment", str(folder / "scan.nrrd"), "-o", str(folder / "labels.nrrd"), "--device", "cpu",
                     "--quiet", *map(str, options)]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd"))), str(folder)


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_tta_and_uncertainty_match_the_command_line(scene, logic, tmp_path, model_file):
    import slicer
    import slicer.util

    image, _ = asymmetric_phantom(size=(22, 20, 14), spacing=(1.3, 0.9, 2.2), origin=(12.5, -30.0, 7.25),
                                  direction=OBLIQUE)
    expected, _ = cli_segment(tmp_path, image, "--model", model_file, "--uncertainty",
                              tmp_path / "cli-uncertainty.nrrd", "--tta")
    expected_uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli-uncertainty.nrrd")))
    volume = volume_node(image)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())

    job = logic.segment(volume, "native", model=model_file, device="cpu", wait=False, tta=True, uncertainty=True)
    segmentation = job.wait(timeout=180)
    assert "--tta" in job.command and "--uncertainty" in job.command  # the one-shot command line
    np.testing.assert_array_equal(labels_on_volume_grid(segmentation, volume), expected)
    node = job.uncertainty
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetName() == "scan uncertainty"
    assert segmentation.GetNodeReference("hyperspaceUncertainty") is node
    assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(volume), atol=1e-5)
    np.testing.assert_allclose(ijk_to_ras(node), LPS_TO_RAS @ ijk_to_lps(image), atol=1e-5)
    values = slicer.util.arrayFromVolume(node)
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0
    np.testing.assert_array_equal(values, expected_uncertainty)
    assert node.GetTransformNodeID() == transform.GetID() == segmentation.GetTransformNodeID()
    display = node.GetDisplayNode()
    assert display.GetColorNode().GetName() in ("Inferno", "PET-Heat")
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert not os.path.exists(job.folder)


def test_postprocessing_and_ensembles_are_passed_to_the_engine(scene, logic, tmp_path, model_file):
    image, _ = asymmetric_phantom(size=(24, 22, 16))
    second = tiny_model(seed=1)
    second.labels, second.colors = NAMES, COLORS
    second_file = save_model(second, tmp_path / "second.pt")
    plain, _ = cli_segment(tmp_path, image, "--model", model_file, second_file)
    expected, _ = cli_segment(tmp_path, image, "--model", model_file, second_file, "--largest-component",
                              "--remove-smaller-than", 5, 3)
    assert not np.array_equal(plain, expected)  # the untrained models leave stray pieces to remove
    volume = volume_node(image)
    result = logic.segment(volume, model=[model_file, second_file], device="cpu",
                           postprocessing={"largest_component": True, "remove_smaller_than": (5, [3])})
    np.testing.assert_array_equal(labels_on_volume_grid(result, volume), expected)


def test_bad_review_options_are_one_line_user_errors_before_any_process(scene, logic, tmp_path, model_file,
                                                                         monkeypatch):
    import slicer.util

    def launch(*arguments, **options):
        raise AssertionError(f"a process was started: {arguments}")

    monkeypatch.setattr(slicer.util, "launchConsoleProcess", launch)
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    bad = [
        ({"postprocessing": {"largest_components": True}}, "the steps are"),
        ({"postprocessing": {"fill_holes": 3}}, "list of label values"),
        ({"postprocessing": {"remove_smaller_than": -1}}, "0 mm\\^3 or more"),
        ({"postprocessing": {"remove_smaller_than": "big"}}, "MM3"),
        ({"postprocessing": {"largest_component": [3, 5]}}, "5 is not a foreground label"),
        ({"postprocessing": {"fill_holes": [3.5]}}, "whole numbers"),
        ({"postprocessing": {"fill_holes": ["nucleus"]}}, "'nucleus' is not a class of the model; its classes are box, ball"),
        ({"postprocessing": ["fill_holes"]}, "give a dict"),
        ({"tta": [0, 3]}, "tta"),
        ({"tta": "all"}, "tta"),
        ({"mode": "2d", "tta": [2]}, "tta"),
        ({"model": [model_file, tmp_path / "missing.pt"]}, "does not exist"),
        ({"model": []}, "empty list"),
    ]
    for arguments, message in bad:
        arguments = {"model": model_file, **arguments}
        with pytest.raises(UserError, match=message) as error:
            logic.segment(volume, device="cpu", **arguments)
        assert "\n" not in str(error.value)


def test_most_uncertain_slice_moves_the_slice_node(scene, logic):
    import slicer
    import slicer.util

    origin, spacing = (10.0, -20.0, 5.0), (1.5, 1.0, 2.5)
    values = np.full((14, 18, 20), 0.01, np.float32)  # (k, j, i): a little uncertainty everywhere
    values[4, 2:8, 14:19] = 0.9  # 30 voxels on slice k=4, around (i, j) = (16, 4.5)
    values[9, 15:17, 1:7] = 0.8  # 12 on slice k=9, around (3.5, 15.5)
    ijk_to_ras = LPS_TO_RAS @ np.array([[spacing[0], 0, 0, origin[0]], [0, spacing[1], 0, origin[1]],
                                        [0, 0, spacing[2], origin[2]], [0, 0, 0, 1]])
    node = slicer.util.addVolumeFromArray(values, ijkToRAS=ijk_to_ras, name="uncertainty")
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("Red")
    assert slice_node.SetOrientation("Axial")
    for rank, (i, j, k) in enumerate([(16.0, 4.5, 4), (3.5, 15.5, 9)]):
        ras = logic.most_uncertain_slice(node, slice_node, rank=rank)
        lps = np.array(origin) + np.array(spacing) * (i, j, k)
        assert ras == pytest.approx((-lps[0], -lps[1], lps[2]))
        assert slice_node.GetSliceOffset() == pytest.approx(origin[2] + k * spacing[2])
    assert slice_node.SetOrientation("Sagittal")  # across I: slices 14 to 18 tie (6 voxels of 0.9 each)
    ras = logic.most_uncertain_slice(node, slice_node)
    assert ras == pytest.approx((-(origin[0] + spacing[0] * 14), -(origin[1] + spacing[1] * 4.5), origin[2] + 4 * spacing[2]))
    assert abs(slice_node.GetSliceOffset()) == pytest.approx(origin[0] + spacing[0] * 14)  # the view's normal is L
    with pytest.raises(UserError, match="above 0 on 20 slices, so there is no slice of rank 20"):
        logic.most_uncertain_slice(node, slice_node, rank=20)
    with pytest.raises(UserError, match="select an uncertainty volume"):
        logic.most_uncertain_slice(None, slice_node)


def test_postprocessing_classes_may_be_named():
    words = postprocessing_words({"remove_smaller_than": (5, ["box"]), "fill_holes": ["Ball ", 3]}, NAMES)
    assert words == ["--remove-smaller-than", "5.0", "3", "--fill-holes", "7", "3"]
    with pytest.raises(UserError, match="'background' is not a class"):  # background is never postprocessed
        postprocessing_words({"largest_component": ["background"]}, NAMES)


def test_show_uncertainty_above_hides_the_voxels_below_the_threshold(scene, logic):
    import slicer.util
    from vtk.util.numpy_support import vtk_to_numpy

    values = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "uncertainty")
    slicer.util.updateVolumeFromArray(node, values)
    assert node.GetDisplayNode() is None  # made when needed
    for threshold in (0.5, 0.0, 0.8, 1):
        logic.show_uncertainty_above(node, threshold)
        display = node.GetDisplayNode()
        assert display.GetApplyThreshold() == 1
        assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == (threshold, 1.0)
        producer = display.GetOutputImageDataConnection().GetProducer()  # what the slice views draw: RGBA
        producer.Update()
        rgba = vtk_to_numpy(producer.GetOutputDataObject(0).GetPointData().GetScalars())
        shown = (rgba[:, 3] > 0).reshape(values.shape)
        np.testing.assert_array_equal(shown, values >= threshold)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeDisplayNode") == 1
    for bad in (1.5, -0.1, True, "0.5", float("nan")):
        with pytest.raises(UserError, match="give an uncertainty from 0 to 1"):
            logic.show_uncertainty_above(node, bad)
    with pytest.raises(UserError, match="select an uncertainty volume"):
        logic.show_uncertainty_above(None, 0.5)
