"""Results on the input's own grid: working-grid class probabilities made ready to go back onto the input's grid
(``restorable``), there as probabilities or labels (an ensemble's mean; interpolated only where the label can
change, see ``restore``), and the normalised entropy that the uncertainty map shows."""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import numpy as np
import scipy.special
import SimpleITK as sitk

from ..geometry import array_axes_from, axis_table
from ..progress import Reporter
from .cropping import Region
from .restore import Restorable
from .restore import labels as restored_labels
from .restore import most_likely as most_likely_class


def restorable(probabilities: np.ndarray, oriented: sitk.Image, source: sitk.Image, region: Region | None = None,
               plane: bool = False, slice_at: tuple[int, int] | None = None,
               image_shape: tuple[int, ...] | None = None) -> Restorable:
    """Class probabilities ``(classes, *working shape)`` on the working grid (any spacing; see
    ``geometry.working_grid``) of ``oriented`` (``canonical(source)``), or of the box ``region`` of its array,
    ready to go back onto the grid of ``source`` (``restore.Restorable``; ``plane``, ``slice_at`` and
    ``image_shape`` say where ``source`` lies in the image, as there)."""
    shape = oriented.GetSize()[::-1]
    low, box = (region.low, region.shape) if region is not None else ((0,) * len(shape), shape)
    axes = array_axes_from(oriented, source)
    tables = tuple(axis_table(probabilities.shape[1 + axis], low[axis], box[axis], shape[axis], flipped)
                   for axis, flipped in axes)
    values = np.ascontiguousarray(np.transpose(probabilities, [0] + [1 + axis for axis, _ in axes]), np.float32)
    return Restorable(values, tables, plane, slice_at, image_shape)


def on_input_grid(probabilities: np.ndarray, oriented: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Class probabilities ``(classes, *working shape)`` on a working grid of ``oriented`` (any spacing; see
    ``geometry.working_grid``), ``reference`` with axes permuted and flipped such as ``canonical(reference)``,
    resampled linearly onto the grid of ``reference``: ``(classes, *reference shape)``, float32."""
    return restorable(probabilities, oriented, reference).probabilities()


def labels_on_input_grid(parts: Sequence[Restorable], values: Sequence[int], reference: sitk.Image,
                         reporter: Reporter | None = None, mask: np.ndarray | None = None) -> sitk.Image:
    """The labels of the mean of ``parts``' probabilities (``Segmenter.working_probabilities``: one model's, or an
    ensemble's members' in order) on ``reference``'s grid, background outside ``mask``: the same, bit for bit, as
    ``labels_from_probabilities`` of the mean of their ``probabilities`` (summed in order, then divided by their
    number), with the interpolation done only where it can change the label (``restore``)."""
    with reporter.stage("restore input grid") if reporter is not None else contextlib.nullcontext():
        most_likely = restored_labels(parts, mask)
    with reporter.stage("labels") if reporter is not None else contextlib.nullcontext():
        return _label_image(most_likely, values, reference)


def labels_from_probabilities(probabilities: np.ndarray, values: Sequence[int], reference: sitk.Image) -> sitk.Image:
    """The label value (``values[c]`` for class ``c``) of the most likely class at each voxel, on ``reference``'s
    grid (ties: the lowest value)."""
    return _label_image(most_likely_class(probabilities), values, reference)


def _label_image(most_likely: np.ndarray, values: Sequence[int], reference: sitk.Image) -> sitk.Image:
    """The label values of class indices ``most_likely`` as an image on ``reference``'s grid."""
    same = list(values) == list(range(len(values)))  # class c is label c: no look-up
    labels = sitk.GetImageFromArray(most_likely if same else np.asarray(values, np.uint8)[most_likely])
    labels.CopyInformation(reference)
    return labels


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """-sum p log p / log(classes) over the classes (the first axis): 0 where one class is certain, 1 where all
    are equally likely; float32."""
    entropy = sum(scipy.special.entr(np.clip(channel, 0.0, 1.0)) for channel in probabilities)
    return np.clip(entropy / math.log(len(probabilities)), 0.0, 1.0).astype(np.float32)


def masked(probabilities: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``probabilities`` (classes first) made background with certainty outside ``mask``, in place."""
    if mask is not None:
        probabilities[:, ~mask] = 0.0
        probabilities[0, ~mask] = 1.0
    return probabilities
