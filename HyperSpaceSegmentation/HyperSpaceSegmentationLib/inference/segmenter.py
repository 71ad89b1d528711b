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

import math
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ..errors import UserError
from ..geometry import canonical, grid_size, oriented_like_canonical, reoriented_axes, resampled_array
from ..io.model_file import SegmentationModel
from ..networks import HyperSpaceNet, UNet
from ..progress import Reporter
from .. import system
from ..system import resolve_device
from .backends import (
    EXPORT_PAYS_VOXELS, OnnxRuntimeNetwork, autocast, check_inference_options, exported_path, model_digest,
    onnxruntime_installed, onnxruntime_network,
)
from .cropping import foreground_region
from .memory import EXTRAPOLATION_REACH, check_memory
from .plans import (
    NetworkView, Slices, SpacingChoice, SpacingRequest, WindowPlan, check_memory_budget, tta_flips,
)
from .restore import Restorable
from .results import labels_on_input_grid, masked, restorable
from .sliding_window import count_windows, patch_size_for, predict_probabilities

MEMORY_SHARE = 0.8  # without --max-memory, windows may take this share of the memory available on the device
DEFAULT_MAX_VOXELS = 4_000_000
_REFERENCE_WINDOW = {3: 64, 2: 256}  # timed once for --max-seconds; smaller windows cost more per voxel (conservative)
_MAX_BATCH = 32  # slices per network call: at most this many, and as many as _BATCH_MEMORY_MB of activations hold
_BATCH_MEMORY_MB = 1024
_RANGE_TOLERANCE = 1e-4  # a spacing this close (relative) to the trained range counts as inside it, without a note


class Segmenter:
    """Runs one model on images; networks generated for a spacing are cached (spacing rounded to 0.01 mm).

    A 2D model segments the ``slices`` of each image (by default every slice along k, or a single-slice volume's
    one slice); a 3D model takes each image as a whole. ``tta``: test-time augmentation, the probabilities averaged
    over every combination of flips of these axes of the network's view (0, 1, 2: L-R, P-A, S-I; a 2D model's
    slice plane's two, in that order: 0, 1); ``()`` all of them; ``None`` none. ``precision``: what the torch
    network computes in (``backends.resolve_precision``).
    """

    def __init__(
        self, model: SegmentationModel, device: str = "auto", patch: int | None = None,
        overlap: float = 0.5, cache_size: int = 8, slices: Slices = Slices(), tta: Sequence[int] | None = None,
        max_memory_mb: float | None = None, backend: str = "auto", precision: str = "float32",
    ) -> None:
        if model.dim == 3 and slices != Slices():
            raise UserError("a 3D model segments whole volumes: drop --axis and --slice, or use a 2D model")
        check_memory_budget(max_memory_mb)
        self.model = model
        self.slices = slices
        self.flips = tta_flips(tta, model.dim)
        self.device = resolve_device(device)
        self.precision = check_inference_options(backend, precision, self.device)
        self.model.network.to(self.device)
        if patch is not None and (problem := model.unet_config.patch_problem(patch)):
            raise UserError(f"--patch {patch}: {problem}")
        self.patch = None if patch is None else (patch,) * model.dim  # None: the largest window that fits memory
        self.max_memory_mb = max_memory_mb
        self.overlap = overlap
        self.cache_size = cache_size
        self.backend = backend
        self._onnxruntime_failed = False  # auto: an export failed, so torch runs every network of this segmenter
        self._networks: OrderedDict[tuple, nn.Module | OnnxRuntimeNetwork] = OrderedDict()
        self._digest: str | None = None
        self.backend_used: str | None = None  # what ran the last prediction: "torch" or "onnxruntime"
        self._seconds_per_voxel_measured: float | None = None

    # networks -------------------------------------------------------------------------------------
    def network_for(self, spacing_zyx: Sequence[float]) -> nn.Module:
        """The U-Net for a spacing in array-axis order: generated once per rounded spacing for HyperSpace; on the
        CPU a 3D U-Net runs in channels-last memory order (``UNet.to_channels_last``)."""
        network = self.model.network
        key = self._spacing_key(spacing_zyx)
        if key is None:
            return self._prepared(network)
        if key not in self._networks:
            self._networks[key] = self._prepared(network.static_unet(key))
            self._trim_networks()
        self._networks.move_to_end(key)
        return self._networks[key]

    def predictor_for(self, spacing_zyx: Sequence[float], voxels: int, reporter: Reporter) -> Any:
        """What predicts at a spacing (array-axis order) on a working grid of ``voxels`` (every window and item): the
        torch network (``network_for``), or its ONNX Runtime export (see ``backends``; exported once, in a stage of
        the predict stage of ``reporter``, which notes it)."""
        key = self._spacing_key(spacing_zyx)
        if not self._onnxruntime_for(key, voxels):
            return self.network_for(spacing_zyx)
        cache_key = ("onnxruntime", key)
        if cache_key not in self._networks:
            self._digest = self._digest or model_digest(self.model)
            unet = self.model.network.static_unet(key) if key is not None else self.model.network
            try:
                self._networks[cache_key] = onnxruntime_network(unet, self._digest, key, reporter.log)
            except UserError as error:
                if self.backend == "onnxruntime":
                    raise
                self._onnxruntime_failed = True  # auto: torch from now on, as without ONNX Runtime
                reporter.log(f"note: torch runs the network, as ONNX Runtime could not: {error}")
                return self.network_for(spacing_zyx)
            self._trim_networks()
        self._networks.move_to_end(cache_key)
        return self._networks[cache_key]

    def _onnxruntime_for(self, key: tuple[float, ...] | None, voxels: int) -> bool:
        """Whether the network of ``key`` runs on ONNX Runtime (see ``backends``)."""
        if self.backend != "auto":
            return self.backend == "onnxruntime"
        if self.device.type != "cpu" or self.model.dim != 3 or self.precision != torch.float32 or self._onnxruntime_failed:
            return False
        if not onnxruntime_installed():
            return False
        if ("onnxruntime", key) in self._networks or voxels >= EXPORT_PAYS_VOXELS:
            return True
        self._digest = self._digest or model_digest(self.model)
        try:
            return exported_path(self._digest, key).is_file()
        except UserError:  # no cache folder: auto runs torch
            return False

    def _spacing_key(self, spacing_zyx: Sequence[float]) -> tuple[float, ...] | None:
        """The cache key of a spacing's network: rounded to 0.01 mm; ``None`` for a model of fixed weights."""
        if not isinstance(self.model.network, HyperSpaceNet):
            return None
        return tuple(round(float(s), 2) for s in spacing_zyx)

    def _trim_networks(self) -> None:
        while len(self._networks) > self.cache_size:
            self._networks.popitem(last=False)

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
        coarsest = max(max(native), high) * EXTRAPOLATION_REACH if extrapolate else high
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
        from_file = reoriented_axes(image)
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
        return reoriented_axes(image).index(self.slices.resolved(image).axis)

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
        return self.max_memory_mb if self.max_memory_mb is not None else MEMORY_SHARE * system.available_memory_mb(self.device)

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
            with torch.inference_mode(), autocast(self.device, self.precision):
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
        or what is free on the device, with only advice that works (``memory.check_memory``)."""
        return check_memory(self, image, spacing, allow_extrapolation)

    def memory_limit_mb(self, free: float) -> float:
        """The most memory (MB) ``check_memory`` lets a run need, ``free`` MB being free on the device."""
        return min(self.max_memory_mb, 0.9 * free) if self.max_memory_mb is not None else 0.9 * free

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
        part = self.working_probabilities(image, spacing, reporter, mask)
        with reporter.stage("restore input grid"):
            return masked(part.probabilities(), mask)

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
                region = foreground_region(array, outside, oriented.GetSpacing()[::-1], oriented_like_canonical(mask, image))
            if region is not None:
                array, target = region.take(array, outside), region.grid(oriented)
            in_plane = iter(spacing)
            stack_spacing = [target.GetSpacing()[a] if a == slice_axis else next(in_plane) for a in range(3)]
            working, _ = resampled_array(array, target, stack_spacing)  # no copies through SimpleITK images
            items = _by_item(working, item_axis)  # (volume or slices, *shape)
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
            voxels = count * windows * math.prod(patch) * len(self.flips)
            network = self.predictor_for(tuple(reversed(spacing)), voxels, reporter)  # one for a batch of scans
            self.backend_used = "onnxruntime" if isinstance(network, OnnxRuntimeNetwork) else "torch"
            batched = np.empty((count, classes, *shape), np.float32) if count > batch else None
            for start in range(0, count, batch):
                images = torch.tensor(items[start:start + batch], device=self.device)[:, None]
                with autocast(self.device, self.precision):
                    result = sum(predict_probabilities(images.flip(dims), network, classes, patch, self.overlap,
                                                       update, outside).flip(dims) for dims in self.flips) / len(self.flips)
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


def _by_item(array: np.ndarray, item_axis: int | None) -> np.ndarray:
    """A view of ``array`` with its items first: its slices along ``item_axis``, or (``None``) itself as one item."""
    return array[None] if item_axis is None else np.moveaxis(array, item_axis, 0)


def _at_least(patch: Sequence[int], shape: Sequence[int], least: int) -> tuple[int, ...]:
    """``patch`` with every axis it covers whole (at least ``shape``) made at least ``least`` long."""
    return tuple(max(p, least) if p >= s else p for p, s in zip(patch, shape))


def _clamp(spacing: Sequence[float], low: float, high: float) -> tuple[float, ...]:
    return tuple(min(max(float(s), low), high) for s in spacing)


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing) + " mm"
