"""Evaluation against reference segmentations: overlap and surface metrics in mm, MIST-style results.csv."""

from .evaluate import evaluate_batch, evaluate_files, evaluate_pair, write_results_csv
from .metrics import DEFAULT_METRICS, METRICS

__all__ = ["DEFAULT_METRICS", "METRICS", "evaluate_batch", "evaluate_files", "evaluate_pair", "write_results_csv"]
