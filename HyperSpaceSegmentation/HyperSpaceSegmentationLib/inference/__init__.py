"""Inference: spacing policies, sliding-window prediction and results on the input's own grid."""

from .results import labels_from_probabilities, labels_on_input_grid, normalised_entropy
from .plans import NetworkView, Slices, SpacingRequest, parse_spacing
from .segmenter import Segmenter

__all__ = ["NetworkView", "Segmenter", "Slices", "SpacingRequest", "labels_from_probabilities", "labels_on_input_grid",
           "normalised_entropy", "parse_spacing"]
