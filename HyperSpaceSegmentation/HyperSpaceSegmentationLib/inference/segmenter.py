"""Segment an image at a chosen working spacing and return labels on the input's own grid.

Pipeline: the image is reoriented to the nearest LPS axes (a lossless permutation), normalised, resampled
in physical space to the working spacing (Gaussian anti-aliasing when down-sampling), predicted with a
sliding window, and the class probabilities are resampled linearly onto the input grid, where the argmax
gives the labels. Spacings handed to networks are in array-axis order (k, j, i), as the arrays are.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ..errors import UserError
from ..geometry import canonical, grid_size, physical_size, resample_to_spacing
from ..io.images import check_spacing
from ..io.model_file import SegmentationModel
from ..networks import HyperSpaceNet
from ..progress import Reporter
from ..system import available_memory_mb, resolve_device
from .sliding_window import count_windows, patch_size_for, predict_probabilities

DEFAULT_PATCH = {3: 128, 2: 512}
DEFAULT_MAX_VOXELS = 4_000_000
_REFERENCE_WINDOW = {3: 64, 2: 256}  # timed once for --max-seconds; smaller windows cost more per voxel (conservative)
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


@dataclass
class SpacingChoice:
    spacing: tuple[float, ...]  # x, y, z order (as SimpleITK)
    notes: list[str] = field(default_factory=list)


class Segmenter:
    """Runs one model on images; networks generated for a spacing are cached (spacing rounded to 0.01 mm)."""

    def __init__(
        self, model: SegmentationModel, device: str = "auto", patch: int | None = None,
        overlap: float = 0.5, cache_size: int = 8,
    ) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.model.network.to(self.device)
        if patch is not None and (problem := model.unet_config.patch_problem(patch)):
            raise UserError(f"--patch {patch}: {problem}")
        self.patch = (patch or DEFAULT_PATCH[model.dim],) * model.dim
        self.overlap = overlap
        self.cache_size = cache_size
        self._networks: OrderedDict[tuple[float, ...], nn.Module] = OrderedDict()
        self._seconds_per_voxel_measured: float | None = None
        self._last_view: tuple[tuple | None, tuple] = (None, ())

    # networks -------------------------------------------------------------------------------------
    def network_for(self, spacing_zyx: Sequence[float]) -> nn.Module:
        """The U-Net for a spacing in array-axis order: generated once per rounded spacing for HyperSpace."""
        network = self.model.network
        if not isinstance(network, HyperSpaceNet):
            return network
        key = tuple(round(float(s), 2) for s in spacing_zyx)
        if key not in self._networks:
            self._networks[key] = network.static_unet(key)
            while len(self._networks) > self.cache_size:
                self._networks.popitem(last=False)
        self._networks.move_to_end(key)
        return self._networks[key]

    # spacing --------------------------------------------------------------------------------------
    def choose_spacing(self, image: sitk.Image, request: SpacingRequest) -> SpacingChoice:
        """The working spacing (x, y, z mm, axes after reorientation to LPS) for ``image`` under ``request``."""
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
                raise UserError(f"--spacing has {len(spacing)} values for a {dim}D image: give 1 or {dim}")
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
            if max_voxels is not None and math.prod(self.working_size(image, spacing)) > max_voxels:
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
                needs.append(f"{math.prod(self.working_size(image, spacing)):,} voxels (budget {max_voxels:,.0f})")
            if request.max_seconds is not None:
                needs.append(f"about {self.estimate_seconds(image, spacing):.2g} s to predict "
                             f"(budget {request.max_seconds:g} s)")
            reach = "the coarsest spacing tried" if extrapolate else "the coarsest spacing of the trained range"
            notes.append(f"the budget cannot be met: {reach}, {_mm(spacing)}, needs " + " and ".join(needs)
                         + ("" if extrapolate else "; pass --allow-extrapolation to go coarser than the model was "
                            "trained for"))
        return SpacingChoice(spacing, notes)

    # estimates ------------------------------------------------------------------------------------
    def _model_view(self, image: sitk.Image) -> sitk.Image:
        """The image as the network sees it: reoriented to LPS, and a single-slice volume as a 2D image for 2D models."""
        oriented = canonical(image)
        if self.model.dim == 2 and oriented.GetDimension() == 3:
            keep = [axis for axis, n in enumerate(oriented.GetSize()) if n > 1][:2] or [0, 1]
            array = np.squeeze(sitk.GetArrayFromImage(oriented), axis=tuple(2 - a for a in range(3) if a not in keep))
            plane = sitk.GetImageFromArray(array)
            plane.SetSpacing([oriented.GetSpacing()[a] for a in keep])
            return plane
        return oriented

    def _view_geometry(self, image: sitk.Image) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(spacing, physical size) of the model's view of ``image``, in its axis order (x, y, z); kept for the
        last grid, since the estimates of an auto spacing ask at every candidate and the view is a copy."""
        key = (image.GetSize(), image.GetSpacing(), image.GetDirection())
        if self._last_view[0] != key:
            view = self._model_view(image)
            self._last_view = (key, (tuple(view.GetSpacing()), physical_size(view)))
        return self._last_view[1]

    def native_spacing(self, image: sitk.Image) -> tuple[float, ...]:
        """The image's spacing as the network sees it: LPS axes, and a single slice's two axes for a 2D model."""
        return self._view_geometry(image)[0]

    def working_size(self, image: sitk.Image, spacing: Sequence[float]) -> tuple[int, ...]:
        """Voxels per axis (x, y, z of the network's view) of the working grid of ``image`` at ``spacing``."""
        return grid_size(self._view_geometry(image)[1], spacing)

    def _network_shape(self, image: sitk.Image, spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = tuple(reversed(self.working_size(image, spacing)))
        return shape, patch_size_for(shape, self.patch, self.model.unet_config.divisor)

    def estimate_memory_mb(self, image: sitk.Image, spacing: Sequence[float]) -> float:
        """Memory (MB) that segmenting ``image`` at ``spacing`` adds: volumes, accumulators and activations.

        The activation term (8 feature maps' worth per level, convolution workspace included) was fitted on
        the MNI152 template at 1-3.5 mm (see docs/BENCHMARKS.md): within 10% at 1-2 mm, up to 30% low at coarser
        spacings, where fixed costs dominate and the need is small anyway.
        """
        shape, patch = self._network_shape(image, spacing)
        classes = len(self.model.labels)
        working = math.prod(max(s, p) for s, p in zip(shape, patch))
        source = math.prod(image.GetSize())
        features = self.model.unet_config.features
        activations = sum(f * 8 * math.prod(patch) / (2 ** (self.model.dim * level)) for level, f in enumerate(features))
        total = 4 * (working * (classes + 3) + source * 3 + activations)
        return total / 2**20

    def estimate_seconds(self, image: sitk.Image, spacing: Sequence[float]) -> float:
        """Prediction time (s): the voxels the windows process times the measured time per voxel on this device."""
        shape, patch = self._network_shape(image, spacing)
        return count_windows(shape, patch, self.overlap) * math.prod(patch) * self._seconds_per_voxel()

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

    def check_memory(self, image: sitk.Image, spacing: Sequence[float]) -> float:
        """The estimated need (MB); a ``UserError`` with a coarser spacing to try if it exceeds what is free."""
        need = self.estimate_memory_mb(image, spacing)
        free = available_memory_mb(self.device)
        if need > 0.9 * free:
            factor = (need / (0.5 * free)) ** (1 / len(spacing))
            suggestion = " ".join(f"{s * factor:.2f}" for s in spacing)
            raise UserError(
                f"segmenting at spacing ({', '.join(f'{s:.3g}' for s in spacing)}) mm needs about {need:,.0f} MB but "
                f"{free:,.0f} MB are free on {self.device.type}: use a coarser spacing such as --spacing {suggestion}"
            )
        return need

    # segmentation ---------------------------------------------------------------------------------
    def segment(self, image: sitk.Image, spacing: Sequence[float], reporter: Reporter) -> sitk.Image:
        """Labels (uint8) on exactly the grid of ``image``, predicted at ``spacing`` (x, y, z mm, LPS axes)."""
        oriented = self._model_view(image)
        normalisation = self.model.normalisation
        with reporter.stage("resample to working spacing"):
            array = normalisation.apply(sitk.GetArrayViewFromImage(oriented))
            normalised = sitk.GetImageFromArray(array)
            normalised.CopyInformation(oriented)
            working = resample_to_spacing(normalised, spacing, outside=normalisation.outside_value)
            spacing_zyx = tuple(reversed(working.GetSpacing()))
            volume = torch.from_numpy(sitk.GetArrayFromImage(working))[None].to(self.device)
        patch = patch_size_for(volume.shape[1:], self.patch, self.model.unet_config.divisor)
        windows = count_windows(volume.shape[1:], patch, self.overlap)
        with reporter.stage(f"predict {windows} windows of {'x'.join(map(str, patch))}", total=windows) as update:
            network = self.network_for(spacing_zyx)
            probabilities = predict_probabilities(
                volume, network, len(self.model.labels), patch, self.overlap, update, normalisation.outside_value,
            ).cpu().numpy()
        with reporter.stage("restore input grid"):
            if oriented.GetDimension() == image.GetDimension():
                return probabilities_to_labels(probabilities, sorted(self.model.labels), working, image)
            # a single-slice volume segmented as a 2D image: its voxels are the slice's pixels
            plane = probabilities_to_labels(probabilities, sorted(self.model.labels), working, oriented)
            labels = sitk.GetImageFromArray(sitk.GetArrayFromImage(plane).reshape(sitk.GetArrayViewFromImage(canonical(image)).shape))
            labels.CopyInformation(canonical(image))
            return sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def probabilities_to_labels(
    probabilities: np.ndarray, values: Sequence[int], working: sitk.Image, reference: sitk.Image
) -> sitk.Image:
    """Resample each class probability linearly onto ``reference``; the most likely class's label value wins."""
    best = np.full(sitk.GetArrayViewFromImage(reference).shape, -1.0, dtype=np.float32)
    labels = np.zeros(best.shape, dtype=np.uint8)
    for value, channel in zip(values, probabilities):
        image = sitk.GetImageFromArray(channel.astype(np.float32))
        image.CopyInformation(working)
        resampled = sitk.GetArrayFromImage(
            sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
        better = resampled > best
        best[better] = resampled[better]
        labels[better] = value
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(reference)
    return result


def _clamp(spacing: Sequence[float], low: float, high: float) -> tuple[float, ...]:
    return tuple(min(max(float(s), low), high) for s in spacing)


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing) + " mm"
