"""The Slicer module's logic and scripting API on MRML nodes, without Qt: it runs in 3D Slicer and on Kitware's
``slicer-core`` wheel.

``segment`` writes the volume to a temporary file (its own grid; a parent transform is not hardened: the result
goes under the same transform), runs ``hyperspace segment`` in a background process (``pythonExecutable``:
PythonSlicer in Slicer; by default the session's warm engine, a worker that keeps models and networks loaded between
runs; the job's life cycle is in ``mrml_job``) and reads the ``.seg.nrrd`` it writes into a new
segmentation node; in 2D mode, slice by slice across one of the volume's IJK axes, or only the slice a slice view
shows (``slice_in_view``). ``evaluate`` scores two segmentation nodes with the engine's metrics into a table node;
``largest_disagreement_slice`` moves a slice view to where they differ most; every call leaves the scene with only
the nodes it promises. ``slicer``, ``vtk`` and the engine's torch-based parts are imported inside the functions, so
that this file imports without Slicer, and in Slicer before the module installs its dependencies. Nothing here opens
a dialog.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UserError
from .models import describe, embedded_model, ensemble_member
from .mrml_job import (  # noqa: F401  (the job and its names, re-exported: imports from mrml_logic keep working)
    ENGINE_PARENT, ERROR_PREFIX, HEAT_MAP_COLORS, UNCERTAINTY_REFERENCE_ROLE, GpuProbe, SegmentationJob,
    temporary_folder, warm_engine,
)

VOLUME_SUFFIXES = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")  # what segment_folder reads
SEGMENTATION_SUFFIXES = (".seg.nrrd", *VOLUME_SUFFIXES)  # references: Slicer segmentations or label maps
MODES = ("3d", "2d")
IJK = "IJK"
POSTPROCESSING_KEYS = ("remove_smaller_than", "largest_component", "fill_holes")
VIEW_ALIGNMENT_TOLERANCE_RAD = 1e-3
"""The largest angle between a slice view's normal and the normal of a volume axis's slices at which the view still
shows those slices. Header round-off (direction cosines stored to 6 decimals, or in float32) is 1e-6 rad or less, and
Slicer's "Rotate to volume plane" aligns a view to rounding; a tilt of 1e-3 rad (0.06 degrees) moves the plane by
0.25 mm across a 250 mm field of view, a fraction of a slice, while a view turned on purpose is far beyond it."""


def python_slicer_executable() -> str | None:
    """Slicer's ``PythonSlicer`` (on the PATH in Slicer, or next to this interpreter), or None outside Slicer."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    return str(beside) if beside.is_file() else None


@dataclass(frozen=True)
class SpacingEstimate:
    """What a run at a spacing would work on: spacings in mm along the network's axes ``axes`` (x, y, z after
    reorientation to LPS, as the command line's ``--spacing``; in 2D mode the slice plane's two, such as ``PS``), the
    working grid (in 2D, of each slice), the slices segmented (1 in 3D), the estimated memory need and what the
    device has free."""

    native: tuple[float, ...]
    spacing: tuple[float, ...]
    grid: tuple[int, ...]
    memory_mb: float
    available_mb: float
    notes: list[str] = field(default_factory=list)
    axes: str = "LPS"
    slices: int = 1

    @property
    def voxels(self) -> int:
        """The working voxels over every slice segmented."""
        return math.prod(self.grid) * self.slices


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


class HyperSpaceMRMLLogic:
    """Segment volume nodes and review segmentations on ``slicer.mrmlScene`` (the scripting API of the extension)."""

    def __init__(self) -> None:
        self.pythonExecutable = python_slicer_executable() or sys.executable  # PythonSlicer inside Slicer
        self.warmEngine = True  # segment() in the session's engine worker; False: one engine process per run
        self._models: dict[str, Any] = {}
        self._grids: dict[tuple, Any] = {}
        self._gpu: GpuProbe | None = None  # asks about the GPU in a separate process (estimate)

    def engine(self) -> Any:
        """The session's warm engine for ``pythonExecutable`` (``mrml_job.WarmEngine``; shared by every logic)."""
        return warm_engine(self.pythonExecutable)

    def stop_engine(self) -> None:
        """End the warm engine's worker (the next ``segment`` starts a new one); Slicer's exit does it too."""
        self.engine().stop(grace=2.0)

    def segment_folder(self, inputFolder: str | os.PathLike, outputFolder: str | os.PathLike,
                       spacing: str | float | Sequence[float | str] = "native",
                       model: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                       device: str = "auto", referenceFolder: str | os.PathLike | None = None, tolerance: float = 1.0,
                       overwrite: bool = False, log: Any = print, tta: bool | Sequence[int] | None = None,
                       uncertainty: bool = False, postprocessing: dict | None = None) -> BatchResult:
        """Segment every volume file of ``inputFolder`` into ``outputFolder/CASE.seg.nrrd`` with ``segment``'s
        options (``model`` a list of files: an ensemble; ``tta``, ``postprocessing``), in one engine process (the
        command line's batch: the model loaded once, the next scan read while one is predicted); with
        ``uncertainty``, also ``CASE_uncertainty.nrrd`` (0 to 1, on the case's grid), one case at a time through the
        scene. Every option is checked before any work. With ``referenceFolder`` (a segmentation or label map per
        case, same case name), score the results into one MIST ``results.csv`` in ``outputFolder`` with the engine's
        evaluation. A case that fails is reported through ``log`` and skipped; the scene is left as it was."""
        import SimpleITK as sitk

        from .evaluation import DEFAULT_METRICS, evaluate_batch, write_results_csv
        from .io.images import check_output_path, check_writable
        from .mrml_job import run_engine_batch

        words = _spacing_words(spacing, None, None)  # settings checked before any work
        options = {"model": _model_paths(model), "tta": tta, "uncertainty": uncertainty,
                   "postprocessing": postprocessing}
        review = self._review_words(options["model"], "3d", tta, postprocessing)
        inputs = _case_files(inputFolder, VOLUME_SUFFIXES)
        references = _case_files(referenceFolder, SEGMENTATION_SUFFIXES) if referenceFolder is not None else {}
        output = Path(outputFolder)
        output.mkdir(parents=True, exist_ok=True)
        results_csv = output / "results.csv"
        if referenceFolder is not None:
            check_writable(results_csv, overwrite)  # before any work
        outcome, targets = {}, {}  # case: None (done) or why it failed; case: its output files
        for case, path in inputs.items():
            maps = [output / f"{case}_uncertainty.nrrd"] if uncertainty else []
            targets[case] = [output / f"{case}.seg.nrrd", *maps]
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
        todo = {case: path for case, path in inputs.items() if case not in outcome}
        if uncertainty:  # the engine's batch writes no uncertainty maps: through the scene, case by case
            for case, path in todo.items():
                try:
                    self._segment_file(case, path, targets[case], spacing, device, overwrite, options)
                    outcome[case] = None
                except (UserError, RuntimeError, OSError) as error:
                    outcome[case] = str(error)
        elif todo:
            engine_options = ["--spacing", *words, "--device", device, *review,
                              *(["--model", *(str(p.resolve()) for p in options["model"])] if options["model"] else [])]
            outcome.update(run_engine_batch(self.pythonExecutable, engine_options, todo,
                                            {case: targets[case][0] for case in todo}, overwrite))
        result, cases = BatchResult(), []
        for case in inputs:
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

    def _segment_file(self, case: str, path: Path, targets: Sequence[Path], spacing: Any, device: str,
                      overwrite: bool, options: dict) -> None:
        """Read one volume file into the scene, segment it with ``segment``'s ``options``, write the segmentation
        (and the uncertainty volume, when asked) to ``targets``, all or none, and remove the nodes again."""
        import slicer

        from .io.images import atomic_output

        scene = slicer.mrmlScene
        with _no_new_nodes():  # the scene is left as it was, display and colour nodes included
            volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(case))
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(str(path))
            storage.SetSingleFile(True)  # not a numbered series with the folder's other files
            if not storage.ReadData(volume):
                raise UserError(f"{path.name} could not be read as a volume")
            segmentation = self.segment(volume, spacing, device=device, **options)
            nodes = [segmentation, segmentation.GetNodeReference(UNCERTAINTY_REFERENCE_ROLE)]  # None without a map
            writers = [slicer.vtkMRMLSegmentationStorageNode(), slicer.vtkMRMLVolumeArchetypeStorageNode()]
            with contextlib.ExitStack() as outputs:  # never a half-written file at a target
                for node, writer, target in zip(nodes, writers, targets):
                    writer.SetFileName(str(outputs.enter_context(atomic_output(target, overwrite))))
                    if not writer.WriteData(node):
                        raise UserError(f"{target} could not be written: check the free space of its folder")

    def model_facts(self, model: str | os.PathLike | None = None, mode: str = "3d") -> dict:
        """What ``hyperspace info --json`` says about ``model`` (default: the embedded model of ``mode``, "3d" or
        "2d"): labels, spacing range, dimensions, ..."""
        return describe(self._model(model, mode), Path(model or embedded_model(mode)))

    def estimate(self, volumeNode: Any, spacing: str | float | Sequence[float | str] = "native",
                 model: str | os.PathLike | None = None, device: str = "auto",
                 max_voxels: float | None = None, input_spacing: Sequence[float] | None = None, mode: str = "3d",
                 axis: int = 2, slice_index: int | None = None) -> SpacingEstimate:
        """The working spacing, grid and memory need of segmenting ``volumeNode`` at ``spacing`` (as ``segment``,
        ``input_spacing``, ``mode``, ``axis`` and ``slice_index`` too; a time budget is left out: it needs a network
        run), with the engine's notes (a spacing outside the trained range). In 2D mode the spacings and grid are
        those of each slice, in the slice plane. Runs no network: fast enough to follow a slider. The windows are
        planned, and ``available_mb`` given, for the device the job will run on (``device``; ``auto`` is the GPU when
        the engine finds one), asked about in a separate process: NaN, with a note, until its answer is in."""
        from .geometry import with_spacing
        from .inference import Segmenter, Slices, SpacingRequest, parse_spacing
        from .inference.segmenter import MEMORY_SHARE

        _check_scan(volumeNode, "estimate")
        request = parse_spacing(_spacing_words(spacing, max_voxels, None))
        request = SpacingRequest(request.mode, request.values, max_voxels)
        _mode_words(mode, axis, slice_index, volumeNode.GetImageData().GetDimensions())
        loaded = self._model(model, mode)
        needed = 2 if mode == "2d" else 3
        if loaded.dim != needed:
            raise UserError(f"{Path(model or embedded_model(mode)).name} is a {loaded.dim}D model and mode "
                            f"\"{mode}\" needs a {needed}D one: pick a {needed}D model, or None for the embedded one")
        image = self._grid(volumeNode)
        if input_spacing is not None:
            image = with_spacing(image, input_spacing, "input_spacing")
        available, notes = self._free_memory_mb(device)
        segmenter = Segmenter(loaded, device="cpu", slices=Slices(axis, slice_index) if mode == "2d" else Slices(),
                              max_memory_mb=MEMORY_SHARE * available if math.isfinite(available) else None)
        choice = segmenter.choose_spacing(image, request)  # windows planned for the memory of the job's device
        view = segmenter.view(image)
        return SpacingEstimate(
            native=view.spacing, spacing=tuple(choice.spacing), grid=segmenter.working_size(image, choice.spacing),
            memory_mb=segmenter.estimate_memory_mb(image, choice.spacing), available_mb=available,
            notes=[*choice.notes, *notes], axes=view.axes, slices=view.slices)

    def _free_memory_mb(self, device: str) -> tuple[float, list[str]]:
        """The memory free on the device that a job with ``device`` would run on (MB; NaN while unknown) and notes.
        The GPU is asked about in a separate process (``GpuProbe``): CUDA never starts in Slicer's process."""
        import psutil

        if device not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
        cpu = psutil.virtual_memory().available / 2**20
        if device == "cpu":
            return cpu, []
        if self._gpu is None or self._gpu.executable != self.pythonExecutable:
            self._gpu = GpuProbe(self.pythonExecutable)
        answer = self._gpu.result()
        if answer is None:
            return math.nan, ["The GPU's free memory is being checked (in a separate process)."]
        if "error" in answer:
            return math.nan, [f"The GPU could not be checked ({answer['error']}); the job checks its memory itself."]
        if answer["cuda"]:
            return float(answer["free_mb"]), []
        if device == "cuda":
            raise UserError("device cuda was asked for but no CUDA GPU is available: use cpu or auto")
        return cpu, []  # auto without a GPU: the CPU

    def _model(self, model: str | os.PathLike | None, mode: str = "3d") -> Any:
        """The model file (default: the embedded model of ``mode``), loaded once per path."""
        from .io.model_file import load_model

        path = Path(model or embedded_model(mode)).resolve()
        if not path.is_file():
            raise UserError(f"model file {path} does not exist: pick an existing model file")
        key = f"{path}:{path.stat().st_mtime_ns}"
        if key not in self._models:
            self._models = {key: load_model(path)}
        return self._models[key]

    def _grid(self, volumeNode: Any) -> Any:
        """An empty image (one byte per voxel) on the volume's grid, in LPS; kept while the grid is the same."""
        matrix = _ijk_to_ras(volumeNode)
        key = (volumeNode.GetImageData().GetDimensions(), tuple(matrix.ravel()))
        if key not in self._grids:
            self._grids = {key: _grid_image(volumeNode.GetImageData().GetDimensions(), matrix)}
        return self._grids[key]

    def segment(self, volumeNode: Any, spacing: str | float | Sequence[float | str] = "native",
                model: str | os.PathLike | Sequence[str | os.PathLike] | None = None, device: str = "auto",
                wait: bool = True, max_voxels: float | None = None, max_seconds: float | None = None,
                input_spacing: Sequence[float] | None = None, mode: str = "3d", axis: int = 2,
                slice_index: int | None = None, tta: bool | Sequence[int] | None = None, uncertainty: bool = False,
                postprocessing: dict | None = None, restrict_to: tuple[Any, str] | None = None) -> Any:
        """Segment ``volumeNode`` with ``model`` (default: the embedded model of ``mode``) at ``spacing`` ("native",
        "auto", one value in mm, or one per axis as on the command line: x y z, in 2D the slice plane's two) and
        return a new ``vtkMRMLSegmentationNode`` on the volume's grid, next to it in the subject hierarchy; with
        ``wait=False``, a ``SegmentationJob``. ``max_voxels`` and ``max_seconds`` are the budgets of
        ``spacing="auto"`` (``--max-voxels``, ``--max-seconds``); ``input_spacing`` (mm, per volume axis I, J, K)
        replaces a wrong or missing spacing for the work only. ``mode="2d"`` segments slice by slice across the
        volume's IJK ``axis`` (0, 1, 2), or only the slice ``slice_index`` (0-based along ``axis``; the others stay
        empty), with a 2D model (``--mode 2d``).

        ``model`` may be a list of model files: an ensemble (``--model A B``). ``tta``: None or False (off), True
        (flips of every axis) or a sequence of axes (``--tta AXIS ...``: 0 L-R, 1 P-A, 2 S-I; in 2D 0 and 1).
        ``uncertainty=True`` also loads the normalised entropy (``--uncertainty``, 0 to 1) into a new scalar volume
        node "<volume> uncertainty" on the volume's grid (heat-map colours, window 0 to 1): ``job.uncertainty``, and
        the segmentation's node reference ``UNCERTAINTY_REFERENCE_ROLE``. ``postprocessing`` is a dict with any of
        ``"remove_smaller_than"``: MM3, or (MM3, labels), or a list of such pairs; ``"largest_component"`` and
        ``"fill_holes"``: True (every class) or a sequence of label values (see ``postprocessing_words``).
        ``restrict_to``: ``(segmentation node, segment name)``, such as a brain mask: the result is background outside
        that segment (``--mask``); an empty name means the node's first segment."""
        import slicer

        _check_scan(volumeNode, "segment")
        mask = _segment_mask(restrict_to, volumeNode) if restrict_to is not None else None
        words = _spacing_words(spacing, max_voxels, max_seconds)  # the command line's own checks, before any work
        mode_words = _mode_words(mode, axis, slice_index, volumeNode.GetImageData().GetDimensions())
        models = _model_paths(model)
        extra = self._review_words(models, mode, tta, postprocessing)
        folder = temporary_folder()  # under Slicer's temporary path in Slicer
        try:
            source, output = os.path.join(folder, "input.nrrd"), os.path.join(folder, "result.seg.nrrd")
            uncertainty_file = os.path.join(folder, "uncertainty.nrrd") if uncertainty else None
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(source)
            storage.SetUseCompression(False)
            if not storage.WriteData(volumeNode):
                raise UserError(f"volume {volumeNode.GetName()} could not be written to {folder}: free disk space there")
            command = [self.pythonExecutable, "-m", "HyperSpaceSegmentationLib.cli", "segment", source, "-o", output,
                       "--spacing", *words, "--device", device, "--progress-lines", *mode_words]
            for option, value in (("--max-voxels", max_voxels), ("--max-seconds", max_seconds)):
                if value is not None:
                    command += [option, repr(float(value))]
            if models:
                command += ["--model", *(str(path.resolve()) for path in models)]
            if input_spacing is not None:
                command += ["--input-spacing", *(repr(float(v)) for v in input_spacing)]
            if uncertainty_file is not None:
                command += ["--uncertainty", uncertainty_file]
            if mask is not None:
                command += ["--mask", _write_mask(mask, volumeNode, os.path.join(folder, "mask.nrrd"))]
            job = SegmentationJob(command + extra, folder, output, volumeNode, uncertainty_file,
                                  engine=self.engine() if self.warmEngine else None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job.wait() if wait else job

    def _review_words(self, models: Sequence[Path], mode: str, tta: Any, postprocessing: dict | None) -> list[str]:
        """``segment``'s ``tta`` and ``postprocessing`` as the command line's words, checked with the ensemble
        ``models`` before any process starts: one-line ``UserError``s, and an ensemble's models must have the first
        one's dimensions and labels (the command line's own rule)."""
        words = _tta_words(tta, mode)
        if postprocessing is not None and not isinstance(postprocessing, dict):
            raise UserError(f"postprocessing {postprocessing!r}: give a dict such as {{\"largest_component\": True}}")
        if len(models) > 1 or postprocessing:
            first = self._model(models[0] if models else None, mode)
            for path in models[1:]:
                ensemble_member(str(path), first, str(models[0]))
            if postprocessing:
                words += postprocessing_words(postprocessing, first.labels)
        return words

    def show_uncertainty_above(self, uncertaintyNode: Any, threshold: float) -> None:
        """Show only the voxels of ``uncertaintyNode`` (a scalar volume of 0 to 1, such as ``segment``'s
        uncertainty) whose value is ``threshold`` (0 to 1) or more: its display node's threshold becomes
        ``threshold`` to 1, so the other voxels are transparent over the input."""
        if (uncertaintyNode is None or not uncertaintyNode.IsA("vtkMRMLScalarVolumeNode")
                or uncertaintyNode.GetImageData() is None):
            raise UserError("select an uncertainty volume node (segment with uncertainty=True)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
                or not 0 <= threshold <= 1:
            raise UserError(f"threshold {threshold!r}: give an uncertainty from 0 to 1")
        if uncertaintyNode.GetDisplayNode() is None:
            uncertaintyNode.CreateDefaultDisplayNodes()
        display = uncertaintyNode.GetDisplayNode()
        display.SetLowerThreshold(float(threshold))
        display.SetUpperThreshold(1.0)
        display.SetApplyThreshold(1)

    def slice_in_view(self, volumeNode: Any, sliceNode: Any) -> tuple[int, int]:
        """The volume's IJK axis (0, 1, 2) across which the slice view ``sliceNode`` cuts it, and the index of the
        slice it shows: ``segment``'s ``axis`` and ``slice_index``. Works in world space (the volume's IJK-to-RAS
        and linear parent transforms applied; oblique, flipped and permuted grids included). A view more than
        ``VIEW_ALIGNMENT_TOLERANCE_RAD`` off every volume axis, or placed outside the volume, is a ``UserError``."""
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.GetImageData() is None:
            raise UserError("select a scalar volume node with image data")
        if sliceNode is None or not sliceNode.IsA("vtkMRMLSliceNode"):
            raise UserError("select a slice view (Red, Yellow or Green)")
        view = sliceNode.GetLayoutName() or sliceNode.GetName()
        ijk_to_world = _ijk_to_world(volumeNode)
        world_to_ijk = np.linalg.inv(ijk_to_world)
        slice_to_ras = _array(sliceNode.GetSliceToRAS())
        normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
        gradients = world_to_ijk[:3, :3]  # row a: the normal of the planes where index a is constant
        angles = np.arctan2(np.linalg.norm(np.cross(gradients, normal), axis=1), np.abs(gradients @ normal))
        axis = int(np.argmin(angles))
        if angles[axis] > VIEW_ALIGNMENT_TOLERANCE_RAD:
            raise UserError(f"the {view} view is turned {math.degrees(angles[axis]):.2g} degrees off the slices of "
                            f"{volumeNode.GetName()}: align it with the view's \"Rotate to volume plane\" action")
        dimensions = volumeNode.GetImageData().GetDimensions()
        centre = ijk_to_world[:3] @ np.append((np.array(dimensions) - 1) / 2, 1.0)
        on_plane = centre - ((centre - slice_to_ras[:3, 3]) @ normal) * normal  # the plane's point nearest the centre
        position = float((world_to_ijk[:3] @ np.append(on_plane, 1.0))[axis])
        index = math.floor(position + 0.5)
        if not 0 <= index < dimensions[axis]:
            raise UserError(f"the {view} view lies outside {volumeNode.GetName()} (at slice {position:.1f} along "
                            f"{IJK[axis]}, which has slices 0 to {dimensions[axis] - 1}): move it into the volume")
        return axis, index

    def evaluate(self, referenceSegmentationNode: Any, predictionSegmentationNode: Any, tolerance: float = 1.0) -> Any:
        """Score the prediction against the reference, segments matched by name, on the reference's grid, with
        every metric of the engine; returns a new ``vtkMRMLTableNode``: one row per matched segment, one column per
        metric (title, unit and description set), and which masks were empty."""
        import slicer
        import vtk

        from .evaluation import DEFAULT_METRICS, METRICS, evaluate_pair
        from .evaluation.labels import ClassSpec

        given = tolerance
        try:
            tolerance = math.nan if isinstance(tolerance, bool) else float(tolerance)  # "1" from a text field: 1 mm
        except (TypeError, ValueError):
            tolerance = math.nan
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise UserError(f"tolerance {given!r}: give a surface-Dice tolerance of 0 mm or more")
        names = _matched_names(referenceSegmentationNode, predictionSegmentationNode)
        with _no_new_nodes():
            reference, prediction, _ = _on_reference_grid(referenceSegmentationNode, predictionSegmentationNode, names)
        row = evaluate_pair(reference, prediction, [ClassSpec(n, segment=n) for n in names], DEFAULT_METRICS,
                            tolerance)
        scene = slicer.mrmlScene
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(
            f"{predictionSegmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}"))
        columns = [("segment", vtk.vtkStringArray(), "Segment", "", "segment name", names)]
        for metric in DEFAULT_METRICS:
            spec = METRICS[metric]
            title = spec.description[0].upper() + spec.description[1:] + (f" [{spec.unit}]" if spec.unit else "")
            values = [float(row[f"{n}_{metric}"]) for n in names]
            columns.append((metric, vtk.vtkDoubleArray(), title, spec.unit, spec.description, values))
        columns.append(("empty", vtk.vtkStringArray(), "Empty", "", "empty masks: none, both, reference or prediction",
                        [str(row[f"{n}_empty"]) for n in names]))
        for name, array, title, unit, description, values in columns:
            array.SetName(name)
            for value in values:
                array.InsertNextValue(value)
            table.AddColumn(array)
            table.SetColumnTitle(name, title)
            table.SetColumnUnitLabel(name, unit)
            table.SetColumnDescription(name, description)
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetAttribute("HyperSpace.tolerance_mm", f"{tolerance:g}")
        return table

    def largest_disagreement_slice(self, referenceSegmentationNode: Any, predictionSegmentationNode: Any,
                                   segmentName: str, sliceNode: Any, rank: int = 0) -> tuple[float, float, float]:
        """Move ``sliceNode`` to the slice (of the reference grid, across the view's normal) where the segment
        named ``segmentName`` differs most between reference and prediction; ``rank`` 1 is the next worst, and so
        on. The view is centred on the differing voxels of that slice, whose centre (RAS, world) is returned."""
        names = _matched_names(referenceSegmentationNode, predictionSegmentationNode)
        if segmentName not in names:
            raise UserError(f"no segment named {segmentName!r} in both segmentations (both have: {', '.join(names)})")
        if rank < 0:
            raise UserError(f"rank {rank}: give 0 for the worst slice, 1 for the next, ...")
        import slicer
        import vtk

        with _no_new_nodes():
            reference, prediction, geometry = _on_reference_grid(referenceSegmentationNode, predictionSegmentationNode,
                                                                 [segmentName])
            ijk_to_ras = _ijk_to_ras(geometry)
            to_world = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(geometry.GetParentTransformNode(), None, to_world)
        difference = reference.segments[segmentName] ^ prediction.segments[segmentName]
        return _jump_to_ranked_slice(difference, ijk_to_ras, to_world, sliceNode, rank, lambda count: (
            f"segment {segmentName!r}: reference and prediction differ on {count} slices, so there is no slice of "
            f"rank {rank}"))

    def most_uncertain_slice(self, uncertaintyNode: Any, sliceNode: Any, rank: int = 0) -> tuple[float, float, float]:
        """Move ``sliceNode`` to the slice (of the uncertainty volume's grid, across the view's normal) with the
        largest summed uncertainty; ``rank`` 1 is the next, and so on. The view is centred on that slice's uncertain
        region (its voxels of at least half the slice's largest uncertainty), whose centre (RAS, world) is returned."""
        if (uncertaintyNode is None or not uncertaintyNode.IsA("vtkMRMLScalarVolumeNode")
                or uncertaintyNode.GetImageData() is None):
            raise UserError("select an uncertainty volume node (segment with uncertainty=True)")
        if sliceNode is None or not sliceNode.IsA("vtkMRMLSliceNode"):
            raise UserError("select a slice view (Red, Yellow or Green)")
        if rank < 0:
            raise UserError(f"rank {rank}: give 0 for the most uncertain slice, 1 for the next, ...")
        import slicer
        import slicer.util
        import vtk

        values = np.asarray(slicer.util.arrayFromVolume(uncertaintyNode), dtype=np.float64)
        values = np.where(np.isfinite(values) & (values > 0), values, 0.0)
        to_world = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(uncertaintyNode.GetParentTransformNode(), None, to_world)
        return _jump_to_ranked_slice(values, _ijk_to_ras(uncertaintyNode), to_world, sliceNode, rank, lambda count: (
            f"{uncertaintyNode.GetName()} is above 0 on {count} slices, so there is no slice of rank {rank}"))


def _segment_mask(restrict_to: tuple[Any, str], volumeNode: Any) -> np.ndarray:
    """The voxels of ``volumeNode`` (array order k, j, i) inside the segment ``restrict_to = (node, name)``."""
    try:
        node, name = restrict_to
    except (TypeError, ValueError):
        raise UserError("restrict_to must be (segmentation node, segment name)") from None
    if node is None or not node.IsA("vtkMRMLSegmentationNode"):
        raise UserError("restrict the result to a segment of a segmentation node: select one, or none")
    segmentation = node.GetSegmentation()
    if not name and segmentation.GetNumberOfSegments():
        name = segmentation.GetSegment(segmentation.GetNthSegmentID(0)).GetName()
    segment_id = segmentation.GetSegmentIdBySegmentName(str(name))
    if not segment_id:
        names = ", ".join(_segment_names(node)) or "none"
        raise UserError(f"segmentation {node.GetName()} has no segment named {name!r} (segments: {names}): choose one")
    mask = _segment_array(node, segment_id, volumeNode) > 0
    if not mask.any():
        raise UserError(f"segment {name!r} of {node.GetName()} covers none of {volumeNode.GetName()}'s voxels: paint it, "
                        "or choose another segment")
    return mask


def _write_mask(mask: np.ndarray, volumeNode: Any, path: str) -> str:
    """``mask`` written as a label map on the grid of ``volumeNode`` (as the engine's input file); returns ``path``."""
    import SimpleITK as sitk

    grid = _grid_image(volumeNode.GetImageData().GetDimensions(), _ijk_to_ras(volumeNode))
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(grid)
    sitk.WriteImage(image, path, useCompression=True)
    return path


def _jump_to_ranked_slice(weights: np.ndarray, ijk_to_ras: np.ndarray, to_world: Any, sliceNode: Any, rank: int,
                          too_few: Any) -> tuple[float, float, float]:
    """Move ``sliceNode`` to the slice of ``weights`` (a (k, j, i) array of 0 or more on the grid of ``ijk_to_ras``,
    then ``to_world``), across the view's normal, with the ``rank``-th largest sum (0: the largest; slices summing
    to 0 never count: ``too_few(count)`` is the ``UserError`` message), centred on that slice's voxels of at least
    half its largest weight; returns that centre (RAS, world)."""
    directions = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    axis = 2 - int(np.argmax(np.abs(_slice_normal(sliceNode) @ directions)))  # arrays are (k, j, i)
    sums = weights.sum(axis=tuple(a for a in range(3) if a != axis))
    slices = [int(s) for s in np.argsort(-sums, kind="stable") if sums[s] > 0]
    if rank >= len(slices):
        raise UserError(too_few(len(slices)))
    plane = np.take(weights, slices[rank], axis=axis)
    kji = np.insert(np.argwhere(plane >= plane.max() / 2).mean(axis=0), axis, slices[rank])
    ras = to_world.TransformPoint(*(ijk_to_ras @ np.append(kji[::-1], 1.0))[:3])
    sliceNode.JumpSliceByCentering(*ras)
    return tuple(float(v) for v in ras)


def _model_paths(model: Any) -> list[Path]:
    """``segment``'s ``model`` (None, one file, or a list of files: an ensemble) as checked paths."""
    if model is None:
        return []
    paths = [Path(m) for m in ([model] if isinstance(model, (str, os.PathLike)) else list(model))]
    if not paths:
        raise UserError("model is an empty list: give one or more model files, or None for the embedded one")
    for path in paths:
        if not path.is_file():
            raise UserError(f"model file {path} does not exist: pick an existing model file, or None for the embedded one")
    return paths


def _tta_words(tta: Any, mode: str) -> list[str]:
    """``segment``'s ``tta`` (None or False: off; True: every axis; a sequence of axes) as the command line's words."""
    if tta is None or tta is False:
        return []
    if tta is True:
        return ["--tta"]
    axes = range(2 if mode == "2d" else 3)
    values = list(tta) if isinstance(tta, (list, tuple, range, np.ndarray)) else None
    if values is None or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a in axes
                                 for a in values):
        raise UserError(f"tta {tta!r}: give True (every axis), or a list of axes from {', '.join(map(str, axes))}")
    return ["--tta", *(str(int(a)) for a in values)]


def postprocessing_words(postprocessing: dict, model_labels: dict | None = None) -> list[str]:
    """``segment``'s ``postprocessing`` as the command line's words, checked (one-line ``UserError``s) and, with
    ``model_labels``, its labels checked against the model's. A dict with any of: ``"remove_smaller_than"``: MM3
    (every class), ``(MM3, labels)``, or a list of such pairs (``--remove-smaller-than MM3 LABEL ...``, once per
    pair); ``"largest_component"`` and ``"fill_holes"``: True (every class) or a sequence of label values
    (``--largest-component LABEL ...``, ``--fill-holes LABEL ...``); None or False leave a step out. A label may
    also be a class name of the model (any case), which needs ``model_labels``."""
    from .postprocessing import resolve_steps, steps_from_options

    if not isinstance(postprocessing, dict):
        raise UserError(f"postprocessing {postprocessing!r}: give a dict such as {{\"largest_component\": True}}")
    unknown = [key for key in postprocessing if key not in POSTPROCESSING_KEYS]
    if unknown:
        raise UserError(f"postprocessing {unknown[0]!r}: the steps are {', '.join(POSTPROCESSING_KEYS)}")

    def number(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UserError(f"postprocessing {what} {value!r}: give a number")
        return float(value)

    def named(name: str, key: str) -> float:
        values = [v for v, n in (model_labels or {}).items() if v != 0 and n.casefold() == name.strip().casefold()]
        if not values:
            known = ", ".join(n for v, n in sorted((model_labels or {}).items()) if v != 0) or "unknown without a model"
            raise UserError(f"postprocessing {key} {name!r} is not a class of the model; its classes are {known}")
        return float(values[0])

    def labels(value: Any, key: str) -> list[float]:
        if value is True:
            return []
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise UserError(f"postprocessing {key} {value!r}: give True (every class) or a list of label values "
                            "or class names")
        return [named(v, key) if isinstance(v, str) else number(v, f"{key} label") for v in value]

    removals = []
    value = postprocessing.get("remove_smaller_than")
    if value is not None and value is not False:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            pairs = [(value, True)]
        elif isinstance(value, (list, tuple)) and len(value) == 2 and not isinstance(value[0], (list, tuple)):
            pairs = [value]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(p, (list, tuple)) and len(p) == 2
                                                                 for p in value):
            pairs = list(value)
        else:
            raise UserError(f"postprocessing remove_smaller_than {value!r}: give MM3, (MM3, labels) or a list of "
                            "(MM3, labels) pairs")
        removals = [[number(size, "remove_smaller_than size"), *labels(chosen, "remove_smaller_than")]
                    for size, chosen in pairs]
    chosen = {key: labels(postprocessing[key], key) for key in ("largest_component", "fill_holes")
              if postprocessing.get(key) is not None and postprocessing.get(key) is not False}
    steps = steps_from_options(removals or None, chosen.get("largest_component"), chosen.get("fill_holes"))
    if model_labels is not None:
        resolve_steps(steps, model_labels)
    words = []
    for step in steps:
        words += [f"--{step.operation.replace('_', '-')}",
                  *([repr(float(step.min_volume_mm3))] if step.operation == "remove_smaller_than" else []),
                  *(str(label) for label in step.labels)]
    return words


def _segment_names(node: Any) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _matched_names(reference: Any, prediction: Any) -> list[str]:
    """The reference's segment names that the prediction also has, in the reference's order."""
    for node, role in ((reference, "reference"), (prediction, "prediction")):
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            raise UserError(f"select a segmentation node as the {role}")
    predicted = set(_segment_names(prediction))
    names = [name for name in _segment_names(reference) if name in predicted]
    if not names:
        raise UserError(f"{reference.GetName()} and {prediction.GetName()} have no segment name in common: rename the "
                        "segments so that matching ones have the same name")
    return names


def _on_reference_grid(reference: Any, prediction: Any, names: Sequence[str]):
    """The named segments of both nodes as engine ``Segmentation``s on the reference's grid (the extent of its
    reference geometry, else of its segments; the prediction resampled there by Slicer, transforms applied), and the
    label map node that holds the grid. An empty segment is all background. Call it inside ``_no_new_nodes()``."""
    import slicer

    from .evaluation.labels import Segmentation

    scene = slicer.mrmlScene
    geometry = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("hyperspace grid"))
    logic = slicer.modules.segmentations.logic()
    segmentation = reference.GetSegmentation()
    painted = any(not _is_empty(segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments()))
    if not (painted and logic.ExportAllSegmentsToLabelmapNode(reference, geometry,
                                                              slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)):
        serialized = segmentation.GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
        image = slicer.vtkOrientedImageData()
        if not serialized or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, image):
            raise UserError(f"{reference.GetName()} has no painted voxel and no reference geometry, so it has no grid: "
                            "paint its segments, or set its geometry from its scan (Segment Editor)")
        logic.CreateLabelmapVolumeFromOrientedImageData(image, geometry)
        geometry.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    grid = _grid_image(geometry.GetImageData().GetDimensions(), _ijk_to_ras(geometry))
    results = []
    for node in (reference, prediction):
        segments, values = {}, np.zeros(grid.GetSize()[::-1], np.int32)
        for name in names:
            segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
            mask = _segment_array(node, segment_id, geometry) > 0
            segments[name] = mask
            values[mask] = node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        results.append(Segmentation(grid, values, segments))
    return results[0], results[1], geometry


def _is_empty(segment: Any) -> bool:
    """Whether ``segment`` holds a binary label map with no extent (a segment added but never painted)."""
    import slicer

    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    return labelmap is not None and labelmap.IsEmpty()


def _segment_array(node: Any, segment_id: str, referenceVolumeNode: Any) -> np.ndarray:
    """The segment's voxels on the grid of ``referenceVolumeNode`` (array order k, j, i; 0 outside), all 0 for an empty
    segment. Unlike ``slicer.util.arrayFromSegmentBinaryLabelmap``, it leaves no node in the scene."""
    import slicer
    import slicer.util
    import vtk

    if _is_empty(node.GetSegmentation().GetSegment(segment_id)):
        return np.zeros(referenceVolumeNode.GetImageData().GetDimensions()[::-1], np.uint8)
    with _no_new_nodes():
        exported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(node, ids, exported,
                                                                                 referenceVolumeNode):
            raise RuntimeError(f"segment {segment_id} of {node.GetName()} could not be exported to a label map")
        return slicer.util.arrayFromVolume(exported).copy()


@contextlib.contextmanager
def _no_new_nodes():
    """Remove, on leaving (failed or not), every node added to the scene inside: the temporary label maps and the
    display, colour and storage nodes that Slicer's export functions add with them."""
    import slicer

    scene = slicer.mrmlScene
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in before]):
            scene.RemoveNode(node)


def _check_scan(volumeNode: Any, action: str) -> None:
    """A scan to ``action``: a scalar volume node with image data, one value per voxel, and not a label map."""
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.GetImageData() is None:
        raise UserError(f"select a scalar volume node with image data to {action}")
    name = volumeNode.GetName()
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise UserError(f"{name} is a label map volume, not a scan: select the scan to {action}")
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or components > 1:
        raise UserError(f"{name} is a vector volume ({components} values per voxel): select a scan with one value per "
                        f"voxel to {action}, or extract one with the Vector to Scalar Volume module")


def _case_files(folder: str | os.PathLike, suffixes: Sequence[str]) -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes`` (the first that matches wins), by case name (the file name
    without it), sorted; a folder with none is a ``UserError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the folder that holds the files")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in suffixes if path.name.lower().endswith(s)), None)
        if suffix is None or not path.is_file() or path.name.lower().endswith(".seg.nrrd") != (suffix == ".seg.nrrd"):
            continue
        case = path.name[: -len(suffix)]
        if case in files:
            raise UserError(f"{folder} has two files for case {case!r} ({files[case].name}, {path.name}): keep one")
        files[case] = path
    if not files:
        raise UserError(f"{folder} holds no file ending in {', '.join(suffixes)}")
    return files


def _spacing_words(spacing: str | float | Sequence[float | str], max_voxels: float | None,
                   max_seconds: float | None) -> list[str]:
    """``spacing`` as the command line's words, checked as the command line checks them."""
    from .inference import SpacingRequest, parse_spacing

    words = spacing.split() if isinstance(spacing, str) else [str(v) for v in np.atleast_1d(spacing).tolist()]
    request = parse_spacing(words)
    if (max_voxels is not None or max_seconds is not None) and request.mode != "auto":
        raise UserError("a voxel or time budget applies to spacing \"auto\": choose auto, or leave the budget out")
    SpacingRequest(request.mode, request.values, max_voxels, max_seconds)
    return words


def _grid_image(dimensions: Sequence[int], ijk_to_ras: np.ndarray) -> Any:
    """An empty SimpleITK image (one byte per voxel) on the grid of an IJK-to-RAS matrix, in LPS."""
    import SimpleITK as sitk

    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    grid = sitk.Image(*[int(n) for n in dimensions], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin((lps @ ijk_to_ras[:3, 3]).tolist())
    grid.SetDirection((lps @ ijk_to_ras[:3, :3] / spacing).ravel().tolist())
    return grid


def _mode_words(mode: str, axis: int, slice_index: int | None, dimensions: Sequence[int]) -> list[str]:
    """``mode``, ``axis`` and ``slice_index`` as the command line's words, checked against the volume's dimensions."""
    if mode not in MODES:
        raise UserError(f"mode {mode!r}: give \"3d\" or \"2d\"")
    if mode == "3d":
        if slice_index is not None:
            raise UserError("a slice applies to mode \"2d\": choose 2d, or leave the slice out")
        return []
    if not (isinstance(axis, (int, np.integer)) and 0 <= axis <= 2):
        raise UserError(f"axis {axis!r}: give 0, 1 or 2 (the volume's I, J or K axis)")
    words = ["--mode", "2d", "--axis", str(int(axis))]
    if slice_index is None:
        return words
    if not (isinstance(slice_index, (int, np.integer)) and 0 <= slice_index < dimensions[axis]):
        raise UserError(f"slice {slice_index}: give a slice index from 0 to {dimensions[axis] - 1} along {IJK[axis]}")
    return [*words, "--slice", str(int(slice_index))]


def _array(matrix: Any) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ijk_to_ras(volumeNode: Any) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _array(matrix)


def _ijk_to_world(volumeNode: Any) -> np.ndarray:
    """The volume's IJK-to-RAS matrix with its parent transforms applied; a non-linear one is a ``UserError``."""
    import vtk

    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return _ijk_to_ras(volumeNode)
    if not parent.IsTransformToWorldLinear():
        raise UserError(f"{volumeNode.GetName()} is under a non-linear transform ({parent.GetName()}): harden the "
                        "transform, or choose the slice axis yourself")
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return _array(to_world) @ _ijk_to_ras(volumeNode)


def _slice_normal(sliceNode: Any) -> np.ndarray:
    matrix = sliceNode.GetSliceToRAS()
    normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
    return normal / np.linalg.norm(normal)
