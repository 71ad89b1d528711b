"""The embedded models and the rules for choosing models, shared by the command line and the Slicer logic: where the
embedded 3D and 2D models and the sample scan lie, loading a model file (an embedded one that is missing is a
one-line error), what ``hyperspace info`` reports about a model, and the checks an ensemble's models must pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UserError

RESOURCES = Path(__file__).resolve().parent / "resources"  # package data: installed with the engine
DEFAULT_MODEL = RESOURCES / "models" / "brain-tissue-mni152.pt"
DEFAULT_MODEL_2D = RESOURCES / "models" / "white-matter-2d-mni152.pt"  # for --mode 2d and 2D images
SAMPLE_SCAN = RESOURCES / "samples" / "MNI152-T1-1.5mm.nrrd"


def embedded_model(mode: str = "3d") -> Path:
    """The embedded model used for ``mode`` ("3d" or "2d") when no model is given."""
    return DEFAULT_MODEL_2D if mode == "2d" else DEFAULT_MODEL


def load(path: str | os.PathLike | None, default: Path | None = None) -> Any:
    """The model of file ``path``; ``None``: ``default`` (the embedded 3D model when not given), which must exist."""
    from .io.model_file import load_model

    default = DEFAULT_MODEL if default is None else default
    if path is None and not default.exists():
        what = "2D model" if default == DEFAULT_MODEL_2D else "model"
        raise UserError(f"the embedded {what} {default} is missing: reinstall hyperspace-segmentation, or pass --model")
    return load_model(path or default)


def describe(model: Any, path: Path) -> dict:
    """What ``hyperspace info`` reports about ``model``, read from ``path``."""
    counts = model.parameter_counts()
    return {
        "file": str(path), "file_size_mb": round(path.stat().st_size / 2**20, 2), "method": model.method,
        "dimensions": model.dim, "labels": {str(k): v for k, v in sorted(model.labels.items())},
        "spacing_range_mm": list(model.spacing_range),
        "fixed_spacing_mm": list(model.fixed_spacing) if model.fixed_spacing else None,
        "modality": model.normalisation.modality, "unet_features": list(model.unet_config.features),
        "ife": model.unet_config.ife, "ife_ratios": list(model.unet_config.ife_ratios),
        "input_features": model.unet_config.input_features,
        "normalisation_version": model.normalisation.version,
        "unet_parameters": counts["unet"], "hypernetwork_parameters": counts.get("hypernetwork"),
        "training": {k: v for k, v in model.training.items() if k != "config"},
    }


def ensemble_member(path: str, first: Any, first_path: str, load: Callable[..., Any] = load) -> Any:
    """Model ``path`` of an ensemble whose first model is ``first``, read from ``first_path`` (with ``load``); a
    ``UserError`` unless both have the same dimensions and labels (values and names)."""
    model = load(path)
    if model.dim != first.dim:
        raise UserError(f"--model {first_path} is a {first.dim}D model but {path} is a {model.dim}D one: an ensemble's "
                        "models must have the same dimensions and labels")
    if model.labels != first.labels:
        shown = [", ".join(f"{v} {n}" for v, n in sorted(m.labels.items())) for m in (first, model)]
        raise UserError(f"--model {first_path} and {path} have different labels ({shown[0]}; {shown[1]}): an "
                        "ensemble's models must segment the same classes")
    return model


def check_models_differ(paths: Sequence[str], load: Callable[..., Any] = load) -> None:
    """Refuse an ensemble that names one model twice, as one file twice or as two files with the same weights
    (``load`` reads a model): its mean would weigh that model double."""
    import torch

    seen: dict[str, str] = {}
    for path in paths:
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise UserError(f"--model {path} is given twice: an ensemble averages different models; give each model "
                            "once")
        seen[key] = path
    weights = []
    for path in paths:
        state = load(path).trainable().state_dict()  # what a model file stores
        for other, known in weights:
            if state.keys() == known.keys() and all(torch.equal(state[k], known[k]) for k in state):
                raise UserError(f"--model {other} and {path} hold the same weights, so this is the same model twice: "
                                "an ensemble averages different models; give each model once")
        weights.append((path, state))
