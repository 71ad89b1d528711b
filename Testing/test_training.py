"""Training lowers the loss, resumes where it stopped, runs the baselines, and runs under torchrun (gloo)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.io.model_file import load_model, save_model
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.training import TrainConfig, train
from HyperSpaceSegmentationLib.training.dataset import Case, load_dataset
from HyperSpaceSegmentationLib.training.sampling import IGNORE, LoadedCase, PatchSampler, SamplingConfig, read_case
from HyperSpaceSegmentationLib.training import trainer
from HyperSpaceSegmentationLib.training.trainer import dice_ce_loss, loss_history, polynomial_schedule

SMALL = dict(patch=16, batch_size=4, features=(4, 8, 8, 16), rank=2, hidden=16, device="cpu")


def test_patches_follow_the_drawn_spacing(dataset_json):
    dataset = load_dataset(dataset_json)
    cases = [LoadedCase(*read_case(c, [0, 1, 2], 3), Normalisation("mr"), 3) for c in dataset.training]
    sampler = PatchSampler(cases, SamplingConfig((16, 24, 32), 0.8, 3.5, augment=False, foreground_fraction=1.0))
    rng = np.random.default_rng(1)
    spacings = []
    for _ in range(20):
        image, labels, spacing = sampler.sample(rng)
        assert image.shape == labels.shape == (16, 24, 32)
        assert set(np.unique(labels)) <= {0, 1, 2, IGNORE} and np.isin(labels, (1, 2)).any()  # hits the phantom
        spacings.append(spacing)
    spacings = np.array(spacings)
    assert spacings.min() >= 0.8 and spacings.max() <= 3.5
    assert (np.ptp(spacings, axis=1) > 0.1).any()  # anisotropic draws
    fixed = PatchSampler(cases, SamplingConfig((16, 16, 16), 0.8, 3.5, fixed_spacing=(1.5, 1.5, 1.5)))
    assert np.allclose(fixed.sample(rng)[2], 1.5)


def _case(folder, image: np.ndarray, labels: np.ndarray, spacing) -> Case:
    """A training case written to ``folder`` from arrays (array-axis order) at ``spacing`` (x, y, z)."""
    paths = []
    for name, array in (("image", image), ("label", labels)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(spacing)
        paths.append(folder / f"{name}.nii.gz")
        sitk.WriteImage(volume, str(paths[-1]))
    return Case("synthetic", *paths)


def test_patch_spacing_is_returned_in_array_axis_order(tmp_path):
    """The spacing that comes with a patch is in the patch array's axis order (k, j, i): an axis-aligned box of
    10 x 16 x 24 mm (x, y, z) spans, along each patch axis, its size on that axis divided by that axis's spacing."""
    size_mm = {"x": 10, "y": 16, "z": 24}
    labels = np.zeros((40, 40, 40), np.uint8)  # 1 mm voxels
    labels[8:8 + size_mm["z"], 12:12 + size_mm["y"], 15:15 + size_mm["x"]] = 1
    image = labels * 100.0 + 10.0
    case = LoadedCase(*read_case(_case(tmp_path, image.astype(np.float32), labels, (1.0, 1.0, 1.0)), [0, 1], 3),
                      Normalisation("mr"), 3)
    config = SamplingConfig((32, 32, 32), 0.8, 3.5, fixed_spacing=(1.0, 2.0, 3.0), foreground_fraction=1.0,
                            augment=False)
    rng = np.random.default_rng(0)
    for _ in range(4):
        _, patch_labels, spacing = PatchSampler([case], config).sample(rng)
        assert spacing.tolist() == [3.0, 2.0, 1.0]  # z, y, x
        box = np.argwhere(patch_labels == 1)
        extent = box.max(0) - box.min(0) + 1  # voxels along k, j, i
        for axis, name in enumerate("zyx"):
            assert abs(extent[axis] * spacing[axis] - size_mm[name]) <= spacing[axis], (name, extent, spacing)


def test_patches_beyond_a_small_ct_are_air_and_ignored(tmp_path):
    """A CT smaller than a coarse patch: what lies beyond it is air and teaches nothing, never 'background'."""
    rng = np.random.default_rng(0)
    grid = np.indices((24, 24, 24)) - 11.5
    labels = np.ones((24, 24, 24), np.uint8)  # soft tissue fills the scan
    labels[(grid ** 2).sum(0) < 36] = 2  # a bone sphere in its middle
    image = np.where(labels == 2, 700.0, 40.0) + rng.normal(0, 10, labels.shape)
    normalisation = Normalisation("ct", clip_low=-1000.0, clip_high=1500.0, mean=40.0, std=200.0)
    case = LoadedCase(*read_case(_case(tmp_path, image.astype(np.float32), labels, (1.0,) * 3), [0, 1, 2], 3),
                      normalisation, 3)
    coarse = PatchSampler([case], SamplingConfig((16, 16, 16), 0.8, 3.5, fixed_spacing=(3.0, 3.0, 3.0), augment=False))
    for _ in range(5):
        patch, patch_labels, _ = coarse.sample(rng)
        outside = patch_labels == IGNORE
        assert 0.5 < outside.mean() < 1  # a 48 mm patch around a point of a 24 mm scan
        assert np.all(patch[outside] == pytest.approx(normalisation.outside_value))  # air, not mean tissue
        assert set(np.unique(patch_labels[~outside])) <= {1, 2}  # no voxel of the scan is background
        assert patch[~outside].min() > normalisation.outside_value + 2


def test_ignored_voxels_change_neither_loss_nor_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6, 8))
    target[..., 5:] = IGNORE
    loss = dice_ce_loss(logits, target)
    assert loss.item() == pytest.approx(dice_ce_loss(logits[..., :5], target[..., :5]).item(), rel=1e-5)
    changed = logits.detach().clone()
    changed[..., 5:] = torch.randn(2, 3, 6, 6, 3) * 10
    assert dice_ce_loss(changed, target).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert torch.all(logits.grad[..., 5:] == 0) and torch.any(logits.grad[..., :5] != 0)


def _bar_angles(sampler: PatchSampler, samples: int) -> np.ndarray:
    """Angle (degrees) between the last array axis and the long axis of the bar in each sampled patch."""
    rng = np.random.default_rng(3)
    angles = []
    for _ in range(samples):
        _, labels, _ = sampler.sample(rng)
        points = np.argwhere(labels == 1).astype(float)
        points -= points.mean(0)
        axis = np.linalg.eigh(points.T @ points)[1][:, -1]
        angles.append(np.degrees(np.arccos(min(abs(axis[-1]), 1.0))))
    return np.array(angles)


@pytest.mark.parametrize("dim", [2, 3])
def test_augmentation_rotates_2d_and_3d_patches(tmp_path, dim):
    """A bar along x in the image lies at varying angles in augmented patches (up to 15 degrees per plane)."""
    shape = (64, 64) if dim == 2 else (40, 40, 64)
    labels = np.zeros(shape, np.uint8)
    labels[(slice(17, 23),) * (dim - 1)] = 1  # a bar along the last array axis (x), 6 voxels thick
    image = labels * 100.0 + 10.0
    case = LoadedCase(*read_case(_case(tmp_path, image.astype(np.float32), labels, (1.0,) * dim), [0, 1], dim),
                      Normalisation("mr"), dim)
    config = dict(patch=(32,) * dim, spacing_min=0.8, spacing_max=3.5, fixed_spacing=(1.0,) * dim,
                  foreground_fraction=1.0)
    assert _bar_angles(PatchSampler([case], SamplingConfig(**config, augment=False)), 3).max() < 1
    angles = _bar_angles(PatchSampler([case], SamplingConfig(**config)), 16)
    assert angles.max() > 6 and np.percentile(angles, 75) > 3 and angles.max() < 30


def test_training_lowers_the_loss_and_the_model_segments(dataset_json, tmp_path):
    config = TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "run"), iterations=60,
                         learning_rate=1e-2, checkpoint_every=30, augment=False, **SMALL)
    path = train(config, quiet=True)
    history = loss_history(tmp_path / "run")
    assert len(history) == 60
    assert np.mean(history[-10:]) < 0.7 * np.mean(history[:5])
    model = load_model(path)
    assert model.method == "hyperspace" and model.labels == {0: "background", 1: "shell", 2: "core"}
    assert model.training["iterations"] == 60


def _interrupt_at_the_first_checkpoint(config: TrainConfig, monkeypatch) -> None:
    """Train until the first checkpoint is written, then stop the run as Ctrl-C would (right after the write)."""
    save = trainer._save_checkpoint

    def save_then_interrupt(*args, **kwargs) -> None:
        save(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "_save_checkpoint", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(config, quiet=True)


@pytest.fixture
def one_thread():
    """Bitwise-reproducible CPU kernels: multi-threaded reductions may differ in the last bit from run to run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_continues_the_run_exactly_as_if_uninterrupted(dataset_json, tmp_path, capsys, one_thread, monkeypatch):
    """An interrupted run resumed on the command line without options ends in the state of an uninterrupted one."""
    settings = dict(dataset=str(dataset_json), iterations=10, checkpoint_every=2, **SMALL)
    _interrupt_at_the_first_checkpoint(TrainConfig(output=str(tmp_path / "interrupted"), **settings), monkeypatch)
    stopped_at = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)["step"]
    assert stopped_at == 2
    assert not (tmp_path / "interrupted" / "model.pt").exists()
    capsys.readouterr()
    assert main(["train", "-o", str(tmp_path / "interrupted"), "--resume", "--quiet"]) == 0  # no --iterations
    assert f"resuming {tmp_path / 'interrupted'} at step {stopped_at} of 10 with the checkpoint's settings" in capsys.readouterr().err
    train(TrainConfig(output=str(tmp_path / "straight"), **settings), quiet=True)
    resumed, straight = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("interrupted", "straight"))
    assert resumed["step"] == straight["step"] == 10
    assert resumed["history"] == pytest.approx(straight["history"], rel=1e-5)
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-7)
    for key, state in straight["optimizer"]["state"].items():  # Adam's moments and step counts
        for name, value in state.items():
            torch.testing.assert_close(resumed["optimizer"]["state"][key][name], value, rtol=1e-5, atol=1e-9)
    assert [g["lr"] for g in resumed["optimizer"]["param_groups"]] == [g["lr"] for g in straight["optimizer"]["param_groups"]]
    assert load_model(tmp_path / "interrupted" / "model.pt").training["iterations"] == 10


def test_resume_refuses_options_that_conflict_with_the_checkpoint(dataset_json, tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(dataset=str(dataset_json), output=str(run), iterations=2, **SMALL), quiet=True)
    for options, words in ((["--patch", "32"], "--patch"), (["--iterations", "1"], "below the checkpoint's step 2"),
                           (["--method", "as"], "--method"), (["--no-augment"], "--no-augment")):
        capsys.readouterr()
        assert main(["train", "-o", str(run), "--resume", "--quiet", *options]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("hyperspace: error: --resume: ") and words in error and "\n" not in error
    # an extended run: more iterations continue from the checkpoint
    assert main(["train", str(dataset_json), "-o", str(run), "--resume", "--quiet", "--iterations", "3", "--patch", "16"]) == 0
    assert len(loss_history(run)) == 3


@pytest.mark.parametrize("first_step", [0, 30])
def test_polynomial_schedule_counts_each_step_once(first_step):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    schedule = polynomial_schedule(optimizer, first_step, 100)
    for step in range(first_step, 80):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - step / 100) ** 0.9)
        optimizer.step()
        schedule.step()


@pytest.mark.parametrize("method", ["fs", "as"])
def test_baselines_train_on_the_same_code_path(dataset_json, tmp_path, method):
    config = TrainConfig(dataset=str(dataset_json), output=str(tmp_path / method), iterations=2, method=method,
                         fixed_spacing=1.5 if method == "fs" else None, **SMALL)
    model = load_model(train(config, quiet=True))
    assert model.method == method
    assert model.fixed_spacing == ((1.5,) * 3 if method == "fs" else None)
    assert "hypernetwork" not in model.parameter_counts()


def test_two_cpu_processes_with_torchrun(dataset_json, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "HyperSpaceSegmentationLib.cli", "train", str(dataset_json), "-o", str(tmp_path / "ddp"),
        "--iterations", "3", "--patch", "16", "--batch-size", "1", "--features", "4", "8", "8", "16",
        "--rank", "2", "--device", "cpu", "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    model = load_model(tmp_path / "ddp" / "model.pt")
    assert model.training["processes"] == 2
    assert len(loss_history(tmp_path / "ddp")) == 3


def test_segmentation_of_the_trained_phantom_model_is_correct(dataset_json, tmp_path):
    """A model trained for a few seconds separates the phantom's classes at two spacings."""
    from HyperSpaceSegmentationLib.inference import Segmenter, SpacingRequest
    from HyperSpaceSegmentationLib.progress import Reporter

    from conftest import phantom

    # 300 steps: at 150 the core's Dice at 2 mm (a few voxels across) ranged 0.65-0.90 with the thread count and
    # the float order of the resampling; at 300 it is 0.86-0.95
    config = TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "run"), iterations=300,
                         learning_rate=5e-3, augment=False, spacing_min=0.8, spacing_max=2.5, **SMALL)
    segmenter = Segmenter(load_model(train(config, quiet=True)), device="cpu", patch=32)
    image, labels = phantom(size=(48, 44, 40), spacing=(0.9, 0.9, 1.2), seed=5)
    for spacing in [None, (2.0, 2.0, 2.0)]:
        request = SpacingRequest("explicit", spacing) if spacing else SpacingRequest("native")
        result = sitk.GetArrayFromImage(segmenter.segment(image, segmenter.choose_spacing(image, request).spacing,
                                                          Reporter(3, quiet=True)))
        truth = sitk.GetArrayFromImage(labels)
        for value in (1, 2):
            a, b = result == value, truth == value
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8, (spacing, value)


def test_labels_declared_out_of_order_are_classes_in_value_order_in_training_and_in_the_model(tmp_path, monkeypatch,
                                                                                               capsys):
    """Class c is the c-th smallest declared label value, whatever the order of the dataset JSON: in the training
    targets and in the saved model, whose class c segments to that value."""
    import json

    from conftest import phantom

    image, labels = phantom(size=(24, 20, 16), seed=1)  # shell (intensity 100) around a core (200)
    values = sitk.GetArrayFromImage(labels)
    relabelled = sitk.GetImageFromArray(np.choose(values, [0, 5, 3]).astype(np.uint8))  # shell 5, core 3
    relabelled.CopyInformation(labels)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(relabelled, str(tmp_path / "label.nii.gz"))
    spec = {"modality": "mr", "labels": {"0": "background", "5": "shell", "3": "core"},
            "training": [{"id": "a", "image": "image.nii.gz", "label": "label.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))

    _, classes = read_case(load_dataset(tmp_path / "dataset.json").training[0], [0, 3, 5], 3)
    assert np.array_equal(classes, np.choose(values, [0, 2, 1]))  # core (3) is class 1, shell (5) class 2

    patches = []
    sample = PatchSampler.sample
    monkeypatch.setattr(PatchSampler, "sample", lambda self, rng: patches.append(sample(self, rng)) or patches[-1])
    config = TrainConfig(dataset=str(tmp_path / "dataset.json"), output=str(tmp_path / "run"), iterations=2,
                         method="as", augment=False, **SMALL)
    model = load_model(train(config, quiet=True))
    patch_images = np.concatenate([p[0].ravel() for p in patches])
    targets = np.concatenate([p[1].ravel() for p in patches])
    assert (targets == 1).any() and (targets == 2).any()
    assert patch_images[targets == 1].mean() > patch_images[targets == 2].mean()  # class 1 is the bright core
    assert model.labels == {0: "background", 3: "core", 5: "shell"}

    for index, value in ((1, 3), (2, 5)):  # a network that answers class ``index`` everywhere
        with torch.no_grad():
            model.network.head.weight.zero_()
            model.network.head.bias.copy_(torch.eye(3)[index] * 10)
        save_model(model, tmp_path / f"class{index}.pt")
        output = tmp_path / f"class{index}.nii.gz"
        assert main(["segment", str(tmp_path / "image.nii.gz"), "-o", str(output), "--model",
                     str(tmp_path / f"class{index}.pt"), "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
        assert np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(output)))).tolist() == [value]


def test_init_starts_from_a_models_weights_and_refuses_another_network(dataset_json, tmp_path, capsys):
    """--init: with a vanishing learning rate the trained model keeps the starting model's weights; a model of
    another shape is refused in one line."""
    first = train(TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "first"), iterations=1, **SMALL),
                  quiet=True)
    config = TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "tuned"), iterations=1, seed=5,
                         learning_rate=1e-12, init=str(first), **SMALL)
    tuned = load_model(train(config, quiet=True)).trainable().state_dict()
    fresh = load_model(train(TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "fresh"), iterations=1,
                                         seed=5, learning_rate=1e-12, **SMALL), quiet=True)).trainable().state_dict()
    start = load_model(first).trainable().state_dict()
    assert all(torch.equal(tuned[name], start[name]) for name in start)
    assert not all(torch.equal(fresh[name], start[name]) for name in start)
    argv = ["train", str(dataset_json), "-o", str(tmp_path / "other"), "--init", str(first), "--features", "4", "8",
            "16", "16", "--rank", "2", "--patch", "16", "--iterations", "1", "--device", "cpu", "--quiet"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--init" in error and "U-Net" in error and error.count("\n") == 1


class _RunsCode:
    """A pickled object whose loading creates a file: what a checkpoint from elsewhere could do with
    ``weights_only=False``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _checkpoint(run, dataset_json):
    """A real checkpoint (as training writes it, of a small network) in the folder ``run``."""
    from dataclasses import replace

    run.mkdir()
    config = TrainConfig(dataset=str(dataset_json), output=str(run), **SMALL)
    config = replace(config, features=tuple(config.features))
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(network.parameters())
    network(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    trainer._save_checkpoint(run / "checkpoint.pt", config, network, optimizer, 1, [0.5], [])
    return run / "checkpoint.pt"


@pytest.mark.parametrize("damage, words", [
    ("truncated", ["is damaged, truncated or not a checkpoint", "train again without --resume"]),
    ("garbage", ["is damaged, truncated or not a checkpoint"]),
    ("empty", ["is damaged, truncated or not a checkpoint"]),
    ("code", ["is damaged, truncated or not a checkpoint", "objects other than tensors, numbers and text"]),
    ("a list", ["is not a checkpoint of 'hyperspace train' (it holds a list)"]),
    ("a model file", ["is not a checkpoint of 'hyperspace train' (no valid config, model, optimizer, step, history)"]),
    ("no step", ["(no valid step)"]),
    ("unknown setting", ["holds settings this version does not know", "flavour"]),
    ("a folder", ["is a folder, not a checkpoint"]),
])
def test_resume_from_a_damaged_or_foreign_checkpoint_is_a_one_line_error(dataset_json, tmp_path, capsys, damage, words):
    run = tmp_path / "run"
    path = _checkpoint(run, dataset_json)
    marker = tmp_path / "code-ran"
    good = torch.load(path, weights_only=True)  # what a checkpoint holds loads without running code
    assert good["step"] == 1 and good["config"]["features"] == (4, 8, 8, 16)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "code":
        torch.save({**good, "config": _RunsCode(marker)}, path)
    elif damage == "a list":
        torch.save([1, 2, 3], path)
    elif damage == "a model file":
        from conftest import tiny_model

        path.unlink()
        save_model(tiny_model(), path)
    elif damage == "no step":
        torch.save({key: value for key, value in good.items() if key != "step"}, path)
    elif damage == "unknown setting":
        torch.save({**good, "config": {**good["config"], "flavour": "vanilla"}}, path)
    else:
        path.unlink()
        path.mkdir()
    for argv in (["-o", run, "--resume", "--quiet"], [dataset_json, "-o", run, "--resume", "--quiet", *_small_options()]):
        capsys.readouterr()
        code = main(["train", *map(str, argv)])
        error = capsys.readouterr().err.strip()
        assert code == 2 and error.startswith("hyperspace: error: --resume: ") and "\n" not in error, error
        assert "Traceback" not in error
        for word in words:
            assert word in error, error
    assert not marker.exists()  # no code from the file ran
    assert not (run / "model.pt").exists()


def _small_options():
    return ["--patch", "16", "--batch-size", "4", "--features", "4", "8", "8", "16", "--rank", "2",
            "--device", "cpu"]


def test_loss_history_reads_checkpoints_without_running_their_code(dataset_json, tmp_path):
    path = _checkpoint(tmp_path / "run", dataset_json)
    assert loss_history(tmp_path / "run") == [0.5]
    marker = tmp_path / "code-ran"
    torch.save({**torch.load(path, weights_only=True), "history": _RunsCode(marker)}, path)
    with pytest.raises(Exception) as error:
        loss_history(tmp_path / "run")
    assert "damaged, truncated or not a checkpoint" in str(error.value) and not marker.exists()
