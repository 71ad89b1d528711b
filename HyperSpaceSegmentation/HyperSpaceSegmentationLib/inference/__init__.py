"""Inference: spacing policies, sliding-window prediction and results on the input's own grid."""

from .segmenter import (
    NetworkView, Segmenter, Slices, SpacingRequest, labels_from_probabilities, labels_on_input_grid, normalised_entropy,
    parse_spacing,
)

__all__ = ["NetworkView", "Segmenter", "Slices", "SpacingRequest", "labels_from_probabilities", "labels_on_input_grid",
           "normalised_entropy", "parse_spacing"]
