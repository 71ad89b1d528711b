"""The U-Net factory: the plain U-Net a model uses at one working spacing, as ONNX or TorchScript.

A HyperSpace model's hypernetwork generates the U-Net's weights for the spacing (``HyperSpaceNet.static_unet``, as
``hyperspace segment`` does after rounding the spacing to 0.01 mm), in the plain channels-first layout; FS and AS
models have one U-Net for every spacing, exported as it is. Next to the network file goes a JSON sidecar, named
after the whole file name (``NET.onnx.json``, ``NET.pt.json``, so that both formats of one network can lie side by
side), which tells a program without this package how to prepare the input and read the output: labels, spacing,
array layout, normalisation, size divisor.

ONNX uses PyTorch's ``torch.export``-based exporter (it needs the ``onnx`` and ``onnxscript`` packages), with the
batch and every spatial size dynamic (multiples of the size divisor); IFE's data-dependent channel selection
(sort, top-k) exports too. TorchScript is a trace, checked against the network at other input sizes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk
import torch
from torch import nn

from . import __version__
from .errors import UserError
from .inference import Segmenter, SpacingRequest, parse_spacing
from .inference.plans import SpacingChoice
from .io.images import atomic_output, check_not_an_input, check_writable
from .io.model_file import SegmentationModel
from .networks import HyperSpaceNet, UNetConfig

FORMATS = {".onnx": "onnx", ".pt": "torchscript"}
SIDECAR_FORMAT = "hyperspace-segmentation-network"
SIDECAR_VERSION = 1
ONNX_OPSET = 18  # onnxruntime 1.14 and later run it
ONNX_MISSING = "ONNX export needs the onnx and onnxscript packages: pip install hyperspace-segmentation[export]"
_TRACE_TOLERANCE = 1e-4  # the trace must reproduce the network's logits this closely at other sizes (relative)

_AXES = {
    3: ("N, C, D, H, W", "D = z (S-I), H = y (P-A), W = x (L-R) of the image reoriented to LPS: the array order of "
                         "SimpleITK's GetArrayFromImage(DICOMOrient(image, 'LPS'))"),
    2: ("N, C, H, W", "H = y, W = x of the slice plane, whose x, y are its two LPS axes in L, P, S order (an axial "
                      "slice: y P-A, x L-R); the array order of SimpleITK's GetArrayFromImage of the slice"),
}
_NORMALISATION_STEPS = {
    "mr": [
        "on the image's own grid, before resampling; a 3D model normalises the whole volume, a 2D model each slice "
        "by itself",
        "NaN and infinite voxels become 0",
        "background: the image's minimum if at least half of the voxels on the array's faces (first and last "
        "planes along each axis) equal it, else 0",
        "mask: the voxels that are not background; if it holds fewer than 1% of the voxels, every voxel",
        "subtract the mean of the masked voxels and divide by their standard deviation (population, ddof 0; at "
        "least 1e-6)",
        "set the voxels outside the mask to 0",
    ],
    "ct": [
        "on the image's own grid, before resampling; a 3D model normalises the whole volume, a 2D model each slice "
        "by itself",
        "NaN and infinite voxels become 0",
        "clip to [clip_low, clip_high]",
        "subtract mean and divide by max(std, 1e-6) (the training set's statistics, given here)",
    ],
}


def network_format(path: str | os.PathLike) -> str:
    """``onnx`` or ``torchscript``, from the file name; a ``UserError`` for any other extension."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"{Path(path).name}: unsupported network format; use .onnx (ONNX) or .pt (TorchScript)")
    return fmt


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of network file ``path``: its whole name plus ``.json``."""
    return Path(f"{path}.json")


def require_onnx() -> None:
    """A ``UserError`` unless the packages the ONNX exporter needs are installed."""
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(ONNX_MISSING) from None


def check_export_output(path: str | os.PathLike, overwrite: bool, model_path: str | os.PathLike) -> str:
    """Before any work: the network format of ``path`` (its exporter installed), and ``path`` and its sidecar
    writable (not existing, unless ``overwrite``) and not the model file."""
    fmt = network_format(path)
    for output in (Path(path), sidecar_path(path)):
        check_not_an_input(output, {"model file": model_path})
        check_writable(output, overwrite)
    if fmt == "onnx":
        require_onnx()
    return fmt


def choose_network(model: SegmentationModel, words: Sequence[str] | None,
                   allow_extrapolation: bool = False) -> tuple[SpacingChoice, nn.Module]:
    """The working spacing (x, y, z mm, or a 2D model's slice plane's x, y) that ``--spacing WORDS`` asks for, as
    ``hyperspace segment`` chooses it (out of the trained range: clamped with a note, unless extrapolating; FS
    models: their own when none is given), and the network for it."""
    request = parse_spacing(words)
    if request.mode in ("native", "auto"):
        raise UserError(f"--spacing {request.mode} needs an image: give the working spacing in mm, one value or "
                        f"{model.dim}")
    if request.mode == "model" and model.method != "fs":
        raise UserError(f"give the working spacing the network is for with --spacing (mm, one value or {model.dim})")
    segmenter = Segmenter(model, device="cpu")
    # for an explicit spacing (or an FS model's own) the image only tells the dimension: one voxel will do
    placeholder = sitk.Image([1] * model.dim, sitk.sitkFloat32)
    choice = segmenter.choose_spacing(placeholder, SpacingRequest(request.mode, request.values,
                                                                  allow_extrapolation=allow_extrapolation))
    network = model.network
    if isinstance(network, HyperSpaceNet):  # not Segmenter.network_for: it lays 3D networks out for oneDNN on the CPU
        network = network.static_unet(tuple(reversed(choice.spacing)))  # networks take array-axis order
    return choice, network


def write_network(model: SegmentationModel, model_path: str | os.PathLike, choice: SpacingChoice, network: nn.Module,
                  path: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write ``network``, from ``choose_network``, to ``path`` (.onnx or .pt) and its sidecar, both atomically
    (the network is moved into place first); returns the sidecar."""
    fmt = network_format(path)
    facts = sidecar(model, model_path, choice, Path(path).name, fmt)
    write = write_onnx if fmt == "onnx" else _write_torchscript
    with atomic_output(sidecar_path(path), overwrite) as sidecar_temporary, atomic_output(path, overwrite) as temporary:
        write(network, model.unet_config, temporary)
        sidecar_temporary.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return facts


def sidecar(model: SegmentationModel, model_path: str | os.PathLike, choice: SpacingChoice, name: str,
            fmt: str) -> dict:
    """What a program needs to run the network file ``name`` without this package."""
    config = model.unet_config
    layout, array_axes = _AXES[model.dim]
    values = sorted(model.labels)
    normalisation = model.normalisation
    parameters = normalisation.to_dict() if normalisation.modality == "ct" else {"modality": normalisation.modality}
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "network": {"file": name, "format": fmt, **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {})},
        "labels": {str(v): model.labels[v] for v in values},
        "colors": {str(v): list(c) for v, c in sorted(model.colors.items())},
        "spacing_mm": list(choice.spacing),
        "spacing_axes": "x, y, z" if model.dim == 3 else "x, y (of the slice plane)",
        "spacing_array_order_mm": list(reversed(choice.spacing)),
        "spacing_notes": choice.notes,
        "input": {
            "name": "image", "dtype": "float32", "layout": layout, "channels": config.in_channels,
            "array_axes": array_axes, "size_divisor": config.divisor, "minimum_size": 2 * config.divisor,
            "sizes": "N and each spatial size may vary; each spatial size must be a multiple of size_divisor, at "
                     "least minimum_size",
        },
        "normalisation": {**parameters, "outside_value": normalisation.outside_value,
                          "steps": _NORMALISATION_STEPS[normalisation.modality]},
        "output": {
            "name": "logits", "dtype": "float32", "layout": layout.replace("C", "K"), "classes": len(values),
            "label_values": values,
            "meaning": "logits: a softmax over axis 1 gives the class probabilities; class c is label value "
                       "label_values[c] (the labels' values, sorted)",
        },
        "how_to_run": [
            "reorient the image to LPS (3D models), or take its slices (2D models)",
            "normalise its intensities as 'normalisation' says, on its own grid",
            "resample it linearly to spacing_mm, with Gaussian anti-aliasing where it is down-sampled",
            "pad each spatial size with outside_value to a multiple of size_divisor (at least minimum_size), or cut "
            "it into overlapping windows of such sizes (hyperspace segment weights them with a Gaussian); "
            "outside_value is also what lies beyond the image",
            "run the network, take the softmax over axis 1, drop the padding; the argmax's class c is label "
            "label_values[c] (hyperspace segment resamples the probabilities to the input's grid first)",
        ],
        "model": {
            "file": Path(model_path).name, "sha256": _sha256(model_path), "method": model.method,
            "dimensions": model.dim, "ife": config.ife, "ife_ratios": list(config.ife_ratios),
            "unet_features": list(config.features), "trained_spacing_range_mm": list(model.spacing_range),
            "fixed_spacing_mm": list(model.fixed_spacing) if model.fixed_spacing else None,
        },
        "package": {"name": "hyperspace-segmentation", "version": __version__},
    }


def _example(config: UNetConfig, batch: int, blocks: Sequence[int]) -> torch.Tensor:
    """A random input: ``batch`` items whose spatial sizes are ``blocks`` times the size divisor."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, config.in_channels, *(b * config.divisor for b in blocks))
    return torch.randn(shape, generator=generator)


def write_onnx(network: nn.Module, config: UNetConfig, path: Path,
               instead: str = "export it as TorchScript (.pt) instead") -> None:
    """``network`` as ONNX at ``path``, batch and spatial sizes dynamic; if the exporter fails, a ``UserError`` that
    says what to do ``instead``."""
    dim = torch.export.Dim
    # a batch of two: the exporter specialises a size seen as 1; spatial sizes are multiples of the divisor
    sizes = {0: dim("batch", min=1)}
    sizes.update({2 + a: config.divisor * dim(f"blocks{a}", min=2) for a in range(config.dim)})
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # no notes on operators of other packages (torchvision) on the console
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(network, (_example(config, 2, (2,) * config.dim),), dynamo=True,
                                        input_names=["image"], output_names=["logits"], dynamic_shapes=(sizes,),
                                        opset_version=ONNX_OPSET, verbose=False)
        program.save(path, external_data=False)
    except ImportError:
        raise UserError(ONNX_MISSING) from None
    except Exception as error:  # the exporter raises many types
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise UserError(f"ONNX export of this network failed ({type(error).__name__}: {first}): {instead}") from None
    finally:
        exporter_log.setLevel(level)


def _write_torchscript(network: nn.Module, config: UNetConfig, path: Path) -> None:
    """``network`` traced to TorchScript at ``path``; the trace is checked at another batch and other sizes."""
    example = _example(config, 2, (2,) * config.dim)
    other = _example(config, 1, range(3, 3 + config.dim))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that do not change the graph's arithmetic
        traced = torch.jit.trace(network, example, check_trace=False)
        expected, got = network(other), traced(other)
    if not torch.allclose(got, expected, rtol=_TRACE_TOLERANCE, atol=_TRACE_TOLERANCE * float(expected.abs().max())):
        raise UserError("the TorchScript trace of this network does not reproduce it at other input sizes: export "
                        "it as ONNX (.onnx) instead")
    torch.jit.save(traced, str(path))


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
