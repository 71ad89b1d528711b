"""MR normalisation: a skull-stripped scan rescaled as a * x + b (a > 0) is normalised as the scan itself."""

from __future__ import annotations

import numpy as np
import pytest

from HyperSpaceSegmentationLib.preprocessing import Normalisation


def skull_stripped(shape: tuple[int, ...]) -> np.ndarray:
    """An empty (0) background around an ellipsoid of two tissues with some texture (values 60 to 220)."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = sum(g ** 2 for g in grid)
    tissue = np.where(radius < 0.3, 200.0, 100.0) + rng.normal(0, 20, shape)
    return np.where(radius < 0.8, tissue, 0.0).astype(np.float32)


@pytest.mark.parametrize("shape", [(24, 28, 20), (40, 36)])
@pytest.mark.parametrize("scale, offset", [(2.0, 0.0), (1.0, 50.0), (0.5, -30.0), (3.0, 1000.0)])
def test_a_linear_rescaling_of_a_skull_stripped_scan_changes_nothing(shape, scale, offset):
    scan = skull_stripped(shape)
    normalised = Normalisation("mr").apply(scan)
    assert np.all(normalised[scan == 0] == 0)
    rescaled = Normalisation("mr").apply(scale * scan + np.float32(offset))
    np.testing.assert_allclose(rescaled, normalised, atol=1e-4)


def test_a_crop_inside_the_object_is_z_scored_over_every_voxel():
    crop = skull_stripped((24, 28, 20))[8:16, 10:18, 7:13]  # no background: no value dominates the faces
    assert np.all(crop != 0)
    normalised = Normalisation("mr").apply(crop)
    assert normalised.mean() == pytest.approx(0.0, abs=1e-5) and normalised.std() == pytest.approx(1.0, abs=1e-4)
