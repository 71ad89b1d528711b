"""MR normalisation: a skull-stripped scan rescaled as a * x + b (a > 0) is normalised as the scan itself, and
an integer image's values counted give the same bits as the float path."""

from __future__ import annotations

import numpy as np
import pytest

from HyperSpaceSegmentationLib import preprocessing
from HyperSpaceSegmentationLib.preprocessing import Normalisation, otsu_threshold


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


def _unexpected(*args: object) -> None:
    raise AssertionError("the float path's statistics were computed")


def counted_and_general(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Version 2 of an integer ``array`` by the counting path (the float path's statistics disabled), and of
    its float32 copy by the float path."""
    version_2 = Normalisation("mr", version=2)
    general = version_2.apply(array.astype(np.float32))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocessing, "_foreground_statistics", _unexpected)
        counted = version_2.apply(array)
    assert counted.dtype == np.float32 and counted.shape == array.shape
    return counted, general


def integer_images() -> dict[str, np.ndarray]:
    """Integer images of several types, backgrounds and value ranges."""
    stripped = skull_stripped((24, 28, 20))
    rng = np.random.default_rng(2)
    raw = np.abs(stripped + rng.normal(0, 6, stripped.shape))
    images = {
        "uint8": np.round(raw).clip(0, 255).astype(np.uint8),
        "int16 with negative values": np.round(raw * 3 - 400).astype(np.int16),
        "uint16 with a large offset": np.round(raw * 50 + 40000).astype(np.uint16),
        "skull-stripped": np.round(stripped).clip(0, None).astype(np.int16),
        "2D": np.round(skull_stripped((40, 36)) * 7).clip(0, None).astype(np.uint16),
        "int8 spanning its range": np.round(raw - 128).clip(-128, 127).astype(np.int8),
        "int16 spanning its range": np.round(raw * 160 - 32768).clip(-32768, 32767).astype(np.int16),
    }
    not_its_minimum = np.round(stripped).clip(0, None).astype(np.int16)
    not_its_minimum[stripped > 150] -= 300  # the brightest tissue dips below the empty (0) background
    images["background not its minimum"] = not_its_minimum
    one_bright = np.zeros((10, 12, 9), np.int16)
    one_bright[5, 6, 4] = 900
    images["background and one bright voxel"] = one_bright
    images["constant"] = np.full((8, 9, 7), 37, np.uint16)
    for seed, (low, high, dtype) in enumerate([(0, 10, np.uint8), (-3000, 3000, np.int16), (0, 65535, np.uint16),
                                               (-(2 ** 20), 60000 - 2 ** 20, np.int32), (5, 6, np.int64)]):
        shape = tuple(np.random.default_rng(seed).integers(5, 30, 3))
        images[f"random {dtype.__name__} in [{low}, {high}]"] = np.random.default_rng(seed).integers(
            low, high, shape, endpoint=True).astype(dtype)
    return images


@pytest.mark.parametrize("name", list(integer_images()))
def test_version_2_of_an_integer_image_counts_its_values_with_the_same_result_bit_for_bit(name):
    image = integer_images()[name]
    counted, general = counted_and_general(image)
    assert np.array_equal(counted, general)


def test_the_counted_background_is_not_taken_for_the_minimum_where_it_is_not():
    image = integer_images()["background not its minimum"]
    counted, _ = counted_and_general(image)
    assert image.min() < 0 and np.all(counted[image == 0] == 0) and np.all(counted[image < 0] < 0)


def test_a_wide_range_integer_image_takes_the_float_path():
    image = (np.round(skull_stripped((24, 28, 20)) * 5e4) + 3).astype(np.int32)  # spans 1e7
    version_2 = Normalisation("mr", version=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocessing, "_foreground_statistics_of_counts", _unexpected)
        normalised = version_2.apply(image)
    assert np.array_equal(normalised, version_2.apply(image.astype(np.float32)))
    assert np.all(normalised[image == 3] == 0) and 0.3 < np.median(normalised[image > 3]) < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_and_otsu_threshold_of_counts_equal_those_of_the_repeated_values(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        size = int(rng.integers(1, 40))
        values = np.sort(rng.choice(70000, size, replace=False) - int(rng.integers(0, 70000))).astype(np.float32)
        counts = rng.integers(1, [2, 30, 5000][size % 3], size)
        percents = [95.0, 99.9, float(rng.uniform(0, 100)), 0.0, 100.0]
        repeated = np.repeat(values, counts)
        expected = tuple(float(p) for p in np.percentile(repeated, percents))
        assert preprocessing._percentiles_of_counts(values, counts, percents) == expected
        assert otsu_threshold(values, counts) == otsu_threshold(repeated)
