"""Per-class metrics behind one interface: a name, a unit, and a function of a ``Comparison``.

Overlap (voxel counts TP, FP, FN, TN on the whole grid):
    dice = 2TP / (2TP + FP + FN), jaccard = TP / (TP + FP + FN), precision = TP / (TP + FP),
    recall = TP / (TP + FN), specificity = TN / (TN + FP); volumes in mL (voxel count x voxel volume);
    abs_vol_diff = |V_pred - V_ref| mL, rel_vol_diff = (V_pred - V_ref) / V_ref.
Surface (mm, see ``surface``): hausdorff, haus95, avg_surf (ASSD), surf_dice (at ``tolerance`` mm).
The IFE paper's binary measures: conformity = 1 - (FP + FN) / TP (NaN when TP = 0, as it is undefined),
fbeta = (1 + b2) P R / (b2 P + R) with b2 = 0.3, mae = mean |prediction - reference| over the grid, on
probabilities when the prediction is one, else on the masks; all computed in floating point.

Empty masks follow MIST: both empty is a perfect score (dice, jaccard, precision, recall, surf_dice,
fbeta 1; distances, mae and volume differences 0); exactly one empty is the worst (those scores 0,
distances equal to the image diagonal in mm). ``Comparison.empty`` names the case.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .surface import SurfaceDistances, surface_distances

F_BETA_SQUARED = 0.3


@dataclass
class Comparison:
    """One class of one case: reference and predicted masks on one grid, with their geometry."""

    reference: np.ndarray
    prediction: np.ndarray
    spacing: tuple[float, ...]  # array-axis order, mm
    tolerance: float = 1.0
    probabilities: np.ndarray | None = None

    @functools.cached_property
    def counts(self) -> tuple[int, int, int, int]:
        tp = int(np.count_nonzero(self.reference & self.prediction))
        fp = int(np.count_nonzero(self.prediction)) - tp
        fn = int(np.count_nonzero(self.reference)) - tp
        return tp, fp, fn, self.reference.size - tp - fp - fn

    @property
    def empty(self) -> str:
        """``none``, ``both``, ``reference`` or ``prediction``: which masks are empty."""
        tp, fp, fn, _ = self.counts
        reference, prediction = tp + fn == 0, tp + fp == 0
        return "both" if reference and prediction else "reference" if reference else "prediction" if prediction else "none"

    @property
    def voxel_ml(self) -> float:
        return math.prod(self.spacing) / 1000.0

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(np.array(self.reference.shape) * np.array(self.spacing)))

    @functools.cached_property
    def surfaces(self) -> SurfaceDistances:
        return surface_distances(self.reference, self.prediction, self.spacing)


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    compute: Callable[[Comparison], float]
    best_if_both_empty: float | None  # the MIST conventions; None: the formula still holds
    worst_if_one_empty: float | None
    description: str


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _overlap(formula: Callable[[int, int, int, int], float]) -> Callable[[Comparison], float]:
    return lambda c: formula(*c.counts)


def _fbeta(tp: int, fp: int, fn: int, tn: int) -> float:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if not precision or not recall or math.isnan(precision) or math.isnan(recall):
        return 0.0
    return (1 + F_BETA_SQUARED) * precision * recall / (F_BETA_SQUARED * precision + recall)


def _mae(c: Comparison) -> float:
    if c.probabilities is None:  # on masks, |prediction - reference| is 1 exactly on FP and FN voxels
        tp, fp, fn, tn = c.counts
        return (fp + fn) / c.reference.size
    return float(np.abs(c.probabilities.astype(np.float64) - c.reference).mean())


DIAGONAL = -1.0  # placeholder for "the image diagonal" in the conventions below

METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("dice", "", _overlap(lambda tp, fp, fn, tn: _ratio(2 * tp, 2 * tp + fp + fn)), 1.0, 0.0, "Dice coefficient"),
    Metric("jaccard", "", _overlap(lambda tp, fp, fn, tn: _ratio(tp, tp + fp + fn)), 1.0, 0.0, "Jaccard index (IoU)"),
    Metric("precision", "", _overlap(lambda tp, fp, fn, tn: _ratio(tp, tp + fp)), 1.0, 0.0, "positive predictive value"),
    Metric("recall", "", _overlap(lambda tp, fp, fn, tn: _ratio(tp, tp + fn)), 1.0, 0.0, "sensitivity"),
    Metric("specificity", "", _overlap(lambda tp, fp, fn, tn: _ratio(tn, tn + fp)), None, None, "true negative rate"),
    Metric("vol_ref", "mL", lambda c: (c.counts[0] + c.counts[2]) * c.voxel_ml, None, None, "reference volume"),
    Metric("vol_pred", "mL", lambda c: (c.counts[0] + c.counts[1]) * c.voxel_ml, None, None, "predicted volume"),
    Metric("abs_vol_diff", "mL", lambda c: abs(c.counts[1] - c.counts[2]) * c.voxel_ml, None, None,
           "absolute volume difference"),
    Metric("rel_vol_diff", "", _overlap(lambda tp, fp, fn, tn: _ratio(fp - fn, tp + fn)), 0.0, None,
           "relative volume difference (pred - ref) / ref"),
    Metric("hausdorff", "mm", lambda c: c.surfaces.hausdorff(), 0.0, DIAGONAL, "Hausdorff distance (maximum)"),
    Metric("haus95", "mm", lambda c: c.surfaces.hausdorff(95.0), 0.0, DIAGONAL, "95th-percentile Hausdorff distance"),
    Metric("avg_surf", "mm", lambda c: c.surfaces.average_symmetric(), 0.0, DIAGONAL, "average symmetric surface distance"),
    Metric("surf_dice", "", lambda c: c.surfaces.surface_dice(c.tolerance), 1.0, 0.0, "surface Dice at the tolerance"),
    Metric("conformity", "", _overlap(lambda tp, fp, fn, tn: 1 - _ratio(fp + fn, tp)), 1.0, None, "conformity coefficient"),
    Metric("fbeta", "", _overlap(_fbeta), 1.0, 0.0, "F-beta, beta^2 = 0.3"),
    Metric("mae", "", _mae, None, None, "mean absolute error"),
]}

DEFAULT_METRICS = tuple(METRICS)


def compute(metric: Metric, comparison: Comparison) -> float:
    """The metric's value, with the empty-mask conventions applied."""
    empty = comparison.empty
    if empty == "both" and metric.best_if_both_empty is not None:
        return metric.best_if_both_empty
    if empty in ("reference", "prediction") and metric.worst_if_one_empty is not None:
        return comparison.diagonal if metric.worst_if_one_empty == DIAGONAL else metric.worst_if_one_empty
    return float(metric.compute(comparison))
