"""2D models: IFE in training, 2D patches from slices of volumes (the right plane, cropped before smoothing),
slice-wise validation, and the one-line errors for settings that do not fit."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.io.model_file import load_model
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.training import sampling
from HyperSpaceSegmentationLib.training.sampling import IGNORE, LoadedCase, PatchSampler, SamplingConfig, volume_slice
from HyperSpaceSegmentationLib.training.trainer import validation_dice

from conftest import assert_train_refused as assert_refused
from conftest import asymmetric_phantom, oracle_model, phantom

FAST = ["--iterations", "2", "--patch", "16", "--batch-size", "2", "--features", "4", "8", "8", "16", "--rank", "2",
        "--device", "cpu", "--quiet"]
IDENTITY = Normalisation("ct", clip_low=-1e9, clip_high=1e9, mean=0.0, std=1.0)  # intensities pass unchanged


def write_dataset(folder, images=None, **entries):
    """A dataset JSON of the phantom volume (a training and a validation case) or of the given (image, labels)
    pairs, with extra top-level ``entries``."""
    pairs = images or [phantom(size=(24, 20, 16), spacing=(1.0, 1.2, 1.5), seed=1)]
    cases = []
    for index, (image, labels) in enumerate(pairs):
        sitk.WriteImage(image, str(folder / f"image{index}.nii.gz"))
        sitk.WriteImage(labels, str(folder / f"label{index}.nii.gz"))
        cases.append({"id": f"case{index}", "image": f"image{index}.nii.gz", "label": f"label{index}.nii.gz"})
    spec = {"modality": "mr", "labels": {"0": "background", "1": "shell", "2": "core"}, "training": cases,
            "validation": cases[:1], **entries}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


def test_slice_sampler_draws_2d_patches_at_in_plane_spacings_from_the_range():
    image, labels = phantom(size=(40, 36, 32), spacing=(0.9, 1.1, 2.0), seed=2)
    case = LoadedCase(image, sitk.GetArrayFromImage(labels), Normalisation("mr"), 2)
    sampler = PatchSampler([case], SamplingConfig((16, 24), 0.8, 3.5, foreground_fraction=0.5))
    rng = np.random.default_rng(0)
    spacings = []
    for _ in range(24):
        patch, patch_labels, spacing = sampler.sample(rng)
        assert patch.shape == patch_labels.shape == (16, 24) and patch.dtype == np.float32
        assert set(np.unique(patch_labels)) <= {0, 1, 2, IGNORE}
        spacings.append(spacing)
    spacings = np.array(spacings)
    assert spacings.shape == (24, 2) and spacings.min() >= 0.8 and spacings.max() <= 3.5
    assert (np.ptp(spacings, axis=1) > 0.1).any() and (np.ptp(spacings, axis=1) == 0).any()  # both kinds of draw


def encoded_volume(shape=(30, 40, 50), spacing=(1.0, 2.0, 3.0)) -> sitk.Image:
    """A volume whose intensity i + 100 j + 10000 k tells each voxel's index."""
    k, j, i = np.indices(shape)
    volume = sitk.GetImageFromArray((i + 100 * j + 10000 * k).astype(np.float32))
    volume.SetSpacing(spacing)
    return volume


def slice_patch(volume: sitk.Image, voxel: np.ndarray, axis: int, normalisation: Normalisation):
    """An unaugmented 15 x 17 patch across ``axis`` at the volume's in-plane spacing, centred on ``voxel`` (i, j, k),
    the volume's one foreground voxel; with the in-plane axes."""
    labels = np.zeros(sitk.GetArrayViewFromImage(volume).shape, np.uint8)
    labels[tuple(voxel[::-1])] = 1
    in_plane = [a for a in range(3) if a != axis]
    spacing = tuple(np.array(volume.GetSpacing())[in_plane])
    config = SamplingConfig((15, 17), 0.5, 5.0, fixed_spacing=spacing, foreground_fraction=1.0, augment=False,
                            slice_axes=(axis,))
    sampler = PatchSampler([LoadedCase(volume, labels, normalisation, 2)], config)
    return (*sampler.sample(np.random.default_rng(0)), in_plane)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_slice_is_the_plane_across_its_axis_through_the_drawn_voxel(axis):
    """Every patch pixel's intensity tells its voxel: the patch is the plane across ``axis`` through the one
    foreground voxel, its columns along the lower in-plane axis, at the volume's own in-plane spacing."""
    voxel = np.array([23, 17, 12])  # i, j, k
    volume = encoded_volume()
    patch, patch_labels, patch_spacing, in_plane = slice_patch(volume, voxel, axis, IDENTITY)
    rows, columns = np.indices((15, 17))
    index = np.zeros((3, 15, 17), int)
    index[axis] = voxel[axis]
    index[in_plane[0]] = voxel[in_plane[0]] + columns - 8
    index[in_plane[1]] = voxel[in_plane[1]] + rows - 7
    assert np.array_equal(patch, index[0] + 100 * index[1] + 10000 * index[2])
    assert patch_labels.sum() == 1 and patch_labels[7, 8] == 1
    spacing = volume.GetSpacing()
    assert patch_spacing.tolist() == [spacing[in_plane[1]], spacing[in_plane[0]]]  # rows, then columns


@pytest.mark.parametrize("axis, normalisation", [(0, Normalisation("mr")),
                                                  (2, Normalisation("ct", 1000.0, 150000.0, 2000.0, 50000.0))])
def test_each_slice_is_normalised_as_a_2d_image(axis, normalisation):
    """As ``hyperspace segment`` normalises the slices a 2D model segments (MR: z-scored over the slice's own
    voxels), once."""
    voxel = np.array([23, 17, 12])
    volume = encoded_volume()
    patch = slice_patch(volume, voxel, axis, normalisation)[0]
    whole_slice = sitk.GetArrayFromImage(volume_slice(volume, axis, voxel[axis]))
    rows, columns = [voxel[a] for a in range(3) if a != axis][::-1]
    expected = normalisation.apply(whole_slice)[rows - 7:rows + 8, columns - 8:columns + 9]
    np.testing.assert_allclose(patch, expected, rtol=1e-5, atol=1e-5)


def test_volume_slice_copies_one_plane_in_its_own_frame():
    volume = encoded_volume()
    array = sitk.GetArrayViewFromImage(volume)
    for axis, plane in ((0, array[:, :, 5]), (1, array[:, 5, :]), (2, array[5])):
        image = volume_slice(volume, axis, 5)
        assert np.array_equal(sitk.GetArrayViewFromImage(image), plane)
        assert image.GetSpacing() == tuple(s for a, s in enumerate(volume.GetSpacing()) if a != axis)
        assert image.GetOrigin() == (0.0, 0.0) and image.GetDirection() == (1.0, 0.0, 0.0, 1.0)


def test_slices_are_cropped_to_the_patch_before_smoothing(monkeypatch):
    """Only the part of one slice that a patch can reach is smoothed, never the volume or a whole slice."""
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((160, 200, 240), dtype=np.float32))
    smoothed = []
    smooth = sampling.smooth
    monkeypatch.setattr(sampling, "smooth",
                        lambda image, sigmas: smoothed.append(image.GetSize()) or smooth(image, sigmas))
    labels = np.zeros((160, 200, 240), np.uint8)
    labels[70:90, 90:110, 110:130] = 1
    sampler = PatchSampler([LoadedCase(volume, labels, Normalisation("mr"), 2)], SamplingConfig((16, 16), 0.5, 1.0))
    rng = np.random.default_rng(1)
    for _ in range(12):
        sampler.sample(rng)
    # a 16-pixel patch at up to 1 mm, rotated, scaled up to 1.2 and blurred, reaches at most ~30 mm from its centre
    assert len(smoothed) == 12 and all(len(size) == 2 and max(size) <= 64 for size in smoothed), smoothed


@pytest.mark.parametrize("method, ife, ratios", [
    ("hyperspace", "entropy", (0.5, 0.5)), ("as", "curvature", (0.75, 0.5)), ("fs", "entropy", (0.25, 1.0))])
def test_a_2d_model_with_ife_trains_on_slices_of_volumes(tmp_path, capsys, method, ife, ratios):
    dataset = write_dataset(tmp_path)
    options = ["--ife-ratios", *ratios] if method == "fs" else []
    options += ["--fixed-spacing", "1.5"] if method == "fs" else []
    argv = ["train", str(dataset), "-o", str(tmp_path / "run"), "--dim", "2", "--ife", ife, "--method", method,
            "--checkpoint-every", "2", *map(str, options), *FAST]
    assert main(argv) == 0, capsys.readouterr().err
    model = load_model(tmp_path / "run" / "model.pt")
    config = model.unet_config
    assert (config.dim, config.ife, config.ife_ratios, model.method) == (2, ife, ratios, method)
    assert model.training["slice_axes"] == model.training["config"]["slice_axes"] == [0, 1, 2]
    assert set(model.training["validation_dice"]["native" if method != "fs" else "1.5 mm (fixed)"]) == {"shell", "core"}


def test_slice_axes_come_from_the_option_else_the_dataset(tmp_path, capsys, monkeypatch):
    dataset = write_dataset(tmp_path, slice_axes=[1])
    axes = []
    take = LoadedCase.slice
    monkeypatch.setattr(LoadedCase, "slice",
                        lambda case, axis, position: axes.append(axis) or take(case, axis, position))
    for option, expected in (([], [1]), (["--slice-axes", "2"], [2]), (["--slice-axes", "0", "2"], [0, 2])):
        axes.clear()
        run = tmp_path / f"run{len(option)}"
        assert main(["train", str(dataset), "-o", str(run), "--dim", "2", *option, *FAST]) == 0, capsys.readouterr().err
        training = load_model(run / "model.pt").training
        assert training["slice_axes"] == training["config"]["slice_axes"] == expected
        assert set(axes) <= set(expected) and len(axes) == 2 * 2  # 2 steps of 2 patches
    # a resumed run keeps its axes, and an option that conflicts with them is refused
    assert main(["train", "-o", str(tmp_path / "run0"), "--resume", "--iterations", "3", "--quiet"]) == 0
    assert load_model(tmp_path / "run0" / "model.pt").training["slice_axes"] == [1]
    assert_refused(capsys, ["-o", tmp_path / "run0", "--resume", "--iterations", "4", "--slice-axes", "0"],
                   "--resume: --slice-axes", "conflicts with the checkpoint")


def test_ife_settings_resume_like_the_others(tmp_path, capsys):
    dataset = write_dataset(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(dataset), "-o", str(run), "--dim", "2", "--ife", "curvature", *FAST]) == 0
    assert_refused(capsys, ["-o", run, "--resume", "--ife", "entropy"], "--resume: --ife", "conflicts")
    assert_refused(capsys, ["-o", run, "--resume", "--ife-ratios", "0.5", "0.5"], "--resume: --ife-ratios", "conflicts")
    assert main(["train", "-o", str(run), "--resume", "--iterations", "3", "--ife", "curvature", "--quiet"]) == 0
    model = load_model(run / "model.pt")
    assert model.unet_config.ife == "curvature" and model.training["iterations"] == 3


def test_datasets_of_2d_images_and_single_slice_volumes_train_2d_models(tmp_path, capsys):
    image, labels = phantom(size=(32, 28, 1), seed=3)
    plane = [sitk.GetImageFromArray(sitk.GetArrayFromImage(x)[0]) for x in (image, labels)]
    dataset = write_dataset(tmp_path, images=[plane, (image, labels)])
    assert main(["train", str(dataset), "-o", str(tmp_path / "run"), "--dim", "2", "--checkpoint-every", "2",
                 *FAST]) == 0, capsys.readouterr().err
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.dim == 2 and "slice_axes" not in model.training and model.training["config"]["slice_axes"] == []
    assert set(model.training["validation_dice"]) == {"native", "3.5 mm"}


@pytest.mark.parametrize("options, words", [
    (["--dim", "3", "--ife", "curvature"], ["--ife curvature", "2D", "--dim 2"]),
    (["--dim", "2", "--ife-ratios", "0.5", "0.5"], ["--ife-ratios", "--ife curvature"]),
    (["--dim", "2", "--ife", "entropy", "--ife-ratios", "1.5", "0.5"], ["--ife entropy", "[0, 1]"]),
    (["--dim", "2", "--ife", "entropy", "--features", "4", "8", "8"], ["--ife entropy", "4 levels"]),
    (["--dim", "3", "--slice-axes", "2"], ["--slice-axes", "--dim 2"]),
    (["--dim", "2", "--slice-axes", "3"], ["--slice-axes 3", "0 (L-R, sagittal slices)", "2 (S-I, axial)"]),
    (["--dim", "2", "--slice-axes", "1", "1"], ["--slice-axes 1 1", "distinct"]),
], ids=["ife-3d", "ratios-without-ife", "ratio-range", "ife-3-levels", "slice-axes-3d", "axis-3", "axis-twice"])
def test_2d_settings_that_do_not_fit_are_refused(tmp_path, capsys, options, words):
    dataset = write_dataset(tmp_path)
    assert_refused(capsys, [dataset, "-o", tmp_path / "run", "--iterations", "1", "--device", "cpu", "--quiet",
                            "--patch", "16", *options], *words)
    assert not (tmp_path / "run").exists()


def test_slice_axes_for_2d_images_or_out_of_range_are_refused(tmp_path, capsys):
    image, labels = phantom(size=(32, 28, 1), seed=3)
    plane = [sitk.GetImageFromArray(sitk.GetArrayFromImage(x)[0]) for x in (image, labels)]
    (tmp_path / "flat").mkdir()
    flat = write_dataset(tmp_path / "flat", images=[plane], slice_axes=[2])
    assert_refused(capsys, [flat, "-o", tmp_path / "run", "--dim", "2", *FAST], "'slice_axes'", "images are 2D",
                   "remove 'slice_axes'")
    flat.write_text(json.dumps({k: v for k, v in json.loads(flat.read_text()).items() if k != "slice_axes"}))
    assert_refused(capsys, [flat, "-o", tmp_path / "run", "--dim", "2", "--slice-axes", "2", *FAST],
                   "--slice-axes 2", "images are 2D", "leave --slice-axes out")
    for axes in ([0, 5], [], "axial", [1.0]):
        dataset = write_dataset(tmp_path, slice_axes=axes)
        assert_refused(capsys, [dataset, "-o", tmp_path / "run", "--dim", "2", *FAST], "dataset.json",
                       f"'slice_axes' {json.dumps(axes)}", "distinct axes among 0 (L-R, sagittal slices)")
    assert not (tmp_path / "run").exists()


def test_validation_of_a_2d_model_segments_volumes_across_each_slice_axis():
    """An oracle network (class = nearest intensity level) on an asymmetric volume: Dice 1 at the native spacing
    across every axis; at a coarser spacing one score per axis (they differ), and the mean over the axes."""
    image, labels = asymmetric_phantom(size=(30, 26, 22), spacing=(1.0, 1.2, 1.5))
    classes = np.searchsorted([0, 3, 7], sitk.GetArrayFromImage(labels))
    model = oracle_model(dim=2)
    model.spacing_range = (0.5, 3.0)
    cpu = torch.device("cpu")
    every_axis = validation_dice(model, [("phantom", image, classes)], cpu, (0, 1, 2))
    per_axis = [validation_dice(model, [("phantom", image, classes)], cpu, (axis,)) for axis in (0, 1, 2)]
    assert every_axis["native"] == {"class 3": 1.0, "class 7": 1.0}
    for name in ("class 3", "class 7"):
        coarse = [dice["3 mm"][name] for dice in per_axis]
        assert 0.7 < min(coarse) < 1.0 and len(set(coarse)) == 3, coarse
        assert every_axis["3 mm"][name] == pytest.approx(np.mean(coarse), abs=1e-4)
