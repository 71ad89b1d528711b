"""Class probabilities from the working grid back onto the input's grid, and labels without interpolating them all.

The working grid (of the box predicted on, ``cropping``) covers the same physical box as the input's LPS-oriented
grid; an input voxel's value is the linear interpolation (voxel edges coincide, the edge voxel repeated beyond the
outermost centres) of its 2^3 working-grid neighbours, computed axis by axis (the file's innermost array axis
first) with one multiplication per neighbour and one addition per pair, in float32. The reorientation to LPS is a
permutation with flips, so each of the input's array axes reads one working axis through a table (neighbours and
float32 weights per input index, computed as torch's linear interpolation computes them, flipped where the axis
is; ``geometry.axis_table``): the result comes out in the input's own axis order, and voxels outside the box are
background with certainty.

Labels (``labels``) need the interpolation only where it can change the most likely class. Each class's
interpolated probability is a combination of its neighbours' with the same non-negative weights, and rounding is
monotone, so where all neighbours have the same most likely class ``c``, no other class can come out above it; a
class listed before ``c`` (which wins a tie) could only tie it by rounding where a neighbour's margin over it is
below rounding, so such neighbours (margin ``TIE_MARGIN`` or less) count as disagreeing. Those voxels get ``c``
directly; the others (near a boundary between classes) are interpolated with exactly the arithmetic of
``Restorable.probabilities`` and take the most likely class as ``most_likely`` does: the labels are the same, bit
for bit, as the most likely class of the probabilities (``test_restore.py``). Probabilities that are not all
finite decide nothing: every voxel is interpolated then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..geometry import AxisTable, along_axis

TIE_MARGIN = 1e-5  # a neighbour whose most likely class leads an earlier class by this or less may not decide alone
_UNDECIDED = 255  # cell code: the neighbours do not agree (class indices are below it)


@dataclass(frozen=True)
class Restorable:
    """Class probabilities ``values`` ``(classes, *working shape)`` on the working grid, its axes already in the
    order of the input's array axes, with the ``tables`` (one per array axis, k, j, i) that bring them onto the input
    grid. ``plane``: the input is a 2D image (a volume of one slice here; results drop that axis); ``slice_at``:
    ``(array axis, index)`` of the one slice of the image that was segmented (the others are background)."""

    values: np.ndarray
    tables: tuple[AxisTable, ...]
    plane: bool = False
    slice_at: tuple[int, int] | None = None
    image_shape: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(t.size for t in self.tables)

    @property
    def inner(self) -> tuple[slice, ...]:
        return tuple(t.inner for t in self.tables)

    def probabilities(self) -> np.ndarray:
        """``(classes, *input shape)`` float32: every class interpolated at every voxel of the box, background with
        certainty outside it."""
        planes, table = self.planes(), self.tables[0]
        whole = _background(len(self.values), self.shape, covered=self.inner == _full(self.shape))
        box = whole[(slice(None), *self.inner)]
        if table.identity:
            box[...] = along_axis(planes, 1, table)
        else:  # plane by plane into the result, with the operations of along_axis
            for number, (low, high) in enumerate(zip(table.low, table.high)):
                np.multiply(planes[:, low], table.w_low[number], out=box[:, number])
                box[:, number] += planes[:, high] * table.w_high[number]
        return self._on_image(whole, background=True)

    def codes(self) -> np.ndarray:
        """``(input shape)`` uint8: the class index every working neighbour of a voxel agrees on (0 outside the box),
        ``_UNDECIDED`` where they do not."""
        cells = cell_codes(self.values, [t.identity for t in self.tables])
        for axis, table in enumerate(self.tables):
            cells = np.take(cells, table.low, axis=axis)
        whole = np.zeros(self.shape, np.uint8)
        whole[self.inner] = cells
        return whole

    def labels(self, mask: np.ndarray | None = None) -> np.ndarray:
        """``(input shape)`` uint8: ``most_likely(self.probabilities())`` (background outside ``mask``), plane by
        plane along the first axis: the class its working neighbours agree on, else (within the rows and columns
        that hold such voxels) the most likely class of the interpolated values, as ``probabilities`` computes them."""
        codes = self.codes()
        if mask is not None:
            codes[~mask] = 0
        box, table, planes = codes[self.inner], self.tables[0], None
        for number, plane in enumerate(box):
            open_voxels = plane == _UNDECIDED
            rows = np.flatnonzero(open_voxels.any(axis=1))
            if not len(rows):
                continue
            columns = np.flatnonzero(open_voxels[rows[0]:rows[-1] + 1].any(axis=0))
            part = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
            planes = self.planes() if planes is None else planes
            values = planes[(slice(None), table.low[number], *part)]
            if not table.identity:
                values = values * table.w_low[number]
                values += planes[(slice(None), table.high[number], *part)] * table.w_high[number]
            np.copyto(plane[part], most_likely(values), where=open_voxels[part])
        return codes

    def planes(self) -> np.ndarray:
        """``(classes, working planes, *box's inner shape of the other axes)``: the values interpolated along every
        axis but the first (as ``probabilities`` does before it combines the planes)."""
        interpolated = self.values
        for axis in reversed(range(1, len(self.tables))):
            interpolated = along_axis(interpolated, axis + 1, self.tables[axis])
        return interpolated

    def at(self, flat: np.ndarray, planes: np.ndarray | None = None) -> np.ndarray:
        """``(classes, n)`` float32: the probabilities at the input voxels of flat indices ``flat``, the same bits
        as ``probabilities()`` there: the planes (``planes()``, given or computed) combined at those voxels alone."""
        result = np.zeros((len(self.values), len(flat)), np.float32)
        result[0] = 1.0
        position = np.unravel_index(flat, self.shape)
        inside = np.ones(len(flat), bool)
        for index, table in zip(position, self.tables):
            inside &= (index >= table.start) & (index < table.start + len(table.low))
        if not inside.any():
            return result
        planes = self.planes() if planes is None else planes
        first, *others = [index[inside] - table.start for index, table in zip(position, self.tables)]
        within = np.ravel_multi_index(others, planes.shape[2:]) if others else np.zeros(len(first), np.int64)
        step = math.prod(planes.shape[2:])  # voxels per plane
        planes, table = planes.reshape(len(planes), -1), self.tables[0]
        low = np.take(planes, table.low[first] * step + within, axis=1)
        if not table.identity:
            low *= table.w_low[first]
            high = np.take(planes, table.high[first] * step + within, axis=1)
            high *= table.w_high[first]
            low += high
        result[:, inside] = low
        return result

    def _on_image(self, array: np.ndarray, background: bool) -> np.ndarray:
        """``array`` (classes first if ``background``, else labels) on the input's grid as the image has it."""
        if self.plane:
            return array[:, 0] if background else array[0]
        if self.slice_at is None:
            return array
        axis, index = self.slice_at
        if background:
            whole = _background(len(array), self.image_shape, covered=False)
            np.moveaxis(whole, axis + 1, 0)[index] = np.moveaxis(array, axis + 1, 0)[0]
        else:
            whole = np.zeros(self.image_shape, array.dtype)
            np.moveaxis(whole, axis, 0)[index] = np.moveaxis(array, axis, 0)[0]
        return whole


def most_likely(probabilities: np.ndarray) -> np.ndarray:
    """The index (uint8) of the most likely class (the first axis) at each voxel; ties: the lowest index."""
    return _most_likely(probabilities)[0]


def _most_likely(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(most_likely(probabilities), lead)``: ``lead`` is how far the most likely class's probability lies above
    those of the classes listed before it (infinite for the first class)."""
    best, index = probabilities[0].copy(), np.zeros(probabilities.shape[1:], np.uint8)
    lead = np.full(best.shape, np.inf, np.float32)
    for number, channel in enumerate(probabilities[1:], start=1):  # faster than argmax over the first axis
        higher = channel > best
        np.subtract(channel, best, out=lead, where=higher)  # best: the largest of the classes before this one
        np.copyto(index, number, where=higher)
        np.maximum(best, channel, out=best)
    return index, lead


def cell_codes(values: np.ndarray, identity: Sequence[bool]) -> np.ndarray:
    """``(working shape)`` uint8: at each working voxel, the most likely class if it, and its next neighbour along
    every axis not in ``identity`` (the last voxel is its own next), have that class by more than ``TIE_MARGIN``
    over each class listed before it; else ``_UNDECIDED`` (everywhere if a value is not finite). Index ``n`` holds
    the cell that input voxels whose lower neighbour is ``n`` interpolate in."""
    codes, lead = _most_likely(values)
    codes[~(lead > TIE_MARGIN)] = _UNDECIDED
    if not np.isfinite(values).all():
        codes[...] = _UNDECIDED
    for axis, same in enumerate(identity):
        if same or codes.shape[axis] == 1:
            continue
        following = np.take(codes, np.r_[1:codes.shape[axis], codes.shape[axis] - 1], axis=axis)
        codes[codes != following] = _UNDECIDED
    return codes


def labels(parts: Sequence[Restorable], mask: np.ndarray | None = None) -> np.ndarray:
    """The index (uint8) of the most likely class of the mean of ``parts``' probabilities (an ensemble's members,
    each on its own working grid; summed in order, then divided by their number, in float32), outside ``mask``
    background: the same, bit for bit, as ``most_likely`` of those probabilities, interpolating only where the
    working neighbours do not all agree."""
    if len(parts) == 1:
        return parts[0]._on_image(parts[0].labels(None if mask is None else _on_source(parts[0], mask)),
                                  background=False)
    codes = parts[0].codes()
    for part in parts[1:]:
        other = part.codes()
        codes[codes != other] = _UNDECIDED
    open_voxels = codes == _UNDECIDED
    if mask is not None:
        mask = _on_source(parts[0], mask)
        open_voxels &= mask
    voxels = np.flatnonzero(open_voxels)
    if len(voxels):
        total = parts[0].at(voxels)
        for part in parts[1:]:
            total += part.at(voxels)
        if len(parts) > 1:
            total /= np.float32(len(parts))
        codes.reshape(-1)[voxels] = most_likely(total)
    codes[codes == _UNDECIDED] = 0  # only outside the mask
    if mask is not None:
        codes[~mask] = 0
    return parts[0]._on_image(codes, background=False)


def _on_source(part: Restorable, mask: np.ndarray) -> np.ndarray:
    """``mask`` (on the image's grid) on the grid the tables fill: the segmented slice, or a 2D image's plane."""
    if part.plane:
        return mask[None]
    if part.slice_at is None:
        return mask
    axis, index = part.slice_at
    return np.expand_dims(np.take(mask, index, axis=axis), axis)


def _background(classes: int, shape: Sequence[int], covered: bool) -> np.ndarray:
    """An array ``(classes, *shape)`` to be filled; background with certainty unless ``covered`` (filled whole)."""
    if covered:
        return np.empty((classes, *shape), np.float32)
    whole = np.zeros((classes, *shape), np.float32)
    whole[0] = 1.0
    return whole


def _full(shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)
