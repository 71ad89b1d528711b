"""The scripted batch (Resources/Scripts/batch_segment.py and HyperSpaceMRMLLogic.segment_folder) on real MRML
nodes (slicer-core): every volume of a folder segmented through the logic, .seg.nrrd files equal to the command
line's, one MIST results.csv with references, and a broken file reported and skipped; the review options (TTA,
uncertainty maps, postprocessing, ensembles) as the command line's, and bad options refused before any work."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import asymmetric_phantom, tiny_model
from HyperSpaceSegmentationLib import cli
from HyperSpaceSegmentationLib.evaluation.labels import read_segmentation
from HyperSpaceSegmentationLib.geometry import same_grid
from HyperSpaceSegmentationLib.io.model_file import save_model
from test_mrml_logic import NAMES, model_file, scene  # noqa: F401  (fixtures)

SCRIPT = Path(__file__).resolve().parents[1] / "HyperSpaceSegmentation" / "Resources" / "Scripts" / "batch_segment.py"


def batch_script():
    spec = importlib.util.spec_from_file_location("batch_segment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two small scans (.nrrd and .nii.gz, one oblique-free and one shifted), a broken file, hidden files, and
    references."""
    scans, references = tmp_path / "scans", tmp_path / "references"
    scans.mkdir()
    references.mkdir()
    for case, size, suffix in (("case1", (20, 18, 16), ".nrrd"), ("case2", (18, 20, 14), ".nii.gz")):
        image, labels = asymmetric_phantom(size=size, origin=(5.0, -3.0, 2.0))
        sitk.WriteImage(image, str(scans / f"{case}{suffix}"))
        sitk.WriteImage(labels, str(references / f"{case}.nrrd"))
    (scans / "broken.nrrd").write_text("NRRD0004\nthis is not an image\n")
    for folder in (scans, references):  # what macOS leaves on a shared drive: hidden, skipped, no case
        (folder / "._case1.nrrd").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return scans, references


def test_batch_segments_a_folder_scores_it_and_skips_a_broken_file(scene, model_file, folders, tmp_path, capsys):
    scans, references = folders
    output = tmp_path / "out"
    code = batch_script().main(["--", str(scans), str(output), "--spacing", "native", "--model", str(model_file),
                                "--device", "cpu", "--reference-folder", str(references)])
    assert code == 1  # some failed
    printed = capsys.readouterr().out
    assert "2 done, 1 failed" in printed and "broken: broken.nrrd is not a readable image file" in printed
    assert sorted(p.name for p in output.iterdir()) == ["case1.seg.nrrd", "case2.seg.nrrd", "results.csv"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0  # the scene is left as it was
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0

    # the written segmentation equals the command line's result on the same file, with the model's names
    assert cli.main(["segment", str(scans / "case1.nrrd"), "-o", str(tmp_path / "cli.seg.nrrd"), "--model",
                     str(model_file), "--device", "cpu", "--quiet"]) == 0
    batch, direct = (read_segmentation(tmp_path / "cli.seg.nrrd"), read_segmentation(output / "case1.seg.nrrd"))
    assert set(batch.segments) == set(direct.segments) == {"box", "ball"}
    for name in batch.segments:
        np.testing.assert_array_equal(batch.segments[name], direct.segments[name])

    with open(output / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["id"] for row in rows][:2] == ["case1", "case2"] and rows[2]["id"] == "Mean"
    assert any(column.endswith("_dice") for column in rows[0])


def test_batch_exit_codes_and_usage_errors(scene, model_file, tmp_path, capsys):
    script = batch_script()
    assert script.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    broken = tmp_path / "only-broken"
    broken.mkdir()
    (broken / "a.nrrd").write_text("not an image")
    assert script.main([str(broken), str(tmp_path / "out"), "--model", str(model_file), "--device", "cpu"]) == 2
    assert script.main([str(broken), str(tmp_path / "out"), "--spacing", "fine"]) == 2  # the engine's own check
    assert "give native, auto, one spacing in mm" in capsys.readouterr().err
    a_file = tmp_path / "results.txt"
    a_file.write_text("kept", encoding="utf-8")
    for output in (a_file, a_file / "inside"):  # the output folder is a file, or lies in one
        assert script.main([str(broken), str(output), "--model", str(model_file), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "results.txt" in err and "folder" in err, err
    assert a_file.read_text(encoding="utf-8") == "kept"


def test_batch_into_a_folder_it_cannot_write_in_is_one_line(scene, model_file, folders, capsys, read_only_folder):
    scans, _ = folders
    assert batch_script().main([str(scans), str(read_only_folder), "--model", str(model_file), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write in folder" in err, err


def cli_labels(scan: Path, output: Path, *options) -> np.ndarray:
    """The command line's labels (a label map) for ``scan`` with ``options``."""
    assert cli.main(["segment", str(scan), "-o", str(output), "--device", "cpu", "--quiet", *map(str, options)]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output)))


def batch_labels(path: Path, like: np.ndarray) -> np.ndarray:
    """A batch .seg.nrrd as a label map (the segments' label values) on its case's grid."""
    segmentation = read_segmentation(path)
    labels = np.zeros(like.shape, np.uint8)
    for name, mask in segmentation.segments.items():
        labels[mask] = {v: n for n, v in NAMES.items()}[name]
    return labels


def smallest_object_mm3(labels: np.ndarray, voxel_mm3: float) -> float:
    """The volume of the smallest connected object (26 neighbours) of any class."""
    sizes = [np.bincount(ndimage.label(labels == value, np.ones((3, 3, 3)))[0].ravel())[1:].min()
             for value in np.unique(labels) if value != 0]
    return min(sizes) * voxel_mm3


def test_batch_writes_uncertainty_maps_and_postprocesses_as_the_command_line(scene, model_file, folders, tmp_path,
                                                                              capsys):
    scans, _ = folders
    output = tmp_path / "out"
    code = batch_script().main([str(scans), str(output), "--model", str(model_file), "--device", "cpu", "--tta", "0",
                                "--uncertainty", "--remove-smaller-than", "5"])
    assert code == 1 and "2 done, 1 failed" in capsys.readouterr().out  # the broken file
    assert sorted(p.name for p in output.iterdir()) == ["case1.seg.nrrd", "case1_uncertainty.nrrd", "case2.seg.nrrd",
                                                        "case2_uncertainty.nrrd"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0  # the maps' nodes removed too
    for case, suffix in (("case1", ".nrrd"), ("case2", ".nii.gz")):
        scan = scans / f"{case}{suffix}"
        uncertainty = sitk.ReadImage(str(output / f"{case}_uncertainty.nrrd"))
        assert same_grid(uncertainty, sitk.ReadImage(str(scan)), tolerance=1e-6)  # on each case's own grid
        values = sitk.GetArrayFromImage(uncertainty)
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1 and values.max() > 0.1
        expected = cli_labels(scan, tmp_path / f"{case}-cli.nrrd", "--model", model_file, "--tta", "0",
                              "--remove-smaller-than", "5", "--uncertainty", tmp_path / f"{case}-u.nrrd")
        labels = batch_labels(output / f"{case}.seg.nrrd", expected)
        np.testing.assert_array_equal(labels, expected)
        assert smallest_object_mm3(labels, 1.0) >= 5  # voxels of 1 mm^3
        np.testing.assert_allclose(values, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{case}-u.nrrd"))),
                                   atol=1e-6)  # the same flips
    plain = cli_labels(scans / "case1.nrrd", tmp_path / "plain.nrrd", "--model", model_file, "--tta", "0")
    assert smallest_object_mm3(plain, 1.0) < 5  # the untrained model leaves small pieces, which the batch removed
    cli_labels(scans / "case1.nrrd", tmp_path / "no-tta.nrrd", "--model", model_file, "--uncertainty",
               tmp_path / "no-tta-u.nrrd")
    maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}-u.nrrd"))) for name in ("case1", "no-tta")]
    assert np.abs(maps[0] - maps[1]).max() > 0.01  # the flips change the map


def test_batch_ensemble_averages_its_models(scene, model_file, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(asymmetric_phantom(size=(20, 18, 16))[0], str(scans / "case.nrrd"))
    second = tiny_model(seed=1)
    second.labels = NAMES
    second_file = save_model(second, tmp_path / "second.pt")
    output = tmp_path / "out"
    assert batch_script().main([str(scans), str(output), "--model", str(model_file), str(second_file),
                                "--device", "cpu"]) == 0, capsys.readouterr()
    expected = cli_labels(scans / "case.nrrd", tmp_path / "cli.nrrd", "--model", model_file, second_file)
    labels = batch_labels(output / "case.seg.nrrd", expected)
    np.testing.assert_array_equal(labels, expected)  # the mean of both models' probabilities
    for one in (model_file, second_file):  # neither model alone
        assert not np.array_equal(labels, cli_labels(scans / "case.nrrd", tmp_path / "one.nrrd", "--model", one,
                                                     "--overwrite"))


@pytest.mark.parametrize("options, words", [
    (["--model", "{model}", "{other}"], ["different labels", "2 core"]),
    (["--model", "{model}", "{missing}"], ["does not exist"]),
    (["--tta", "3"], ["tta"]),
    (["--tta", "x"], ["--tta", "invalid int value: 'x'"]),
    (["--remove-smaller-than", "-1"], ["--remove-smaller-than -1", "0 mm^3 or more"]),
    (["--remove-smaller-than", "10", "3.5"], ["3.5", "whole numbers"]),
    (["--largest-component", "5"], ["--largest-component: 5 is not a foreground label", "3 (box), 7 (ball)"]),
    (["--fill-holes", "0"], ["--fill-holes: 0 is not a foreground label"]),
    (["--uncertain"], ["unrecognized arguments: --uncertain"]),  # options only as spelled out
])
def test_batch_refuses_bad_options_before_any_work(options, words, scene, model_file, folders, tmp_path, capsys,
                                                    monkeypatch):
    import slicer.util

    def launch(*arguments, **keywords):
        raise AssertionError(f"a process was started: {arguments}")

    monkeypatch.setattr(slicer.util, "launchConsoleProcess", launch)
    other = tiny_model()  # labels 0, 1 shell, 2 core
    paths = {"model": model_file, "other": save_model(other, tmp_path / "other.pt"), "missing": tmp_path / "no.pt"}
    options = [option.format(**paths) for option in options]
    if "--model" not in options:
        options += ["--model", str(model_file)]
    scans, _ = folders
    output = tmp_path / "out"
    capsys.readouterr()
    assert batch_script().main([str(scans), str(output), "--device", "cpu", *options]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("batch_segment: error: "), err
    for word in words:
        assert word in err, (word, err)
    assert not output.exists()  # nothing written
