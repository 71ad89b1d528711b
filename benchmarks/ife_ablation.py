"""IFE ablation: the same 2D HyperSpace model without IFE, with curvature and with entropy selection.

    pip install --no-deps nilearn
    python benchmarks/ife_ablation.py --work /tmp/hyperspace-ife --iterations 1500

Same data (slices of the MNI152 template in all three orientations, the 3D model's held-out band), seed,
architecture and step budget for each variant (scripts/train_default_model_2d.py's recipe); each model scored on
the held-out band of every orientation at several in-plane spacings with Dice, HD95 and the IFE paper's measures
(conformity, F-beta, MAE, ASSD, relative volume difference), with its training time and its prediction time per
slice. Prints one JSON line per score and a Markdown table of the means for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_model_2d import SCORES, machine, prepare, score, train_model  # noqa: E402

VARIANTS = ("none", "curvature", "entropy")


def table(results: dict[str, dict]) -> str:
    """Mean of each score over orientations and spacings, per variant, with training and prediction time."""
    header = "| IFE | " + " | ".join(SCORES) + " | training (min) | predict (ms/slice) |\n"
    header += "|" + "---|" * (len(SCORES) + 3) + "\n"
    lines = []
    for variant, result in results.items():
        rows = result["rows"]
        means = [sum(r[name] for r in rows) / len(rows) for name in SCORES]
        per_slice = sum(r["predict_ms_per_slice"] for r in rows) / len(rows)
        lines.append(f"| {variant} | " + " | ".join(f"{m:.4f}" for m in means)
                     + f" | {result['training_seconds'] / 60:.1f} | {per_slice:.1f} |")
    return header + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hyperspace-ife"))
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="training device; scoring runs on the CPU")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    dataset = prepare(args.work)
    results_path = args.work / "ablation.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    for variant in args.variants:  # each variant's result is kept as it comes, so a stopped run can go on
        model, seconds = train_model(args.work, dataset, variant, args.iterations, args.seed, args.device)
        results[variant] = {"training_seconds": seconds, "model": str(model), "rows": score(model, args.work)}
        results_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\n{args.iterations} iterations per variant, seed {args.seed}, {machine()}\n")
    print(table({v: results[v] for v in VARIANTS if v in results}))


if __name__ == "__main__":
    main()
