"""Files: images, label maps, Slicer segmentations and model files."""
