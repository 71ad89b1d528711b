"""Test-time augmentation: what ``--tta`` costs and what it changes, with the embedded models.

    pip install --no-deps nilearn
    python benchmarks/tta_bench.py

The MNI152 T1 template at 1 mm, segmented by ``hyperspace segment`` (a fresh process per run) with and without
``--tta`` (every flip combination: 8 predictions in 3D, 4 in 2D): the 3D tissue model at several spacings and the
2D white-matter model slice by slice (coronal); Dice per class inside the held-out band (axial slices 100-125,
which neither model saw in training) on the 1 mm grid, the prediction stage's time and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_model import VALIDATION_BAND, tissue_map  # noqa: E402

RUNS = [  # (name, options, classes scored {label value: name}, reference: tissue map -> labels)
    ("3D tissue, 1.5 mm", ["--spacing", "1.5"], "3d"),
    ("3D tissue, 2 mm", ["--spacing", "2"], "3d"),
    ("3D tissue, 3 mm", ["--spacing", "3"], "3d"),
    ("2D white matter, coronal, 1.5 mm", ["--mode", "2d", "--axis", "1", "--spacing", "1.5"], "2d"),
    ("2D white matter, coronal, 3 mm", ["--mode", "2d", "--axis", "1", "--spacing", "3"], "2d"),
]
CLASSES = {"3d": {1: "CSF", 2: "grey matter", 3: "white matter"}, "2d": {1: "white matter"}}


def run(image: Path, options: list[str], tta: bool) -> tuple[np.ndarray, dict, float]:
    """Labels, the ``--json`` summary and the wall time of one ``hyperspace segment`` process."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "labels.nrrd"
        command = [sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "segment", str(image), "-o", str(output),
                   *options, *(["--tta"] if tta else []), "--device", "cpu", "--json", "--quiet"]
        start = time.perf_counter()
        summary = json.loads(subprocess.run(command, capture_output=True, text=True, encoding="utf-8", check=True).stdout)
        seconds = time.perf_counter() - start
        return sitk.GetArrayFromImage(sitk.ReadImage(str(output))), summary, seconds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    t1, tissue = tissue_map()
    low, high = VALIDATION_BAND
    references = {"3d": sitk.GetArrayFromImage(tissue)[low:high]}
    references["2d"] = (references["3d"] == 3).astype(np.uint8)
    print("| run | TTA | " + "Dice (per class) | predict (s) | wall (s) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "t1.nrrd"
        sitk.WriteImage(t1, str(image))
        for name, options, kind in RUNS:
            for tta in (False, True):
                labels, summary, seconds = run(image, options, tta)
                scores = ", ".join(f"{label_name} {dice(labels[low:high] == value, references[kind] == value):.4f}"
                                   for value, label_name in CLASSES[kind].items())
                predict = sum(s["seconds"] for s in summary["stages"] if s["name"].startswith("predict"))
                print(f"| {name} | {'yes' if tta else 'no'} | {scores} | {predict:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
