"""Shared fixtures: synthetic phantoms with known geometry, a tiny dataset and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.io.model_file import SegmentationModel, build_network, save_model
from HyperSpaceSegmentationLib.networks import HyperConfig, UNetConfig
from HyperSpaceSegmentationLib.preprocessing import Normalisation

OBLIQUE = (0.9363, -0.2896, 0.1987, 0.3130, 0.9447, -0.0978, -0.1593, 0.1538, 0.9752)


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
    images = []
    for array in (intensity.astype(np.float32), labels):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        if direction is not None:
            image.SetDirection(direction)
        images.append(image)
    return images[0], images[1]


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
