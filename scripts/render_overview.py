"""Render a picture of segmentation results over their image (axial, coronal and sagittal mid-slices).

    python scripts/render_overview.py IMAGE SEGMENTATION [SEGMENTATION ...] -o Resources/Screenshot1.png

Each row shows one segmentation (label image or .seg.nrrd) over the image; colours follow the labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HyperSpaceSegmentation"))

from HyperSpaceSegmentationLib.evaluation.labels import read_segmentation  # noqa: E402

COLOURS = np.array([[0, 0, 0], [90, 150, 240], [220, 140, 110], [245, 235, 205], [120, 220, 120]], np.float32)


def mid_slices(array: np.ndarray) -> list[np.ndarray]:
    z, y, x = (n // 2 for n in array.shape)
    return [array[z], array[:, y][::-1], array[:, :, x][::-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("segmentations", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    image = sitk.DICOMOrient(sitk.ReadImage(args.image), "LPS")
    grey = sitk.GetArrayFromImage(image).astype(np.float32)
    grey = np.clip(grey / np.percentile(grey[grey > 0], 99.5), 0, 1) * 255
    rows = []
    for path in args.segmentations:
        labels = sitk.GetImageFromArray(read_segmentation(path).values.astype(np.uint8))
        labels.CopyInformation(sitk.ReadImage(args.image))
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS"))
        panels = []
        for g, l in zip(mid_slices(grey), mid_slices(labels)):
            rgb = np.repeat(g[..., None], 3, axis=2)
            mask = l > 0
            rgb[mask] = 0.45 * rgb[mask] + 0.55 * COLOURS[np.minimum(l[mask], len(COLOURS) - 1)]
            panels.append(np.pad(rgb, ((0, max(0, grey.shape[1] - rgb.shape[0])), (0, 4), (0, 0))))
        height = max(p.shape[0] for p in panels)
        rows.append(np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels], axis=1))
    width = max(r.shape[1] for r in rows)
    picture = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    sitk.WriteImage(sitk.GetImageFromArray(picture.astype(np.uint8), isVector=True), args.output)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
