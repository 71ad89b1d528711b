"""Resampling in physical space that keeps origin, direction and physical extent.

A working grid at spacing ``s`` covers the same physical box as the input grid: its voxels share the
input's direction, and its first and last voxel edges coincide with the input's (up to rounding of the
voxel count), so a result brought back to the input grid lies exactly where the input does.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .io.images import check_spacing


def canonical(image: sitk.Image) -> sitk.Image:
    """The image with axes permuted and flipped to lie closest to L, P, S (no resampling)."""
    return sitk.DICOMOrient(image, "LPS") if image.GetDimension() == 3 else image


# voxel counts within this fraction of a voxel of a half are rounded up: header rounding noise (1e-9 mm and far
# beyond) never flips the working grid, and an exact half always rounds the same way
_HALF_TOLERANCE = 1e-6


def grid_size(extent_mm: Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """Voxels per axis that cover ``extent_mm`` at ``spacing``: nearest count, halves up, at least one."""
    return tuple(max(math.floor(e / s + 0.5 + _HALF_TOLERANCE), 1) for e, s in zip(extent_mm, spacing))


def working_grid(image: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """An empty image (one byte per voxel) on the working grid of ``image`` at ``spacing`` mm."""
    old_spacing = np.array(image.GetSpacing())
    extent = np.array(image.GetSize()) * old_spacing
    size = np.array(grid_size(extent, spacing))
    new_spacing = extent / size  # keep the physical extent exactly
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), -1)
    # the centre of voxel 0 moves so that the outer edge of the grid stays where it was
    origin = np.array(image.GetOrigin()) + direction @ ((new_spacing - old_spacing) / 2)
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in new_spacing])
    grid.SetOrigin([float(v) for v in origin])
    grid.SetDirection(image.GetDirection())
    return grid


def with_spacing(image: sitk.Image, spacing: Sequence[float], option: str) -> sitk.Image:
    """``image`` with its header's spacing replaced by ``spacing`` (one value per image axis, or one for all)."""
    values = tuple(float(s) for s in spacing)
    values = values * image.GetDimension() if len(values) == 1 else values
    if len(values) != image.GetDimension():
        raise UserError(f"{option} has {len(values)} values for a {image.GetDimension()}D image: give 1 or "
                        f"{image.GetDimension()}, in the file's own axis order")
    check_spacing(values, option)
    fixed = sitk.Image(image)
    fixed.SetSpacing(values)
    return fixed


def antialias_sigmas(old_spacing: Sequence[float], new_spacing: Sequence[float]) -> list[float]:
    """Gaussian sigmas (mm) that remove detail finer than ``new_spacing`` before down-sampling."""
    return [max(new - old, 0.0) / 2.0 for old, new in zip(old_spacing, new_spacing)]


def smooth(image: sitk.Image, sigmas_mm: Sequence[float]) -> sitk.Image:
    """Gaussian smoothing with one sigma (mm) per axis; axes with a negligible sigma are left alone."""
    if max(sigmas_mm) < 0.05 * min(image.GetSpacing()):
        return image
    spacing = image.GetSpacing()
    variances = [(s / sp) ** 2 if s >= 0.05 * sp else 0.0 for s, sp in zip(sigmas_mm, spacing)]
    smoother = sitk.DiscreteGaussianImageFilter()
    smoother.SetVariance(variances)
    smoother.SetUseImageSpacing(False)
    smoother.SetMaximumKernelWidth(64)
    return smoother.Execute(sitk.Cast(image, sitk.sitkFloat32))


def resample_to_spacing(
    image: sitk.Image, spacing: Sequence[float], antialias: bool = True, outside: float = 0.0,
) -> sitk.Image:
    """Linear resampling of an intensity image onto its working grid at ``spacing`` mm (float32).

    ``outside`` is the value of working voxels whose centre falls beyond the image's outermost voxel centres.
    """
    grid = working_grid(image, spacing)
    source = smooth(image, antialias_sigmas(image.GetSpacing(), grid.GetSpacing())) if antialias else image
    if grid.GetSize() == image.GetSize() and np.allclose(grid.GetSpacing(), image.GetSpacing()):
        return sitk.Cast(source, sitk.sitkFloat32)
    return sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)


def resample_labels(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a label image onto the grid of ``reference``."""
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True if both images have the same size, spacing, origin and direction."""
    return a.GetSize() == b.GetSize() and all(
        np.allclose(getattr(a, f)(), getattr(b, f)(), atol=tolerance, rtol=0)
        for f in ("GetSpacing", "GetOrigin", "GetDirection")
    )


def grid_differences(
    reference: sitk.Image, other: sitk.Image, tolerance: float = 1e-4,
) -> list[tuple[str, tuple[float, ...], tuple[float, ...]]]:
    """``(property, reference's value, other's value)`` for each of size, spacing, origin and direction that differ."""
    differences = []
    for label in ("size", "spacing", "origin", "direction"):
        a, b = (getattr(image, f"Get{label.capitalize()}")() for image in (reference, other))
        if len(a) != len(b) or not np.allclose(a, b, atol=tolerance, rtol=0):
            differences.append((label, a, b))
    return differences


def grid_difference(reference: sitk.Image, other: sitk.Image, tolerance: float = 1e-4) -> str:
    """A short description of how the grid of ``other`` differs from ``reference`` ('' if it does not)."""
    return "; ".join(f"{label} {format_values(a)} vs {format_values(b)}"
                     for label, a, b in grid_differences(reference, other, tolerance))


def format_values(values: Sequence[float]) -> str:
    """``(1.5, 0.8, 3)``: a size, spacing, origin or direction, briefly."""
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def physical_size(image: sitk.Image) -> tuple[float, ...]:
    """Extent of the image along each of its axes in mm."""
    return tuple(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))


def voxels_at(image: sitk.Image, spacing: Sequence[float]) -> int:
    """Number of voxels of the working grid of ``image`` at ``spacing``."""
    return math.prod(grid_size(physical_size(image), spacing))
