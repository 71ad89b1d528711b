"""Intensity normalisation, the same in training and inference.

- ``mr``, version 2 (models trained since the synthetic heads): the background's intensity maps to 0 and the
  95th percentile of the foreground to 1, the foreground being the voxels above Otsu's threshold among those
  brighter than the background; intensities above the foreground's 99.9th percentile are clipped to it. These
  statistics do not depend on what surrounds the brain: empty space, a faint halo left by resampling a
  skull-stripped scan, or air noise fall below the threshold, and where the threshold falls between two tissues
  instead, the brightest twentieth of the foreground is the same tissue either way.
- ``mr``, version 1 (older model files, MIST's rule): z-score over the voxels that are not background;
  background voxels become zero. A halo around a skull-stripped brain enters these statistics.
- In both MR versions the background is 0, or the image's minimum where that fills at least half of the array's
  outermost voxels (a skull-stripped scan rescaled as ``a * x + b``, whose background is ``b``), so that such a
  rescaling changes nothing.
- ``ct`` (every version): clip to the training set's 0.5-99.5 percentile window of foreground intensities, then
  z-score with the training set's mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


MODALITIES = ("mr", "ct")  # the intensity normalisations below
VERSIONS = (1, 2)  # of the MR rule; a model file without one is of version 1
CURRENT_VERSION = 2  # what new models are trained with
_HISTOGRAM_BINS = 256  # Otsu's threshold
_SCALE_PERCENTILE = 95.0  # MR version 2: of the foreground, maps to 1
_CLIP_PERCENTILE = 99.9  # MR version 2: of the foreground
BACKGROUND_SHARE = 0.5  # MR: the minimum is the background when it fills this share of the outermost voxels


@dataclass(frozen=True)
class Normalisation:
    """How to normalise intensities; CT fields come from the training set."""

    modality: str = "mr"
    clip_low: float = 0.0
    clip_high: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    version: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def outside_value(self) -> float:
        """The normalised intensity of what lies outside a scan: air for CT (the clip window's low end), 0 for MR.

        Training patches and inference windows that reach beyond the image are padded with it.
        """
        if self.modality == "ct":
            return (self.clip_low - self.mean) / max(self.std, 1e-6)
        return 0.0

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``array``; NaN voxels become 0."""
        values = np.nan_to_num(array.astype(np.float32, copy=True), nan=0.0, posinf=0.0, neginf=0.0)
        if self.modality == "ct":
            np.clip(values, self.clip_low, self.clip_high, out=values)
            values -= self.mean
            values /= max(self.std, 1e-6)
            return values
        if self.version >= 2:
            return _median_scaled(values)
        mask = values != background_value(values)
        if mask.sum() < 0.01 * values.size:
            mask = np.ones_like(mask)
        inside = values[mask].astype(np.float64)  # float32 squares overflow for intensities beyond ~1e19
        values -= np.float32(inside.mean())
        values /= np.float32(max(float(inside.std()), 1e-6))
        values[~mask] = 0.0
        return values


def _median_scaled(values: np.ndarray) -> np.ndarray:
    """MR version 2 in place: background 0, the 95th percentile of Otsu's foreground 1, its top clipped."""
    background = background_value(values)
    brighter = values[values > background]
    if brighter.size == 0:
        values -= np.float32(background)
        return values
    foreground = brighter[brighter > otsu_threshold(brighter)]
    if foreground.size == 0:
        foreground = brighter
    level, top = (float(v) for v in np.percentile(foreground, [_SCALE_PERCENTILE, _CLIP_PERCENTILE]))
    scale = max(level - background, 1e-6 * max(abs(background), 1.0), 1e-12)
    np.minimum(values, np.float32(top), out=values)
    values -= np.float32(background)
    values /= np.float32(scale)
    return values


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of ``values`` (any shape): the one that maximises the variance between the two classes
    of a ``_HISTOGRAM_BINS``-bin histogram; the lowest value for a constant array."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return low
    counts, edges = np.histogram(values, bins=_HISTOGRAM_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts, dtype=np.float64)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def background_value(values: np.ndarray) -> float:
    """An MR image's background intensity: its minimum where that fills at least ``BACKGROUND_SHARE`` of the
    array's outermost voxels (its faces), else 0."""
    if values.size == 0:
        return 0.0
    faces = np.concatenate([np.moveaxis(values, axis, 0)[[0, -1]].ravel() for axis in range(values.ndim)])
    low = values.min()
    return float(low) if np.mean(faces == low) >= BACKGROUND_SHARE else 0.0


def fit_normalisation(modality: str, arrays_and_masks: list[tuple[np.ndarray, np.ndarray]]) -> Normalisation:
    """The normalisation for a training set: CT statistics over the labelled foreground, none for MR."""
    if modality.lower() != "ct":
        return Normalisation(modality=modality.lower(), version=CURRENT_VERSION)
    foreground = np.concatenate([a[m > 0].astype(np.float64) for a, m in arrays_and_masks])
    low, high = np.percentile(foreground, [0.5, 99.5])
    clipped = np.clip(foreground, low, high)
    return Normalisation("ct", float(low), float(high), float(clipped.mean()), float(clipped.std()), CURRENT_VERSION)
