"""2D mode: a 2D model segments 2D images, single-slice volumes and volumes slice by slice (``--mode 2d``)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib import cli, models
from HyperSpaceSegmentationLib.inference import Segmenter, Slices, SpacingRequest
from HyperSpaceSegmentationLib.inference.sliding_window import predict_probabilities
from HyperSpaceSegmentationLib.io import model_file
from HyperSpaceSegmentationLib.io.model_file import SegmentationModel, build_network, load_model, save_model
from HyperSpaceSegmentationLib.networks import HyperConfig, UNet, UNetConfig
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.progress import Reporter, parse_progress_line

from conftest import OBLIQUE, asymmetric_phantom, on_grid, oracle_model, phantom, tiny_model

PERMUTED = (0, 0, -1, -1, 0, 0, 0, 1, 0)  # i runs toward A, j toward S, k toward R: axes swapped and flipped
FLIPPED = (-1, 0, 0, 0, 1, 0, 0, 0, -1)
GRID = dict(size=(20, 18, 16), spacing=(0.9, 1.3, 2.1), origin=(5.0, -6.0, 7.0))
PICTURE_LEVELS = (100.0, 0.0, 200.0)  # the asymmetric phantom's classes 0, 3, 7 shifted by 100 to fit a byte


def array(image):
    return sitk.GetArrayFromImage(image)


def phantom_slice(axis, index, **grid):
    """A single-slice volume, slice ``index`` along file axis ``axis`` of the asymmetric phantom, and its labels."""
    image, truth = asymmetric_phantom(**grid)
    size, start = list(image.GetSize()), [0, 0, 0]
    size[axis], start[axis] = 1, index
    image, truth = sitk.RegionOfInterest(image, size, start), sitk.RegionOfInterest(truth, size, start)
    assert len(np.unique(array(truth))) > 1
    return image, truth


def only_slice(labels, axis, index):
    """``labels`` (a k, j, i array) with every slice along file axis ``axis`` but ``index`` emptied."""
    kept = np.zeros_like(labels)
    np.moveaxis(kept, 2 - axis, 0)[index] = np.moveaxis(labels, 2 - axis, 0)[index]
    return kept


def segment(image, slices=Slices(), model=None, reporter=None):
    """Labels of ``image`` at its native spacing (the oracle 2D model's, by default)."""
    segmenter = Segmenter(model or oracle_model(dim=2), device="cpu", patch=32, slices=slices)
    spacing = segmenter.choose_spacing(image, SpacingRequest("native")).spacing
    return segmenter.segment(image, spacing, reporter or Reporter(3, quiet=True))


def assert_on_grid(labels, image):
    assert labels.GetSize() == image.GetSize()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(labels, getter)() == getattr(image, getter)()


# --- the engine: slices of volumes -----------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [OBLIQUE, PERMUTED, FLIPPED], ids=["oblique", "permuted", "flipped"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_by_slice_labels_are_the_phantoms_on_the_input_grid(direction, axis):
    """The oracle's labels are exact at native spacing: a flip, a transposed plane or a half-voxel shift shows."""
    image, truth = asymmetric_phantom(**GRID, direction=direction)
    labels = segment(image, Slices(axis))
    assert_on_grid(labels, image)
    assert np.array_equal(array(labels), array(truth))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_slice_is_segmented_alone_along_each_file_axis(axis):
    image, truth = asymmetric_phantom(**GRID, direction=PERMUTED)
    size = image.GetSize()[axis]
    for index in (size // 4 + 1, 2 * size // 3):  # slices holding the box and the ball, in turn
        labels = segment(image, Slices(axis, index))
        assert_on_grid(labels, image)
        assert np.array_equal(array(labels), only_slice(array(truth), axis, index)) and array(labels).any()


def layered(direction, axis):
    """A volume whose slices along file axis ``axis`` are each one constant class (0, 3, 7 in turn), as labels."""
    classes = np.arange(GRID["size"][axis]) % 3
    shape = [1, 1, 1]
    shape[2 - axis] = -1
    codes = np.broadcast_to(classes.reshape(shape), GRID["size"][::-1])
    intensity = np.choose(codes, [0.0, -100.0, 100.0]).astype(np.float32)
    labels = np.choose(codes, [0, 3, 7]).astype(np.uint8)
    return on_grid(intensity, GRID["spacing"], GRID["origin"], direction), labels


@pytest.mark.parametrize("direction", [OBLIQUE, PERMUTED], ids=["oblique", "permuted"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_are_resampled_in_plane_only_at_a_coarser_spacing(direction, axis, monkeypatch):
    """Each slice keeps its own content (no smoothing or resampling across slices), and the one network is
    generated for the in-plane working spacing of the plane's axes (array order)."""
    image, labels = layered(direction, axis)
    segmenter = Segmenter(oracle_model(dim=2), device="cpu", patch=32, slices=Slices(axis))
    native = segmenter.native_spacing(image)
    asked = []
    real_network_for = segmenter.network_for
    monkeypatch.setattr(segmenter, "network_for", lambda spacing: asked.append(spacing) or real_network_for(spacing))
    coarse = tuple(2 * s for s in native)
    result = segmenter.segment(image, coarse, Reporter(3, quiet=True))
    assert np.array_equal(array(result), labels)
    assert len(asked) == 1 and asked[0] == pytest.approx(coarse[::-1], rel=0.05)
    in_plane = [s for a, s in enumerate(GRID["spacing"]) if a != axis]
    assert sorted(native) == sorted(in_plane)


def test_the_plane_axes_are_those_of_the_lps_view_in_lps_order():
    image, _ = asymmetric_phantom(**GRID, direction=PERMUTED)  # i is P, j is S, k is L
    views = {axis: Segmenter(oracle_model(dim=2), slices=Slices(axis), device="cpu").view(image) for axis in (0, 1, 2)}
    assert {axis: view.axes for axis, view in views.items()} == {0: "LS", 1: "LP", 2: "PS"}
    assert views[0].spacing == (2.1, 1.3) and views[1].spacing == (2.1, 0.9) and views[2].spacing == (0.9, 1.3)
    assert [views[axis].slices for axis in (0, 1, 2)] == [20, 18, 16]


class CountingOracle(torch.nn.Module):
    """The intensity oracle, counting its calls and the batch sizes it is given."""

    def __init__(self):
        super().__init__()
        self.oracle = oracle_model(dim=2).network
        self.config = self.oracle.config
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.oracle(x)


def test_slices_go_through_the_network_in_batches_with_progress_per_batch(monkeypatch):
    import HyperSpaceSegmentationLib.inference.segmenter as engine

    monkeypatch.setattr(engine, "_MAX_BATCH", 6)
    image, truth = asymmetric_phantom(**GRID, direction=OBLIQUE)  # 16 slices along k, one window each
    model = oracle_model(dim=2)
    model.network = CountingOracle()
    stream = io.StringIO()
    labels = segment(image, model=model, reporter=Reporter(3, stream=stream, quiet=True, progress_lines=True))
    assert np.array_equal(array(labels), array(truth))
    assert model.network.batches == [6, 6, 4]
    events = [e for e in map(parse_progress_line, stream.getvalue().splitlines()) if e and "predict" in e["name"]]
    assert [e["done"] for e in events] == [0, 1, 2, 3, 3] and {e["total"] for e in events} == {3}


def test_a_batch_of_slices_gets_what_each_slice_gets_alone():
    torch.manual_seed(0)
    network = UNet(UNetConfig(dim=2, num_classes=3, features=(4, 8, 8, 16), ife="curvature")).eval()
    slices = torch.randn(5, 1, 40, 24)
    together = predict_probabilities(slices, network, 3, (32, 16))
    alone = torch.cat([predict_probabilities(s[None], network, 3, (32, 16)) for s in slices])
    assert together.shape == (5, 3, 40, 24) and torch.allclose(together, alone, atol=1e-5)


def test_each_slice_is_normalised_on_its_own_so_one_slice_alone_matches_the_whole_run():
    """Slices are normalised as 2D images (as 2D models are trained): ``--slice K`` gives the whole run's slice K."""
    image, _ = phantom(size=(24, 20, 12), spacing=(1.0, 1.2, 2.0), direction=PERMUTED)
    scaled = sitk.GetArrayFromImage(image) * np.linspace(0.5, 3.0, 12)[:, None, None]  # slices of other contrasts
    image = on_grid(scaled.astype(np.float32), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    model = tiny_model(dim=2)
    whole = array(segment(image, Slices(2), model=model))
    for index in (2, 9):
        assert np.array_equal(array(segment(image, Slices(2, index), model=model)), only_slice(whole, 2, index))


def test_a_2d_image_and_a_single_slice_volume_are_stacks_of_one_slice():
    volume, truth = phantom_slice(0, 10, size=(40, 36, 20), spacing=(3.0, 0.9, 1.1), origin=(1.0, 2.0, 3.0),
                                  direction=OBLIQUE)  # the slice lies along i
    model = oracle_model(dim=2)
    model.network = CountingOracle()
    view = Segmenter(model, device="cpu").view(volume)
    assert (view.axes, view.spacing, view.slices) == ("PS", (0.9, 1.1), 1)
    labels = segment(volume, model=model)
    assert model.network.batches == [1]  # one slice, one window: not 40 lines of 1 x 36 voxels
    assert_on_grid(labels, volume)
    assert np.array_equal(array(labels), array(truth))
    volume, truth = phantom_slice(2, 8, size=(40, 36, 20))
    plane = on_grid(array(volume)[0], (0.9, 1.1), (1.0, 2.0), (0.0, -1.0, 1.0, 0.0))
    labels = segment(plane)
    assert_on_grid(labels, plane)
    assert np.array_equal(array(labels), array(truth)[0])


def test_auto_spacing_and_memory_count_every_slice_segmented(monkeypatch):
    import HyperSpaceSegmentationLib.inference.segmenter as engine

    image, _ = asymmetric_phantom(size=(60, 50, 30), spacing=(1.0, 1.0, 2.0))
    every = Segmenter(tiny_model(dim=2), device="cpu", slices=Slices(2))
    one = Segmenter(tiny_model(dim=2), device="cpu", slices=Slices(2, 4))
    native = every.native_spacing(image)
    assert every.working_voxels(image, native) == 30 * one.working_voxels(image, native) == 90_000
    assert one.choose_spacing(image, SpacingRequest("auto", max_voxels=3000)).spacing == pytest.approx(native)
    coarser = every.choose_spacing(image, SpacingRequest("auto", max_voxels=30_000)).spacing
    assert min(coarser) > 1.0 and every.working_voxels(image, coarser) <= 30_000
    batched = every.estimate_memory_mb(image, native)
    monkeypatch.setattr(engine, "_MAX_BATCH", 1)
    activations_mb = 8 * 64 * 56 * (4 + 8 / 4 + 8 / 16 + 16 / 64) * 4 / 2**20  # one slice's: 8 maps per level
    assert batched - every.estimate_memory_mb(image, native) > 29 * activations_mb  # a batch of 30 slices, not 1
    probabilities_mb = 29 * 64 * 56 * 3 * 4 / 2**20  # 29 more slices' class probabilities, padded to a window
    assert every.estimate_memory_mb(image, native) - one.estimate_memory_mb(image, native) > probabilities_mb


def test_memory_beyond_what_is_free_suggests_an_in_plane_spacing(monkeypatch):
    from HyperSpaceSegmentationLib import system
    from HyperSpaceSegmentationLib.errors import UserError

    monkeypatch.setattr(system, "available_memory_mb", lambda device: 1.2)
    image, _ = asymmetric_phantom(**GRID)
    segmenter = Segmenter(tiny_model(dim=2), device="cpu", slices=Slices(2))
    with pytest.raises(UserError, match=r"--spacing [\d.]+ [\d.]+$") as raised:
        segmenter.check_memory(image, segmenter.native_spacing(image))
    suggestion = [float(v) for v in str(raised.value).split("--spacing ")[1].split()]
    assert all(0.8 <= v <= 3.5 for v in suggestion)  # in the trained range: not clamped when followed
    segmenter.check_memory(image, suggestion)  # and it fits


def test_slices_outside_the_image_are_refused():
    from HyperSpaceSegmentationLib.errors import UserError

    image, _ = asymmetric_phantom(**GRID)
    with pytest.raises(UserError, match="the image has 18 slices along axis 1; give 0 to 17"):
        Slices(1, 18).resolved(image)
    with pytest.raises(UserError, match="3D model"):
        Segmenter(tiny_model(), device="cpu", slices=Slices(2, 0))


# --- the command line ------------------------------------------------------------------------------------------

def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def oracle_file(tmp_path, monkeypatch):
    """A model path that loads as the 2D intensity oracle for the phantoms shifted to fit a byte (other paths load
    as usual)."""
    path = tmp_path / "oracle-2d.pt"
    path.write_bytes(b"")
    real = model_file.load_model
    monkeypatch.setattr(model_file, "load_model", lambda p: oracle_model(dim=2, levels=PICTURE_LEVELS)
                        if Path(p) == path else real(p))
    return path


@pytest.fixture
def volume_file(tmp_path):
    image, truth = asymmetric_phantom(**GRID, direction=PERMUTED)
    image = on_grid(array(image) + 100, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    sitk.WriteImage(image, str(tmp_path / "volume.nrrd"))
    return tmp_path / "volume.nrrd", array(truth)


def picture(tmp_path, name="slice.png", colour=False):
    """A slice of the asymmetric phantom as an 8-bit picture (grey, or grey written as RGB), and its labels."""
    image, truth = phantom_slice(2, 8, size=(40, 36, 20))
    values = (array(image)[0] + 100).astype(np.uint8)
    written = sitk.GetImageFromArray(np.stack([values] * 3, axis=-1) if colour else values, isVector=colour)
    sitk.WriteImage(written, str(tmp_path / name))
    return tmp_path / name, array(truth)[0]


def test_a_volume_slice_by_slice_and_one_slice_from_the_command_line(volume_file, oracle_file, tmp_path, capsys):
    path, truth = volume_file
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "all.nrrd", "--model", oracle_file, "--mode", "2d",
                         "--axis", 0, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["mode"], summary["axis"], summary["slice"], summary["slices"]) == ("2d", 0, None, 20)
    assert summary["spacing_axes"] == "LS" and summary["spacing_mm"] == pytest.approx([2.1, 1.3])
    assert "in the slice plane (L x S), 20 slices along file axis 0" in err
    assert np.array_equal(array(sitk.ReadImage(str(tmp_path / "all.nrrd"))), truth)
    code, out, err = run(capsys, "segment", path, "-o", tmp_path / "one.nrrd", "--model", oracle_file, "--mode", "2d",
                         "--axis", 1, "--slice", 4, "--json")
    assert code == 0, err
    assert (json.loads(out)["axis"], json.loads(out)["slice"]) == (1, 4)
    result = sitk.ReadImage(str(tmp_path / "one.nrrd"))
    assert_on_grid(result, sitk.ReadImage(str(path)))
    assert np.array_equal(array(result), only_slice(truth, 1, 4))


def test_a_picture_is_segmented_as_a_2d_image_with_notes(oracle_file, tmp_path, capsys):
    for colour in (False, True):
        source, truth = picture(tmp_path, f"slice-{colour}.png", colour)
        output = tmp_path / f"mask-{colour}.png"
        code, out, err = run(capsys, "segment", source, "-o", output, "--model", oracle_file, "--json")
        assert code == 0, err
        assert json.loads(out)["mode"] == "2d" and "gives no pixel spacing" in err and "--image-spacing SX SY" in err
        assert ("luminance" in err) == colour
        mask = sitk.ReadImage(str(output))
        assert mask.GetPixelID() == sitk.sitkUInt8 and np.array_equal(array(mask), truth)


def test_colour_pictures_become_their_luminance(tmp_path):
    from HyperSpaceSegmentationLib.io.images import picture_as_grey

    rgba = np.array([[[255, 0, 0, 9], [0, 255, 0, 0]], [[0, 0, 255, 255], [10, 20, 30, 40]]], np.uint8)
    for name, colours in (("c.png", rgba), ("c.bmp", rgba[..., :3]), ("c.nrrd", rgba[..., :3])):
        sitk.WriteImage(sitk.GetImageFromArray(colours, isVector=True), str(tmp_path / name))
        grey, note = picture_as_grey(sitk.ReadImage(str(tmp_path / name)), tmp_path / name)
        if name == "c.nrrd":  # not a picture: left as it is, and refused later for its components
            assert grey.GetNumberOfComponentsPerPixel() == 3 and note is None
            continue
        assert note and ("RGBA" if colours.shape[-1] == 4 else "RGB") in note
        assert np.allclose(array(grey), [[76.245, 149.685], [29.07, 0.299 * 10 + 0.587 * 20 + 0.114 * 30]], atol=1e-3)


def test_the_embedded_2d_model_is_the_default_for_pictures(oracle_file, tmp_path, capsys, monkeypatch):
    source, truth = picture(tmp_path)
    monkeypatch.setattr(models, "DEFAULT_MODEL_2D", tmp_path / "missing-2d.pt")
    code, _, err = run(capsys, "segment", source, "-o", tmp_path / "mask.png")
    assert_one_line_error(code, err, "embedded 2D model", "missing-2d.pt", "--model")
    assert not (tmp_path / "mask.png").exists()
    monkeypatch.setattr(models, "DEFAULT_MODEL_2D", oracle_file)
    code, _, err = run(capsys, "segment", source, "-o", tmp_path / "mask.png")
    assert code == 0, err
    assert np.array_equal(array(sitk.ReadImage(str(tmp_path / "mask.png"))), truth)


def test_a_single_slice_volume_is_segmented_on_its_grid_and_may_be_written_as_a_picture(oracle_file, tmp_path, capsys):
    image, truth = phantom_slice(1, 12, size=(40, 36, 20), spacing=(0.8, 2.5, 1.2), origin=(3.0, 4.0, 5.0),
                                 direction=OBLIQUE)
    sitk.WriteImage(on_grid(array(image) + 100, image.GetSpacing(), image.GetOrigin(), image.GetDirection()),
                    str(tmp_path / "slice.nrrd"))
    for output in ("mask.nrrd", "mask.png"):
        code, out, err = run(capsys, "segment", tmp_path / "slice.nrrd", "-o", tmp_path / output, "--model",
                             oracle_file, "--json")
        assert code == 0, err
        assert (json.loads(out)["mode"], json.loads(out)["axis"], json.loads(out)["slices"]) == ("2d", 1, 1)
    result = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert_on_grid(result, sitk.ReadImage(str(tmp_path / "slice.nrrd")))
    assert np.array_equal(array(result), array(truth))
    assert np.array_equal(array(sitk.ReadImage(str(tmp_path / "mask.png"))), array(truth)[:, 0, :])


def test_image_spacing_sets_the_working_spacing_but_not_the_output_header(oracle_file, tmp_path, capsys):
    source, truth = picture(tmp_path)
    code, out, err = run(capsys, "segment", source, "-o", tmp_path / "mask.nrrd", "--model", oracle_file,
                         "--image-spacing", 0.7, 0.9, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["native_spacing_mm"] == pytest.approx([0.7, 0.9]) == summary["spacing_mm"]
    assert "gives no pixel spacing" not in err
    mask = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert mask.GetSpacing() == (1.0, 1.0) and np.array_equal(array(mask), truth)
    code, _, err = run(capsys, "segment", source, "-o", tmp_path / "x.nrrd", "--model", oracle_file,
                       "--image-spacing", 0.7, 0.9, 1.0)
    assert_one_line_error(code, err, "3 values for a 2D image")


def test_mismatched_models_modes_and_slices_are_one_line_errors(volume_file, oracle_file, tmp_path, capsys,
                                                                tiny_model_file):
    path, _ = volume_file
    source, _ = picture(tmp_path)
    cases = [
        ([path, "--model", oracle_file], ["3D image of 20 x 18 x 16", "2D model", "pass --mode 2d", "--axis, --slice"]),
        ([path, "--model", tiny_model_file, "--mode", "2d"], ["--mode 2d", "3D model"]),
        ([source, "--model", tiny_model_file], ["2D image", "3D model", "use a 2D model", "drop --model"]),
        ([path, "--model", oracle_file, "--mode", "2d", "--slice", 16], ["--slice 16", "give 0 to 15"]),
        ([path, "--model", oracle_file, "--mode", "2d", "--axis", 0, "--slice", -1], ["--slice -1", "give 0 to 19"]),
        ([path, "--axis", 1], ["--axis and --slice", "add --mode 2d"]),
        ([path, "--model", tiny_model_file, "--slice", 3], ["--axis and --slice", "add --mode 2d"]),
        ([source, "--model", oracle_file, "--axis", 0], ["--axis 0", "2D image is one slice"]),
        ([source, "--model", oracle_file, "--mode", "3d"], ["--mode 3d needs a 3D model"]),
    ]
    output = tmp_path / "out.nrrd"
    for argv, words in cases:
        code, _, err = run(capsys, "segment", *argv, "-o", output)
        assert_one_line_error(code, err, *words)
        assert not output.exists()


def test_a_picture_output_for_a_volume_is_refused(volume_file, oracle_file, tmp_path, capsys):
    path, _ = volume_file
    for argv in (["--mode", "2d", "--slice", 3], []):
        code, _, err = run(capsys, "segment", path, "-o", tmp_path / "mask.png", "--model", oracle_file, *argv)
        assert_one_line_error(code, err, "mask.png", "one 2D picture", "volume format")
        assert not (tmp_path / "mask.png").exists()


# --- models: info, and files from before IFE ---------------------------------------------------------------------

def ife_model():
    unet = UNetConfig(dim=2, num_classes=3, features=(4, 8, 8, 16), ife="curvature")
    network = build_network("hyperspace", unet, HyperConfig(hidden=16, rank=2))
    return SegmentationModel("hyperspace", network.eval(), {0: "background", 1: "shell", 2: "core"}, (0.8, 3.5),
                             Normalisation("mr"))


def test_info_shows_the_dimensions_and_the_ife_variant(tmp_path, capsys):
    path = save_model(ife_model(), tmp_path / "ife.pt")
    code, out, _ = run(capsys, "info", path, "--json")
    facts = json.loads(out)
    assert code == 0 and (facts["dimensions"], facts["ife"], facts["ife_ratios"]) == (2, "curvature", [0.75, 0.5])
    code, out, _ = run(capsys, "info", path)
    assert code == 0 and "dimensions:        2D" in out and "IFE:               curvature (ratios 0.75, 0.5)" in out
    code, out, _ = run(capsys, "info", save_model(tiny_model(), tmp_path / "3d.pt"), "--json")
    assert (json.loads(out)["dimensions"], json.loads(out)["ife"], json.loads(out)["ife_ratios"]) == (3, "none", [])


def test_a_model_file_from_before_ife_loads_as_a_model_without_it(tmp_path, capsys):
    path = save_model(tiny_model(dim=2), tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    for key in ("ife", "ife_ratios"):
        del payload["unet"][key]
    torch.save(payload, path)
    assert "ife" not in torch.load(path, weights_only=True)["unet"]
    model = load_model(path)
    assert model.dim == 2 and model.unet_config.ife == "none" and model.unet_config.ife_ratios == ()
    code, out, _ = run(capsys, "info", path, "--json")
    assert code == 0 and json.loads(out)["ife"] == "none"
