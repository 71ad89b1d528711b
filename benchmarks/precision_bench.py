"""Half precision against float32 (issue 18, item 4): ``--precision`` float16 and bfloat16 (torch's autocast) against
float32, on the same model and input, one segmenter per precision, per working spacing: the predict stage's seconds, its
peak GPU memory, and how many labels on the input grid change (agreement, and Dice per class against float32).

    pip install --no-deps nilearn
    python benchmarks/precision_bench.py [--device cuda] [--spacings 1 1.5 2 3] [--image FILE] [--cudnn-benchmark]

Each precision runs one untimed first run at each spacing (the U-Net generated, kernels chosen; "first (s)", which for
float32 at the first spacing also holds the process's one-time start-up), then ``--repeats`` timed segmentations of
the whole image; the table gives the median. On the CPU float16 is not offered (see
``resolve_precision``): float32 and bfloat16 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from segment_runs import template_t1

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "HyperSpaceSegmentation"))

from HyperSpaceSegmentationLib.evaluation.metrics import METRICS, Comparison, compute  # noqa: E402
from HyperSpaceSegmentationLib.inference import Segmenter  # noqa: E402
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, load  # noqa: E402
from HyperSpaceSegmentationLib.progress import Reporter  # noqa: E402


def timed_segmentation(segmenter: Segmenter, image: sitk.Image, spacing: float) -> tuple[np.ndarray, dict]:
    """Labels of one segmentation and its predict stage's record (seconds, peak GPU memory)."""
    reporter = Reporter(4, quiet=True, device=segmenter.device)
    labels = sitk.GetArrayFromImage(segmenter.segment(image, (spacing,) * 3, reporter))
    predict = next(r for r in reporter.records if r.name.startswith("predict"))
    return labels, {"seconds": predict.seconds, "gpu_mb": predict.peak_gpu_memory_mb,
                    "total": sum(r.seconds for r in reporter.records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spacings", type=float, nargs="+", default=[1, 1.5, 2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default=None, help="image to segment (default: the MNI152 T1 template)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms per shape")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    path = args.image or template_t1()
    image = sitk.ReadImage(path)
    model = load(None, DEFAULT_MODEL)
    precisions = ["float32", "bfloat16"] + (["float16"] if args.device.startswith("cuda") else [])
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"image: {Path(path).name} {image.GetSize()}; device: {name}; torch {torch.__version__}; "
          f"cudnn.benchmark {args.cudnn_benchmark}\n")
    print("| spacing (mm) | precision | first (s) | predict (s) | stage sum (s) | peak GPU memory (MB) | "
          "labels as float32 | Dice CSF / GM / WM against float32 |\n|---|---|---|---|---|---|---|---|")
    classes = sorted(v for v in model.labels if v)
    for spacing in args.spacings:
        reference = None
        for precision in precisions:
            segmenter = Segmenter(model, device=args.device, precision=precision, backend="torch")
            first = timed_segmentation(segmenter, image, spacing)[1]["seconds"]
            runs = [timed_segmentation(segmenter, image, spacing) for _ in range(args.repeats)]
            labels = runs[-1][0]
            reference = labels if reference is None else reference
            seconds = statistics.median(r[1]["seconds"] for r in runs)
            total = statistics.median(r[1]["total"] for r in runs)
            gpu = runs[-1][1]["gpu_mb"]
            dices = " / ".join(f"{compute(METRICS['dice'], Comparison(reference == c, labels == c, (1, 1, 1))):.4f}"
                               for c in classes)
            print(f"| {spacing:g} | {precision} | {first:.2f} | {seconds:.3f} | {total:.3f} | "
                  f"{'-' if gpu is None else f'{gpu:.0f}'} | {(labels == reference).mean():.5%} | {dices} |",
                  flush=True)


if __name__ == "__main__":
    main()
