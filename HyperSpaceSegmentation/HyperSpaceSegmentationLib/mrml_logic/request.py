"""What a segmentation job is started with, as one typed object: ``SegmentationRequest`` holds ``segment``'s settings
(spacing, models, device, budgets, mode, TTA, uncertainty, postprocessing), checks them as the command line does
(one-line ``UserError``s, before any process starts) and turns them into the engine's command-line words in one
place (``engine_words``). Postprocessing travels as ``PostprocessingOptions``, the engine's option form (what
``postprocessing.add_options`` reads): from the batch script's arguments or from ``segment``'s dict, into the
engine's steps and words once (``postprocessing_words``)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from ..errors import UserError
from ..models import ensemble_member

MODES = ("3d", "2d")
IJK = "IJK"
POSTPROCESSING_KEYS = ("remove_smaller_than", "largest_component", "fill_holes")
Spacing = Union[str, float, Sequence[Union[float, str]]]
Models = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]
Label = Union[float, str]  # a label value, or a class name of the model


@dataclass(frozen=True)
class PostprocessingOptions:
    """Postprocessing in the engine's option form: ``remove_smaller_than`` one ``[MM3, LABEL, ...]`` per size, the
    others a list of labels or None (left out); no label means every class. A label is a value, or (from
    ``segment``'s dict) a class name of the model."""

    remove_smaller_than: Sequence[Sequence[Label]] | None = None
    largest_component: Sequence[Label] | None = None
    fill_holes: Sequence[Label] | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.remove_smaller_than, self.largest_component, self.fill_holes))

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> PostprocessingOptions:
        """The options that ``postprocessing.add_options`` parsed (the batch script's), as they are."""
        return cls(args.remove_smaller_than, args.largest_component, args.fill_holes)

    @classmethod
    def from_dict(cls, postprocessing: Any, model_labels: Mapping[int, str] | None = None) -> PostprocessingOptions:
        """``segment``'s ``postprocessing`` dict (see ``postprocessing_words``), checked (one-line ``UserError``s),
        class names resolved with ``model_labels``."""
        if not isinstance(postprocessing, dict):
            raise UserError(f"postprocessing {postprocessing!r}: give a dict such as {{\"largest_component\": True}}")
        unknown = [key for key in postprocessing if key not in POSTPROCESSING_KEYS]
        if unknown:
            raise UserError(f"postprocessing {unknown[0]!r}: the steps are {', '.join(POSTPROCESSING_KEYS)}")
        removals = []
        value = postprocessing.get("remove_smaller_than")
        if value is not None and value is not False:
            removals = [[_number(size, "remove_smaller_than size"), *_labels(chosen, "remove_smaller_than",
                                                                              model_labels)]
                        for size, chosen in _size_pairs(value)]
        chosen = {key: _labels(postprocessing[key], key, model_labels) for key in ("largest_component", "fill_holes")
                  if postprocessing.get(key) is not None and postprocessing.get(key) is not False}
        return cls(removals or None, chosen.get("largest_component"), chosen.get("fill_holes"))

    def words(self, model_labels: Mapping[int, str] | None = None) -> list[str]:
        """The engine's steps (checked as the command line checks them; with ``model_labels``, their labels against
        the model's) as the command line's words."""
        from ..postprocessing import resolve_steps, steps_from_options

        steps = steps_from_options(self.remove_smaller_than, self.largest_component, self.fill_holes)
        if model_labels is not None:
            resolve_steps(steps, model_labels)
        words = []
        for step in steps:
            words += [f"--{step.operation.replace('_', '-')}",
                      *([repr(float(step.min_volume_mm3))] if step.operation == "remove_smaller_than" else []),
                      *(str(label) for label in step.labels)]
        return words


def postprocessing_words(postprocessing: dict | PostprocessingOptions,
                         model_labels: Mapping[int, str] | None = None) -> list[str]:
    """``segment``'s ``postprocessing`` as the command line's words, checked (one-line ``UserError``s) and, with
    ``model_labels``, its labels checked against the model's. A dict with any of: ``"remove_smaller_than"``: MM3
    (every class), ``(MM3, labels)``, or a list of such pairs (``--remove-smaller-than MM3 LABEL ...``, once per
    pair); ``"largest_component"`` and ``"fill_holes"``: True (every class) or a sequence of label values
    (``--largest-component LABEL ...``, ``--fill-holes LABEL ...``); None or False leave a step out. A label may
    also be a class name of the model (any case), which needs ``model_labels``. Or ``PostprocessingOptions``."""
    options = postprocessing if isinstance(postprocessing, PostprocessingOptions) else \
        PostprocessingOptions.from_dict(postprocessing, model_labels)
    return options.words(model_labels)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"postprocessing {what} {value!r}: give a number")
    return float(value)


def _size_pairs(value: Any) -> list:
    """``remove_smaller_than`` of the dict as ``(MM3, labels)`` pairs."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return [(value, True)]
    if isinstance(value, (list, tuple)) and len(value) == 2 and not isinstance(value[0], (list, tuple)):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return list(value)
    raise UserError(f"postprocessing remove_smaller_than {value!r}: give MM3, (MM3, labels) or a list of "
                    "(MM3, labels) pairs")


def _labels(value: Any, key: str, model_labels: Mapping[int, str] | None) -> list[float]:
    """A step's labels of the dict: True (every class: none) or values and class names (resolved)."""
    if value is True:
        return []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise UserError(f"postprocessing {key} {value!r}: give True (every class) or a list of label values "
                        "or class names")
    return [_named(v, key, model_labels) if isinstance(v, str) else _number(v, f"{key} label") for v in value]


def _named(name: str, key: str, model_labels: Mapping[int, str] | None) -> float:
    values = [v for v, n in (model_labels or {}).items() if v != 0 and n.casefold() == name.strip().casefold()]
    if not values:
        known = ", ".join(n for v, n in sorted((model_labels or {}).items()) if v != 0) or "unknown without a model"
        raise UserError(f"postprocessing {key} {name!r} is not a class of the model; its classes are {known}")
    return float(values[0])


@dataclass(frozen=True)
class SegmentationRequest:
    """The settings of one segmentation job, as ``HyperSpaceMRMLLogic.segment`` takes them (see there). Nothing is
    checked when it is made: ``engine_words`` checks them all, in one pass, and returns the engine's words."""

    spacing: Spacing = "native"
    model: Models = None
    device: str = "auto"
    max_voxels: float | None = None
    max_seconds: float | None = None
    input_spacing: Sequence[float] | None = None
    mode: str = "3d"
    axis: int = 2
    slice_index: int | None = None
    tta: bool | Sequence[int] | None = None
    uncertainty: bool = False
    postprocessing: dict | PostprocessingOptions | None = None

    def spacing_words(self) -> list[str]:
        """``spacing`` as the command line's words, checked as the command line checks them (budgets included)."""
        from ..inference.plans import budgeted_request

        spacing = self.spacing
        words = spacing.split() if isinstance(spacing, str) else [str(v) for v in np.atleast_1d(spacing).tolist()]
        budgeted_request(words, self.max_voxels, self.max_seconds,
                         budget_without_auto="a voxel or time budget applies to spacing \"auto\": choose auto, or leave "
                                             "the budget out")
        return words

    def mode_words(self, dimensions: Sequence[int] | None) -> list[str]:
        """``mode``, ``axis`` and ``slice_index`` as the command line's words, checked against the volume's
        ``dimensions`` (needed for a slice only)."""
        mode, axis, slice_index = self.mode, self.axis, self.slice_index
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
            raise UserError(f"slice {slice_index}: give a slice index from 0 to {dimensions[axis] - 1} along "
                            f"{IJK[axis]}")
        return [*words, "--slice", str(int(slice_index))]

    def model_paths(self) -> list[Path]:
        """``model`` (None, one file, or a list of files: an ensemble) as checked paths."""
        if self.model is None:
            return []
        model = self.model
        paths = [Path(m) for m in ([model] if isinstance(model, (str, os.PathLike)) else list(model))]
        if not paths:
            raise UserError("model is an empty list: give one or more model files, or None for the embedded one")
        for path in paths:
            if not path.is_file():
                raise UserError(f"model file {path} does not exist: pick an existing model file, or None for the "
                                "embedded one")
        return paths

    def tta_words(self) -> list[str]:
        """``tta`` (None or False: off; True: every axis; a sequence of axes) as the command line's words."""
        tta = self.tta
        if tta is None or tta is False:
            return []
        if tta is True:
            return ["--tta"]
        axes = range(2 if self.mode == "2d" else 3)
        values = list(tta) if isinstance(tta, (list, tuple, range, np.ndarray)) else None
        if values is None or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a in axes
                                     for a in values):
            raise UserError(f"tta {tta!r}: give True (every axis), or a list of axes from {', '.join(map(str, axes))}")
        return ["--tta", *(str(int(a)) for a in values)]

    def engine_words(self, dimensions: Sequence[int] | None, load_model: Callable[[Any, str], Any]) -> list[str]:
        """Every setting checked, in this order: spacing, mode, model files, TTA, then with the first model (read by
        ``load_model(path or None, mode)``) the ensemble (the same dimensions and labels) and the postprocessing;
        returns the engine's words (without input, output and the job's own files)."""
        words = ["--spacing", *self.spacing_words(), "--device", self.device, *self.mode_words(dimensions)]
        for option, value in (("--max-voxels", self.max_voxels), ("--max-seconds", self.max_seconds)):
            if value is not None:
                words += [option, repr(float(value))]
        models = self.model_paths()
        if models:
            words += ["--model", *(str(path.resolve()) for path in models)]
        words += self.tta_words()
        postprocessing = self.postprocessing
        if postprocessing is not None and not isinstance(postprocessing, (dict, PostprocessingOptions)):
            raise UserError(f"postprocessing {postprocessing!r}: give a dict such as {{\"largest_component\": True}}")
        if len(models) > 1 or postprocessing:
            first = load_model(models[0] if models else None, self.mode)
            for path in models[1:]:
                ensemble_member(str(path), first, str(models[0]))
            if postprocessing:
                words += postprocessing_words(postprocessing, first.labels)
        if self.input_spacing is not None:
            words += ["--input-spacing", *(repr(float(v)) for v in self.input_spacing)]
        return words
