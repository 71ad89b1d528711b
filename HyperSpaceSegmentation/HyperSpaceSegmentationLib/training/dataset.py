"""The dataset description: a JSON file in the spirit of MIST's dataset JSON.

    {
      "task": "brain tissue",
      "modality": "mr",
      "labels": {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"},
      "colors": {"1": [0.2, 0.4, 0.9]},
      "training": [{"id": "case1", "image": "images/case1.nii.gz", "label": "labels/case1.nii.gz"}],
      "validation": [{"id": "case2", "image": "images/case2.nii.gz", "label": "labels/case2.nii.gz"}],
      "slice_axes": [0, 1, 2],
      "synthetic": {"fraction": 0.5}
    }

Paths are relative to the JSON file. ``colors``, ``validation`` and ``slice_axes`` are optional; label ``0`` is
background. ``slice_axes``: for a 2D model trained on 3D volumes, the axes (of the image reoriented to LPS) that
its 2D slices are taken across: 0 L-R (sagittal slices), 1 P-A (coronal), 2 S-I (axial); all three by default.
``synthetic``: a share of the training samples synthesised from the label maps, with a head around the labelled
foreground (see ``synthesis.SynthesisConfig`` for its keys); off when absent. A case's optional ``generation``
label map (on the image's grid) is what its synthetic images are drawn from instead of its ``label`` map: finer
structures than those segmented, such as the tissues around a white-matter label (SynthSeg's generation labels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..io.input_files import input_file, read_json
from ..io.outputs import file_name_problem
from ..preprocessing import MODALITIES

if TYPE_CHECKING:
    from .synthesis import SynthesisConfig

IGNORE = 255
"""Label of training voxels the loss skips: outside the image, or unknown (a class index never reaches it)."""

SLICE_AXES = {0: "L-R, sagittal slices", 1: "P-A, coronal", 2: "S-I, axial"}
"""Axes of a volume (LPS, as ``read_case`` returns it) that a 2D model's slices may be taken across."""


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    label: Path
    generation: Path | None = None  # labels to synthesise images from (default: ``label``)


@dataclass
class Dataset:
    task: str
    modality: str
    labels: dict[int, str]
    training: list[Case]
    validation: list[Case] = field(default_factory=list)
    colors: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    slice_axes: tuple[int, ...] = ()  # empty: not given
    synthetic: SynthesisConfig | None = None  # None: no synthetic samples


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read and check a dataset JSON; every problem is a one-line ``UserError``."""
    path = input_file(path, folder="{path} is a folder: give the path of the dataset JSON file",
                      missing="dataset file {path} does not exist: give the path of the dataset JSON")
    spec = read_json(path, "dataset file")
    if not isinstance(spec, dict):
        kind = {list: "list", str: "string", bool: "true or false", type(None): "null"}.get(type(spec), "number")
        raise UserError(f"dataset file {path} holds a JSON {kind}, not an "
                        "object: the dataset is one object with 'modality', 'labels' and 'training' (a list of cases "
                        "goes in 'training'); see docs/training.md for the format")
    for key in ("modality", "labels", "training"):
        if key not in spec:
            raise UserError(f"dataset file {path} has no {key!r} entry: see docs/training.md for the format")
    try:
        labels = {int(k): str(v) for k, v in spec["labels"].items()}
    except (AttributeError, ValueError):
        raise UserError(f"dataset file {path}: 'labels' must map label values to names, like {{\"0\": \"background\"}}") from None
    if 0 not in labels or len(labels) < 2:
        raise UserError(f"dataset file {path}: 'labels' needs background 0 and at least one more label")
    if max(labels) > 255 or min(labels) < 0:
        raise UserError(f"dataset file {path}: label values must lie in 0-255")
    if len(labels) > 255:
        raise UserError(f"dataset file {path}: {len(labels)} labels; at most 255 are supported")
    modality = str(spec["modality"]).lower()
    if modality not in MODALITIES:
        raise UserError(f"dataset file {path}: modality {spec['modality']!r} is not supported: use \"mr\" "
                        "(z-scored per image) or \"ct\" (Hounsfield window of the training set)")
    return Dataset(
        task=str(spec.get("task", path.stem)),
        modality=modality,
        labels=labels,
        training=_cases(spec["training"], path, "training"),
        validation=_cases(spec.get("validation", []), path, "validation"),
        colors=_colors(spec.get("colors", {}), labels, path),
        slice_axes=_slice_axes(spec.get("slice_axes"), path),
        synthetic=_synthetic(spec.get("synthetic"), path),
    )


def _synthetic(entry: object, json_path: Path) -> SynthesisConfig | None:
    from .synthesis import SynthesisConfig  # synthesis imports this module's IGNORE

    return None if entry is None else SynthesisConfig.from_spec(entry, f"dataset file {json_path}")


def slice_axes_problem(axes: object) -> str | None:
    """Why ``axes`` are not slice axes (None if they are): distinct values among ``SLICE_AXES``, at least one."""
    if not (isinstance(axes, (list, tuple)) and axes and all(type(axis) is int and axis in SLICE_AXES for axis in axes)
            and len(set(axes)) == len(axes)):
        return "give one or more distinct axes among " + ", ".join(f"{a} ({name})" for a, name in SLICE_AXES.items())
    return None


def _slice_axes(entry: object, json_path: Path) -> tuple[int, ...]:
    if entry is None:
        return ()
    if problem := slice_axes_problem(entry):
        raise UserError(f"dataset file {json_path}: 'slice_axes' {json.dumps(entry)}: {problem}")
    return tuple(entry)


def _colors(entries: object, labels: dict[int, str], json_path: Path) -> dict[int, tuple[float, float, float]]:
    """``colors``: declared foreground label values mapped to three numbers in 0-1 (red, green, blue)."""
    example = 'like {"1": [0.9, 0.3, 0.2]}'
    if not isinstance(entries, dict):
        raise UserError(f"dataset file {json_path}: 'colors' must map label values to RGB colours, {example}")
    colors = {}
    for key, value in entries.items():
        try:
            label, rgb = int(key), tuple(float(c) for c in value)
        except (TypeError, ValueError):
            raise UserError(f"dataset file {json_path}: colour {key!r}: {value!r} is not a label value with three "
                            f"numbers, {example}") from None
        if label not in labels or label == 0:
            raise UserError(f"dataset file {json_path}: 'colors' gives label {label}, which 'labels' does not declare "
                            "as a foreground label: remove it or declare the label")
        if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
            raise UserError(f"dataset file {json_path}: the colour of label {label} must be three numbers in 0-1 "
                            f"(red, green, blue), not {list(value)}")
        colors[label] = rgb
    return colors


def _cases(entries: list, json_path: Path, section: str) -> list[Case]:
    if not isinstance(entries, list) or (section == "training" and not entries):
        raise UserError(f"dataset file {json_path}: {section!r} must be a non-empty list of cases")
    cases = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise UserError(f"dataset file {json_path}: {section} case {index} needs 'image' and 'label' paths")
        generation = entry.get("generation")
        identifier = str(entry.get("id", f"{section}-{index}"))
        if problem := file_name_problem(identifier):  # an id may name files of its case
            raise UserError(f"dataset file {json_path}: {section} case {index} has the id {identifier!r}, which "
                            f"{problem}: give every case a name such as 'case-001', without / \\ : * ? \" < > |")
        case = Case(
            id=identifier,
            image=(json_path.parent / entry["image"]).resolve(),
            label=(json_path.parent / entry["label"]).resolve(),
            generation=None if generation is None else (json_path.parent / str(generation)).resolve(),
        )
        for file in (case.image, case.label) + ((case.generation,) if case.generation else ()):
            if not file.exists():
                raise UserError(f"dataset file {json_path}: {file} of case {case.id} does not exist")
        cases.append(case)
    return cases
