"""``HyperSpaceMRMLLogic``, the scripting API of the extension: a thin facade over the request (``request.py``), the
job (``job.py``, in the warm engine of ``warm_engine.py``), the batch (``batch.py``), the review (``review.py``) and
the slice geometry (``slice_geometry.py``); it keeps what a session caches (the last model read, the last grid, the
GPU probe) and plans spacing estimates (``estimate``).

``segment`` writes the volume to a temporary file (its own grid; a parent transform is not hardened: the result goes
under the same transform), runs ``hyperspace segment`` in a background job (``pythonExecutable``: PythonSlicer in
Slicer; by default in the session's warm engine) and reads the ``.seg.nrrd`` it writes into a new segmentation node;
in 2D mode, slice by slice across one of the volume's IJK axes, or only the slice a slice view shows. Every call leaves
the scene with only the nodes it promises."""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..models import describe, embedded_model
from . import batch, review, slice_geometry
from .batch import BatchResult
from .job import SegmentationJob
from .nodes import check_scan, segment_mask, write_mask
from .process import ENGINE_MODULE, GpuProbe, temporary_folder
from .request import Models, PostprocessingOptions, SegmentationRequest, Spacing
from .warm_engine import WarmEngine, warm_engine


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


class HyperSpaceMRMLLogic:
    """Segment volume nodes and review segmentations on ``slicer.mrmlScene`` (the scripting API of the extension)."""

    def __init__(self) -> None:
        self.pythonExecutable = python_slicer_executable() or sys.executable  # PythonSlicer inside Slicer
        self.warmEngine = True  # segment() in the session's engine worker; False: one engine process per run
        self._models: dict[str, Any] = {}
        self._grids: dict[tuple, Any] = {}
        self._gpu: GpuProbe | None = None  # asks about the GPU in a separate process (estimate)

    def engine(self) -> WarmEngine:
        """The session's warm engine for ``pythonExecutable`` (``WarmEngine``; shared by every logic)."""
        return warm_engine(self.pythonExecutable)

    def start_engine(self) -> bool:
        """Start the warm engine's worker ahead of the first ``segment`` (the module does it on entry), so that its
        imports (seconds) are done by the first Apply; nothing when ``warmEngine`` is off, the engine is unavailable
        or its worker runs. Returns whether a worker runs."""
        engine = self.engine()
        if self.warmEngine and engine.unavailable is None:
            engine.start()
        return engine.alive

    def stop_engine(self) -> None:
        """End the warm engine's worker (the next ``segment`` starts a new one); Slicer's exit does it too."""
        self.engine().stop(grace=2.0)

    def segment_folder(self, inputFolder: str | os.PathLike, outputFolder: str | os.PathLike,
                       spacing: Spacing = "native", model: Models = None, device: str = "auto",
                       referenceFolder: str | os.PathLike | None = None, tolerance: float = 1.0,
                       overwrite: bool = False, log: Any = print, tta: bool | Sequence[int] | None = None,
                       uncertainty: bool = False,
                       postprocessing: dict | PostprocessingOptions | None = None) -> BatchResult:
        """Segment every volume file of ``inputFolder`` into ``outputFolder/CASE.seg.nrrd`` with ``segment``'s
        options (``model`` a list of files: an ensemble; ``tta``, ``postprocessing``), in one engine process (the
        command line's batch: the model loaded once, the next scan read while one is predicted); with
        ``uncertainty``, also ``CASE_uncertainty.nrrd`` (0 to 1, on the case's grid), one case at a time through the
        scene. Every option is checked before any work. With ``referenceFolder`` (a segmentation or label map per
        case, same case name), score the results into one MIST ``results.csv`` in ``outputFolder`` with the engine's
        evaluation. A case that fails is reported through ``log`` and skipped; the scene is left as it was."""
        request = SegmentationRequest(spacing=spacing, model=model, device=device, tta=tta, uncertainty=uncertainty,
                                      postprocessing=postprocessing)
        return batch.segment_folder(
            self.pythonExecutable, request, inputFolder, outputFolder, load_model=self._model,
            segment_volume=lambda volume: self.segment_request(volume, request), referenceFolder=referenceFolder,
            tolerance=tolerance, overwrite=overwrite, log=log)

    def model_facts(self, model: str | os.PathLike | None = None, mode: str = "3d") -> dict:
        """What ``hyperspace info --json`` says about ``model`` (default: the embedded model of ``mode``, "3d" or
        "2d"): labels, spacing range, dimensions, ..."""
        return describe(self._model(model, mode), Path(model or embedded_model(mode)))

    def estimate(self, volumeNode: Any, spacing: Spacing = "native", model: str | os.PathLike | None = None,
                 device: str = "auto", max_voxels: float | None = None, input_spacing: Sequence[float] | None = None,
                 mode: str = "3d", axis: int = 2, slice_index: int | None = None) -> SpacingEstimate:
        """The working spacing, grid and memory need of segmenting ``volumeNode`` at ``spacing`` (as ``segment``,
        ``input_spacing``, ``mode``, ``axis`` and ``slice_index`` too; a time budget is left out: it needs a network
        run), with the engine's notes (a spacing outside the trained range). In 2D mode the spacings and grid are
        those of each slice, in the slice plane. Runs no network: fast enough to follow a slider. The windows are
        planned, and ``available_mb`` given, for the device the job will run on (``device``; ``auto`` is the GPU when
        the engine finds one), asked about in a separate process: NaN, with a note, until its answer is in. Give the
        settings after ``device`` by keyword."""
        from ..geometry import with_spacing
        from ..inference import Segmenter, Slices, SpacingRequest, parse_spacing
        from ..inference.segmenter import MEMORY_SHARE

        check_scan(volumeNode, "estimate")
        settings = SegmentationRequest(spacing, model, device, max_voxels=max_voxels, input_spacing=input_spacing,
                                       mode=mode, axis=axis, slice_index=slice_index)
        parsed = parse_spacing(settings.spacing_words())
        request = SpacingRequest(parsed.mode, parsed.values, max_voxels)
        settings.mode_words(volumeNode.GetImageData().GetDimensions())
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
        from ..io.model_file import load_model

        path = Path(model or embedded_model(mode)).resolve()
        if not path.is_file():
            raise UserError(f"model file {path} does not exist: pick an existing model file")
        key = f"{path}:{path.stat().st_mtime_ns}"
        if key not in self._models:
            self._models = {key: load_model(path)}
        return self._models[key]

    def _grid(self, volumeNode: Any) -> Any:
        """An empty image (one byte per voxel) on the volume's grid, in LPS; kept while the grid is the same."""
        matrix = slice_geometry.ijk_to_ras(volumeNode)
        key = (volumeNode.GetImageData().GetDimensions(), tuple(matrix.ravel()))
        if key not in self._grids:
            self._grids = {key: slice_geometry.grid_image(volumeNode.GetImageData().GetDimensions(), matrix)}
        return self._grids[key]

    def segment(self, volumeNode: Any, spacing: Spacing = "native", model: Models = None, device: str = "auto",
                wait: bool = True, max_voxels: float | None = None, max_seconds: float | None = None,
                input_spacing: Sequence[float] | None = None, mode: str = "3d", axis: int = 2,
                slice_index: int | None = None, tta: bool | Sequence[int] | None = None, uncertainty: bool = False,
                postprocessing: dict | PostprocessingOptions | None = None,
                restrict_to: tuple[Any, str] | None = None) -> Any:
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
        request = SegmentationRequest(
            spacing=spacing, model=model, device=device, max_voxels=max_voxels, max_seconds=max_seconds,
            input_spacing=input_spacing, mode=mode, axis=axis, slice_index=slice_index, tta=tta,
            uncertainty=uncertainty, postprocessing=postprocessing)
        return self.segment_request(volumeNode, request, wait, restrict_to)

    def segment_request(self, volumeNode: Any, request: SegmentationRequest, wait: bool = True,
                        restrict_to: tuple[Any, str] | None = None) -> Any:
        """``segment`` with its settings as one ``SegmentationRequest``, checked here before any work."""
        import slicer

        check_scan(volumeNode, "segment")
        mask = segment_mask(restrict_to, volumeNode) if restrict_to is not None else None
        words = request.engine_words(volumeNode.GetImageData().GetDimensions(), self._model)
        folder = temporary_folder()  # under Slicer's temporary path in Slicer
        try:
            source, output = os.path.join(folder, "input.nrrd"), os.path.join(folder, "result.seg.nrrd")
            uncertainty_file = os.path.join(folder, "uncertainty.nrrd") if request.uncertainty else None
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(source)
            storage.SetUseCompression(False)
            if not storage.WriteData(volumeNode):
                raise UserError(f"volume {volumeNode.GetName()} could not be written to {folder}: free disk space there")
            command = [self.pythonExecutable, "-m", ENGINE_MODULE, "segment", source, "-o", output, *words,
                       "--progress-lines"]
            if uncertainty_file is not None:
                command += ["--uncertainty", uncertainty_file]
            if mask is not None:
                command += ["--mask", write_mask(mask, volumeNode, os.path.join(folder, "mask.nrrd"))]
            job = SegmentationJob(command, folder, output, volumeNode, uncertainty_file,
                                  engine=self.engine() if self.warmEngine else None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job.wait() if wait else job

    def show_uncertainty_above(self, uncertaintyNode: Any, threshold: float) -> None:
        """Show only the voxels of ``uncertaintyNode`` (a scalar volume of 0 to 1, such as ``segment``'s
        uncertainty) whose value is ``threshold`` (0 to 1) or more: its display node's threshold becomes
        ``threshold`` to 1, so the other voxels are transparent over the input."""
        review.show_uncertainty_above(uncertaintyNode, threshold)

    def slice_in_view(self, volumeNode: Any, sliceNode: Any) -> tuple[int, int]:
        """The volume's IJK axis (0, 1, 2) across which the slice view ``sliceNode`` cuts it, and the index of the
        slice it shows: ``segment``'s ``axis`` and ``slice_index``. Works in world space (the volume's IJK-to-RAS
        and linear parent transforms applied; oblique, flipped and permuted grids included). A view more than
        ``VIEW_ALIGNMENT_TOLERANCE_RAD`` off every volume axis, or placed outside the volume, is a ``UserError``."""
        return slice_geometry.slice_in_view(volumeNode, sliceNode)

    def evaluate(self, referenceSegmentationNode: Any, predictionSegmentationNode: Any, tolerance: float = 1.0) -> Any:
        """Score the prediction against the reference, segments matched by name, on the reference's grid, with
        every metric of the engine; returns a new ``vtkMRMLTableNode``: one row per matched segment, one column per
        metric (title, unit and description set), and which masks were empty."""
        return review.metrics_table(referenceSegmentationNode, predictionSegmentationNode, tolerance)

    def largest_disagreement_slice(self, referenceSegmentationNode: Any, predictionSegmentationNode: Any,
                                   segmentName: str, sliceNode: Any, rank: int = 0) -> tuple[float, float, float]:
        """Move ``sliceNode`` to the slice (of the reference grid, across the view's normal) where the segment
        named ``segmentName`` differs most between reference and prediction; ``rank`` 1 is the next worst, and so
        on. The view is centred on the differing voxels of that slice, whose centre (RAS, world) is returned."""
        return review.largest_disagreement_slice(referenceSegmentationNode, predictionSegmentationNode, segmentName,
                                                 sliceNode, rank)

    def most_uncertain_slice(self, uncertaintyNode: Any, sliceNode: Any, rank: int = 0) -> tuple[float, float, float]:
        """Move ``sliceNode`` to the slice (of the uncertainty volume's grid, across the view's normal) with the
        largest summed uncertainty; ``rank`` 1 is the next, and so on. The view is centred on that slice's uncertain
        region (its voxels of at least half the slice's largest uncertainty), whose centre (RAS, world) is returned."""
        return review.most_uncertain_slice(uncertaintyNode, sliceNode, rank)
