"""Text files are UTF-8 with one line end per line on every system (tried here under an emulation of Windows'
defaults), Slicer segmentations keep non-ASCII segment names, grey + alpha pictures are read, and a sheared grid
gets a note."""

from __future__ import annotations

import builtins
import csv
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.evaluation.labels import read_segmentation
from HyperSpaceSegmentationLib.io.images import picture_as_grey, read_image, write_labels
from HyperSpaceSegmentationLib.training.dataset import load_dataset

from conftest import OBLIQUE, phantom
from test_segment_2d import PICTURE_LEVELS, assert_one_line_error, oracle_file, phantom_slice  # noqa: F401 (fixture)

NAMES = {0: "background", 1: "Weiße Substanz", 2: "海马 (hippocampus)"}


@pytest.fixture
def windows_defaults(monkeypatch):
    """Text files opened as on Windows: without an ``encoding`` they are cp1252 (the usual ANSI code page), and
    written without ``newline`` each "\\n" becomes "\\r\\n". Binary files are unchanged."""
    real_open = io.open

    def windows_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
                     opener=None):
        if "b" not in mode:
            if encoding in (None, "locale"):
                encoding = "cp1252"
            if newline is None and any(c in mode for c in "wax+"):
                newline = "\r\n"
        return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    monkeypatch.setattr(builtins, "open", windows_open)
    monkeypatch.setattr(io, "open", windows_open)


def two_labels(shift: int = 0) -> sitk.Image:
    array = np.zeros((12, 14, 16), np.uint8)
    array[2:8, 3:10, 4 + shift:12 + shift] = 1
    array[4:6, 5:7, 6:9] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 2.5))
    return image


def test_seg_nrrd_keeps_non_ascii_segment_names_in_utf8(tmp_path):
    path = write_labels(two_labels(), tmp_path / "labels.seg.nrrd", NAMES)
    header = path.read_bytes().split(b"\n\n", 1)[0]
    assert "Segment0_Name:=Weiße Substanz\n".encode("utf-8") in header  # as Slicer writes it
    segmentation = read_segmentation(path)
    assert list(segmentation.segments) == [NAMES[1], NAMES[2]]
    assert segmentation.value_names == {1: NAMES[1], 2: NAMES[2]}
    assert segmentation.segments[NAMES[2]].sum() == 2 * 2 * 3


@pytest.mark.parametrize("names", [
    {0: "background", 1: "Weiße Substanz", 2: "HyperSpaceName0Placeholder"},  # another name holds such a text
    {0: "background", 1: "HyperSpaceName1Placeholder", 2: "海马"},
    {0: "background", 1: "a?", 2: "aé"},  # a name as its ASCII stand-in would read
])
def test_seg_nrrd_names_are_each_their_own_whatever_they_hold(names, tmp_path):
    segmentation = read_segmentation(write_labels(two_labels(), tmp_path / "labels.seg.nrrd", names))
    assert segmentation.value_names == {1: names[1], 2: names[2]}


@pytest.mark.parametrize("name", ["white\nmatter", "Weiße\nSegment5_Name:=evil", "tab\there\r"])
def test_a_segment_name_with_a_line_break_keeps_the_seg_nrrd_readable(name, tmp_path):
    path = write_labels(two_labels(), tmp_path / "labels.seg.nrrd", {0: "background", 1: name, 2: "other"})
    segmentation = read_segmentation(path)  # one line each: the header is intact
    shown = "".join(" " if c in "\n\r\t" else c for c in name)  # control characters as spaces
    assert segmentation.value_names in ({1: shown, 2: "other"}, {1: shown.strip(), 2: "other"})
    assert segmentation.segments["other"].sum() == 2 * 2 * 3
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).max() == 2


@pytest.mark.parametrize("names", ["segments", "config"])
def test_results_csv_is_utf8_with_crlf_once_per_line_under_windows_defaults(names, tmp_path, capsys, windows_defaults):
    """Classes named by the segments of .seg.nrrd files, or by a config's classes over label maps."""
    rows, suffix = [], ".seg.nrrd" if names == "segments" else ".nrrd"
    for case, shift in (("café", 0), ("Øresund-2", 2)):
        reference = write_labels(two_labels(), tmp_path / f"{case}_ref{suffix}", NAMES)
        prediction = write_labels(two_labels(shift), tmp_path / f"{case}_pred{suffix}", NAMES)
        rows.append(f"{case},{reference.name},{prediction.name}")
    cases = tmp_path / "cases.csv"
    cases.write_bytes(("id,mask,prediction\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    config = tmp_path / "classes.json"
    config.write_bytes(json.dumps({"classes": {NAMES[1]: [1], NAMES[2]: [2]}}, ensure_ascii=False).encode("utf-8"))
    output = tmp_path / "results.csv"
    code = main(["evaluate", "--paths-csv", str(cases), "-o", str(output), "--metrics", "dice"]
                + (["--config", str(config)] if names == "config" else []))
    err = capsys.readouterr().err
    assert code == 0, err
    data = output.read_bytes()
    assert b"\r\r\n" not in data and data.count(b"\r\n") == data.count(b"\n") == 1 + 2 + 5
    table = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert [row["id"] for row in table[:2]] == ["café", "Øresund-2"]
    assert float(table[0]["Weiße Substanz_dice"]) == 1.0 and float(table[1]["Weiße Substanz_dice"]) < 1.0
    assert float(table[1]["海马 (hippocampus)_dice"]) == 1.0


def test_dataset_json_is_read_as_utf8_under_windows_defaults(tmp_path, windows_defaults):
    image, labels = phantom(size=(12, 10, 8))
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    sitk.WriteImage(labels, str(tmp_path / "label.nrrd"))
    spec = {"modality": "mr", "labels": {"0": "background", "1": "Weiße Substanz", "2": "海马"},
            "training": [{"id": "café", "image": "image.nrrd", "label": "label.nrrd"}]}
    path = tmp_path / "dataset.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(spec, ensure_ascii=False).encode("utf-8"))  # as Notepad saves it
    dataset = load_dataset(path)
    assert dataset.training[0].id == "café"
    assert dataset.labels == {0: "background", 1: "Weiße Substanz", 2: "海马"}


def grey_alpha_picture(path):
    """A slice of the asymmetric phantom as an 8-bit grey + alpha PNG (as GIMP writes a grey picture with
    transparency; its left half transparent), and its labels."""
    from PIL import Image

    image, truth = phantom_slice(2, 8, size=(40, 36, 20))
    grey = (sitk.GetArrayFromImage(image)[0] + 100).astype(np.uint8)
    alpha = np.full_like(grey, 255)
    alpha[:, : grey.shape[1] // 2] = 0
    Image.fromarray(np.stack([grey, alpha], axis=-1), "LA").save(path)
    return grey, sitk.GetArrayFromImage(truth)[0]


def test_a_grey_alpha_png_is_read_as_its_grey_channel(tmp_path):
    grey, _ = grey_alpha_picture(tmp_path / "slice.png")
    image = read_image(tmp_path / "slice.png")
    assert image.GetNumberOfComponentsPerPixel() == 2
    picture, note = picture_as_grey(image, tmp_path / "slice.png")
    assert picture.GetNumberOfComponentsPerPixel() == 1 and picture.GetSize() == grey.shape[::-1]
    assert np.array_equal(sitk.GetArrayFromImage(picture), grey)  # the transparent half too
    assert "transparency" in note and "ignored" in note


def test_a_grey_alpha_png_is_segmented_with_a_note(tmp_path, capsys, oracle_file):
    _, truth = grey_alpha_picture(tmp_path / "slice.png")
    output = tmp_path / "mask.png"
    code = main(["segment", str(tmp_path / "slice.png"), "-o", str(output), "--model", str(oracle_file)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: slice.png is a grey picture with transparency (alpha)" in err and "damaged" not in err
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), truth)


def test_a_16_bit_grey_alpha_png_is_a_one_line_error(tmp_path, capsys, oracle_file):
    import struct
    import zlib

    rows = b"".join(b"\x00" + bytes(4 * 6) for _ in range(5))  # 6 x 5 pixels, 16-bit grey + 16-bit alpha

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "deep.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 5, 16, 4, 0, 0, 0))
                                        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    code = main(["segment", str(tmp_path / "deep.png"), "-o", str(tmp_path / "mask.png"), "--model", str(oracle_file)])
    assert_one_line_error(code, capsys.readouterr().err, "16-bit grey picture with transparency", "without the alpha")


def test_a_sheared_grid_gets_a_note_and_an_oblique_one_none(tmp_path, capsys, tiny_model_file):
    for name, direction, sheared in (("sheared.nrrd", (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), True),
                                     ("oblique.nrrd", OBLIQUE, False)):
        image, _ = phantom(size=(24, 20, 16), direction=direction)
        sitk.WriteImage(image, str(tmp_path / name))
        code = main(["segment", str(tmp_path / name), "-o", str(tmp_path / f"{name}.seg.nrrd"), "--model",
                     str(tiny_model_file), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert (f"note: {name} has a sheared grid" in err) == sheared, err
        if sheared:
            assert "17 degrees off a right angle" in err  # the axes meet at 73.3 degrees


def test_a_console_that_cannot_show_a_name_still_gets_the_result_and_its_report(tmp_path):
    """A non-ASCII output name on a console of another code page (cp1252 on Windows, ASCII here): the report on
    standard output escapes it instead of ending the run in a UnicodeEncodeError traceback."""
    import os
    import subprocess
    import sys

    scan = tmp_path / "scan.nrrd"
    sitk.WriteImage(phantom()[0], str(scan))
    output = tmp_path / "Jürgen-海马.seg.nrrd"
    environment = dict(os.environ, PYTHONIOENCODING="ascii")
    result = subprocess.run([sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "segment", str(scan), "-o",
                             str(output), "--spacing", "3"], capture_output=True, env=environment)
    report = result.stdout.decode("ascii") + result.stderr.decode("ascii")
    assert result.returncode == 0, report
    assert "Traceback" not in report and output.is_file()
    assert "J\\xfcrgen-\\u6d77\\u9a6c.seg.nrrd" in result.stdout.decode("ascii")


def test_the_batch_summary_has_one_line_end_per_line_on_windows(tmp_path, windows_defaults):
    from HyperSpaceSegmentationLib.inference.cases import write_summary

    path = write_summary([{"id": "café", "status": "ok"}, {"id": "海马", "status": "failed"}],
                         tmp_path / "summary.csv", overwrite=False)
    data = path.read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert [(r["id"], r["status"]) for r in rows] == [("café", "ok"), ("海马", "failed")]


def test_a_seg_nrrd_segment_without_its_label_value_is_a_one_line_error(tmp_path):
    """A foreign .seg.nrrd whose header lists a segment without ``Segment0_LabelValue``."""
    from HyperSpaceSegmentationLib.errors import UserError

    path = write_labels(two_labels(), tmp_path / "labels.seg.nrrd", {0: "background", 1: "shell", 2: "core"})
    data = path.read_bytes()
    header, voxels = data.split(b"\n\n", 1)
    kept = [line for line in header.split(b"\n") if not line.startswith(b"Segment0_LabelValue:=")]
    assert len(kept) == header.count(b"\n")  # exactly one line went
    path.write_bytes(b"\n".join(kept) + b"\n\n" + voxels)
    with pytest.raises(UserError, match=r"segment 0 has no labelValue .*Segment0_LabelValue"):
        read_segmentation(path)
