"""The model file: network weights (stored as float16) with everything needed to use them.

A model file is a ``torch.save`` dictionary, loaded with ``weights_only=True`` (no code runs on load):
format, version, method (``hyperspace``, ``fs`` or ``as``), the U-Net and hypernetwork shapes, label names
and colours, the trained spacing range, the FS spacing, the intensity normalisation (with the version of its
rule: absent in files written before version 2, which keep the first rule) and training notes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, message_line
from ..networks import HyperConfig, HyperSpaceNet, UNet, UNetConfig
from ..preprocessing import MODALITIES, VERSIONS, Normalisation
from .input_files import input_file
from .outputs import atomic_output

FORMAT = "hyperspace-segmentation-model"
VERSION = 1
METHODS = ("hyperspace", "fs", "as")


@dataclass
class SegmentationModel:
    """A network with its labels, spacing range and normalisation."""

    method: str
    network: nn.Module
    labels: dict[int, str]
    spacing_range: tuple[float, float]
    normalisation: Normalisation
    fixed_spacing: tuple[float, ...] | None = None
    colors: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def unet_config(self) -> UNetConfig:
        return self.network.unet.config if isinstance(self.network, HyperSpaceNet) else self.network.config

    @property
    def dim(self) -> int:
        return self.unet_config.dim

    def trainable(self) -> nn.Module:
        """The part that is trained and saved: the hypernetwork for HyperSpace, the U-Net otherwise."""
        return self.network.hypernet if isinstance(self.network, HyperSpaceNet) else self.network

    def parameter_counts(self) -> dict[str, int]:
        unet = sum(p.numel() for p in UNet(self.unet_config).parameters())
        counts = {"unet": unet}
        if isinstance(self.network, HyperSpaceNet):
            counts["hypernetwork"] = sum(p.numel() for p in self.network.hypernet.parameters())
        return counts


def build_network(method: str, unet_config: UNetConfig, hyper_config: HyperConfig | None) -> nn.Module:
    """The network for a training method: a HyperSpaceNet or a plain U-Net."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if method == "hyperspace":
        return HyperSpaceNet(unet_config, hyper_config or HyperConfig())
    return UNet(unet_config)


def save_model(model: SegmentationModel, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``model`` atomically; float weights are stored in half precision."""
    network = model.network
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "method": model.method,
        "unet": model.unet_config.to_dict(),
        "hyper": network.hypernet.config.to_dict() if isinstance(network, HyperSpaceNet) else None,
        "labels": {int(k): str(v) for k, v in model.labels.items()},
        "colors": {int(k): [float(c) for c in v] for k, v in model.colors.items()},
        "spacing_range": [float(v) for v in model.spacing_range],
        "fixed_spacing": list(model.fixed_spacing) if model.fixed_spacing else None,
        "normalisation": model.normalisation.to_dict(),
        "training": model.training,
        "state_dict": {k: v.detach().cpu().half() for k, v in model.trainable().state_dict().items()},
    }
    with atomic_output(path, overwrite) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def load_model(path: str | os.PathLike) -> SegmentationModel:
    """Read a model file; a ``UserError`` names a missing, corrupt or unknown-version file."""
    path = input_file(path, folder="{path} is a folder, not a model file: give the path of a .pt model file",
                      missing="model file {path} does not exist: check the --model path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        raise UserError(f"model file {path} is corrupt or not a model ({type(error).__name__}): use an intact model file") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a HyperSpace Segmentation model file: train one with 'hyperspace train'")
    if payload.get("version") != VERSION:
        raise UserError(
            f"{path} is a model file of version {payload.get('version')}, this program reads version {VERSION}: "
            "update HyperSpace Segmentation or use a matching model"
        )
    try:
        unet_config = UNetConfig(**{**payload["unet"], "features": tuple(payload["unet"]["features"])})
        hyper = HyperConfig(**payload["hyper"]) if payload["hyper"] else None
        metadata = dict(
            method=payload["method"],
            labels={int(k): v for k, v in payload["labels"].items()},
            spacing_range=tuple(float(s) for s in payload["spacing_range"]),
            normalisation=Normalisation(**payload["normalisation"]),
            fixed_spacing=tuple(float(s) for s in payload["fixed_spacing"]) if payload["fixed_spacing"] else None,
            colors={int(k): tuple(v) for k, v in payload.get("colors", {}).items()},
        )
        problem = network_problem(unet_config, hyper) or metadata_problem(unet_config, hyper, **metadata)
        if problem:
            raise UserError(f"model file {path} has invalid metadata ({problem}): retrain the model or use an intact file")
        network = build_network(payload["method"], unet_config, hyper)
        model = SegmentationModel(network=network, training=payload.get("training", {}), **metadata)
        state = {k: v.float() for k, v in payload["state_dict"].items()}
        broken = [k for k, v in state.items() if not torch.isfinite(v).all()]
        if broken:
            raise UserError(f"model file {path} is corrupt: {len(broken)} weight tensors ({broken[0]}, ...) hold NaN or "
                            "infinite values; use an intact model file, or retrain from an earlier checkpoint")
        model.trainable().load_state_dict(state)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError, ZeroDivisionError) as error:
        raise UserError(f"model file {path} is incomplete or inconsistent ({message_line(error, 160, first=True)}): use an intact model file") from None
    network.eval()
    return model


MAX_FEATURES = 4096  # channels per level: far beyond any trained model, short of one that exhausts the memory


def _counts(value: object) -> bool:
    """Whether ``value`` is a count: a positive whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def network_problem(unet_config: UNetConfig, hyper_config: HyperConfig | None) -> str | None:
    """What is wrong with a model's U-Net or hypernetwork shape (empty or zero feature counts, no classes, ...),
    or ``None``: a network of that shape cannot be built."""
    features = unet_config.features
    if not features or not all(_counts(f) and f <= MAX_FEATURES for f in features):
        return f"U-Net features {list(features)} are not one or more counts in 1-{MAX_FEATURES}, one per level"
    for what, value, low in (("input channels", unet_config.in_channels, 1), ("classes", unet_config.num_classes, 2),
                             ("convolutions per level", unet_config.convs_per_level, 1)):
        if not _counts(value) or value < low:
            return f"U-Net {what} {value!r} is not a whole number of {low} or more"
    if hyper_config is not None:
        for what, value, low in (("hidden width", hyper_config.hidden, 1), ("hidden layers", hyper_config.hidden_layers, 0),
                                 ("rank", hyper_config.rank, 1)):
            if not (_counts(value) or value == 0 and not isinstance(value, bool)) or value < low:
                return f"hypernetwork {what} {value!r} is not a whole number of {low} or more"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in (hyper_config.spacing_min, hyper_config.spacing_max)):
            return f"hypernetwork spacing range {hyper_config.spacing_min!r}-{hyper_config.spacing_max!r} is not numbers"
    return None


def metadata_problem(
    unet_config: UNetConfig, hyper_config: HyperConfig | None, method: str, labels: dict[int, str],
    colors: dict[int, tuple[float, ...]], spacing_range: tuple[float, ...], fixed_spacing: tuple[float, ...] | None,
    normalisation: Normalisation,
) -> str | None:
    """What is wrong with a model's labels, colours, spacings or normalisation, or ``None``."""
    num_classes = unet_config.num_classes
    if 0 not in labels:
        return "the labels lack 0, the background"
    if any(not 0 <= value <= 255 for value in labels):
        return f"label values {sorted(labels)} are not all within 0-255"
    if len(labels) != num_classes:
        return f"{len(labels)} labels for a network with {num_classes} classes"
    if any(not isinstance(name, str) or not name.strip() for name in labels.values()):
        return "a label has no name"
    for value, color in colors.items():
        if value not in labels or len(color) != 3 or not all(0 <= float(c) <= 1 for c in color):
            return f"the colour of label {value} is not three values in [0, 1] for a known label"
    ranges = [("spacing range", spacing_range)]
    if hyper_config is not None:
        ranges.append(("hypernetwork spacing range", (hyper_config.spacing_min, hyper_config.spacing_max)))
    for what, (low, high) in ranges:
        if not (0 < low < high < math.inf or (method == "fs" and 0 < low == high < math.inf)):
            return f"{what} {low}-{high} mm is not 0 < MIN < MAX"
    if method == "fs":
        if len(fixed_spacing or ()) != unet_config.dim or not all(0 < s < math.inf for s in fixed_spacing):
            return f"fixed spacing {fixed_spacing} is not {unet_config.dim} positive values in mm"
    if normalisation.modality not in MODALITIES:
        return f"modality {normalisation.modality!r} is not one of {', '.join(MODALITIES)}"
    if normalisation.version not in VERSIONS:
        return (f"normalisation version {normalisation.version!r} is not one of {', '.join(map(str, VERSIONS))} "
                "(a newer HyperSpace Segmentation may read it)")
    if normalisation.modality == "ct":
        values = (normalisation.clip_low, normalisation.clip_high, normalisation.mean, normalisation.std)
        if not all(math.isfinite(v) for v in values) or not (values[0] < values[1] and values[3] > 0):
            return f"CT window {values[0]}-{values[1]} or standard deviation {values[3]} is not valid"
    return None
