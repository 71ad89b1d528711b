"""Postprocessing of label images as MIST offers it, opt-in and per class.

Three operations, each on chosen classes (label values) of a label image, always applied in this order:

1. ``remove_smaller_than``: connected components of a class smaller than a volume in mm^3 become background (0). The
   volume is the voxel count times the voxel volume (the product of the spacing; a 2D image's pixel area in mm^2),
   so it is right on anisotropic grids. A component of exactly the size is kept.
2. ``largest_component``: only the largest connected component of a class is kept, the others become background
   (a tie keeps the component met first in memory order).
3. ``fill_holes``: holes of a class, the regions of its mask's complement that do not reach the image border, take
   the class label where they are background; voxels of other classes inside a hole are kept.

Removing and selecting first decides which objects are kept; filling last fills the holes of those objects only, and
no filled voxel can be removed again as a fragment. Components are full-connected (26 neighbours in 3D, 8 in 2D);
holes are the face-connected (6 / 4) background regions enclosed by them, the complementary connectivity, so a
surface touching the outside only by a corner or an edge still encloses its cavity. Every operation returns a new
image on the input's grid (size, spacing, origin, direction).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import UserError

OPERATIONS = ("remove_smaller_than", "largest_component", "fill_holes")  # the order in which they are applied
_OPTIONS = {"remove_smaller_than": "--remove-smaller-than", "largest_component": "--largest-component",
            "fill_holes": "--fill-holes"}


@dataclass(frozen=True)
class PostprocessingStep:
    """One operation on the classes ``labels`` (empty: every foreground class of the model, see ``resolve_steps``);
    ``min_volume_mm3`` for ``remove_smaller_than`` only."""

    operation: str
    labels: tuple[int, ...] = ()
    min_volume_mm3: float | None = None


def add_options(parser: argparse.ArgumentParser) -> None:
    """The postprocessing options (``--remove-smaller-than``, ``--largest-component``, ``--fill-holes``) of
    ``hyperspace segment`` and of the Slicer batch script; ``steps_from_options`` reads them."""
    parser.add_argument("--remove-smaller-than", nargs="+", type=float, action="append", metavar=("MM3", "LABEL"),
                        help="postprocess: remove objects (connected components) smaller than MM3 mm^3 of the "
                             "classes LABEL (default: every class); may be given again with another size")
    parser.add_argument("--largest-component", nargs="*", type=int, metavar="LABEL",
                        help="postprocess: keep only the largest object of the classes LABEL (default: every class)")
    parser.add_argument("--fill-holes", nargs="*", type=int, metavar="LABEL",
                        help="postprocess: fill enclosed holes of the classes LABEL (default: every class); applied "
                             "after --remove-smaller-than, then --largest-component")


def steps_from_options(remove_smaller_than: Sequence[Sequence[float]] | None, largest_component: Sequence[int] | None,
                       fill_holes: Sequence[int] | None) -> list[PostprocessingStep]:
    """The steps the command-line options ask for, in the order they are applied: ``remove_smaller_than`` is a list of
    ``[MM3, LABEL, ...]`` (one per option given), the others a list of labels (empty: every class) or ``None``."""
    steps = []
    for values in remove_smaller_than or ():
        size, labels = values[0], values[1:]
        if not (math.isfinite(size) and size >= 0):
            raise UserError(f"--remove-smaller-than {size:g}: give a volume of 0 mm^3 or more, then optional labels")
        steps.append(PostprocessingStep("remove_smaller_than", _integers(labels, "--remove-smaller-than"), size))
    _check_one_size_per_class(steps)
    if largest_component is not None:
        steps.append(PostprocessingStep("largest_component", _integers(largest_component, "--largest-component")))
    if fill_holes is not None:
        steps.append(PostprocessingStep("fill_holes", _integers(fill_holes, "--fill-holes")))
    return steps


def _check_one_size_per_class(steps: Sequence[PostprocessingStep]) -> None:
    """Refuse ``remove_smaller_than`` steps that give one class two sizes (no labels: every class)."""
    sizes: dict[int | None, float] = {}  # a label (None: every class) to its size
    for step in steps:
        for label in step.labels or (None,):
            for other, known in sizes.items():
                if (other == label or None in (other, label)) and known != step.min_volume_mm3:
                    which = "every class" if label is None and other is None else \
                        f"label {label if label is not None else other}"
                    raise UserError(f"--remove-smaller-than gives {which} two sizes ({known:g} and "
                                    f"{step.min_volume_mm3:g} mm^3): give each class one size (no LABEL means every "
                                    "class)")
            sizes[label] = step.min_volume_mm3


def _integers(values: Sequence[float], option: str) -> tuple[int, ...]:
    for value in values:
        if not float(value).is_integer():
            raise UserError(f"{option} {value:g}: labels are whole numbers, the model's label values")
    return tuple(int(v) for v in values)


def resolve_steps(steps: Sequence[PostprocessingStep], model_labels: Mapping[int, str]) -> list[PostprocessingStep]:
    """``steps`` with their labels checked against the model's (``UserError`` for any other, or background 0), and
    no labels replaced by every foreground label of the model."""
    foreground = sorted(label for label in model_labels if label != 0)
    names = ", ".join(f"{label} ({model_labels[label]})" for label in foreground)
    resolved = []
    for step in steps:
        unknown = [label for label in step.labels if label not in foreground]
        if unknown:
            raise UserError(f"{_OPTIONS[step.operation]}: {', '.join(map(str, unknown))} is not a foreground label of "
                            f"the model; its labels are {names}")
        resolved.append(replace(step, labels=tuple(dict.fromkeys(step.labels)) or tuple(foreground)))
    return resolved


def postprocess(labels: sitk.Image, steps: Sequence[PostprocessingStep],
                spacing: Sequence[float] | None = None) -> tuple[sitk.Image, list[dict]]:
    """``labels`` after ``steps`` (applied in the order of ``OPERATIONS``) on the same grid, and what each step did:
    its operation, labels, volume and the voxels it changed per class. Volumes are measured with ``spacing`` (mm, one
    value per axis of ``labels``): the scan's true spacing when its header's is wrong (``--input-spacing``); by
    default the spacing of ``labels``' header."""
    array = sitk.GetArrayFromImage(labels)
    spacing = tuple(float(s) for s in (labels.GetSpacing() if spacing is None else spacing))
    if len(spacing) != labels.GetDimension() or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} is not {labels.GetDimension()} positive values in mm")
    voxel_volume = math.prod(spacing)
    full = ndimage.generate_binary_structure(array.ndim, array.ndim)
    report = []
    for step in sorted(steps, key=lambda s: OPERATIONS.index(s.operation)):
        changed = {}
        for label in step.labels:
            mask = array == label
            if step.operation == "fill_holes":
                change = ndimage.binary_fill_holes(mask) & (array == 0)
            else:
                components, count = ndimage.label(mask, full)
                volumes = ndimage.sum_labels(mask, components, np.arange(1, count + 1)) * voxel_volume
                if step.operation == "remove_smaller_than":
                    keep = volumes >= step.min_volume_mm3
                else:
                    keep = np.arange(count) == (np.argmax(volumes) if count else -1)
                change = mask & ~np.concatenate([[False], keep])[components]
            array[change] = label if step.operation == "fill_holes" else 0
            changed[str(label)] = int(change.sum())
        report.append({"operation": step.operation, "labels": list(step.labels),
                       **({"min_volume_mm3": step.min_volume_mm3} if step.min_volume_mm3 is not None else {}),
                       "voxels_changed": changed})
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(labels)
    return result, report
