"""Time and peak memory of ``hyperspace segment`` against the working spacing (the paper's Fig. 2, bottom right).

Each spacing runs in a fresh process (so peak memory is its own) on the MNI152 T1 template at 1 mm
(197x233x189) with the embedded model; the table shows the time of each stage and the process's peak memory.

    pip install --no-deps nilearn
    python benchmarks/segment_bench.py [--device cpu|cuda] [--spacings 1 1.5 2 3 3.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segment_runs import segment_summary, template_t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spacings", nargs="+", default=["1", "1.5", "2", "3", "3.5"])
    parser.add_argument("--image", default=None, help="image to segment (default: the MNI152 T1 template)")
    args = parser.parse_args()
    image = args.image or template_t1()
    print(f"image: {Path(image).name}; device: {args.device}")
    print("| spacing (mm) | resample (s) | predict (s) | restore (s) | total (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    for spacing in args.spacings:
        summary = segment_summary(image, ["--spacing", spacing, "--allow-extrapolation"], args.device)
        stages = {s["name"].split()[0]: s for s in summary["stages"]}
        total = sum(s["seconds"] for s in stages.values())
        peak = max(s["peak_memory_mb"] for s in stages.values())
        print(f"| {spacing} | {stages['resample']['seconds']:.2f} | {stages['predict']['seconds']:.2f} | "
              f"{stages['restore']['seconds']:.2f} | {total:.2f} | {peak:.0f} |", flush=True)

if __name__ == "__main__":
    main()
