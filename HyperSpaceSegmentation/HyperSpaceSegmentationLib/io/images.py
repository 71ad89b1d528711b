"""Reading and checking input images: image files, DICOM series folders and pictures (colour or grey with
transparency, whose spacing is rarely known), with a one-line error for a damaged, truncated or unsupported one.
Its names stay importable from here with those of ``formats`` (the extensions) and ``outputs`` (writing safely)."""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import UserError, message_line
from .formats import (
    IMAGE_EXTENSIONS, MAP_OUTPUTS, OUTPUT_EXTENSIONS, PICTURE_EXTENSIONS, PICTURE_OUTPUTS, VOLUME_OUTPUTS, extension,
)
from .outputs import (
    atomic_output, check_map_output, check_not_an_input, check_output_path, check_picture_output,
    check_writable, file_name_problem, ijk_to_lps, output_folder, write_labels, write_probabilities, write_uncertainty,
)

__all__ = [  # this module's names, and those of formats and outputs that its importers know from here
    "LUMINANCE", "SPACING_LIMITS_MM", "read_image", "picture_as_grey", "picture_spacing_note", "itk_warnings_off",
    "check_nifti_complete", "check_spacing", "check_image", "direction_note", "nonfinite_note",
    "IMAGE_EXTENSIONS", "MAP_OUTPUTS", "OUTPUT_EXTENSIONS", "PICTURE_EXTENSIONS", "PICTURE_OUTPUTS", "VOLUME_OUTPUTS",
    "extension", "atomic_output", "check_map_output", "check_not_an_input", "check_output_path",
    "check_picture_output", "check_writable", "file_name_problem", "ijk_to_lps", "output_folder", "write_labels",
    "write_probabilities", "write_uncertainty",
]
LUMINANCE = (0.299, 0.587, 0.114)  # grey value of an R, G, B pixel (ITU-R BT.601, as most image libraries)
SPACING_LIMITS_MM = (1e-3, 100.0)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read an image file or a DICOM series folder; a ``UserError`` says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: check the path")
    if path.is_dir():
        with itk_warnings_off():
            return _read_dicom_folder(path)
    if extension(path) not in IMAGE_EXTENSIONS:
        raise UserError(
            f"{path.name}: unsupported format; use one of {', '.join(IMAGE_EXTENSIONS)} or a DICOM series folder"
        )
    if extension(path) in (".nii", ".nii.gz"):
        check_nifti_complete(path)
    try:
        with itk_warnings_off():
            return sitk.ReadImage(str(path))
    except RuntimeError as error:
        if extension(path) == ".png" and (_png_header(path) or (0, 0))[1] == 4:
            return _read_grey_alpha_png(path)
        if "spacing" in str(error).lower():
            raise UserError(f"{path} has an invalid voxel spacing in its header ({message_line(error, 200)}): "
                            "fix the spacing in the header") from None
        raise UserError(f"{path} could not be read as an image ({message_line(error, 200)}): check that it is not damaged") from None


def _png_header(path: Path) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` of a PNG file's header (colour type 0 grey, 2 RGB, 3 palette, 4 grey + alpha,
    6 RGBA), or ``None`` for a file that is no PNG."""
    with open(path, "rb") as stream:
        start = stream.read(26)
    valid = len(start) == 26 and start[:8] == b"\x89PNG\r\n\x1a\n" and start[12:16] == b"IHDR"
    return (start[24], start[25]) if valid else None


def _read_grey_alpha_png(path: Path) -> sitk.Image:
    """A grey + alpha PNG (as GIMP writes a grey picture with transparency), which ITK cannot read, as a picture
    of two components, grey then alpha (``picture_as_grey`` keeps the grey); read with Pillow (a dependency of
    scikit-image's imageio). Only 8-bit ones: a 16-bit one is a one-line error."""
    from PIL import Image

    depth = _png_header(path)[0]
    if depth != 8:
        raise UserError(f"{path} is a {depth}-bit grey picture with transparency (alpha), which cannot be read: save it "
                        "without the alpha channel (grey only)")
    try:
        with Image.open(path) as picture:
            voxels = np.asarray(picture.convert("LA"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} could not be read as an image ({message_line(error, 200)}): check that it is not damaged") from None
    return sitk.GetImageFromArray(voxels, isVector=True)


def picture_as_grey(image: sitk.Image, path: str | os.PathLike) -> tuple[sitk.Image, str | None]:
    """A colour picture (RGB or RGBA; PNG, JPEG, TIFF or BMP) as one grey channel, its luminance, or a grey picture
    with transparency (grey + alpha PNG) as its grey channel, with a note that says so; the alpha channel (how
    opaque a pixel is drawn) is ignored: a transparent pixel is segmented by its grey value or colour like any
    other. Any other image as it is, with no note."""
    components = image.GetNumberOfComponentsPerPixel()
    if extension(path) not in PICTURE_EXTENSIONS or components not in (2, 3, 4):
        return image, None
    if components == 2:
        grey = sitk.VectorIndexSelectionCast(image, 0)
        return grey, (f"{Path(path).name} is a grey picture with transparency (alpha): segmenting its grey values; "
                      "the transparency is ignored")
    colours = sitk.GetArrayViewFromImage(image)[..., :3].astype(np.float32)
    grey = sitk.GetImageFromArray(colours @ np.array(LUMINANCE, np.float32))
    grey.CopyInformation(image)
    kind = "RGB" if components == 3 else "RGBA"
    return grey, (f"{Path(path).name} is a colour ({kind}) picture: segmenting its luminance "
                  f"({LUMINANCE[0]:g} R + {LUMINANCE[1]:g} G + {LUMINANCE[2]:g} B)")


def picture_spacing_note(image: sitk.Image, path: str | os.PathLike) -> str | None:
    """A note for a picture (PNG, JPEG, TIFF, BMP) that gives no pixel spacing, which is then 1 mm per pixel
    (SimpleITK's default): the spacing is unknown. ``None`` for any other image."""
    if extension(path) not in PICTURE_EXTENSIONS or any(s != 1.0 for s in image.GetSpacing()):
        return None
    values = " ".join(("SX", "SY", "SZ")[:image.GetDimension()])
    return (f"{Path(path).name} gives no pixel spacing, so it is unknown and 1 mm per pixel is assumed: pass "
            f"--image-spacing {values} with the true spacing in mm")


@contextlib.contextmanager
def itk_warnings_off() -> Iterator[None]:
    """Silence ITK's warnings (printed on stderr before our own one-line error) for the duration of a read."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file (ITK reads the missing voxels as zeros): a damaged gzip stream, or fewer
    bytes than the header's data offset plus voxel count times voxel size."""
    try:
        if extension(path) == ".nii.gz":
            with gzip.open(path, "rb") as stream:
                header = stream.read(348)
                length = len(header)
                for chunk in iter(lambda: stream.read(1 << 22), b""):
                    length += len(chunk)
        else:
            with open(path, "rb") as stream:
                header = stream.read(348)
            length = path.stat().st_size
    except (EOFError, OSError, zlib.error) as error:
        raise UserError(f"{path} could not be read as an image: it is truncated or damaged ({message_line(error, 200)}); "
                        "copy or export the file again") from None
    expected = _nifti_expected_length(header)
    if expected is not None and length < expected:
        raise UserError(f"{path} is truncated: its header describes {expected:,} bytes but the file holds "
                        f"{length:,}; copy or export the file again")


def _nifti_expected_length(header: bytes) -> int | None:
    """Data offset + voxels x bytes per voxel from a NIfTI-1 header (either byte order); ``None`` if it is not
    one (ITK's reader then says what is wrong)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            if 1 <= dims[0] <= 7 and all(d >= 1 for d in dims[1 : dims[0] + 1]) and bitpix >= 1:
                return offset + math.prod(dims[1 : dims[0] + 1]) * bitpix // 8
    return None


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"{folder} is a folder without a DICOM series: give an image file or a DICOM series folder")
    if len(series) > 1:
        raise UserError(f"{folder} holds {len(series)} DICOM series: put the series to segment in a folder of its own")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_even_slices(folder, files)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise UserError(f"DICOM series in {folder} could not be read ({message_line(error, 200)})") from None


def _check_even_slices(folder: Path, files: tuple[str, ...]) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing slice, say): ITK would read it onto an even
    grid with an averaged spacing, placing every slice after the gap wrongly."""
    if len(files) < 3:
        return
    positions = []
    for name in files:
        header = sitk.ImageFileReader()
        header.SetFileName(name)
        header.ReadImageInformation()
        if not header.HasMetaDataKey("0020|0032") or not header.HasMetaDataKey("0020|0037"):
            return  # no positions to check (ITK then uses the slice thickness)
        positions.append([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
        cosines = [float(v) for v in header.GetMetaData("0020|0037").split("\\")]
    normal = np.cross(cosines[:3], cosines[3:])
    gaps = np.diff(np.sort(np.asarray(positions) @ normal))
    if gaps.min() <= 0 or gaps.max() - gaps.min() > 0.01 * max(abs(float(np.median(gaps))), 1e-6):
        raise UserError(f"the DICOM series in {folder} has unevenly spaced slices (gaps {gaps.min():.3g} to "
                        f"{gaps.max():.3g} mm: a missing or duplicate slice?): export a complete series")


def check_spacing(spacing: tuple[float, ...], source: str) -> None:
    """Reject zero, negative, non-finite or absurd spacings (mm)."""
    low, high = SPACING_LIMITS_MM
    for value in spacing:
        if not math.isfinite(value) or not low <= value <= high:
            raise UserError(
                f"{source} spacing ({', '.join(f'{v:.6g}' for v in spacing)}) mm is invalid: each value must lie in "
                f"[{low:g}, {high:g}] mm; fix the spacing in the image header, give the true one with --input-spacing, "
                "or fix it on the command line"
            )


def check_image(image: sitk.Image, name: str) -> None:
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
    check_spacing(image.GetSpacing(), name)
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.any():
        raise UserError(f"{name} holds only NaN or infinite values: give an image with real intensities")
    finite_values = values[finite]
    if finite_values.min() == finite_values.max():
        raise UserError(f"{name} is constant (every voxel is {finite_values.flat[0]}): there is nothing to segment")


def direction_note(image: sitk.Image, name: str) -> str | None:
    """A note for an image whose direction matrix is sheared (its axes not at right angles), or ``None``: its
    voxels are then parallelepipeds, not boxes, and distances and volumes in mm are approximate."""
    dim = image.GetDimension()
    axes = np.reshape(image.GetDirection(), (dim, dim))
    axes = axes / np.linalg.norm(axes, axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(dim))
    if cosines.max() <= 1e-3:  # about 0.06 degrees: header rounding noise
        return None
    angle = math.degrees(math.asin(min(float(cosines.max()), 1.0)))
    return (f"{name} has a sheared grid (its direction matrix is not orthogonal: axes {angle:.2g} degrees off a right "
            "angle): it is segmented on its own grid, but distances and volumes in mm are approximate; resample it "
            "onto an orthogonal grid for exact ones")


def nonfinite_note(image: sitk.Image) -> str | None:
    """A note for a user whose image holds NaN or infinite voxels (they are treated as 0), or ``None``."""
    count = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
    return f"{count:,} voxels are NaN or infinite; they are treated as 0" if count else None
