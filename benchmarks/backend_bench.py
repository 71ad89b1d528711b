"""The inference backends against each other and against the hardware's limit (issue 18, item 3).

    pip install --no-deps nilearn
    python benchmarks/backend_bench.py [--repeats 3] [--profile]

On the MNI152 T1 template at 1 mm (197x233x189) with the embedded 3D model, in one process:
1. the limit: the multiply-adds of one pass of the 1 mm network over its working grid at this CPU's best plain
   conv3d rate (as ``speed_bench.py``);
2. per working spacing (1, 1.5, 2, 3 mm): the time to export the network to ONNX (once; the cache makes it once
   per model and spacing), then one pass over the template's working grid by the torch network (channels-last, as
   the engine runs it) and by ONNX Runtime, alternating, the best of ``--repeats``; and the share of working voxels
   where the two passes' most likely classes agree;
3. ``Segmenter.segment`` end to end in this process (no start-up, no model load) with ``--backend torch`` and
   ``--backend onnxruntime`` at 1 and 3 mm, the networks exported beforehand: each stage's median time over
   ``--repeats`` runs, their sum, the sum against the limit, all but the prediction over the sum, the share of the
   input's voxels with the same label, and Dice per class against the template's tissue map;
``--memory``: instead, each backend in a fresh process segments the 1 mm template twice (the first run exports the
network unless cached): each run's time, the resident memory after it and the process's peak (Unix only).
``--profile``: where ONNX Runtime's 1 mm pass spends its time, per operator type (its own profiler).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed_bench import multiply_adds, plain_conv_rate  # noqa: E402
from tta_bench import dice  # noqa: E402
from train_default_model import tissue_map  # noqa: E402

from HyperSpaceSegmentationLib.inference import Segmenter  # noqa: E402
from HyperSpaceSegmentationLib.inference.backends import OnnxRuntimeNetwork, exported_path  # noqa: E402
from HyperSpaceSegmentationLib.io.model_file import load_model  # noqa: E402
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL  # noqa: E402
from HyperSpaceSegmentationLib.progress import Reporter  # noqa: E402

STAGES = ("resample", "predict", "restore", "labels")


def working_input(segmenter: Segmenter, t1: sitk.Image, spacing: float) -> torch.Tensor:
    """The network's input at ``spacing``: the template normalised, resampled and padded as the engine does."""
    from HyperSpaceSegmentationLib.geometry import canonical, resample_to_spacing

    oriented = canonical(t1)
    normalised = sitk.GetImageFromArray(segmenter.model.normalisation.apply(sitk.GetArrayViewFromImage(oriented)))
    normalised.CopyInformation(oriented)
    array = sitk.GetArrayFromImage(resample_to_spacing(normalised, (spacing,) * 3))
    patch = segmenter.windows(t1, (spacing,) * 3).patch
    padded = np.full(patch, segmenter.model.normalisation.outside_value, np.float32)
    padded[tuple(slice(0, s) for s in array.shape)] = array
    return torch.from_numpy(padded)[None, None]


def best_of(function, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def passes(segmenter: Segmenter, t1: sitk.Image, repeats: int) -> None:
    """Step 2 (see the module's description)."""
    print("\n| spacing (mm) | grid | export (s, once) | torch pass (s) | ONNX Runtime pass (s) | torch / ONNX Runtime "
          "| same most likely class |\n|---|---|---|---|---|---|---|")
    reporter = Reporter(1, quiet=True)
    for spacing in (1.0, 1.5, 2.0, 3.0):
        x = working_input(segmenter, t1, spacing)
        start = time.perf_counter()
        onnx = segmenter.predictor_for((spacing,) * 3, 0, reporter)  # exported here unless cached
        export = time.perf_counter() - start
        torch_network = segmenter.network_for((spacing,) * 3)
        with torch.inference_mode():
            torch_network(x), onnx(x)  # warm-up
            times = {"torch": math.inf, "onnxruntime": math.inf}
            for _ in range(repeats):  # alternating, so that both see the same machine
                for name, network in (("torch", torch_network), ("onnxruntime", onnx)):
                    seconds, logits = best_of(lambda: network(x), 1)
                    times[name] = min(times[name], seconds)
                    if name == "torch":
                        torch_classes = logits.argmax(1)
                    else:
                        onnx_classes = logits.argmax(1)
        same = float((torch_classes == onnx_classes).float().mean())
        print(f"| {spacing:g} | {'x'.join(map(str, x.shape[2:]))} | {export:.1f} | {times['torch']:.2f} | "
              f"{times['onnxruntime']:.2f} | {times['torch'] / times['onnxruntime']:.2f} | {same:.6f} |", flush=True)


def end_to_end(model, t1: sitk.Image, tissue: np.ndarray, repeats: int, limit: float) -> None:
    """Step 3 (see the module's description)."""
    print("\n| backend | spacing (mm) | " + " | ".join(f"{s} (s)" for s in STAGES) + " | sum (s) | sum / limit | "
          "all but predict / sum | same labels as torch | Dice CSF, GM, WM |\n|---|---|" + "---|" * (len(STAGES) + 5))
    for spacing in (1.0, 3.0):
        labels = {}
        for backend in ("torch", "onnxruntime"):
            segmenter = Segmenter(model, device="cpu", backend=backend)
            runs = []
            for _ in range(repeats + 1):  # the first run warms up (and exports, if the cache lacks the network)
                reporter = Reporter(len(STAGES), quiet=True)
                labels[backend] = sitk.GetArrayFromImage(segmenter.segment(t1, (spacing,) * 3, reporter))
                runs.append({r.name.split()[0]: r.seconds for r in reporter.records})
            median = {s: float(np.median([r.get(s, 0.0) for r in runs[1:]])) for s in STAGES}
            total = sum(median.values())
            same = float(np.mean(labels[backend] == labels["torch"]))
            scores = ", ".join(f"{dice(labels[backend] == v, tissue == v):.4f}" for v in (1, 2, 3))
            print(f"| {backend} | {spacing:g} | " + " | ".join(f"{median[s]:.2f}" for s in STAGES) + f" | {total:.2f} "
                  f"| {total / limit if spacing == 1.0 else math.nan:.2f} | {1 - median['predict'] / total:.2f} | "
                  f"{same:.6f} | {scores} |", flush=True)


def onnx_profile(segmenter: Segmenter, t1: sitk.Image) -> None:
    """Where ONNX Runtime's 1 mm pass spends its time, per operator type."""
    import onnxruntime

    segmenter.predictor_for((1.0,) * 3, 0, Reporter(1, quiet=True))  # the export, if missing
    from HyperSpaceSegmentationLib.inference.backends import model_digest

    path = exported_path(model_digest(segmenter.model), (1.0, 1.0, 1.0))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = working_input(segmenter, t1, 1.0).numpy()
    session.run(None, {"image": x})
    events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    by_type: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kind = event["args"].get("op_name", "?")
            by_type[kind] = by_type.get(kind, 0.0) + event["dur"] / 1e6
    whole = sum(by_type.values())
    print("\n| ONNX Runtime operator | share of the pass | seconds |\n|---|---|---|")
    for kind, seconds in sorted(by_type.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {seconds / whole:.2f} | {seconds:.2f} |")


def memory_of(segmenter: Segmenter, t1: sitk.Image) -> None:
    """Two 1 mm runs of ``segmenter`` in this (fresh) process: time, resident memory after, peak resident memory."""
    import resource

    import psutil

    for run in (1, 2):
        start = time.perf_counter()
        segmenter.segment(t1, (1.0, 1.0, 1.0), Reporter(len(STAGES), quiet=True))
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"| {segmenter.backend} | {run} | {seconds:.2f} | {psutil.Process().memory_info().rss / 2**20:.0f} | "
              f"{peak:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="only the ONNX Runtime profile at 1 mm")
    parser.add_argument("--memory", action="store_true", help="only the memory of each backend, in fresh processes")
    parser.add_argument("--memory-of", choices=("torch", "onnxruntime"), help=argparse.SUPPRESS)  # one such process
    args = parser.parse_args()
    os.environ.setdefault("HYPERSPACE_CACHE_DIR", tempfile.mkdtemp(prefix="hyperspace-networks-"))
    if args.memory:
        print("\n| backend | run | seconds | resident after (MB) | peak resident (MB) |\n|---|---|---|---|---|", flush=True)
        for backend in ("torch", "onnxruntime"):
            subprocess.run([sys.executable, __file__, "--memory-of", backend], check=True)
        return
    t1, tissue = tissue_map()
    model = load_model(DEFAULT_MODEL)
    if args.memory_of:
        memory_of(Segmenter(model, device="cpu", backend=args.memory_of), t1)
        return
    segmenter = Segmenter(model, device="cpu", backend="onnxruntime")
    if args.profile:
        onnx_profile(segmenter, t1)
        return
    network = model.network.static_unet((1.0, 1.0, 1.0)).eval()
    patch = segmenter.windows(t1, (1.0, 1.0, 1.0)).patch
    flop = 2 * multiply_adds(network, (32, 32, 32)) / 32**3 * math.prod(patch)
    print(f"threads: {torch.get_num_threads()}; exported networks in {os.environ['HYPERSPACE_CACHE_DIR']}")
    print("1. plain convolutions:")
    rate = plain_conv_rate(torch.device("cpu"))
    limit = flop / 1e9 / rate
    print(f"   one 1 mm pass ({'x'.join(map(str, patch))}): {flop / 1e9:.0f} GFLOP; at {rate:.1f} GFLOP/s the limit is "
          f"{limit:.2f} s (goal: the 1 mm stage sum within 2x: {2 * limit:.1f} s)")
    passes(segmenter, t1, args.repeats)
    assert isinstance(segmenter.predictor_for((3.0,) * 3, 0, Reporter(1, quiet=True)), OnnxRuntimeNetwork)
    end_to_end(model, t1, sitk.GetArrayFromImage(tissue), args.repeats, limit)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
