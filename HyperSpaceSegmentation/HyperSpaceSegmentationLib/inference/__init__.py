"""Inference: spacing policies, sliding-window prediction and results on the input's own grid."""

from .segmenter import Segmenter, SpacingRequest, parse_spacing

__all__ = ["Segmenter", "SpacingRequest", "parse_spacing"]
