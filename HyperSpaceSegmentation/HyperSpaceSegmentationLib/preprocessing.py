"""Intensity normalisation, the same in training and inference (MIST's rules).

- ``mr`` (and any other non-CT modality): z-score over the voxels that are not background; background voxels
  become zero, so skull-stripped images keep an exactly empty background. The background is 0, or the image's
  minimum where that fills at least half of the array's outermost voxels (a skull-stripped scan rescaled as
  ``a * x + b``, whose background is ``b``), so that such a rescaling changes nothing.
- ``ct``: clip to the training set's 0.5-99.5 percentile window of foreground intensities, then z-score
  with the training set's mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


MODALITIES = ("mr", "ct")  # the intensity normalisations below
BACKGROUND_SHARE = 0.5  # MR: the minimum is the background when it fills this share of the outermost voxels


@dataclass(frozen=True)
class Normalisation:
    """How to normalise intensities; CT fields come from the training set."""

    modality: str = "mr"
    clip_low: float = 0.0
    clip_high: float = 0.0
    mean: float = 0.0
    std: float = 1.0

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
        mask = values != background_value(values)
        if mask.sum() < 0.01 * values.size:
            mask = np.ones_like(mask)
        inside = values[mask].astype(np.float64)  # float32 squares overflow for intensities beyond ~1e19
        values -= np.float32(inside.mean())
        values /= np.float32(max(float(inside.std()), 1e-6))
        values[~mask] = 0.0
        return values


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
        return Normalisation(modality=modality.lower())
    foreground = np.concatenate([a[m > 0].astype(np.float64) for a, m in arrays_and_masks])
    low, high = np.percentile(foreground, [0.5, 99.5])
    clipped = np.clip(foreground, low, high)
    return Normalisation("ct", float(low), float(high), float(clipped.mean()), float(clipped.std()))
