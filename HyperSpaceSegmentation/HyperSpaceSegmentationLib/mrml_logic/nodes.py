"""MRML node helpers of the Slicer logic, without Qt: checking a scan node, a segment's voxels on a volume's grid
(without leaving nodes behind), a ``restrict_to`` mask and its file for the engine, and ``no_new_nodes`` (the scene
left with only the nodes a call promises). ``slicer``, ``vtk`` and ``SimpleITK`` are imported inside the functions."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ..errors import UserError
from .slice_geometry import grid_image, ijk_to_ras


@contextlib.contextmanager
def no_new_nodes() -> Iterator[None]:
    """Remove, on leaving (failed or not), every node added to the scene inside: the temporary label maps and the
    display, colour and storage nodes that Slicer's export functions add with them."""
    import slicer

    scene = slicer.mrmlScene
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in before]):
            scene.RemoveNode(node)


def check_scan(volumeNode: Any, action: str) -> None:
    """A scan to ``action``: a scalar volume node with image data, one value per voxel, and not a label map."""
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.GetImageData() is None:
        raise UserError(f"select a scalar volume node with image data to {action}")
    name = volumeNode.GetName()
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise UserError(f"{name} is a label map volume, not a scan: select the scan to {action}")
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or components > 1:
        raise UserError(f"{name} is a vector volume ({components} values per voxel): select a scan with one value per "
                        f"voxel to {action}, or extract one with the Vector to Scalar Volume module")


def segment_names(node: Any) -> list[str]:
    """The names of a segmentation node's segments, in order."""
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def is_empty(segment: Any) -> bool:
    """Whether ``segment`` holds a binary label map with no extent (a segment added but never painted)."""
    import slicer

    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    return labelmap is not None and labelmap.IsEmpty()


def segment_array(node: Any, segment_id: str, referenceVolumeNode: Any) -> np.ndarray:
    """The segment's voxels on the grid of ``referenceVolumeNode`` (array order k, j, i; 0 outside), all 0 for an empty
    segment. Unlike ``slicer.util.arrayFromSegmentBinaryLabelmap``, it leaves no node in the scene."""
    import slicer
    import slicer.util
    import vtk

    if is_empty(node.GetSegmentation().GetSegment(segment_id)):
        return np.zeros(referenceVolumeNode.GetImageData().GetDimensions()[::-1], np.uint8)
    with no_new_nodes():
        exported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(node, ids, exported,
                                                                                 referenceVolumeNode):
            raise RuntimeError(f"segment {segment_id} of {node.GetName()} could not be exported to a label map")
        return slicer.util.arrayFromVolume(exported).copy()


def segment_mask(restrict_to: tuple[Any, str], volumeNode: Any) -> np.ndarray:
    """The voxels of ``volumeNode`` (array order k, j, i) inside the segment ``restrict_to = (node, name)``."""
    try:
        node, name = restrict_to
    except (TypeError, ValueError):
        raise UserError("restrict_to must be (segmentation node, segment name)") from None
    if node is None or not node.IsA("vtkMRMLSegmentationNode"):
        raise UserError("restrict the result to a segment of a segmentation node: select one, or none")
    segmentation = node.GetSegmentation()
    if not name and segmentation.GetNumberOfSegments():
        name = segmentation.GetSegment(segmentation.GetNthSegmentID(0)).GetName()
    segment_id = segmentation.GetSegmentIdBySegmentName(str(name))
    if not segment_id:
        names = ", ".join(segment_names(node)) or "none"
        raise UserError(f"segmentation {node.GetName()} has no segment named {name!r} (segments: {names}): choose one")
    mask = segment_array(node, segment_id, volumeNode) > 0
    if not mask.any():
        raise UserError(f"segment {name!r} of {node.GetName()} covers none of {volumeNode.GetName()}'s voxels: paint it, "
                        "or choose another segment")
    return mask


def write_mask(mask: np.ndarray, volumeNode: Any, path: str) -> str:
    """``mask`` written as a label map on the grid of ``volumeNode`` (as the engine's input file); returns ``path``."""
    import SimpleITK as sitk

    grid = grid_image(volumeNode.GetImageData().GetDimensions(), ijk_to_ras(volumeNode))
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(grid)
    sitk.WriteImage(image, path, useCompression=True)
    return path
