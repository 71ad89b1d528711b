"""What every case of a ``hyperspace segment`` run shares (``SegmentationRun``: settings, models, segmenters) and the
segmentation of one case (``segment_case``), used alike by one INPUT and by each case of a batch."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from .. import models
from ..errors import UserError


@dataclass(frozen=True)
class MapFiles:
    """The voxel maps written besides the labels (one INPUT only): the files of ``--probabilities`` and
    ``--uncertainty``, ``None`` for a map not asked for."""

    probabilities: str | None = None
    uncertainty: str | None = None

    def by_option(self) -> dict[str, str | None]:
        """``{option: file or None}``, keyed by the options that name the files."""
        return {"--probabilities": self.probabilities, "--uncertainty": self.uncertainty}

    @property
    def wanted(self) -> bool:
        """Whether any map is written (then the probabilities are needed on the input's grid)."""
        return self.probabilities is not None or self.uncertainty is not None


def model_inputs(args: argparse.Namespace) -> dict[str, str]:
    """The model files of ``--model`` as inputs that no output may replace: ``{role: path}``."""
    return {f"model {path}": path for path in args.model or []}


def mode_and_model(args: argparse.Namespace, size: Sequence[int], name: str,
                   load: Callable[..., Any] = models.load) -> tuple[str, Any]:
    """``(mode, model)`` for segmenting the input ``name``, an image of ``size`` voxels: ``--mode``, by default 2d for
    a 2D image or a single-slice volume unless ``--model`` is a 3D model, else 3d; ``--model``, by default the
    embedded model of the mode (read with ``load``). A ``UserError`` for a model that does not fit the mode or the
    image, or for slices chosen in 3d mode."""
    planar = len(size) == 2 or 1 in size
    path = args.model[0] if args.model else None  # an ensemble's first model (see models.ensemble_member for the others)
    model = load(path) if path else None
    mode = args.mode or ("2d" if planar and (model is None or model.dim == 2) else "3d")
    if mode == "3d" and (args.axis is not None or args.slice is not None):
        raise UserError("--axis and --slice choose the slices of --mode 2d (slice by slice, with a 2D model): "
                        "add --mode 2d")
    model = model or load(None, models.embedded_model(mode))
    model_name = path or models.embedded_model(mode).name
    if mode == "2d" and model.dim == 3:
        raise UserError(f"--mode 2d segments slice by slice with a 2D model, but {model_name} is a 3D model: pass a 2D "
                        "model with --model, or drop --mode 2d")
    if mode == "3d" and model.dim == 2:
        if planar:
            raise UserError(f"--mode 3d needs a 3D model, but {model_name} is a 2D model: drop --mode 3d, or pass a 3D "
                            "model")
        raise UserError(f"{name} is a 3D image of {' x '.join(map(str, size))} voxels and {model_name} is a 2D model: "
                        "pass --mode 2d (slice by slice; --axis, --slice choose the slices) or use a 3D model")
    if mode == "3d" and len(size) == 2:
        drop = "--model" if path else "--mode 3d"
        raise UserError(f"{name} is a 2D image, which a 3D model cannot segment: use a 2D model (the default "
                        f"for 2D images: drop {drop})")
    return mode, model


def _spacing_request(args: argparse.Namespace) -> Any:
    """The ``SpacingRequest`` of ``--spacing``, its budgets (``--max-voxels``, ``--max-seconds``: for ``auto`` only)
    and ``--allow-extrapolation``."""
    from ..inference.plans import budgeted_request

    return budgeted_request(args.spacing, args.max_voxels, args.max_seconds, args.allow_extrapolation,
                            budget_without_auto="--max-voxels and --max-seconds apply to --spacing auto: add --spacing "
                                                "auto")


class SegmentationRun:
    """What every case of a run shares: the settings, checked once; the models, loaded once; and their segmenters,
    built once per mode and slices, which keep the networks generated for each spacing."""

    cache: ClassVar[Any] = None
    """A process-wide cache of models and segmenters kept from run to run (``worker.EngineCache``, set by the Slicer
    module's worker); None: each run reads its own."""

    def __init__(self, args: argparse.Namespace, device: Any, world: int = 1) -> None:
        import torch

        from ..inference.plans import check_memory_budget
        from ..postprocessing import steps_from_options

        self.args, self.device = args, device
        self.paths = args.model or [None]  # several: an ensemble
        self.mode = None  # a batch's mode for every case (see batch_mode); None: each case's own
        self.steps = steps_from_options(args.remove_smaller_than, args.largest_component, args.fill_holes)
        self.stages = 3 + 3 * len(self.paths) + bool(self.steps)
        self.request = _spacing_request(args)
        check_memory_budget(args.max_memory)  # before any case of a batch
        self._models: dict[str, Any] = {}
        self._segmenters: dict[tuple, list] = {}
        for path in args.model or []:  # a missing or damaged model file fails the run, before any case
            self.load(path)
        models.check_models_differ(args.model or [], self.load)
        if world > 1 and device.type == "cpu":  # processes on one machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    def load(self, path: str | None, default: Path | None = None) -> Any:
        """The model of file ``path`` (``None``: ``default``, the embedded 3D model when not given), read once."""
        default = models.DEFAULT_MODEL if default is None else default
        key = path or str(default)
        if key not in self._models:
            cache = SegmentationRun.cache
            self._models[key] = models.load(path, default) if cache is None else cache.model(path, default, self.device)
        return self._models[key]

    def segmenters(self, mode: str, members: list, slices: Any) -> list:
        """The segmenters of the models ``members`` (those of ``mode``) for ``slices``, built once."""
        from ..inference import Segmenter

        key = (mode, slices)
        if key not in self._segmenters:
            args = self.args
            make = Segmenter if SegmentationRun.cache is None else SegmentationRun.cache.segmenter
            self._segmenters[key] = [make(m, device=str(self.device), patch=args.patch, slices=slices,
                                          tta=args.tta, max_memory_mb=args.max_memory, backend=args.backend,
                                          precision=args.precision)
                                     for m in members]
        return self._segmenters[key]


def batch_mode(args: argparse.Namespace, cases: Sequence) -> str | None:
    """The one mode of a batch given neither ``--mode`` nor ``--model``: ``3d`` (the embedded 3D model) when any case
    is a volume, so that a 2D image among volumes fails clearly instead of being segmented by the 2D model with
    other labels; ``None`` (each case's own: 2D images and single slices, the 2D model) otherwise."""
    from ..inference.cases import image_size, is_volume

    if args.mode is not None or args.model:
        return None
    return "3d" if any(is_volume(image_size(case.image)) for case in cases) else None


def read_scan(path: str, input_spacing: Sequence[float] | None) -> tuple[Any, Any, list[str]]:
    """``(image, scan, notes)``: the image of ``path`` (a colour picture as grey), the same with ``input_spacing``
    when given, checked, and notes for the user. Safe to run in a background thread."""
    from ..geometry import with_spacing
    from ..io.images import check_image, direction_note, nonfinite_note, picture_as_grey, picture_spacing_note, read_image

    image, colour_note = picture_as_grey(read_image(path), path)
    scan = with_spacing(image, input_spacing, "--input-spacing") if input_spacing else image
    check_image(scan, str(path))
    notes = [colour_note, None if input_spacing else picture_spacing_note(image, path), nonfinite_note(image),
             direction_note(image, Path(path).name)]
    return image, scan, [note for note in notes if note]


@dataclass
class _CasePlan:
    """One case, read and checked, with its mode, models, segmenters and working spacings chosen."""

    name: str
    output: str | os.PathLike
    image: Any
    scan: Any
    mode: str
    model: Any
    steps: list
    slices: Any
    segmenters: list
    view: Any
    choices: list
    memory: float
    mask: Any

    @property
    def spacing_notes(self) -> list[str]:
        """The notes of the working spacings chosen (clamped to the trained range, ...)."""
        return [note for choice in self.choices for note in choice.notes]


def segment_case(run: SegmentationRun, *, name: str, output: str | os.PathLike, read: Callable[[], tuple],
                 reporter: Any, maps: MapFiles) -> dict:
    """Segment one case, the image ``name`` that ``read()`` returns (see ``read_scan``), into ``output`` (and the
    files of ``maps``); the summary that ``--json`` prints."""
    from ..inference import normalised_entropy
    from ..io.images import write_labels, write_probabilities, write_uncertainty
    from ..postprocessing import postprocess

    args = run.args
    with reporter.stage("load model and image"):
        plan = _plan_case(run, name=name, output=output, read=read, reporter=reporter)
    _log_spacings(plan, run.paths, reporter)
    labels, probabilities = _predict(plan, reporter, maps)
    applied = []
    if plan.steps:
        with reporter.stage("postprocess"):
            labels, applied = postprocess(labels, plan.steps, plan.scan.GetSpacing())  # --input-spacing's, if given
    with reporter.stage("write"):
        write_labels(labels, output, plan.model.labels, plan.model.colors, overwrite=args.overwrite)
        if maps.probabilities is not None:
            write_probabilities(probabilities, plan.image, maps.probabilities, overwrite=args.overwrite)
        if maps.uncertainty is not None:
            write_uncertainty(normalised_entropy(probabilities), plan.image, maps.uncertainty,
                              overwrite=args.overwrite)
    return _case_summary(plan, run.paths, maps, applied=applied, records=reporter.records)


def _plan_case(run: SegmentationRun, *, name: str, output: str | os.PathLike, read: Callable[[], tuple],
               reporter: Any) -> _CasePlan:
    """Read the case and choose its mode, models, segmenters and working spacings, checking each; its notes are
    logged on ``reporter``."""
    from ..evaluation.labels import read_mask
    from ..inference import Slices
    from ..io.images import check_picture_output
    from ..postprocessing import resolve_steps

    args, paths = run.args, run.paths
    image, scan, notes = read()
    check_picture_output(output, image, name)
    if run.mode == "3d" and scan.GetDimension() == 2:
        raise UserError(f"{name} is a 2D image in a batch of volumes, which the 3D model segments: segment the 2D "
                        "images in a batch of their own (the 2D model, with other labels, segments them)")
    given = args if run.mode is None else argparse.Namespace(**{**vars(args), "mode": run.mode})
    mode, model = mode_and_model(given, scan.GetSize(), name, run.load)
    members = [model] + [models.ensemble_member(path, model, paths[0], run.load) for path in paths[1:]]
    steps = resolve_steps(run.steps, model.labels)
    for note in notes:
        reporter.log(f"note: {note}")
    slices = Slices(args.axis, args.slice).resolved(scan) if mode == "2d" else Slices()
    segmenters = run.segmenters(mode, members, slices)
    view = segmenters[0].view(scan)
    choices = [s.choose_spacing(scan, run.request) for s in segmenters]  # each model at its own spacing
    memory = max(s.check_memory(scan, choice.spacing, run.request.allow_extrapolation)
                 for s, choice in zip(segmenters, choices))
    mask = read_mask(args.mask, image) if args.mask else None
    return _CasePlan(name=name, output=output, image=image, scan=scan, mode=mode, model=model, steps=steps,
                     slices=slices, segmenters=segmenters, view=view, choices=choices,
                     memory=memory, mask=mask)


def _log_spacings(plan: _CasePlan, paths: list, reporter: Any) -> None:
    """Log the notes of the working spacings, then each model's working spacing and the memory it needs."""
    for note in plan.spacing_notes:
        reporter.log(f"note: {note}")
    where = ""
    if plan.mode == "2d":
        count = f"{plan.view.slices} slice" + ("s" if plan.view.slices > 1 else "")
        where = f" in the slice plane ({' x '.join(plan.view.axes)}), {count} along file axis {plan.slices.axis}"
    for path, choice in zip(paths, plan.choices):
        of = f" of {path}" if len(paths) > 1 else ""
        reporter.log(f"working spacing{of}: {' x '.join(f'{s:.3g}' for s in choice.spacing)} mm{where} "
                     f"(estimated memory need {plan.memory:,.0f} MB)")


def _predict(plan: _CasePlan, reporter: Any, maps: MapFiles) -> tuple[Any, Any]:
    """``(labels, probabilities)`` on the input's grid: the mean of the ensemble's predictions; the probabilities
    only when ``maps`` wants them (labels only: interpolated where it matters), else ``None``."""
    from ..inference import labels_from_probabilities, labels_on_input_grid

    segmenters, choices, scan, mask = plan.segmenters, plan.choices, plan.scan, plan.mask
    if not maps.wanted:
        parts = [s.working_probabilities(scan, c.spacing, reporter, mask) for s, c in zip(segmenters, choices)]
        labels = labels_on_input_grid(parts, sorted(plan.model.labels), plan.image, reporter=reporter, mask=mask)
        return labels, None
    probabilities = segmenters[0].probabilities(scan, choices[0].spacing, reporter, mask)
    for other, choice in zip(segmenters[1:], choices[1:]):  # an ensemble's mean, on the input grid
        probabilities += other.probabilities(scan, choice.spacing, reporter, mask)
    with reporter.stage("labels"):
        probabilities /= len(segmenters)
        # on the input's own header, whatever spacing was used for the work
        labels = labels_from_probabilities(probabilities, sorted(plan.model.labels), plan.image)
    return labels, probabilities


def _case_summary(plan: _CasePlan, paths: list, maps: MapFiles, *, applied: list, records: list) -> dict:
    """The summary of one case that ``--json`` prints."""
    view, segmenter = plan.view, plan.segmenters[0]
    summary = {
        "input": str(plan.name), "output": str(plan.output), "mode": plan.mode,
        "spacing_mm": list(plan.choices[0].spacing), "native_spacing_mm": list(view.spacing),
        "spacing_axes": view.axes, "method": plan.model.method, "device": segmenter.device.type,
        "backend": " + ".join(dict.fromkeys(s.backend_used for s in plan.segmenters)),  # an ensemble's, each once
        "precision": str(segmenter.precision).removeprefix("torch."),
        "notes": plan.spacing_notes, "postprocessing": applied,
        "models": [{"model": path, "spacing_mm": list(choice.spacing), "backend": member.backend_used}
                   for path, choice, member in zip(paths, plan.choices, plan.segmenters)],
        "probabilities": maps.probabilities, "uncertainty": maps.uncertainty,
        "tta_predictions": len(segmenter.flips), **memory_time(records),
        "stages": [{"name": r.name, "seconds": round(r.seconds, 3), "peak_memory_mb": round(r.peak_memory_mb, 1),
                    "peak_gpu_memory_mb": r.peak_gpu_memory_mb, **memory_time([r])} for r in records],
    }
    if plan.mode == "2d":
        summary.update(axis=plan.slices.axis, slice=plan.slices.index, slices=plan.view.slices)
    return summary


def memory_time(records: Sequence) -> dict:
    """The area under the memory-time curve of ``records`` (stages), resident and GPU (``None`` off CUDA), MB s."""
    gpu = [r.gpu_memory_time_mb_s for r in records if r.gpu_memory_time_mb_s is not None]
    return {"memory_time_mb_s": round(sum(r.memory_time_mb_s for r in records), 1) if records else None,
            "gpu_memory_time_mb_s": round(sum(gpu), 1) if gpu else None}
