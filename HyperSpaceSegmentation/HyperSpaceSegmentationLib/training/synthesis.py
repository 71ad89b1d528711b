"""Training images synthesised from label maps, with a head around the brain (after SynthSeg and SynthStrip).

A dataset JSON turns it on with a ``synthetic`` entry (every key optional; shares are probabilities)::

    "synthetic": {"fraction": 0.5, "head": 0.6, "halo": 0.4, "real_intensities": 0.35, "partial_view": 0.15}

- ``fraction``: the share of training samples synthesised; the rest are the real images as before.
- ``head``: of the synthetic samples, the share with a head around the brain (below); the others are
  skull-stripped, and ``halo`` of those keep a faint blurred copy of the brain outside it, as a stripped scan
  resampled or blurred after stripping does.
- ``real_intensities``: of the synthetic samples, the share whose brain keeps the scan's own intensities (under a
  random gamma); the others draw a random contrast: a Gaussian intensity per label.
- ``partial_view``: the share of synthetic samples whose field of view a random plane cuts (beyond it: outside the
  image, ignored by the loss).

The labelled foreground of a case is the brain. Around it, in layers of random thickness following the distance
from the brain (itself perturbed by a smooth random field): a CSF rim, the inner table of the skull, the diploe,
the outer table, fat, skin and muscle, then air; the layers thicken below the brain's middle (face and neck), two
eyes sit in front of it, random blobs (air cavities, vessels, glands) lie in the head. Every such voxel is
background. Intensities are then a random smooth bias field, gamma and Rician-like noise away from a
random contrast; the sampler smooths and resamples the result to the drawn spacing like a real image, so a
synthetic patch looks acquired at that spacing. Synthesis runs on each sample's crop, at half resolution where the
drawn spacing is coarse.

A case is padded by ``PADDING_MM`` on every side for the head; where the brain reaches a face of the case (a slab
cut from a larger scan) the padding continues the brain outward with the label ``IGNORE``, since what lies there
is not known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import scipy.ndimage
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..errors import UserError
from .dataset import IGNORE

PADDING_MM = 16.0

# generation labels besides the brain's classes (1..K-1): the head's layers, outermost last, then eyes and blobs
_LAYERS = ("csf rim", "inner table", "diploe", "outer table", "fat", "skin and muscle")
_THICKNESS_MM = ((0.5, 3.0), (1.0, 3.0), (1.0, 4.0), (0.8, 2.5), (2.0, 8.0), (1.0, 5.0))
# T1-like intensity ranges of the layers (relative to white matter ~1), used when the brain keeps its own
_T1_LIKE = ((0.1, 0.3), (0.0, 0.15), (0.3, 0.8), (0.0, 0.15), (0.75, 1.15), (0.3, 0.6))
_EYES_LPS_MM = ((-32.0, -55.0, -35.0), (32.0, -55.0, -35.0))  # MNI152 space (LPS): eye centres
_EYE_RADIUS_MM = 12.0
_FIELD_POINTS = 16  # smooth random fields: cubic to this many points per axis, then linear


@dataclass(frozen=True)
class SynthesisConfig:
    """How often each kind of synthetic sample is drawn (see the module's description)."""

    fraction: float = 0.5
    head: float = 0.6
    halo: float = 0.4
    real_intensities: float = 0.35
    partial_view: float = 0.15

    @classmethod
    def from_spec(cls, spec: object, where: str) -> SynthesisConfig:
        """The ``synthetic`` entry of a dataset JSON; a one-line ``UserError`` for anything else than shares."""
        names = [f.name for f in fields(cls)]
        if not isinstance(spec, dict):
            raise UserError(f"{where}: 'synthetic' must be an object of shares such as {{\"fraction\": 0.5}}; "
                            f"keys: {', '.join(names)}")
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise UserError(f"{where}: 'synthetic' has unknown key {unknown[0]!r}: use {', '.join(names)}")
        for key, value in spec.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"{where}: 'synthetic' {key!r} is {value!r}: give a share between 0 and 1")
        return cls(**{k: float(v) for k, v in spec.items()})


class SyntheticHead:
    """What synthesis needs of one case (canonical LPS image, class indices, optional generation labels: by default
    the classes), padded for a head around the brain (the non-zero generation labels): the generation labels, the
    distance from the brain (mm), the scan's intensities scaled to about 1 for its bright tissue, and the training
    labels (``IGNORE`` where the padding continues the brain)."""

    def __init__(self, image: sitk.Image, classes: np.ndarray, generation: np.ndarray | None = None) -> None:
        spacing_zyx = np.array(image.GetSpacing()[::-1])
        self.padding = tuple(int(math.ceil(PADDING_MM / s)) for s in spacing_zyx)  # voxels, array order
        pad = [(p, p) for p in self.padding]
        source = classes if generation is None else _consecutive(generation)
        brain = source > 0
        self.generation = np.pad(source, pad, mode="edge").astype(np.uint8)  # the brain goes on through the faces
        padded_brain = self.generation > 0
        self.labels = np.where(padded_brain, IGNORE, 0).astype(np.uint8)
        self.labels[tuple(slice(p, p + n) for (p, _), n in zip(pad, classes.shape))] = classes
        raw = sitk.GetArrayViewFromImage(image).astype(np.float32)
        top = float(np.percentile(raw[brain], 99)) if brain.any() else float(raw.max()) or 1.0
        self.intensities = np.pad(np.clip(raw / max(top, 1e-6), 0, 1.5), pad, mode="edge")
        self.distance = scipy.ndimage.distance_transform_edt(~padded_brain, sampling=spacing_zyx).astype(np.float32)
        self.spacing_zyx = spacing_zyx
        self.image = sitk.GetImageFromArray(self.intensities)  # its geometry: the padded grid
        self.image.SetSpacing(image.GetSpacing())
        self.image.SetDirection(image.GetDirection())
        self.image.SetOrigin(image.TransformIndexToPhysicalPoint([-p for (p, _) in pad[::-1]]))
        self.num_classes = int(self.generation.max()) + 1  # of the generation labels
        # the height (k index) of the brain's middle: the head thickens below it
        rows = np.flatnonzero(padded_brain.any(axis=(1, 2)))
        self.middle_k = float(rows.mean()) if rows.size else self.generation.shape[0] / 2
        self.eyes = self._eyes(padded_brain)

    def _eyes(self, brain: np.ndarray) -> np.ndarray:
        """Voxels of two eyes (MNI152 positions) outside the brain, or none where the case's grid lacks them."""
        eyes = np.zeros(brain.shape, bool)
        for centre in _EYES_LPS_MM:
            index = np.array(self.image.TransformPhysicalPointToContinuousIndex(centre))[::-1]
            if np.all(index >= 0) and np.all(index < brain.shape):
                reach = np.ceil(_EYE_RADIUS_MM / self.spacing_zyx).astype(int)
                box = tuple(slice(max(int(c) - r, 0), int(c) + r + 2) for c, r in zip(index, reach))
                grid = np.ogrid[box]
                distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, index, self.spacing_zyx)))
                eyes[box] |= distance < _EYE_RADIUS_MM
        return eyes & ~brain

    def synthesise(self, box: tuple[slice, ...], stride: int, rng: np.random.Generator,
                   config: SynthesisConfig) -> tuple[sitk.Image, np.ndarray]:
        """A synthetic image (raw intensities, about 1 for bright tissue, on the padded grid's ``box`` taken every
        ``stride`` voxels) and the training labels of ``box`` at full resolution, ``IGNORE`` beyond a cut field of
        view."""
        coarse = tuple(slice(b.start, b.stop, stride) for b in box)
        generation, distance = self.generation[coarse], self.distance[coarse]
        spacing = self.spacing_zyx * stride
        brain = generation > 0
        image = np.zeros(generation.shape, np.float32)
        real = rng.random() < config.real_intensities
        if real:
            image[brain] = self.intensities[coarse][brain] ** math.exp(rng.normal(0, 0.25))
        else:
            _random_contrast(image, generation, range(1, self.num_classes), rng)
        if rng.random() < config.head:
            head_labels = self._head_labels(distance, coarse[0], spacing, rng)
            head_labels[self.eyes[coarse] & (head_labels > 0)] = len(_LAYERS) + 1
            _add_blobs(head_labels, distance, spacing, rng)
            _head_intensities(image, head_labels, real, rng)
            image *= _smooth_field(image.shape, rng, 0.3)
            image = np.abs(image + rng.normal(0, rng.uniform(0.0, 0.04), image.shape).astype(np.float32))
        else:
            image *= _smooth_field(image.shape, rng, 0.3)
            image[brain] += rng.normal(0, rng.uniform(0.0, 0.03), int(brain.sum())).astype(np.float32)
            np.maximum(image, 0, out=image)
            if rng.random() < config.halo:
                halo = scipy.ndimage.gaussian_filter(image, rng.uniform(1.0, 4.0) / spacing)
                image[~brain] = halo[~brain] * rng.uniform(0.1, 0.6)
        image **= math.exp(rng.normal(0, 0.2))
        labels = self.labels[box].copy()
        if rng.random() < config.partial_view:
            _cut_view(image, labels, stride, rng)
        result = sitk.GetImageFromArray(image)
        result.SetSpacing([float(s) for s in spacing[::-1]])
        result.SetDirection(self.image.GetDirection())
        result.SetOrigin(self.image.TransformIndexToPhysicalPoint([b.start for b in box[::-1]]))
        return result, labels

    def _head_labels(self, distance: np.ndarray, rows: slice, spacing: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
        """Layer labels (1..len(_LAYERS), then air) by distance from the brain, thicker below the brain's middle;
        0 inside the brain."""
        k = (np.arange(rows.start, rows.start + rows.step * distance.shape[0], rows.step)[:distance.shape[0]])
        below = np.clip((self.middle_k - k) * self.spacing_zyx[0], 0, None)[:, None, None]
        reach = distance / (1 + below / rng.uniform(25, 70)) + _smooth_field(distance.shape, rng, 1.0, log=False) * 2.5
        bounds = np.cumsum([rng.uniform(*t) for t in _THICKNESS_MM])
        labels = (np.searchsorted(bounds, reach) + 1).astype(np.uint8)  # len(_LAYERS) + 1: air
        labels[distance == 0] = 0
        return labels

    def crop_stride(self, spacing: np.ndarray) -> int:
        """Synthesise every second voxel where the drawn spacing is at least three source voxels on every axis."""
        return 2 if np.all(np.asarray(spacing) >= 3 * self.spacing_zyx[::-1]) else 1


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Label values as 0 (for 0) and 1, 2, ... for the other values in increasing order."""
    values = np.unique(labels[labels != 0])
    return np.where(labels != 0, np.searchsorted(values, labels) + 1, 0)


def _random_contrast(image: np.ndarray, generation: np.ndarray, labels: range, rng: np.random.Generator) -> None:
    """A Gaussian intensity (random mean, random spread) per label, in place."""
    for label in labels:
        where = generation == label
        count = int(where.sum())
        if count:
            image[where] = rng.normal(rng.uniform(0.05, 1.0), rng.uniform(0.0, 0.08), count)


def _head_intensities(image: np.ndarray, head_labels: np.ndarray, t1_like: bool, rng: np.random.Generator) -> None:
    """Intensities of the head's labels in place: T1-like ranges (mostly, with the brain's own intensities) or a
    random contrast; air dark; eyes and blobs random."""
    air = len(_LAYERS) + 1
    for label in range(1, head_labels.max() + 1):
        where = head_labels == label
        count = int(where.sum())
        if not count:
            continue
        if label == air:
            mean = rng.uniform(0.0, 0.04)
        elif label <= len(_LAYERS) and t1_like and rng.random() < 0.8:
            mean = rng.uniform(*_T1_LIKE[label - 1])
        else:
            mean = rng.uniform(0.0, 1.1)
        image[where] = rng.normal(mean, rng.uniform(0.0, 0.06), count)


def _add_blobs(head_labels: np.ndarray, distance: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> None:
    """Up to six ellipsoids of new labels (after the eyes) centred in the head's layers, in place."""
    inside = np.argwhere((head_labels > 0) & (head_labels <= len(_LAYERS)))
    if not len(inside):
        return
    grid = np.ogrid[tuple(slice(0, n) for n in head_labels.shape)]
    for number in range(int(rng.integers(0, 7))):
        centre = inside[rng.integers(len(inside))]
        radii = rng.uniform(2.0, 12.0, 3) / spacing
        ellipsoid = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
        head_labels[ellipsoid & (distance > 0)] = len(_LAYERS) + 2 + number


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float, log: bool = True) -> np.ndarray:
    """A smooth random field over ``shape``: a 4-6 point random grid per axis, interpolated cubically to 16 points
    per axis, then linearly to ``shape``; with ``log`` a multiplicative field ``exp(N(0, s))``, ``s`` up to
    ``strength``, else the values themselves (about N(0, 1))."""
    points = [int(rng.integers(4, 7)) for _ in shape]
    values = rng.normal(0, rng.uniform(0, strength) if log else 1.0, points)
    fine = scipy.ndimage.zoom(values, [_FIELD_POINTS / p for p in points], order=3, mode="nearest")
    field = F.interpolate(torch.from_numpy(fine.astype(np.float32))[None, None], size=tuple(shape),
                          mode=("linear", "bilinear", "trilinear")[len(shape) - 1], align_corners=True)[0, 0].numpy()
    return np.exp(field) if log else field


def _cut_view(image: np.ndarray, labels: np.ndarray, stride: int, rng: np.random.Generator) -> None:
    """A random axis-aligned plane cuts the field of view: beyond it the image is 0 and the labels ``IGNORE``."""
    axis = int(rng.integers(image.ndim))
    cut = int(rng.integers(image.shape[axis] // 4, 3 * image.shape[axis] // 4 + 1))  # near the patch
    beyond = rng.random() < 0.5
    index: list[slice] = [slice(None)] * image.ndim
    index[axis] = slice(cut, None) if beyond else slice(0, cut)
    image[tuple(index)] = 0
    index[axis] = slice(cut * stride, None) if beyond else slice(0, cut * stride)
    labels[tuple(index)] = IGNORE
