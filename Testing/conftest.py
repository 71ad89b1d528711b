"""Shared fixtures: synthetic phantoms with known geometry, a tiny dataset and a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.io.model_file import SegmentationModel, build_network, save_model
from HyperSpaceSegmentationLib.networks import HyperConfig, UNetConfig
from HyperSpaceSegmentationLib.preprocessing import Normalisation

OBLIQUE = (0.9363, -0.2896, 0.1987, 0.3130, 0.9447, -0.0978, -0.1593, 0.1538, 0.9752)


def on_grid(array: np.ndarray, spacing, origin, direction=None) -> sitk.Image:
    """``array`` (z, y, x) as an image with the given spacing, origin and direction (identity when ``None``)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def phantom(size=(40, 36, 32), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None, seed=0):
    """(image, labels): a nested ellipsoid (1 outer shell, 2 core) with class-dependent intensity and noise."""
    rng = np.random.default_rng(seed)
    shape = size[::-1]
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing[::-1])], indexing="ij")
    extent = [n * s for n, s in zip(shape, spacing[::-1])]
    radius = np.sqrt(sum((g / (0.35 * e)) ** 2 for g, e in zip(grids, extent)))
    labels = np.zeros(shape, np.uint8)
    labels[radius < 1.0] = 1
    labels[radius < 0.55] = 2
    intensity = np.choose(labels, [0.0, 100.0, 200.0]) + rng.normal(0, 5, shape) * (labels > 0)
    return on_grid(intensity.astype(np.float32), spacing, origin, direction), on_grid(labels, spacing, origin, direction)


@pytest.fixture
def dataset_json(tmp_path: Path) -> Path:
    """A two-case synthetic dataset with the JSON that describes it."""
    cases = []
    for index, spacing in enumerate([(1.0, 1.0, 1.0), (1.5, 1.5, 2.0)]):
        image, labels = phantom(spacing=spacing, seed=index)
        sitk.WriteImage(image, str(tmp_path / f"case{index}.nii.gz"))
        sitk.WriteImage(labels, str(tmp_path / f"case{index}_seg.nii.gz"))
        cases.append({"id": f"case{index}", "image": f"case{index}.nii.gz", "label": f"case{index}_seg.nii.gz"})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({
        "task": "phantom", "modality": "mr", "labels": {"0": "background", "1": "shell", "2": "core"},
        "training": cases,
    }))
    return path


def tiny_model(method: str = "hyperspace", dim: int = 3, seed: int = 0) -> SegmentationModel:
    """An untrained small model: enough to test shapes, geometry and files."""
    torch.manual_seed(seed)
    unet = UNetConfig(dim=dim, num_classes=3, features=(4, 8, 8, 16))
    network = build_network(method, unet, HyperConfig(hidden=16, rank=2))
    return SegmentationModel(
        method, network.eval(), {0: "background", 1: "shell", 2: "core"}, (0.8, 3.5), Normalisation("mr"),
        fixed_spacing=(1.5,) * dim if method == "fs" else None,
    )


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> Path:
    return save_model(tiny_model(), tmp_path / "tiny.pt")


class IntensityOracle(torch.nn.Module):
    """A 'network' whose logits are a known function of the input: the nearest of ``levels`` (raw intensities) wins.

    Used with an identity CT normalisation, so the class of each working voxel is known from the image alone.
    """

    def __init__(self, levels: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return -((x - self.levels.view(shape)) ** 2) / 100.0


def oracle_model(label_values=(0, 3, 7), levels=(0.0, -100.0, 100.0), dim: int = 3) -> SegmentationModel:
    """A plain-network model whose class ``label_values[c]`` is the voxels nearest to intensity ``levels[c]``."""
    identity = Normalisation("ct", clip_low=-1e6, clip_high=1e6, mean=0.0, std=1.0)
    network = IntensityOracle(levels)
    network.config = UNetConfig(dim=dim, num_classes=len(levels), features=(4, 8, 8, 16))
    names = {v: f"class {v}" for v in label_values}
    return SegmentationModel("as", network.eval(), names, (0.5, 5.0), identity)


def asymmetric_phantom(size=(40, 36, 32), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """(image, labels) with no symmetry: an off-centre box (label 3, intensity -100) and an off-centre ball (label 7,
    intensity 100) on 0, placed by voxel index so that any flip, axis swap or shift moves them. Partial volumes of
    either object with the background never look like the other object (for ``oracle_model``)."""
    shape = size[::-1]
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    box = (i >= 0.1 * size[0]) & (i < 0.45 * size[0]) & (j >= 0.2 * size[1]) & (j < 0.45 * size[1]) \
        & (k >= 0.25 * size[2]) & (k < 0.8 * size[2])
    labels[box] = 3
    centre = np.array([0.7, 0.6, 0.4]) * np.array(size)
    radius = 0.22 * min(n * s for n, s in zip(size, spacing))
    distance = np.sqrt(((i - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2
                       + ((k - centre[2]) * spacing[2]) ** 2)
    labels[distance < radius] = 7
    intensity = np.choose(np.searchsorted([0, 3, 7], labels), [0.0, -100.0, 100.0]).astype(np.float32)
    return on_grid(intensity, spacing, origin, direction), on_grid(labels, spacing, origin, direction)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write in: immutable for root (which ignores permissions), mode 555 for others."""
    folder = tmp_path / "locked"
    folder.mkdir()
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("root cannot make a read-only folder here (no chattr +i)")
    else:
        folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        pass
    else:
        pytest.skip("this file system lets this user write in a read-only folder")
    yield folder
    if as_root:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def assert_train_refused(capsys, argv, *words, run: Path | None = None) -> None:
    """``hyperspace train ARGV`` exits 2 with one error line holding every one of ``words`` (and no model in ``run``)."""
    from HyperSpaceSegmentationLib.cli import main

    capsys.readouterr()
    code = main(["train", *map(str, argv)])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert error.startswith("hyperspace: error: ") and "\n" not in error and "Traceback" not in error, error
    for word in words:
        assert word in error, (word, error)
    assert run is None or not (run / "model.pt").exists()
