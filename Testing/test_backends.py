"""The ONNX Runtime backend: the same labels on the input's grid as torch, networks exported once per model and
spacing and kept on disk, damaged or missing pieces handled, and ``auto`` choosing it only where it pays."""

import io
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import asymmetric_phantom, oracle_model, tiny_model

from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.inference import Segmenter, backends
from HyperSpaceSegmentationLib.inference import segmenter as segmenter_module
from HyperSpaceSegmentationLib.inference.backends import OnnxRuntimeNetwork
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN
from HyperSpaceSegmentationLib.networks import UNet
from HyperSpaceSegmentationLib.progress import Reporter

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "network cache"
    monkeypatch.setenv("HYPERSPACE_CACHE_DIR", str(folder))
    return folder


def segment(segmenter: Segmenter, image: sitk.Image, spacing) -> tuple[sitk.Image, str]:
    """The labels of ``image`` at ``spacing`` and what the run logged."""
    log = io.StringIO()
    labels = segmenter.segment(image, spacing, Reporter(stages=4, stream=log))
    return labels, log.getvalue()


def test_oracle_labels_are_exact_on_an_oblique_grid(cache):
    direction = sitk.VersorTransform((0.3, -0.2, 0.9), 0.5).GetMatrix()
    image, truth = asymmetric_phantom(spacing=(1.1, 0.9, 1.3), origin=(5.0, -3.0, 2.0), direction=direction)
    labels, log = segment(Segmenter(oracle_model(), device="cpu", backend="onnxruntime"), image, (2.0, 2.0, 2.0))
    assert "exporting the network for ONNX Runtime" in log
    assert labels.GetSize() == image.GetSize() and labels.GetOrigin() == image.GetOrigin()
    assert labels.GetSpacing() == image.GetSpacing() and labels.GetDirection() == image.GetDirection()
    torch_labels, _ = segment(Segmenter(oracle_model(), device="cpu", backend="torch"), image, (2.0, 2.0, 2.0))
    assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(torch_labels))
    assert np.mean(sitk.GetArrayFromImage(labels) == sitk.GetArrayFromImage(truth)) > 0.97  # 2 mm blurs edges only


def test_an_export_is_kept_on_disk_and_auto_uses_it_once_there(cache):
    image, _ = asymmetric_phantom()
    spacing = (2.0, 2.0, 2.0)
    auto = Segmenter(tiny_model(), device="cpu")  # a small grid: exporting would not pay, so torch until exported
    reporter = Reporter(stages=1, stream=io.StringIO())
    assert isinstance(auto.predictor_for(spacing, 10_000, reporter), UNet)
    labels, log = segment(Segmenter(tiny_model(), device="cpu", backend="onnxruntime"), image, spacing)
    files = list(cache.rglob("*.onnx"))
    assert "exporting" in log and len(files) == 1
    written = files[0].stat().st_mtime_ns
    again, log = segment(Segmenter(tiny_model(), device="cpu", backend="onnxruntime"), image, spacing)
    assert "exporting" not in log and files[0].stat().st_mtime_ns == written
    assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(labels))
    assert isinstance(Segmenter(tiny_model(), device="cpu").predictor_for(spacing, 10_000, reporter),
                      OnnxRuntimeNetwork)
    other = Segmenter(tiny_model(seed=1), device="cpu")  # other weights: not this export
    assert isinstance(other.predictor_for(spacing, 10_000, reporter), UNet)
    assert isinstance(auto.predictor_for((2.5, 2.0, 2.0), 10_000, reporter), UNet)  # another spacing


def test_a_damaged_export_is_exported_again(cache):
    image, _ = asymmetric_phantom()
    first, _ = segment(Segmenter(tiny_model(), device="cpu", backend="onnxruntime"), image, (2.0, 2.0, 2.0))
    [path] = cache.rglob("*.onnx")
    path.write_bytes(b"not a network")
    labels, log = segment(Segmenter(tiny_model(), device="cpu", backend="onnxruntime"), image, (2.0, 2.0, 2.0))
    assert "exporting" in log and path.stat().st_size > 1000
    assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(first))
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper  # a valid network of another interface (input "x"), as another version might have written
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    labels, log = segment(Segmenter(tiny_model(), device="cpu", backend="onnxruntime"), image, (2.0, 2.0, 2.0))
    assert "exporting" in log and path.stat().st_size > 1000
    assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(first))


def test_a_fixed_spacing_network_run_by_torch_first_is_exported_in_its_plain_form(cache):
    """torch runs a 3D U-Net channels-last, with its own normalisation; the export must not take that form."""
    onnx = pytest.importorskip("onnx")
    image, _ = asymmetric_phantom()
    model = tiny_model(method="fs")
    torch_labels, _ = segment(Segmenter(model, device="cpu", backend="torch"), image, (2.0, 2.0, 2.0))
    assert model.network.channels_last
    labels, log = segment(Segmenter(model, device="cpu", backend="onnxruntime"), image, (2.0, 2.0, 2.0))
    assert "exporting" in log and model.network.channels_last  # the torch network is left as it was
    [path] = cache.rglob("*.onnx")
    operators = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "InstanceNormalization" in operators and "Transpose" not in operators
    assert np.mean(sitk.GetArrayFromImage(labels) == sitk.GetArrayFromImage(torch_labels)) >= 0.999


def test_missing_packages_or_cache_fail_in_one_line_and_auto_falls_back_to_torch(cache, tmp_path, monkeypatch,
                                                                                 read_only_folder):
    image, _ = asymmetric_phantom()
    reporter = Reporter(stages=1, stream=io.StringIO())
    monkeypatch.setattr(segmenter_module, "EXPORT_PAYS_VOXELS", 0)  # auto would export any network
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(UserError, match="needs the onnxruntime, onnx and onnxscript packages.*--backend torch"):
        Segmenter(tiny_model(), device="cpu", backend="onnxruntime").predictor_for((2.0,) * 3, 10_000, reporter)
    assert isinstance(Segmenter(tiny_model(), device="cpu").predictor_for((2.0,) * 3, 10_000, reporter), UNet)
    monkeypatch.delitem(sys.modules, "onnxruntime")
    blocker = tmp_path / "a file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("HYPERSPACE_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(UserError, match="cannot write to the network cache .*HYPERSPACE_CACHE_DIR.*--backend torch"):
        Segmenter(tiny_model(), device="cpu", backend="onnxruntime").predictor_for((2.0,) * 3, 10_000, reporter)
    auto = Segmenter(tiny_model(), device="cpu")
    labels, log = segment(auto, image, (2.0, 2.0, 2.0))
    assert labels.GetSize() == image.GetSize()
    assert "note: torch runs the network, as ONNX Runtime could not: cannot write to the network cache" in log
    again, log = segment(auto, image, (2.0, 2.0, 2.0))  # not tried again for every scan
    assert "exporting" not in log and "note" not in log and auto.backend_used == "torch"
    monkeypatch.setenv("HYPERSPACE_CACHE_DIR", str(read_only_folder))  # there, but not writable
    with pytest.raises(UserError, match="cannot write to the network cache .*HYPERSPACE_CACHE_DIR.*--backend torch"):
        Segmenter(tiny_model(), device="cpu", backend="onnxruntime").predictor_for((2.0,) * 3, 10_000, reporter)
    assert not list(read_only_folder.rglob("*"))
    with pytest.raises(UserError, match="--backend fast: give one of auto, torch, onnxruntime"):
        Segmenter(tiny_model(), device="cpu", backend="fast")


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="needs the embedded model")
def test_the_embedded_model_gives_the_same_labels_on_both_backends(cache):
    from HyperSpaceSegmentationLib.io.model_file import load_model

    scan = sitk.ReadImage(str(SAMPLE_SCAN))
    model = load_model(DEFAULT_MODEL)
    runs = [segment(Segmenter(model, device="cpu", backend=name), scan, (3.0, 3.0, 3.0))[0]
            for name in ("torch", "onnxruntime")]
    arrays = [sitk.GetArrayFromImage(labels) for labels in runs]
    assert runs[1].GetSize() == scan.GetSize() and runs[1].GetDirection() == scan.GetDirection()
    assert len(np.unique(arrays[0])) == 4
    assert np.mean(arrays[0] == arrays[1]) >= 0.999


def test_the_command_line_runs_either_backend_and_says_which(cache, tmp_path, capsys, tiny_model_file):
    import json

    from HyperSpaceSegmentationLib.cli import main

    image, _ = asymmetric_phantom(spacing=(1.2, 1.0, 1.4))
    source = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(source))
    results = {}
    for backend in ("onnxruntime", "torch"):
        output = tmp_path / f"{backend}.nrrd"
        code = main(["segment", str(source), "-o", str(output), "--model", str(tiny_model_file), "--spacing", "2",
                     "--backend", backend, "--json", "--quiet"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert json.loads(captured.out)["backend"] == backend
        results[backend] = sitk.ReadImage(str(output))
    assert results["onnxruntime"].GetSize() == image.GetSize()
    assert results["onnxruntime"].GetSpacing() == image.GetSpacing()
    arrays = [sitk.GetArrayFromImage(results[name]) for name in ("onnxruntime", "torch")]
    assert np.mean(arrays[0] == arrays[1]) >= 0.999


def test_a_model_file_has_one_cache_key_however_often_it_is_loaded(tmp_path):
    """A HyperSpace model builds a randomly initialised template U-Net at every load: the key must not see it."""
    from HyperSpaceSegmentationLib.inference.backends import model_digest
    from HyperSpaceSegmentationLib.io.model_file import load_model, save_model

    path = save_model(tiny_model(), tmp_path / "tiny.pt")
    first, second = load_model(path), load_model(path)
    assert model_digest(first) == model_digest(second)
    assert model_digest(first) != model_digest(tiny_model(seed=1))


def test_the_summary_names_each_ensemble_members_backend(cache, tmp_path, capsys):
    import json

    from HyperSpaceSegmentationLib.cli import main
    from HyperSpaceSegmentationLib.io.model_file import save_model

    image, _ = asymmetric_phantom(spacing=(1.2, 1.0, 1.4))
    source = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(source))
    first, second = (save_model(tiny_model(seed=seed), tmp_path / f"m{seed}.pt") for seed in (0, 1))
    base = ["segment", str(source), "--spacing", "2", "--json", "--quiet", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "first.nrrd"), "--model", str(first), "--backend", "onnxruntime"]) == 0
    capsys.readouterr()
    code = main([*base, "-o", str(tmp_path / "both.nrrd"), "--model", str(first), str(second)])  # auto
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert [m["backend"] for m in summary["models"]] == ["onnxruntime", "torch"]  # only the first was exported
    assert summary["backend"] == "onnxruntime + torch"
