"""Image file formats: the extensions read as images and pictures, those written as outputs and voxel maps."""

from __future__ import annotations

import os
from pathlib import Path

# 2D pictures: their pixel spacing is rarely known, and colour ones are segmented by their luminance
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IMAGE_EXTENSIONS = (".seg.nrrd", ".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd", ".dcm") + PICTURE_EXTENSIONS
# outputs are single files, so that writing one and moving it into place is one step (.mhd and .nhdr have two);
# a picture (lossless only) holds the labels of a 2D image or of a single-slice volume
PICTURE_OUTPUTS = (".png", ".tif", ".tiff", ".bmp")
VOLUME_OUTPUTS = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha")
OUTPUT_EXTENSIONS = VOLUME_OUTPUTS + PICTURE_OUTPUTS
MAP_OUTPUTS = (".nrrd", ".nii.gz", ".nii", ".mha")  # voxel maps for review (probabilities, uncertainty): any voxel type


def extension(path: str | os.PathLike) -> str:
    """The file's extension, multi-part ones (``.nii.gz``, ``.seg.nrrd``) included, in lower case."""
    name = Path(path).name.lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix
