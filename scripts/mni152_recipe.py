"""What the two default-model scripts share: the MNI ICBM152 2009a template and its tissue map, the held-out band
of axial slices, the recipe's options, the dataset JSON, and the model card's closing sections with the licence
notice of the template. Importing it makes the engine importable from the repository."""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HyperSpaceSegmentation"))

from HyperSpaceSegmentationLib.networks.unet import INPUT_FEATURES  # noqa: E402

VALIDATION_BAND = (100, 126)  # axial slices (k) held out, 1 mm each
MARGIN = 6  # slices dropped on each side of the band so no training patch centre sits next to it
NOTICE = """Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software and its documentation for any
purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies. The
authors and McGill University make no representations about the suitability of this software for any purpose.
It is provided "as is" without express or implied warranty. The authors are not responsible for any data loss,
equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse of this
software package."""


def template(name: str) -> sitk.Image:
    """The template's ``name`` image (t1, gm, wm) as nilearn ships it."""
    path = importlib.resources.files("nilearn") / "datasets" / "data" / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    return sitk.ReadImage(str(path))


def tissue_map() -> tuple[sitk.Image, sitk.Image]:
    """The T1 template and its 4-class tissue map on the template grid."""
    t1 = template("t1")
    gm = sitk.GetArrayFromImage(template("gm")).astype(np.float32) / 255
    wm = sitk.GetArrayFromImage(template("wm")).astype(np.float32) / 255
    brain = sitk.GetArrayFromImage(t1) > 0
    classes = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0).astype(np.uint8) + 1
    labels = sitk.GetImageFromArray(np.where(brain, classes, 0).astype(np.uint8))
    labels.CopyInformation(t1)
    return t1, labels


def add_recipe_options(parser: argparse.ArgumentParser, synthetic_help: str) -> None:
    """The options both recipes take: the synthetic share (``synthetic_help`` says of what), the starting weights,
    the learning rate and what the network sees."""
    parser.add_argument("--synthetic", type=float, default=0.6, help=synthetic_help)
    parser.add_argument("--init", default=None, help="start from this model file's weights")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--input", choices=INPUT_FEATURES, default="intensity",
                        help="what the network sees: the intensities or their MIND descriptors")


def write_dataset(work: Path, spec: dict, synthetic: float) -> Path:
    """The dataset JSON ``spec`` (with the share ``synthetic`` of synthesised samples, if any) as
    ``work/dataset.json``; returns its path."""
    if synthetic:
        spec["synthetic"] = {"fraction": synthetic}
    path = work / "dataset.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def recipe_notes(training: dict, what: str) -> str:
    """The model card's words on the starting weights and the synthetic share of ``what`` (samples, slices)."""
    init = training.get("config", {}).get("init")
    started = f" It started from the weights of {Path(init).name}." if init else ""
    share = training.get("synthetic_fraction")
    if not share:
        return (started + f" Real template {what} only.").strip()
    return (started + f" {share:.0%} of the {what} are synthesised from the tissue map (`\"synthetic\"` in the dataset "
                      "JSON: a random contrast per label or the template's own intensities, a head of random layers "
                      "around the brain - skull, diploe, scalp, fat, muscle, eyes, neck, air - or a stripped brain with "
                      "or without a halo, bias field, gamma, noise, cut fields of view; docs/training.md).").strip()


def card_ending(command: str) -> str:
    """The model card's last sections: the command that reproduces the model, and the template's licence notice."""
    return f"""**Reproduce**:

```
{command}
```

**Licence of the training data** (MNI ICBM152; keep this notice with the model and any file derived from it):

{NOTICE}
"""
