"""Segment an image at a chosen working spacing and return labels on the input's own grid.

Pipeline: the image is reoriented to the nearest LPS axes (a lossless permutation), normalised, resampled
in physical space to the working spacing (Gaussian anti-aliasing when down-sampling), predicted with a
sliding window (optionally averaged over flipped copies: test-time augmentation), and the class probabilities
are resampled linearly onto the input grid, where the argmax gives the labels. Spacings handed to networks are
in array-axis order (k, j, i), as the arrays are.

A 2D model segments slice by slice (``Slices``): the planes of constant index along one of the file's index
axes, all of them or one. Each slice is normalised as a 2D image (as 2D models are trained), the stack is
resampled in-plane only (the slice axis keeps its spacing and gets no smoothing), and the slices go in batches
through one network, generated for the in-plane working spacing. A 2D image is a stack of one slice.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.special
import SimpleITK as sitk
import torch
from torch import nn

from ..errors import UserError
from ..geometry import array_axes_from, axis_table, canonical, grid_size, resample_to_spacing
from ..io.images import check_spacing
from ..io.model_file import SegmentationModel
from ..networks import HyperSpaceNet, UNet
from ..progress import Reporter
from ..system import available_memory_mb, resolve_device
from .cropping import Region, foreground_region
from .restore import Restorable
from .restore import labels as restored_labels
from .restore import most_likely as most_likely_class
from .sliding_window import count_windows, patch_size_for, predict_probabilities

MEMORY_SHARE = 0.8  # without --max-memory, windows may take this share of the memory available on the device
DEFAULT_MAX_VOXELS = 4_000_000
_REFERENCE_WINDOW = {3: 64, 2: 256}  # timed once for --max-seconds; smaller windows cost more per voxel (conservative)
_MAX_BATCH = 32  # slices per network call: at most this many, and as many as _BATCH_MEMORY_MB of activations hold
_BATCH_MEMORY_MB = 1024
_EXTRAPOLATION_REACH = 4.0  # with --allow-extrapolation, auto may go this far beyond the coarsest trained spacing
_RANGE_TOLERANCE = 1e-4  # a spacing this close (relative) to the trained range counts as inside it, without a note


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


class Segmenter:
    """Runs one model on images; networks generated for a spacing are cached (spacing rounded to 0.01 mm).

    A 2D model segments the ``slices`` of each image (by default every slice along k, or a single-slice volume's
    one slice); a 3D model takes each image as a whole. ``tta``: test-time augmentation, the probabilities averaged
    over every combination of flips of these axes of the network's view (0, 1, 2: L-R, P-A, S-I; a 2D model's
    slice plane's two, in that order: 0, 1); ``()`` all of them; ``None`` none.
    """

    def __init__(
        self, model: SegmentationModel, device: str = "auto", patch: int | None = None,
        overlap: float = 0.5, cache_size: int = 8, slices: Slices = Slices(), tta: Sequence[int] | None = None,
        max_memory_mb: float | None = None,
    ) -> None:
        if model.dim == 3 and slices != Slices():
            raise UserError("a 3D model segments whole volumes: drop --axis and --slice, or use a 2D model")
        check_memory_budget(max_memory_mb)
        self.model = model
        self.slices = slices
        self.flips = _flips(tta, model.dim)
        self.device = resolve_device(device)
        self.model.network.to(self.device)
        if patch is not None and (problem := model.unet_config.patch_problem(patch)):
            raise UserError(f"--patch {patch}: {problem}")
        self.patch = None if patch is None else (patch,) * model.dim  # None: the largest window that fits memory
        self.max_memory_mb = max_memory_mb
        self.overlap = overlap
        self.cache_size = cache_size
        self._networks: OrderedDict[tuple[float, ...], nn.Module] = OrderedDict()
        self._seconds_per_voxel_measured: float | None = None

    # networks -------------------------------------------------------------------------------------
    def network_for(self, spacing_zyx: Sequence[float]) -> nn.Module:
        """The U-Net for a spacing in array-axis order: generated once per rounded spacing for HyperSpace; on the
        CPU a 3D U-Net runs in channels-last memory order (``UNet.to_channels_last``)."""
        network = self.model.network
        if not isinstance(network, HyperSpaceNet):
            return self._prepared(network)
        key = tuple(round(float(s), 2) for s in spacing_zyx)
        if key not in self._networks:
            self._networks[key] = self._prepared(network.static_unet(key))
            while len(self._networks) > self.cache_size:
                self._networks.popitem(last=False)
        self._networks.move_to_end(key)
        return self._networks[key]

    def _prepared(self, network: nn.Module) -> nn.Module:
        if self.device.type == "cpu" and isinstance(network, UNet) and not network.channels_last:
            network.to_channels_last()
        return network

    # spacing --------------------------------------------------------------------------------------
    def choose_spacing(self, image: sitk.Image, request: SpacingRequest) -> SpacingChoice:
        """The working spacing (mm, along the network view's LPS axes: x, y, z, or a 2D model's slice plane's two)
        for ``image`` under ``request``."""
        native = self.native_spacing(image)
        dim = len(native)
        mode = request.mode
        if mode == "model":
            mode = "fixed" if self.model.method == "fs" else "native"
        if self.model.method == "fs" and mode in ("fixed", "auto"):
            return SpacingChoice(tuple(self.model.fixed_spacing), ["FS model: working at its fixed training spacing"])
        if mode == "explicit":
            spacing = request.values * dim if len(request.values) == 1 else request.values
            if len(spacing) != dim:
                what = "slices (in the slice plane's L, P, S order)" if self.model.dim == 2 else "images"
                raise UserError(f"--spacing has {len(spacing)} values for {dim}D {what}: give 1 or {dim}")
        elif mode == "native":
            spacing = native
        else:
            return self._auto_spacing(image, native, request)
        if self.model.method == "fs":
            same = np.allclose(spacing, self.model.fixed_spacing)
            return SpacingChoice(tuple(spacing), [] if same else ["FS model at a spacing other than its own (FSNR when native)"])
        return self._within_range(tuple(spacing), request.allow_extrapolation)

    def _within_range(self, spacing: tuple[float, ...], allow_extrapolation: bool) -> SpacingChoice:
        """``spacing`` clamped to the trained range (unless extrapolating), with a note when it lies outside."""
        low, high = self.model.spacing_range
        clamped = _clamp(spacing, low, high)
        if all(low * (1 - _RANGE_TOLERANCE) <= s <= high * (1 + _RANGE_TOLERANCE) for s in spacing):
            return SpacingChoice(clamped)  # in range, or off it by header rounding noise only
        shown = _mm(spacing)
        if allow_extrapolation:
            return SpacingChoice(spacing, [f"spacing {shown} lies outside the trained range {low:g}-{high:g} mm; extrapolating"])
        return SpacingChoice(clamped, [
            f"spacing {shown} lies outside the trained range {low:g}-{high:g} mm; clamped to {_mm(clamped)} "
            "(pass --allow-extrapolation to keep it)"])

    def _auto_spacing(self, image: sitk.Image, native: tuple[float, ...], request: SpacingRequest) -> SpacingChoice:
        """The finest spacing, coarsening from the native one, that lies in the trained range and fits the budget.

        Candidates raise every axis finer than a floor to that floor (so the coarsest axes of an anisotropic scan
        stay as they are), clamped to the trained range unless extrapolation is allowed; the floor grows by 2%
        a step. The voxel budget is exact; the time budget uses one measured window scaled by voxel count.
        """
        low, high = self.model.spacing_range
        max_voxels = request.max_voxels or (None if request.max_seconds else DEFAULT_MAX_VOXELS)
        extrapolate = request.allow_extrapolation

        def candidate(floor: float) -> tuple[float, ...]:
            spacing = tuple(max(s, floor) for s in native)
            return spacing if extrapolate else _clamp(spacing, low, high)

        def fits(spacing: tuple[float, ...]) -> bool:
            if max_voxels is not None and self.working_voxels(image, spacing) > max_voxels:
                return False
            return request.max_seconds is None or self.estimate_seconds(image, spacing) <= request.max_seconds

        floor = min(native) if extrapolate else min(max(min(native), low), high)
        coarsest = max(max(native), high) * _EXTRAPOLATION_REACH if extrapolate else high
        spacing = candidate(floor)
        while not fits(spacing) and floor < coarsest:
            floor = min(floor * 1.02, coarsest)
            spacing = candidate(floor)
        notes = []
        if not extrapolate and max(native) > high * (1 + _RANGE_TOLERANCE):
            notes.append(f"native spacing {_mm(native)} is coarser than the trained range {low:g}-{high:g} mm on some "
                         f"axes: working at most {high:g} mm there (pass --allow-extrapolation to keep it)")
        if not fits(spacing):
            needs = []
            if max_voxels is not None:
                needs.append(f"{self.working_voxels(image, spacing):,} voxels (budget {max_voxels:,.0f})")
            if request.max_seconds is not None:
                needs.append(f"about {self.estimate_seconds(image, spacing):.2g} s to predict "
                             f"(budget {request.max_seconds:g} s)")
            reach = "the coarsest spacing tried" if extrapolate else "the coarsest spacing of the trained range"
            notes.append(f"the budget cannot be met: {reach}, {_mm(spacing)}, needs " + " and ".join(needs)
                         + ("" if extrapolate else "; pass --allow-extrapolation to go coarser than the model was "
                            "trained for"))
        return SpacingChoice(spacing, notes)

    # estimates ------------------------------------------------------------------------------------
    def view(self, image: sitk.Image) -> NetworkView:
        """The network's view of ``image``, from its header alone (no copy of the voxels)."""
        from_file = _reoriented_axes(image)
        spacing = [image.GetSpacing()[a] for a in from_file]
        size = [image.GetSize()[a] for a in from_file]
        slice_axis = self._slice_axis(image)
        plane = [a for a in range(len(size)) if a != slice_axis]
        stack = size + [1] * (3 - len(size))  # a 2D image is a stack of one slice
        count = stack[slice_axis] if slice_axis is not None and self.slices.index is None else 1
        return NetworkView(tuple(spacing[a] for a in plane), tuple(size[a] * spacing[a] for a in plane),
                           "".join("LPS"[a] for a in plane), count, count * math.prod(size[a] for a in plane))

    def _slice_axis(self, image: sitk.Image) -> int | None:
        """The axis (x, y, z) of ``image`` reoriented to LPS along which a 2D model's slices lie (2 for a 2D
        image); ``None`` for a 3D model, which a 2D image does not fit."""
        if self.model.dim == 3:
            if image.GetDimension() == 2:
                raise UserError("the image is 2D, and a 3D model segments volumes only: use a 2D model")
            return None
        if image.GetDimension() == 2:
            return 2
        return _reoriented_axes(image).index(self.slices.resolved(image).axis)

    def native_spacing(self, image: sitk.Image) -> tuple[float, ...]:
        """The image's spacing as the network sees it: LPS axes, or the two of a 2D model's slice plane."""
        return self.view(image).spacing

    def working_size(self, image: sitk.Image, spacing: Sequence[float]) -> tuple[int, ...]:
        """Voxels per axis (the network view's) of the working grid of the volume, or of each slice, at ``spacing``."""
        return grid_size(self.view(image).extent, spacing)

    def working_voxels(self, image: sitk.Image, spacing: Sequence[float]) -> int:
        """Voxels of the working grid at ``spacing`` over every slice segmented (the volume, for a 3D model)."""
        return math.prod(self.working_size(image, spacing)) * self.view(image).slices

    def windows(self, image: sitk.Image, spacing: Sequence[float]) -> WindowPlan:
        """How the network goes over ``image`` at ``spacing``: the window size and the items (slices) per call.

        With a ``patch`` asked for, windows of that edge (an axis up to 1.25 times as long takes one window).
        Otherwise the largest window, up to the whole working volume or slice, whose estimated memory need
        (``estimate_memory_mb``) fits the budget: ``max_memory_mb``, by default ``MEMORY_SHARE`` of the memory
        available on the device; fewer, larger windows process fewer voxels (no overlap) and run faster. A window
        that spans a whole axis is at least as long as the model's training patches there (padded with what lies
        outside a scan, as training patches are, and as nnU-Net pads small images): instance normalisation then
        sees a small image or crop with background around it, as in training (docs/BENCHMARKS.md, field of view).
        """
        shape = tuple(reversed(self.working_size(image, spacing)))
        view = self.view(image)
        divisor = self.model.unet_config.divisor
        least = int(self.model.training.get("config", {}).get("patch") or 0)
        if self.patch is not None:
            patch = _at_least(patch_size_for(shape, self.patch, divisor), shape, least)
            return WindowPlan(shape, patch, self._batch_size(patch, view.slices))
        whole = _at_least(patch_size_for(shape, shape, divisor), shape, least)
        budget = self.memory_budget_mb()
        for edge in range(max(whole), 2 * divisor - 1, -divisor):
            patch = tuple(min(w, edge) for w in whole)
            plan = WindowPlan(shape, patch, self._batch_size(patch, view.slices))
            if self._memory_mb(view, plan) <= budget:
                return plan
        return plan  # the smallest window: check_memory says what to do if even it does not fit

    def memory_budget_mb(self) -> float:
        """The memory (MB) a run may take on the device: ``max_memory_mb``, or ``MEMORY_SHARE`` of what is free."""
        return self.max_memory_mb if self.max_memory_mb is not None else MEMORY_SHARE * available_memory_mb(self.device)

    def estimate_memory_mb(self, image: sitk.Image, spacing: Sequence[float]) -> float:
        """Memory (MB) that segmenting ``image`` at ``spacing`` adds (with the windows of ``windows``)."""
        return self._memory_mb(self.view(image), self.windows(image, spacing))

    def _memory_mb(self, view: NetworkView, plan: WindowPlan) -> float:
        """Memory (MB) of segmenting the items of ``view`` with ``plan``: volumes, accumulators and activations.

        Per item (the volume, or each slice) at working spacing: its class probabilities and intensities; per item
        of a batch (the volume, or the slices that go through the network together): its padded input and window
        weights, and the activations of one window; and three copies of the input voxels segmented, plus their
        class probabilities. The activation term (8 feature maps' worth per level, convolution workspace included)
        was fitted on the MNI152 template at 1-3.5 mm (see docs/BENCHMARKS.md): within 10% at 1-2 mm, up to 30% low
        at coarser spacings, where fixed costs dominate and the need is small anyway.
        """
        item = math.prod(max(s, p) for s, p in zip(plan.shape, plan.patch))
        working = item * (view.slices * (len(self.model.labels) + 1) + 2 * plan.batch)
        total = 4 * (working + view.voxels * (3 + len(self.model.labels))
                     + plan.batch * self._activation_floats(plan.patch))
        return total / 2**20

    def _activation_floats(self, patch: Sequence[int]) -> float:
        """Activations of one window of the network (see ``_memory_mb``)."""
        features = self.model.unet_config.features
        return sum(f * 8 * math.prod(patch) / (2 ** (self.model.dim * level)) for level, f in enumerate(features))

    def _batch_size(self, patch: Sequence[int], items: int) -> int:
        """Items (slices) per network call: as many as ``_BATCH_MEMORY_MB`` of activations hold, at most
        ``_MAX_BATCH`` and ``items``, at least one."""
        fit = int(_BATCH_MEMORY_MB * 2**20 // (4 * self._activation_floats(patch)))
        return max(1, min(items, _MAX_BATCH, fit))

    def estimate_seconds(self, image: sitk.Image, spacing: Sequence[float]) -> float:
        """Prediction time (s): the voxels the windows process (over every slice segmented and every flip of
        test-time augmentation) times the measured time per voxel on this device."""
        plan = self.windows(image, spacing)
        windows = count_windows(plan.shape, plan.patch, self.overlap) * self.view(image).slices
        return windows * len(self.flips) * math.prod(plan.patch) * self._seconds_per_voxel()

    def _seconds_per_voxel(self) -> float:
        """Measured once per segmenter: one reference window (after a warm-up pass) of the model's network."""
        if self._seconds_per_voxel_measured is None:
            window = (_REFERENCE_WINDOW[self.model.dim],) * self.model.dim
            network = self.network_for(tuple(self.model.spacing_range[:1]) * self.model.dim)
            x = torch.zeros((1, self.model.unet_config.in_channels, *window), device=self.device)
            with torch.inference_mode():
                network(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                network(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
            self._seconds_per_voxel_measured = (time.perf_counter() - start) / math.prod(window)
        return self._seconds_per_voxel_measured

    def check_memory(self, image: sitk.Image, spacing: Sequence[float], allow_extrapolation: bool = False) -> float:
        """The estimated need (MB); a ``UserError`` if even the smallest windows exceed the budget (``max_memory_mb``)
        or what is free on the device, with only advice that works (see ``_memory_advice``)."""
        need = self.estimate_memory_mb(image, spacing)
        free = available_memory_mb(self.device)
        limit = self._memory_limit_mb(free)
        if need > limit:
            what = (f"the budget is {_megabytes(self.max_memory_mb)} MB (--max-memory)" if limit < 0.9 * free
                    else f"{free:,.0f} MB are free on {self.device.type}")
            raise UserError(
                f"segmenting at spacing ({', '.join(f'{s:.3g}' for s in spacing)}) mm needs about "
                f"{_megabytes(need)} MB but {what}: {self._memory_advice(image, spacing, need, free, allow_extrapolation)}"
            )
        return need

    def _memory_limit_mb(self, free: float) -> float:
        """The most memory (MB) ``check_memory`` lets a run need, ``free`` MB being free on the device."""
        return min(self.max_memory_mb, 0.9 * free) if self.max_memory_mb is not None else 0.9 * free

    def _memory_advice(self, image: sitk.Image, spacing: Sequence[float], need: float, free: float,
                       allow_extrapolation: bool) -> str:
        """What to do when segmenting ``image`` at ``spacing`` needs ``need`` MB, more than the budget allows: only
        what fits (each estimated as the run that follows it would): a coarser spacing in the trained range (beyond
        it with ``allow_extrapolation`` or an FS model, whose spacing is not clamped), else a larger ``--max-memory``
        where the device has the memory, else a spacing beyond the trained range with ``--allow-extrapolation``."""
        low, high = self.model.spacing_range
        unclamped = allow_extrapolation or self.model.method == "fs"
        advice = []
        coarser = self._coarser_spacing_that_fits(image, spacing, need, None if unclamped else high)
        if coarser is not None:
            return f"use a coarser spacing such as --spacing {' '.join(f'{s:g}' for s in coarser)}"
        if self.max_memory_mb is not None and need * 1.1 <= 0.9 * free:
            advice.append(f"give a larger budget such as --max-memory {math.ceil(need * 1.1)} ({free:,.0f} MB are free "
                          f"on {self.device.type})")
        if not unclamped:
            beyond = self._coarser_spacing_that_fits(image, spacing, need, None)
            if beyond is not None:
                advice.append(f"use --spacing {' '.join(f'{s:g}' for s in beyond)} --allow-extrapolation (coarser "
                              f"than the trained range {low:g}-{high:g} mm: less accurate)")
        if advice:
            return " or ".join(advice)
        return (f"even the coarsest spacing and smallest windows need more: free memory on {self.device.type} (close "
                "other programs), or segment on a machine with more memory")

    def _coarser_spacing_that_fits(self, image: sitk.Image, spacing: Sequence[float], need: float,
                                   high: float | None) -> tuple[float, ...] | None:
        """A coarser spacing (at most ``high`` per axis; ``None``: up to ``_EXTRAPOLATION_REACH`` times the coarsest
        axis or the trained range) whose estimated need fits the budget, rounded up to 0.01 mm as printed; or
        ``None`` if none does."""
        limit = self._memory_limit_mb(available_memory_mb(self.device))
        reach = high if high is not None else max(max(spacing), self.model.spacing_range[1]) * _EXTRAPOLATION_REACH
        factor = max((need / (0.55 * limit)) ** (1 / len(spacing)), 1.01)
        previous = None
        for _ in range(200):
            candidate = tuple(max(s, min(math.ceil(s * factor * 100) / 100, reach)) for s in spacing)
            if candidate == previous:  # every axis at the reach: nothing coarser to try
                return None
            if self.estimate_memory_mb(image, candidate) <= limit:
                return candidate
            previous, factor = candidate, factor * 1.15
        return None

    # segmentation ---------------------------------------------------------------------------------
    def segment(self, image: sitk.Image, spacing: Sequence[float], reporter: Reporter,
                mask: np.ndarray | None = None) -> sitk.Image:
        """Labels (uint8) on exactly the grid of ``image``, predicted at ``spacing``: the most likely class of
        ``probabilities`` (the same labels, bit for bit), interpolated only where it can change (``restore``)."""
        parts = [self.working_probabilities(image, spacing, reporter, mask)]
        return labels_on_input_grid(parts, sorted(self.model.labels), image, reporter, mask)

    def probabilities(self, image: sitk.Image, spacing: Sequence[float], reporter: Reporter,
                      mask: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities ``(classes, *array shape of image)`` (float32, classes in the order of their sorted
        label values) on exactly the grid of ``image``, predicted at ``spacing`` (mm, along the network view's LPS
        axes: x, y, z, or a 2D model's slice plane's two). Voxels not segmented (other slices than ``--slice``, or
        outside ``mask``, a boolean array of ``image``'s shape) are background with certainty. A 3D model predicts
        on the box around what is not background (``cropping``)."""
        restorable = self.working_probabilities(image, spacing, reporter, mask)
        with reporter.stage("restore input grid"):
            return _masked(restorable.probabilities(), mask)

    def working_probabilities(self, image: sitk.Image, spacing: Sequence[float], reporter: Reporter,
                              mask: np.ndarray | None = None) -> Restorable:
        """The class probabilities of ``image`` on the working grid at ``spacing`` (see ``probabilities``; a 3D
        model's box lies around what is not background within ``mask``), with what brings them back onto the
        grid of ``image``: ``Restorable.probabilities()`` there (``mask`` not yet applied), or the labels
        (``labels_on_input_grid``, which takes an ensemble's members and the mask)."""
        source, oriented, slice_axis = self._network_input(image)
        item_axis = None if slice_axis is None else 2 - slice_axis  # the slices' array axis (k, j, i order)
        outside = self.model.normalisation.outside_value
        region, target = None, oriented  # the box predicted on (3D), and its grid
        with reporter.stage("resample to working spacing"):
            array = self._normalised(sitk.GetArrayViewFromImage(oriented), item_axis)
            if slice_axis is None:
                region = foreground_region(array, outside, oriented.GetSpacing()[::-1], _oriented(mask, image))
            if region is not None:
                array, target = region.take(array, outside), region.grid(oriented)
            normalised = sitk.GetImageFromArray(array)
            normalised.CopyInformation(target)
            in_plane = iter(spacing)
            stack_spacing = [target.GetSpacing()[a] if a == slice_axis else next(in_plane) for a in range(3)]
            working = resample_to_spacing(normalised, stack_spacing)
            items = _by_item(sitk.GetArrayViewFromImage(working), item_axis)  # (volume or slices, *shape)
        count, shape = items.shape[0], items.shape[1:]
        classes = len(self.model.labels)
        plan = self.windows(target if region is not None else image, spacing)
        patch, batch = plan.patch, plan.batch
        windows = count_windows(shape, patch, self.overlap)
        windows_text = f"{windows} windows of {'x'.join(map(str, patch))}"
        if len(self.flips) > 1:
            windows_text += f", {len(self.flips)} flips"
        name = f"predict {windows_text}"
        if slice_axis is not None:
            name = f"predict {count} slices, up to {batch} at a time, {windows_text} each"
        with reporter.stage(name, total=math.ceil(count / batch) * windows * len(self.flips)) as update:
            network = self.network_for(tuple(reversed(spacing)))  # as asked: one network for a batch of scans
            batched = np.empty((count, classes, *shape), np.float32) if count > batch else None
            for start in range(0, count, batch):
                images = torch.tensor(items[start:start + batch], device=self.device)[:, None]
                result = sum(predict_probabilities(images.flip(dims), network, classes, patch, self.overlap, update,
                                                   outside).flip(dims) for dims in self.flips) / len(self.flips)
                if batched is None:  # one batch holds every item: its result is the whole
                    batched = result.cpu().numpy()
                else:
                    batched[start:start + batch] = result.cpu().numpy()
        probabilities = batched[0] if item_axis is None else np.moveaxis(batched, 0, item_axis + 1)
        plane, slice_at = image.GetDimension() == 2, None
        if not plane and self.model.dim == 2 and self.slices.index is not None:
            slices = self.slices.resolved(image)
            slice_at = (2 - slices.axis, slices.index)
        return restorable(probabilities, oriented, source, region, plane, slice_at, tuple(image.GetSize()[::-1]))

    def _network_input(self, image: sitk.Image) -> tuple[sitk.Image, sitk.Image, int | None]:
        """``(source, oriented, slice axis)``: the part of ``image`` segmented, as a volume (a 2D image is a volume
        of one slice; with a slice index, that slice alone), the same reoriented to LPS, and the axis (x, y, z) of
        the latter along which a 2D model's slices lie (``None`` for a 3D model)."""
        slice_axis = self._slice_axis(image)
        if image.GetDimension() == 2:
            source = sitk.JoinSeries(canonical(image))
            return source, source, slice_axis
        source = image
        if slice_axis is not None and self.slices.index is not None:
            slices = self.slices.resolved(image)
            size, start = list(image.GetSize()), [0, 0, 0]
            size[slices.axis], start[slices.axis] = 1, slices.index
            source = sitk.RegionOfInterest(image, size, start)
        return source, canonical(source), slice_axis

    def _normalised(self, array: np.ndarray, item_axis: int | None) -> np.ndarray:
        """Intensities normalised per item: the whole volume, or each slice along ``item_axis`` as a 2D image."""
        apply = self.model.normalisation.apply
        if item_axis is None:
            return apply(array)
        normalised = np.empty(array.shape, np.float32)
        for source, target in zip(_by_item(array, item_axis), _by_item(normalised, item_axis)):
            target[...] = apply(source)
        return normalised



def restorable(probabilities: np.ndarray, oriented: sitk.Image, source: sitk.Image, region: Region | None = None,
               plane: bool = False, slice_at: tuple[int, int] | None = None,
               image_shape: tuple[int, ...] | None = None) -> Restorable:
    """Class probabilities ``(classes, *working shape)`` on the working grid (any spacing; see
    ``geometry.working_grid``) of ``oriented`` (``canonical(source)``), or of the box ``region`` of its array,
    ready to go back onto the grid of ``source`` (``restore.Restorable``; ``plane``, ``slice_at`` and
    ``image_shape`` say where ``source`` lies in the image, as there)."""
    shape = oriented.GetSize()[::-1]
    low, box = (region.low, region.shape) if region is not None else ((0,) * len(shape), shape)
    axes = array_axes_from(oriented, source)
    tables = tuple(axis_table(probabilities.shape[1 + axis], low[axis], box[axis], shape[axis], flipped)
                   for axis, flipped in axes)
    values = np.ascontiguousarray(np.transpose(probabilities, [0] + [1 + axis for axis, _ in axes]), np.float32)
    return Restorable(values, tables, plane, slice_at, image_shape)


def on_input_grid(probabilities: np.ndarray, oriented: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Class probabilities ``(classes, *working shape)`` on a working grid of ``oriented`` (any spacing; see
    ``geometry.working_grid``), ``reference`` with axes permuted and flipped such as ``canonical(reference)``,
    resampled linearly onto the grid of ``reference``: ``(classes, *reference shape)``, float32."""
    return restorable(probabilities, oriented, reference).probabilities()


def labels_on_input_grid(parts: Sequence[Restorable], values: Sequence[int], reference: sitk.Image,
                         reporter: Reporter | None = None, mask: np.ndarray | None = None) -> sitk.Image:
    """The labels of the mean of ``parts``' probabilities (``Segmenter.working_probabilities``: one model's, or an
    ensemble's members' in order) on ``reference``'s grid, background outside ``mask``: the same, bit for bit, as
    ``labels_from_probabilities`` of the mean of their ``probabilities`` (summed in order, then divided by their
    number), with the interpolation done only where it can change the label (``restore``)."""
    with reporter.stage("restore input grid") if reporter is not None else contextlib.nullcontext():
        most_likely = restored_labels(parts, mask)
    with reporter.stage("labels") if reporter is not None else contextlib.nullcontext():
        return _label_image(most_likely, values, reference)


def labels_from_probabilities(probabilities: np.ndarray, values: Sequence[int], reference: sitk.Image) -> sitk.Image:
    """The label value (``values[c]`` for class ``c``) of the most likely class at each voxel, on ``reference``'s
    grid (ties: the lowest value)."""
    return _label_image(most_likely_class(probabilities), values, reference)


def _label_image(most_likely: np.ndarray, values: Sequence[int], reference: sitk.Image) -> sitk.Image:
    """The label values of class indices ``most_likely`` as an image on ``reference``'s grid."""
    same = list(values) == list(range(len(values)))  # class c is label c: no look-up
    labels = sitk.GetImageFromArray(most_likely if same else np.asarray(values, np.uint8)[most_likely])
    labels.CopyInformation(reference)
    return labels


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """-sum p log p / log(classes) over the classes (the first axis): 0 where one class is certain, 1 where all
    are equally likely; float32."""
    entropy = sum(scipy.special.entr(np.clip(channel, 0.0, 1.0)) for channel in probabilities)
    return np.clip(entropy / math.log(len(probabilities)), 0.0, 1.0).astype(np.float32)


def _flips(tta: Sequence[int] | None, dim: int) -> list[tuple[int, ...]]:
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


def _reoriented_axes(image: sitk.Image) -> tuple[int, ...]:
    """For each axis of ``canonical(image)``, the axis of ``image`` it is (reorientation permutes and flips axes):
    read from the directions alone, by reorienting a one-voxel image with the same direction."""
    dim = image.GetDimension()
    probe = sitk.Image([1] * dim, sitk.sitkUInt8)
    probe.SetDirection(image.GetDirection())
    cosines = np.reshape(image.GetDirection(), (dim, dim)).T @ np.reshape(canonical(probe).GetDirection(), (dim, dim))
    return tuple(int(np.argmax(np.abs(cosines[:, axis]))) for axis in range(dim))


def _oriented(mask: np.ndarray | None, image: sitk.Image) -> np.ndarray | None:
    """``mask`` (an array on ``image``'s grid) with its axes permuted and flipped as ``canonical(image)``'s."""
    if mask is None or image.GetDimension() != 3:
        return mask
    holder = sitk.GetImageFromArray(mask.astype(np.uint8))
    holder.CopyInformation(image)
    return sitk.GetArrayViewFromImage(canonical(holder)) > 0


def _masked(probabilities: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``probabilities`` (classes first) made background with certainty outside ``mask``, in place."""
    if mask is not None:
        probabilities[:, ~mask] = 0.0
        probabilities[0, ~mask] = 1.0
    return probabilities


def _by_item(array: np.ndarray, item_axis: int | None) -> np.ndarray:
    """A view of ``array`` with its items first: its slices along ``item_axis``, or (``None``) itself as one item."""
    return array[None] if item_axis is None else np.moveaxis(array, item_axis, 0)


def _at_least(patch: Sequence[int], shape: Sequence[int], least: int) -> tuple[int, ...]:
    """``patch`` with every axis it covers whole (at least ``shape``) made at least ``least`` long."""
    return tuple(max(p, least) if p >= s else p for p, s in zip(patch, shape))


def _clamp(spacing: Sequence[float], low: float, high: float) -> tuple[float, ...]:
    return tuple(min(max(float(s), low), high) for s in spacing)


def _megabytes(value: float) -> str:
    """MB as shown in messages: whole numbers with thousands separators, two digits below 10 MB."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing) + " mm"
