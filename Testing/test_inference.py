"""Inference below the geometry: window blending, anti-aliasing, the working grid's size, the spacing policy."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.geometry import grid_size, resample_to_spacing, voxels_at, working_grid
from HyperSpaceSegmentationLib.inference import Segmenter, SpacingRequest
from HyperSpaceSegmentationLib.inference.sliding_window import count_windows, predict_probabilities
from HyperSpaceSegmentationLib.io.model_file import save_model
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.progress import Reporter

from conftest import OBLIQUE, asymmetric_phantom, oracle_model, phantom, tiny_model


class ConstantLogits(torch.nn.Module):
    def forward(self, x):
        logits = torch.tensor([2.0, 0.5, -1.0]).view(1, 3, *([1] * (x.ndim - 2)))
        return logits.expand(x.shape[0], 3, *x.shape[2:])


class BorderArtefacts(torch.nn.Module):
    """Confidently class 1 within patch/8 of the window's border, class 0 elsewhere: a network with edge effects."""

    def forward(self, x):
        band = torch.zeros(x.shape[2:], dtype=torch.bool)
        for axis, size in enumerate(x.shape[2:]):
            index = torch.arange(size)
            shape = [1] * (x.ndim - 2)
            shape[axis] = size
            band = band | ((index < size / 8) | (index >= size - size / 8)).view(shape)
        logit = band.float() * 20 - 10
        return torch.stack([-logit, logit])[None]


def test_blended_windows_are_probabilities_wherever_windows_overlap():
    volume = torch.zeros(1, 1, 40, 56, 72)  # 2 x 3 x 4 overlapping windows of 32^3
    probabilities = predict_probabilities(volume, ConstantLogits(), 3, (32, 32, 32), overlap=0.5)[0]
    expected = torch.softmax(torch.tensor([2.0, 0.5, -1.0]), 0)
    assert probabilities.shape == (3, 40, 56, 72)
    assert torch.allclose(probabilities, expected.view(3, 1, 1, 1).expand_as(probabilities), atol=1e-5)


def test_gaussian_blending_hides_each_windows_border_where_another_window_sees_it_centrally():
    """nnU-Net's weighting (sigma = patch / 8): a window's rim weighs little against a neighbour's centre."""
    probabilities = predict_probabilities(torch.zeros(1, 1, 96, 96), BorderArtefacts(), 2, (32, 32), overlap=0.5)[0]
    interior = probabilities[1, 16:80, 16:80]  # every voxel here lies centrally in some window
    assert interior.max() < 0.05
    assert probabilities[1, 0, 48] > 0.95  # the volume's own edge is seen by rims only


class WindowMinimum(torch.nn.Module):
    """Class 1 everywhere in a window whose smallest input is below -9 (what lies outside a CT scan below)."""

    def forward(self, x):
        low = (x.amin(dim=tuple(range(1, x.ndim)), keepdim=True) < -9).float().expand_as(x) * 20 - 10
        return torch.cat([-low, low], dim=1)


def test_windows_beyond_a_small_scan_see_what_lies_outside_a_scan():
    """Training pads patches with the normalised intensity of air for CT; inference must pad windows alike."""
    model = oracle_model(label_values=(0, 1), levels=(0.0, 1.0))
    model.network = WindowMinimum()
    model.network.config = oracle_model().unet_config
    model.normalisation = Normalisation("ct", clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=100.0)
    assert model.normalisation.outside_value == pytest.approx(-10.0)
    image = sitk.GetImageFromArray(np.zeros((10, 12, 14), np.float32))  # soft tissue (0 HU) only, smaller than a window
    labels = Segmenter(model, device="cpu", patch=32).segment(image, (1.0, 1.0, 1.0), Reporter(3, quiet=True))
    assert sitk.GetArrayFromImage(labels).min() == 1  # the padded window held air


def test_downsampling_averages_away_detail_finer_than_the_new_spacing():
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (48, 48, 48)).astype(np.float32))
    coarse = sitk.GetArrayFromImage(resample_to_spacing(noise, (3.0, 3.0, 3.0)))
    assert coarse.shape == (16, 16, 16)
    assert coarse.std() < 0.4  # without anti-aliasing every sample keeps the full noise (std 1)
    assert abs(coarse.mean()) < 0.1


def test_grid_size_rounds_halves_up_whatever_the_rounding_noise():
    assert grid_size((244.5, 100.0), (3.0, 3.0)) == (82, 33)  # 81.5 and 33.33 voxels
    for noise in (-1e-9, 1e-9, -1e-12):
        assert grid_size((244.5 + noise,), (3.0,)) == (82,)
    assert grid_size((1.0,), (3.0,)) == (1,)


def test_header_rounding_noise_changes_nothing(tmp_path):
    """163 slices of 1.5 mm are 81.5 slices of 3 mm: the classic case where NIfTI and NRRD headers disagreed."""
    image, _ = phantom(size=(20, 24, 163), spacing=(1.5, 1.5, 1.5), direction=OBLIQUE, origin=(1.0, 2.0, 3.0))
    segmenter = Segmenter(tiny_model(), device="cpu", patch=32)
    results = []
    for spacing_noise, origin_noise in ((0.0, 0.0), (1e-9, 0.0), (-1e-9, 1e-9), (0.0, -1e-9)):
        noisy = sitk.Image(image)
        noisy.SetSpacing([s + spacing_noise for s in image.GetSpacing()])
        noisy.SetOrigin([o + origin_noise for o in image.GetOrigin()])
        for suffix in (".nii.gz", ".nrrd"):
            path = tmp_path / f"scan{suffix}"
            sitk.WriteImage(noisy, str(path))
            scan = sitk.ReadImage(str(path))
            assert working_grid(scan, (3.0, 3.0, 3.0)).GetSize()[2] == 82
            results.append(sitk.GetArrayFromImage(segmenter.segment(scan, (3.0, 3.0, 3.0), Reporter(3, quiet=True))))
    assert all(np.array_equal(results[0], r) for r in results[1:])


# --- the spacing policy -----------------------------------------------------------------------------------------

def anisotropic_scan():
    """A 0.5 x 0.5 x 5 mm scan of 200 x 200 x 200 mm."""
    image = sitk.Image([400, 400, 40], sitk.sitkFloat32)
    image.SetSpacing((0.5, 0.5, 5.0))
    return image


def test_auto_spacing_meets_the_voxel_budget_within_the_trained_range():
    segmenter = Segmenter(tiny_model(), device="cpu")  # trained 0.8-3.5 mm
    image = anisotropic_scan()
    choice = segmenter.choose_spacing(image, SpacingRequest("auto", max_voxels=1e6))
    assert all(0.8 <= s <= 3.5 for s in choice.spacing)
    assert choice.spacing[2] == pytest.approx(3.5)  # the 5 mm axis is brought into range, not left at 5
    assert 0.9e6 < voxels_at(image, choice.spacing) <= 1e6  # the finest that fits, not just any that fits
    assert any("coarser than the trained range" in note for note in choice.notes)


def test_auto_spacing_with_extrapolation_keeps_the_coarse_axis():
    segmenter = Segmenter(tiny_model(), device="cpu")
    choice = segmenter.choose_spacing(anisotropic_scan(), SpacingRequest("auto", max_voxels=1e6, allow_extrapolation=True))
    assert choice.spacing[2] == pytest.approx(5.0)
    assert voxels_at(anisotropic_scan(), choice.spacing) <= 1e6


def test_an_impossible_budget_says_so_and_uses_the_coarsest_trained_spacing():
    segmenter = Segmenter(tiny_model(), device="cpu")
    choice = segmenter.choose_spacing(anisotropic_scan(), SpacingRequest("auto", max_voxels=1))
    assert choice.spacing == pytest.approx((3.5, 3.5, 3.5))
    assert any("cannot be met" in note and "--allow-extrapolation" in note for note in choice.notes)


def test_time_budget_measures_the_network_once_and_picks_the_finest_spacing_that_fits():
    model = tiny_model()
    calls = []
    segmenter = Segmenter(model, device="cpu", patch=32)
    original = segmenter.network_for

    def counting_network_for(spacing):
        network = original(spacing)
        network.register_forward_hook(lambda *args: calls.append(1))
        return network

    segmenter.network_for = counting_network_for
    image, _ = phantom(size=(96, 96, 96), spacing=(0.8, 0.8, 0.8))
    budget = 0.5 * segmenter.estimate_seconds(image, (0.8, 0.8, 0.8))
    choice = segmenter.choose_spacing(image, SpacingRequest("auto", max_seconds=budget))
    assert len(calls) <= 2  # one warm-up and one timed pass, however many spacings were considered
    assert segmenter.estimate_seconds(image, choice.spacing) <= budget
    finer = tuple(s / 1.05 for s in choice.spacing)
    assert segmenter.estimate_seconds(image, finer) > budget


@pytest.mark.parametrize("option,value", [("--max-voxels", "-5"), ("--max-voxels", "0"), ("--max-voxels", "nan"),
                                          ("--max-seconds", "0"), ("--max-seconds", "-1"), ("--max-seconds", "inf")])
def test_impossible_budgets_are_refused(option, value, tmp_path, capsys):
    image, _ = phantom(size=(16, 16, 16))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    model = save_model(tiny_model(), tmp_path / "model.pt")
    code = main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--model", str(model),
                 "--spacing", "auto", option, value])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{option} {value}"[:13] in err.splitlines()[-1] and "give a positive" in err
    assert not (tmp_path / "out.nrrd").exists()


def test_json_summary_gives_both_spacings_in_lps_axis_order(tmp_path, capsys):
    # the file's first axis runs S-I: in L, P, S order its spacing is (0.9, 1.6, 1.2)
    image, _ = phantom(size=(20, 24, 16), spacing=(1.2, 0.9, 1.6), direction=(0, 1, 0, 0, 0, 1, 1, 0, 0))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    model = save_model(tiny_model(), tmp_path / "model.pt")
    code = main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--model", str(model), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["native_spacing_mm"] == pytest.approx([0.9, 1.6, 1.2])
    assert summary["spacing_mm"] == pytest.approx(summary["native_spacing_mm"])


# --- single-slice volumes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_a_single_slice_volume_is_segmented_on_its_own_grid(dim, direction):
    image, truth = asymmetric_phantom(size=(40, 36, 20), spacing=(0.9, 1.1, 4.0), origin=(5.0, 6.0, 7.0), direction=direction)
    image, truth = (sitk.RegionOfInterest(volume, (40, 36, 1), (0, 0, 8)) for volume in (image, truth))  # both objects
    segmenter = Segmenter(oracle_model(dim=dim), device="cpu", patch=32)
    choice = segmenter.choose_spacing(image, SpacingRequest("native"))
    assert len(choice.spacing) == dim
    labels = segmenter.segment(image, choice.spacing, Reporter(3, quiet=True))
    assert labels.GetSize() == image.GetSize() and labels.GetDirection() == image.GetDirection()
    assert labels.GetOrigin() == image.GetOrigin() and labels.GetSpacing() == image.GetSpacing()
    assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth))



def test_a_spacing_off_the_trained_range_by_rounding_noise_gets_no_note():
    segmenter = Segmenter(tiny_model(), device="cpu")  # trained 0.8-3.5 mm
    image, _ = phantom(size=(16, 16, 16), spacing=(1.2, 0.79999997, 3.5000001))
    choice = segmenter.choose_spacing(image, SpacingRequest("native"))
    assert choice.notes == [] and choice.spacing == pytest.approx((1.2, 0.8, 3.5))
    image.SetSpacing((1.2, 0.75, 3.5))
    assert "outside the trained range" in segmenter.choose_spacing(image, SpacingRequest("native")).notes[0]


# --- policies a planted-bug round showed untested ------------------------------------------------------------------

def test_reorientation_brings_any_stored_axes_to_lps():
    from HyperSpaceSegmentationLib.geometry import canonical

    for direction in ((-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 0, -1, -1, 0, 0, 0, 1, 0)):  # RAS-stored, permuted
        image, _ = phantom(size=(20, 16, 12), spacing=(1.0, 2.0, 3.0), direction=direction)
        oriented = canonical(image)
        assert np.allclose(oriented.GetDirection(), np.eye(3).ravel())
        assert sorted(oriented.GetSpacing()) == [1.0, 2.0, 3.0]
        # the same physical point holds the same voxel value
        point = image.TransformIndexToPhysicalPoint((3, 5, 7))
        assert oriented[oriented.TransformPhysicalPointToIndex(point)] == image[3, 5, 7]


def test_as_and_hyperspace_models_clamp_to_their_trained_range_fs_models_keep_their_spacing():
    image, _ = phantom(size=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    for method in ("as", "hyperspace"):
        choice = Segmenter(tiny_model(method), device="cpu").choose_spacing(image, SpacingRequest("explicit", (0.5,)))
        assert choice.spacing == pytest.approx((0.8, 0.8, 0.8)) and "clamped" in choice.notes[0]
    fs = Segmenter(tiny_model("fs"), device="cpu")  # trained at 1.5 mm
    for request in (SpacingRequest(), SpacingRequest("auto"), SpacingRequest("auto", max_voxels=10)):
        choice = fs.choose_spacing(image, request)
        assert choice.spacing == (1.5, 1.5, 1.5) and "FS model" in choice.notes[0]


def test_a_time_budget_alone_sets_no_voxel_budget():
    segmenter = Segmenter(tiny_model(), device="cpu")
    segmenter._seconds_per_voxel_measured = 1e-12  # a machine fast enough for anything
    image = sitk.Image([200, 200, 200], sitk.sitkFloat32)  # 8e6 voxels, twice the default voxel budget
    choice = segmenter.choose_spacing(image, SpacingRequest("auto", max_seconds=1e6))
    assert choice.spacing == pytest.approx((1.0, 1.0, 1.0)) and choice.notes == []


def test_auto_budget_counts_the_voxels_of_the_reoriented_grid():
    """A scan stored with permuted axes and its LPS twin get the same choice, within the budget."""
    from HyperSpaceSegmentationLib.geometry import canonical

    segmenter = Segmenter(tiny_model(), device="cpu")
    permuted, _ = phantom(size=(120, 30, 60), spacing=(1.0, 1.0, 3.0), direction=(0, 0, -1, -1, 0, 0, 0, 1, 0))
    twin = canonical(permuted)
    for budget in (20_000, 50_000, 100_000):
        choices = [segmenter.choose_spacing(image, SpacingRequest("auto", max_voxels=budget)).spacing
                   for image in (permuted, twin)]
        assert choices[0] == pytest.approx(choices[1])
        assert voxels_at(twin, choices[0]) <= budget


def test_networks_are_cached_per_spacing_rounded_to_a_hundredth_of_a_millimetre():
    segmenter = Segmenter(tiny_model(), device="cpu")
    assert segmenter.network_for((1.501,) * 3) is segmenter.network_for((1.504,) * 3)
    other = segmenter.network_for((1.53,) * 3)
    assert other is not segmenter.network_for((1.50,) * 3)
    weights = [dict(segmenter.network_for((s,) * 3).named_parameters())["head.weight"] for s in (1.50, 1.53)]
    assert not torch.equal(*weights)


@pytest.mark.parametrize("size", [129, 150, 200, 257, 300])
def test_neighbouring_windows_overlap_by_at_least_half_a_window(size):
    from HyperSpaceSegmentationLib.inference.sliding_window import window_starts

    starts = window_starts(size, 64, 0.5)
    assert starts[0] == 0 and starts[-1] == size - 64
    assert max(np.diff(starts)) <= 32


def test_ct_normalisation_is_fitted_on_labelled_voxels_only():
    from HyperSpaceSegmentationLib.preprocessing import fit_normalisation

    array = np.full((10, 20, 30), -1000.0)  # air around the labelled tissue
    labels = np.zeros(array.shape, np.uint8)
    array[2:8, 5:15, 5:25] = np.linspace(0, 100, 6 * 10 * 20).reshape(6, 10, 20)
    labels[2:8, 5:15, 5:25] = 1
    fitted = fit_normalisation("ct", [(array, labels)])
    assert fitted.clip_low == pytest.approx(0.5, abs=0.1) and fitted.clip_high == pytest.approx(99.5, abs=0.1)
    assert fitted.mean == pytest.approx(50.0, abs=0.1) and fitted.std == pytest.approx(28.8, abs=0.3)


def test_input_spacing_overrides_a_wrong_header_and_the_output_keeps_the_header(tmp_path, capsys):
    image, _ = phantom(size=(24, 20, 12), spacing=(0.9, 1.1, 2.5), origin=(4.0, -3.0, 2.0), direction=OBLIQUE)
    wrong = sitk.Image(image)
    wrong.SetSpacing((1.0, 1.0, 1.0))  # a header that lost its spacing
    sitk.WriteImage(image, str(tmp_path / "right.nrrd"))
    sitk.WriteImage(wrong, str(tmp_path / "wrong.nrrd"))
    model = save_model(tiny_model(), tmp_path / "model.pt")
    common = ["--model", str(model), "--spacing", "2", "--quiet"]
    assert main(["segment", str(tmp_path / "right.nrrd"), "-o", str(tmp_path / "right-seg.nrrd"), *common]) == 0
    assert main(["segment", str(tmp_path / "wrong.nrrd"), "-o", str(tmp_path / "fixed-seg.nrrd"), *common,
                 "--input-spacing", "0.9", "1.1", "2.5"]) == 0
    assert main(["segment", str(tmp_path / "wrong.nrrd"), "-o", str(tmp_path / "wrong-seg.nrrd"), *common]) == 0
    right, fixed, unfixed = (sitk.ReadImage(str(tmp_path / f"{name}-seg.nrrd")) for name in ("right", "fixed", "wrong"))
    assert np.array_equal(sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(right))
    assert not np.array_equal(sitk.GetArrayFromImage(unfixed), sitk.GetArrayFromImage(right))
    header = sitk.ReadImage(str(tmp_path / "wrong.nrrd"))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):  # as written, up to the file's decimal rounding
        assert np.allclose(getattr(fixed, getter)(), getattr(header, getter)(), atol=1e-9, rtol=0)
    capsys.readouterr()
    code = main(["segment", str(tmp_path / "wrong.nrrd"), "-o", str(tmp_path / "x.nrrd"), *common,
                 "--input-spacing", "1", "2"])
    assert code == 2 and "--input-spacing has 2 values" in capsys.readouterr().err


def test_windows_grow_to_the_whole_volume_when_memory_allows_and_shrink_to_fit_a_budget():
    image, labels = asymmetric_phantom(size=(70, 60, 50), direction=OBLIQUE)
    spacing = (1.0, 1.0, 1.0)
    roomy = Segmenter(oracle_model(), device="cpu", max_memory_mb=4000)
    whole = roomy.windows(image, spacing)
    assert all(p >= s for p, s in zip(whole.patch, whole.shape)) and max(whole.patch) - max(whole.shape) < 8
    budget = 0.5 * roomy.estimate_memory_mb(image, spacing)
    tight = Segmenter(oracle_model(), device="cpu", max_memory_mb=budget)
    windowed = tight.windows(image, spacing)
    assert count_windows(windowed.shape, windowed.patch, 0.5) > 1
    assert tight.estimate_memory_mb(image, spacing) <= budget
    reporter = Reporter(3, quiet=True)
    for segmenter in (roomy, tight):  # a voxel-wise network: the same labels whatever the windows
        assert np.array_equal(sitk.GetArrayFromImage(segmenter.segment(image, spacing, reporter)),
                              sitk.GetArrayFromImage(labels))


def test_a_memory_budget_below_the_smallest_window_is_refused_with_what_fits(tmp_path, capsys):
    image, _ = asymmetric_phantom(size=(70, 60, 50))
    path = tmp_path / "image.nrrd"
    sitk.WriteImage(image, str(path))
    model = tmp_path / "tiny.pt"
    save_model(tiny_model(), model)
    # the input grid's own arrays need about 5 MB whatever the working spacing: no --spacing helps, a budget does
    for budget, words in (("5", ["5 MB (--max-memory)", "such as --max-memory"]), ("0", ["--max-memory 0", "positive"]),
                          ("nan", ["--max-memory nan", "positive"])):
        code = main(["segment", str(path), "-o", str(tmp_path / f"out{budget}.nrrd"), "--model", str(model),
                     "--max-memory", budget, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and all(w in err[0] for w in words), err
        assert not (tmp_path / f"out{budget}.nrrd").exists()


def test_a_small_image_is_padded_to_a_training_patch_so_normalisation_sees_background_around_it():
    """A crop inside an organ must not fill the network's whole field: windows are never smaller than the patches
    the model was trained on (what lies outside pads them), on the axes the image does not fill."""
    image, labels = asymmetric_phantom(size=(20, 36, 100))
    model = oracle_model()
    model.training = {"config": {"patch": 48}}
    plan = Segmenter(model, device="cpu").windows(image, (1.0, 1.0, 1.0))
    assert plan.patch == (104, 48, 48)  # k: 100 voxels of its own, rounded up to the divisor
    assert Segmenter(oracle_model(), device="cpu").windows(image, (1.0, 1.0, 1.0)).patch == (104, 40, 24)
    assert Segmenter(model, device="cpu", patch=32).windows(image, (1.0, 1.0, 1.0)).patch == (32, 48, 48)
    labelled = Segmenter(model, device="cpu").segment(image, (1.0, 1.0, 1.0), Reporter(3, quiet=True))
    assert np.array_equal(sitk.GetArrayFromImage(labelled), sitk.GetArrayFromImage(labels))  # padding cut off again
