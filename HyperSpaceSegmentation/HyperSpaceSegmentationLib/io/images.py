"""Reading and checking input images, and writing label images safely (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import tempfile
import unicodedata
import zlib
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from ..errors import UserError

# 2D pictures: their pixel spacing is rarely known, and colour ones are segmented by their luminance
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IMAGE_EXTENSIONS = (".seg.nrrd", ".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd", ".dcm") + PICTURE_EXTENSIONS
# outputs are single files, so that writing one and moving it into place is one step (.mhd and .nhdr have two);
# a picture (lossless only) holds the labels of a 2D image or of a single-slice volume
PICTURE_OUTPUTS = (".png", ".tif", ".tiff", ".bmp")
VOLUME_OUTPUTS = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha")
OUTPUT_EXTENSIONS = VOLUME_OUTPUTS + PICTURE_OUTPUTS
MAP_OUTPUTS = (".nrrd", ".nii.gz", ".nii", ".mha")  # voxel maps for review (probabilities, uncertainty): any voxel type
LUMINANCE = (0.299, 0.587, 0.114)  # grey value of an R, G, B pixel (ITU-R BT.601, as most image libraries)
SPACING_LIMITS_MM = (1e-3, 100.0)


def _read_umask() -> int:
    """The process's file-creation mask; read once, at import, since reading it means setting it for a moment."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
# colours of segments whose model gives none: distinct, readable over grey-scale images (RGB in 0-1)
SEGMENT_PALETTE = (
    (0.90, 0.35, 0.25), (0.30, 0.65, 0.95), (0.95, 0.80, 0.25), (0.45, 0.80, 0.40), (0.75, 0.45, 0.85),
    (0.95, 0.55, 0.75), (0.35, 0.85, 0.80), (0.85, 0.60, 0.30), (0.60, 0.60, 0.95), (0.70, 0.90, 0.35),
)


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
            raise UserError(f"{path} has an invalid voxel spacing in its header ({_first_line(error)}): "
                            "fix the spacing in the header") from None
        raise UserError(f"{path} could not be read as an image ({_first_line(error)}): check that it is not damaged") from None


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
        raise UserError(f"{path} could not be read as an image ({_first_line(error)}): check that it is not damaged") from None
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
        raise UserError(f"{path} could not be read as an image: it is truncated or damaged ({_first_line(error)}); "
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
        raise UserError(f"DICOM series in {folder} could not be read ({_first_line(error)})") from None


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


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


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


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Fail early, before any work, if ``path`` exists (without ``overwrite``) or is a folder, or if its folder
    is missing, is a file, or cannot be written in (tried by creating and removing a file there)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a file name for the output")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace it, or choose another output name")
    folder = path.parent
    if not folder.is_dir():
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"{blocker} is a file, not a folder: choose an output in a folder")
        raise UserError(f"folder {folder} does not exist: create it first")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UserError(f"cannot write in folder {folder} ({error.strerror or type(error).__name__}): "
                        "choose a folder you can write in") from None


def foreign_delimiter(text: str) -> str | None:
    """How the first line of the CSV text ``text`` separates its columns when not with commas, as spreadsheets set
    to some languages save CSV: 'semicolons (;)', 'tabs' or 'bars (|)'; else ``None``."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    delimiter = next((d for d in ";\t|" if d in first and "," not in first), None)
    return {";": "semicolons (;)", "\t": "tabs", "|": "bars (|)"}.get(delimiter)


_NOT_IN_NAMES = frozenset('<>:"/\\|?*')  # characters that Windows, macOS or Linux refuse in a file name
_DEVICE_NAMES = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                           *(f"lpt{i}" for i in range(1, 10))])  # Windows opens a device for these names


def file_name_problem(name: str) -> str | None:
    """Why ``name`` (a case id) cannot name a file on Windows, macOS and Linux, or ``None``: a phrase such as
    'names a folder, not a file'."""
    if not name.strip():
        return "is blank"
    if name in (".", ".."):
        return "names a folder, not a file"
    if name.startswith("."):
        return "starts with '.', which would make its output a hidden file"
    if bad := sorted({c for c in name if c in _NOT_IN_NAMES or unicodedata.category(c) == "Cc"}):
        return f"holds {' '.join(map(repr, bad))}, which a file name cannot hold"
    if name.endswith((".", " ")):
        return "ends in '.' or a space, which Windows drops from file names"
    if name.split(".")[0].strip().casefold() in _DEVICE_NAMES:
        return "is a device name on Windows"
    return None


def check_not_an_input(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output file that is one of the inputs (``{role: path}``), which writing would destroy."""
    for role, path in inputs.items():
        if not path:
            continue
        if os.path.exists(output) and os.path.exists(path):
            same = os.path.samefile(output, path)
        else:
            same = Path(output).resolve() == Path(path).resolve()
        if same:
            raise UserError(f"output {output} is the {role}: choose another name for the results")


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike, option: str) -> Iterator[Path]:
    """Create ``folder`` (and missing parents) for a run's outputs; if the run fails, remove the folders it created
    that are still empty. ``option`` names the command-line option in messages."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file: give {option} a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the folder {folder} ({error.strerror or type(error).__name__}): give "
                        f"{option} a folder you can write in") from None
    try:
        yield folder
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only while empty
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it to ``path`` only if the block succeeds. Without
    ``overwrite``, a file that appeared at ``path`` meanwhile (another run) is kept and this run fails."""
    path = Path(path)
    check_writable(path, overwrite)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=extension(path) or ".tmp")
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)  # the permissions of an ordinary new file, not mkstemp's 0600
    try:
        yield Path(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            _move_without_replacing(Path(temporary), path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _move_without_replacing(temporary: Path, path: Path) -> None:
    """Give ``temporary`` the name ``path`` unless that name exists; a hard link makes the check and the move
    one step (POSIX, NTFS, APFS); where links are unsupported, check, then rename."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise _appeared_meanwhile(path) from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise _appeared_meanwhile(path) from None
        os.rename(temporary, path)


def _appeared_meanwhile(path: Path) -> UserError:
    return UserError(f"{path} appeared while this run was writing it (another run?): it was kept; pass "
                     "--overwrite to replace it, or choose another output name")


def check_output_path(path: str | os.PathLike, overwrite: bool) -> None:
    """Fail early, before any work, if ``path`` cannot be written as a label image."""
    path = Path(path)
    unsupported = extension(path) not in OUTPUT_EXTENSIONS
    if unsupported and not path.is_dir():
        raise UserError(f"{path.name}: unsupported output format; use {', '.join(OUTPUT_EXTENSIONS)} (one file each)")
    check_writable(path, overwrite)


def check_picture_output(path: str | os.PathLike, image: sitk.Image, name: str) -> None:
    """Refuse a picture output (PNG, TIFF, BMP: one 2D plane) for labels on the grid of ``image`` (called ``name``)
    when that is a volume of several slices."""
    if extension(path) in PICTURE_OUTPUTS and image.GetDimension() == 3 and 1 not in image.GetSize():
        size = " x ".join(map(str, image.GetSize()))
        raise UserError(f"{Path(path).name}: a {extension(path)} file holds one 2D picture, but {name} is a volume of "
                        f"{size} voxels: use a volume format ({', '.join(VOLUME_OUTPUTS)})")


def _picture(labels: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    """Labels as a one-byte 2D picture: a single-slice volume loses its (last) axis of one voxel."""
    check_picture_output(path, labels, "the label image")
    if labels.GetDimension() == 3:
        axis = max(a for a, n in enumerate(labels.GetSize()) if n == 1)
        plane = sitk.GetImageFromArray(np.take(sitk.GetArrayViewFromImage(labels), 0, axis=2 - axis))
        plane.SetSpacing([s for a, s in enumerate(labels.GetSpacing()) if a != axis])
        labels = plane
    return sitk.Cast(labels, sitk.sitkUInt8)


def write_labels(
    labels: sitk.Image,
    path: str | os.PathLike,
    names: Mapping[int, str],
    colors: Mapping[int, tuple[float, float, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label image; ``.seg.nrrd`` becomes a Slicer segmentation with named, coloured segments, and a picture
    (PNG, TIFF, BMP) holds the labels of a 2D image or of a single-slice volume, one byte per pixel."""
    check_output_path(path, overwrite)
    if extension(path) in PICTURE_OUTPUTS:
        labels = _picture(labels, path)
    with atomic_output(path, overwrite) as temporary:
        if extension(path) == ".seg.nrrd":
            _write_segmentation(labels, temporary, names, colors or {})
        else:
            sitk.WriteImage(labels, str(temporary), useCompression=True)
    return Path(path)


def check_map_output(path: str | os.PathLike, overwrite: bool, option: str) -> None:
    """Fail early, before any work, if ``path`` (given with ``option``) cannot be written as a voxel map."""
    path = Path(path)
    if extension(path) not in MAP_OUTPUTS and not path.is_dir():
        raise UserError(f"{option} {path.name}: unsupported format for a voxel map; use {', '.join(MAP_OUTPUTS)}")
    check_writable(path, overwrite)


def write_probabilities(probabilities: np.ndarray, reference: sitk.Image, path: str | os.PathLike,
                        overwrite: bool = False) -> Path:
    """Class probabilities ``(classes, *array shape of reference)`` as a vector image on ``reference``'s grid, one
    uint8 component per class (probability * 255, rounded), in the order of the classes given."""
    array = np.empty((*probabilities.shape[1:], len(probabilities)), np.uint8)
    for c, channel in enumerate(probabilities):
        array[..., c] = np.rint(np.clip(channel, 0.0, 1.0) * 255)
    image = sitk.GetImageFromArray(array, isVector=True)
    image.CopyInformation(reference)
    return _write_map(image, path, overwrite, "--probabilities")


def write_uncertainty(uncertainty: np.ndarray, reference: sitk.Image, path: str | os.PathLike,
                      overwrite: bool = False) -> Path:
    """A float32 map (the array shape of ``reference``) on ``reference``'s grid."""
    image = sitk.GetImageFromArray(uncertainty.astype(np.float32, copy=False))
    image.CopyInformation(reference)
    return _write_map(image, path, overwrite, "--uncertainty")


def _write_map(image: sitk.Image, path: str | os.PathLike, overwrite: bool, option: str) -> Path:
    check_map_output(path, overwrite, option)
    with atomic_output(path, overwrite) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
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
    """A one-layer Slicer segmentation whose segments keep their label values, names and colours."""
    import slicerio

    if labels.GetDimension() != 3:
        labels = sitk.JoinSeries(labels)
    voxels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    values = sorted(v for v in names if v != 0)
    dtype = np.uint8 if max(values, default=0) <= np.iinfo(np.uint8).max else np.uint16
    layer = np.where(np.isin(voxels, values), voxels, 0).astype(dtype)
    boxes = scipy.ndimage.find_objects(layer)  # every segment's bounding box, in one pass
    segments, utf8 = [], {}
    for index, value in enumerate(values):
        color = colors.get(value, SEGMENT_PALETTE[index % len(SEGMENT_PALETTE)])
        box = boxes[value - 1] if value <= len(boxes) else None
        # a name is one header line: a control character (a newline) would end it and corrupt the file
        name = "".join(" " if unicodedata.category(c) == "Cc" else c for c in str(names[value]))
        if not name.isascii():  # slicerio's NRRD writer takes ASCII only: written in UTF-8 below, by its key
            utf8[index] = name
            name = name.encode("ascii", "replace").decode("ascii")
        segments.append({"id": f"Segment_{value}", "name": name, "labelValue": int(value), "layer": 0,
                         "extent": _extent(box), "color": [float(c) for c in color]})
    slicerio.write_segmentation(str(path), {
        "voxels": layer, "ijkToLPS": ijk_to_lps(labels), "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"], "masterRepresentation": "Binary labelmap",
        # without it Slicer crops the loaded segmentation to its segments' extent, off the input's grid; Slicer
        # reads a parameter only when an '&' ends it, and slicerio puts '&' between parameters only
        "conversionParameters": [{"name": "Reference image geometry", "value": _reference_geometry(labels),
                                  "description": "Image geometry of the segmented scan (IJK to RAS matrix; extent)&"}],
    })
    if utf8:
        _utf8_names(path, utf8)


def _utf8_names(path: Path, names: Mapping[int, str]) -> None:
    """Write the name of each segment ``{index: name}`` in UTF-8 into the header of the NRRD file ``path`` (its
    ``Segment<index>_Name`` line, whatever that held), as Slicer writes names that are not plain ASCII (the header
    ends at the first empty line; the voxels follow it)."""
    data = path.read_bytes()
    end = data.index(b"\n\n")
    keys = {f"Segment{index}_Name".encode("ascii"): name.encode("utf-8") for index, name in names.items()}
    lines = data[:end].split(b"\n")
    for number, line in enumerate(lines):
        key, separator, _ = line.partition(b":=")
        if separator and key in keys:
            lines[number] = key + b":=" + keys[key]
    path.write_bytes(b"\n".join(lines) + data[end:])


def _reference_geometry(image: sitk.Image) -> str:
    """Slicer's serialised image geometry: the IJK-to-RAS matrix row by row, then the extent, ';'-separated."""
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps(image)
    extent = [v for n in image.GetSize() for v in (0, n - 1)]
    return "".join(f"{v:.17g};" for v in ijk_to_ras.ravel()) + "".join(f"{v};" for v in extent)


def _extent(box: tuple[slice, ...] | None) -> list[int]:
    """Slicer's segment extent: first and last voxel index per axis, or an empty extent for an empty segment."""
    if box is None:
        return [0, -1, 0, -1, 0, -1]
    return [v for axis in box for v in (axis.start, axis.stop - 1)]
