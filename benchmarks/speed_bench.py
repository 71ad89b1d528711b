"""Where the time of a segmentation goes, against what the hardware can do (issue 9's speed goal).

    pip install --no-deps nilearn
    python benchmarks/speed_bench.py [--device cpu|cuda] [--skip-windows]

On the MNI152 T1 template at 1 mm (197x233x189) with the embedded 3D model it prints:
1. the multiply-adds of the generated U-Net per voxel (counted by hooks on every convolution) and of one pass
   over the 1 mm working grid;
2. the rate of plain conv3d layers on this device (the best of a few channel widths): the limit the goal refers to;
3. the network alone over the whole 1 mm working grid, in the default and in channels-last memory order;
4. ``hyperspace segment`` end to end (a fresh process per run) at 1 mm and 3 mm: windows chosen by memory (the
   default: one window over the whole volume here) against overlapping 128^3 windows (``--patch 128``, the
   former default): every stage's time, the process's peak memory and memory-time area, the wall time, and the
   goal's ratio, end-to-end time / (multiply-adds / plain-conv rate); and the share of the fixed costs
   (resampling both ways and the labels) in the total at 3 mm;
5. Dice per class of both window choices inside the held-out band (axial slices 100-125) and on the whole brain.

``--fixed-costs [--repeats N]`` instead times the stages in this process (no start-up), N times at 3, 2 and 1 mm:
reading the image, resampling to the working grid, the prediction, bringing the result back to the input's grid,
the labels, and writing them (``.nrrd``, as the other runs here), for the labels alone (``Segmenter.segment``) and
for the class probabilities on the input's grid followed by their labels (``Segmenter.probabilities``, what
``--probabilities`` and ``--uncertainty`` need); the median of each stage and the share of everything but the
prediction in the sum. It runs on any version of the engine that has those two methods (the labels stage is the
rest of the call), such as an export of an earlier commit (run its own copy of this script there).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from tta_bench import dice, run  # noqa: E402
from train_default_model import VALIDATION_BAND, tissue_map  # noqa: E402

from HyperSpaceSegmentationLib.models import DEFAULT_MODEL  # noqa: E402
from HyperSpaceSegmentationLib.inference import Segmenter  # noqa: E402
from HyperSpaceSegmentationLib.io.model_file import load_model  # noqa: E402

CLASSES = {1: "CSF", 2: "grey matter", 3: "white matter"}
FIXED = ("resample", "restore", "labels")  # stages that do not depend on the network


def multiply_adds(network: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of the convolutions of one pass of ``network`` over a ``shape`` block."""
    count = 0

    def hook(module, inputs, output):
        nonlocal count
        count += output.numel() * module.weight[0].numel()

    hooks = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.inference_mode():
        network(torch.zeros(1, 1, *shape))
    for handle in hooks:
        handle.remove()
    return count


def best_seconds(function, repeats: int = 3) -> float:
    function()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def plain_conv_rate(device: torch.device) -> float:
    """GFLOP/s of the fastest plain conv3d (3^3, padding 1) among a few widths on a 64^3 block."""
    rates = []
    for channels in (16, 32, 64):
        conv = torch.nn.Conv3d(channels, channels, 3, padding=1).to(device)
        x = torch.randn(1, channels, 64, 64, 64, device=device)
        with torch.inference_mode():
            seconds = best_seconds(lambda: _synchronised(conv, x, device))
        rates.append(2 * channels * channels * 27 * 64**3 / seconds / 1e9)
        print(f"  plain conv3d {channels} -> {channels} channels, 64^3: {rates[-1]:.1f} GFLOP/s")
    return max(rates)


def _synchronised(network, x, device):
    result = network(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result


def profile(network: torch.nn.Module, x: torch.Tensor) -> None:
    """Where one pass of ``network`` over ``x`` spends its time: per operator, and per convolution layer with its
    multiply-adds per voxel of the input grid and its rate."""
    layers = []

    def hook(module, inputs, output):
        layers.append((module, inputs[0].shape, output.numel() * module.weight[0].numel()))

    hooks = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as trace:
        network(x)
    for handle in hooks:
        handle.remove()
    events = sorted(trace.key_averages(), key=lambda e: -e.self_cpu_time_total)
    whole = sum(e.self_cpu_time_total for e in events)
    print("\n| operator | share of the pass | seconds |\n|---|---|---|")
    for event in events[:8]:
        print(f"| {event.key} | {event.self_cpu_time_total / whole:.2f} | {event.self_cpu_time_total / 1e6:.2f} |")
    print("\n| convolution (in -> out channels, grid) | multiply-adds per voxel | seconds | GFLOP/s |\n|---|---|---|---|")
    voxels = math.prod(x.shape[2:])
    for module, shape, macs in layers:
        block = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            seconds = best_seconds(lambda: module(block), repeats=1)
        print(f"| {shape[1]} -> {module.out_channels}, {'x'.join(map(str, shape[2:]))} | {macs / voxels:,.0f} | "
              f"{seconds:.2f} | {2 * macs / seconds / 1e9:.1f} |")


def fixed_costs(device: str, repeats: int) -> None:
    """Stage times in this process at 3, 2 and 1 mm on the 1 mm template; see the module's description."""
    from HyperSpaceSegmentationLib.inference import labels_from_probabilities
    from HyperSpaceSegmentationLib.io.images import write_labels
    from HyperSpaceSegmentationLib.progress import Reporter

    t1, _ = tissue_map()
    model = load_model(DEFAULT_MODEL)
    segmenter = Segmenter(model, device=device)
    folder = tempfile.TemporaryDirectory()
    source = Path(folder.name) / "t1.nrrd"
    sitk.WriteImage(t1, str(source))
    names = ("load", "resample", "predict", "restore", "labels", "write")

    def run_once(spacing: float, path: str) -> dict[str, float]:
        start = time.perf_counter()
        image = sitk.ReadImage(str(source))
        seconds = {"load": time.perf_counter() - start}
        reporter = Reporter(3, quiet=True)
        start = time.perf_counter()
        if path == "labels":
            labels = segmenter.segment(image, (spacing,) * 3, reporter)
        else:
            probabilities = segmenter.probabilities(image, (spacing,) * 3, reporter)
            labels = labels_from_probabilities(probabilities, sorted(model.labels), image)
        call = time.perf_counter() - start
        for record in reporter.records:
            seconds[record.name.split()[0]] = record.seconds
        seconds["labels"] = call - sum(seconds.get(n, 0.0) for n in ("resample", "predict", "restore"))
        start = time.perf_counter()
        write_labels(labels, Path(folder.name) / "labels.nrrd", model.labels, model.colors, overwrite=True)
        seconds["write"] = time.perf_counter() - start
        return seconds

    segmenter.segment(t1, (2.7,) * 3, Reporter(3, quiet=True))  # warm-up at a spacing not measured
    print(f"device: {device}; threads: {torch.get_num_threads()}; {repeats} runs each, medians")
    print("| path | spacing (mm) | " + " | ".join(f"{n} (s)" for n in names) + " | sum (s) | all but predict / sum "
          "| range over the runs |")
    print("|---|---|" + "---|" * (len(names) + 3))
    for path in ("labels", "probabilities"):
        for spacing in (3.0, 2.0, 1.0):
            runs = [run_once(spacing, path) for _ in range(repeats)]
            median = {n: float(np.median([r.get(n, 0.0) for r in runs])) for n in names}
            shares = [1 - r["predict"] / sum(r.get(n, 0.0) for n in names) for r in runs]
            total = sum(median.values())
            print(f"| {path} | {spacing:g} | " + " | ".join(f"{median[n]:.3f}" for n in names) + f" | {total:.2f} | "
                  f"{1 - median['predict'] / total:.2f} | {min(shares):.2f}-{max(shares):.2f} |", flush=True)
    folder.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fixed-costs", action="store_true",
                        help="only the stage times in this process at 3, 2 and 1 mm, and the share of all but the "
                             "prediction (issue 18)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per spacing and path with --fixed-costs")
    parser.add_argument("--skip-windows", action="store_true", help="skip the slow --patch 128 runs")
    parser.add_argument("--profile", action="store_true",
                        help="only steps 1-3, then where the channels-last pass spends its time, per operator and per "
                             "convolution layer")
    args = parser.parse_args()
    if args.fixed_costs:
        fixed_costs(args.device, args.repeats)
        return
    device = torch.device(args.device)
    t1, tissue = tissue_map()
    segmenter = Segmenter(load_model(DEFAULT_MODEL), device=args.device)
    shape = tuple(reversed(segmenter.working_size(t1, (1.0, 1.0, 1.0))))
    plan = segmenter.windows(t1, (1.0, 1.0, 1.0))
    network = load_model(DEFAULT_MODEL).network.static_unet((1.0, 1.0, 1.0)).to(device).eval()
    per_voxel = multiply_adds(network, (32, 32, 32)) / 32**3
    total = per_voxel * math.prod(plan.patch)
    print(f"device: {device}; threads: {torch.get_num_threads()}")
    print(f"1. U-Net: {per_voxel:,.0f} multiply-adds per voxel; the 1 mm working grid {'x'.join(map(str, shape))} "
          f"padded to {'x'.join(map(str, plan.patch))}: {2 * total / 1e9:.0f} GFLOP per pass")
    print("2. plain convolutions:")
    rate = plain_conv_rate(device)
    limit = 2 * total / 1e9 / rate
    print(f"   limit: one pass at {rate:.1f} GFLOP/s takes {limit:.2f} s; the goal (3x) is {3 * limit:.1f} s end to end")
    x = torch.randn(1, 1, *plan.patch, device=device)
    with torch.inference_mode():
        plain = best_seconds(lambda: _synchronised(network, x, device), repeats=1)
        fast = best_seconds(lambda: _synchronised(network.to_channels_last(), x, device), repeats=1)
    for name, seconds in (("default memory order", plain), ("channels-last", fast)):
        print(f"3. the network alone over the whole grid, {name}: {seconds:.2f} s, {2 * total / seconds / 1e9:.1f} "
              f"GFLOP/s ({seconds / limit:.1f}x the limit)")
    if args.profile:
        profile(network, x)
        return

    low, high = VALIDATION_BAND
    reference = sitk.GetArrayFromImage(tissue)
    runs = [("1", []), ("3", [])] + ([] if args.skip_windows else [("1", ["--patch", "128"]), ("3", ["--patch", "128"])])
    print("\n4./5. | spacing (mm) | windows | " + " | ".join(f"{s} (s)" for s in ("load", "resample", "predict",
          "restore", "labels", "write")) + " | wall (s) | wall / limit | peak memory (MB) | memory-time (GB s) | "
          "fixed share | Dice band (CSF, GM, WM) | Dice brain (CSF, GM, WM) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    folder = tempfile.TemporaryDirectory()
    with_image = Path(folder.name) / "t1.nrrd"
    sitk.WriteImage(t1, str(with_image))
    for spacing, options in runs:
        labels, summary, wall = run(with_image, ["--spacing", spacing, *options], tta=False)
        seconds = {s["name"].split()[0]: s["seconds"] for s in summary["stages"]}
        windows = next(s["name"] for s in summary["stages"] if s["name"].startswith("predict"))[len("predict "):]
        peak = max(s["peak_memory_mb"] for s in summary["stages"])
        fixed = sum(seconds[name] for name in FIXED) / sum(seconds.values())
        band = ", ".join(f"{dice(labels[low:high] == v, reference[low:high] == v):.4f}" for v in CLASSES)
        brain = ", ".join(f"{dice(labels == v, reference == v):.4f}" for v in CLASSES)
        print(f"| {spacing} | {windows} | " + " | ".join(f"{seconds.get(name, 0):.2f}" for name in (
              "load", "resample", "predict", "restore", "labels", "write")) + f" | {wall:.1f} | "
              f"{wall / limit if spacing == '1' else math.nan:.1f} | {peak:.0f} | "
              f"{summary['memory_time_mb_s'] / 1000:.1f} | {fixed:.2f} | {band} | {brain} |", flush=True)
    folder.cleanup()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
