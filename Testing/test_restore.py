"""Probabilities back onto the input's grid, and labels that interpolate only where the working neighbours disagree.

The reference is computed here independently of the engine: SimpleITK's linear resampling of each class's
probability image (on the working grid, with its own origin, spacing and direction) onto the input's grid, in
physical space. A flip, a transposed axis or a half-voxel shift in the engine's tables moves probabilities by far
more than the tolerance below, and the labels with them.
"""

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk

from HyperSpaceSegmentationLib.geometry import canonical, working_grid
from HyperSpaceSegmentationLib.inference import Segmenter, Slices
from HyperSpaceSegmentationLib.inference import restore
from HyperSpaceSegmentationLib.inference.cropping import Region
from HyperSpaceSegmentationLib.inference.results import (
    labels_from_probabilities, labels_on_input_grid, on_input_grid, restorable,
)
from HyperSpaceSegmentationLib.progress import Reporter

from conftest import OBLIQUE, asymmetric_phantom, on_grid, oracle_model, phantom, tiny_model

GRIDS = {  # size (i, j, k), spacing, origin, direction of the input; the working spacing along L, P, S
    "oblique, 3 mm": ((30, 26, 22), (1.0, 1.0, 1.0), (-12.5, 30.2, 101.0), OBLIQUE, (3.0, 3.0, 3.0)),
    "anisotropic, permuted and flipped": ((28, 24, 10), (0.7, 0.8, 3.0), (5.0, -7.0, 3.0),
                                          (0, 0, -1, -1, 0, 0, 0, 1, 0), (2.0, 1.4, 2.3)),
    "flipped, finer than the input on one axis": ((24, 20, 18), (1.2, 0.9, 1.6), (1.0, 2.0, 3.0),
                                                  (-1, 0, 0, 0, 1, 0, 0, 0, -1), (2.5, 0.6, 1.6)),
}


def input_image(grid):
    size, spacing, origin, direction, _ = GRIDS[grid]
    return on_grid(np.zeros(size[::-1], np.float32), spacing, origin, direction)


def smooth_probabilities(shape, classes=4, seed=0, scale=3.0):
    """Softmax of smooth random logits: regions of one class with boundaries between them, like a network's."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, scale, (classes, *[max(n // 3, 2) for n in shape]))
    logits = np.stack([_upsampled(channel, shape) for channel in coarse])
    probabilities = np.exp(logits - logits.max(0))
    return (probabilities / probabilities.sum(0)).astype(np.float32)


def _upsampled(array, shape):
    zoomed = scipy.ndimage.zoom(array, [n / c for n, c in zip(shape, array.shape)], order=1, mode="nearest")
    assert zoomed.shape == tuple(shape)
    return zoomed


def working_part(image, spacing, region=None, classes=4, seed=0):
    """Random class probabilities on the working grid of ``image`` (of the box ``region`` of its LPS array), with
    that grid (an image) and the engine's ``Restorable``."""
    oriented = canonical(image)
    box = region.grid(oriented) if region is not None else oriented
    grid = working_grid(box, spacing)
    probabilities = smooth_probabilities(grid.GetSize()[::-1], classes, seed)
    return probabilities, grid, restorable(probabilities, oriented, image, region)


def sitk_reference(probabilities, grid, image):
    """Each class's probabilities linearly resampled by SimpleITK from ``grid`` onto ``image``'s grid; outside the
    working grid's extent background with certainty."""
    channels = []
    for number, channel in enumerate(probabilities):
        moving = sitk.GetImageFromArray(channel.astype(np.float64))
        moving.CopyInformation(grid)
        channels.append(sitk.GetArrayFromImage(sitk.Resample(
            moving, image, sitk.Transform(), sitk.sitkLinear, 1.0 if number == 0 else 0.0, sitk.sitkFloat64)))
    return np.stack(channels)


def decisive(reference, margin=1e-4):
    """Voxels where the reference's most likely class leads the next by more than ``margin`` (float32 rounding
    cannot reorder them)."""
    ordered = np.sort(reference, axis=0)
    return ordered[-1] - ordered[-2] > margin


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("cropped", [False, True])
def test_probabilities_and_labels_match_simpleitk_linear_resampling(grid, cropped):
    image = input_image(grid)
    shape = canonical(image).GetSize()[::-1]
    region = Region((2, -3, 4), (shape[0] - 1, shape[1] - 5, shape[2] + 3)) if cropped else None
    probabilities, working, part = working_part(image, GRIDS[grid][4], region)
    reference = sitk_reference(probabilities, working, image)
    full = part.probabilities()
    assert full.shape == reference.shape and full.dtype == np.float32
    assert np.abs(full - reference).max() < 1e-5
    assert np.array_equal(full, on_input_grid(probabilities, canonical(image), image) if region is None else full)
    labels = restore.labels([part])
    expected = np.argmax(reference, axis=0)
    clear = decisive(reference)
    assert clear.mean() > 0.99 and len(np.unique(expected)) == 4
    assert np.array_equal(labels[clear], expected[clear])
    # and bit for bit the most likely class of the probabilities the engine writes
    assert np.array_equal(labels, restore.most_likely(full))


@pytest.mark.parametrize("grid", GRIDS)
def test_the_shortcut_interpolates_only_a_minority_of_voxels(grid):
    """Where all working neighbours agree the label is taken directly: with regions a few voxels wide, most are."""
    _, _, part = working_part(input_image(grid), GRIDS[grid][4])
    codes = part.codes()
    assert 0.02 < np.mean(codes == restore._UNDECIDED) < 0.5


def test_exact_ties_and_near_ties_give_the_same_labels_as_the_full_interpolation():
    """Probabilities in steps of 1/8 tie exactly in many places (the lowest class wins a tie), and pairs apart by a
    rounding step nearly tie: the labels still follow the full interpolation bit for bit."""
    image = input_image("oblique, 3 mm")
    oriented = canonical(image)
    grid = working_grid(oriented, (3.0, 3.0, 3.0))
    rng = np.random.default_rng(3)
    shape = grid.GetSize()[::-1]
    counts = rng.multinomial(8, [0.25] * 4, size=shape).astype(np.float32)  # (*shape, 4), sums 8
    probabilities = np.moveaxis(counts / 8, -1, 0).copy()
    near = rng.random(shape) < 0.3
    probabilities[1][near] = np.nextafter(probabilities[0][near], np.float32(1))  # one step above class 0
    part = restorable(probabilities, oriented, image)
    full = part.probabilities()
    ties = np.sort(full, axis=0)
    assert np.mean(ties[-1] == ties[-2]) > 0.003  # the test does exercise ties
    assert np.array_equal(restore.labels([part]), restore.most_likely(full))
    # an exact tie goes to the class listed first, which rounding cannot overturn: decided; a class that leads the
    # one before it by a rounding step at every neighbour is not decided without interpolating
    tied = np.full((2, 4, 4, 4), 0.5, np.float32)
    assert (restore.cell_codes(tied, [False] * 3) == 0).all()
    tied[1] = np.nextafter(tied[1], np.float32(1))
    assert (restore.cell_codes(tied, [False] * 3) == restore._UNDECIDED).all()
    tied[1] += 1e-3
    assert (restore.cell_codes(tied, [False] * 3) == 1).all()


def test_an_ensemble_of_two_grids_and_a_mask_give_the_labels_of_the_mean_probabilities():
    image = input_image("anisotropic, permuted and flipped")
    shape = canonical(image).GetSize()[::-1]
    first = working_part(image, (2.0, 1.4, 2.3), seed=1)[2]
    second = working_part(image, (3.1, 2.2, 1.5), Region((1, 2, -2), (shape[0] - 2, shape[1], shape[2] - 4)), seed=2)[2]
    mask = np.random.default_rng(4).random(image.GetSize()[::-1]) < 0.8
    total = first.probabilities()
    total += second.probabilities()
    total /= 2
    total[:, ~mask] = 0.0
    total[0, ~mask] = 1.0
    values = [0, 2, 5, 9]
    expected = sitk.GetArrayFromImage(labels_from_probabilities(total, values, image))
    result = labels_on_input_grid([first, second], values, image, mask=mask)
    assert sitk.GetArrayFromImage(result).tolist() == expected.tolist()
    assert result.GetOrigin() == image.GetOrigin() and result.GetDirection() == image.GetDirection()
    assert set(np.unique(expected[mask])) == set(values)


def through_both_paths(segmenter, image, spacing, mask=None):
    """``(labels of segment(), labels of the most likely class of probabilities())`` as arrays."""
    labels = segmenter.segment(image, spacing, Reporter(3, quiet=True), mask)
    probabilities = segmenter.probabilities(image, spacing, Reporter(3, quiet=True), mask)
    full = labels_from_probabilities(probabilities, sorted(segmenter.model.labels), image)
    assert labels.GetSize() == image.GetSize() and labels.GetOrigin() == image.GetOrigin()
    return sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(full)


@pytest.mark.parametrize("options, spacing", [({}, (3.0, 3.0, 3.0)), ({}, (1.3, 2.6, 1.9)),
                                              ({"tta": (0, 2)}, (3.0, 2.5, 3.5))])
def test_segment_gives_the_labels_of_the_probabilities_bit_for_bit(options, spacing):
    image, _ = phantom(size=(36, 30, 16), spacing=(0.9, 1.1, 2.2), origin=(4.0, -3.0, 9.0), direction=OBLIQUE)
    mask = np.zeros(image.GetSize()[::-1], bool)
    mask[2:14, 3:27, 4:30] = True
    segmenter = Segmenter(tiny_model(), device="cpu", **options)
    for given in (None, mask):
        labels, full = through_both_paths(segmenter, image, spacing, given)
        assert np.array_equal(labels, full)
        assert len(np.unique(full)) > 1


def test_segment_of_a_cropped_scan_matches_the_probabilities_and_the_truth():
    """The oracle predicts the truth on the working grid; with a box around the content (cropping) and axes swapped
    and flipped, the labels land where the objects are."""
    image, truth = asymmetric_phantom(size=(40, 34, 28), spacing=(1.0, 1.2, 0.8), origin=(3.0, 2.0, 1.0),
                                      direction=(0, 0, -1, -1, 0, 0, 0, 1, 0))
    padded = sitk.ConstantPad(image, (6, 6, 6), (6, 6, 6), 0.0)
    segmenter = Segmenter(oracle_model(), device="cpu")
    labels, full = through_both_paths(segmenter, padded, (2.0, 2.0, 2.0))
    assert np.array_equal(labels, full)
    inner = labels[6:-6, 6:-6, 6:-6]
    assert np.mean(inner == sitk.GetArrayFromImage(truth)) > 0.97


@pytest.mark.parametrize("slices", [Slices(), Slices(0, 5), Slices(2, 8)])
def test_slice_by_slice_labels_match_the_probabilities(slices):
    image, _ = asymmetric_phantom(size=(20, 18, 16), spacing=(0.9, 1.3, 2.1), direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1))
    segmenter = Segmenter(oracle_model(dim=2), device="cpu", slices=slices)
    labels, full = through_both_paths(segmenter, image, (2.2, 2.7))
    assert np.array_equal(labels, full) and len(np.unique(full)) >= (3 if slices.index is None else 2)
    if slices.index is not None:
        assert not np.delete(np.moveaxis(labels, 2 - slices.axis, 0), slices.index, axis=0).any()


def test_a_2d_image_gives_the_labels_of_its_probabilities():
    volume, _ = asymmetric_phantom(size=(40, 36, 16))
    image = volume[:, :, 8]
    segmenter = Segmenter(oracle_model(dim=2), device="cpu")
    labels, full = through_both_paths(segmenter, image, (2.5, 3.0))
    assert labels.shape == (36, 40) and np.array_equal(labels, full) and len(np.unique(full)) == 3
