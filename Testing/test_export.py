"""``hyperspace export``: the network for one spacing, run without the engine (onnxruntime, torch.jit), gives the
engine's own network's logits; its sidecar says enough to prepare the input; bad requests fail before any work."""

import hashlib
import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib import __version__
from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN
from HyperSpaceSegmentationLib.export import ONNX_MISSING, choose_network, sidecar
from HyperSpaceSegmentationLib.io.model_file import SegmentationModel, build_network, load_model, save_model
from HyperSpaceSegmentationLib.networks import HyperConfig, UNetConfig
from HyperSpaceSegmentationLib.preprocessing import Normalisation

from conftest import tiny_model


def run(capsys, *argv):
    code = main(["export", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code, err, *words):
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def scan_array() -> np.ndarray:
    """The bundled sample reoriented to LPS, in array order (z, y, x), as the sidecar says."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(SAMPLE_SCAN)), "LPS")).astype(np.float32)


def by_hand(raw: np.ndarray, normalisation: dict) -> np.ndarray:
    """The sidecar's normalisation recipe, written from its words alone."""
    values = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if normalisation["modality"] == "ct":
        clipped = np.clip(values, normalisation["clip_low"], normalisation["clip_high"])
        return (clipped - normalisation["mean"]) / max(normalisation["std"], 1e-6)
    faces = np.concatenate([np.moveaxis(values, axis, 0)[[0, -1]].ravel() for axis in range(values.ndim)])
    background = values.min() if np.mean(faces == values.min()) >= 0.5 else 0.0
    mask = values != background
    if mask.sum() < 0.01 * mask.size:
        mask[...] = True
    result = (values - values[mask].mean()) / max(values[mask].std(), 1e-6)
    result[~mask] = 0.0
    return result


def logits(network, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(x)).numpy()


def assert_same_logits(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def assert_different_logits(got: np.ndarray, other: np.ndarray) -> None:
    assert np.abs(got - other).max() >= 1e-2 * np.abs(other).max()


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """The embedded 3D model's network for 1.2 x 1.6 x 2.4 mm (x, y, z), as ONNX: ``(path, sidecar)``."""
    if not DEFAULT_MODEL.exists():
        pytest.skip("the embedded model is not built")
    pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("onnx") / "brain.onnx"
    code = main(["export", "--spacing", "1.2", "1.6", "2.4", "-o", str(path), "--quiet"])
    assert code == 0
    return path, json.loads((path.parent / "brain.onnx.json").read_text())


def test_onnx_network_gives_the_engines_logits_at_any_batch_and_size(onnx_export):
    """onnxruntime on crops of the sample (normalised as the sidecar says) of two batch sizes and shapes gives the
    logits of the engine's network generated for the spacing in array order (z, y, x)."""
    ort = pytest.importorskip("onnxruntime")
    path, facts = onnx_export
    engine = load_model(DEFAULT_MODEL).network
    expected_network = engine.static_unet((2.4, 1.6, 1.2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    normalised = by_hand(scan_array(), facts["normalisation"]).astype(np.float32)
    crops = [normalised[None, None, 50:74, 60:92, 45:85],  # 24 x 32 x 40
             np.stack([normalised[None, 40:56, 50:90, 30:46], normalised[None, 60:76, 70:110, 70:86]])]
    for x in crops:
        got = session.run(["logits"], {"image": x})[0]
        expected = logits(expected_network, x)
        assert got.shape == (len(x), 4, *x.shape[2:])
        assert_same_logits(got, expected)
        assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999
    assert_different_logits(logits(engine.static_unet((1.2, 1.6, 2.4)), crops[0]),
                            session.run(["logits"], {"image": crops[0]})[0])  # x, y, z order would be another network


def test_sidecar_says_what_a_program_needs(onnx_export):
    _, facts = onnx_export
    assert facts["network"] == {"file": "brain.onnx", "format": "onnx", "onnx_opset": 18}
    assert facts["labels"] == {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
    assert facts["spacing_mm"] == [1.2, 1.6, 2.4] and facts["spacing_array_order_mm"] == [2.4, 1.6, 1.2]
    assert facts["input"]["layout"] == "N, C, D, H, W" and facts["input"]["size_divisor"] == 8
    assert facts["output"]["label_values"] == [0, 1, 2, 3] and facts["output"]["layout"] == "N, K, D, H, W"
    assert facts["normalisation"]["modality"] == "mr" and facts["normalisation"]["outside_value"] == 0.0
    assert facts["model"]["file"] == DEFAULT_MODEL.name and facts["model"]["method"] == "hyperspace"
    assert facts["model"]["sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert facts["package"]["version"] == __version__ and facts["spacing_notes"] == []


@pytest.mark.parametrize("normalisation", [Normalisation("mr"), Normalisation("ct", -100.0, 180.0, 60.0, 35.0)])
def test_sidecar_normalisation_by_hand_reproduces_preprocessing(normalisation):
    model = tiny_model()
    model.normalisation = normalisation
    choice, _ = choose_network(model, ["1.5"])
    facts = sidecar(model, SAMPLE_SCAN, choice, "net.pt", "torchscript")["normalisation"]
    raw = scan_array()
    raw[0, 0, :3] = [np.nan, np.inf, -np.inf]
    mostly_empty = np.where(np.arange(raw.size).reshape(raw.shape) % 1000 == 0, raw + 1, 0).astype(np.float32)
    for image in (raw, mostly_empty, 2 * raw + 7):  # the last: a background of 7
        np.testing.assert_allclose(by_hand(image, facts), normalisation.apply(image), atol=1e-5)
    assert facts["outside_value"] == pytest.approx(normalisation.outside_value)


def ife_model_file(tmp_path):
    torch.manual_seed(1)
    config = UNetConfig(dim=2, num_classes=2, features=(4, 8, 8, 16), ife="entropy")
    model = SegmentationModel("hyperspace", build_network("hyperspace", config, HyperConfig(hidden=16, rank=2)).eval(),
                              {0: "background", 5: "tissue"}, (0.6, 3.0), Normalisation("mr"))
    return save_model(model, tmp_path / "ife2d.pt")


def test_torchscript_networks_give_the_engines_logits_3d_and_2d_ife(tmp_path, capsys, tiny_model_file):
    """A 3D model at an anisotropic spacing and a 2D IFE model (data-dependent channel selection), traced, at
    other batches and sizes than the trace's; the spacing reaches the weights, in array order."""
    normalised = Normalisation("mr").apply(scan_array())
    cases = [(tiny_model_file, ["1.0", "1.5", "3.0"], (3.0, 1.5, 1.0),
              [normalised[None, None, 50:66, 60:84, 45:77], np.stack([normalised[None, 40:64, 50:66, 30:46]] * 2)]),
             (ife_model_file(tmp_path), ["0.9", "2.5"], (2.5, 0.9),
              [normalised[60:63, None, 40:72, 50:98], normalised[70:71, None, 40:88, 40:72]])]
    for model_file, spacing, spacing_zyx, inputs in cases:
        output = tmp_path / f"{model_file.stem}-net.pt"
        code, out, err = run(capsys, model_file, "--spacing", *spacing, "-o", output)
        assert code == 0, err
        assert f"wrote {output} and {output}.json" in out
        facts = json.loads((tmp_path / f"{output.name}.json").read_text())
        assert facts["spacing_mm"] == [float(s) for s in spacing]
        assert facts["input"]["layout"] == ("N, C, D, H, W" if len(spacing) == 3 else "N, C, H, W")
        traced = torch.jit.load(str(output))
        network = load_model(model_file).network
        for x in inputs:
            got = logits(traced, x)
            assert_same_logits(got, logits(network.static_unet(spacing_zyx), x))
            assert_different_logits(got, logits(network.static_unet(spacing_zyx[::-1]), x))


def test_spacing_outside_the_trained_range_is_clamped_with_a_note(tmp_path, capsys, tiny_model_file):
    output = tmp_path / "net.pt"
    code, _, err = run(capsys, tiny_model_file, "--spacing", "0.5", "1", "5", "-o", output)
    assert code == 0 and "note: spacing 0.5 x 1 x 5 mm lies outside the trained range" in err
    facts = json.loads((tmp_path / "net.pt.json").read_text())
    assert facts["spacing_mm"] == [0.8, 1.0, 3.5] and "clamped" in facts["spacing_notes"][0]
    x = Normalisation("mr").apply(scan_array())[None, None, 50:66, 60:76, 45:61]
    network, got = load_model(tiny_model_file).network, logits(torch.jit.load(str(output)), x)
    assert_same_logits(got, logits(network.static_unet((3.5, 1.0, 0.8)), x))
    assert_different_logits(got, logits(network.static_unet((5.0, 1.0, 0.5)), x))
    choice, _ = choose_network(tiny_model(), ["0.5", "1", "5"], allow_extrapolation=True)
    assert choice.spacing == (0.5, 1.0, 5.0) and "extrapolating" in choice.notes[0]


def test_fs_model_is_for_its_own_spacing_without_one_given():
    model = tiny_model("fs")
    choice, network = choose_network(model, None)
    assert choice.spacing == (1.5, 1.5, 1.5) and network is model.network


@pytest.mark.parametrize("spacing, words", [
    (["0"], ["requested spacing", "invalid"]),
    (["abc"], ["--spacing abc", "one spacing in mm"]),
    (["1", "2"], ["--spacing has 2 values", "give 1 or 3"]),
    (["native"], ["--spacing native needs an image"]),
    ([], ["--spacing"]),
])
def test_bad_spacing_is_refused_before_any_output(tmp_path, capsys, tiny_model_file, spacing, words):
    option = ["--spacing", *spacing] if spacing else []
    code, _, err = run(capsys, tiny_model_file, *option, "-o", tmp_path / "net.pt")
    assert_refused(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_a_2d_model_takes_two_spacings(tmp_path, capsys):
    model_file = save_model(tiny_model(dim=2), tmp_path / "tiny2d.pt")
    code, _, err = run(capsys, model_file, "--spacing", "1", "1", "1", "-o", tmp_path / "net.pt")
    assert_refused(code, err, "--spacing has 3 values", "give 1 or 2")


def test_existing_outputs_are_kept_without_overwrite(tmp_path, capsys, tiny_model_file):
    for existing in ("net.pt.json", "net.pt"):
        (tmp_path / existing).write_text("keep")
        code, _, err = run(capsys, tiny_model_file, "--spacing", "1.5", "-o", tmp_path / "net.pt")
        assert_refused(code, err, f"{existing} exists", "--overwrite")
        assert (tmp_path / existing).read_text() == "keep"
        (tmp_path / existing).unlink()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]
    (tmp_path / "net.pt").write_text("old")
    (tmp_path / "net.pt.json").write_text("old")
    code, _, err = run(capsys, tiny_model_file, "--spacing", "1.5", "-o", tmp_path / "net.pt", "--overwrite")
    assert code == 0, err
    assert json.loads((tmp_path / "net.pt.json").read_text())["network"]["file"] == "net.pt"
    assert isinstance(torch.jit.load(str(tmp_path / "net.pt")), torch.jit.ScriptModule)


@pytest.mark.parametrize("name, words", [
    ("net.h5", ["net.h5: unsupported network format", ".onnx", ".pt"]),
    ("tiny.pt", ["is the model file"]),
])
def test_bad_output_names_are_refused(tmp_path, capsys, tiny_model_file, name, words):
    before = tiny_model_file.read_bytes()
    code, _, err = run(capsys, tiny_model_file, "--spacing", "1.5", "-o", tmp_path / name, "--overwrite")
    assert_refused(code, err, *words)
    assert tiny_model_file.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_help(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["export", "--help"])
    assert stopped.value.code == 0 and "usage: hyperspace export" in capsys.readouterr().out


def test_onnx_without_its_packages_says_how_to_install_them(tmp_path, capsys, tiny_model_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails
    code, _, err = run(capsys, tiny_model_file, "--spacing", "1.5", "-o", tmp_path / "net.onnx")
    assert_refused(code, err, ONNX_MISSING)


def test_exporter_failures_leave_nothing_and_name_the_other_format(tmp_path, capsys, tiny_model_file, monkeypatch):
    pytest.importorskip("onnxscript")

    def failing_export(*args, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")

    def wrong_trace(network, example, **kwargs):
        return lambda x: network(x) + 1.0

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    code, _, err = run(capsys, tiny_model_file, "--spacing", "1.5", "-o", tmp_path / "net.onnx")
    assert_refused(code, err, "ONNX export of this network failed (RuntimeError: unsupported operator)", ".pt")
    monkeypatch.setattr(torch.jit, "trace", wrong_trace)
    code, _, err = run(capsys, tiny_model_file, "--spacing", "1.5", "-o", tmp_path / "net.pt")
    assert_refused(code, err, "does not reproduce it at other input sizes", ".onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]
