"""``--precision``: the network computing in bfloat16 (torch's autocast) keeps nearly every label on the input's grid,
precisions a device or backend cannot run are refused in one line, and the summary says which one ran."""

import importlib.util
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import asymmetric_phantom, tiny_model

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.inference import Segmenter
from HyperSpaceSegmentationLib.inference import segmenter as segmenter_module
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN
from HyperSpaceSegmentationLib.networks import UNet
from HyperSpaceSegmentationLib.progress import Reporter


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="needs the embedded model")
def test_bfloat16_on_the_cpu_changes_only_a_few_labels_of_the_embedded_model():
    from HyperSpaceSegmentationLib.io.model_file import load_model

    scan = sitk.ReadImage(str(SAMPLE_SCAN))
    model = load_model(DEFAULT_MODEL)
    runs = {name: Segmenter(model, device="cpu", backend="torch", precision=name).segment(
        scan, (3.0, 3.0, 3.0), Reporter(stages=4, quiet=True)) for name in ("float32", "bfloat16")}
    half = runs["bfloat16"]
    assert half.GetSize() == scan.GetSize() and half.GetOrigin() == scan.GetOrigin()
    assert half.GetSpacing() == scan.GetSpacing() and half.GetDirection() == scan.GetDirection()
    full, half = (sitk.GetArrayFromImage(runs[name]) for name in ("float32", "bfloat16"))
    agreement = np.mean(full == half)
    assert 0.995 <= agreement < 1.0  # below 1: the network did compute in bfloat16
    for label in (1, 2, 3):
        overlap = 2 * np.sum((full == label) & (half == label)) / (np.sum(full == label) + np.sum(half == label))
        assert overlap > 0.97, label


def test_precisions_that_cannot_run_are_refused_in_one_line(tmp_path, capsys, tiny_model_file):
    image, _ = asymmetric_phantom()
    source = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(source))
    base = ["segment", str(source), "-o", str(tmp_path / "out.nrrd"), "--model", str(tiny_model_file), "--quiet"]
    for options, words in ((["--precision", "float16", "--device", "cpu"], "float16 runs on a GPU"),
                           (["--precision", "bfloat16", "--backend", "onnxruntime"], "bfloat16 runs on torch")):
        assert main(base + options) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and words in error[0], error
    assert not (tmp_path / "out.nrrd").exists()
    with pytest.raises(UserError, match="--precision half: give one of float32, float16, bfloat16"):
        Segmenter(tiny_model(), device="cpu", precision="half")


def test_the_summary_says_which_precision_ran(tmp_path, capsys, tiny_model_file):
    image, _ = asymmetric_phantom(spacing=(1.2, 1.0, 1.4))
    source = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(source))
    for options, expected in (([], "float32"), (["--precision", "bfloat16"], "bfloat16")):
        output = tmp_path / f"{expected}.nrrd"
        code = main(["segment", str(source), "-o", str(output), "--model", str(tiny_model_file), "--spacing", "2",
                     "--device", "cpu", "--json", "--quiet", *options])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads(captured.out)
        assert summary["precision"] == expected and summary["backend"] == "torch"
        assert sitk.ReadImage(str(output)).GetSize() == image.GetSize()


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_auto_keeps_a_half_precision_network_on_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERSPACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(segmenter_module, "EXPORT_PAYS_VOXELS", 0)  # auto would export any float32 network
    reporter = Reporter(stages=1, quiet=True)
    half = Segmenter(tiny_model(), device="cpu", precision="bfloat16")
    assert isinstance(half.predictor_for((2.0,) * 3, 10_000, reporter), UNet)
    assert not (tmp_path / "cache").exists()


def test_a_batch_with_options_that_cannot_run_fails_once_before_any_case(tmp_path, capsys, monkeypatch,
                                                                         tiny_model_file):
    import sys

    image, _ = asymmetric_phantom()
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        sitk.WriteImage(image, str(folder / name))
    output = tmp_path / "results"
    base = ["segment", str(folder), "-o", str(output), "--model", str(tiny_model_file), "--device", "cpu"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    for options, words in ((["--precision", "float16"], "float16 runs on a GPU"),
                           (["--backend", "onnxruntime"], "needs the onnxruntime, onnx and onnxscript packages")):
        assert main(base + options) == 2
        captured = capsys.readouterr()
        error = captured.err.strip().splitlines()
        assert len(error) == 1 and words in error[0], captured.err
        assert not output.exists()
