"""Time and values of HyperSpace's metrics against DeepMind's surface-distance library on real-sized volumes.

Inputs: the MNI152 tissue map (197x233x189 voxels, labels 1-3) as reference, and a realistic prediction
(the argmax of the GM/WM probability maps after Gaussian smoothing), on an isotropic grid (1 mm) and on an
anisotropic one (the same arrays declared 0.8 x 0.8 x 2.5 mm). Set up a benchmark-only environment:

    python -m venv /tmp/bench-venv && . /tmp/bench-venv/bin/activate
    pip install numpy scipy SimpleITK scikit-image slicerio surface-distance
    pip install --no-deps nilearn
    python benchmarks/metrics_bench.py
"""

from __future__ import annotations

import importlib.resources
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HyperSpaceSegmentation"))

from HyperSpaceSegmentationLib.evaluation.metrics import METRICS, Comparison, compute  # noqa: E402

GRIDS = {"isotropic 1 mm": (1.0, 1.0, 1.0), "anisotropic 2.5 x 0.8 x 0.8 mm": (2.5, 0.8, 0.8)}
COMPARED = ("dice", "hausdorff", "haus95", "avg_surf", "surf_dice")


def template(name: str) -> np.ndarray:
    path = importlib.resources.files("nilearn") / "datasets" / "data" / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)


def tissue(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return np.where(brain, np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0) + 1, 0).astype(np.uint8)


def inputs() -> tuple[np.ndarray, np.ndarray]:
    t1, gm, wm = template("t1"), template("gm") / 255, template("wm") / 255
    brain = t1 > 0
    reference = tissue(gm, wm, brain)
    prediction = tissue(ndimage.gaussian_filter(gm, 1.5), ndimage.gaussian_filter(wm, 1.5), ndimage.binary_erosion(brain, iterations=1))
    return reference, prediction


def ours(reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...]) -> tuple[dict, float]:
    start = time.perf_counter()
    values = {}
    for label in (1, 2, 3):
        comparison = Comparison(reference == label, prediction == label, spacing, tolerance=1.0)
        values[label] = {name: compute(METRICS[name], comparison) for name in METRICS}
    return values, time.perf_counter() - start


def deepmind(reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...]) -> tuple[dict, float]:
    import surface_distance as sd

    start = time.perf_counter()
    values = {}
    for label in (1, 2, 3):
        gt, pred = reference == label, prediction == label
        d = sd.compute_surface_distances(gt, pred, spacing)
        areas = d["surfel_areas_gt"].sum() + d["surfel_areas_pred"].sum()
        values[label] = {
            "dice": sd.compute_dice_coefficient(gt, pred),
            "hausdorff": sd.compute_robust_hausdorff(d, 100),
            "haus95": sd.compute_robust_hausdorff(d, 95),
            "avg_surf": float((d["distances_gt_to_pred"] @ d["surfel_areas_gt"]
                               + d["distances_pred_to_gt"] @ d["surfel_areas_pred"]) / areas),
            "surf_dice": sd.compute_surface_dice_at_tolerance(d, 1.0),
        }
    return values, time.perf_counter() - start


def main() -> None:
    reference, prediction = inputs()
    print(f"volume {reference.shape[::-1]} (x, y, z), labels 1 CSF, 2 GM, 3 WM; "
          f"times for all three labels, best of 3")
    for grid, spacing in GRIDS.items():
        ours_values, ours_time = min((ours(reference, prediction, spacing) for _ in range(3)), key=lambda r: r[1])
        peer_values, peer_time = min((deepmind(reference, prediction, spacing) for _ in range(3)), key=lambda r: r[1])
        print(f"\n## {grid}\n")
        print(f"time: HyperSpace {ours_time:.2f} s for {len(METRICS)} metrics, "
              f"surface-distance {peer_time:.2f} s for {len(COMPARED)} metrics")
        print("| label | metric | HyperSpace | surface-distance | difference |")
        print("|---|---|---|---|---|")
        for label in (1, 2, 3):
            for name in COMPARED:
                a, b = ours_values[label][name], peer_values[label][name]
                print(f"| {label} | {name} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")


if __name__ == "__main__":
    main()
