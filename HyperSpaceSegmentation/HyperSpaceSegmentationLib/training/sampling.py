"""Training patches at a random spacing, with foreground oversampling and strong augmentation.

For each sample: draw a spacing (per axis, log-uniform in the range, isotropic half of the time), a centre
(a voxel of a random foreground class with probability ``foreground_fraction``, else anywhere), and a random
rotation, scaling and (sometimes) elastic deformation. The patch grid (``patch`` voxels at that spacing) is
then filled in one resampling pass from a crop of the normalised case, smoothed first so that a coarse patch
looks like a coarse acquisition (the same anti-aliasing as inference). Intensity augmentation follows:
contrast, brightness, gamma, a smooth multiplicative field, noise and extra blur; then random flips.

A 2D sampler draws from 3D volumes too: each sample copies out the slice through the drawn centre across an
axis drawn from ``slice_axes``, normalises it as a 2D image, and makes the patch from it as from a 2D image
(cropped before smoothing, so neither the volume nor the whole slice is ever smoothed or resampled).

Patch voxels beyond the image get the modality's outside intensity (``Normalisation.outside_value``: air for
CT) and the label ``IGNORE``, which the loss skips: what lies outside a scan teaches the model nothing.

With ``synthesis``, a share of the samples replaces the crop of the real image (a 2D sampler: the slice) by an
image synthesised from the labels with a head around the brain (``synthesis``), normalised as a scan is; everything
after it is the same for both.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import UserError
from ..geometry import antialias_sigmas, canonical, grid_difference, smooth
from ..io.images import check_image, read_image
from ..preprocessing import Normalisation
from .dataset import IGNORE, SLICE_AXES, Case
from .synthesis import SynthesisConfig, SyntheticHead


@dataclass(frozen=True)
class SamplingConfig:
    patch: tuple[int, ...]
    spacing_min: float
    spacing_max: float
    fixed_spacing: tuple[float, ...] | None = None  # FS: every patch at this spacing (x, y, z)
    foreground_fraction: float = 0.33
    augment: bool = True
    slice_axes: tuple[int, ...] = tuple(SLICE_AXES)  # a 2D sampler on volumes: the axes slices are taken across
    synthesis: SynthesisConfig | None = None  # images synthesised from the labels for a share of the samples


def read_case(case: Case, label_values: Sequence[int], dim: int) -> tuple[sitk.Image, np.ndarray]:
    """The case's image (LPS axes) and its label map as class indices (positions in ``label_values``).

    For a 2D model (``dim`` 2), a volume stays a volume (its slices are sampled) and a single-slice volume is a
    2D image (its slice). A label map that is not a label map of this image (another grid, non-integer values,
    values the dataset JSON does not declare) is a one-line ``UserError`` naming the case and the file.
    """
    image = read_image(case.image)
    if image.GetDimension() == 2 and dim == 3:
        raise UserError(f"case {case.id}: {case.image} is a 2D image: train a 2D model with --dim 2, or give 3D images")
    check_image(image, str(case.image))
    label_image = read_image(case.label)
    where = f"case {case.id}: label map {case.label}"
    if label_image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{where} has {label_image.GetNumberOfComponentsPerPixel()} components per voxel: "
                        "give a single-channel label map")
    difference = grid_difference(image, label_image)
    if difference:
        raise UserError(f"{where} is not on the grid of its image {case.image} ({difference}): "
                        "resample it onto the image's grid (nearest neighbour)")
    values = sitk.GetArrayFromImage(canonical(label_image))
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise UserError(f"{where} holds non-integer values (is it an intensity image?): give a label map")
    present = np.unique(values).astype(np.int64)
    unknown = sorted(set(present.tolist()) - set(label_values))
    if unknown:
        shown = ", ".join(map(str, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        hint = " (is it an intensity image?)" if len(unknown) > 5 else ""
        raise UserError(f"{where} holds label values {shown} that the dataset JSON does not declare{hint}: "
                        f"add them to 'labels' ({', '.join(map(str, label_values))} now) or fix the label map")
    lookup = np.zeros(int(present.max()) + 1, dtype=np.uint8)
    for index, value in enumerate(label_values):
        if value < len(lookup):
            lookup[value] = index
    image, classes = canonical(image), lookup[values.astype(np.int64)]
    if dim == 2 and image.GetDimension() == 3 and 1 in image.GetSize():
        axis = image.GetSize().index(1)
        return volume_slice(image, axis, 0), np.squeeze(classes, axis=2 - axis)
    return image, classes


def read_generation(case: Case) -> np.ndarray | None:
    """The case's generation label map (LPS axes, as ``read_case`` returns the image), or ``None`` without one; a
    one-line ``UserError`` unless it is an integer map on the image's grid."""
    if case.generation is None:
        return None
    header = sitk.ImageFileReader()
    header.SetFileName(str(case.image))
    header.ReadImageInformation()
    generation = read_image(case.generation)
    reference = sitk.Image(header.GetSize(), sitk.sitkUInt8)
    reference.SetSpacing(header.GetSpacing())
    reference.SetOrigin(header.GetOrigin())
    reference.SetDirection(header.GetDirection())
    where = f"case {case.id}: generation label map {case.generation}"
    if difference := grid_difference(reference, generation):
        raise UserError(f"{where} is not on the grid of its image {case.image} ({difference}): resample it onto the "
                        "image's grid (nearest neighbour)")
    values = sitk.GetArrayFromImage(canonical(generation))
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise UserError(f"{where} holds non-integer values (is it an intensity image?): give a label map")
    return values.astype(np.int64)


class LoadedCase:
    """A training case held in memory for a ``dim``-D model: image, labels as class indices, foreground voxels.

    The image is normalised as a whole; a volume for a 2D model is held as read instead, and each slice drawn from
    it is normalised as a 2D image (``slice``), as ``hyperspace segment`` normalises the slices it segments.
    """

    def __init__(self, image: sitk.Image, classes: np.ndarray, normalisation: Normalisation, dim: int,
                 synthesise: bool = False, generation: np.ndarray | None = None) -> None:
        array = sitk.GetArrayViewFromImage(image)
        # what synthetic samples are made from (volumes only), from ``generation`` labels if given
        self.synthetic = SyntheticHead(image, classes, generation) if synthesise and image.GetDimension() == 3 else None
        by_slice = image.GetDimension() > dim
        self.image = sitk.GetImageFromArray(array.astype(np.float32) if by_slice else normalisation.apply(array))
        self.image.CopyInformation(image)
        self.normalisation = normalisation
        self.outside_value = normalisation.outside_value
        self.labels = sitk.GetImageFromArray(classes)
        self.labels.CopyInformation(image)
        rng = np.random.default_rng(0)
        self.foreground = []
        for index in range(1, int(classes.max()) + 1):
            voxels = np.argwhere(classes == index)
            if len(voxels) > 20000:
                voxels = voxels[rng.choice(len(voxels), 20000, replace=False)]
            if len(voxels):
                self.foreground.append(voxels[:, ::-1].copy())  # (i, j, k) order for SimpleITK

    def slice(self, axis: int, position: int) -> tuple[sitk.Image, sitk.Image]:
        """Slice ``position`` across ``axis`` of a volume held for a 2D model (see ``volume_slice``): its image,
        normalised as a 2D image, and its labels."""
        return normalised(volume_slice(self.image, axis, position), self.normalisation), \
            volume_slice(self.labels, axis, position)


class PatchSampler:
    """Draws ``(image, labels, spacing)`` training patches; spacing in array-axis order (k, j, i).

    Patches have ``len(config.patch)`` dimensions; a 2D sampler takes them from slices of the 3D cases.
    """

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
        synthesis = self.config.synthesis
        synthetic = case.synthetic is not None and synthesis is not None and rng.random() < synthesis.fraction
        source, source_labels, index = self._source(case, self._centre_index(case, rng), rng, synthetic)
        centre = np.array(source.TransformContinuousIndexToPhysicalPoint(index.tolist()))
        direction = np.array(source.GetDirection()).reshape(self.dim, self.dim)
        augment = self.config.augment
        matrix = _random_matrix(self.dim, rng) if augment else np.eye(self.dim)
        patch = np.array(self.config.patch[::-1])  # x, y, z
        origin = centre - direction @ (spacing * (patch - 1) / 2)
        transform = sitk.AffineTransform(self.dim)
        transform.SetCenter(centre.tolist())
        transform.SetMatrix((direction @ matrix @ direction.T).ravel().tolist())
        reference = sitk.Image(patch.tolist(), sitk.sitkUInt8)
        reference.SetSpacing(spacing.tolist())
        reference.SetOrigin(origin.tolist())
        reference.SetDirection(source.GetDirection())
        if augment and rng.random() < 0.25:
            transform = _on_coarse_grid(sitk.CompositeTransform([transform, _elastic(reference, rng)]), reference)
        # sampling spacing in the source, once the patch is mapped through the random scaling
        scale = float(np.abs(np.linalg.det(matrix))) ** (1 / self.dim)
        sigmas = antialias_sigmas(source.GetSpacing(), spacing * scale)
        if augment and rng.random() < 0.2:
            sigmas = [s + rng.uniform(0.25, 0.75) * sp for s, sp in zip(sigmas, spacing)]
        radius = 0.5 * float(np.linalg.norm(spacing * patch)) * max(scale, 1.0) * 1.3 + 4 * max(sigmas) + 4
        if synthetic and self.dim == 3:
            image_crop, label_crop = self._synthetic_crop(case, centre, radius, spacing=spacing * scale, rng=rng)
        else:  # a real image, or a synthetic slice (2D)
            image_crop, label_crop = _crop(source, centre, radius), _crop(source_labels, centre, radius)
        if synthetic:
            sigmas = [s * rng.uniform(1.0, 1.5) for s in sigmas]  # acquisitions blur a little more or less
        image = sitk.Resample(smooth(image_crop, sigmas), reference, transform=transform, interpolator=sitk.sitkLinear,
                              defaultPixelValue=case.outside_value, outputPixelType=sitk.sitkFloat32)
        labels = sitk.Resample(label_crop, reference, transform=transform, interpolator=sitk.sitkNearestNeighbor,
                               defaultPixelValue=IGNORE, outputPixelType=sitk.sitkUInt8)
        image_array = sitk.GetArrayFromImage(image)
        label_array = sitk.GetArrayFromImage(labels)
        if augment:
            image_array = _intensity(image_array, rng)
            for axis in range(self.dim):
                if rng.random() < 0.5:
                    image_array, label_array = np.flip(image_array, axis), np.flip(label_array, axis)
        return np.ascontiguousarray(image_array), np.ascontiguousarray(label_array), spacing[::-1].copy()

    def _synthetic_crop(self, case: LoadedCase, centre: np.ndarray, radius: float, spacing: np.ndarray,
                        rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
        """A synthetic head's crop around ``centre`` (normalised as the case is) and its labels."""
        head = case.synthetic
        low, high = _crop_box(head.image, centre, radius)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))
        raw, labels = head.synthesise(box, head.crop_stride(spacing), rng, self.config.synthesis)
        image = normalised(raw, case.normalisation)
        label_image = sitk.GetImageFromArray(labels)
        label_image.SetSpacing(head.image.GetSpacing())
        label_image.SetDirection(head.image.GetDirection())
        label_image.SetOrigin(head.image.TransformIndexToPhysicalPoint([int(v) for v in low]))
        return image, label_image

    def _centre_index(self, case: LoadedCase, rng: np.random.Generator) -> np.ndarray:
        """The patch centre, a continuous voxel index (i, j, k) of the case: a voxel of a random foreground class
        with probability ``foreground_fraction``, else anywhere."""
        if case.foreground and rng.random() < self.config.foreground_fraction:
            voxels = case.foreground[rng.integers(len(case.foreground))]
            return voxels[rng.integers(len(voxels))].astype(float)
        return rng.uniform(0, np.array(case.image.GetSize()) - 1)

    def _source(self, case: LoadedCase, index: np.ndarray, rng: np.random.Generator,
                synthetic: bool) -> tuple[sitk.Image, sitk.Image, np.ndarray]:
        """(image, labels, the centre's continuous index in them) that a patch centred on voxel ``index`` of the case
        is drawn from: the case itself, or for a volume and a 2D patch, the slice through ``index`` across an axis
        drawn from ``slice_axes`` (``synthetic``: that slice of a synthetic head, normalised as a 2D image)."""
        if case.image.GetDimension() == self.dim:
            return case.image, case.labels, index
        axis = self.config.slice_axes[rng.integers(len(self.config.slice_axes))]
        if not synthetic:
            return (*case.slice(axis, round(index[axis])), np.delete(index, axis))
        head = case.synthetic
        box = [slice(0, n) for n in head.generation.shape]
        position = round(index[axis]) + head.padding[2 - axis]
        box[2 - axis] = slice(position, position + 1)
        raw, labels = head.synthesise(tuple(box), 1, rng, self.config.synthesis)
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(raw)
        return (normalised(volume_slice(raw, axis, 0), case.normalisation), volume_slice(label_image, axis, 0),
                np.delete(index + np.array(head.padding[::-1]), axis))


def _random_matrix(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation of up to 15 degrees in each axis plane (the one plane in 2D) times a scaling of 0.85-1.15
    (slightly anisotropic)."""
    planes = [(1, 2), (0, 2), (0, 1)] if dim == 3 else [(0, 1)]
    rotation = np.eye(dim)
    for i, j in planes:
        angle = math.radians(rng.uniform(-15, 15))
        c, s = math.cos(angle), math.sin(angle)
        plane_rotation = np.eye(dim)
        plane_rotation[i, i], plane_rotation[i, j], plane_rotation[j, i], plane_rotation[j, j] = c, -s, s, c
        rotation = rotation @ plane_rotation
    scale = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, dim)
    return rotation @ np.diag(scale)


def _elastic(reference: sitk.Image, rng: np.random.Generator) -> sitk.Transform:
    """A smooth random B-spline deformation over the patch, up to a few percent of its extent."""
    transform = sitk.BSplineTransformInitializer(reference, [3] * reference.GetDimension())
    extent = min(n * s for n, s in zip(reference.GetSize(), reference.GetSpacing()))
    parameters = rng.normal(0.0, 0.02 * extent, len(transform.GetParameters()))
    transform.SetParameters(parameters.tolist())
    return transform


def _on_coarse_grid(transform: sitk.Transform, reference: sitk.Image, points: int = 17) -> sitk.Transform:
    """``transform`` as a displacement field sampled at ``points`` per axis over ``reference``'s voxel centres (the
    corners included) and interpolated linearly: a smooth deformation evaluated 15x faster per voxel than through
    its B-spline."""
    size = [points] * reference.GetDimension()
    spacing = [s * (n - 1) / (points - 1) for s, n in zip(reference.GetSpacing(), reference.GetSize())]
    field = sitk.TransformToDisplacementField(transform, outputPixelType=sitk.sitkVectorFloat64, size=size,
                                              outputOrigin=reference.GetOrigin(), outputSpacing=spacing,
                                              outputDirection=reference.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def normalised(image: sitk.Image, normalisation: Normalisation) -> sitk.Image:
    """``image`` normalised (float32), on its own grid."""
    result = sitk.GetImageFromArray(normalisation.apply(sitk.GetArrayViewFromImage(image)))
    result.CopyInformation(image)
    return result


def volume_slice(volume: sitk.Image, axis: int, position: int) -> sitk.Image:
    """Slice ``position`` across ``axis`` (x, y, z) of ``volume``, copied into a 2D image in the slice's own frame:
    in-plane axes in the volume's order, its in-plane spacing, origin 0 and identity direction."""
    index: list[int | slice] = [slice(None)] * 3
    index[axis] = int(position)
    plane = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(volume)[tuple(reversed(index))]))
    plane.SetSpacing([s for a, s in enumerate(volume.GetSpacing()) if a != axis])
    return plane


def _crop(image: sitk.Image, centre: np.ndarray, radius: float) -> sitk.Image:
    """The part of ``image`` within ``radius`` mm of ``centre`` (index box), at least one voxel."""
    low, high = _crop_box(image, centre, radius)
    return sitk.RegionOfInterest(image, (high - low).tolist(), low.tolist())


def _crop_box(image: sitk.Image, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The index box ``[low, high)`` (i, j, k) of ``image`` within ``radius`` mm of ``centre``, at least one voxel."""
    index = np.array(image.TransformPhysicalPointToContinuousIndex(centre.tolist()))
    half = radius / np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    low = np.clip(np.floor(index - half), 0, size - 1).astype(int)
    high = np.clip(np.ceil(index + half) + 1, low + 1, size).astype(int)
    return low, high


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
    """Endless batches from a sampler, from ``first_step`` on.

    The batch of each step (and process) is drawn from its own random stream, so the batches do not depend on
    the number of loader workers, and a resumed run draws exactly the batches the uninterrupted one would.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int, rank: int = 0, first_step: int = 0) -> None:
        super().__init__()
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.first_step = first_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # the loader takes batches from its workers in turn: worker w serves steps first + w, first + w + workers, ...
        for step in itertools.count(self.first_step + worker, workers):
            rng = np.random.default_rng([self.seed, self.rank, step])
            samples = [self.sampler.sample(rng) for _ in range(self.batch_size)]
            images, labels, spacings = zip(*samples)
            yield (
                torch.from_numpy(np.stack(images))[:, None],
                torch.from_numpy(np.stack(labels)).long(),
                torch.from_numpy(np.stack(spacings)).float(),
            )
