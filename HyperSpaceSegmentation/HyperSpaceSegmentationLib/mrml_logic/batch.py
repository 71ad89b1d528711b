"""The scripted batch of the Slicer logic (``HyperSpaceMRMLLogic.segment_folder``, the batch script's work), without
Qt: the cases of a folder, the checks before any work, one engine batch process over them (``run_engine_batch``) or,
with uncertainty maps, each case through the scene (``segment_file``), and the scores of the results."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UserError
from .job import UNCERTAINTY_REFERENCE_ROLE
from .nodes import no_new_nodes
from .process import END_TIMEOUT_S, ENGINE_MODULE, ERROR_PREFIX, end_process_tree, launch, process_events, \
    temporary_folder
from .request import SegmentationRequest

VOLUME_SUFFIXES = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")  # what segment_folder reads
SEGMENTATION_SUFFIXES = (".seg.nrrd", *VOLUME_SUFFIXES)  # references: Slicer segmentations or label maps


@dataclass
class BatchResult:
    """The outcome of ``segment_folder``: cases done, cases failed (with why) and the results.csv written."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results_csv: Path | None = None

    @property
    def exit_code(self) -> int:
        """0: every case done; 1: some failed; 2: none done."""
        return 0 if not self.failed else (1 if self.done else 2)


def case_files(folder: str | os.PathLike, suffixes: Sequence[str]) -> dict[str, Path]:
    """The files of ``folder`` (the engine's ``folder_entries``: hidden ones left out) whose extension (the engine's
    ``extension``: ``.seg.nrrd`` and ``.nii.gz`` whole) is one of ``suffixes``, by case id (the engine's
    ``case_id``), sorted; a folder with none is a ``UserError``."""
    from ..inference.cases import case_id, folder_entries
    from ..io.images import extension

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the folder that holds the files")
    files: dict[str, Path] = {}
    for path in folder_entries(folder, lambda p: extension(p) in suffixes and p.is_file()):
        case = case_id(path)
        if case in files:
            raise UserError(f"{folder} has two files for case {case!r} ({files[case].name}, {path.name}): keep one")
        files[case] = path
    if not files:
        raise UserError(f"{folder} holds no file ending in {', '.join(suffixes)}")
    return files


def segment_folder(python: str, request: SegmentationRequest, inputFolder: str | os.PathLike,
                   outputFolder: str | os.PathLike, *, load_model: Callable[[Any, str], Any],
                   segment_volume: Callable[[Any], Any], referenceFolder: str | os.PathLike | None, tolerance: float,
                   overwrite: bool, log: Callable[[str], Any]) -> BatchResult:
    """``HyperSpaceMRMLLogic.segment_folder`` (see there) with the settings of ``request``, the engine run by
    ``python``; ``load_model`` reads a model (the logic's cache), ``segment_volume`` segments a volume node with
    ``request`` (the uncertainty path)."""
    from ..io.images import check_writable
    from ..io.outputs import output_folder

    engine_words = request.engine_words(None, load_model)  # settings checked before any work
    inputs = case_files(inputFolder, VOLUME_SUFFIXES)
    references = case_files(referenceFolder, SEGMENTATION_SUFFIXES) if referenceFolder is not None else {}
    with output_folder(outputFolder, "outputFolder") as output:  # one line if it cannot be a folder
        results_csv = output / "results.csv"
        if referenceFolder is not None:
            check_writable(results_csv, overwrite)  # before any work
        targets = {case: [output / f"{case}.seg.nrrd", *([output / f"{case}_uncertainty.nrrd"]
                                                        if request.uncertainty else [])] for case in inputs}
        outcome = _unusable_cases(inputs, targets, overwrite)  # case: None (done) or why it failed
        todo = {case: path for case, path in inputs.items() if case not in outcome}
        if request.uncertainty:  # the engine's batch writes no uncertainty maps: through the scene, case by case
            for case, path in todo.items():
                try:
                    segment_file(case, path, targets[case], overwrite, segment_volume)
                    outcome[case] = None
                except (UserError, RuntimeError, OSError) as error:
                    outcome[case] = str(error)
        elif todo:
            outcome.update(run_engine_batch(python, engine_words, todo, {case: targets[case][0] for case in todo},
                                            overwrite))
        return _report(outcome, targets, references, referenceFolder=referenceFolder, results_csv=results_csv,
                       tolerance=tolerance, overwrite=overwrite, log=log)


def _unusable_cases(inputs: dict[str, Path], targets: dict[str, list[Path]], overwrite: bool) -> dict[str, str]:
    """The cases that cannot be done, with why: an output that cannot be written, or a file that is no image."""
    import SimpleITK as sitk

    from ..io.images import check_output_path

    outcome = {}
    for case, path in inputs.items():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            for written in targets[case]:
                check_output_path(written, overwrite)
            try:
                reader.ReadImageInformation()  # a clear message, before any reader prints errors
            except RuntimeError:
                raise UserError(f"{path.name} is not a readable image file") from None
        except (UserError, OSError) as error:
            outcome[case] = str(error)
    return outcome


def _report(outcome: dict[str, str | None], targets: dict[str, list[Path]], references: dict[str, Path], *,
            referenceFolder: Any, results_csv: Path, tolerance: float, overwrite: bool,
            log: Callable[[str], Any]) -> BatchResult:
    """Log each case's outcome (in the order of ``targets``), score the cases done that have a reference into
    ``results_csv``; the result."""
    from ..evaluation import DEFAULT_METRICS, evaluate_batch, write_results_csv

    result, cases = BatchResult(), []
    for case in targets:
        if outcome[case] is not None:
            result.failed[case] = outcome[case]
            log(f"{case}: failed, skipped: {outcome[case]}")
            continue
        result.done.append(case)
        log(f"{case}: wrote {', '.join(map(str, targets[case]))}")
        if case in references:
            cases.append({"id": case, "mask": str(references[case]), "prediction": str(targets[case][0])})
        elif referenceFolder is not None:
            log(f"{case}: no reference named {case} in {referenceFolder}: not scored")
    if cases:
        rows = evaluate_batch(cases, None, DEFAULT_METRICS, tolerance)
        for row in rows:
            if "error" in row:
                log(f"{row['id']}: not scored: {row['error']}")
        result.results_csv = write_results_csv(rows, results_csv, overwrite)
        log(f"wrote {results_csv}")
    return result


def segment_file(case: str, path: Path, targets: Sequence[Path], overwrite: bool,
                 segment_volume: Callable[[Any], Any]) -> None:
    """Read one volume file into the scene, segment it with ``segment_volume`` (a segmentation node, with its
    uncertainty volume when asked), write the segmentation (and the uncertainty volume) to ``targets``, all or none,
    and remove the nodes again."""
    import slicer

    from ..io.images import atomic_output

    scene = slicer.mrmlScene
    with no_new_nodes():  # the scene is left as it was, display and colour nodes included
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(case))
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetSingleFile(True)  # not a numbered series with the folder's other files
        if not storage.ReadData(volume):
            raise UserError(f"{path.name} could not be read as a volume")
        segmentation = segment_volume(volume)
        nodes = [segmentation, segmentation.GetNodeReference(UNCERTAINTY_REFERENCE_ROLE)]  # None without a map
        writers = [slicer.vtkMRMLSegmentationStorageNode(), slicer.vtkMRMLVolumeArchetypeStorageNode()]
        with contextlib.ExitStack() as outputs:  # never a half-written file at a target
            for node, writer, target in zip(nodes, writers, targets):
                writer.SetFileName(str(outputs.enter_context(atomic_output(target, overwrite))))
                if not writer.WriteData(node):
                    raise UserError(f"{target} could not be written: check the free space of its folder")


def run_engine_batch(python: str, options: list[str], cases: dict[str, Path], targets: dict[str, Path],
                     overwrite: bool) -> dict[str, str | None]:
    """Run one engine batch (``hyperspace segment`` with ``options``, by ``python``) over ``cases`` (``{id: scan}``)
    and copy each case's ``.seg.nrrd`` to ``targets[id]`` (atomically). Returns ``{id: None (done) or why it
    failed}``, from the batch's summary. Slicer's window stays responsive; an interruption ends the engine's process
    tree; the temporary folder is removed in every case."""
    folder = Path(temporary_folder())
    try:
        with open(folder / "cases.csv", "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["id", "image"])
            writer.writerows([case, str(Path(path).resolve())] for case, path in cases.items())
        summary, output = folder / "summary.csv", folder / "log.txt"
        code = _run_logged([python, "-m", ENGINE_MODULE, "segment", str(folder / "cases.csv"), "-o",
                            str(folder / "out"), "--output-suffix", ".seg.nrrd", "--summary", str(summary), "--quiet",
                            *options], folder, output)
        rows = {}
        if summary.is_file():
            with open(summary, encoding="utf-8", newline="") as file:
                rows = {row["id"]: row for row in csv.DictReader(file)}
        text = output.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line[len(ERROR_PREFIX):] for line in text if line.startswith(ERROR_PREFIX)]
        stopped = errors[-1] if errors else f"the engine stopped (exit code {code}): " + (
            text[-1] if text else "no output")
        return {case: _copy_result(rows.get(case), target, stopped, overwrite) for case, target in targets.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_logged(command: list[str], folder: Path, log_path: Path) -> int:
    """Run ``command`` in ``folder`` to its end, its output written to ``log_path``, Slicer's window responsive;
    returns its exit code. An interruption ends its process tree."""
    with open(log_path, "w", encoding="utf-8") as log:
        process = launch(command, str(folder))
        reader = threading.Thread(target=lambda: log.writelines(process.stdout), daemon=True)
        reader.start()
        try:
            while process.poll() is None:
                process_events()
                time.sleep(0.1)
        finally:
            end_process_tree(process)
            reader.join(timeout=END_TIMEOUT_S)
    return process.returncode


def _copy_result(row: dict | None, target: Path, stopped: str, overwrite: bool) -> str | None:
    """Copy a case's result (its summary ``row``, None when the batch stopped before it: ``stopped``) to ``target``;
    None when done, else why not."""
    from ..io.images import atomic_output

    if row is None:
        return stopped
    if row["status"] != "done":
        return row.get("error") or row["status"]
    try:
        with atomic_output(target, overwrite) as partial:  # never a half-written file at a target
            shutil.copyfile(row["output"], partial)
        return None
    except (OSError, UserError) as error:
        return f"{target} could not be written ({error}): check the free space of its folder"
