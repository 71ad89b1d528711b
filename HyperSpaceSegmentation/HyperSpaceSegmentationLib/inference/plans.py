"""What a segmentation is asked for (the spacing request, the slices of a 2D model, the flips of test-time
augmentation, the memory budget) and what a ``Segmenter`` plans for it (the network's view of the image, the
sliding windows, the working spacing with its notes)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import SimpleITK as sitk

from ..errors import UserError
from ..io.images import check_spacing


@dataclass(frozen=True)
class SpacingRequest:
    """What the user asked for: ``model`` (the model's default), ``native``, ``auto`` or ``explicit``."""

    mode: str = "model"
    values: tuple[float, ...] = ()
    max_voxels: float | None = None
    max_seconds: float | None = None
    allow_extrapolation: bool = False

    def __post_init__(self) -> None:
        if self.max_voxels is not None and not self.max_voxels >= 1:
            raise UserError(f"--max-voxels {self.max_voxels:g}: give a positive number of voxels, such as 4e6")
        if self.max_seconds is not None and not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise UserError(f"--max-seconds {self.max_seconds:g}: give a positive number of seconds, such as 30")


def check_memory_budget(max_memory_mb: float | None) -> None:
    """A ``UserError`` unless the memory budget (``--max-memory``, MB) is ``None`` or a positive finite number."""
    if max_memory_mb is not None and not (max_memory_mb > 0 and math.isfinite(max_memory_mb)):
        raise UserError(f"--max-memory {max_memory_mb:g}: give a positive number of MB, such as 4000")


def parse_spacing(words: Sequence[str] | None) -> SpacingRequest:
    """``None``, ``native``, ``auto``, ``S`` or ``SX SY SZ`` (mm) as a ``SpacingRequest``."""
    if not words:
        return SpacingRequest()
    if len(words) == 1 and words[0].lower() in ("native", "auto"):
        return SpacingRequest(words[0].lower())
    try:
        values = tuple(float(w) for w in words)
    except ValueError:
        raise UserError(f"--spacing {' '.join(words)}: give native, auto, one spacing in mm, or one per axis") from None
    check_spacing(values, "requested")
    return SpacingRequest("explicit", values)


def budgeted_request(words: Sequence[str] | None, max_voxels: float | None = None, max_seconds: float | None = None,
                     allow_extrapolation: bool = False, *, budget_without_auto: str) -> SpacingRequest:
    """The ``SpacingRequest`` of spacing ``words`` (see ``parse_spacing``) with its budgets, which apply to ``auto``
    only: for any other spacing, a ``UserError`` saying ``budget_without_auto`` (each caller's own words)."""
    request = parse_spacing(words)
    if (max_voxels is not None or max_seconds is not None) and request.mode != "auto":
        raise UserError(budget_without_auto)
    return SpacingRequest(request.mode, request.values, max_voxels=max_voxels, max_seconds=max_seconds,
                          allow_extrapolation=allow_extrapolation)


@dataclass(frozen=True)
class Slices:
    """The slices a 2D model segments: the planes of constant index along the file's index axis ``axis`` (0 = i,
    1 = j, 2 = k, as stored), every one or only slice ``index``. ``axis`` ``None``: the last axis of size 1 (a
    single-slice volume's slice), else k. A 2D image is one slice along k."""

    axis: int | None = None
    index: int | None = None

    def resolved(self, image: sitk.Image) -> Slices:
        """These slices of ``image`` with the axis filled in; a ``UserError`` for an axis or index outside it."""
        size = tuple(image.GetSize()) + (1,) * (3 - image.GetDimension())
        axis = self.axis if self.axis is not None else max((a for a, n in enumerate(size) if n == 1), default=2)
        if axis not in (0, 1, 2):
            raise UserError(f"--axis {axis}: give 0 (i), 1 (j) or 2 (k)")
        if image.GetDimension() == 2 and axis != 2:
            raise UserError(f"--axis {axis}: a 2D image is one slice (along axis 2): drop --axis")
        if self.index is not None and not 0 <= self.index < size[axis]:
            raise UserError(f"--slice {self.index} is out of range: the image has {size[axis]} slices along axis "
                            f"{axis}; give 0 to {size[axis] - 1}")
        return Slices(axis, self.index)


@dataclass(frozen=True)
class NetworkView:
    """What the network sees of an image: the spacing (mm) and extent of the volume (3D model) or of each slice
    (2D model) along its LPS axes ``axes`` (``LPS``, or the slice plane's two, such as ``PS``), the number of
    slices segmented (1 for a 3D model) and the number of input voxels segmented."""

    spacing: tuple[float, ...]
    extent: tuple[float, ...]
    axes: str
    slices: int
    voxels: int


@dataclass(frozen=True)
class WindowPlan:
    """Sliding windows over the working grid: its ``shape`` (array axes, of the volume or of each slice), the
    window size ``patch`` and the items (slices) that go through the network together (``batch``)."""

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    batch: int


@dataclass
class SpacingChoice:
    spacing: tuple[float, ...]  # x, y, z order (as SimpleITK)
    notes: list[str] = field(default_factory=list)


def tta_flips(tta: Sequence[int] | None, dim: int) -> list[tuple[int, ...]]:
    """The array dimensions (of a ``(batch, channels, *shape)`` tensor) to flip for each prediction that test-time
    augmentation averages: every combination of the axes ``tta`` of the network's view (``()``: all ``dim``),
    the unflipped prediction included; ``[()]`` without augmentation."""
    if tta is None:
        return [()]
    axes = sorted(set(tta)) if tta else list(range(dim))
    if any(a not in range(dim) for a in axes):
        names = "0 (L-R), 1 (P-A), 2 (S-I)" if dim == 3 else "0, 1 (the slice plane's axes, in L, P, S order)"
        raise UserError(f"--tta {' '.join(map(str, tta))}: a {dim}D model's axes are {names}; give some of them, or "
                        "none for all")
    dims = [2 + dim - 1 - a for a in axes]  # array axes are in reverse (k, j, i) order, after batch and channels
    return [combination for count in range(len(dims) + 1) for combination in itertools.combinations(dims, count)]
