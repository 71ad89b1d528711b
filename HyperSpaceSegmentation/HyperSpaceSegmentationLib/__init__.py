"""HyperSpace Segmentation engine: spacing-adaptive segmentation that imports without 3D Slicer."""

__version__ = "0.1.0"
