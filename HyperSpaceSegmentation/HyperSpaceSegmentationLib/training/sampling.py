"""Training patches at a random spacing, with foreground oversampling and strong augmentation.

For each sample: draw a spacing (per axis, log-uniform in the range, isotropic half of the time), a centre
(a voxel of a random foreground class with probability ``foreground_fraction``, else anywhere), and a random
rotation, scaling and (sometimes) elastic deformation. The patch grid (``patch`` voxels at that spacing) is
then filled in one resampling pass from a crop of the normalised case, smoothed first so that a coarse patch
looks like a coarse acquisition (the same anti-aliasing as inference). Intensity augmentation follows:
contrast, brightness, gamma, a smooth multiplicative field, noise and extra blur; then random flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..geometry import antialias_sigmas, canonical, smooth
from ..io.images import check_image, read_image
from ..preprocessing import Normalisation
from .dataset import Case


@dataclass(frozen=True)
class SamplingConfig:
    patch: tuple[int, ...]
    spacing_min: float
    spacing_max: float
    fixed_spacing: tuple[float, ...] | None = None  # FS: every patch at this spacing (x, y, z)
    foreground_fraction: float = 0.33
    augment: bool = True


class LoadedCase:
    """A training case held in memory: normalised image, labels as class indices, foreground voxels."""

    def __init__(self, case: Case, normalisation: Normalisation, label_values: Sequence[int], dim: int) -> None:
        image = canonical(read_image(case.image))
        check_image(image, str(case.image), dim)
        labels = canonical(read_image(case.label))
        array = normalisation.apply(sitk.GetArrayViewFromImage(image))
        self.image = sitk.GetImageFromArray(array)
        self.image.CopyInformation(image)
        label_array = sitk.GetArrayFromImage(labels).astype(np.int64)
        lookup = np.zeros(max(int(label_array.max()), max(label_values)) + 1, dtype=np.uint8)
        for index, value in enumerate(label_values):
            lookup[value] = index
        classes = lookup[label_array]
        self.labels = sitk.GetImageFromArray(classes)
        self.labels.CopyInformation(image)
        rng = np.random.default_rng(0)
        self.foreground = []
        for index in range(1, len(label_values)):
            voxels = np.argwhere(classes == index)
            if len(voxels) > 20000:
                voxels = voxels[rng.choice(len(voxels), 20000, replace=False)]
            if len(voxels):
                self.foreground.append(voxels[:, ::-1].copy())  # (i, j, k) order for SimpleITK


class PatchSampler:
    """Draws ``(image, labels, spacing)`` training patches; spacing in array-axis order (k, j, i)."""

    def __init__(self, cases: list[LoadedCase], config: SamplingConfig) -> None:
        self.cases = cases
        self.config = config
        self.dim = len(config.patch)

    def spacing(self, rng: np.random.Generator) -> np.ndarray:
        """A random spacing (x, y, z mm): log-uniform per axis, isotropic half of the time."""
        if self.config.fixed_spacing is not None:
            return np.array(self.config.fixed_spacing, dtype=float)
        low, high = math.log(self.config.spacing_min), math.log(self.config.spacing_max)
        if rng.random() < 0.5:
            return np.full(self.dim, math.exp(rng.uniform(low, high)))
        return np.exp(rng.uniform(low, high, self.dim))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        case = self.cases[rng.integers(len(self.cases))]
        spacing = self.spacing(rng)
        centre = self._centre(case, rng)
        augment = self.config.augment
        matrix = _random_matrix(self.dim, rng) if augment else np.eye(self.dim)
        patch = np.array(self.config.patch[::-1])  # x, y, z
        direction = np.array(case.image.GetDirection()).reshape(self.dim, self.dim)
        origin = centre - direction @ (spacing * (patch - 1) / 2)
        transform = sitk.AffineTransform(self.dim)
        transform.SetCenter(centre.tolist())
        transform.SetMatrix((direction @ matrix @ direction.T).ravel().tolist())
        reference = sitk.Image(patch.tolist(), sitk.sitkUInt8)
        reference.SetSpacing(spacing.tolist())
        reference.SetOrigin(origin.tolist())
        reference.SetDirection(case.image.GetDirection())
        if augment and rng.random() < 0.25:
            transform = sitk.CompositeTransform([transform, _elastic(reference, rng)])
        # sampling spacing in the source, once the patch is mapped through the random scaling
        scale = float(np.abs(np.linalg.det(matrix))) ** (1 / self.dim)
        sigmas = antialias_sigmas(case.image.GetSpacing(), spacing * scale)
        if augment and rng.random() < 0.2:
            sigmas = [s + rng.uniform(0.25, 0.75) * sp for s, sp in zip(sigmas, spacing)]
        radius = 0.5 * float(np.linalg.norm(spacing * patch)) * max(scale, 1.0) * 1.3 + 4 * max(sigmas) + 4
        image_crop, label_crop = _crop(case.image, centre, radius), _crop(case.labels, centre, radius)
        image = sitk.Resample(smooth(image_crop, sigmas), reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        labels = sitk.Resample(label_crop, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        image_array = sitk.GetArrayFromImage(image)
        label_array = sitk.GetArrayFromImage(labels)
        if augment:
            image_array = _intensity(image_array, rng)
            for axis in range(self.dim):
                if rng.random() < 0.5:
                    image_array, label_array = np.flip(image_array, axis), np.flip(label_array, axis)
        return np.ascontiguousarray(image_array), np.ascontiguousarray(label_array), spacing[::-1].copy()

    def _centre(self, case: LoadedCase, rng: np.random.Generator) -> np.ndarray:
        if case.foreground and rng.random() < self.config.foreground_fraction:
            voxels = case.foreground[rng.integers(len(case.foreground))]
            index = voxels[rng.integers(len(voxels))].astype(float)
        else:
            index = rng.uniform(0, np.array(case.image.GetSize()) - 1)
        return np.array(case.image.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def _random_matrix(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation of up to 15 degrees about each axis times a scaling of 0.85-1.15 (slightly anisotropic)."""
    angles = np.radians(rng.uniform(-15, 15, 3 if dim == 3 else 1))
    rotation = np.eye(dim)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        r = np.eye(3)
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ (r if dim == 3 else r[:2, :2])
    scale = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, dim)
    return rotation @ np.diag(scale)


def _elastic(reference: sitk.Image, rng: np.random.Generator) -> sitk.Transform:
    """A smooth random B-spline deformation over the patch, up to a few percent of its extent."""
    transform = sitk.BSplineTransformInitializer(reference, [3] * reference.GetDimension())
    extent = min(n * s for n, s in zip(reference.GetSize(), reference.GetSpacing()))
    parameters = rng.normal(0.0, 0.02 * extent, len(transform.GetParameters()))
    transform.SetParameters(parameters.tolist())
    return transform


def _crop(image: sitk.Image, centre: np.ndarray, radius: float) -> sitk.Image:
    """The part of ``image`` within ``radius`` mm of ``centre`` (index box), at least one voxel."""
    index = np.array(image.TransformPhysicalPointToContinuousIndex(centre.tolist()))
    half = radius / np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    low = np.clip(np.floor(index - half), 0, size - 1).astype(int)
    high = np.clip(np.ceil(index + half) + 1, low + 1, size).astype(int)
    return sitk.RegionOfInterest(image, (high - low).tolist(), low.tolist())


def _intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast, brightness, gamma, a smooth multiplicative field and noise on a normalised patch."""
    foreground = image != 0
    if rng.random() < 0.5:
        image = image * rng.uniform(0.75, 1.25) + rng.uniform(-0.1, 0.1) * foreground
    if rng.random() < 0.3:
        low, high = image.min(), image.max()
        if high > low:
            unit = (image - low) / (high - low)
            image = unit ** rng.uniform(0.7, 1.5) * (high - low) + low
    if rng.random() < 0.3:
        axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape], indexing="ij")
        field = sum(rng.normal(0, 0.15) * a + rng.normal(0, 0.1) * a * a for a in axes)
        image = image * np.exp(field)
    if rng.random() < 0.2:
        image = image + rng.normal(0, rng.uniform(0.02, 0.1), image.shape) * foreground
    return image.astype(np.float32)


class PatchStream(torch.utils.data.IterableDataset):
    """Endless batches from a sampler; each process and loader worker draws from its own random stream."""

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int) -> None:
        super().__init__()
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            samples = [self.sampler.sample(rng) for _ in range(self.batch_size)]
            images, labels, spacings = zip(*samples)
            yield (
                torch.from_numpy(np.stack(images))[:, None],
                torch.from_numpy(np.stack(labels)).long(),
                torch.from_numpy(np.stack(spacings)).float(),
            )
