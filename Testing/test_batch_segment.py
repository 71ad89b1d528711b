"""The scripted batch (Resources/Scripts/batch_segment.py and HyperSpaceMRMLLogic.segment_folder) on real MRML
nodes (slicer-core): every volume of a folder segmented through the logic, .seg.nrrd files equal to the command
line's, one MIST results.csv with references, and a broken file reported and skipped."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import asymmetric_phantom
from HyperSpaceSegmentationLib import cli
from HyperSpaceSegmentationLib.evaluation.labels import read_segmentation
from test_mrml_logic import model_file, scene  # noqa: F401  (fixtures)

SCRIPT = Path(__file__).resolve().parents[1] / "HyperSpaceSegmentation" / "Resources" / "Scripts" / "batch_segment.py"


def batch_script():
    spec = importlib.util.spec_from_file_location("batch_segment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two small scans (.nrrd and .nii.gz, one oblique-free and one shifted), a broken file, and references."""
    scans, references = tmp_path / "scans", tmp_path / "references"
    scans.mkdir()
    references.mkdir()
    for case, size, suffix in (("case1", (20, 18, 16), ".nrrd"), ("case2", (18, 20, 14), ".nii.gz")):
        image, labels = asymmetric_phantom(size=size, origin=(5.0, -3.0, 2.0))
        sitk.WriteImage(image, str(scans / f"{case}{suffix}"))
        sitk.WriteImage(labels, str(references / f"{case}.nrrd"))
    (scans / "broken.nrrd").write_text("NRRD0004\nthis is not an image\n")
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
