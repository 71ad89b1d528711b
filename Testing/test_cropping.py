"""A 3D model predicts on the box around the content: the empty space around a scan changes nothing, on oblique
grids too; ``--mask`` restricts the result to a mask on any grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.inference import Segmenter
from HyperSpaceSegmentationLib.inference.cropping import Region, foreground_region
from HyperSpaceSegmentationLib.preprocessing import Normalisation
from HyperSpaceSegmentationLib.progress import Reporter

from conftest import OBLIQUE, phantom, tiny_model


def bordered(image: sitk.Image, border_mm: float) -> tuple[sitk.Image, int]:
    """``image`` with ``border_mm`` of empty space (0) on every side, and the border in voxels."""
    voxels = int(round(border_mm / image.GetSpacing()[0]))
    return sitk.ConstantPad(image, [voxels] * 3, [voxels] * 3, 0), voxels


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_empty_space_around_the_scan_changes_no_label(direction):
    """0, 20 and 60 mm of empty border: the same labels, and the border is background. The tiny network's whole-
    volume window normalises each feature map over the window, so without the crop the border would change them."""
    image, _ = phantom(size=(30, 28, 24), spacing=(2.0, 2.0, 2.0), direction=direction, seed=4)
    image = sitk.ConstantPad(image, [3] * 3, [3] * 3, 0)  # the content 6 mm from the faces
    model = tiny_model()
    model.normalisation = Normalisation("mr", version=2)  # version 1 z-scores everything when the object is < 1%
    segmenter = Segmenter(model, device="cpu")
    results = []
    for border_mm in (0, 20, 60):
        scan, voxels = bordered(image, border_mm)
        labels = sitk.GetArrayFromImage(segmenter.segment(scan, (2.5, 2.5, 2.5), Reporter(3, quiet=True)))
        inner = labels[tuple(slice(voxels, n - voxels) for n in labels.shape)]
        assert labels.sum() == inner.sum()  # nothing labelled in the border
        results.append(inner)
    assert len(np.unique(results[0])) > 1  # the untrained network labels something
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


def test_the_region_is_the_content_plus_a_margin_past_the_faces():
    volume = np.zeros((20, 30, 40), np.float32)
    volume[5:9, 0:12, 30:40] = 1.0  # touches the j = 0 and i = 39 faces
    region = foreground_region(volume, 0.0, (1.0, 2.0, 5.0), margin_mm=10.0)
    assert region == Region((-5, -5, 28), (19, 17, 42))  # 10, 5 and 2 voxels of margin
    cropped = region.take(volume, -1.0)
    assert cropped.shape == (24, 22, 14) and (cropped == -1).sum() == 24 * 22 * 14 - 19 * 17 * 12
    assert (cropped == 1).sum() == (volume == 1).sum() and np.all(cropped[10:14, 5:17, 2:12] == 1)
    probabilities = np.stack([np.zeros(region.shape), np.ones(region.shape)]).astype(np.float32)
    whole = region.put(probabilities, volume.shape)
    assert whole[1].sum() == 19 * 17 * 12 and np.all(whole[0][whole[1] == 0] == 1)
    assert foreground_region(np.ones((4, 4, 4), np.float32), 0.0, (1, 1, 1)) is None  # content everywhere
    assert foreground_region(np.zeros((4, 4, 4), np.float32), 0.0, (1, 1, 1)) is None  # nothing
    mask = np.zeros(volume.shape, bool)
    mask[6, 5, 35] = True
    assert foreground_region(volume, 0.0, (1.0, 1.0, 1.0), mask, margin_mm=0) == Region((6, 5, 35), (7, 6, 36))


def test_the_region_grid_continues_the_image_grid():
    image = sitk.Image([10, 12, 14], sitk.sitkUInt8)
    image.SetSpacing((0.5, 1.0, 2.0))
    image.SetDirection(OBLIQUE)
    image.SetOrigin((3.0, -4.0, 5.0))
    grid = Region((-2, 1, 3), (4, 9, 12)).grid(image)  # k, j, i
    assert grid.GetSize() == (9, 8, 6) and grid.GetSpacing() == image.GetSpacing()
    np.testing.assert_allclose(grid.GetOrigin(), image.TransformContinuousIndexToPhysicalPoint((3, 1, -2)), atol=1e-9)


@pytest.fixture
def scan_and_mask(tmp_path):
    """The phantom (1 mm) and a mask of its left half on a coarser, shifted grid, as a label map and a .seg.nrrd."""
    image, _ = phantom(size=(32, 30, 28), seed=2)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    coarse = sitk.Image([16, 15, 14], sitk.sitkUInt8)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    coarse.SetOrigin((0.5, 0.5, 0.5))
    array = sitk.GetArrayFromImage(coarse)
    array[:, :, :8] = 3  # x < 16 mm: the left half
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(coarse)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    segmentation = {"voxels": sitk.GetArrayFromImage(mask).transpose(2, 1, 0),
                    "ijkToLPS": [[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]],
                    "segments": [{"id": "half", "name": "half", "labelValue": 3, "layer": 0}],
                    "encoding": "gzip"}
    slicerio.write_segmentation(str(tmp_path / "mask.seg.nrrd"), segmentation)
    return tmp_path


@pytest.mark.parametrize("mask_name", ["mask.nii.gz", "mask.seg.nrrd"])
def test_mask_makes_everything_outside_it_background(scan_and_mask, tiny_model_file, mask_name):
    folder = scan_and_mask
    argv = ["segment", str(folder / "scan.nrrd"), "--model", str(tiny_model_file), "--spacing", "1.5", "--quiet"]
    assert main(argv + ["-o", str(folder / "all.nrrd")]) == 0
    assert main(argv + ["-o", str(folder / "masked.nrrd"), "--mask", str(folder / mask_name)]) == 0
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "all.nrrd")))
    masked = sitk.ReadImage(str(folder / "masked.nrrd"))
    assert masked.GetSize() == (32, 30, 28)
    masked = sitk.GetArrayFromImage(masked)
    # nearest neighbour from the 2 mm grid: voxel centres x = 0..15 lie inside (x < 16.5 mm)
    assert np.all(masked[:, :, 17:] == 0) and (full[:, :, 17:] > 0).any()
    assert (masked[:, :, :16] > 0).sum() > 0.5 * (full[:, :, :16] > 0).sum()


def test_a_mask_that_misses_the_scan_or_a_batch_is_refused(scan_and_mask, tiny_model_file, capsys):
    folder = scan_and_mask
    far = sitk.ReadImage(str(folder / "mask.nii.gz"))
    far.SetOrigin((500.0, 0.0, 0.0))
    sitk.WriteImage(far, str(folder / "far.nii.gz"))
    argv = ["segment", str(folder / "scan.nrrd"), "--model", str(tiny_model_file), "--quiet"]
    assert main(argv + ["-o", str(folder / "out.nrrd"), "--mask", str(folder / "far.nii.gz")]) == 2
    error = capsys.readouterr().err
    assert "covers none of the input's voxels" in error and error.count("\n") == 1
    assert not (folder / "out.nrrd").exists()
    sitk.WriteImage(sitk.ReadImage(str(folder / "scan.nrrd")), str(folder / "scan2.nrrd"))
    argv = ["segment", str(folder / "scan.nrrd"), str(folder / "scan2.nrrd"), "-o", str(folder / "batch"),
            "--model", str(tiny_model_file), "--mask", str(folder / "mask.nii.gz"), "--quiet"]
    assert main(argv) == 2 and "--mask is the mask of one scan" in capsys.readouterr().err
    argv = ["segment", str(folder / "scan.nrrd"), "-o", str(folder / "mask.nii.gz"), "--mask",
            str(folder / "mask.nii.gz"), "--model", str(tiny_model_file), "--overwrite", "--quiet"]
    assert main(argv) == 2 and "is the mask" in capsys.readouterr().err
