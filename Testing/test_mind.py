"""MIND descriptors: their values on known images, their invariance to the contrast, and MIND models end to end."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.io.model_file import load_model
from HyperSpaceSegmentationLib.networks import UNet, UNetConfig
from HyperSpaceSegmentationLib.networks.mind import mind

from conftest import phantom


@pytest.mark.parametrize("shape", [(12, 10, 8), (16, 14)])
def test_a_flat_image_is_one_in_every_channel(shape):
    for value in (0.0, 3.5, -200.0):
        descriptors = mind(torch.full((2, 1, *shape), value))
        assert descriptors.shape == (2, 2 * len(shape), *shape)
        assert torch.equal(descriptors, torch.ones_like(descriptors))


def test_a_step_edge_shows_across_it_and_not_along_it():
    """A step along x (the last array axis) in 3D: next to it, the channels towards the other side of the step
    fall below 1; the channels along the edge (y, z) and every channel far from it stay 1."""
    image = torch.zeros(1, 1, 10, 12, 16)
    image[..., 8:] = 5.0  # the step between x = 7 and x = 8
    descriptors = mind(image)[0]
    # channel order: (axis 0: -1, +1), (axis 1: -1, +1), (axis 2: -1, +1) over array axes (z, y, x)
    along = descriptors[:4]
    assert torch.allclose(along, torch.ones_like(along))
    left, right = descriptors[4], descriptors[5]  # neighbours at x - 1 and x + 1
    assert right[:, :, 7].max() < 0.5 and left[:, :, 8].max() < 0.5  # facing the step from either side
    assert torch.allclose(descriptors[:, :, :, :3], torch.ones(6, 10, 12, 3))  # far left of it
    assert torch.allclose(descriptors[:, :, :, 13:], torch.ones(6, 10, 12, 3))  # far right of it
    flipped = mind(image.flip(-1))[0]  # the mirror image swaps the two x channels, nothing else
    assert torch.allclose(flipped[5].flip(-1), left) and torch.allclose(flipped[4].flip(-1), right)


def test_an_inverted_or_rescaled_contrast_gives_the_same_descriptors():
    image, _ = phantom(size=(20, 18, 16), seed=2)
    array = torch.from_numpy(sitk.GetArrayFromImage(image))[None, None]
    reference = mind(array)
    assert reference.min() < 0.5  # the phantom has edges
    for changed in (-array, 3.0 * array + 40.0, 1000.0 - 0.5 * array):
        assert torch.allclose(mind(changed), reference, atol=1e-5)
    noise = array + torch.from_numpy(np.random.default_rng(0).normal(0, 30, array.shape).astype(np.float32))
    assert not torch.allclose(mind(noise), reference, atol=1e-2)  # it does describe the image


def test_a_mind_unet_sees_the_descriptors_not_the_intensities():
    torch.manual_seed(0)
    network = UNet(UNetConfig(dim=3, num_classes=2, features=(4, 8), input_features="mind")).eval()
    assert network.encoder[0].blocks[0].conv.in_channels == 6
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(network(x), network(-2 * x + 7), atol=1e-4)
    with pytest.raises(ValueError, match="input features"):
        UNetConfig(input_features="edges")


def test_train_and_segment_with_mind_input(dataset_json, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(dataset_json), "-o", str(run), "--input", "mind", "--iterations", "2", "--patch", "16",
                 "--batch-size", "1", "--features", "4", "8", "8", "16", "--rank", "2", "--device", "cpu",
                 "--quiet"]) == 0
    model = load_model(run / "model.pt")
    assert model.unet_config.input_features == "mind"
    assert main(["info", str(run / "model.pt")]) == 0
    assert "input:             mind descriptors" in capsys.readouterr().out
    image, _ = phantom(size=(24, 20, 16), spacing=(1.1, 0.9, 1.3), seed=3)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    assert main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "labels.nrrd"), "--model",
                 str(run / "model.pt"), "--quiet"]) == 0
    labels = sitk.ReadImage(str(tmp_path / "labels.nrrd"))
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()
