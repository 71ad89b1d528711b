"""The ``hyperspace`` command: bad inputs give one-line errors (exit 2, no output), good ones work end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN
from HyperSpaceSegmentationLib.io.model_file import save_model

from conftest import OBLIQUE, phantom, tiny_model


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def image_file(tmp_path):
    image, _ = phantom(size=(32, 32, 24), spacing=(1.1, 1.1, 1.6), origin=(3.0, -4.0, 9.0), direction=OBLIQUE)
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def write(tmp_path, name, array, spacing=None):
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    if spacing:
        image.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def header_with_spacing(tmp_path, value):
    """A MetaImage whose header says spacing ``value`` on the first axis (SimpleITK refuses to write one)."""
    path = write(tmp_path, "image.mhd", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    path.write_text(path.read_text().replace("ElementSpacing = 1 1 1", f"ElementSpacing = {value} 1 1"))
    return path


BAD_IMAGES = {
    "missing": (lambda t: t / "nope.nii.gz", ["does not exist"]),
    "unsupported": (lambda t: (t / "notes.txt").write_text("x") and t / "notes.txt", ["unsupported format"]),
    "unreadable": (lambda t: (t / "bad.nii.gz").write_bytes(b"garbage" * 10) and t / "bad.nii.gz", ["could not be read"]),
    "4d": (lambda t: write(t, "4d.nii.gz", np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)), ["components"]),
    "2d-for-3d": (lambda t: write(t, "2d.nrrd", np.random.default_rng(0).random((16, 16)).astype(np.float32)), ["2d", "3d model"]),
    "nan": (lambda t: write(t, "nan.nrrd", np.full((8, 8, 8), np.nan, np.float32)), ["nan"]),
    "constant": (lambda t: write(t, "constant.nrrd", np.full((8, 8, 8), 7.0, np.float32)), ["constant"]),
    "zero-spacing": (lambda t: header_with_spacing(t, "0"), ["spacing"]),
    "nan-spacing": (lambda t: header_with_spacing(t, "nan"), ["spacing"]),
    "absurd-spacing": (lambda t: header_with_spacing(t, "5000"), ["spacing"]),
    "empty-folder": (lambda t: (t / "empty").mkdir() or t / "empty", ["dicom"]),
    "empty-image": (lambda t: (t / "empty.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 0 8 8\nElementSpacing = 1 1 1\nElementType = MET_FLOAT\n"
        "ElementDataFile = LOCAL\n") and t / "empty.mha", ["empty"]),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_input_images(case, tmp_path, capsys, tiny_model_file):
    make, words = BAD_IMAGES[case]
    source = make(tmp_path)
    output = tmp_path / "out.nrrd"
    code, _, err = run(capsys, "segment", source, "-o", output, "--model", tiny_model_file)
    assert_one_line_error(code, err, *words)
    assert not output.exists()


def test_2d_image_with_2d_model_and_3d_image_with_2d_model(tmp_path, capsys):
    model = save_model(tiny_model(dim=2), tmp_path / "m2d.pt")
    image2d = write(tmp_path, "slice.nrrd", np.random.default_rng(0).random((40, 40)).astype(np.float32), (0.9, 0.9))
    code, _, err = run(capsys, "segment", image2d, "-o", tmp_path / "slice-seg.nrrd", "--model", model)
    assert code == 0, err
    out = sitk.ReadImage(str(tmp_path / "slice-seg.nrrd"))
    assert out.GetSize() == (40, 40) and out.GetSpacing() == (0.9, 0.9)
    image3d = write(tmp_path, "vol.nrrd", np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
    code, _, err = run(capsys, "segment", image3d, "-o", tmp_path / "x.nrrd", "--model", model)
    assert_one_line_error(code, err, "3d image", "2d model")


@pytest.mark.parametrize("spacing,words", [
    (["0"], ["spacing"]), (["-2"], ["spacing"]), (["nan"], ["spacing"]), (["1e9"], ["spacing"]),
    (["fine"], ["--spacing"]), (["1", "2"], ["2 values"]),
])
def test_bad_spacing_on_the_command_line(spacing, words, image_file, tmp_path, capsys, tiny_model_file):
    output = tmp_path / "out.nrrd"
    code, _, err = run(capsys, "segment", image_file, "-o", output, "--model", tiny_model_file, "--spacing", *spacing)
    assert_one_line_error(code, err, *words)
    assert not output.exists()


def test_memory_beyond_the_machine_suggests_a_coarser_spacing(image_file, tmp_path, capsys, tiny_model_file):
    output = tmp_path / "out.nrrd"
    code, _, err = run(capsys, "segment", image_file, "-o", output, "--model", tiny_model_file,
                       "--spacing", "0.002", "--allow-extrapolation")
    assert_one_line_error(code, err, "MB", "coarser spacing")
    assert not output.exists()


@pytest.mark.parametrize("kind", ["corrupt", "version", "foreign", "missing"])
def test_bad_model_files(kind, image_file, tmp_path, capsys):
    import torch

    path = tmp_path / "model.pt"
    if kind == "corrupt":
        good = save_model(tiny_model(), tmp_path / "good.pt").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif kind == "version":
        payload = torch.load(save_model(tiny_model(), tmp_path / "good.pt"), weights_only=True)
        payload["version"] = 99
        torch.save(payload, path)
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "out.nrrd", "--model", path)
    words = {"corrupt": ["corrupt"], "version": ["version 99"], "foreign": ["not a hyperspace"], "missing": ["does not exist"]}
    assert_one_line_error(code, err, *words[kind])
    assert not (tmp_path / "out.nrrd").exists()


def test_existing_output_needs_overwrite(image_file, tmp_path, capsys, tiny_model_file):
    output = tmp_path / "out.nrrd"
    output.write_text("keep me")
    code, _, err = run(capsys, "segment", image_file, "-o", output, "--model", tiny_model_file)
    assert_one_line_error(code, err, "exists", "--overwrite")
    assert output.read_text() == "keep me"
    code, _, err = run(capsys, "segment", image_file, "-o", output, "--model", tiny_model_file, "--overwrite", "--quiet")
    assert code == 0, err
    assert sitk.ReadImage(str(output)).GetSize() == (32, 32, 24)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_segment_writes_seg_nrrd_on_the_input_grid_with_json_summary(image_file, tmp_path, capsys, tiny_model_file):
    import slicerio

    output = tmp_path / "out.seg.nrrd"
    code, out, err = run(capsys, "segment", image_file, "-o", output, "--model", tiny_model_file,
                         "--spacing", "auto", "--max-voxels", "4000", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["spacing_mm"][0] > 1.5  # auto coarsened to fit 4000 voxels
    assert [s["name"].split()[0] for s in summary["stages"]] == ["load", "resample", "predict", "restore", "labels", "write"]
    assert "[3/6] predict" in err  # one line per stage when stderr is not a terminal
    segmentation = slicerio.read_segmentation(str(output))
    assert {s["name"] for s in segmentation["segments"]} <= {"shell", "core"}
    image = sitk.ReadImage(str(image_file))
    assert segmentation["voxels"].shape[:3] == image.GetSize()
    # every voxel of the file lies where ITK places the input's voxel of the same index
    for index in [(0, 0, 0), (31, 0, 0), (0, 31, 0), (0, 0, 23), (31, 31, 23), (5, 17, 9)]:
        position = np.asarray(segmentation["ijkToLPS"]) @ np.array([*index, 1.0])
        assert np.allclose(position[:3], image.TransformIndexToPhysicalPoint(index), atol=1e-4)


def test_out_of_range_spacing_is_clamped_with_a_note(image_file, tmp_path, capsys, tiny_model_file):
    code, out, err = run(capsys, "segment", image_file, "-o", tmp_path / "o.nrrd", "--model", tiny_model_file,
                         "--spacing", "6", "--json")
    assert code == 0
    assert json.loads(out)["spacing_mm"] == pytest.approx([3.5, 3.5, 3.5], abs=0.2)
    assert "outside the trained range" in err and "--allow-extrapolation" in err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "segment", str(tmp_path / "x.nrrd"),
                             "-o", str(tmp_path / "y.nrrd")], capture_output=True, text=True)
    assert_one_line_error(result.returncode, result.stderr, "does not exist")


def test_help_of_every_command():
    for command in ([], ["segment"], ["train"], ["info"], ["demo"]):
        result = subprocess.run([sys.executable, "-m", "HyperSpaceSegmentationLib.cli", *command, "--help"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "usage: hyperspace" in result.stdout


needs_default_model = pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the embedded model is not built")


@needs_default_model
def test_info_reports_the_embedded_model(capsys):
    code, out, _ = run(capsys, "info", "--json")
    facts = json.loads(out)
    assert code == 0
    assert facts["labels"] == {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
    assert facts["file_size_mb"] <= 10 and facts["hypernetwork_parameters"] > facts["unet_parameters"]
    assert facts["spacing_range_mm"][0] <= 0.8 and facts["spacing_range_mm"][1] >= 3.5


@needs_default_model
def test_demo_segments_the_sample_at_two_spacings_sensibly(tmp_path, capsys):
    """The embedded model's tissue maps of the sample agree with the template's own tissue map."""
    import slicerio

    code, out, err = run(capsys, "demo", "--output-dir", tmp_path / "demo")
    assert code == 0, err
    sample = sitk.ReadImage(str(SAMPLE_SCAN))
    brain = sitk.GetArrayFromImage(sample).transpose(2, 1, 0) > 20
    for name in ("native-1.5mm", "coarse-3mm"):
        segmentation = slicerio.read_segmentation(str(tmp_path / "demo" / f"{name}.seg.nrrd"))
        assert segmentation["voxels"].shape[:3] == sample.GetSize()
        names = {s["name"] for s in segmentation["segments"]}
        assert names == {"CSF", "grey matter", "white matter"}
        labelled = np.zeros(sample.GetSize(), bool)
        for segment in segmentation["segments"]:
            labelled |= slicerio.segment_mask(segmentation, segment)
        # tissue where the brain is, background outside it
        overlap = 2 * (labelled & brain).sum() / (labelled.sum() + brain.sum())
        assert overlap > 0.9, (name, overlap)


def test_bad_patch_size(image_file, tmp_path, capsys, tiny_model_file):
    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "o.nrrd", "--model", tiny_model_file,
                       "--patch", "20")
    assert_one_line_error(code, err, "--patch 20", "multiple of 8")


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """Write a 3D image as a DICOM series (one file per slice, with position, orientation and spacing)."""
    folder.mkdir()
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetDepth()):
        slice_ = image[:, :, index]
        for tag, value in {
            "0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0037": orientation, "0020|0013": str(index),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, index)))),
            "0018|0050": str(image.GetSpacing()[2]), "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{index:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder_is_segmented_on_its_grid(tmp_path, capsys, tiny_model_file):
    image, _ = phantom(size=(32, 28, 12), spacing=(0.8, 0.8, 2.0), origin=(10.0, -20.0, 5.0))
    write_dicom_series(image, tmp_path / "series")
    output = tmp_path / "series-seg.nii.gz"
    code, _, err = run(capsys, "segment", tmp_path / "series", "-o", output, "--model", tiny_model_file)
    assert code == 0, err
    result = sitk.ReadImage(str(output))
    assert result.GetSize() == (32, 28, 12)
    assert np.allclose(result.GetSpacing(), (0.8, 0.8, 2.0)) and np.allclose(result.GetOrigin(), (10.0, -20.0, 5.0))


def test_abbreviated_options_are_refused(tmp_path, capsys):
    """``--mode`` is an option of its own: no prefix of an option is read as the option (``--mod`` as ``--model``)."""
    with pytest.raises(SystemExit) as exit:
        main(["segment", str(tmp_path / "in.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--spac", "3"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit.value.code == 2 and "unrecognized arguments: --spac 3" in error, error
