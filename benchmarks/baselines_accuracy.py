"""HyperSpace against FS, FSNR and AS across spacings: the paper's Table 2 and Fig. 2 on the MNI152 template.

    pip install --no-deps nilearn matplotlib
    python benchmarks/baselines_train.py --work /tmp/hyperspace-baselines --iterations 900
    python benchmarks/baselines_accuracy.py --work /tmp/hyperspace-baselines --samples 8 \
        --plot docs/figures/baselines-dice.png

Test scans: the template around the held-out axial band of ``scripts/train_default_model.py`` (slices 60-165 at
1 mm, the band 100-125 in the middle) simulated at other spacings as an acquisition would give them: Gaussian
anti-aliasing and linear resampling onto a grid over the same field of view (the engine's
``geometry.resample_to_spacing``), then skull-stripped at that spacing (zero outside the brain mask of the
reference, as a scan stripped after acquisition is; without it, the faint halo that smoothing spreads around the
brain joins the z-score of the MR normalisation, see docs/BENCHMARKS.md); the reference is the tissue map resampled onto that grid with a label-wise
linear interpolator (SimpleITK's ``sitkLabelLinear``). Dice per tissue class is scored inside the held-out band
only, at the test scan's spacing (the paper's "working resolution") and after bringing the result back onto the
1 mm grid (``sitkLabelLinear`` again) against the original tissue map.

Methods, each model from ``baselines_train.py`` (same architecture, data, steps and seed):

- HyperSpace: the U-Net generated for the scan's own spacing, also outside the trained 0.8-3.5 mm;
- HyperSpace (nearest): outside the trained range, the scan resampled to the nearest trained spacing (the
  command line's default, the paper's dotted lines); identical to HyperSpace inside the range;
- FS: resampled to 1 mm, segmented, brought back; FSNR: the FS network run on the scan at its own spacing;
- AS: the U-Net trained on random spacings, run at the scan's own spacing; AS (nearest) as for HyperSpace.

Spacing intervals by Monte Carlo (``--samples`` scans each, fixed seed, uniform per axis): ``wide`` [0.8, 3.5]^3
(the trained range), ``narrow`` [0.9, 1.1]^3 (around the data's median of 1 mm), ``thick`` 1 x 1 x [3, 5] (thick
axial slices, partly beyond the range); then the isotropic sweep of the plot, 0.8-5 mm. Prints Markdown tables
(mean (std) over the scans of the mean Dice of CSF, grey and white matter; per class; seconds per scan) and
writes the plot. Run it on a quiet machine: the times are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HyperSpaceSegmentation"))
sys.path.insert(0, str(ROOT / "scripts"))

from HyperSpaceSegmentationLib.evaluation.metrics import METRICS, Comparison, compute  # noqa: E402
from HyperSpaceSegmentationLib.geometry import resample_to_spacing, working_grid  # noqa: E402
from HyperSpaceSegmentationLib.inference import Segmenter  # noqa: E402
from HyperSpaceSegmentationLib.io.model_file import load_model  # noqa: E402
from HyperSpaceSegmentationLib.progress import Reporter  # noqa: E402
from train_default_model import LABELS, VALIDATION_BAND, tissue_map  # noqa: E402

CROP = (60, 166)  # axial slices of the test scans: the held-out band with 40 slices of context on each side
TRAINED = (0.8, 3.5)
FS_SPACING = 1.0
INTERVALS = {
    "wide [0.8, 3.5]^3": lambda rng: tuple(rng.uniform(0.8, 3.5, 3)),
    "narrow [0.9, 1.1]^3": lambda rng: tuple(rng.uniform(0.9, 1.1, 3)),
    "thick 1 x 1 x [3, 5]": lambda rng: (1.0, 1.0, float(rng.uniform(3.0, 5.0))),
}
SWEEP = [0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
METHODS = ["HyperSpace", "HyperSpace (nearest)", "FS", "FSNR", "AS", "AS (nearest)"]
CLASSES = [int(value) for value in LABELS if value != "0"]


class TestScans:
    """The cropped template and its tissue map, simulated at any spacing, with the band's voxels on each grid."""

    def __init__(self) -> None:
        t1, labels = tissue_map()
        low, high = CROP
        self.image, self.labels = t1[:, :, low:high], labels[:, :, low:high]
        self.band = (VALIDATION_BAND[0] - low, VALIDATION_BAND[1] - low)  # axial indices on the 1 mm crop

    def at(self, spacing: tuple[float, ...]) -> tuple[sitk.Image, sitk.Image]:
        """The scan and its reference on the grid of the crop's field of view at ``spacing`` (x, y, z mm)."""
        reference = sitk.Resample(self.labels, working_grid(self.image, spacing), sitk.Transform(), sitk.sitkLabelLinear, 0)
        scan = resample_to_spacing(self.image, spacing)
        return sitk.Mask(scan, sitk.Cast(reference > 0, sitk.sitkUInt8)), reference  # skull-stripped at its spacing

    def band_slices(self, grid: sitk.Image) -> slice:
        """The axial slices of ``grid`` whose centres lie inside the held-out band of the 1 mm crop."""
        k = np.arange(grid.GetSize()[2])
        centres = [self.image.TransformPhysicalPointToContinuousIndex(grid.TransformContinuousIndexToPhysicalPoint((0, 0, float(i))))[2]
                   for i in k]
        inside = k[(np.array(centres) >= self.band[0] - 0.5) & (np.array(centres) < self.band[1] - 0.5)]
        return slice(int(inside[0]), int(inside[-1]) + 1)

    def on_original_grid(self, result: sitk.Image) -> sitk.Image:
        return sitk.Resample(result, self.image, sitk.Transform(), sitk.sitkLabelLinear, 0)


def dice_per_class(reference: sitk.Image, result: sitk.Image, band: slice) -> dict[str, float]:
    truth, predicted = sitk.GetArrayViewFromImage(reference)[band], sitk.GetArrayViewFromImage(result)[band]
    spacing = tuple(reversed(reference.GetSpacing()))
    return {str(value): compute(METRICS["dice"], Comparison(truth == value, predicted == value, spacing))
            for value in CLASSES}


def working_spacing(method: str, spacing: tuple[float, ...]) -> tuple[float, ...]:
    if method == "FS":
        return (FS_SPACING,) * 3
    if method.endswith("(nearest)"):
        return tuple(min(max(s, TRAINED[0]), TRAINED[1]) for s in spacing)
    return spacing


def score(scans: TestScans, segmenters: dict[str, Segmenter], spacing: tuple[float, ...]) -> list[dict]:
    """One row per method for the test scan at ``spacing``: Dice per class at working and original resolution."""
    scan, reference = scans.at(spacing)
    native = scan.GetSpacing()  # the grid covers the field of view in whole voxels: close to ``spacing``
    band = scans.band_slices(scan)
    rows = []
    for method in METHODS:
        base = method.split(" ")[0]
        if base != method and working_spacing(method, native) == native:  # in range: the same run as its base
            rows.append(dict(next(r for r in rows if r["method"] == base), method=method))
            continue
        segmenter = segmenters[base.replace("FSNR", "FS")]
        start = time.perf_counter()
        result = segmenter.segment(scan, working_spacing(method, native), Reporter(3, quiet=True))
        seconds = time.perf_counter() - start
        rows.append({"method": method, "spacing": [round(s, 3) for s in spacing], "seconds": round(seconds, 2),
                     "working": dice_per_class(reference, result, band),
                     "original": dice_per_class(scans.labels, scans.on_original_grid(result), slice(*scans.band))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mean_dice(row: dict, where: str) -> float:
    return statistics.fmean(row[where].values())


def summary(rows: list[dict], where: str, value=None) -> str:
    values = [mean_dice(r, where) if value is None else r[where][str(value)] for r in rows]
    return f"{statistics.fmean(values):.3f} ({statistics.pstdev(values):.3f})"


def tables(results: dict[str, list[dict]]) -> str:
    lines = []
    for where, title in (("working", "at the test scan's spacing"), ("original", "on the original 1 mm grid")):
        lines += [f"\nMean Dice of the three tissue classes, {title}: mean (std) over the scans\n",
                  "| interval | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
        for interval, rows in results.items():
            lines.append(f"| {interval} | " + " | ".join(
                summary([r for r in rows if r["method"] == m], where) for m in METHODS) + " |")
    lines += ["\nDice per class on the original grid, mean (std) over all Monte Carlo scans\n",
              "| class | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    every = [r for rows in results.values() for r in rows]
    for value in CLASSES:
        lines.append(f"| {LABELS[str(value)]} | " + " | ".join(
            summary([r for r in every if r["method"] == m], "original", value) for m in METHODS) + " |")
    lines += ["\nSeconds per scan (segmentation only, the scan in memory), mean over the scans\n",
              "| interval | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for interval, rows in results.items():
        lines.append(f"| {interval} | " + " | ".join(
            f"{statistics.fmean(r['seconds'] for r in rows if r['method'] == m):.1f}" for m in METHODS) + " |")
    return "\n".join(lines)


def sweep_table(sweep: list[dict]) -> str:
    lines = ["\nIsotropic sweep: mean Dice at the scan's spacing / on the 1 mm grid (seconds), one scan per spacing\n",
             "| spacing (mm) | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for spacing in sorted({r["spacing"][0] for r in sweep}):
        rows = {r["method"]: r for r in sweep if r["spacing"][0] == spacing}
        lines.append(f"| {spacing:g} | " + " | ".join(
            f"{mean_dice(rows[m], 'working'):.3f} / {mean_dice(rows[m], 'original'):.3f} ({rows[m]['seconds']:.1f})"
            for m in METHODS) + " |")
    return "\n".join(lines)


def plot(sweep: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"HyperSpace": ("C0", "-"), "HyperSpace (nearest)": ("C0", ":"), "FS": ("C2", "-"),
              "FSNR": ("C3", "-"), "AS": ("C1", "-"), "AS (nearest)": ("C1", ":")}
    for axis, where, title in ((axes[0], "working", "at the test scan's spacing"),
                               (axes[1], "original", "on the original 1 mm grid")):
        axis.axvspan(*TRAINED, color="tab:blue", alpha=0.08, label="trained range (HyperSpace, AS)")
        axis.axvspan(TRAINED[1], max(r["spacing"][0] for r in sweep), color="tab:red", alpha=0.06, label="beyond the trained range")
        axis.axvline(FS_SPACING, color="purple", linewidth=1, label="FS / FSNR spacing")
        for method, (color, line) in styles.items():
            rows = [r for r in sweep if r["method"] == method]
            axis.plot([r["spacing"][0] for r in rows], [mean_dice(r, where) for r in rows], color=color,
                      linestyle=line, marker="o", markersize=3, label=method)
        axis.set_title(f"Dice {title}")
        axis.set_xlabel("isotropic spacing of the test scan (mm)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice, CSF / grey / white matter")
    axes[1].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hyperspace-baselines"))
    parser.add_argument("--samples", type=int, default=8, help="Monte Carlo scans per spacing interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of Dice against the isotropic spacing")
    parser.add_argument("--sweep", type=float, nargs="+", default=SWEEP, help="isotropic spacings of the plot")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    parser.add_argument("--from-json", type=Path, default=None, help="tables and plot from the rows of an earlier --json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        results, sweep = saved["intervals"], saved["sweep"]
    else:
        segmenters = {name: Segmenter(load_model(args.work / name.lower() / "model.pt"), device="cpu")
                      for name in ("HyperSpace", "FS", "AS")}
        scans = TestScans()
        rng = np.random.default_rng(args.seed)
        results = {interval: [row for _ in range(args.samples) for row in score(scans, segmenters, draw(rng))]
                   for interval, draw in INTERVALS.items()}
        sweep = [row for s in args.sweep for row in score(scans, segmenters, (s, s, s))]
    if args.json:
        args.json.write_text(json.dumps({"intervals": results, "sweep": sweep}, indent=1), encoding="utf-8")
    print(tables(results))
    print(sweep_table(sweep))
    if args.plot:
        plot(sweep, args.plot)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
