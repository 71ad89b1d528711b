"""Results lie on the input's own grid, oblique or not, and labels survive a trip to a working grid and back."""

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.geometry import (
    canonical, permuted_back, resample_to_spacing, same_grid, smooth, working_grid,
)
from HyperSpaceSegmentationLib.inference import Segmenter, SpacingRequest
from HyperSpaceSegmentationLib.inference.results import labels_from_probabilities, on_input_grid
from HyperSpaceSegmentationLib.progress import Reporter

from conftest import OBLIQUE, asymmetric_phantom, on_grid, oracle_model, phantom, tiny_model

GRIDS = {
    "identity": dict(size=(40, 36, 32), spacing=(1.0, 1.0, 1.0)),
    "oblique-anisotropic": dict(size=(48, 40, 12), spacing=(0.7, 0.8, 3.0), origin=(-12.5, 30.2, 101.0), direction=OBLIQUE),
    "flipped-axes": dict(size=(32, 40, 36), spacing=(1.2, 0.9, 1.6), origin=(5.0, -7.0, 3.0),
                         direction=(0, 0, -1, -1, 0, 0, 0, 1, 0)),
}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("spacing", [None, (2.0, 2.0, 2.0), (1.0, 1.0, 3.5)])
def test_segmentation_lies_on_the_input_grid(grid, spacing):
    image, _ = phantom(**GRIDS[grid])
    segmenter = Segmenter(tiny_model(), device="cpu", patch=32)
    request = SpacingRequest("explicit", spacing) if spacing else SpacingRequest("native")
    choice = segmenter.choose_spacing(image, request)
    labels = segmenter.segment(image, choice.spacing, Reporter(3, quiet=True))
    assert same_grid(labels, image, tolerance=0)
    assert labels.GetPixelID() == sitk.sitkUInt8


def test_working_grid_keeps_extent_origin_and_direction():
    image, _ = phantom(**GRIDS["oblique-anisotropic"])
    grid = working_grid(image, (2.0, 2.0, 2.0))
    assert grid.GetDirection() == image.GetDirection()
    # the outer corner of the first voxel stays put
    corner = image.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    assert np.allclose(grid.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)), corner, atol=1e-6)
    far = image.TransformContinuousIndexToPhysicalPoint([n - 0.5 for n in image.GetSize()])
    assert np.allclose(grid.TransformContinuousIndexToPhysicalPoint([n - 0.5 for n in grid.GetSize()]), far, atol=1e-6)


@pytest.mark.parametrize("grid", GRIDS)
def test_labels_survive_working_spacing_and_back(grid):
    _, labels = phantom(**GRIDS[grid])
    oriented = canonical(labels)  # the network works on the LPS-oriented grid
    working = working_grid(oriented, (2.0, 2.0, 2.0))
    coarse = sitk.GetArrayFromImage(
        sitk.Resample(sitk.Cast(labels, sitk.sitkFloat32), working, sitk.Transform(), sitk.sitkLinear)
    )
    # one-hot probabilities at the working spacing, as the network would give them
    one_hot = np.stack([
        sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(labels == v, sitk.sitkFloat32), working, sitk.Transform(), sitk.sitkLinear))
        for v in range(3)
    ])
    assert one_hot.shape[1:] == coarse.shape
    back = labels_from_probabilities(on_input_grid(one_hot, oriented, labels), [0, 1, 2], labels)
    assert same_grid(back, labels, tolerance=0)
    original, restored = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(back)
    for value in (1, 2):
        a, b = original == value, restored == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_fs_model_works_at_its_own_spacing_and_as_fsnr_at_the_native_one():
    image, _ = phantom(**GRIDS["oblique-anisotropic"])
    segmenter = Segmenter(tiny_model("fs"), device="cpu", patch=32)
    default = segmenter.choose_spacing(image, SpacingRequest())
    assert default.spacing == (1.5, 1.5, 1.5)
    native = segmenter.choose_spacing(image, SpacingRequest("native"))
    assert np.allclose(native.spacing, (0.7, 0.8, 3.0)) and "FSNR" in native.notes[0]
    labels = segmenter.segment(image, native.spacing, Reporter(3, quiet=True))
    assert same_grid(labels, image, tolerance=0)


def test_hyperspace_networks_are_cached_per_rounded_spacing():
    segmenter = Segmenter(tiny_model(), device="cpu")
    first = segmenter.network_for((1.001, 2.0, 2.0))
    assert segmenter.network_for((1.0, 2.0, 2.0)) is first
    assert segmenter.network_for((1.5, 2.0, 2.0)) is not first


# --- an oracle network through the whole pipeline: flips, swapped axes and shifts must show -----------------------

def _centroid_mm(labels: sitk.Image, value: int) -> np.ndarray:
    """The physical centre of mass (LPS mm) of the voxels labelled ``value``."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(labels) == value)[:, ::-1].astype(float)
    matrix = np.array(labels.GetDirection()).reshape(3, 3) * np.array(labels.GetSpacing())
    return np.array(labels.GetOrigin()) + matrix @ indices.mean(axis=0)


@pytest.mark.parametrize("grid", GRIDS)
def test_oracle_labels_are_exact_at_native_spacing(grid):
    image, truth = asymmetric_phantom(**GRIDS[grid])
    segmenter = Segmenter(oracle_model(), device="cpu", patch=32)
    labels = segmenter.segment(image, segmenter.choose_spacing(image, SpacingRequest("native")).spacing,
                               Reporter(3, quiet=True))
    assert same_grid(labels, image, tolerance=0)
    assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("spacing", [(2.5, 2.5, 2.5), (1.0, 1.6, 3.5)])
def test_oracle_labels_land_in_place_at_coarse_spacings(grid, spacing):
    image, truth = asymmetric_phantom(**GRIDS[grid])
    segmenter = Segmenter(oracle_model(), device="cpu", patch=32)
    labels = segmenter.segment(image, spacing, Reporter(3, quiet=True))
    assert same_grid(labels, image, tolerance=0)
    result, reference = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth)
    for value, floor in ((3, 0.84), (7, 0.9)):
        a, b = result == value, reference == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > floor, value
    # the ball's centre of mass stays within 0.45 mm; half a working voxel is 0.5-1.75 mm
    assert np.linalg.norm(_centroid_mm(labels, 7) - _centroid_mm(truth, 7)) < 0.45


def test_hypernetwork_gets_the_spacing_in_array_axis_order():
    """Training hands the hypernetwork (k, j, i) spacings; inference must too, after reorientation to LPS."""
    model = tiny_model()
    seen = []
    generate = model.network.static_unet
    model.network.static_unet = lambda spacing: seen.append(tuple(spacing)) or generate(spacing)
    # axes permuted: the image's first axis runs S-I, so LPS x, y, z spacings are 0.9, 1.6, 1.2
    image, _ = phantom(size=(20, 24, 16), spacing=(1.2, 0.9, 1.6), direction=(0, 1, 0, 0, 0, 1, 1, 0, 0))
    segmenter = Segmenter(model, device="cpu", patch=32)
    choice = segmenter.choose_spacing(image, SpacingRequest("native"))
    assert choice.spacing == pytest.approx((0.9, 1.6, 1.2))
    segmenter.segment(image, choice.spacing, Reporter(3, quiet=True))
    assert seen == [pytest.approx((1.2, 1.6, 0.9), abs=0.01)]


@pytest.mark.parametrize("variance", [0.3, 1.0, 2.25, 6.0])
def test_smoothing_is_itks_discrete_gaussian_up_to_the_edges(variance):
    """Anti-aliasing must stay what the model was trained with (ITK's DiscreteGaussianImageFilter)."""
    noise = sitk.GetImageFromArray(np.random.default_rng(1).random((20, 26, 31)).astype(np.float32))
    noise.SetSpacing((0.5, 1.0, 2.0))
    itk = sitk.DiscreteGaussianImageFilter()
    itk.SetVariance([variance] * 3)
    itk.SetUseImageSpacing(False)
    itk.SetMaximumKernelWidth(64)
    expected = sitk.GetArrayFromImage(itk.Execute(noise))
    sigmas_mm = [variance ** 0.5 * s for s in noise.GetSpacing()]
    assert np.allclose(sitk.GetArrayFromImage(smooth(noise, sigmas_mm)), expected, atol=1e-5)


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (1.0, 2.2, 0.6)])
def test_resampling_to_the_working_grid_is_itks_smoothing_then_linear_interpolation(spacing):
    """The separable resampler against SimpleITK on its own working grid, wherever SimpleITK's interpolation
    is defined (between the outermost voxel centres); beyond them the edge voxel is repeated, not zero."""
    image = on_grid(np.random.default_rng(2).random((30, 33, 36)).astype(np.float32), (1.0, 1.1, 1.2),
                    (3.0, -4.0, 5.0), OBLIQUE)
    grid = working_grid(image, spacing)
    smoothed = smooth(image, [max(n - o, 0) / 2 for o, n in zip(image.GetSpacing(), grid.GetSpacing())])
    expected = sitk.Resample(smoothed, grid, sitk.Transform(), sitk.sitkLinear, np.nan, sitk.sitkFloat32)
    ours = resample_to_spacing(image, spacing)
    assert same_grid(ours, grid, tolerance=0)
    expected, ours = sitk.GetArrayFromImage(expected), sitk.GetArrayFromImage(ours)
    inside = ~np.isnan(expected)
    assert inside.mean() > 0.6 and np.allclose(ours[inside], expected[inside], atol=1e-5)
    assert not np.isnan(ours).any() and ours.min() > 0  # noise in [0, 1): no zero from outside the image


@pytest.mark.parametrize("direction", [(0, 0, -1, -1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 0, 1, 0, -1, 0),
                                       (0, 1, 0, 1, 0, 0, 0, 0, -1), OBLIQUE])
def test_arrays_of_the_lps_oriented_grid_go_back_to_the_stored_axes(direction):
    """Undoing the reorientation must catch any flip or transposed axis: each voxel holds its own index."""
    index = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    image = on_grid(index, (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), direction)
    oriented = canonical(image)
    stacked = np.stack([sitk.GetArrayFromImage(oriented), -sitk.GetArrayFromImage(oriented)])
    back = permuted_back(stacked, oriented, image)
    assert np.array_equal(back[0], index) and np.array_equal(back[1], -index)
