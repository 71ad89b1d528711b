"""What the segmentation benchmarks share: the default image and one ``hyperspace segment`` run per process."""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence


def template_t1() -> str:
    """The MNI152 T1 template at 1 mm (197x233x189) from nilearn's package data (pip install --no-deps nilearn)."""
    return str(importlib.resources.files("nilearn") / "datasets" / "data"
               / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def segment_summary(image: str, options: Sequence[str], device: str) -> dict:
    """The ``--json`` summary of ``hyperspace segment IMAGE OPTIONS`` run in a fresh process (its own peak memory)."""
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "segment", image, "-o",
             str(Path(folder) / "seg.nrrd"), *options, "--device", device, "--json", "--quiet"],
            capture_output=True, text=True, encoding="utf-8", check=True,
        )
    return json.loads(result.stdout)
