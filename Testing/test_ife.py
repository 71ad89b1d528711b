"""Instructive Feature Enhancement: the curvature and entropy scores on known images, the per-sample channel
selection, and the 2D U-Net it widens, with its own and with generated weights."""

import math

import numpy as np
import pytest
import torch

from HyperSpaceSegmentationLib.networks import HyperConfig, HyperSpaceNet, UNet, UNetConfig
from HyperSpaceSegmentationLib.networks.ife import FeatureEnhancement, curvature_scores, entropy_scores


def channels(*images: np.ndarray) -> torch.Tensor:
    """One sample whose channels are ``images``."""
    return torch.from_numpy(np.stack(images)[None].astype(np.float32))


def disc(radius: float, size: int = 96) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return (np.hypot(x, y) < radius).astype(np.float32)


def step(size: int = 32, at: int = 13) -> np.ndarray:
    image = np.zeros((size, size), np.float32)
    image[:, at:] = 1.0
    return image


def test_curvature_of_a_constant_is_zero_and_of_an_edge_lies_on_the_edge():
    scores = curvature_scores(channels(np.full((32, 32), 7.5), step(), step().T))
    assert scores[0, 0] == 0
    # across a unit step each row (or column) has two valid windows touching it, each answering 3/16 in magnitude:
    # the outer column of the kernel is (-1, 5, -1)/16 on one side, the centre column (5, -16, 5)/16 plus it on the other
    assert scores[0, 1].item() == pytest.approx(2 * 3 / 16 * 30, rel=1e-6)
    assert scores[0, 2].item() == pytest.approx(scores[0, 1].item(), rel=1e-6)  # a transposed edge scores the same
    # moving the edge does not change the score; only windows on the edge answer
    assert curvature_scores(channels(step(at=20)))[0, 0].item() == pytest.approx(scores[0, 1].item(), rel=1e-6)


def test_curvature_of_a_disc_grows_with_its_perimeter_not_its_area():
    small, large = curvature_scores(channels(disc(10), disc(20)))[0].tolist()
    assert small > 0
    assert large / small == pytest.approx(2.0, rel=0.15)  # area ratio would be 4


def test_curvature_scores_of_half_precision_features_are_those_of_float32():
    """In float16 the summed responses of a large feature map overflow to infinity and would reorder the channels."""
    generator = torch.Generator().manual_seed(0)
    features = (torch.randn(1, 6, 320, 320, generator=generator) * 40).half()
    scores = curvature_scores(features)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert torch.allclose(scores, curvature_scores(features.float()))
    assert features.float().abs().sum() > torch.finfo(torch.float16).max  # where float16 sums overflow


def test_entropy_of_a_constant_is_zero_and_of_noise_near_its_maximum():
    rng = np.random.default_rng(0)
    noise = rng.uniform(-3, 5, (64, 64))
    scores = entropy_scores(channels(np.full((64, 64), -2.0), noise, step(64)))
    maximum = math.log2(62 * 62)  # every valid 3x3 window in its own joint bin
    assert scores[0, 0] == 0
    assert maximum - 0.2 < scores[0, 1].item() <= maximum + 1e-6
    # an edge has three kinds of windows (flat 0, flat 1, and two edge columns with their own neighbour means)
    assert 0.5 < scores[0, 2].item() < 2.5


def test_entropy_uses_each_channels_own_value_range():
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.normal(size=(48, 48)), axis=1)
    a, b = entropy_scores(channels(smooth, 1000 * smooth - 50))[0].tolist()
    assert a == pytest.approx(b, abs=1e-4)
    assert 1 < a < math.log2(46 * 46)


@pytest.mark.parametrize("variant", ["curvature", "entropy"])
def test_selection_appends_each_samples_best_channels_best_first(variant):
    rng = np.random.default_rng(2)
    flat, noise, edge = np.zeros((32, 32)), rng.uniform(0, 1, (32, 32)), step()
    # sample 0: noise (most texture) in channel 1, the edge in 3; sample 1: noise in channel 2, the edge in 0
    batch = torch.cat([channels(flat, noise, flat + 1, edge), channels(edge, flat - 1, noise, 2 * flat)])
    enhanced = FeatureEnhancement(variant, 0.5)(batch)
    assert enhanced.shape == (2, 6, 32, 32)
    assert torch.equal(enhanced[:, :4], batch)  # the raw features come first, unchanged
    assert torch.equal(enhanced[0, 4:], batch[0, [1, 3]])
    assert torch.equal(enhanced[1, 4:], batch[1, [2, 0]])
    assert FeatureEnhancement(variant, 0.2)(batch).shape[1] == 4  # floor(0.2 * 4) = 0 channels appended


def test_selection_passes_gradients_through_the_chosen_channels_only():
    features = torch.cat([channels(np.zeros((16, 16)), step(16, 5), np.ones((16, 16)))]).requires_grad_(True)
    FeatureEnhancement("curvature", 0.34)(features).sum().backward()
    # every channel gets 1 from the raw copy; the chosen (the edge) gets 1 more from its appended copy
    assert features.grad[0, :, 0, 0].tolist() == [1.0, 2.0, 1.0]


@pytest.mark.parametrize("variant, ratios, widths", [
    ("none", (), (1, 8, 16, 32)),
    ("curvature", (), (1, 8, 16 + 12, 32 + 16)),  # the paper's best for curvature: 0.75, 0.5
    ("entropy", (), (1, 8, 16 + 8, 32 + 16)),  # entropy: 0.5, 0.5
    ("entropy", (1.0, 0.25), (1, 8, 32, 32 + 8)),
])
def test_ife_widens_the_stage_after_each_middle_stage(variant, ratios, widths):
    config = UNetConfig(dim=2, num_classes=3, features=(8, 16, 32, 64), convs_per_level=2, ife=variant, ife_ratios=ratios)
    unet = UNet(config)
    assert tuple(stage.blocks[0].conv.in_channels for stage in unet.encoder) == widths
    assert unet(torch.randn(2, 1, 32, 48)).shape == (2, 3, 32, 48)


@pytest.mark.parametrize("variant", ["curvature", "entropy"])
def test_generated_and_own_weights_give_the_same_output_with_ife(variant):
    torch.manual_seed(0)
    net = HyperSpaceNet(UNetConfig(dim=2, num_classes=2, features=(4, 8, 8, 16), ife=variant), HyperConfig(hidden=16))
    with torch.no_grad():
        net.hypernet.basis.normal_(0, 0.5)
    spacings = torch.tensor([[0.9, 0.9], [2.5, 1.2], [3.0, 3.0]])
    x = torch.randn(3, 1, 32, 32)
    batched = net(x, spacings)
    for index, spacing in enumerate(spacings.tolist()):
        assert torch.allclose(batched[index], net.static_unet(tuple(spacing))(x[index:index + 1])[0], atol=1e-4)


def test_ife_configurations_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="2D"):
        UNetConfig(dim=3, ife="entropy")
    with pytest.raises(ValueError, match="4 levels"):
        UNetConfig(dim=2, features=(8, 16, 32), ife="curvature")
    with pytest.raises(ValueError, match="ratios"):
        UNetConfig(dim=2, ife="entropy", ife_ratios=(0.5,))
    with pytest.raises(ValueError, match="variant"):
        UNetConfig(dim=2, ife="sobel")
    assert UNetConfig(dim=2, ife="none", ife_ratios=(0.5, 0.5)).ife_ratios == ()
