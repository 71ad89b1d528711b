"""The region a 3D model predicts on: the box around what is not background, plus a margin (as nnU-Net crops each
case to its non-zero box), so that the result does not depend on the empty space around the head and the network
spends no time on it.

The box is found in the normalised volume (voxels that differ from the intensity beyond a scan), within a mask
when one is given, and grown by ``MARGIN_MM`` on every side, past the array's faces where the content comes closer
to them: there it holds that outside intensity, as training patches that reach beyond an image do. So the same
content with any amount of empty border around it gives the same box in physical space, and the same result.
Content that fills the whole array is segmented as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

MARGIN_MM = 10.0


@dataclass(frozen=True)
class Region:
    """A box of array indices ``[low, high)`` per axis (array order), which may reach beyond the array."""

    low: tuple[int, ...]
    high: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.low, self.high))

    def _overlap(self, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices of an array of ``shape``, slices of the box) where the two overlap."""
        inner = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(self.low, self.high, shape))
        box = tuple(slice(s.start - a, s.stop - a) for s, a in zip(inner, self.low))
        return inner, box

    def take(self, array: np.ndarray, fill: float) -> np.ndarray:
        """The box's voxels of ``array``, ``fill`` beyond it."""
        inner, box = self._overlap(array.shape)
        result = np.full(self.shape, fill, array.dtype)
        result[box] = array[inner]
        return result

    def put(self, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Class probabilities ``(classes, *box shape)`` placed in a ``(classes, *shape)`` array that is background
        (class 0) with certainty outside the box."""
        inner, box = self._overlap(shape)
        result = np.zeros((values.shape[0], *shape), np.float32)
        result[0] = 1.0
        result[(slice(None), *inner)] = values[(slice(None), *box)]
        return result

    def grid(self, image: sitk.Image) -> sitk.Image:
        """An empty image (one byte a voxel) on the box of ``image``'s grid, extended beyond it where the box is."""
        direction = np.array(image.GetDirection()).reshape(3, 3)
        offset = direction @ (np.array(self.low[::-1], float) * np.array(image.GetSpacing()))
        grid = sitk.Image([int(n) for n in self.shape[::-1]], sitk.sitkUInt8)
        grid.SetSpacing(image.GetSpacing())
        grid.SetDirection(image.GetDirection())
        grid.SetOrigin((np.array(image.GetOrigin()) + offset).tolist())
        return grid


def foreground_region(normalised: np.ndarray, outside: float, spacing_zyx: tuple[float, ...],
                      mask: np.ndarray | None = None, margin_mm: float = MARGIN_MM) -> Region | None:
    """The box around the voxels of ``normalised`` that differ from ``outside`` (and lie in ``mask``), grown by
    ``margin_mm`` on every side; ``None`` where such voxels reach every face of the array, or there are none
    (the whole array is segmented)."""
    content = normalised != np.float32(outside)
    if mask is not None:
        content &= mask
    if not content.any():
        return None
    bounds = []
    for axis in range(content.ndim):
        along = np.flatnonzero(content.any(axis=tuple(a for a in range(content.ndim) if a != axis)))
        bounds.append((int(along[0]), int(along[-1]) + 1))
    if all(a == 0 and b == n for (a, b), n in zip(bounds, content.shape)):
        return None
    margins = [int(np.ceil(margin_mm / s - 1e-9)) for s in spacing_zyx]
    return Region(tuple(a - m for (a, _), m in zip(bounds, margins)), tuple(b + m for (_, b), m in zip(bounds, margins)))
