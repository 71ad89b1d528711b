"""``--spacing auto --max-seconds``: how long the choice takes and how the prediction time compares with the budget.

For each budget, a fresh process segments the MNI152 T1 template at 1 mm (197x233x189) with the embedded model;
the table shows the chosen spacing, the time spent choosing it (one window timed once, scaled by voxel count)
and the prediction time it led to, as a ratio of the budget.

    pip install --no-deps nilearn
    python benchmarks/auto_spacing_bench.py [--device cpu|cuda] [--budgets 2 5 10 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segment_runs import segment_summary, template_t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budgets", nargs="+", default=["2", "5", "10", "30"])
    parser.add_argument("--image", default=None, help="image to segment (default: the MNI152 T1 template)")
    args = parser.parse_args()
    image = args.image or template_t1()
    print(f"image: {Path(image).name}; device: {args.device}")
    print("| budget (s) | chosen spacing (mm) | load + choose (s) | predict (s) | predict / budget |")
    print("|---|---|---|---|---|")
    for budget in args.budgets:
        summary = segment_summary(image, ["--spacing", "auto", "--max-seconds", budget], args.device)
        stages = {s["name"].split()[0]: s["seconds"] for s in summary["stages"]}
        spacing = " x ".join(f"{s:.2f}" for s in summary["spacing_mm"])
        print(f"| {budget} | {spacing} | {stages['load']:.2f} | {stages['predict']:.2f} | "
              f"{stages['predict'] / float(budget):.2f} |", flush=True)

if __name__ == "__main__":
    main()
