"""Training images synthesised from label maps: labels kept, a head of background around the brain, a random
contrast per label, a smooth bias field, halos, cut fields of view, and the dataset option that turns it on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.training.dataset import IGNORE, load_dataset
from HyperSpaceSegmentationLib.training.sampling import LoadedCase, PatchSampler, SamplingConfig
from HyperSpaceSegmentationLib.training.synthesis import PADDING_MM, SynthesisConfig, SyntheticHead, _smooth_field

from conftest import phantom

ONLY_HEADS = SynthesisConfig(fraction=1.0, head=1.0, halo=0.0, real_intensities=0.0, partial_view=0.0)
STRIPPED = SynthesisConfig(fraction=1.0, head=0.0, halo=0.0, real_intensities=0.0, partial_view=0.0)


@pytest.fixture(scope="module")
def brain():
    """A phantom 'brain' (1 shell, 2 core) well inside its image, and its synthetic head."""
    image, labels = phantom(size=(40, 36, 32), spacing=(1.0, 1.2, 1.5), seed=3)
    classes = sitk.GetArrayFromImage(labels)
    return image, classes, SyntheticHead(image, classes)


def whole(head: SyntheticHead) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in head.generation.shape)


def original(head: SyntheticHead, classes: np.ndarray) -> tuple[slice, ...]:
    """Where the case itself lies in the padded arrays."""
    pad = [(n - m) // 2 for n, m in zip(head.generation.shape, classes.shape)]
    return tuple(slice(p, p + m) for p, m in zip(pad, classes.shape))


def test_the_brain_keeps_its_labels_and_the_head_around_it_is_background(brain):
    image, classes, head = brain
    synthetic, labels = head.synthesise(whole(head), 1, np.random.default_rng(0), ONLY_HEADS)
    pad = [math.ceil(PADDING_MM / s) for s in image.GetSpacing()]
    assert synthetic.GetSize() == tuple(n + 2 * p for n, p in zip(image.GetSize(), pad))
    # the padded grid extends the case's grid: the case's first voxel lies at the same point
    first = synthetic.TransformIndexToPhysicalPoint(pad)
    np.testing.assert_allclose(first, image.GetOrigin(), atol=1e-6)
    np.testing.assert_array_equal(labels[original(head, classes)], classes)
    assert set(np.unique(labels)) == {0, 1, 2}  # the brain touches no face: nothing is unknown
    array = sitk.GetArrayFromImage(synthetic)
    outside = (labels == 0) & (head.distance > 0) & (head.distance < 8)
    assert outside.sum() > 1000 and np.median(array[outside]) > 0.02  # layers of tissue, not empty space
    # the layers follow the distance from the brain: several intensity levels within 8 mm
    assert len(np.unique(np.round(array[outside], 1))) > 3


def test_a_stripped_brain_has_an_empty_background_and_a_halo_when_asked(brain):
    _, classes, head = brain
    rng = np.random.default_rng(1)
    synthetic, labels = head.synthesise(whole(head), 1, rng, STRIPPED)
    array = sitk.GetArrayFromImage(synthetic)
    assert np.all(array[labels == 0] == 0) and np.all(array[labels > 0] > 0)
    halo_config = SynthesisConfig(fraction=1.0, head=0.0, halo=1.0, real_intensities=0.0, partial_view=0.0)
    haloed = sitk.GetArrayFromImage(head.synthesise(whole(head), 1, np.random.default_rng(1), halo_config)[0])
    near, far = (head.distance > 0) & (head.distance <= 2), head.distance > 12
    brain_level = np.median(haloed[labels > 0])
    # faint around the brain, fading with distance: a blurred copy outside it
    assert 0.01 * brain_level < np.median(haloed[near]) < 0.7 * brain_level
    assert haloed[far].mean() < 0.2 * haloed[near].mean()


def test_each_sample_draws_its_own_contrast(brain):
    """With random intensities, the shell is darker than the core in some samples and brighter in others."""
    _, classes, head = brain
    brighter = []
    for seed in range(16):
        synthetic, labels = head.synthesise(whole(head), 1, np.random.default_rng(seed), STRIPPED)
        array = sitk.GetArrayFromImage(synthetic)
        brighter.append(np.median(array[labels == 2]) > np.median(array[labels == 1]))
    assert 2 <= sum(brighter) <= 14


def test_the_real_intensities_keep_the_scans_contrast(brain):
    image, classes, head = brain
    real = SynthesisConfig(fraction=1.0, head=0.0, halo=0.0, real_intensities=1.0, partial_view=0.0)
    for seed in range(4):
        synthetic, labels = head.synthesise(whole(head), 1, np.random.default_rng(seed), real)
        array = sitk.GetArrayFromImage(synthetic)
        assert np.median(array[labels == 2]) > 1.3 * np.median(array[labels == 1])  # core 200, shell 100


def high_frequency_share(field: np.ndarray, cycles_per_voxel: float = 0.25) -> float:
    """The share of the (mean-free) log field's power at spatial frequencies above ``cycles_per_voxel``."""
    log = np.log(field) - np.log(field).mean()
    power = np.abs(np.fft.fftn(log)) ** 2
    frequency = np.sqrt(sum(f ** 2 for f in np.meshgrid(*[np.fft.fftfreq(n) for n in log.shape], indexing="ij")))
    return float(power[frequency > cycles_per_voxel].sum() / power.sum())


def test_the_bias_field_is_smooth_and_multiplicative():
    fields = [_smooth_field((40, 36, 32), np.random.default_rng(seed), 0.3) for seed in range(8)]
    for field in fields:
        assert field.shape == (40, 36, 32) and field.min() > 0
        assert high_frequency_share(field) < 0.1  # white noise: about 0.9
    spans = [field.max() / field.min() for field in fields]
    assert max(spans) > 1.3  # strong enough to matter, like a 0.7x-1.4x field


def test_a_brain_cut_by_a_face_goes_on_as_unknown(brain):
    """A slab cut through the brain: the padding beyond the cut continues the brain, labelled IGNORE."""
    image, classes, _ = brain
    slab = classes[10:]  # cut through the brain along k
    head = SyntheticHead(sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[10:]), slab)
    _, labels = head.synthesise(whole(head), 1, np.random.default_rng(0), ONLY_HEADS)
    below = labels[:original(head, slab)[0].start]
    assert (below == IGNORE).any() and set(np.unique(below)) == {0, IGNORE}
    above = labels[original(head, slab)[0].stop:]
    assert set(np.unique(above)) == {0}  # the top face is clear of the brain: only head and air


def test_a_cut_field_of_view_is_empty_and_ignored(brain):
    _, _, head = brain
    cut = SynthesisConfig(fraction=1.0, head=1.0, halo=0.0, real_intensities=0.0, partial_view=1.0)
    synthetic, labels = head.synthesise(whole(head), 1, np.random.default_rng(5), cut)
    array = sitk.GetArrayFromImage(synthetic)
    ignored = labels == IGNORE
    assert 0.2 < ignored.mean() < 0.8
    assert np.all(array[ignored] == 0)


def test_coarse_patches_are_synthesised_at_half_resolution(brain):
    _, classes, head = brain
    assert head.crop_stride(np.array([1.0, 1.2, 1.5])) == 1
    assert head.crop_stride(np.array([3.5, 3.6, 4.5])) == 2
    synthetic, labels = head.synthesise(whole(head), 2, np.random.default_rng(0), ONLY_HEADS)
    assert labels.shape == head.generation.shape  # labels at full resolution
    assert synthetic.GetSpacing() == pytest.approx((2.0, 2.4, 3.0))
    # the half-resolution image covers the same box: its first voxel is the full grid's
    np.testing.assert_allclose(synthetic.GetOrigin(), head.image.GetOrigin())


def test_the_sampler_mixes_synthetic_and_real_patches(brain):
    """Synthetic heads put tissue where the real image has empty background; about half the patches have it."""
    image, classes, _ = brain
    case = LoadedCase(image, classes, Normalisation("mr", version=2), 3, synthesise=True)
    with_heads = SynthesisConfig(fraction=0.5, head=1.0, partial_view=0.0)
    sampler = PatchSampler([case], SamplingConfig((16, 16, 16), 1.0, 2.0, synthesis=with_heads))
    kinds = []
    for seed in range(40):
        patch, labels, _ = sampler.sample(np.random.default_rng(seed))
        assert patch.shape == labels.shape == (16, 16, 16) and np.isfinite(patch).all()
        assert set(np.unique(labels)) <= {0, 1, 2, IGNORE}
        background = patch[labels == 0]
        if background.size > 200:
            kinds.append(np.median(np.abs(background)) > 0.01)
    assert len(kinds) > 10 and 0.2 < np.mean(kinds) < 0.8, kinds


@pytest.mark.parametrize("entry, words", [
    ({"fraction": 1.5}, ["'fraction'", "between 0 and 1"]),
    ({"heads": 0.5}, ["unknown key 'heads'", "fraction"]),
    ([0.5], ["must be an object"]),
    ({"halo": True}, ["'halo'", "between 0 and 1"]),
])
def test_a_bad_synthetic_entry_is_one_line(dataset_json, entry, words):
    spec = json.loads(dataset_json.read_text(encoding="utf-8"))
    spec["synthetic"] = entry
    dataset_json.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(Exception) as error:
        load_dataset(dataset_json)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_a_2d_sampler_synthesises_slices_from_the_generation_labels(brain):
    """A white-matter-like task (the core only) synthesised from finer generation labels (shell and core): the
    shell is tissue labelled background; synthesised from the task's own labels, it would be empty space."""
    image, classes, _ = brain
    core = (classes == 2).astype(np.uint8)
    normalisation = Normalisation("mr", version=2)
    config = SamplingConfig((24, 24), 1.0, 1.5, foreground_fraction=1.0, synthesis=STRIPPED)
    with_generation = PatchSampler([LoadedCase(image, core, normalisation, 2, True, generation=classes * 5)], config)
    without = PatchSampler([LoadedCase(image, core, normalisation, 2, True)], config)
    tissue_in_background = {True: [], False: []}
    for seed in range(12):
        for sampler, generated in ((with_generation, True), (without, False)):
            patch, labels, spacing = sampler.sample(np.random.default_rng(seed))
            assert patch.shape == labels.shape == (24, 24) and len(spacing) == 2
            assert set(np.unique(labels)) <= {0, 1, IGNORE} and (labels == 1).any()
            tissue_in_background[generated].append(np.mean(np.abs(patch[labels == 0]) > 0.05))
    shares = {generated: np.mean(values) for generated, values in tissue_in_background.items()}
    assert shares[True] > 0.3 and shares[True] > 3 * shares[False], shares  # without: blur at the core's edge


def test_synthesis_needs_volumes(tmp_path, capsys):
    picture, labels = phantom(size=(24, 20, 1), seed=1)
    sitk.WriteImage(picture[:, :, 0], str(tmp_path / "image.nrrd"))
    sitk.WriteImage(labels[:, :, 0], str(tmp_path / "label.nrrd"))
    spec = {"modality": "mr", "labels": {"0": "background", "1": "shell", "2": "core"}, "synthetic": {},
            "training": [{"image": "image.nrrd", "label": "label.nrrd"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec), encoding="utf-8")
    code = main(["train", str(tmp_path / "dataset.json"), "-o", str(tmp_path / "run"), "--dim", "2",
                 "--iterations", "1", "--patch", "16", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and "'synthetic' images are drawn from volumes" in error and error.count("\n") == 1


def test_a_generation_map_off_the_image_grid_is_one_line(dataset_json, tmp_path, capsys):
    spec = json.loads(dataset_json.read_text(encoding="utf-8"))
    image = sitk.ReadImage(str(tmp_path / spec["training"][0]["label"]))
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "generation.nii.gz"))
    spec["training"][0]["generation"] = "generation.nii.gz"
    spec["synthetic"] = {"fraction": 0.5}
    dataset_json.write_text(json.dumps(spec), encoding="utf-8")
    code = main(["train", str(dataset_json), "-o", str(tmp_path / "run"), "--iterations", "1", "--patch", "16",
                 "--device", "cpu", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and "generation label map" in error and "not on the grid of its image" in error
    assert error.count("\n") == 1 and not (tmp_path / "run").exists()
