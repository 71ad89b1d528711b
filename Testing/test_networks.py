"""The hypernetwork's outputs, its size, and the equality of generated and static U-Nets."""

import math

import pytest
import torch

from HyperSpaceSegmentationLib.io.model_file import load_model, save_model
from HyperSpaceSegmentationLib.networks import HyperConfig, HyperSpaceNet, UNet, UNetConfig

from conftest import tiny_model


@pytest.mark.parametrize("dim", [2, 3])
def test_generated_weights_have_the_unet_shapes(dim):
    config = UNetConfig(dim=dim, num_classes=4, features=(4, 8, 16, 16))
    net = HyperSpaceNet(config, HyperConfig(hidden=16, rank=3))
    weights = net.generate(torch.tensor([[1.0] * dim, [3.0] * dim]))
    expected = dict(UNet(config).named_parameters())
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        assert value.shape == (2, *expected[name].shape)
    logits = net(torch.randn(2, 1, *([16] * dim)), torch.tensor([[1.0] * dim, [2.0] * dim]))
    assert logits.shape == (2, 4, *([16] * dim))


def test_low_rank_heads_cost_a_few_parameters_per_unet_parameter_and_only_they_train():
    config = UNetConfig(num_classes=4)
    unet = sum(p.numel() for p in UNet(config).parameters())
    sizes = {}
    for rank in (2, 4):
        net = HyperSpaceNet(config, HyperConfig(hidden=64, rank=rank))
        sizes[rank] = sum(p.numel() for p in net.hypernet.parameters())
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == sizes[rank]  # the U-Net is generated
    # rank + 1 values per U-Net parameter (a centre and the basis), far below a full-rank head's 64
    assert (4 + 1) * unet < sizes[4] < 5.2 * unet
    assert 1.9 * unet < sizes[4] - sizes[2] < 2.1 * unet


def test_default_size_model_file_fits_in_10_mb(tmp_path):
    model = tiny_model()
    model.network = HyperSpaceNet(UNetConfig(num_classes=4), HyperConfig())
    path = save_model(model, tmp_path / "model.pt")
    assert path.stat().st_size < 10 * 2**20


def test_generated_weights_start_he_initialised():
    net = HyperSpaceNet(UNetConfig(num_classes=2), HyperConfig())
    weights = net.generate(torch.tensor([[1.0, 1.0, 1.0]]))
    kernel = weights["encoder.1.blocks.0.conv.weight"][0]
    fan_in = kernel[0].numel()
    assert kernel.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.15)
    assert torch.allclose(weights["encoder.0.blocks.0.norm.weight"], torch.ones(1, 8), atol=0.2)


@pytest.mark.parametrize("dim", [2, 3])
def test_mixed_spacing_batch_equals_static_unets(dim):
    torch.manual_seed(0)
    net = HyperSpaceNet(UNetConfig(dim=dim, num_classes=3, features=(4, 8, 8, 16)), HyperConfig(hidden=16, rank=2))
    # make the weights depend strongly on the spacing, as after training
    with torch.no_grad():
        net.hypernet.basis.normal_(0, 0.5)
    spacings = [(0.9,) * dim, (3.2,) + (1.1,) * (dim - 1)]
    x = torch.randn(2, 1, *([16] * dim))
    batched = net(x, torch.tensor(spacings))
    static = [net.static_unet(s)(x[i:i + 1])[0] for i, s in enumerate(spacings)]
    for i in range(2):
        assert torch.allclose(batched[i], static[i], atol=1e-4)
    assert not torch.allclose(static[0], net.static_unet(spacings[1])(x[:1])[0], atol=1e-3)


def test_model_file_round_trip_keeps_the_network(tmp_path):
    model = tiny_model()
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    x, spacing = torch.randn(1, 1, 16, 16, 16), torch.tensor([[1.3, 1.3, 2.0]])
    with torch.no_grad():
        # weights are stored in half precision
        assert torch.allclose(model.network(x, spacing), loaded.network(x, spacing), atol=5e-2)
    assert loaded.labels == model.labels and loaded.spacing_range == model.spacing_range


def test_label_255_is_a_valid_model_label_and_256_is_refused(tmp_path, capsys):
    """Labels are stored in 8 bits: value 255 saves, loads and segments to 255; 256 is refused on load."""
    import numpy as np
    import SimpleITK as sitk

    from HyperSpaceSegmentationLib.cli import main

    from conftest import phantom

    model = tiny_model("as")
    model.labels = {0: "background", 1: "shell", 255: "edge"}
    with torch.no_grad():  # a network that answers class 2 everywhere
        model.network.head.weight.zero_()
        model.network.head.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    path = save_model(model, tmp_path / "m255.pt")
    assert load_model(path).labels == {0: "background", 1: "shell", 255: "edge"}
    image, _ = phantom(size=(20, 18, 16))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    output = tmp_path / "labels.nii.gz"
    code = main(["segment", str(tmp_path / "image.nii.gz"), "-o", str(output), "--model", str(path), "--device", "cpu",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(output)))).tolist() == [255]

    model.labels = {0: "background", 1: "shell", 256: "beyond"}
    path = save_model(model, tmp_path / "m256.pt")
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hyperspace: error: ") and "\n" not in error, error
    assert "0-255" in error and str(path) in error, error


def test_channels_last_inference_gives_the_same_logits_and_training_is_untouched():
    """The CPU's faster memory order must not change a result: a generated 3D U-Net on an uneven, non-cubic input
    with features far from zero mean (where a wrong normalisation axis would show)."""
    torch.manual_seed(0)
    unet = tiny_model().network.static_unet((1.2, 0.9, 2.0)).eval()
    x = torch.randn(2, 1, 24, 40, 16) * 3 + 5
    x[1] = x[1].flip(-1) * 0.5
    with torch.no_grad():
        expected = unet(x)
        fast = unet.to_channels_last()(x)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(fast, expected, atol=1e-4), (fast - expected).abs().max()
    fresh = UNet(UNetConfig(dim=3, num_classes=2, features=(4, 8)))
    loss = fresh(x).sum()  # the default order keeps autograd's usual path
    loss.backward()
    assert not fresh.channels_last and all(p.grad is not None for p in fresh.parameters())
