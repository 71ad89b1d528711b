"""Area-weighted surface distances in millimetres, the way DeepMind's surface-distance library defines them.

Surface elements: the masks are cropped to the bounding box of their union, padded by one voxel, and cut
into cells of 2x2x2 neighbouring voxels (2x2 in 2D). A cell whose 8 voxels are neither all inside nor all
outside holds surface; its *neighbour code* (which of its voxels are inside) gives the area of the
marching-cubes surface in the cell (the contour length in 2D), computed for the image's spacing.

Distances: for each surface cell of one mask, the Euclidean distance (mm, with the voxel spacing) to the
nearest surface cell of the other mask. The direction matrix does not change distances (it is a rotation,
possibly with a reflection), so spacing alone makes them right on oblique grids.

With ``d_ab`` the distances from the surface of A to that of B and ``w_a`` the areas of A's elements:

- Hausdorff distance: ``max(max d_ab, max d_ba)``.
- HD95: for each direction, the smallest distance ``d`` such that elements with distance <= ``d`` hold at
  least 95% of that surface's area; the larger of the two directions.
- ASSD: ``(sum w_a d_ab + sum w_b d_ba) / (sum w_a + sum w_b)``.
- Surface Dice at tolerance ``t``: ``(sum w_a [d_ab <= t] + sum w_b [d_ba <= t]) / (sum w_a + sum w_b)``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every ``True`` voxel, or ``None`` for an empty mask."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """For each cell of 2^dim neighbouring voxels, a number whose bits say which voxels are inside."""
    mask = mask.astype(np.uint16)
    cells = tuple(n - 1 for n in mask.shape)
    codes = np.zeros(cells, dtype=np.uint16)
    for bit, offset in enumerate(itertools.product((0, 1), repeat=mask.ndim)):
        codes |= mask[tuple(slice(o, o + n) for o, n in zip(offset, cells))] << bit
    return codes


@functools.lru_cache(maxsize=64)
def element_sizes(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (mm^2, 3D) or length (mm, 2D) of the surface in a cell, for each neighbour code."""
    return _areas_3d(spacing) if len(spacing) == 3 else _lengths_2d(spacing)


def _corners(code: int, dim: int) -> np.ndarray:
    values = np.zeros((2,) * dim, dtype=np.float32)
    for bit, offset in enumerate(itertools.product((0, 1), repeat=dim)):
        values[offset] = (code >> bit) & 1
    return values


def _areas_3d(spacing: tuple[float, ...]) -> np.ndarray:
    from skimage.measure import marching_cubes, mesh_surface_area

    areas = np.zeros(256)
    for code in range(1, 255):
        vertices, faces, _, _ = marching_cubes(_corners(code, 3), 0.5, spacing=spacing, method="lorensen")
        areas[code] = mesh_surface_area(vertices, faces)
    return areas


def _lengths_2d(spacing: tuple[float, ...]) -> np.ndarray:
    """Marching squares: a cut corner is a segment between two edge midpoints, a half cell a straight edge."""
    sy, sx = spacing
    diagonal = 0.5 * float(np.hypot(sx, sy))
    lengths = np.zeros(16)
    for code in range(1, 15):
        corners = _corners(code, 2)
        inside = int(corners.sum())
        if inside in (1, 3):
            lengths[code] = diagonal
        elif corners[0, 0] == corners[0, 1]:  # the two halves split along axis 0: the contour runs along axis 1
            lengths[code] = sx
        elif corners[0, 0] == corners[1, 0]:
            lengths[code] = sy
        else:  # two opposite corners: two cut corners
            lengths[code] = 2 * diagonal
    return lengths


def distance_to(surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from every cell to the nearest ``True`` cell of ``surface`` (exact Euclidean, threaded)."""
    image = sitk.GetImageFromArray(surface.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    distances = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distances), 0.0)


@dataclass
class SurfaceDistances:
    """Distances and element sizes of both surfaces: reference -> prediction and back."""

    reference_to_prediction: np.ndarray
    reference_areas: np.ndarray
    prediction_to_reference: np.ndarray
    prediction_areas: np.ndarray

    def hausdorff(self, percent: float = 100.0) -> float:
        return max(
            _percentile(self.reference_to_prediction, self.reference_areas, percent),
            _percentile(self.prediction_to_reference, self.prediction_areas, percent),
        )

    def average_symmetric(self) -> float:
        total = self.reference_areas.sum() + self.prediction_areas.sum()
        weighted = (self.reference_to_prediction * self.reference_areas).sum()
        weighted += (self.prediction_to_reference * self.prediction_areas).sum()
        return float(weighted / total)

    def surface_dice(self, tolerance: float) -> float:
        total = self.reference_areas.sum() + self.prediction_areas.sum()
        within = self.reference_areas[self.reference_to_prediction <= tolerance].sum()
        within += self.prediction_areas[self.prediction_to_reference <= tolerance].sum()
        return float(within / total)


def _percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if percent >= 100:
        return float(distances.max())
    order = np.argsort(distances)
    cumulative = np.cumsum(areas[order]) / areas.sum()
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(order) - 1)
    return float(distances[order][index])


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Surface distances of two non-empty boolean masks on one grid; ``spacing`` in array-axis order (mm)."""
    box = bounding_box(reference | prediction)
    spacing = tuple(float(s) for s in spacing)
    sizes = element_sizes(spacing)
    codes, borders = [], []
    for mask in (reference, prediction):
        code = neighbour_codes(np.pad(mask[box], 1))
        codes.append(code)
        borders.append((code != 0) & (code != 2 ** (2 ** mask.ndim) - 1))
    to_prediction, to_reference = distance_to(borders[1], spacing), distance_to(borders[0], spacing)
    return SurfaceDistances(
        to_prediction[borders[0]], sizes[codes[0][borders[0]]],
        to_reference[borders[1]], sizes[codes[1][borders[1]]],
    )
