"""The cases of a batch: inputs (image files, folders of images, glob patterns, CSV lists) as cases with unique ids
and outputs, each process's share of them (``--shard``, or the processes of ``torchrun``), and the summary CSV
written at the end (atomically: temporary file, then rename)."""

from __future__ import annotations

import csv
import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import SimpleITK as sitk

from ..errors import UserError
from ..io.images import IMAGE_EXTENSIONS, OUTPUT_EXTENSIONS, atomic_output, check_output_path, extension

CSV_COLUMNS = ("id", "image")  # required; "output" is optional
SUMMARY_COLUMNS = ("id", "input", "output", "status", "spacing_mm", "seconds", "peak_memory_mb", "memory_time_mb_s",
                   "gpu_memory_time_mb_s", "error")
_NOT_SCANS = (".seg.nrrd", ".dcm")  # in a folder: segmentations (earlier results) and DICOM slices are no cases
_PATTERN_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Case:
    """One scan to segment: ``index`` in the whole list (which decides the process that segments it), a unique
    ``id``, the ``image`` (a file or a DICOM series folder) and the ``output`` a CSV gives it (``None``: named after
    the id in the output folder)."""

    index: int
    id: str
    image: str
    output: str | None = None


def case_id(path: str | os.PathLike) -> str:
    """A case's id from its image: the file name without its image extension (``brain.nii.gz``: ``brain``), or the
    name of a DICOM series folder."""
    name = Path(path).name
    ext = extension(name)
    return name[:-len(ext)] if ext and name.lower().endswith(ext) and len(name) > len(ext) else name


def collect_cases(inputs: Sequence[str]) -> tuple[list[Case], bool]:
    """``(cases, batch)`` for the command line's inputs, in order: image files, DICOM series folders, folders of
    images (their image files, else their DICOM series subfolders), glob patterns (image files and folders that
    match, sorted) and CSV files (see ``read_cases_csv``). ``batch`` is false for one image file or DICOM series
    folder, whose output ``-o`` names; else ``-o`` names a folder. Ids must be unique (ignoring case, as the file
    systems of Windows and macOS do), since outputs are named after them."""
    found: list[tuple[str, str, str | None]] = []  # (id, image, output)
    batch = len(inputs) > 1
    for item in inputs:
        path = Path(item)
        members = None
        if path.is_file() and path.suffix.lower() == ".csv":
            members = read_cases_csv(path)
        elif path.is_dir():
            members = _folder_cases(path)
        elif not path.exists() and _PATTERN_CHARACTERS & set(item):
            matches = sorted(m for m in glob.glob(item, recursive=True) if _is_scan(Path(m), in_folder=False))
            if not matches:
                raise UserError(f"no image file or folder matches the pattern {item}: check it (quote it, so that "
                                "the shell leaves it to hyperspace)")
            members = [(case_id(m), m, None) for m in matches]
        if members is None:
            found.append((case_id(path), item, None))  # one image (read_image says what is wrong with it)
        else:
            found += members
            batch = True
    seen: dict[str, str] = {}
    for id_, image, _ in found:
        if id_.casefold() in seen:
            raise UserError(f"case id {id_!r} is given to both {seen[id_.casefold()]} and {image}: every case needs its "
                            "own id (its output is named after it); rename one, or list the cases in a CSV with ids")
        seen[id_.casefold()] = image
    return [Case(index, *case) for index, case in enumerate(found)], batch


def _is_scan(path: Path, in_folder: bool) -> bool:
    """A folder that holds a DICOM series, or an image file (in a folder: not a segmentation or a DICOM slice)."""
    if path.is_dir():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    ext = extension(path)
    return ext in IMAGE_EXTENSIONS and not (in_folder and ext in _NOT_SCANS)


def _folder_cases(folder: Path) -> list[tuple[str, str, None]] | None:
    """The cases of a folder: its image files, else its subfolders that hold a DICOM series, else ``None`` (the
    folder is one DICOM series, or holds nothing to segment: read_image says so)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    scans = [p for p in entries if p.is_file() and _is_scan(p, in_folder=True)]
    scans = scans or [p for p in entries if p.is_dir() and _is_scan(p, in_folder=True)]
    return [(case_id(p), str(p), None) for p in scans] or None


def read_cases_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """``(id, image, output)`` for each row of a CSV with the columns id, image and optionally output (UTF-8, with
    or without a byte-order mark; relative paths from the CSV's folder; rows of blank cells skipped)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cases CSV {path} is not a readable UTF-8 CSV file ({error}): save it as CSV (UTF-8)") from None
    if missing := [c for c in CSV_COLUMNS if c not in reader.fieldnames]:
        raise UserError(f"cases CSV {path} lacks the column(s) {', '.join(missing)}: its first line must name the "
                        "columns id, image and optionally output")
    cases = []
    for line, row in rows:
        values = {key: (value or "").strip() for key, value in row.items() if isinstance(value, str)}
        if not any(values.values()):
            continue
        if not values.get("id") or not values.get("image") or None in row:
            problem = "has more values than columns" if None in row else "has no id or no image"
            raise UserError(f"cases CSV {path}, line {line} {problem}: give id and image (and optionally output) on "
                            "every line")
        if any(c in values["id"] for c in "/\\:") or values["id"] in (".", ".."):
            raise UserError(f"cases CSV {path}, line {line}: id {values['id']!r} cannot be a file name (outputs are "
                            "named after ids): leave out / \\ and :")
        output = values.get("output") or None
        cases.append((values["id"], str(path.parent / values["image"]),
                      str(path.parent / output) if output else None))
    if not cases:
        raise UserError(f"cases CSV {path} lists no cases: add one line per case under the header")
    return cases


def check_output_suffix(suffix: str) -> None:
    """Refuse an ``--output-suffix`` whose extension is no label-image format."""
    if extension(f"case{suffix}") not in OUTPUT_EXTENSIONS or "/" in suffix or "\\" in suffix:
        raise UserError(f"--output-suffix {suffix}: end it in one of {', '.join(OUTPUT_EXTENSIONS)} (the format of "
                        "the outputs), with no folder in it")


def plan_outputs(cases: Sequence[Case], every_case: Sequence[Case], folder: Path, suffix: str,
                 overwrite: bool) -> list[Path]:
    """The output of each case of ``cases``, checked before any work: a supported format in a folder that can be
    written, not existing (without ``overwrite``), not an input of ``every_case`` nor another case's output."""
    inputs = {_key(case.image): case.image for case in every_case}
    outputs: dict[str, str] = {}
    paths = []
    for case in cases:
        path = Path(case.output) if case.output else folder / f"{case.id}{suffix}"
        key = _key(path)
        if key in inputs:
            raise UserError(f"the output {path} of case {case.id} is the input {inputs[key]}: choose another output")
        if key in outputs:
            raise UserError(f"cases {outputs[key]} and {case.id} have the same output {path}: give each its own")
        outputs[key] = case.id
        check_output_path(path, overwrite)
        paths.append(path)
    return paths


def _key(path: str | os.PathLike) -> str:
    """A path as the file system compares it: absolute, normalised (and without case on Windows)."""
    return os.path.normcase(os.path.abspath(path))


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` (I from 1 to N) as ``(I, N)``."""
    try:
        part, parts = (int(v) for v in text.split("/"))
    except ValueError:
        part, parts = 0, 0
    if not 1 <= part <= parts:
        raise UserError(f"--shard {text}: give I/N, this job's part I (1 to N) of N parts, such as 1/4")
    return part, parts


def share(cases: Sequence[Case], part: int, parts: int) -> list[Case]:
    """The cases of part ``part`` (0-based) of ``parts``: case ``i`` of the whole list goes to part ``i % parts``."""
    return [case for case in cases if case.index % parts == part]


def process_rank() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process under ``torchrun``; ``(0, 1, 0)`` without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def gather(value: object, world: int) -> list:
    """``value`` of every process of a ``torchrun`` group, in rank order (``[value]`` for one process); every
    process must call it, in the same order."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # Python objects, on CPU and GPU machines alike
    values: list = [None] * world
    dist.all_gather_object(values, value)
    return values


def close_group() -> None:
    """End this process's part in the ``torchrun`` group that ``gather`` joined, if it did."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def error_line(error: BaseException) -> str:
    """An error as one line: a ``UserError``'s message, else its type and the last line of its message (that of
    SimpleITK's exceptions, whose first lines name source files)."""
    if isinstance(error, UserError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:300]}" if lines else type(error).__name__


def write_summary(rows: Iterable[dict], path: str | os.PathLike, overwrite: bool) -> Path:
    """Write the summary CSV (atomically): one row per case, the columns of ``SUMMARY_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    with atomic_output(path, overwrite) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    return Path(path)


def _cell(value: object) -> str:
    """A summary value as CSV text: numbers to 6 significant digits, a spacing as its values separated by spaces."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)
