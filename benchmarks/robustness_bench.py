"""Robustness a user will meet: a crop of a scan instead of the whole scan, and intensity changes.

    pip install --no-deps nilearn
    python benchmarks/robustness_bench.py fov
    python benchmarks/robustness_bench.py intensity
    python benchmarks/robustness_bench.py patches

``fov``: crops (cubes of several edges, at several positions inside the brain) of the bundled sample (the MNI152
T1 template at 1.5 mm) segmented by the engine (``Segmenter``, the pipeline of ``hyperspace segment``) at the
native spacing and at 3 mm, against the same region cut out of the whole-scan result: voxel agreement, Dice per
class (CSF, grey matter, white matter), and Dice of both against the template's tissue map (nearest-neighbour on
the sample's grid). Variants that separate the suspects:

- ``engine``: as ``hyperspace segment`` runs today.
- ``scan statistics``: the crop z-scored with the whole scan's mean and standard deviation (suspect a: the
  normalisation over the crop).
- ``window >= trained patch``: the network's window at least the training patch (64 voxels) on every axis, the
  crop padded with the outside intensity as training pads patches beyond an image (suspect b: instance
  normalisation over a field of view without any background, which training never shows).
- interior agreement (voxels at least a quarter of the edge from the crop's faces) against all voxels: suspect c,
  border effects.

Then the whole scan at 1.5, 3 and 3.5 mm with the engine's windows and with windows at least the training patch
(the rule proposed for the engine): what it changes where the working volume is smaller than a training patch.

``intensity``: the sample with a smooth multiplicative bias field, Gaussian noise (relative to the brain's
intensity standard deviation) and linear rescalings ``a * x + b`` (``b`` applied to every voxel, background
included, as a scanner offset would be), and a Gaussian blur (sigma one voxel, as resampling with interpolation
smooths) either kept inside the brain or with the faint halo it spreads into the background, segmented at 1.5
mm: Dice per class against the clean result.

``normalisation``: the voxels the MR z-score takes its statistics from, with those changes and against Otsu's
foreground.

``patches``: what the embedded model saw in training: the share of voxels that are not brain (background, or
beyond the training slabs of scripts/train_default_model.py) in patches drawn as training draws them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HyperSpaceSegmentation"))
sys.path.insert(0, str(ROOT / "scripts"))

from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN  # noqa: E402
from HyperSpaceSegmentationLib.geometry import canonical  # noqa: E402
from HyperSpaceSegmentationLib.inference import Segmenter  # noqa: E402
from HyperSpaceSegmentationLib.io.model_file import SegmentationModel, load_model  # noqa: E402
from HyperSpaceSegmentationLib.preprocessing import Normalisation, background_value  # noqa: E402
from HyperSpaceSegmentationLib.progress import Reporter  # noqa: E402
from HyperSpaceSegmentationLib.training.sampling import LoadedCase, PatchSampler, SamplingConfig  # noqa: E402
from train_default_model import MARGIN, VALIDATION_BAND, tissue_map  # noqa: E402

CLASSES = {1: "CSF", 2: "GM", 3: "WM"}
EDGES = (32, 48, 64, 96)  # crop edges, voxels of the sample (1.5 mm)
OFFSETS = ((0, 0, 0), (-12, 10, -15), (12, -12, 15))  # crop centres: the brain's centre and two off it (voxels, k j i)
SPACINGS = (1.5, 3.0)


class ScanStatistics(Normalisation):
    """MR z-score with given statistics (``mean``, ``std``: the whole scan's) instead of the array's own."""

    def apply(self, array: np.ndarray) -> np.ndarray:
        scaled = Normalisation("ct", -np.inf, np.inf, self.mean, self.std).apply(array)
        scaled[array == 0] = 0.0
        return scaled


def before_the_window_rule(model: SegmentationModel) -> SegmentationModel:
    """``model`` without its training patch size, so that the engine sizes windows to the input as it did before
    windows were kept at least a training patch (``Segmenter.windows``)."""
    return dataclasses.replace(model, training={})


def segment(segmenter: Segmenter, image: sitk.Image, spacing: float) -> np.ndarray:
    return sitk.GetArrayFromImage(segmenter.segment(image, (spacing,) * 3, Reporter(3, quiet=True)))


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return float(2 * np.logical_and(x, y).sum() / max(x.sum() + y.sum(), 1))


def dices(a: np.ndarray, b: np.ndarray) -> str:
    return " / ".join(f"{dice(a, b, v):.3f}" for v in CLASSES)


def crops(array: np.ndarray, edge: int) -> list[tuple[int, ...]]:
    """Corners (k, j, i) of cubes of ``edge`` voxels around the brain's centre and off it, inside the image."""
    centre = np.round(np.mean(np.nonzero(array), axis=1)).astype(int)
    corners = []
    for offset in OFFSETS:
        corner = np.clip(centre + offset - edge // 2, 0, np.array(array.shape) - edge)
        corners.append(tuple(int(c) for c in corner))
    return corners


def field_of_view() -> None:
    scan = sitk.ReadImage(str(SAMPLE_SCAN))
    array = sitk.GetArrayFromImage(scan)
    _, tissue = tissue_map()
    reference = sitk.GetArrayFromImage(sitk.Resample(tissue, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    model = load_model(DEFAULT_MODEL)
    inside = array[array != 0].astype(np.float64)
    statistics = ScanStatistics("mr", mean=float(inside.mean()), std=float(inside.std()))
    variants = {
        "window = crop (before)": Segmenter(before_the_window_rule(model), device="cpu"),
        "scan statistics": Segmenter(dataclasses.replace(before_the_window_rule(model), normalisation=statistics),
                                     device="cpu"),
        "engine: window >= trained patch": Segmenter(model, device="cpu"),
    }
    print("| spacing (mm) | crop (voxels) | variant | agreement | interior agreement | Dice vs whole (CSF / GM / WM) "
          "| crop vs tissue map | whole cut vs tissue map |\n|---|---|---|---|---|---|---|---|")
    for spacing in SPACINGS:
        whole = segment(variants["engine: window >= trained patch"], scan, spacing)
        for edge in EDGES:
            rows: dict[str, list[tuple]] = {name: [] for name in variants}
            for corner in crops(array, edge):
                region = tuple(slice(c, c + edge) for c in corner)
                crop = sitk.RegionOfInterest(scan, [edge] * 3, list(corner[::-1]))
                margin = edge // 4
                interior = tuple(slice(margin, edge - margin) for _ in range(3))
                for name, segmenter in variants.items():
                    labels = segment(segmenter, crop, spacing)
                    cut = whole[region]
                    rows[name].append((labels, cut, reference[region], interior))
            for name, results in rows.items():
                labels = np.stack([r[0] for r in results])
                cut = np.stack([r[1] for r in results])
                truth = np.stack([r[2] for r in results])
                inner = np.mean([(r[0][r[3]] == r[1][r[3]]).mean() for r in results])
                print(f"| {spacing:g} | {edge}^3 x {len(results)} | {name} | {(labels == cut).mean():.3f} | "
                      f"{inner:.3f} | {dices(labels, cut)} | {dices(labels, truth)} | {dices(cut, truth)} |",
                      flush=True)


def whole_scans() -> None:
    """The window rule on whole scans: where the working volume is smaller than a training patch."""
    scan = sitk.ReadImage(str(SAMPLE_SCAN))
    _, tissue = tissue_map()
    reference = sitk.GetArrayFromImage(sitk.Resample(tissue, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    model = load_model(DEFAULT_MODEL)
    engine, trained = Segmenter(before_the_window_rule(model), device="cpu"), Segmenter(model, device="cpu")
    print("| spacing (mm) | window (engine) | window (>= trained patch) | agreement in the brain | engine vs tissue map "
          "| >= trained patch vs tissue map |\n|---|---|---|---|---|---|")
    for spacing in (*SPACINGS, 3.5):
        before, after = segment(engine, scan, spacing), segment(trained, scan, spacing)
        windows = ["x".join(map(str, s.windows(scan, (spacing,) * 3).patch)) for s in (engine, trained)]
        print(f"| {spacing:g} | {windows[0]} | {windows[1]} | {(before == after)[reference > 0].mean():.3f} | "
              f"{dices(before, reference)} | {dices(after, reference)} |", flush=True)


def bias_field(shape: Sequence[int], low: float, high: float) -> np.ndarray:
    """A smooth multiplicative field from ``low`` to ``high``: linear along a diagonal, plus a gentle curvature."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ramp = (axes[0] + axes[1] + axes[2]) / 3 + 0.3 * (axes[1] ** 2 - 1 / 3)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    return (low + (high - low) * ramp).astype(np.float32)


BLURS = [("blur 1.5 mm, zero outside the brain", False), ("blur 1.5 mm, with the halo it spreads", True)]


def blurred(array: np.ndarray, brain: np.ndarray, halo: bool) -> np.ndarray:
    """A Gaussian blur of one voxel, as resampling with interpolation smooths: kept in the brain, or with the halo."""
    smooth = ndimage.gaussian_filter(array, 1.0)
    return smooth if halo else brain * smooth


def intensity() -> None:
    scan = sitk.ReadImage(str(SAMPLE_SCAN))
    array = sitk.GetArrayFromImage(scan).astype(np.float32)
    brain = array != 0
    std = float(array[brain].std())
    rng = np.random.default_rng(0)
    changes: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        ("bias field 0.9-1.1", lambda a: a * bias_field(a.shape, 0.9, 1.1)),
        ("bias field 0.8-1.2", lambda a: a * bias_field(a.shape, 0.8, 1.2)),
        ("bias field 0.7-1.3", lambda a: a * bias_field(a.shape, 0.7, 1.3)),
    ]
    for level in (0.05, 0.1, 0.2, 0.4):
        changes.append((f"noise {level:g} std, in the brain", lambda a, s=level: a + brain * rng.normal(0, s * std, a.shape)))
    changes.append(("noise 0.1 std, everywhere", lambda a: a + rng.normal(0, 0.1 * std, a.shape)))
    for a_, b_ in ((0.5, 0), (3, 0), (1, 50), (1, -50), (2, 100)):
        changes.append((f"{a_:g} x + {b_:g}", lambda a, s=a_, o=b_: s * a + o))
    changes += [(name, lambda a, h=halo: blurred(a, brain, h)) for name, halo in BLURS]
    segmenter = Segmenter(load_model(DEFAULT_MODEL), device="cpu")
    clean = segment(segmenter, scan, 1.5)
    print("| change | Dice vs clean (CSF / GM / WM) | agreement in the brain |\n|---|---|---|")
    for name, change in changes:
        changed = sitk.GetImageFromArray(change(array).astype(np.float32))
        changed.CopyInformation(scan)
        labels = segment(segmenter, changed, 1.5)
        print(f"| {name} | {dices(labels, clean)} | {(labels == clean)[brain].mean():.3f} |", flush=True)


def training_patches(count: int = 200) -> None:
    """Non-brain share of ``count`` patches drawn from the default model's training slabs with its settings."""
    t1, tissue = tissue_map()
    low, high = VALIDATION_BAND
    config = load_model(DEFAULT_MODEL).training["config"]
    cases = []
    for start, stop in ((0, low - MARGIN), (high + MARGIN, t1.GetSize()[2])):
        labels = sitk.GetArrayFromImage(canonical(tissue[:, :, start:stop]))
        cases.append(LoadedCase(canonical(t1[:, :, start:stop]), labels, Normalisation("mr"), 3))
    sampler = PatchSampler(cases, SamplingConfig((config["patch"],) * 3, config["spacing_min"], config["spacing_max"]))
    rng = np.random.default_rng(1)
    shares = np.array([1 - np.isin(sampler.sample(rng)[1], list(CLASSES)).mean() for _ in range(count)])
    print(f"{count} patches of {config['patch']}^3: voxels not brain: median {np.median(shares):.2f}, least "
          f"{shares.min():.3f}; patches with under 10% of them: {(shares < 0.1).mean():.3f}")


def normalisation_statistics() -> None:
    """The voxels the MR z-score takes its mean and std over, against Otsu's foreground, on the sample as is,
    blurred with and without the halo, and with noise everywhere."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_SCAN))).astype(np.float32)
    brain = array != 0
    noise = np.random.default_rng(0).normal(0, 0.1 * float(array[brain].std()), array.shape)
    print("| scan | z-score: voxels, mean, std | Otsu's foreground: voxels, mean, std |\n|---|---|---|")
    scans = [("unchanged", array), *[(name, blurred(array, brain, halo)) for name, halo in BLURS],
             ("noise 0.1 std, everywhere", array + noise)]
    for name, changed in scans:
        zscored = changed[changed != background_value(changed)]
        otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.GetImageFromArray(changed), 0, 1)).astype(bool)
        print(f"| {name} | {zscored.size:,}, {zscored.mean():.1f}, {zscored.std():.1f} | "
              f"{otsu.sum():,}, {changed[otsu].mean():.1f}, {changed[otsu].std():.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("fov", "intensity", "normalisation", "patches"))
    part = parser.parse_args().part
    if part == "fov":
        field_of_view()
        whole_scans()
    elif part == "intensity":
        intensity()
    elif part == "normalisation":
        normalisation_statistics()
    else:
        training_patches()


if __name__ == "__main__":
    main()
