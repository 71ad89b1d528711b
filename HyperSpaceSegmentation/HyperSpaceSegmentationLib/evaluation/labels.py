"""Segmentations to score: label images (any SimpleITK format) or Slicer ``.seg.nrrd`` files, and the classes
to score in them (label values, segment names, or named groups of labels from a MIST-style JSON config).

Config JSON: ``{"classes": {"whole tumour": [1, 2, 3], "core": [1, 3]}, "metrics": ["dice", "haus95"],
"tolerance": 1.0}``; MIST's ``final_classes`` is read as ``classes``. All keys are optional.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import UserError
from ..geometry import resample_labels
from ..io.formats import extension
from ..io.images import read_image
from ..io.input_files import input_file, read_json

MAX_LABELS = 1000


@dataclass
class Segmentation:
    """Masks on one grid; ``image`` carries the grid (and the label values of a label image)."""

    image: sitk.Image
    values: np.ndarray  # label values in array order (z, y, x); for .seg.nrrd the segments' label values
    segments: dict[str, np.ndarray]  # segment name -> mask ({} for plain label images)
    probabilities: np.ndarray | None = None  # a floating-point prediction in [0, 1]
    value_names: dict[int, str] = field(default_factory=dict)  # label value -> segment name (.seg.nrrd)

    def mask(self, spec: ClassSpec, absent_is_empty: bool = False) -> np.ndarray:
        """The voxels of class ``spec``; a segment this file lacks is an error, or empty if ``absent_is_empty``."""
        if spec.segment is not None:
            if spec.segment in self.segments:
                return self.segments[spec.segment]
            if absent_is_empty:
                return np.zeros(self.values.shape, dtype=bool)
            if not self.segments:
                raise invalid_label(spec.segment)
            raise UserError(f"no segment named {spec.segment!r} (segments: {', '.join(self.segments) or 'none'}): "
                            "check the class names")
        return np.isin(self.values, spec.labels)

    def present_values(self) -> set[int]:
        return {int(v) for v in np.unique(self.values) if v != 0}


@dataclass(frozen=True)
class ClassSpec:
    """A class to score: a union of label values, or a segment found by name."""

    name: str
    labels: tuple[int, ...] = ()
    segment: str | None = None


def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a label image or a ``.seg.nrrd``; a floating-point image is a label map if its values are whole
    numbers, else it must hold probabilities in [0, 1]."""
    path = Path(path)
    if extension(path) == ".seg.nrrd":
        return _read_seg_nrrd(path)
    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise UserError(f"{path} is not a 2D or 3D label image: give a scalar label map or a .seg.nrrd")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.integer):
        if len(np.unique(array)) > MAX_LABELS:
            raise UserError(f"{path} has more than {MAX_LABELS} distinct values, so it looks like an intensity image: "
                            "give a label map")
        return Segmentation(image, array, {})
    finite = np.isfinite(array)
    if not finite.all():
        count = int(array.size - np.count_nonzero(finite))
        raise UserError(f"{path} holds {count:,} NaN or infinite voxels, which are no label: give a label map of whole "
                        "numbers (or probabilities in [0, 1]), with 0 where there is no label")
    if np.array_equal(array, np.round(array)):
        return Segmentation(image, array.astype(np.int64), {})
    if array.min() >= 0 and array.max() <= 1:
        return Segmentation(image, (array >= 0.5).astype(np.uint8), {}, probabilities=array)
    raise UserError(f"{path} holds non-integer values outside [0, 1]: give a label map (or probabilities in [0, 1])")


def _read_seg_nrrd(path: Path) -> Segmentation:
    """Each segment as its own mask (overlapping layers included), on the grid given by the file's ijkToLPS."""
    import slicerio

    if not path.is_file():
        raise UserError(f"{path} does not exist: check the path")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio raises several types for malformed headers
        raise UserError(f"{path} is not a readable Slicer segmentation ({error}): check the file") from None
    shape = segmentation["voxels"].shape[-3:]  # (i, j, k); a layered file has the layer axis first
    if not segmentation.get("segments") and np.any(segmentation["voxels"]):
        found = np.unique(segmentation["voxels"])
        shown = ", ".join(str(v) for v in found[found != 0][:5]) + (", ..." if np.count_nonzero(found) > 5 else "")
        raise UserError(f"{path} holds labelled voxels (values {shown}) but no segments (no Segment0_Name and so on in "
                        "its header): it is a label map saved under the .seg.nrrd name; rename it to .nrrd to use its "
                        "voxel values as labels, or save it from Slicer as a segmentation")
    values = np.zeros(shape[::-1], dtype=np.int64)
    segments, names = {}, {}
    listed = segmentation.get("segments", [])
    # slicerio's NRRD reader drops the bytes of non-ASCII characters; the header holds the names in UTF-8
    utf8 = _segment_names(path)
    if [read for read, _ in utf8] == [segment["name"] for segment in listed]:
        listed = [{**segment, "name": name} for segment, (_, name) in zip(listed, utf8)]
    for index, segment in enumerate(listed):
        missing = [key for key in ("name", "labelValue") if segment.get(key) in (None, "")]
        if missing:
            raise UserError(f"{path}: segment {index} has no {' and no '.join(missing)} in its header (Segment{index}_"
                            f"{'LabelValue' if 'labelValue' in missing else 'Name'}): save it again from Slicer")
        mask = slicerio.segment_mask(segmentation, segment).transpose(2, 1, 0)
        segments[segment["name"]] = mask
        values[mask] = int(segment["labelValue"])
        names[int(segment["labelValue"])] = segment["name"]
    matrix = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    grid = sitk.GetImageFromArray(values.astype(np.uint16))
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(matrix[:3, 3].tolist())
    grid.SetDirection((matrix[:3, :3] / spacing).ravel().tolist())
    return Segmentation(grid, values, segments, value_names=names)


def _segment_names(path: Path) -> list[tuple[str, str]]:
    """``(name as slicerio reads it, name)`` for each segment of a ``.seg.nrrd`` header, in segment order: Slicer
    (and ``write_labels``) write names in UTF-8, and slicerio's reader drops the bytes of non-ASCII characters."""
    header = bytearray()
    with open(path, "rb") as stream:
        while b"\n\n" not in header.replace(b"\r\n", b"\n") and len(header) < (64 << 20):  # ends at an empty line
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            header += chunk
    text = bytes(header).replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", errors="replace")
    names = {}
    for line in text.split("\n"):
        key, _, name = line.partition(":=")
        index = key[len("Segment"):-len("_Name")]
        if key.startswith("Segment") and key.endswith("_Name") and index.isdigit():
            names[int(index)] = ("".join(c for c in name if c.isascii()).strip(), name.strip())
    return [names[index] for index in sorted(names)]


def read_mask(path: str | os.PathLike, reference: sitk.Image) -> np.ndarray:
    """The voxels of ``reference``'s grid (boolean, array order) inside the mask file ``path``: a label map (its
    non-zero voxels) or a ``.seg.nrrd`` (all its segments), on any grid, resampled by nearest neighbour."""
    segmentation = read_segmentation(path)
    if segmentation.image.GetDimension() != reference.GetDimension():
        raise UserError(f"--mask {path} is {segmentation.image.GetDimension()}D but the input is "
                        f"{reference.GetDimension()}D: give a mask of the input's dimensions")
    inside = segmentation.values != 0
    for mask in segmentation.segments.values():  # overlapping segments of a layered .seg.nrrd
        inside |= mask
    holder = sitk.GetImageFromArray(inside.astype(np.uint8))
    holder.CopyInformation(segmentation.image)
    on_grid = sitk.GetArrayFromImage(resample_labels(holder, reference)) > 0
    if not on_grid.any():
        raise UserError(f"--mask {path} covers none of the input's voxels: give a mask of this scan (same patient "
                        "space), or leave --mask out")
    return on_grid


def default_classes(reference: Segmentation, prediction: Segmentation) -> list[ClassSpec]:
    """Segments by name when both files have named segments, else each label value present in either."""
    if reference.segments and prediction.segments:
        names = list(reference.segments) + [n for n in prediction.segments if n not in reference.segments]
        return [ClassSpec(name, segment=name) for name in names]
    values = sorted(reference.present_values() | prediction.present_values())
    names = {**prediction.value_names, **reference.value_names}
    return [ClassSpec(names.get(v, str(v)), labels=(v,)) for v in values]


def invalid_label(item: str) -> UserError:
    """The error for a ``--labels`` item that is neither label values nor, in a .seg.nrrd, a segment name."""
    return UserError(f"{item!r} is not a valid label value or group: label values are integers (2), groups "
                     "comma-separated integers (1,2,3); names are for .seg.nrrd segments")


def classes_from_labels(labels: list[str]) -> list[ClassSpec]:
    """``--labels``: label values (``2``), groups (``1,2,3``) or segment names."""
    classes = []
    for item in labels:
        parts = item.split(",")
        if all(p.strip().lstrip("-").isdigit() for p in parts):
            values = tuple(int(p) for p in parts)
            classes.append(ClassSpec("+".join(map(str, values)), labels=values))
        elif not item.strip() or set(item) <= set("0123456789+-., "):
            raise invalid_label(item)  # blank, or numbers that are not integers (1.5, 1,,2, 1,2,)
        else:
            classes.append(ClassSpec(item, segment=item))
    return classes


def load_config(path: str | os.PathLike) -> tuple[list[ClassSpec] | None, list[str] | None, float | None]:
    """(classes, metrics, tolerance) from a MIST-style JSON config; absent keys give ``None``."""
    path = input_file(path, folder="config file {path} is a folder: give the JSON file in it with --config",
                      missing="config file {path} does not exist: check the --config path")
    config = read_json(path, "config file")
    if not isinstance(config, dict):
        raise UserError(f"config file {path}: the config must be a JSON object, like "
                        '{"classes": {"tumour": [1, 2]}, "metrics": ["dice"], "tolerance": 1.0}')
    groups = config.get("classes", config.get("final_classes"))
    classes = None
    if groups is not None:
        if not isinstance(groups, dict) or not all(
            isinstance(v, list) and v and all(type(label) is int for label in v) for v in groups.values()
        ):
            raise UserError(f"config file {path}: 'classes' must map names to lists of integer label values, "
                            'like {"whole tumour": [1, 2, 3]}')
        classes = [ClassSpec(name, labels=tuple(values)) for name, values in groups.items()]
    metrics = config.get("metrics")
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise UserError(f"config file {path}: 'metrics' must be a list of metric names, like [\"dice\", \"haus95\"]")
    tolerance = config.get("tolerance")
    if tolerance is not None and type(tolerance) not in (int, float):
        raise UserError(f"config file {path}: 'tolerance' must be a number of mm, like 1.0")
    return classes, metrics, float(tolerance) if tolerance is not None else None
