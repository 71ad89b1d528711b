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
from ..geometry import canonical, physical_size, resample_to_spacing, voxels_at
from ..io.images import check_spacing
from ..io.model_file import SegmentationModel
from ..networks import HyperSpaceNet
from ..progress import Reporter
from ..system import available_memory_mb, resolve_device
from .sliding_window import count_windows, patch_size_for, predict_probabilities

DEFAULT_PATCH = {3: 128, 2: 512}
DEFAULT_MAX_VOXELS = 4_000_000


@dataclass(frozen=True)
class SpacingRequest:
    """What the user asked for: ``model`` (the model's default), ``native``, ``auto`` or ``explicit``."""

    mode: str = "model"
    values: tuple[float, ...] = ()
    max_voxels: int | None = None
    max_seconds: float | None = None
    allow_extrapolation: bool = False


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
        divisor = model.unet_config.divisor
        if patch is not None and (patch < 2 * divisor or patch % divisor):
            raise UserError(f"--patch {patch}: give a multiple of {divisor} of at least {2 * divisor} voxels")
        self.patch = (patch or DEFAULT_PATCH[model.dim],) * model.dim
        self.overlap = overlap
        self.cache_size = cache_size
        self._networks: OrderedDict[tuple[float, ...], nn.Module] = OrderedDict()
        self._throughput: dict[tuple[int, ...], float] = {}

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
        """The working spacing (x, y, z mm) for ``image`` under ``request``, with notes for the user."""
        oriented = canonical(image)
        native = tuple(float(s) for s in oriented.GetSpacing())
        low, high = self.model.spacing_range
        mode = request.mode
        if mode == "model":
            mode = "fixed" if self.model.method == "fs" else "native"
        if self.model.method == "fs" and mode in ("fixed", "auto"):
            return SpacingChoice(tuple(self.model.fixed_spacing), ["FS model: working at its fixed training spacing"])
        if mode == "explicit":
            values = request.values * image.GetDimension() if len(request.values) == 1 else request.values
            if len(values) != image.GetDimension():
                raise UserError(f"--spacing has {len(values)} values for a {image.GetDimension()}D image: give 1 or {image.GetDimension()}")
            spacing = tuple(values)
        elif mode == "native":
            spacing = native
        else:
            spacing = self._auto_spacing(oriented, native, request)
        if self.model.method == "fs":
            note = [] if np.allclose(spacing, self.model.fixed_spacing) else [
                "FS model at a spacing other than its own (FSNR when native)"]
            return SpacingChoice(spacing, note)
        notes = []
        clamped = tuple(min(max(s, low), high) for s in spacing)
        if clamped != spacing:
            shown = ", ".join(f"{s:.3g}" for s in spacing)
            if request.allow_extrapolation:
                notes.append(f"spacing ({shown}) mm lies outside the trained range {low:g}-{high:g} mm; extrapolating")
            else:
                notes.append(
                    f"spacing ({shown}) mm lies outside the trained range {low:g}-{high:g} mm; clamped to "
                    f"({', '.join(f'{s:.3g}' for s in clamped)}) mm (pass --allow-extrapolation to keep it)"
                )
                spacing = clamped
        return SpacingChoice(spacing, notes)

    def _auto_spacing(self, image: sitk.Image, native: tuple[float, ...], request: SpacingRequest) -> tuple[float, ...]:
        """The finest spacing, coarsening from the native one, whose estimated cost fits the budget."""
        low, high = self.model.spacing_range
        max_voxels = request.max_voxels or (None if request.max_seconds else DEFAULT_MAX_VOXELS)
        floor = low
        while True:
            spacing = tuple(min(max(s, floor), max(high, s)) for s in native)
            fits = True
            if max_voxels is not None:
                fits = voxels_at(image, spacing) <= max_voxels
            if fits and request.max_seconds is not None:
                fits = self.estimate_seconds(image, spacing) <= request.max_seconds
            if fits or floor >= max(high, max(native)):
                return spacing
            floor *= 1.02

    # estimates ------------------------------------------------------------------------------------
    def _network_shape(self, image: sitk.Image, spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        extent = physical_size(canonical(image))
        shape = tuple(max(round(e / s), 1) for e, s in zip(reversed(extent), reversed(spacing)))
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
        """Prediction time (s) from the measured speed of one window on this device."""
        shape, patch = self._network_shape(image, spacing)
        windows = count_windows(shape, patch, self.overlap)
        return windows * self._seconds_per_window(tuple(reversed(spacing)), patch)

    def _seconds_per_window(self, spacing_zyx: tuple[float, ...], patch: tuple[int, ...]) -> float:
        if patch not in self._throughput:
            network = self.network_for(spacing_zyx)
            x = torch.zeros((1, self.model.unet_config.in_channels, *patch), device=self.device)
            with torch.no_grad():
                network(x)
                start = time.perf_counter()
                network(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
            self._throughput[patch] = time.perf_counter() - start
        return self._throughput[patch]

    def check_memory(self, image: sitk.Image, spacing: Sequence[float]) -> float:
        """The estimated need (MB); a ``UserError`` with a coarser spacing to try if it exceeds what is free."""
        need = self.estimate_memory_mb(image, spacing)
        free = available_memory_mb(self.device)
        if need > 0.9 * free:
            factor = (need / (0.5 * free)) ** (1 / image.GetDimension())
            suggestion = ", ".join(f"{s * factor:.2f}" for s in spacing)
            raise UserError(
                f"segmenting at spacing ({', '.join(f'{s:.3g}' for s in spacing)}) mm needs about {need:,.0f} MB but "
                f"{free:,.0f} MB are free on {self.device.type}: use a coarser spacing such as --spacing {suggestion}"
            )
        return need

    # segmentation ---------------------------------------------------------------------------------
    def segment(self, image: sitk.Image, spacing: Sequence[float], reporter: Reporter) -> sitk.Image:
        """Labels (uint8) on exactly the grid of ``image``, predicted at ``spacing`` (x, y, z mm)."""
        oriented = canonical(image)
        with reporter.stage("resample to working spacing"):
            array = self.model.normalisation.apply(sitk.GetArrayViewFromImage(oriented))
            normalised = sitk.GetImageFromArray(array)
            normalised.CopyInformation(oriented)
            working = resample_to_spacing(normalised, spacing)
            spacing_zyx = tuple(reversed(working.GetSpacing()))
            volume = torch.from_numpy(sitk.GetArrayFromImage(working))[None].to(self.device)
        patch = patch_size_for(volume.shape[1:], self.patch, self.model.unet_config.divisor)
        windows = count_windows(volume.shape[1:], patch, self.overlap)
        with reporter.stage(f"predict {windows} windows of {'x'.join(map(str, patch))}", total=windows) as update:
            network = self.network_for(spacing_zyx)
            probabilities = predict_probabilities(
                volume, network, len(self.model.labels), patch, self.overlap, update
            ).cpu().numpy()
        with reporter.stage("restore input grid"):
            return probabilities_to_labels(probabilities, sorted(self.model.labels), working, image)


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
