"""Training lowers the loss, resumes where it stopped, runs the baselines, and runs under torchrun (gloo)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.io.model_file import load_model
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.training import TrainConfig, train
from HyperSpaceSegmentationLib.training.dataset import load_dataset
from HyperSpaceSegmentationLib.training.sampling import LoadedCase, PatchSampler, SamplingConfig
from HyperSpaceSegmentationLib.training.trainer import loss_history, polynomial_schedule

SMALL = dict(patch=16, batch_size=4, features=(4, 8, 8, 16), rank=2, hidden=16, device="cpu")


def test_patches_follow_the_drawn_spacing(dataset_json):
    dataset = load_dataset(dataset_json)
    cases = [LoadedCase(c, Normalisation("mr"), [0, 1, 2], 3) for c in dataset.training]
    sampler = PatchSampler(cases, SamplingConfig((16, 24, 32), 0.8, 3.5, augment=False, foreground_fraction=1.0))
    rng = np.random.default_rng(1)
    spacings = []
    for _ in range(20):
        image, labels, spacing = sampler.sample(rng)
        assert image.shape == labels.shape == (16, 24, 32)
        assert labels.max() <= 2 and labels.any()  # foreground oversampling hits the phantom
        spacings.append(spacing)
    spacings = np.array(spacings)
    assert spacings.min() >= 0.8 and spacings.max() <= 3.5
    assert (np.ptp(spacings, axis=1) > 0.1).any()  # anisotropic draws
    fixed = PatchSampler(cases, SamplingConfig((16, 16, 16), 0.8, 3.5, fixed_spacing=(1.5, 1.5, 1.5)))
    assert np.allclose(fixed.sample(rng)[2], 1.5)


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


def test_resume_continues_from_the_checkpoint(dataset_json, tmp_path):
    config = TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "run"), iterations=4,
                         checkpoint_every=2, **SMALL)
    train(config, quiet=True)
    config.iterations = 6
    train(config, resume=True, quiet=True)
    history = loss_history(tmp_path / "run")
    assert len(history) == 6
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 6


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

    config = TrainConfig(dataset=str(dataset_json), output=str(tmp_path / "run"), iterations=150,
                         learning_rate=1e-2, augment=False, spacing_min=0.8, spacing_max=2.5, **SMALL)
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
