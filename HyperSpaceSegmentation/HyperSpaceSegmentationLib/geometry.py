"""Resampling in physical space that keeps origin, direction and physical extent.

A working grid at spacing ``s`` covers the same physical box as the input grid: its voxels share the
input's direction, and its first and last voxel edges coincide with the input's (up to rounding of the
voxel count), so a result brought back to the input grid lies exactly where the input does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.ndimage
import scipy.special
import SimpleITK as sitk
import torch
import torch.nn.functional as F

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


def gaussian_kernel(variance: float, maximum_error: float = 0.01, maximum_width: int = 65) -> np.ndarray:
    """The discrete Gaussian of ``variance`` (voxels^2) that ITK's DiscreteGaussianImageFilter uses: e^-t I_n(t),
    as wide as needed to hold all but ``maximum_error`` of its weight (at most ``maximum_width`` taps), summing
    to 1; ``[1]`` for no smoothing."""
    if variance <= 0:
        return np.ones(1)
    half = scipy.special.ive(np.arange(maximum_width // 2 + 1), variance)
    held = half[0] + 2 * np.cumsum(half[1:])
    radius = int(np.searchsorted(held, 1 - maximum_error)) + 1
    kernel = np.concatenate([half[radius:0:-1], half[:radius + 1]])
    return kernel / kernel.sum()


@dataclass(frozen=True)
class AxisTable:
    """Linear interpolation along one array axis (``along_axis``), such as from a working grid back to the input's:
    of ``size`` output indices, ``[start, start + len(low))`` lie in the box that the source axis covers; index
    ``start + n`` reads source indices ``low[n]`` and ``high[n]`` with weights ``w_low[n]`` and ``w_high[n]``.
    ``identity``: the source axis has the box's voxels (no arithmetic; ``low`` alone is read)."""

    size: int
    start: int
    low: np.ndarray
    high: np.ndarray
    w_low: np.ndarray
    w_high: np.ndarray
    identity: bool

    @property
    def inner(self) -> slice:
        return slice(self.start, self.start + len(self.low))


def axis_table(working: int, box_low: int, box_size: int, size: int, flipped: bool) -> AxisTable:
    """The table of an output axis of ``size`` voxels, of which the box ``[box_low, box_low + box_size)`` (which
    may reach beyond them) is covered by a source axis of ``working`` voxels (outer edges coincide, as on
    ``working_grid``; beyond the outermost centres the edge voxel is repeated); ``flipped``: output index ``n`` is
    index ``size - 1 - n`` of the axis the box lies on."""
    first, last = max(box_low, 0), min(box_low + box_size, size)
    within = (np.arange(first, last) - box_low).astype(np.float32)  # box indices of the voxels inside the box
    # the source coordinate (align_corners=False) in float32, as torch's linear interpolation computes it
    scale = np.float32(working) / np.float32(box_size)
    source = np.maximum(scale * (within + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    low = np.minimum(source.astype(np.int64), working - 1)
    high = np.minimum(low + 1, working - 1)
    fraction = source - low.astype(np.float32)
    if flipped:
        low, high, fraction = low[::-1].copy(), high[::-1].copy(), fraction[::-1].copy()
        first = size - last
    return AxisTable(size, int(first), low, high, np.float32(1) - fraction, fraction, working == box_size)


def along_axis(values: np.ndarray, axis: int, table: AxisTable) -> np.ndarray:
    """``values`` interpolated along ``axis`` by ``table`` (its box part): each neighbour times its weight, then
    the two added, in float32 (``inference.restore.Restorable.at`` repeats it voxel by voxel along the first axis)."""
    if table.identity:
        low, where = table.low, [slice(None)] * values.ndim
        if len(low) > 1 and (np.diff(low) == low[1] - low[0]).all() and abs(low[1] - low[0]) == 1:  # a view
            step = int(low[1] - low[0])
            where[axis] = slice(int(low[0]), int(low[-1]) + step if int(low[-1]) + step >= 0 else None, step)
            return values[tuple(where)]
        return np.take(values, low, axis=axis)
    shape = [1] * values.ndim
    shape[axis] = -1
    first = np.take(values, table.low, axis=axis)
    first *= table.w_low.reshape(shape)
    second = np.take(values, table.high, axis=axis)
    second *= table.w_high.reshape(shape)
    first += second
    return first


def resample_array(array: torch.Tensor, shape: Sequence[int], sigmas: Sequence[float] | None = None) -> torch.Tensor:
    """``array`` (its last ``len(shape)`` axes spatial, any leading ones such as classes) linearly resampled to
    ``shape`` voxels over the same box (outer edges coincide, as on ``working_grid``), after a discrete Gaussian
    of ``sigmas`` voxels per axis (``gaussian_kernel``; anti-aliasing, on the CPU, axis by axis with ``along_axis``).
    Beyond the axis ends the edge voxel is repeated for both (ITK's zero-flux boundary; no value from outside). On
    ``array``'s device."""
    spatial = len(shape)
    if sigmas and max(sigmas) >= 0.05:
        # one axis at a time, smoothed then resized (linear operations along different axes commute), the axis that
        # shrinks most first: each later axis reads only what the earlier ones left, not the whole input again
        values, lead = array.numpy(), array.ndim - spatial
        for axis in sorted(range(spatial), key=lambda a: (shape[a] / array.shape[lead + a], -a)):
            if sigmas[axis] >= 0.05:
                values = scipy.ndimage.correlate1d(values, gaussian_kernel(sigmas[axis] ** 2), axis=lead + axis,
                                                   output=np.float32, mode="nearest")
            if values.shape[lead + axis] != shape[axis]:
                size = int(shape[axis])
                values = along_axis(values.astype(np.float32, copy=False), lead + axis,
                                    axis_table(values.shape[lead + axis], 0, size, size, False))
        return torch.from_numpy(np.ascontiguousarray(values, np.float32))
    if tuple(shape) == tuple(array.shape[-spatial:]):
        return array
    mode = ("linear", "bilinear", "trilinear")[spatial - 1]
    batch = array.reshape(1, -1, *array.shape[-spatial:])  # align_corners=False: voxel edges coincide
    resized = F.interpolate(batch, size=tuple(int(n) for n in shape), mode=mode, align_corners=False)
    return resized.reshape(*array.shape[:-spatial], *shape)


def smooth(image: sitk.Image, sigmas_mm: Sequence[float]) -> sitk.Image:
    """Gaussian smoothing with one sigma (mm) per axis (float32); axes with a negligible sigma are left alone."""
    sigmas = [s / sp for s, sp in zip(sigmas_mm, image.GetSpacing())]
    if max(sigmas) < 0.05:
        return image
    array = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))
    smoothed = sitk.GetImageFromArray(resample_array(array, array.shape, sigmas[::-1]).numpy())
    smoothed.CopyInformation(image)
    return smoothed


def resample_to_spacing(image: sitk.Image, spacing: Sequence[float], antialias: bool = True) -> sitk.Image:
    """Linear resampling of an intensity image onto its working grid at ``spacing`` mm (float32), after Gaussian
    anti-aliasing where it is down-sampled; beyond the outermost voxel centres the edge voxel is repeated."""
    array, grid = resampled_array(sitk.GetArrayFromImage(image), image, spacing, antialias)
    resampled = sitk.GetImageFromArray(array)
    resampled.CopyInformation(grid)
    return resampled


def resampled_array(array: np.ndarray, image: sitk.Image, spacing: Sequence[float],
                    antialias: bool = True) -> tuple[np.ndarray, sitk.Image]:
    """``resample_to_spacing`` of ``array`` (the voxels of ``image``, whose own are not read; a float32 array is not
    copied, so hand it a writable one), as an array, with the working grid (an empty image) it lies on."""
    grid = working_grid(image, spacing)
    sigmas = antialias_sigmas(image.GetSpacing(), grid.GetSpacing()) if antialias else [0.0] * image.GetDimension()
    values = torch.from_numpy(array.astype(np.float32, copy=False))
    voxels = [s / sp for s, sp in zip(sigmas, image.GetSpacing())]
    return resample_array(values, grid.GetSize()[::-1], voxels[::-1]).numpy(), grid


def permuted_back(array: np.ndarray, permuted: sitk.Image, image: sitk.Image) -> np.ndarray:
    """``array`` (leading axes, then the spatial axes of ``permuted`` in array order) with its spatial axes
    permuted and flipped onto those of ``image``, of which ``permuted`` is a copy with axes permuted and flipped
    (such as ``canonical(image)``); no resampling."""
    axes = array_axes_from(permuted, image)
    lead = array.ndim - len(axes)
    flipped = np.flip(array, [lead + axis for axis, flip in axes if flip])
    return np.transpose(flipped, list(range(lead)) + [lead + axis for axis, _ in axes])


def array_axes_from(permuted: sitk.Image, image: sitk.Image) -> list[tuple[int, bool]]:
    """For each array axis of ``image`` (k, j, i), the array axis of ``permuted`` (a copy of ``image`` with axes
    permuted and flipped, such as ``canonical(image)``) that holds it and whether it runs the other way."""
    dim = image.GetDimension()
    cosines = np.reshape(image.GetDirection(), (dim, dim)).T @ np.reshape(permuted.GetDirection(), (dim, dim))
    # axis a of image (x, y, z) is axis source[a] of permuted; array axes run in reverse (z, y, x)
    source = [int(np.argmax(np.abs(cosines[a]))) for a in range(dim)]
    return [(dim - 1 - source[dim - 1 - i], bool(cosines[dim - 1 - i, source[dim - 1 - i]] < 0)) for i in range(dim)]


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
    """A short description of how the grid of ``other`` differs from ``reference`` ('' if it does not): each
    property's two values (with the digits that tell them apart) and, for spacing, origin and direction, by how
    much they differ ('origin (0, 0, 0) vs (0.001, 0, 0), origins differ by 0.001 mm')."""
    parts = []
    for label, a, b in grid_differences(reference, other, tolerance):
        first, second = format_pair(a, b)
        apart = difference(label, a, b)
        parts.append(f"{label} {first} vs {second}" + (f", {apart}" if apart else ""))
    return "; ".join(parts)


def format_values(values: Sequence[float], digits: int = 4) -> str:
    """``(1.5, 0.8, 3)``: a size, spacing, origin or direction, briefly (``digits`` significant digits)."""
    return "(" + ", ".join(f"{v:.{digits}g}" for v in values) + ")"


def format_pair(a: Sequence[float], b: Sequence[float]) -> tuple[str, str]:
    """``a`` and ``b`` as ``format_values`` writes them, with as many more digits as it takes for two different
    values not to look the same (origins 0.001 mm apart at 100 mm)."""
    for digits in (4, 6, 8, 10, 12, 17):
        first, second = format_values(a, digits), format_values(b, digits)
        if first != second or tuple(a) == tuple(b):
            break
    return first, second


def difference(label: str, a: Sequence[float], b: Sequence[float]) -> str:
    """How far apart two spacings, origins (mm) or directions (cosines) are, by their largest difference in one
    value: 'origins differ by 0.001 mm'; '' for sizes or values of different lengths."""
    if label == "size" or len(a) != len(b):
        return ""
    gaps = np.abs(np.subtract(a, b, dtype=float))
    by = "by up to" if np.count_nonzero(gaps) > 1 else "by"
    return f"{label}s differ {by} {float(gaps.max()):.3g}" + (" (cosines)" if label == "direction" else " mm")


def physical_size(image: sitk.Image) -> tuple[float, ...]:
    """Extent of the image along each of its axes in mm."""
    return tuple(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))


def voxels_at(image: sitk.Image, spacing: Sequence[float]) -> int:
    """Number of voxels of the working grid of ``image`` at ``spacing``."""
    return math.prod(grid_size(physical_size(image), spacing))


def reoriented_axes(image: sitk.Image) -> tuple[int, ...]:
    """For each axis of ``canonical(image)``, the axis of ``image`` it is (reorientation permutes and flips axes):
    read from the directions alone, by reorienting a one-voxel image with the same direction."""
    dim = image.GetDimension()
    probe = sitk.Image([1] * dim, sitk.sitkUInt8)
    probe.SetDirection(image.GetDirection())
    cosines = np.reshape(image.GetDirection(), (dim, dim)).T @ np.reshape(canonical(probe).GetDirection(), (dim, dim))
    return tuple(int(np.argmax(np.abs(cosines[:, axis]))) for axis in range(dim))


def oriented_like_canonical(mask: np.ndarray | None, image: sitk.Image) -> np.ndarray | None:
    """``mask`` (an array on ``image``'s grid) with its axes permuted and flipped as ``canonical(image)``'s."""
    if mask is None or image.GetDimension() != 3:
        return mask
    holder = sitk.GetImageFromArray(mask.astype(np.uint8))
    holder.CopyInformation(image)
    return sitk.GetArrayViewFromImage(canonical(holder)) > 0
