"""hyperspace analyze cka: linear CKA between the layers of the U-Nets a HyperSpace model generates per spacing."""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.analysis import (
    MATPLOTLIB_MISSING, analyse, choose_region, cka_matrix, cka_spacings, linear_cka, on_grid, require_matplotlib,
)
from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.io.model_file import save_model

from conftest import tiny_model

LAYERS = 43  # tiny U-Net: 7 stages of 3 blocks, each after its convolution and its ReLU, and the head


def smooth_volume(size: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth random texture (z, y, x) with no zero voxel (MR normalisation masks none)."""
    noise = scipy.ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(size,) * 3), 2.5, mode="wrap")
    return (100 + 1000 * noise).astype(np.float32)


def smooth_image(size: int = 32) -> sitk.Image:
    image = sitk.GetImageFromArray(smooth_volume(size))
    image.SetOrigin((-20.0, 5.0, 30.0))
    return image


@pytest.fixture(scope="module")
def activations() -> dict[str, torch.Tensor]:
    """Real activations ``(examples, channels)`` of one block of a generated U-Net: after its convolution, after its
    ReLU, and of the next level's first block (8 channels)."""
    unet = tiny_model().network.static_unet((1.5, 1.5, 1.5))
    x = torch.from_numpy(smooth_volume(32))[None, None] / 300
    block = unet.encoder[0].blocks[0]
    with torch.no_grad():
        conv, relu = block.conv(x), block(x)
        deeper = unet.encoder[1].blocks[0](torch.nn.functional.max_pool3d(unet.encoder[0](x), 2))
    return {name: value[0].reshape(value.shape[1], -1).T for name, value in
            (("conv", conv), ("relu", relu), ("deeper", deeper))}


def test_cka_of_identical_activations_is_one(activations):
    for x in activations.values():
        assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)


def test_cka_ignores_rotations_of_channels_scaling_and_offsets(activations):
    x, y = activations["conv"], activations["relu"]
    reference = linear_cka(x, y)
    assert 0.05 < reference < 0.95  # a real comparison, neither trivial end
    rotation, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x @ rotation, y) == pytest.approx(reference, abs=1e-6)
    assert linear_cka(x, y @ rotation) == pytest.approx(reference, abs=1e-6)
    assert linear_cka(3.7 * x, 0.02 * y) == pytest.approx(reference, abs=1e-6)
    assert linear_cka(x + torch.tensor([5.0, -2.0, 40.0, 1.0]), y) == pytest.approx(reference, abs=1e-6)


def test_all_pairs_path_of_the_command_has_the_same_properties(activations):
    """``cka_matrix``, which the command uses on maps over its grid, agrees with ``linear_cka`` and ignores
    rotations of channels, scaling and offsets as it does."""
    x, y = (activations[name].T.reshape(-1, 32, 32, 32) for name in ("conv", "relu"))
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))
    moved = torch.einsum("czyx,cd->dzyx", 2.5 * x, rotation) + torch.tensor([9.0, -4.0, 30.0, 2.0])[:, None, None, None]
    matrix = cka_matrix([x, y, moved], [0, 0, 0])
    assert np.diag(matrix) == pytest.approx(1.0, abs=1e-5)
    assert matrix[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert matrix[0, 1] == pytest.approx(linear_cka(activations["conv"], activations["relu"]), abs=1e-5)
    assert matrix[2, 1] == pytest.approx(matrix[0, 1], abs=1e-5)


def test_cka_is_not_invariant_to_any_linear_map(activations):
    x, y = activations["conv"], activations["relu"]
    stretch = torch.diag(torch.tensor([1.0, 20.0, 0.05, 1.0])) + torch.triu(torch.ones(4, 4), diagonal=1)
    assert abs(linear_cka(x @ stretch, y) - linear_cka(x, y)) > 0.02
    assert linear_cka(x, x @ stretch) < 0.95


def test_unrelated_features_score_near_zero_with_many_examples(activations):
    x = activations["relu"]  # 32^3 examples
    generator = torch.Generator().manual_seed(2)
    assert linear_cka(x, torch.rand(len(x), 8, generator=generator)) < 0.01  # positive, like ReLU outputs
    assert linear_cka(x, torch.randn(len(x), 16, generator=generator)) < 0.01
    assert linear_cka(activations["deeper"], torch.rand(len(activations["deeper"]), 8, generator=generator)) < 0.02


def test_activations_are_compared_at_the_same_physical_positions():
    """A map of each voxel's own position, at any voxel size, lands on the common grid as the grid's positions."""
    image = smooth_image(64)
    region = choose_region(image, [1.0, 2.0], levels=4, size_mm=32)
    for level, voxel in itertools.product(range(4), (1.0, 1.25, 1.6, 2.0)):
        size = 2 ** level * voxel
        count = int(64 / size)
        centres = [(torch.arange(count, dtype=torch.float32) + 0.5) * size] * 3
        z, y, x = torch.meshgrid(*centres, indexing="ij")
        sampled = on_grid(torch.stack([x, y, z]), (size,) * 3, region, level)
        step, shape = region.grid(level)
        expected = [region.start[a] + (np.arange(shape[a]) + 0.5) * step[a] for a in range(3)]
        for axis, values in enumerate(sampled):
            profile = values.numpy().transpose([2, 1, 0])  # x, y, z
            moved = np.moveaxis(profile, axis, 0).reshape(shape[axis], -1)
            np.testing.assert_allclose(moved, np.broadcast_to(expected[axis][:, None], moved.shape), atol=1e-3)


@pytest.fixture(scope="module")
def cka_run(tmp_path_factory):
    """``hyperspace analyze cka`` on the tiny model at 1 and 2 mm over a 32^3 smooth image: (folder, stdout)."""
    folder = tmp_path_factory.mktemp("cka")
    model = save_model(tiny_model(), folder / "tiny.pt")
    image = folder / "image.nrrd"
    sitk.WriteImage(smooth_image(), str(image))
    capture = pytest.MonkeyPatch()
    from io import StringIO
    out = StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        code = main(["analyze", "cka", str(model), "--spacings", "2", "1", "--image", str(image), "-o",
                     str(folder / "out"), "--quiet"])
    finally:
        capture.undo()
    assert code == 0
    return folder, out.getvalue()


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_command_writes_every_pair_and_the_heatmaps(cka_run):
    folder, printed = cka_run
    out = folder / "out"
    rows = read_rows(out / "cka.csv")
    assert list(rows[0]) == ["spacing_a", "spacing_b", "layer_a", "layer_b", "cka"]
    layers = list(dict.fromkeys(row["layer_a"] for row in rows))
    assert len(layers) == LAYERS and layers[0] == "enc0.1.conv" and layers[1] == "enc0.1.relu" and layers[-1] == "head"
    pairs = {(row["spacing_a"], row["spacing_b"]) for row in rows}
    assert pairs == {("1", "1"), ("1", "2"), ("2", "2")}
    assert len(rows) == 3 * LAYERS ** 2
    assert len({(r["spacing_a"], r["spacing_b"], r["layer_a"], r["layer_b"]) for r in rows}) == len(rows)
    values = np.array([float(row["cka"]) for row in rows])
    assert np.isfinite(values).all() and (values > -1e-9).all() and (values < 1 + 1e-6).all()
    for name in ("within-1mm.png", "within-2mm.png", "across-1mm-2mm.png", "same-layer.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in out.iterdir()) == sorted(["cka.csv", "within-1mm.png", "within-2mm.png",
                                                             "across-1mm-2mm.png", "same-layer.png"])
    assert "level" in printed and "encoder" in printed and "wrote" in printed


def test_a_network_compared_with_itself_scores_one_on_the_diagonal(cka_run):
    rows = read_rows(cka_run[0] / "out" / "cka.csv")
    for row in rows:
        if row["spacing_a"] == row["spacing_b"] and row["layer_a"] == row["layer_b"]:
            assert float(row["cka"]) == pytest.approx(1.0, abs=1e-5), row
    within = {(r["layer_a"], r["layer_b"]): float(r["cka"]) for r in rows if r["spacing_a"] == r["spacing_b"] == "1"}
    assert all(value == pytest.approx(within[b, a], abs=1e-9) for (a, b), value in within.items())  # symmetric
    assert min(within.values()) < 0.9  # layers of one network differ from each other


def test_networks_for_different_spacings_differ_but_stay_related(cka_run):
    rows = read_rows(cka_run[0] / "out" / "cka.csv")
    same_layer = {r["layer_a"]: float(r["cka"]) for r in rows
                  if (r["spacing_a"], r["spacing_b"]) == ("1", "2") and r["layer_a"] == r["layer_b"]}
    assert len(same_layer) == LAYERS
    assert min(same_layer.values()) < 0.99  # a different network, not the same one twice
    assert same_layer["enc0.1.conv"] > 0.8  # the first convolution of the same image at the same positions


def test_a_layer_that_passes_the_image_on_matches_across_spacings():
    """A first convolution that copies the image (a centre tap of 1) shows each network its own resampled image:
    at 1 and 2 mm they agree on the common grid only if both are read at the same physical positions."""
    model, image = tiny_model(), smooth_image()
    generate = model.network.static_unet

    def copying(spacing):
        unet = generate(spacing)
        with torch.no_grad():
            conv = unet.encoder[0].blocks[0].conv
            conv.weight.zero_()
            conv.weight[:, 0, 1, 1, 1] = 1.0
            conv.bias.zero_()
        return unet

    model.network.static_unet = copying
    result = analyse(model, image, [1.0, 2.0], choose_region(image, [1.0, 2.0], 4), device="cpu")
    assert result.layers[0].name == "enc0.1.conv"
    assert result.cka[0, 0, 1, 0] > 0.98, result.cka[0, 0, 1, 0]


def assert_refused(capsys, argv, *words) -> None:
    capsys.readouterr()
    code = main(["analyze", "cka", *map(str, argv)])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert error.startswith("hyperspace: error: ") and "\n" not in error and "Traceback" not in error, error
    for word in words:
        assert word in error, (word, error)


@pytest.mark.parametrize("method", ["fs", "as"])
def test_models_without_generated_networks_are_refused(tmp_path, capsys, method):
    path = save_model(tiny_model(method), tmp_path / f"{method}.pt")
    assert_refused(capsys, [path, "--spacings", "1", "2", "-o", tmp_path / "out"], "HyperSpace", method.upper())
    assert not (tmp_path / "out").exists()


def test_one_spacing_is_refused(tmp_path, capsys, tiny_model_file):
    assert_refused(capsys, [tiny_model_file, "--spacings", "1.5", "-o", tmp_path / "out"], "two spacings")
    assert not (tmp_path / "out").exists()


def test_existing_results_are_kept_without_overwrite(tmp_path, capsys, tiny_model_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cka.csv").write_text("earlier results\n")
    assert_refused(capsys, [tiny_model_file, "--spacings", "1.5", "3", "-o", out], "cka.csv", "--overwrite")
    assert (out / "cka.csv").read_text() == "earlier results\n"
    assert [p.name for p in out.iterdir()] == ["cka.csv"]


def test_a_region_beyond_the_image_is_refused(tmp_path, capsys, tiny_model_file):
    image = tmp_path / "image.nrrd"
    sitk.WriteImage(smooth_image(), str(image))
    assert_refused(capsys, [tiny_model_file, "--spacings", "1", "2", "--image", image, "--region", "40", "-o",
                            tmp_path / "out"], "--region", "beyond the image")
    assert_refused(capsys, [tiny_model_file, "--spacings", "1", "2", "--image", image, "--region", "20", "0", "0",
                            "0", "-o", tmp_path / "out"], "beyond the image")
    assert not (tmp_path / "out").exists()


def test_spacings_outside_the_trained_range_are_clamped_with_a_note():
    model, image = tiny_model(), smooth_image()  # trained range 0.8-3.5 mm
    spacings, notes = cka_spacings(model, image, [5.0, 1.0], allow_extrapolation=False)
    assert spacings == [1.0, 3.5] and len(notes) == 1 and "clamped" in notes[0]
    assert cka_spacings(model, image, [5.0, 1.0], allow_extrapolation=True)[0] == [1.0, 5.0]
    with pytest.raises(UserError, match="same network"):
        cka_spacings(model, image, [0.5, 0.8], allow_extrapolation=False)
    with pytest.raises(UserError, match="--spacings 0: give spacings in mm"):
        cka_spacings(model, image, [1.0, 0.0], allow_extrapolation=False)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(UserError) as raised:
        require_matplotlib()
    assert str(raised.value) == MATPLOTLIB_MISSING and "[analysis]" in MATPLOTLIB_MISSING
