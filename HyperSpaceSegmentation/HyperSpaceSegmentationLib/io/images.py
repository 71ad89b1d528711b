"""Reading and checking input images, and writing label images safely (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import UserError

IMAGE_EXTENSIONS = (
    ".seg.nrrd", ".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd", ".dcm", ".tif", ".tiff", ".png",
)
SPACING_LIMITS_MM = (1e-3, 100.0)


def extension(path: str | os.PathLike) -> str:
    """The file's extension, multi-part ones (``.nii.gz``, ``.seg.nrrd``) included, in lower case."""
    name = Path(path).name.lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read an image file or a DICOM series folder; a ``UserError`` says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: check the path")
    if path.is_dir():
        return _read_dicom_folder(path)
    if extension(path) not in IMAGE_EXTENSIONS:
        raise UserError(
            f"{path.name}: unsupported format; use one of {', '.join(IMAGE_EXTENSIONS)} or a DICOM series folder"
        )
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        if "spacing" in str(error).lower():
            raise UserError(f"{path} has an invalid voxel spacing in its header ({_first_line(error)}): "
                            "fix the spacing in the header") from None
        raise UserError(f"{path} could not be read as an image ({_first_line(error)}): check that it is not damaged") from None


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"{folder} is a folder without a DICOM series: give an image file or a DICOM series folder")
    if len(series) > 1:
        raise UserError(f"{folder} holds {len(series)} DICOM series: put the series to segment in a folder of its own")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise UserError(f"DICOM series in {folder} could not be read ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def check_spacing(spacing: tuple[float, ...], source: str) -> None:
    """Reject zero, negative, non-finite or absurd spacings (mm)."""
    low, high = SPACING_LIMITS_MM
    for value in spacing:
        if not math.isfinite(value) or not low <= value <= high:
            raise UserError(
                f"{source} spacing {tuple(round(v, 6) for v in spacing)} mm is invalid: each value must lie in "
                f"[{low:g}, {high:g}] mm; fix the spacing in the image header or on the command line"
            )


def check_image(image: sitk.Image, name: str, dim: int | None = None) -> None:
    """Check that ``image`` is a scalar 2D/3D image with a valid grid and usable voxel values."""
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel: give a single-channel (scalar) image"
        )
    if image.GetDimension() not in (2, 3):
        raise UserError(f"{name} is {image.GetDimension()}D: give a 2D or 3D image (split 4D series into volumes)")
    if 0 in size or math.prod(size) == 0:
        raise UserError(f"{name} is empty (size {size}): give an image with voxels")
    image_dim = image.GetDimension() if min(size) > 1 or image.GetDimension() == 2 else 2
    if dim is not None and image_dim != dim:
        raise UserError(
            f"{name} is a {image_dim}D image but the model is {dim}D: use a {dim}D model or a {image_dim}D image"
        )
    check_spacing(image.GetSpacing(), name)
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.any():
        raise UserError(f"{name} holds only NaN or infinite values: give an image with real intensities")
    finite_values = values[finite]
    if finite_values.min() == finite_values.max():
        raise UserError(f"{name} is constant (every voxel is {finite_values.flat[0]}): there is nothing to segment")


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Fail early, before any work, if ``path`` exists (without ``overwrite``), is a folder, or has no folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a file name for the output")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace it, or choose another output name")
    if not path.parent.exists():
        raise UserError(f"folder {path.parent} does not exist: create it first")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_writable(path, overwrite)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=extension(path) or ".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # the permissions of an ordinary new file, not mkstemp's 0600
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def check_output_path(path: str | os.PathLike, overwrite: bool) -> None:
    """Fail early, before any work, if ``path`` cannot be written as a label image."""
    path = Path(path)
    if extension(path) not in IMAGE_EXTENSIONS or extension(path) in (".dcm", ".png", ".tif", ".tiff"):
        raise UserError(f"{path.name}: unsupported output format; use .seg.nrrd, .nrrd, .nii.gz, .nii or .mha")
    check_writable(path, overwrite)


def write_labels(
    labels: sitk.Image,
    path: str | os.PathLike,
    names: Mapping[int, str],
    colors: Mapping[int, tuple[float, float, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label image; ``.seg.nrrd`` becomes a Slicer segmentation with named, coloured segments."""
    check_output_path(path, overwrite)
    with atomic_output(path, overwrite) as temporary:
        if extension(path) == ".seg.nrrd":
            _write_segmentation(labels, temporary, names, colors or {})
        else:
            sitk.WriteImage(labels, str(temporary), useCompression=True)
    return Path(path)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix from voxel index to physical (LPS) position."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    matrix = np.eye(4)
    matrix[:dim, :dim] = direction * np.array(image.GetSpacing())
    matrix[:dim, 3] = image.GetOrigin()
    return matrix


def _write_segmentation(labels: sitk.Image, path: Path, names: Mapping[int, str], colors: Mapping) -> None:
    import slicerio

    if labels.GetDimension() != 3:
        labels = sitk.JoinSeries(labels)
    voxels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    segmentation = slicerio.create_segmentation(voxels.shape, ijk_to_lps(labels))
    for value in sorted(v for v in names if v != 0):
        segment = {"id": f"Segment_{value}", "name": names[value]}
        if value in colors:
            segment["color"] = list(colors[value])
        slicerio.add_segment(segmentation, voxels == value, segment)
    slicerio.write_segmentation(str(path), segmentation)
