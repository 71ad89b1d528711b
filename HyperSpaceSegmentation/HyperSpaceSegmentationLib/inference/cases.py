"""The cases of a batch: inputs (image files, folders of images, glob patterns, CSV lists) as cases with unique ids
and outputs, each process's share of them (``--shard``, or the processes of ``torchrun``), and the summary CSV
written at the end (atomically: temporary file, then rename)."""

from __future__ import annotations

import csv
import glob
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import SimpleITK as sitk

from ..errors import UserError
from ..io.formats import IMAGE_EXTENSIONS, OUTPUT_EXTENSIONS, PICTURE_OUTPUTS, extension
from ..io.images import itk_warnings_off
from ..io.input_files import read_csv_rows
from ..io.outputs import atomic_output, check_output_path, check_writable, file_name_problem

CSV_COLUMNS = ("id", "image")  # required; "output" is optional
SUMMARY_COLUMNS = ("id", "input", "output", "status", "spacing_mm", "seconds", "peak_memory_mb", "memory_time_mb_s",
                   "gpu_memory_time_mb_s", "error")
_NOT_SCANS = (".seg.nrrd", ".dcm")  # in a folder: segmentations (earlier results) and DICOM slices are no cases
_PATTERN_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Case:
    """One scan to segment: ``index`` in the whole list (which decides the process that segments it), a unique
    ``id``, the ``image`` (a file or a DICOM series folder) and the ``output`` a CSV gives it (``None``: named after
    the id in the output folder). ``scanned``: found by scanning a folder or a glob pattern (not named by the user),
    so a file that is an output of this batch (an earlier run's) is no case (see ``drop_own_outputs``)."""

    index: int
    id: str
    image: str
    output: str | None = None
    scanned: bool = False


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
    folder, whose output ``-o`` names; else ``-o`` names a folder. Ids must be unique, which ``check_unique_ids``
    checks once the batch's own earlier outputs are left out (``drop_own_outputs``)."""
    found: list[tuple[str, str, str | None, bool]] = []  # (id, image, output, scanned)
    batch = len(inputs) > 1
    for item in inputs:
        if not item.strip():  # Path("") is the current folder: never scan it by accident
            raise UserError("an INPUT is empty (an unset shell variable?): give an image file, a folder, a quoted glob "
                            "pattern or a CSV of cases")
        path = Path(item)
        members = None
        if path.is_file() and path.suffix.lower() == ".csv":
            members = [(*member, False) for member in read_cases_csv(path)]
        elif path.is_dir():
            members = _folder_cases(path)
            if members is None and not _dicom_series(path):
                results = any(extension(p) == ".seg.nrrd" for p in path.iterdir())
                raise UserError(f"folder {item} holds no image file to segment"
                                + (" (only .seg.nrrd results, which are no scans)" if results else "")
                                + ": it is a folder without a DICOM series, nor subfolders with one: give a folder of "
                                  "scans (.nrrd, .nii.gz, .mha, ...) or a DICOM series folder")
        elif not path.exists() and _PATTERN_CHARACTERS & set(item):
            matches = sorted(glob.glob(item, recursive=True))
            scans = [m for m in matches if _is_scan(Path(m), in_folder=False)]
            if not scans:
                results = " (.seg.nrrd results, which are no scans, are left out)" if matches else ""
                raise UserError(f"no image file or folder matches the pattern {item}{results}: check it (quote it, so "
                                "that the shell leaves it to hyperspace)")
            members = [(case_id(m), m, None, True) for m in scans]
        if members is None:
            found.append((case_id(path), item, None, False))  # one image (read_image says what is wrong with it)
        else:
            found += members
            batch = True
    return [Case(index, *case) for index, case in enumerate(found)], batch


def check_unique_ids(cases: Sequence[Case]) -> None:
    """Refuse two cases with the same id, ignoring case (as the file systems of Windows and macOS do), since outputs
    are named after ids."""
    seen: dict[str, str] = {}
    for case in cases:
        if case.id.casefold() in seen:
            raise UserError(f"case id {case.id!r} is given to both {seen[case.id.casefold()]} and {case.image}: every "
                            "case needs its own id (its output is named after it); rename one, or list the cases in a "
                            "CSV with ids")
        seen[case.id.casefold()] = case.image


def drop_own_outputs(cases: Sequence[Case], folder: Path, suffix: str) -> tuple[list[Case], list[Case]]:
    """``(kept, dropped)``: the cases without those found by a scan (folder or glob pattern) whose image is the output
    of another case of this batch (an earlier run's result, such as ``alpha_labels.nii.gz`` next to ``alpha.nrrd``
    with ``--output-suffix _labels.nii.gz``, or ``alpha.nii.gz`` next to ``alpha.nrrd`` with ``.nii.gz``, which has
    alpha's id too); the kept ones numbered again from 0."""
    outputs: dict[str, set[int]] = {}  # an output to the cases that write it
    for case in cases:
        outputs.setdefault(_key(_output_of(case, folder, suffix)), set()).add(case.index)
    dropped = [case for case in cases if case.scanned and outputs.get(_key(case.image), set()) - {case.index}]
    gone = {case.index for case in dropped}
    kept = [case for case in cases if case.index not in gone]
    return [replace(case, index=index) for index, case in enumerate(kept)], dropped


def _output_of(case: Case, folder: Path, suffix: str) -> Path:
    return Path(case.output) if case.output else folder / f"{case.id}{suffix}"


def _is_scan(path: Path, in_folder: bool) -> bool:
    """A folder that holds a DICOM series, or an image file: not a segmentation (an earlier result); in a folder,
    not a DICOM slice either."""
    if path.is_dir():
        return _dicom_series(path)
    ext = extension(path)
    return ext in IMAGE_EXTENSIONS and ext not in (_NOT_SCANS if in_folder else _NOT_SCANS[:1])


def _dicom_series(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM series (without ITK's warnings on the console for one that does not)."""
    with itk_warnings_off():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def folder_entries(folder: Path, accept: Callable[[Path], bool]) -> list[Path]:
    """The entries of ``folder`` that ``accept`` takes, sorted by name; hidden ones (a leading dot, such as macOS's
    ``._scan.nrrd`` copies on shared drives) left out. The one folder scan of the command line and the Slicer logic."""
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and accept(p)]


def _folder_cases(folder: Path) -> list[tuple[str, str, None, bool]] | None:
    """The cases of a folder: its image files, else its subfolders that hold a DICOM series, else ``None`` (the
    folder is one DICOM series, or holds nothing to segment: read_image says so)."""
    scans = folder_entries(folder, lambda p: p.is_file() and _is_scan(p, in_folder=True))
    scans = scans or folder_entries(folder, lambda p: p.is_dir() and _is_scan(p, in_folder=True))
    return [(case_id(p), str(p), None, True) for p in scans] or None


def read_cases_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """``(id, image, output)`` for each row of a CSV with the columns id, image and optionally output (UTF-8, with
    or without a byte-order mark; relative paths from the CSV's folder; rows of blank cells skipped)."""
    _, rows = read_csv_rows(path, "cases CSV", CSV_COLUMNS, columns="id, image and optionally output")
    cases = []
    for line, row in rows:
        values = {key: (value or "").strip() for key, value in row.items() if isinstance(value, str)}
        if not values.get("id") or not values.get("image") or None in row:
            problem = "has more values than columns" if None in row else "has no id or no image"
            raise UserError(f"cases CSV {path}, line {line} {problem}: give id and image (and optionally output) on "
                            "every line")
        if problem := file_name_problem(values["id"]):
            raise UserError(f"cases CSV {path}, line {line}: id {values['id']!r} {problem} (outputs are named after "
                            "ids): give an id such as case01, without / \\ : * ? \" < > |")
        output = values.get("output") or None
        cases.append((values["id"], str(path.parent / values["image"]),
                      str(path.parent / output) if output else None))
    return cases


def check_output_suffix(suffix: str) -> None:
    """Refuse an ``--output-suffix`` whose extension is no label-image format (an empty one included)."""
    if extension(f"case{suffix}") not in OUTPUT_EXTENSIONS or "/" in suffix or "\\" in suffix:
        raise UserError(f"--output-suffix {suffix!r}: end it in one of {', '.join(OUTPUT_EXTENSIONS)} (the format of "
                        "the outputs), with no folder in it")


def check_picture_outputs(cases: Sequence[Case], outputs: Sequence[Path]) -> None:
    """Before any work: refuse a picture output (PNG, TIFF, BMP: one 2D plane) for a case whose header (or DICOM
    series folder) is a volume of several slices. A file whose header cannot be read fails at its turn."""
    for case, output in zip(cases, outputs):
        if extension(output) not in PICTURE_OUTPUTS:
            continue
        size = image_size(case.image)
        if is_volume(size):
            shown = "a DICOM series" if size == () else f"a volume of {' x '.join(map(str, size))} voxels"
            raise UserError(f"case {case.id} ({case.image}) is {shown}, but its output {output.name} is a picture, "
                            "which holds one 2D plane: use --output-suffix .seg.nrrd (or .nrrd, .nii.gz, .mha)")


def is_volume(size: tuple[int, ...] | None) -> bool:
    """Whether an ``image_size`` is that of a volume of several slices (a DICOM series is one); not for a 2D image,
    a single-slice volume or an unreadable header."""
    return size == () or (size is not None and len(size) == 3 and 1 not in size)


def image_size(path: str | os.PathLike) -> tuple[int, ...] | None:
    """An image file's size from its header alone (``()`` for a folder, a DICOM series; ``None`` if unreadable)."""
    if Path(path).is_dir():
        return ()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(reader.GetSize())


def plan_outputs(cases: Sequence[Case], every_case: Sequence[Case], folder: Path, suffix: str,
                 overwrite: bool, other_inputs: dict[str, str] | None = None,
                 skip_existing: bool = False) -> tuple[list[Path], list[bool]]:
    """``(outputs, skip)``: the output of each case of ``cases``, checked before any work: a supported format in a
    folder that can be written, not existing (without ``overwrite``; with ``skip_existing`` an existing one marks
    its case to skip), not an input of ``every_case`` nor of ``other_inputs`` (``{path: role}``, such as the cases
    CSV or a model file), nor another case's output."""
    inputs = {_key(case.image): f"input {case.image}" for case in every_case}
    inputs.update({_key(path): role for path, role in (other_inputs or {}).items()})
    outputs: dict[str, str] = {}
    paths, skip = [], []
    for case in cases:
        path = _output_of(case, folder, suffix)
        key = _key(path)
        if key in inputs:
            raise UserError(f"the output {path} of case {case.id} is the {inputs[key]}: choose another output")
        if key in outputs:
            raise UserError(f"cases {outputs[key]} and {case.id} have the same output {path}: give each its own")
        outputs[key] = case.id
        exists = skip_existing and path.is_file()
        if not exists:
            check_output_path(path, overwrite)
        paths.append(path)
        skip.append(exists)
    return paths, skip


def check_summary(path: Path, inputs: dict[str, str], replace: bool, overwrite: bool) -> None:
    """Before any work: the summary CSV ``path`` must end in .csv, be none of ``inputs`` (``{path: role}``: images,
    cases CSVs, models, outputs), and be writable: new, or replaced with ``overwrite``, or with ``replace``
    (``--skip-existing``, which continues a batch) when it is a summary of ours."""
    if path.suffix.lower() != ".csv":
        raise UserError(f"--summary {path}: the summary is a CSV file; give a name ending in .csv")
    key = _key(path)
    for other, role in inputs.items():
        if _key(other) == key:
            raise UserError(f"the summary {path} is the {role}: give --summary another name, such as summary.csv in "
                            "the output folder")
    if replace and path.is_file() and not overwrite:
        try:
            with open(path, encoding="utf-8-sig", newline="") as file:
                header = next(csv.reader(file), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            header = []
        if tuple(header) != SUMMARY_COLUMNS:
            raise UserError(f"{path} exists and is no summary of a hyperspace batch: choose another --summary name")
        check_writable(path, overwrite=True)
        return
    check_writable(path, overwrite)


def _key(path: str | os.PathLike) -> str:
    """A path as the file system compares it: absolute, links resolved, normalised (and without case on Windows)."""
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


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


def write_summary(rows: Iterable[dict], path: str | os.PathLike, overwrite: bool) -> Path:
    """Write the summary CSV (atomically): one row per case, the columns of ``SUMMARY_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    with atomic_output(path, overwrite) as temporary, open(temporary, "w", encoding="utf-8", newline="") as file:
        file.write(buffer.getvalue())  # "\n" line ends on every system
    return Path(path)


def _cell(value: object) -> str:
    """A summary value as CSV text: numbers to 6 significant digits, a spacing as its values separated by spaces."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)
