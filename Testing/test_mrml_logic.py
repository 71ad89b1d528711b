"""The Slicer layer on real MRML nodes (Kitware's slicer-core wheel, headless): segment() through the real
background process, cancel, evaluate() into a table node, and the largest-disagreement slice; and the engine's
machine-readable progress lines that the module follows. Skipped where slicer-core is not installed."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from conftest import OBLIQUE, asymmetric_phantom, tiny_model
from HyperSpaceSegmentationLib import cli
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.evaluation import METRICS, evaluate_files
from HyperSpaceSegmentationLib.evaluation.labels import classes_from_labels
from HyperSpaceSegmentationLib.io.images import ijk_to_lps, write_labels
from HyperSpaceSegmentationLib.io.model_file import save_model
from HyperSpaceSegmentationLib.progress import Reporter, parse_progress_line, progress_fraction

NAMES = {0: "background", 3: "box", 7: "ball"}
COLORS = {3: (0.9, 0.1, 0.2), 7: (0.1, 0.7, 0.3)}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture
def scene():
    """A headless Slicer core application (see slicer_app.py); fails a test that caused a VTK error."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    from slicer_app import VtkErrors, start_application, stop_application

    errors = VtkErrors().start()
    scene = start_application()
    yield scene
    stop_application(scene)
    errors.stop()
    assert not errors.messages, "VTK reported errors:\n" + "\n".join(errors.messages)


@pytest.fixture
def logic(scene):
    from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic

    return HyperSpaceMRMLLogic()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """The tiny model with label values 3 and 7 (not 1..N) and colours, saved as a model file."""
    model = tiny_model()
    model.labels, model.colors = NAMES, COLORS
    return save_model(model, tmp_path / "tiny.pt")


def volume_node(image: sitk.Image, name: str = "scan"):
    """A volume node built from an array and the image's geometry converted from LPS to RAS here, independently
    of the logic's export (which goes through Slicer's storage node)."""
    import slicer.util

    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), ijkToRAS=LPS_TO_RAS @ ijk_to_lps(image),
                                          name=name)


def segmentation_node(path: Path, reference_volume=None):
    """A segmentation node read from a .seg.nrrd with Slicer's storage node, as Slicer loads one."""
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", path.name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return node


def labels_on_volume_grid(segmentation, volume) -> np.ndarray:
    """The segmentation exported onto the volume's grid by Slicer, each segment drawn with its label value."""
    import slicer.util

    result = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.int32)
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment_id = segments.GetNthSegmentID(index)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume) > 0
        result[mask] = segments.GetSegment(segment_id).GetLabelValue()
    return result


def assert_on_grid_of(segmentation, image: sitk.Image) -> None:
    """Every segment's labelmap lies on the image's own voxel grid (no resampling, no shift, no flip)."""
    import vtk

    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        labelmap = segmentation.GetBinaryLabelmapInternalRepresentation(segments.GetNthSegmentID(index))
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        np.testing.assert_allclose(np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]),
                                   LPS_TO_RAS @ ijk_to_lps(image), atol=1e-9)


def test_progress_lines_follow_the_stages():
    stream = io.StringIO()
    reporter = Reporter(stages=2, stream=stream, progress_lines=True)
    with reporter.stage("load"):
        pass
    with reporter.stage("predict 3 windows", total=3) as update:
        update(1)
        update(2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/2] load"  # the human-readable lines stay
    events = [parse_progress_line(line) for line in lines if line.startswith("HYPERSPACE_PROGRESS ")]
    assert [(e["stage"], e["done"], e["total"]) for e in events] == [
        (1, None, None), (1, None, None), (2, 0, 3), (2, 1, 3), (2, 3, 3), (2, 3, 3)]
    assert events[3]["name"] == "predict 3 windows" and events[3]["stages"] == 2
    assert "seconds" in events[1] and "seconds" in events[-1]
    assert [round(progress_fraction(e), 4) for e in events] == [0.0, 0.5, 0.5, 0.6667, 1.0, 1.0]
    assert parse_progress_line("[1/2] load") is None and parse_progress_line("HYPERSPACE_PROGRESS {oops") is None


def test_segment_command_prints_progress_lines(tmp_path, model_file, capsys):
    image, _ = asymmetric_phantom(size=(20, 18, 16))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    assert cli.main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--model",
                     str(model_file), "--device", "cpu", "--quiet", "--progress-lines"]) == 0
    events = [parse_progress_line(line) for line in capsys.readouterr().err.splitlines()]
    assert all(events) and [e["stage"] for e in events if "seconds" in e] == [1, 2, 3, 4, 5, 6]
    predict = [e for e in events if e["name"].startswith("predict")]
    assert predict[-1]["done"] == predict[-1]["total"] >= 1


def test_segment_oblique_and_transformed_volumes_match_the_command_line(scene, logic, tmp_path, model_file):
    import slicer

    image, _ = asymmetric_phantom(size=(22, 20, 14), spacing=(1.3, 0.9, 2.2), origin=(12.5, -30.0, 7.25),
                                  direction=OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    assert cli.main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "cli.nrrd"), "--model",
                     str(model_file), "--device", "cpu", "--quiet"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nrrd")))
    assert {3, 7} <= set(np.unique(expected))  # both classes present: a flip or shift would show

    plain = volume_node(image, "plain")
    moved = volume_node(image, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(
        [[0.0, -1.0, 0.0, 40.0], [1.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.0, 12.0], [0, 0, 0, 1]])))
    moved.SetAndObserveTransformNodeID(transform.GetID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "study")
    hierarchy.CreateItem(study, moved)

    jobs = [logic.segment(node, "native", model=model_file, device="cpu", wait=False) for node in (plain, moved)]
    results = [job.wait(timeout=120) for job in jobs]
    assert all(job.status == "done" and job.progress == 1.0 and not os.path.exists(job.folder) for job in jobs)
    for node, result in zip((plain, moved), results):
        assert result.IsA("vtkMRMLSegmentationNode") and result.GetName() == f"{node.GetName()} segmentation"
        np.testing.assert_array_equal(labels_on_volume_grid(result, node), expected)
        assert_on_grid_of(result, image)
        segments = result.GetSegmentation()
        found = {segments.GetNthSegment(i).GetLabelValue(): (segments.GetNthSegment(i).GetName(),
                                                            segments.GetNthSegment(i).GetColor())
                 for i in range(segments.GetNumberOfSegments())}
        assert found == {v: (NAMES[v], pytest.approx(COLORS[v])) for v in (3, 7)}
        assert result.GetNodeReference(result.GetReferenceImageGeometryReferenceRole()) is node
    assert results[1].GetTransformNodeID() == transform.GetID() and results[0].GetTransformNodeID() is None
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(results[1])) == study


def test_cancel_ends_the_process_tree_and_leaves_nothing(scene, logic, tmp_path, model_file):
    if os.name == "nt":
        pytest.skip("the launcher below is a POSIX shell script")
    import sys

    launcher = tmp_path / "PythonSlicer"  # like Slicer's launcher, it runs the interpreter as a child process
    launcher.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    logic.pythonExecutable = str(launcher)
    image, _ = asymmetric_phantom(size=(64, 64, 48))
    job = logic.segment(volume_node(image), 1.0, model=model_file, device="cpu", wait=False)
    deadline = time.monotonic() + 60
    while not job.log and job.poll() == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    tree = [psutil.Process(job.process.pid), *psutil.Process(job.process.pid).children(recursive=True)]
    assert job.poll() == "running" and len(tree) == 2  # the launcher and the engine
    job.cancel()
    assert job.status == "cancelled" and job.result is None
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in tree)
    assert not os.path.exists(job.folder)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    with pytest.raises(RuntimeError, match="cancelled"):
        job.wait()


def test_evaluate_table_equals_the_command_line_and_saves_units(scene, logic, tmp_path):
    import slicer

    image, labels = asymmetric_phantom(size=(24, 20, 16), spacing=(1.2, 0.8, 2.5), origin=(-4.0, 9.0, 30.0),
                                       direction=OBLIQUE)
    predicted = sitk.GetArrayFromImage(labels)
    predicted[:, :, 3:6] = np.where(predicted[:, :, 3:6] == 3, 0, predicted[:, :, 3:6])  # part of the box missed
    predicted[4:7, 2:5, 15:19] = 7  # a false ball fragment
    prediction = sitk.GetImageFromArray(predicted)
    prediction.CopyInformation(labels)
    write_labels(labels, tmp_path / "reference.seg.nrrd", NAMES)
    write_labels(prediction, tmp_path / "prediction.seg.nrrd", {**NAMES, 9: "unmatched"})
    volume = volume_node(image)
    reference_node = segmentation_node(tmp_path / "reference.seg.nrrd", volume)
    prediction_node = segmentation_node(tmp_path / "prediction.seg.nrrd", volume)

    table = logic.evaluate(reference_node, prediction_node, tolerance=1.5)
    expected = evaluate_files(tmp_path / "reference.seg.nrrd", tmp_path / "prediction.seg.nrrd",  # --labels box ball
                              classes_from_labels(["box", "ball"]), tolerance=1.5)
    data = table.GetTable()
    assert data.GetNumberOfRows() == 2
    assert [data.GetColumnByName("segment").GetValue(r) for r in range(2)] == ["box", "ball"]
    for row, name in enumerate(("box", "ball")):
        for metric in METRICS:
            value = data.GetColumnByName(metric).GetValue(row)
            assert value == pytest.approx(expected[f"{name}_{metric}"], rel=1e-12, nan_ok=True), (name, metric)
        assert data.GetColumnByName("empty").GetValue(row) == expected[f"{name}_empty"]
    assert table.GetColumnUnitLabel("haus95") == "mm" and table.GetColumnUnitLabel("vol_ref") == "mL"
    assert table.GetColumnTitle("haus95") == "95th-percentile Hausdorff distance [mm]"

    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(tmp_path / "metrics.csv"))
    assert storage.WriteData(table)
    schema = (tmp_path / "metrics.schema.csv").read_text()
    assert "haus95" in schema and "mm" in schema
    reread = scene.AddNewNodeByClass("vtkMRMLTableNode")
    assert storage.ReadData(reread)
    assert reread.GetColumnUnitLabel("haus95") == "mm" and reread.GetColumnUnitLabel("vol_pred") == "mL"
    assert reread.GetTable().GetColumnByName("dice").GetValue(1) == pytest.approx(expected["ball_dice"], rel=1e-6)


def review_nodes(scene, tmp_path, image, labels, predicted):
    """``image``'s volume node, the reference (``labels``) and the prediction (the array ``predicted`` on its grid) as
    its segmentation nodes, read from .seg.nrrd files, and an axial slice node."""
    prediction = sitk.GetImageFromArray(predicted)
    prediction.CopyInformation(labels)
    write_labels(labels, tmp_path / "reference.seg.nrrd", NAMES)
    write_labels(prediction, tmp_path / "prediction.seg.nrrd", NAMES)
    volume = volume_node(image)
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert slice_node.SetOrientation("Axial")
    return (volume, segmentation_node(tmp_path / "reference.seg.nrrd", volume),
            segmentation_node(tmp_path / "prediction.seg.nrrd", volume), slice_node)


def test_largest_disagreement_moves_the_slice_node(scene, logic, tmp_path):
    origin, spacing = (10.0, -20.0, 5.0), (1.5, 1.0, 2.5)
    image, labels = asymmetric_phantom(size=(20, 18, 14), spacing=spacing, origin=origin)
    predicted = sitk.GetArrayFromImage(labels)
    predicted[4, 2:8, 14:19] = 7  # 30 wrong voxels on slice k=4, around (i, j) = (16, 4.5)
    predicted[9, 15:17, 1:7] = 7  # 12 on slice k=9, around (3.5, 15.5)
    volume, reference_node, prediction_node, slice_node = review_nodes(scene, tmp_path, image, labels, predicted)
    slice_node.SetLayoutName("Red")

    for rank, (i, j, k) in enumerate([(16.0, 4.5, 4), (3.5, 15.5, 9)]):
        ras = logic.largest_disagreement_slice(reference_node, prediction_node, "ball", slice_node, rank=rank)
        lps = np.array(origin) + np.array(spacing) * (i, j, k)
        assert ras == pytest.approx((-lps[0], -lps[1], lps[2]))
        assert slice_node.GetSliceOffset() == pytest.approx(origin[2] + k * spacing[2])
    with pytest.raises(UserError, match="differ on 2 slices"):
        logic.largest_disagreement_slice(reference_node, prediction_node, "ball", slice_node, rank=2)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # no temporary node left


def test_bad_inputs_give_one_line_user_errors(scene, logic, tmp_path, monkeypatch):
    image, labels = asymmetric_phantom(size=(12, 10, 8))
    volume = volume_node(image)
    with pytest.raises(UserError, match="select a scalar volume"):
        logic.segment(None)
    with pytest.raises(UserError, match="spacing"):
        logic.segment(volume, "fine")
    with pytest.raises(UserError, match="does not exist"):
        logic.segment(volume, model=tmp_path / "missing.pt")
    logic.pythonExecutable = str(tmp_path / "no-such-python")
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with pytest.raises(UserError, match="cannot start"):
        logic.segment(volume)
    assert not any(temporary.iterdir())  # the exported volume's folder is removed
    write_labels(labels, tmp_path / "a.seg.nrrd", NAMES)
    write_labels(labels, tmp_path / "b.seg.nrrd", {0: "background", 3: "cube", 7: "sphere"})
    with pytest.raises(UserError, match="no segment name in common"):
        logic.evaluate(segmentation_node(tmp_path / "a.seg.nrrd"), segmentation_node(tmp_path / "b.seg.nrrd"))
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


def test_slicer_loads_the_engines_seg_nrrd_on_the_scans_full_grid(scene, tmp_path):
    """A .seg.nrrd loaded on its own (no volume to take the geometry from) exports onto the scan's grid, not onto
    the segments' bounding box; segments keep their values, names and colours."""
    import slicer
    import vtk

    image, labels = asymmetric_phantom(size=(40, 36, 12), spacing=(0.7, 0.8, 3.0), origin=(-12.5, 30.2, 101.0),
                                       direction=OBLIQUE)
    path = write_labels(labels, tmp_path / "result.seg.nrrd", NAMES, {3: COLORS[3]})
    node = segmentation_node(path)
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
        node, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    assert labelmap.GetImageData().GetDimensions() == image.GetSize()
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(ijk_to_ras, LPS_TO_RAS @ ijk_to_lps(image), atol=1e-4)
    segments = {node.GetSegmentation().GetNthSegment(i).GetName(): node.GetSegmentation().GetNthSegment(i)
                for i in range(node.GetSegmentation().GetNumberOfSegments())}
    assert {name: s.GetLabelValue() for name, s in segments.items()} == {"box": 3, "ball": 7}
    assert segments["box"].GetColor() == pytest.approx(COLORS[3])


def test_input_spacing_replaces_a_lost_header_spacing(scene, logic, tmp_path, model_file):
    """A volume whose spacing was lost (1 mm), segmented with its true spacing, equals the scan with the right header."""
    image, _ = asymmetric_phantom(size=(22, 20, 14), spacing=(1.3, 0.9, 2.2), direction=OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    assert cli.main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "cli.nrrd"), "--model",
                     str(model_file), "--device", "cpu", "--quiet"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nrrd")))
    lost = sitk.Image(image)
    lost.SetSpacing((1.0, 1.0, 1.0))
    node = volume_node(lost, "lost spacing")
    result = logic.segment(node, "native", model=model_file, device="cpu", input_spacing=(1.3, 0.9, 2.2))
    np.testing.assert_array_equal(labels_on_volume_grid(result, node), expected)
    assert_on_grid_of(result, lost)


def test_restrict_to_a_segment_matches_the_command_lines_mask(scene, logic, tmp_path, model_file):
    """A brain-mask-like segment of another segmentation node: the result is background outside it, and equals the
    command line with the same mask (--mask); a missing or empty segment is a one-line error."""
    image, _ = asymmetric_phantom(size=(22, 20, 14), spacing=(1.3, 0.9, 2.2), direction=OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    half = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    half[:, :, :11] = 1  # the first half along i
    mask = sitk.GetImageFromArray(half)
    mask.CopyInformation(image)
    write_labels(mask, tmp_path / "mask.seg.nrrd", {0: "background", 1: "half"})
    assert cli.main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "cli.nrrd"), "--model",
                     str(model_file), "--device", "cpu", "--mask", str(tmp_path / "mask.seg.nrrd"), "--quiet"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nrrd")))
    assert np.all(expected[:, :, 11:] == 0) and (expected[:, :, :11] > 0).any()
    node = volume_node(image)
    brain = segmentation_node(tmp_path / "mask.seg.nrrd")
    result = logic.segment(node, "native", model=model_file, device="cpu", restrict_to=(brain, "half"))
    np.testing.assert_array_equal(labels_on_volume_grid(result, node), expected)
    first = logic.segment(node, "native", model=model_file, device="cpu", restrict_to=(brain, ""))  # its only one
    np.testing.assert_array_equal(labels_on_volume_grid(first, node), expected)
    with pytest.raises(UserError, match="has no segment named 'brain'"):
        logic.segment(node, restrict_to=(brain, "brain"))
    far = sitk.Image(mask)
    far.SetOrigin((900.0, 0.0, 0.0))
    write_labels(far, tmp_path / "far.seg.nrrd", {0: "background", 1: "half"})
    with pytest.raises(UserError, match="covers none of"):
        logic.segment(node, restrict_to=(segmentation_node(tmp_path / "far.seg.nrrd"), "half"))


def node_counts(scene) -> dict[str, int]:
    """The scene's nodes by class."""
    import collections

    return dict(collections.Counter(scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes())))


def added_nodes(scene, before: dict[str, int]) -> dict[str, int]:
    after = node_counts(scene)
    return {name: after.get(name, 0) - before.get(name, 0) for name in {*before, *after}
            if after.get(name, 0) != before.get(name, 0)}


def test_review_calls_leave_exactly_the_nodes_they_promise(scene, logic, tmp_path, model_file):
    """evaluate adds one table node, largest_disagreement_slice and a failed call none: no orphan display or colour
    node; an empty common segment gives a row that says so; a tolerance typed as text is read as a number."""
    image, labels = asymmetric_phantom(size=(20, 18, 14), spacing=(1.5, 1.0, 2.5))
    predicted = sitk.GetArrayFromImage(labels)
    predicted[4, 2:8, 14:19] = 7
    volume, reference_node, prediction_node, slice_node = review_nodes(scene, tmp_path, image, labels, predicted)

    before = node_counts(scene)
    table = logic.evaluate(reference_node, prediction_node, tolerance="1.5")  # from a text field
    assert added_nodes(scene, before) == {"vtkMRMLTableNode": 1}
    assert table.GetAttribute("HyperSpace.tolerance_mm") == "1.5"
    before = node_counts(scene)
    logic.largest_disagreement_slice(reference_node, prediction_node, "ball", slice_node)
    assert added_nodes(scene, before) == {}
    with pytest.raises(UserError, match="no slice of rank 5"):
        logic.largest_disagreement_slice(reference_node, prediction_node, "ball", slice_node, rank=5)
    for tolerance in ("one", None, True, -1):
        with pytest.raises(UserError, match=f"tolerance {tolerance!r}: give a surface-Dice tolerance"):
            logic.evaluate(reference_node, prediction_node, tolerance=tolerance)
    assert added_nodes(scene, before) == {}

    # a reference whose common segment was added but never painted (and a prediction that has it painted)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "unpainted")
    empty.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    empty.GetSegmentation().AddEmptySegment("", "ball")
    before = node_counts(scene)
    table = logic.evaluate(empty, prediction_node)
    assert added_nodes(scene, before) == {"vtkMRMLTableNode": 1}
    data = table.GetTable()
    assert data.GetNumberOfRows() == 1 and data.GetColumnByName("empty").GetValue(0) == "reference"
    assert data.GetColumnByName("dice").GetValue(0) == 0.0 and data.GetColumnByName("vol_ref").GetValue(0) == 0.0
    before = node_counts(scene)
    with pytest.raises(UserError, match="differ on 0 slices"):
        logic.largest_disagreement_slice(empty, empty, "ball", slice_node)
    ungridded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no grid")
    ungridded.GetSegmentation().AddEmptySegment("", "ball")
    with pytest.raises(UserError, match="no grid has no painted voxel and no reference geometry"):
        logic.evaluate(ungridded, prediction_node)
    assert added_nodes(scene, before) == {"vtkMRMLSegmentationNode": 1}  # only the test's own node


def test_label_maps_and_vector_volumes_are_refused_in_one_line(scene, logic):
    import slicer.util
    import vtk

    image, labels = asymmetric_phantom(size=(12, 10, 8))
    label_map = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(labels), name="tissue labels",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
    rgb = np.repeat(sitk.GetArrayFromImage(image)[..., None], 3, axis=-1).astype(np.uint8)
    vector = slicer.util.addVolumeFromArray(rgb, name="colour photo", nodeClassName="vtkMRMLVectorVolumeNode")
    components = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "two echoes")
    data = vtk.vtkImageData()  # a scalar volume node holding two values per voxel, as some readers make them
    data.SetDimensions(12, 10, 8)
    data.AllocateScalars(vtk.VTK_FLOAT, 2)
    components.SetAndObserveImageData(data)
    logic.pythonExecutable = "no-such-python"  # reaching the process start would say "cannot start"
    before = node_counts(scene)
    for call in (logic.segment, logic.estimate):
        with pytest.raises(UserError, match=r"^tissue labels is a label map volume, not a scan: select the scan"):
            call(label_map)
        for node, count in ((vector, 3), (components, 2)):
            with pytest.raises(UserError, match=rf"^{node.GetName()} is a vector volume \({count} values per voxel\)"):
                call(node)
    assert added_nodes(scene, before) == {}


def test_segment_folder_runs_one_engine_batch_and_reports_each_case(scene, logic, tmp_path, model_file):
    """Every case goes through one engine process (the model loaded once); each case is reported from the batch's
    summary: the good ones written, the one the engine refuses failed with the engine's reason."""
    if os.name == "nt":
        pytest.skip("the counting launcher below is a POSIX shell script")
    import sys

    starts = tmp_path / "starts.txt"
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\necho started >> "{starts}"\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    logic.pythonExecutable = str(launcher)
    scans, output = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    for case, size in (("a", (20, 18, 16)), ("b", (18, 20, 14)), ("c", (16, 16, 12))):
        sitk.WriteImage(asymmetric_phantom(size=size)[0], str(scans / f"{case}.nrrd"))
    vector = sitk.Compose(*[asymmetric_phantom(size=(16, 16, 12))[0]] * 2)  # two values per voxel: refused
    sitk.WriteImage(vector, str(scans / "two echoes.nrrd"))
    lines = []
    result = logic.segment_folder(scans, output, "native", model_file, "cpu", log=lines.append)
    assert starts.read_text(encoding="utf-8").splitlines() == ["started"]  # one engine process for the four cases
    assert result.done == ["a", "b", "c"] and list(result.failed) == ["two echoes"] and result.exit_code == 1
    assert result.failed["two echoes"].endswith("two echoes.nrrd has 2 components per voxel: give a single-channel "
                                                "(scalar) image")  # the engine's reason, from its summary
    assert lines == [f"{case}: wrote {output / f'{case}.seg.nrrd'}" for case in "abc"] + [
        f"two echoes: failed, skipped: {result.failed['two echoes']}"]
    assert sorted(p.name for p in output.iterdir()) == ["a.seg.nrrd", "b.seg.nrrd", "c.seg.nrrd"]
    for case in "abc":
        expected = cli.main(["segment", str(scans / f"{case}.nrrd"), "-o", str(tmp_path / f"{case}.nrrd"),
                             "--model", str(model_file), "--device", "cpu", "--quiet"])
        assert expected == 0
        written = sitk.ReadImage(str(output / f"{case}.seg.nrrd"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written).squeeze(),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{case}.nrrd"))))
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
