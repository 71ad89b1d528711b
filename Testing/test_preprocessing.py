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


def halo_around(scan: np.ndarray, level: float) -> np.ndarray:
    """``scan`` with a faint blurred copy of itself in its background (what resampling a stripped scan leaves)."""
    import scipy.ndimage

    blurred = scipy.ndimage.gaussian_filter(scan, 3.0)
    return np.where(scan == 0, level * blurred, scan).astype(np.float32)


def test_version_2_ignores_a_halo_around_the_brain_where_version_1_does_not():
    scan = skull_stripped((40, 44, 36))
    brain = scan > 0
    haloed = halo_around(scan, 0.4)
    assert (haloed[~brain] > 1).mean() > 0.1  # a wide halo of faint values
    shifts = {}
    for version in (1, 2):
        rule = Normalisation("mr", version=version)
        with_halo, without = rule.apply(haloed)[brain], rule.apply(scan)[brain]
        shifts[version] = np.abs(with_halo - without).mean() / without.std()  # in units of the brain's spread
    assert shifts[2] < 0.3 and shifts[1] > 0.8, shifts  # the first rule's statistics take the halo in


@pytest.mark.parametrize("shape", [(24, 28, 20), (40, 36)])
@pytest.mark.parametrize("scale, offset", [(2.0, 0.0), (0.5, -30.0), (3.0, 1000.0)])
def test_version_2_maps_a_rescaled_scan_and_its_empty_border_alike(shape, scale, offset):
    scan = skull_stripped(shape)
    version_2 = Normalisation("mr", version=2)
    normalised = version_2.apply(scan)
    assert np.all(normalised[scan == 0] == 0) and 0.3 < np.median(normalised[scan > 0]) < 1.0
    np.testing.assert_allclose(version_2.apply(scale * scan + np.float32(offset)), normalised, atol=1e-4)
    bordered = np.pad(scan, 12)
    np.testing.assert_allclose(version_2.apply(bordered)[(slice(12, -12),) * len(shape)], normalised, atol=1e-6)


def test_version_2_scales_by_the_tissue_not_by_noise_in_the_air():
    """A raw scan: air noise everywhere around the object changes the object's values little."""
    scan = skull_stripped((40, 44, 36))
    noisy = np.abs(scan + np.random.default_rng(1).normal(0, 6, scan.shape)).astype(np.float32)
    version_2 = Normalisation("mr", version=2)
    inside = skull_stripped((40, 44, 36)) > 0
    ratio = version_2.apply(noisy)[inside].mean() / version_2.apply(scan)[inside].mean()
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_version_2_clips_a_hot_voxel_and_copes_with_constant_images():
    scan = skull_stripped((24, 28, 20))
    hot = scan.copy()
    hot[12, 14, 10] = 1e9
    normalised = Normalisation("mr", version=2).apply(hot)
    assert normalised.max() < 5 and np.isfinite(normalised).all()
    for constant in (np.zeros((8, 8, 8), np.float32), np.full((8, 8, 8), 7.0, np.float32)):
        assert np.isfinite(Normalisation("mr", version=2).apply(constant)).all()
