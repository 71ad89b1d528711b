"""The review of segmentations on MRML nodes, without Qt: the metrics table of a prediction against a reference
(``metrics_table``, the engine's metrics on the reference's grid), the slice walks (``largest_disagreement_slice``,
``most_uncertain_slice``) and the uncertainty display (``show_uncertainty_above``). ``slicer`` and ``vtk`` are imported
inside the functions."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from .nodes import is_empty, no_new_nodes, segment_array, segment_names
from .slice_geometry import grid_image, ijk_to_ras, jump_to_ranked_slice


def check_uncertainty_node(uncertaintyNode: Any) -> None:
    """An uncertainty volume: a scalar volume node with image data."""
    if (uncertaintyNode is None or not uncertaintyNode.IsA("vtkMRMLScalarVolumeNode")
            or uncertaintyNode.GetImageData() is None):
        raise UserError("select an uncertainty volume node (segment with uncertainty=True)")


def show_uncertainty_above(uncertaintyNode: Any, threshold: float) -> None:
    """Show only the voxels of ``uncertaintyNode`` at ``threshold`` or more (see the logic's method)."""
    check_uncertainty_node(uncertaintyNode)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not 0 <= threshold <= 1:
        raise UserError(f"threshold {threshold!r}: give an uncertainty from 0 to 1")
    if uncertaintyNode.GetDisplayNode() is None:
        uncertaintyNode.CreateDefaultDisplayNodes()
    display = uncertaintyNode.GetDisplayNode()
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(1.0)
    display.SetApplyThreshold(1)


def matched_names(reference: Any, prediction: Any) -> list[str]:
    """The reference's segment names that the prediction also has, in the reference's order."""
    for node, role in ((reference, "reference"), (prediction, "prediction")):
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            raise UserError(f"select a segmentation node as the {role}")
    predicted = set(segment_names(prediction))
    names = [name for name in segment_names(reference) if name in predicted]
    if not names:
        raise UserError(f"{reference.GetName()} and {prediction.GetName()} have no segment name in common: rename the "
                        "segments so that matching ones have the same name")
    return names


def on_reference_grid(reference: Any, prediction: Any, names: Sequence[str]) -> tuple[Any, Any, Any]:
    """The named segments of both nodes as engine ``Segmentation``s on the reference's grid (the extent of its
    reference geometry, else of its segments; the prediction resampled there by Slicer, transforms applied), and the
    label map node that holds the grid. An empty segment is all background. Call it inside ``no_new_nodes()``."""
    import slicer

    from ..evaluation.labels import Segmentation

    scene = slicer.mrmlScene
    geometry = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("hyperspace grid"))
    logic = slicer.modules.segmentations.logic()
    segmentation = reference.GetSegmentation()
    painted = any(not is_empty(segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments()))
    if not (painted and logic.ExportAllSegmentsToLabelmapNode(reference, geometry,
                                                              slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)):
        serialized = segmentation.GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
        image = slicer.vtkOrientedImageData()
        if not serialized or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, image):
            raise UserError(f"{reference.GetName()} has no painted voxel and no reference geometry, so it has no grid: "
                            "paint its segments, or set its geometry from its scan (Segment Editor)")
        logic.CreateLabelmapVolumeFromOrientedImageData(image, geometry)
        geometry.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    grid = grid_image(geometry.GetImageData().GetDimensions(), ijk_to_ras(geometry))
    results = []
    for node in (reference, prediction):
        segments, values = {}, np.zeros(grid.GetSize()[::-1], np.int32)
        for name in names:
            segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
            mask = segment_array(node, segment_id, geometry) > 0
            segments[name] = mask
            values[mask] = node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        results.append(Segmentation(grid, values, segments))
    return results[0], results[1], geometry


def metrics_table(referenceSegmentationNode: Any, predictionSegmentationNode: Any, tolerance: Any) -> Any:
    """A new ``vtkMRMLTableNode`` of the prediction scored against the reference (see the logic's ``evaluate``)."""
    import slicer

    from ..evaluation import DEFAULT_METRICS, evaluate_pair
    from ..evaluation.labels import ClassSpec

    given = tolerance
    try:
        tolerance = math.nan if isinstance(tolerance, bool) else float(tolerance)  # "1" from a text field: 1 mm
    except (TypeError, ValueError):
        tolerance = math.nan
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise UserError(f"tolerance {given!r}: give a surface-Dice tolerance of 0 mm or more")
    names = matched_names(referenceSegmentationNode, predictionSegmentationNode)
    with no_new_nodes():
        reference, prediction, _ = on_reference_grid(referenceSegmentationNode, predictionSegmentationNode, names)
    row = evaluate_pair(reference, prediction, [ClassSpec(n, segment=n) for n in names], DEFAULT_METRICS, tolerance)
    scene = slicer.mrmlScene
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(
        f"{predictionSegmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}"))
    _fill_table(table, names, row, DEFAULT_METRICS)
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetAttribute("HyperSpace.tolerance_mm", f"{tolerance:g}")
    return table


def _fill_table(table: Any, names: Sequence[str], row: dict, metrics: Sequence[str]) -> None:
    """One row per segment of ``names``, one column per metric (title, unit and description set), and "empty"."""
    import vtk

    from ..evaluation import METRICS

    columns = [("segment", vtk.vtkStringArray(), "Segment", "", "segment name", names)]
    for metric in metrics:
        spec = METRICS[metric]
        title = spec.description[0].upper() + spec.description[1:] + (f" [{spec.unit}]" if spec.unit else "")
        values = [float(row[f"{n}_{metric}"]) for n in names]
        columns.append((metric, vtk.vtkDoubleArray(), title, spec.unit, spec.description, values))
    columns.append(("empty", vtk.vtkStringArray(), "Empty", "", "empty masks: none, both, reference or prediction",
                    [str(row[f"{n}_empty"]) for n in names]))
    for name, array, title, unit, description, values in columns:
        array.SetName(name)
        for value in values:
            array.InsertNextValue(value)
        table.AddColumn(array)
        table.SetColumnTitle(name, title)
        table.SetColumnUnitLabel(name, unit)
        table.SetColumnDescription(name, description)


def largest_disagreement_slice(referenceSegmentationNode: Any, predictionSegmentationNode: Any, segmentName: str,
                               sliceNode: Any, rank: int) -> tuple[float, float, float]:
    """Move ``sliceNode`` to the ``rank``-th slice where the segment differs most (see the logic's method)."""
    names = matched_names(referenceSegmentationNode, predictionSegmentationNode)
    if segmentName not in names:
        raise UserError(f"no segment named {segmentName!r} in both segmentations (both have: {', '.join(names)})")
    if rank < 0:
        raise UserError(f"rank {rank}: give 0 for the worst slice, 1 for the next, ...")
    import slicer
    import vtk

    with no_new_nodes():
        reference, prediction, geometry = on_reference_grid(referenceSegmentationNode, predictionSegmentationNode,
                                                            [segmentName])
        matrix = ijk_to_ras(geometry)
        to_world = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(geometry.GetParentTransformNode(), None, to_world)
    difference = reference.segments[segmentName] ^ prediction.segments[segmentName]
    return jump_to_ranked_slice(difference, matrix, to_world, sliceNode, rank, lambda count: (
        f"segment {segmentName!r}: reference and prediction differ on {count} slices, so there is no slice of "
        f"rank {rank}"))


def most_uncertain_slice(uncertaintyNode: Any, sliceNode: Any, rank: int) -> tuple[float, float, float]:
    """Move ``sliceNode`` to the ``rank``-th most uncertain slice (see the logic's method)."""
    check_uncertainty_node(uncertaintyNode)
    if sliceNode is None or not sliceNode.IsA("vtkMRMLSliceNode"):
        raise UserError("select a slice view (Red, Yellow or Green)")
    if rank < 0:
        raise UserError(f"rank {rank}: give 0 for the most uncertain slice, 1 for the next, ...")
    import slicer
    import slicer.util
    import vtk

    values = np.asarray(slicer.util.arrayFromVolume(uncertaintyNode), dtype=np.float64)
    values = np.where(np.isfinite(values) & (values > 0), values, 0.0)
    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(uncertaintyNode.GetParentTransformNode(), None, to_world)
    return jump_to_ranked_slice(values, ijk_to_ras(uncertaintyNode), to_world, sliceNode, rank, lambda count: (
        f"{uncertaintyNode.GetName()} is above 0 on {count} slices, so there is no slice of rank {rank}"))
