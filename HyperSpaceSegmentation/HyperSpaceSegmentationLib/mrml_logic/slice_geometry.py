"""Slice geometry on MRML nodes, without Qt: IJK-to-RAS matrices (with linear parent transforms), the engine's grid of
a volume (LPS), the slice a slice view shows (``slice_in_view``) and moving a view to a ranked slice
(``jump_to_ranked_slice``). ``vtk``, ``SimpleITK`` are imported inside the functions."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UserError
from .request import IJK

VIEW_ALIGNMENT_TOLERANCE_RAD = 1e-3
"""The largest angle between a slice view's normal and the normal of a volume axis's slices at which the view still
shows those slices. Header round-off (direction cosines stored to 6 decimals, or in float32) is 1e-6 rad or less, and
Slicer's "Rotate to volume plane" aligns a view to rounding; a tilt of 1e-3 rad (0.06 degrees) moves the plane by
0.25 mm across a 250 mm field of view, a fraction of a slice, while a view turned on purpose is far beyond it."""


def matrix_array(matrix: Any) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(volumeNode: Any) -> np.ndarray:
    """The volume's own IJK-to-RAS matrix (no parent transform) as a 4x4 array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix_array(matrix)


def ijk_to_world(volumeNode: Any) -> np.ndarray:
    """The volume's IJK-to-RAS matrix with its parent transforms applied; a non-linear one is a ``UserError``."""
    import vtk

    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return ijk_to_ras(volumeNode)
    if not parent.IsTransformToWorldLinear():
        raise UserError(f"{volumeNode.GetName()} is under a non-linear transform ({parent.GetName()}): harden the "
                        "transform, or choose the slice axis yourself")
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return matrix_array(to_world) @ ijk_to_ras(volumeNode)


def slice_normal(sliceNode: Any) -> np.ndarray:
    """The unit normal (RAS) of the plane a slice view shows."""
    matrix = sliceNode.GetSliceToRAS()
    normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
    return normal / np.linalg.norm(normal)


def grid_image(dimensions: Sequence[int], ijk_to_ras_matrix: np.ndarray) -> Any:
    """An empty SimpleITK image (one byte per voxel) on the grid of an IJK-to-RAS matrix, in LPS."""
    import SimpleITK as sitk

    spacing = np.linalg.norm(ijk_to_ras_matrix[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    grid = sitk.Image(*[int(n) for n in dimensions], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin((lps @ ijk_to_ras_matrix[:3, 3]).tolist())
    grid.SetDirection((lps @ ijk_to_ras_matrix[:3, :3] / spacing).ravel().tolist())
    return grid


def slice_in_view(volumeNode: Any, sliceNode: Any) -> tuple[int, int]:
    """The volume's IJK axis across which the slice view cuts it and the index of the slice it shows (see
    ``HyperSpaceMRMLLogic.slice_in_view``)."""
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.GetImageData() is None:
        raise UserError("select a scalar volume node with image data")
    if sliceNode is None or not sliceNode.IsA("vtkMRMLSliceNode"):
        raise UserError("select a slice view (Red, Yellow or Green)")
    view = sliceNode.GetLayoutName() or sliceNode.GetName()
    to_world = ijk_to_world(volumeNode)
    world_to_ijk = np.linalg.inv(to_world)
    slice_to_ras = matrix_array(sliceNode.GetSliceToRAS())
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    gradients = world_to_ijk[:3, :3]  # row a: the normal of the planes where index a is constant
    angles = np.arctan2(np.linalg.norm(np.cross(gradients, normal), axis=1), np.abs(gradients @ normal))
    axis = int(np.argmin(angles))
    if angles[axis] > VIEW_ALIGNMENT_TOLERANCE_RAD:
        raise UserError(f"the {view} view is turned {math.degrees(angles[axis]):.2g} degrees off the slices of "
                        f"{volumeNode.GetName()}: align it with the view's \"Rotate to volume plane\" action")
    dimensions = volumeNode.GetImageData().GetDimensions()
    centre = to_world[:3] @ np.append((np.array(dimensions) - 1) / 2, 1.0)
    on_plane = centre - ((centre - slice_to_ras[:3, 3]) @ normal) * normal  # the plane's point nearest the centre
    position = float((world_to_ijk[:3] @ np.append(on_plane, 1.0))[axis])
    index = math.floor(position + 0.5)
    if not 0 <= index < dimensions[axis]:
        raise UserError(f"the {view} view lies outside {volumeNode.GetName()} (at slice {position:.1f} along "
                        f"{IJK[axis]}, which has slices 0 to {dimensions[axis] - 1}): move it into the volume")
    return axis, index


def jump_to_ranked_slice(weights: np.ndarray, ijk_to_ras_matrix: np.ndarray, to_world: Any, sliceNode: Any,
                         rank: int, too_few: Callable[[int], str]) -> tuple[float, float, float]:
    """Move ``sliceNode`` to the slice of ``weights`` (a (k, j, i) array of 0 or more on the grid of
    ``ijk_to_ras_matrix``, then ``to_world``), across the view's normal, with the ``rank``-th largest sum (0: the
    largest; slices summing to 0 never count: ``too_few(count)`` is the ``UserError`` message), centred on that
    slice's voxels of at least half its largest weight; returns that centre (RAS, world)."""
    directions = ijk_to_ras_matrix[:3, :3] / np.linalg.norm(ijk_to_ras_matrix[:3, :3], axis=0)
    axis = 2 - int(np.argmax(np.abs(slice_normal(sliceNode) @ directions)))  # arrays are (k, j, i)
    sums = weights.sum(axis=tuple(a for a in range(3) if a != axis))
    slices = [int(s) for s in np.argsort(-sums, kind="stable") if sums[s] > 0]
    if rank >= len(slices):
        raise UserError(too_few(len(slices)))
    plane = np.take(weights, slices[rank], axis=axis)
    kji = np.insert(np.argwhere(plane >= plane.max() / 2).mean(axis=0), axis, slices[rank])
    ras = to_world.TransformPoint(*(ijk_to_ras_matrix @ np.append(kji[::-1], 1.0))[:3])
    sliceNode.JumpSliceByCentering(*ras)
    return tuple(float(v) for v in ras)
