"""Cost against the working spacing (the paper's Fig. 2, bottom right): time, peak memory and the memory-time area
of ``hyperspace segment`` by stage, the hypernetwork's share and its per-spacing cache, and the same network run
through MONAI's ``sliding_window_inference``.

    pip install --no-deps nilearn matplotlib
    pip install --no-deps monai    # benchmark only, for the MONAI comparison (skipped without it)
    python benchmarks/spacing_cost.py [--device cpu|cuda] [--precision float32|float16|bfloat16] \
        [--spacings 0.8 1 1.5 2 2.5 3 3.5] [--monai-spacings 1 2 3] [--plot docs/figures/spacing-cost.png]

1. Each spacing runs ``hyperspace segment --json`` in a fresh process (so its peak memory is its own) on the
   MNI152 T1 template at 1 mm (197x233x189) with the embedded model: seconds, peak resident memory (and peak GPU
   memory on CUDA) and memory-time area per stage, and the process's wall time with start-up and imports.
2. In this process: the hypernetwork's forward pass and the plain U-Net it fills (``static_unet``), timed per
   spacing; the prediction stage minus it is the network's own time. The cache: a segmenter warmed at another
   spacing segments at each spacing three times (``cache_effect``); the last finds the generated U-Net in its
   cache, the one before generates it again with the volume's shapes already seen by torch.
3. MONAI: the same generated U-Net on the same normalised working volume, windows of ``--window`` voxels, overlap
   0.5, Gaussian weighting (sigma = window / 8) in both; time of each and agreement of their outputs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import SimpleITK as sitk
import torch

from segment_runs import segment_summary, template_t1

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HyperSpaceSegmentation"))

from HyperSpaceSegmentationLib.geometry import canonical, resample_to_spacing, voxels_at  # noqa: E402
from HyperSpaceSegmentationLib.inference import Segmenter  # noqa: E402
from HyperSpaceSegmentationLib.inference.sliding_window import predict_probabilities  # noqa: E402
from HyperSpaceSegmentationLib.io.model_file import load_model  # noqa: E402
from HyperSpaceSegmentationLib.progress import Reporter  # noqa: E402
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL  # noqa: E402

STAGES = {"load": "load", "resample": "resample", "predict": "predict", "restore": "restore back",
          "labels": "labels", "write": "write"}


def process_runs(image: str, spacings: list[float], device: str, precision: str) -> list[dict]:
    """One fresh ``hyperspace segment`` process per spacing: its ``--json`` summary and wall time."""
    rows = []
    for spacing in spacings:
        start = time.perf_counter()
        options = ["--spacing", f"{spacing:g}", "--allow-extrapolation", "--precision", precision]
        summary = segment_summary(image, options, device)
        wall = time.perf_counter() - start
        stages = {s["name"].split()[0]: s for s in summary["stages"]}
        rows.append({"spacing": spacing, "wall": wall, "stages": stages, "area": summary["memory_time_mb_s"],
                     "peak": max(s["peak_memory_mb"] for s in stages.values()),
                     "gpu_peak": max((s["peak_gpu_memory_mb"] or 0) for s in stages.values()) or None,
                     "total": sum(s["seconds"] for s in stages.values())})
    return rows


def median_seconds(action, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation_seconds(segmenter: Segmenter, spacing: float) -> float:
    """The hypernetwork's forward pass and the U-Net it fills, for one spacing (median of 5)."""
    network = segmenter.model.network
    return median_seconds(lambda: network.static_unet((spacing,) * 3))


def cache_effect(segmenter: Segmenter, image: sitk.Image, spacing: float, precision: str) -> tuple[float, float, float]:
    """Seconds of three segmentations at ``spacing`` in a row: the first (the U-Net generated, and torch meeting the
    working volume's shapes for the first time), then one by a new segmenter (the U-Net generated again, shapes
    seen), then one by the first segmenter again (the U-Net from its cache)."""

    def seconds(by: Segmenter) -> float:
        start = time.perf_counter()
        by.segment(image, (spacing,) * 3, Reporter(3, quiet=True))
        return time.perf_counter() - start

    again = Segmenter(segmenter.model, device=segmenter.device.type, precision=precision)
    return seconds(segmenter), seconds(again), seconds(segmenter)


def monai_comparison(segmenter: Segmenter, image: sitk.Image, spacing: float, window: int) -> dict:
    """Our sliding window and MONAI's on the same network and working volume: seconds and agreement."""
    from monai.inferers import sliding_window_inference

    model = segmenter.model
    oriented = canonical(image)
    normalised = sitk.GetImageFromArray(model.normalisation.apply(sitk.GetArrayViewFromImage(oriented)))
    normalised.CopyInformation(oriented)
    working = sitk.GetArrayFromImage(resample_to_spacing(normalised, (spacing,) * 3))
    volume = torch.from_numpy(working)[None, None].to(segmenter.device)
    network = segmenter.network_for((spacing,) * 3)
    classes = len(model.labels)
    patch = tuple(min(window, math.ceil(s / 8) * 8) for s in working.shape)

    start = time.perf_counter()
    ours = predict_probabilities(volume, network, classes, patch, overlap=0.5)
    ours_seconds = time.perf_counter() - start
    with torch.inference_mode():
        start = time.perf_counter()
        theirs = sliding_window_inference(volume, patch, 1, lambda x: torch.softmax(network(x), dim=1),
                                          overlap=0.5, mode="gaussian", sigma_scale=0.125)
        theirs_seconds = time.perf_counter() - start
    same = (ours.argmax(1) == theirs.argmax(1)).float().mean().item()
    return {"spacing": spacing, "shape": working.shape, "patch": patch, "ours": ours_seconds, "monai": theirs_seconds,
            "agreement": same, "max_difference": (ours - theirs).abs().max().item()}


def plot(rows: list[dict], voxels: dict[float, int], path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spacings = [r["spacing"] for r in rows]
    finest = rows[0]
    ideal = [finest["total"] * voxels[s] / voxels[finest["spacing"]] for s in spacings]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(spacings, [r["total"] for r in rows], "o-", label="all stages")
    axes[0].plot(spacings, [r["stages"]["predict"]["seconds"] for r in rows], "s-", label="predict")
    axes[0].plot(spacings, ideal, "k--", linewidth=1, label="ideal: voxel count")
    axes[0].set_ylabel("seconds")
    axes[1].plot(spacings, [r["peak"] for r in rows], "o-", label="peak resident memory")
    axes[1].set_ylabel("MB")
    axes[2].plot(spacings, [r["area"] / 1000 for r in rows], "o-", label="memory x time")
    axes[2].set_ylabel("GB s")
    for axis in axes:
        axis.set_yscale("log")
        axis.set_xlabel("working spacing (mm)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle(f"hyperspace segment, MNI152 T1 at 1 mm (197x233x189), {device}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", help="--precision of hyperspace segment")
    parser.add_argument("--spacings", type=float, nargs="+", default=[0.8, 1, 1.5, 2, 2.5, 3, 3.5])
    parser.add_argument("--monai-spacings", type=float, nargs="*", default=[1, 2, 3])
    parser.add_argument("--window", type=int, default=128, help="window edge for the MONAI comparison")
    parser.add_argument("--image", default=None, help="image to segment (default: the MNI152 T1 template)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of time, memory and area against spacing")
    args = parser.parse_args()
    path = args.image or template_t1()
    image = sitk.ReadImage(path)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"image: {Path(path).name} {image.GetSize()}; device: {device}; precision: {args.precision}\n")

    rows = process_runs(path, args.spacings, args.device, args.precision)
    voxels = {s: voxels_at(image, (s,) * 3) for s in args.spacings}
    segmenter = Segmenter(load_model(DEFAULT_MODEL), device=args.device, precision=args.precision)
    generation = {s: generation_seconds(segmenter, s) for s in args.spacings}
    gpu = any(r["gpu_peak"] for r in rows)
    print("| spacing (mm) | working voxels | " + " | ".join(f"{s} (s)" for s in STAGES.values())
          + " | of which weight generation (s) | total (s) | wall with start-up (s) | peak memory (MB) | "
          + ("peak GPU memory (MB) | " if gpu else "") + "memory x time (MB s) | hypernetwork share |")
    print("|---" * (len(STAGES) + 8 + gpu) + "|")
    for row in rows:
        s = row["spacing"]
        stages = " | ".join(f"{row['stages'][key]['seconds']:.2f}" for key in STAGES)
        print(f"| {s:g} | {voxels[s]:,} | {stages} | {generation[s]:.3f} | {row['total']:.2f} | {row['wall']:.1f} | "
              f"{row['peak']:.0f} | " + (f"{row['gpu_peak']:.0f} | " if gpu else "")
              + f"{row['area']:.0f} | {generation[s] / row['total']:.1%} |", flush=True)
    finest = rows[0]
    print("\nAgainst the ideal (time proportional to the working voxels, from the finest spacing):")
    print("| spacing (mm) | voxels / finest | total / finest | predict / finest |\n|---|---|---|---|")
    for row in rows:
        s = row["spacing"]
        print(f"| {s:g} | {voxels[s] / voxels[finest['spacing']]:.3f} | {row['total'] / finest['total']:.3f} | "
              f"{row['stages']['predict']['seconds'] / finest['stages']['predict']['seconds']:.3f} |")

    segmenter.segment(image, (2.7,) * 3, Reporter(3, quiet=True))  # warm-up at a spacing not measured
    print("\nThe per-spacing cache: three segmentations in a row in one process\n")
    print("| spacing (mm) | first (s) | new segmenter: U-Net generated again (s) | U-Net from the cache (s) | "
          "the cache saves (s) |\n|---|---|---|---|---|")
    for s in args.spacings:
        first, regenerated, cached = cache_effect(segmenter, image, s, args.precision)
        print(f"| {s:g} | {first:.2f} | {regenerated:.2f} | {cached:.2f} | {regenerated - cached:.2f} |", flush=True)

    if args.monai_spacings:
        try:
            import monai
        except ImportError:
            print("\nMONAI is not installed (pip install --no-deps monai): comparison skipped")
        else:
            print(f"\nMONAI {monai.__version__} sliding_window_inference against ours, same network and volume\n")
            print("| spacing (mm) | working volume | window | ours (s) | MONAI (s) | MONAI / ours | argmax agreement | "
                  "max probability difference |\n|---|---|---|---|---|---|---|---|")
            for s in args.monai_spacings:
                r = monai_comparison(segmenter, image, s, args.window)
                print(f"| {s:g} | {'x'.join(map(str, r['shape']))} | {'x'.join(map(str, r['patch']))} | "
                      f"{r['ours']:.2f} | {r['monai']:.2f} | {r['monai'] / r['ours']:.2f} | {r['agreement']:.5f} | "
                      f"{r['max_difference']:.2e} |", flush=True)
    if args.plot:
        plot(rows, voxels, args.plot, device)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
