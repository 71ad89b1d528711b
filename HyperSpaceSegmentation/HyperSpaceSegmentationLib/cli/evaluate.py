"""``hyperspace evaluate``: score segmentations against references, one pair or a batch (``--paths-csv``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from .options import add_json, add_overwrite, csv_file, process_count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command and its options."""
    parser = subparsers.add_parser(
        "evaluate", help="score segmentations against references (Dice, HD95, ASSD, surface Dice, ...)",
        description="Score PREDICTION against REFERENCE per class, or a batch of cases with --paths-csv. Distances "
                    "are in mm on the images' own grid. Metrics: " + ", ".join(_metric_names()) + ".",
    )
    parser.add_argument("reference", nargs="?", help="reference label image or .seg.nrrd")
    parser.add_argument("prediction", nargs="?", help="predicted label image or .seg.nrrd (or probabilities in [0, 1])")
    parser.add_argument("--paths-csv", help="batch: CSV with columns id, mask (reference) and prediction "
                                            "(UTF-8, paths relative to the CSV); exits 2 if every case fails")
    parser.add_argument("--labels", nargs="+", metavar="L",
                        help="classes: label values (2), groups (1,2,3) or segment names; default: every label present")
    parser.add_argument("--config", help="MIST-style JSON: {\"classes\": {name: [labels]}, \"metrics\": [...], \"tolerance\": mm}")
    parser.add_argument("--metrics", nargs="+", metavar="M", help="metrics to compute (default: all)")
    parser.add_argument("--tolerance", type=float, default=None, help="surface Dice tolerance in mm (default 1.0)")
    parser.add_argument("--resample-to-reference", action="store_true",
                        help="resample a prediction on another grid onto the reference's (nearest neighbour)")
    parser.add_argument("-o", "--output", type=csv_file,
                        help="write a MIST-style results.csv (without it a batch prints the mean over cases)")
    parser.add_argument("--workers", type=process_count, default=1,
                        help="processes for a batch, 1 or more (default 1)")
    add_json(parser, "print the results as JSON")
    add_overwrite(parser, "replace an existing results file")


def _metric_names() -> list[str]:
    from ..evaluation import METRICS

    return list(METRICS)


def run_evaluate(args: argparse.Namespace) -> int:
    """Score one prediction, or every case of ``--paths-csv``; print the scores, and write them with ``-o``."""
    from ..evaluation import evaluate_batch, evaluate_files, write_results_csv
    from ..evaluation.evaluate import class_names, empty_class_notes, read_paths_csv
    from ..io.images import check_not_an_input, check_writable
    from ..progress import Reporter

    if bool(args.paths_csv) == bool(args.reference and args.prediction):
        raise UserError("give either REFERENCE and PREDICTION, or --paths-csv CASES.csv")
    classes, metrics, tolerance = _scoring(args)
    if args.output:
        check_not_an_input(args.output, {"paths CSV": args.paths_csv, "reference": args.reference,
                                         "prediction": args.prediction})
        check_writable(args.output, args.overwrite)
    failed = []
    if args.paths_csv:
        cases = read_paths_csv(args.paths_csv)
        reporter = Reporter(stages=1, quiet=args.json)
        with reporter.stage(f"evaluate {len(cases)} cases", total=len(cases)) as update:
            rows = evaluate_batch(cases, classes, metrics, tolerance, resample=args.resample_to_reference,
                                  workers=args.workers, update=update)
        failed = [row for row in rows if "error" in row]
        for row in failed:
            print(f"hyperspace: case {row['id']} failed: {row['error']}", file=sys.stderr)
        if len(failed) == len(rows):
            raise UserError(f"all {len(rows)} cases failed (reasons above): fix them in {args.paths_csv} and run again")
    else:
        rows = [{"id": Path(args.prediction).name, **evaluate_files(
            args.reference, args.prediction, classes, metrics, tolerance=tolerance,
            resample=args.resample_to_reference)}]
    if not any(class_names(row) for row in rows):
        source = f"any case of {args.paths_csv}" if args.paths_csv else f"{args.reference} or {args.prediction}"
        raise UserError(f"no foreground label in {source}, so there is nothing to score: pass --labels (or a "
                        "config's classes) to score classes anyway (a class in neither image scores as a perfect match)")
    for note in empty_class_notes(rows):
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        write_results_csv(rows, args.output, args.overwrite)
    _print_results(args, rows, scored=len(rows) - len(failed), metrics=metrics)
    return 0


def _scoring(args: argparse.Namespace) -> tuple[list | None, list[str], float]:
    """``(classes, metrics, tolerance)``: the options', else the config's (``--config``), else the defaults."""
    import math

    from ..evaluation import DEFAULT_METRICS
    from ..evaluation.evaluate import check_metrics
    from ..evaluation.labels import classes_from_labels, load_config

    classes, metrics, tolerance = load_config(args.config) if args.config else (None, None, None)
    if args.labels:
        classes = classes_from_labels(args.labels)
    metrics = check_metrics(args.metrics or metrics or list(DEFAULT_METRICS))
    tolerance = args.tolerance if args.tolerance is not None else tolerance if tolerance is not None else 1.0
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise UserError(f"--tolerance {tolerance}: give a distance of 0 mm or more")
    return classes, metrics, tolerance


def _print_results(args: argparse.Namespace, rows: list[dict], *, scored: int, metrics: list[str]) -> None:
    """Print the results: JSON, or a table of one case, or of the mean over the ``scored`` cases of a batch."""
    from ..evaluation.evaluate import class_names, results_table

    if args.json:
        print(json.dumps(rows if args.paths_csv else rows[0], indent=2, default=str))
    elif args.paths_csv:
        columns, table = results_table(rows)
        print(f"mean over the {scored} scored of {len(rows)} cases"
              + ("" if args.output else " (-o results.csv keeps every case, --json prints them)") + ":")
        _print_case(table[len(rows)], class_names(columns), metrics)
    else:
        _print_case(rows[0], class_names(rows[0]), metrics)
    if args.output and not args.json:
        print(f"wrote {args.output}")


def _print_case(row: dict, classes: list[str], metrics: list[str]) -> None:
    """One line per class, one column per metric."""
    width = max([len(c) for c in classes] + [5])
    print(f"{'class':<{width}}  " + "  ".join(f"{m:>12}" for m in metrics))
    for name in classes:
        print(f"{name:<{width}}  " + "  ".join(f"{row[f'{name}_{m}']:>12.4g}" for m in metrics))
