"""Score predictions against references: one case, or a batch from a MIST-style paths CSV, into results.csv.

results.csv follows MIST: one row per case with ``id`` and ``{class}_{metric}`` columns, then five summary rows
(Mean, Std, 25th Percentile, Median, 75th Percentile) that ignore NaN. A ``{class}_empty`` column says which
empty-mask convention applied (none, both, reference or prediction); a failed case keeps its row, with the
reason in ``error``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import UserError, error_line
from ..geometry import difference, format_pair, grid_difference, grid_differences, resample_labels
from ..io.input_files import input_file, read_csv_rows
from ..io.outputs import atomic_output
from .labels import ClassSpec, Segmentation, default_classes, read_segmentation
from .metrics import DEFAULT_METRICS, METRICS, Comparison, compute

SUMMARY_ROWS = ("Mean", "Std", "25th Percentile", "Median", "75th Percentile")


def check_metrics(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    return list(names)


def align(reference: Segmentation, prediction: Segmentation, resample: bool, names: tuple[str, str]) -> Segmentation:
    """The prediction on the reference grid: unchanged if the grids match, resampled (nearest) if allowed."""
    if not grid_difference(reference.image, prediction.image):
        return prediction
    if reference.image.GetDimension() != prediction.image.GetDimension():
        # resampling keeps the dimensions: no option makes a 2D image comparable with a volume
        raise UserError(f"the images have different dimensions ({grid_mismatch(reference.image, prediction.image, names)}): "
                        "give a prediction with the reference's dimensions (a 2D prediction for a 2D reference, a "
                        "volume for a volume)")
    if not resample:
        raise UserError(f"the images are on different grids ({grid_mismatch(reference.image, prediction.image, names)}): "
                        "pass --resample-to-reference to resample the prediction")
    moved = sitk.GetImageFromArray(prediction.values.astype(np.int32))
    moved.CopyInformation(prediction.image)
    values = sitk.GetArrayFromImage(resample_labels(moved, reference.image))
    segments = {}
    for name, mask in prediction.segments.items():
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(prediction.image)
        segments[name] = sitk.GetArrayFromImage(resample_labels(image, reference.image)).astype(bool)
    return Segmentation(reference.image, values, segments, value_names=prediction.value_names)


def grid_mismatch(reference: sitk.Image, prediction: sitk.Image, names: tuple[str, str]) -> str:
    """How the grids differ, each file named with its own values: 'reference A has origin (0, 0, 0), ...'."""
    if reference.GetDimension() != prediction.GetDimension():
        return (f"reference {names[0]} is {reference.GetDimension()}D, "
                f"prediction {names[1]} {prediction.GetDimension()}D")
    differences = grid_differences(reference, prediction)
    shown = [(label, *format_pair(a, b)) for label, a, b in differences]  # digits enough to tell them apart
    gaps = [gap for gap in (difference(label, a, b) for label, a, b in differences) if gap]
    return (f"reference {names[0]} has " + ", ".join(f"{label} {a}" for label, a, _ in shown)
            + f"; prediction {names[1]} has " + ", ".join(f"{label} {b}" for label, _, b in shown)
            + "".join(f"; {gap}" for gap in gaps))


def evaluate_pair(
    reference: Segmentation, prediction: Segmentation, classes: Sequence[ClassSpec] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS, tolerance: float = 1.0,
) -> dict[str, float | str]:
    """``{class}_{metric}`` values (and ``{class}_empty``) for a prediction on the reference's grid."""
    spacing = tuple(reversed(reference.image.GetSpacing()))
    row: dict[str, float | str] = {}
    for spec in classes or default_classes(reference, prediction):
        # a segment named in one file only is empty in the other (a missed or an extra structure)
        in_either = spec.segment in reference.segments or spec.segment in prediction.segments
        comparison = Comparison(
            reference.mask(spec, in_either), prediction.mask(spec, in_either), spacing, tolerance=tolerance,
            probabilities=(prediction.probabilities if prediction.probabilities is not None and spec.labels == (1,)
                           else None),
        )
        for name in metrics:
            row[f"{spec.name}_{name}"] = compute(METRICS[name], comparison)
        row[f"{spec.name}_empty"] = comparison.empty
    return row


def evaluate_files(
    reference: str | os.PathLike, prediction: str | os.PathLike, classes: Sequence[ClassSpec] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS, tolerance: float = 1.0, resample: bool = False,
) -> dict[str, float | str]:
    """Read and score one case."""
    ref = read_segmentation(reference)
    pred = read_segmentation(prediction)
    foreground = sorted(ref.present_values())
    if pred.probabilities is not None and len(foreground) > 1:
        raise UserError(f"{prediction} is a probability map (values in [0, 1]) but {reference} has several labels "
                        f"({', '.join(map(str, foreground))}): give the prediction as a label map")
    pred = align(ref, pred, resample, (str(reference), str(prediction)))
    return evaluate_pair(ref, pred, classes, metrics, tolerance=tolerance)


CASE_COLUMNS = ("id", "mask", "prediction")


def read_paths_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Cases from a CSV with columns id, mask (the reference) and prediction; relative paths from the CSV.

    Spreadsheet exports are accepted: a UTF-8 byte-order mark, CRLF line ends, spaces after the commas and
    rows whose cells are all blank. Every case needs all three values and a unique id.
    """
    path = input_file(path, folder="paths CSV {path} is a folder: give the CSV file with --paths-csv",
                      missing="paths CSV {path} does not exist: check the --paths-csv path")
    columns, rows = read_csv_rows(path, "paths CSV", CASE_COLUMNS, columns="id, mask and prediction",
                                  layout=" (MIST's layout)")
    cases, seen = [], {}
    for line, row in rows:
        empty = [name for name in CASE_COLUMNS if not (row.get(name) or "").strip()]
        if empty or None in row:
            problem = f"has no {', '.join(empty)}" if empty else f"has more values than the {len(columns)} columns"
            raise UserError(f"paths CSV {path}, line {line} {problem}: give id, mask and prediction on every line")
        case = {name: row[name].strip() for name in CASE_COLUMNS}
        if case["id"] in seen:
            raise UserError(f"paths CSV {path}: id {case['id']!r} appears on lines {seen[case['id']]} and {line}: "
                            "give every case its own id")
        seen[case["id"]] = line
        for key in ("mask", "prediction"):
            case[key] = case[key] if os.path.isabs(case[key]) else str((path.parent / case[key]).resolve())
        cases.append(case)
    return cases


def _evaluate_row(args: tuple) -> dict[str, float | str]:
    """One case's row; whatever goes wrong with this case is its ``error``, and the batch goes on."""
    case, classes, metrics, tolerance, resample = args
    try:
        return {"id": case["id"], **evaluate_files(case["mask"], case["prediction"], classes, metrics,
                                                   tolerance=tolerance, resample=resample)}
    except UserError as error:
        return {"id": case["id"], "error": str(error)}
    except (ArithmeticError, LookupError, MemoryError, OSError, RuntimeError, TypeError, ValueError) as error:
        return {"id": case["id"], "error": f"could not be scored ({error_line(error)}): check its files"}


def evaluate_batch(
    cases: list[dict[str, str]], classes: Sequence[ClassSpec] | None, metrics: Sequence[str], tolerance: float,
    resample: bool = False, workers: int = 1, update: Callable[[int], None] | None = None,
) -> list[dict[str, float | str]]:
    """Score every case (in up to ``workers`` processes, no more than cases or CPUs); a failing case keeps its
    row with an ``error``. Without ``classes``, every case is scored for every class found in any case."""
    jobs = [(case, classes, metrics, tolerance, resample) for case in cases]
    workers = min(workers, len(jobs), os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers)) if workers > 1 else None
        results = []
        for result in (pool.map if pool else map)(_evaluate_row, jobs):
            results.append(result)
            if update:
                update(1)
    return results if classes is not None else _score_absent_classes(results, metrics, tolerance)


def _score_absent_classes(rows: list[dict[str, float | str]], metrics: Sequence[str],
                          tolerance: float) -> list[dict[str, float | str]]:
    """Give each scored case every class of the batch, in label order: a class it lacks is in neither of its
    images, which scores as both empty (a perfect match)."""
    names = list(dict.fromkeys(name for row in rows for name in class_names(row)))
    names.sort(key=lambda name: (0, int(name)) if name.lstrip("-").isdigit() else (1, 0))  # stable for names
    nothing = np.zeros((1, 1, 1), dtype=bool)
    both_empty = Comparison(nothing, nothing, (1.0, 1.0, 1.0), tolerance)
    absent = {**{metric: compute(METRICS[metric], both_empty) for metric in metrics}, "empty": both_empty.empty}
    return [row if "error" in row else
            {"id": row["id"], **{f"{name}_{key}": row.get(f"{name}_{key}", value)
                                 for name in names for key, value in absent.items()}}
            for row in rows]


def class_names(columns: Iterable[str]) -> list[str]:
    """The scored classes, in order, from the keys of a row (each class has a ``{class}_empty`` key)."""
    return [key[: -len("_empty")] for key in columns if key.endswith("_empty")]


def empty_class_notes(rows: Iterable[dict[str, float | str]], shown: int = 5) -> list[str]:
    """A note for each class that is in neither image of some case, which MIST scores as a perfect match."""
    cases: dict[str, list[str]] = {}
    for row in rows:
        for name in class_names(row):
            if row[f"{name}_empty"] == "both":
                cases.setdefault(name, []).append(str(row["id"]))
    notes = []
    for name, ids in cases.items():
        listed = ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
        notes.append(f"class {name} is in neither the reference nor the prediction ({listed}), so it scores as a "
                     "perfect match (MIST's convention): check the class list if that is unexpected")
    return notes


def results_table(rows: Iterable[dict[str, float | str]]) -> tuple[list[str], list[dict[str, float | str]]]:
    """Columns and rows of results.csv: the cases, then the NaN-aware summary rows."""
    rows = list(rows)
    columns = ["id"]
    for row in rows:
        columns += [k for k in row if k not in columns and k != "error"]
    if any("error" in row for row in rows):
        columns.append("error")
    numeric = [c for c in columns if c not in ("id", "error") and not c.endswith("_empty")]
    values = {c: np.array([_number(row.get(c)) for row in rows], dtype=float) for c in numeric}
    summaries = []
    for label in SUMMARY_ROWS:
        summary: dict[str, float | str] = {"id": label}
        for column, data in values.items():
            data = data[~np.isnan(data)]
            if data.size == 0:
                summary[column] = math.nan
            elif label == "Mean":
                summary[column] = float(data.mean())
            elif label == "Std":
                summary[column] = float(data.std())
            else:
                summary[column] = float(np.percentile(data, {"25th Percentile": 25, "Median": 50, "75th Percentile": 75}[label]))
        summaries.append(summary)
    return columns, rows + summaries


def _number(value: float | str | None) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def write_results_csv(rows: Iterable[dict[str, float | str]], path: str | os.PathLike, overwrite: bool) -> Path:
    """Write results.csv (atomically) in MIST's layout: UTF-8 (any class name or case id), lines ending in CRLF
    as the csv module writes them (RFC 4180) on every system."""
    columns, table = results_table(rows)
    with atomic_output(path, overwrite) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:  # newline="": no second CR on Windows
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in table:
                writer.writerow({k: _format(v) for k, v in row.items()})
    return Path(path)


def _format(value: float | str) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)
