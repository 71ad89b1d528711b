"""Writing outputs safely: checks before any work (writable, not an input, a file name every system takes), output
folders removed again when a run fails, atomic files (a temporary file, then a rename), and label images (Slicer
segmentations with named, coloured segments; pictures) and voxel maps written that way."""

from __future__ import annotations

import contextlib
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from ..errors import UserError
from .formats import MAP_OUTPUTS, OUTPUT_EXTENSIONS, PICTURE_OUTPUTS, VOLUME_OUTPUTS, extension


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
        tempfile.TemporaryFile(dir=folder).close()  # one that exists may still refuse new files
    except OSError as error:
        _remove_empty(created)
        raise UserError(f"cannot write in folder {folder} ({error.strerror or type(error).__name__}): give "
                        f"{option} a folder you can write in") from None
    try:
        yield folder
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (innermost first) that are empty."""
    for path in folders:
        with contextlib.suppress(OSError):
            path.rmdir()  # only while empty


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


SEGMENTATION_COMPRESSION = 6  # gzip level of .seg.nrrd: slicerio's 9 took 0.58 s for a 1 mm brain, 6 0.07 s (+10% size)


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
    }, compression_level=SEGMENTATION_COMPRESSION)
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
