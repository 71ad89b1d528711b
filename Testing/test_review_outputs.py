"""Results a reviewer can trust: class probabilities and uncertainty on the input grid, and test-time augmentation."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.geometry import same_grid
from HyperSpaceSegmentationLib.inference import Segmenter, Slices, normalised_entropy
from HyperSpaceSegmentationLib.io import model_file
from HyperSpaceSegmentationLib.io.images import write_probabilities
from HyperSpaceSegmentationLib.io.model_file import save_model
from HyperSpaceSegmentationLib.progress import Reporter

from conftest import OBLIQUE, asymmetric_phantom, on_grid, oracle_model, phantom, tiny_model

OBLIQUE_GRID = dict(size=(48, 40, 12), spacing=(0.7, 0.8, 3.0), origin=(-12.5, 30.2, 101.0), direction=OBLIQUE)


def segment(capsys, *argv) -> tuple[int, str]:
    code = main(["segment", *map(str, argv)])
    return code, capsys.readouterr().err


@pytest.fixture
def oblique_case(tmp_path, monkeypatch):
    """(scan, model): the asymmetric phantom on an oblique anisotropic grid, and a model file that loads as the
    3D intensity oracle."""
    image, _ = asymmetric_phantom(**OBLIQUE_GRID)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    model = tmp_path / "oracle.pt"
    model.write_bytes(b"")
    real = model_file.load_model
    monkeypatch.setattr(model_file, "load_model", lambda p: oracle_model() if Path(p) == model else real(p))
    return tmp_path / "scan.nrrd", model


@pytest.mark.parametrize("suffix, tolerance", [(".nrrd", 1e-12), (".nii.gz", 1e-4)])  # NIfTI: float32 header
def test_probabilities_and_uncertainty_lie_on_the_input_grid_and_agree_with_the_labels(
    suffix, tolerance, oblique_case, tmp_path, capsys
):
    scan, model = oblique_case
    maps = tmp_path / f"p{suffix}", tmp_path / f"u{suffix}"
    code, err = segment(capsys, scan, "-o", tmp_path / "labels.nrrd", "--model", model, "--spacing", "2", "--patch", 32,
                        "--device", "cpu", "--probabilities", maps[0], "--uncertainty", maps[1], "--quiet")
    assert code == 0, err
    image = sitk.ReadImage(str(scan))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nrrd")))
    probabilities, uncertainty = (sitk.ReadImage(str(path)) for path in maps)
    for result in (probabilities, uncertainty):
        assert same_grid(result, image, tolerance=tolerance)
    assert probabilities.GetPixelID() == sitk.sitkVectorUInt8 and probabilities.GetNumberOfComponentsPerPixel() == 3
    assert uncertainty.GetPixelID() == sitk.sitkFloat32

    p = sitk.GetArrayFromImage(probabilities).astype(int)  # (z, y, x, classes): classes 0, 3, 7
    assert np.all(np.abs(p.sum(axis=-1) - 255) <= 1.5)
    top = p.max(axis=-1)
    unique = (p == top[..., None]).sum(axis=-1) == 1  # uint8 rounding may tie near-equal classes
    assert np.array_equal(np.array([0, 3, 7])[p.argmax(axis=-1)][unique], labels[unique])
    assert unique.mean() > 0.99
    assert {0, 3, 7} <= set(np.unique(labels))

    u = sitk.GetArrayFromImage(uncertainty)
    assert u.min() >= 0 and u.max() <= 1
    change = np.zeros(labels.shape, bool)  # voxels next to another label, along any axis
    for axis in range(3):
        differs = np.diff(labels, axis=axis) != 0
        change |= np.pad(differs, [(0, 1) if a == axis else (0, 0) for a in range(3)])
        change |= np.pad(differs, [(1, 0) if a == axis else (0, 0) for a in range(3)])
    interior = scipy.ndimage.distance_transform_edt(~change, sampling=OBLIQUE_GRID["spacing"][::-1]) > 4  # mm
    assert interior.sum() > 1000 and u[interior].max() < 1e-3
    assert u[change].mean() > 10 * max(u[interior].mean(), 1e-6) and u[change].max() > 0.3


def test_normalised_entropy_is_zero_when_certain_and_one_when_every_class_is_equally_likely():
    certain, uniform = np.eye(4, dtype=np.float32)[:, :1], np.full((4, 1), 0.25, np.float32)
    assert normalised_entropy(certain)[0] == 0 and normalised_entropy(uniform)[0] == pytest.approx(1, abs=1e-6)


def _flipped(image: sitk.Image, axes: tuple[int, ...]) -> sitk.Image:
    """``image`` with its voxel array flipped along the array ``axes``, on the same grid."""
    result = sitk.GetImageFromArray(np.flip(sitk.GetArrayFromImage(image), axes).copy())
    result.CopyInformation(image)
    return result


def _probabilities(model, image, spacing, **options) -> np.ndarray:
    segmenter = Segmenter(model, device="cpu", patch=32, **options)
    return segmenter.probabilities(image, spacing, Reporter(3, quiet=True))


@pytest.mark.parametrize("dim, tta, array_axes", [
    (3, [], (0, 1, 2)), (3, [0], (2,)), (3, [2, 1], (0, 1)), (2, [], (1, 2)), (2, [1], (1,)),
])
def test_tta_averages_the_probabilities_of_flipped_inputs(dim, tta, array_axes):
    """A random U-Net is not flip-equivariant: TTA changes its probabilities and equals the mean of the runs on
    explicitly flipped inputs, flipped back (one window, no padding, native grid: flips commute with the rest)."""
    rng = np.random.default_rng(0)
    shape = (24, 32, 32) if dim == 3 else (3, 32, 32)  # 2D: three slices along k
    image = on_grid(rng.normal(100, 30, shape).astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    model, spacing = tiny_model(dim=dim), (1.0,) * dim
    plain = _probabilities(model, image, spacing)
    augmented = _probabilities(model, image, spacing, tta=tta)
    flips = [c for n in range(len(array_axes) + 1) for c in itertools.combinations(array_axes, n)]
    explicit = np.mean([np.flip(_probabilities(model, _flipped(image, axes), spacing), [a + 1 for a in axes])
                        for axes in flips], axis=0)
    assert np.allclose(augmented, explicit, atol=1e-5)
    assert not np.allclose(augmented, plain, atol=1e-3)


@pytest.mark.parametrize("tta, predictions", [([], 8), (["0"], 2), (["2", "0"], 4)])
def test_tta_leaves_a_flip_symmetric_network_s_labels_unchanged(tta, predictions, oblique_case, tmp_path, capsys):
    scan, model = oblique_case
    runs = {"plain": [], "tta": ["--tta", *tta]}
    for name, options in runs.items():
        code = main(["segment", str(scan), *options, "-o", str(tmp_path / f"{name}.nrrd"), "--model", str(model),
                     "--spacing", "2", "--patch", "32", "--device", "cpu", "--json"])
        out = capsys.readouterr().out
        assert code == 0 and json.loads(out)["tta_predictions"] == (predictions if name == "tta" else 1)
    plain, augmented = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nrrd"))) for n in runs)
    assert np.array_equal(plain, augmented)


def test_probability_files_hold_rounded_bytes_in_the_order_of_the_classes(tmp_path):
    reference = on_grid(np.zeros((1, 2), np.float32), (0.5, 2.0), (3.0, 4.0))  # a 2D grid of 2 x 1 pixels
    probabilities = np.array([[0.21, 1.0], [0.33, 0.0], [0.46, 0.0]], np.float32)[:, None, :]  # (classes, y, x)
    write_probabilities(probabilities, reference, tmp_path / "p.nrrd")
    written = sitk.ReadImage(str(tmp_path / "p.nrrd"))
    assert same_grid(written, reference, tolerance=0)
    assert sitk.GetArrayFromImage(written).tolist() == [[[54, 84, 117], [255, 0, 0]]]


def test_tta_axes_beyond_the_network_s_dimensions_are_refused():
    with pytest.raises(UserError, match="--tta 2: a 2D model's axes are 0, 1"):
        Segmenter(oracle_model(dim=2), device="cpu", slices=Slices(), tta=[2])


@pytest.mark.parametrize("case", ["exists", "is the output", "picture", "is the input", "same map"])
def test_review_outputs_are_checked_before_any_work(case, oblique_case, tmp_path, capsys):
    scan, model = oblique_case
    output, maps = tmp_path / "labels.nrrd", {"--probabilities": tmp_path / "p.nrrd"}
    if case == "exists":
        maps["--probabilities"].write_text("keep me")
    elif case == "is the output":
        maps["--probabilities"] = output
    elif case == "picture":
        maps["--probabilities"] = tmp_path / "p.png"
    elif case == "is the input":
        maps["--uncertainty"] = scan
    else:
        maps["--uncertainty"] = maps["--probabilities"]
    words = {"exists": "--overwrite", "is the output": "label output", "picture": "--probabilities p.png",
             "is the input": "input image", "same map": "output"}[case]
    before = sorted(tmp_path.iterdir())
    code, err = segment(capsys, scan, "-o", output, "--model", model, "--device", "cpu",
                        *[w for option, path in maps.items() for w in (option, path)])
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    assert sorted(tmp_path.iterdir()) == before  # nothing written (and nothing half-written)
    if case == "exists":
        assert maps["--probabilities"].read_text() == "keep me"


def test_probabilities_of_one_slice_or_a_2d_image_lie_on_the_input_grid():
    """With --slice K, slice K's probabilities are those of the whole run and every other slice is background for
    certain; a 2D image's have its two axes."""
    image, _ = asymmetric_phantom(size=(24, 20, 4))
    whole = _probabilities(oracle_model(dim=2), image, (1.0, 1.0))
    one = _probabilities(oracle_model(dim=2), image, (1.0, 1.0), slices=Slices(axis=2, index=1))
    assert one.shape == whole.shape == (3, 4, 20, 24)
    assert np.array_equal(one[:, 1], whole[:, 1])
    others = np.delete(one, 1, axis=1)
    assert np.all(others[0] == 1) and np.all(others[1:] == 0)
    picture = image[:, :, 2]
    assert _probabilities(oracle_model(dim=2), picture, (1.0, 1.0)).shape == (3, 20, 24)


def _tiny_model_file(path, seed=0, dim=3, spacing_range=(0.8, 3.5), labels=None):
    model = tiny_model(dim=dim, seed=seed)
    model.spacing_range = spacing_range
    model.labels = labels or model.labels
    return save_model(model, path)


def test_an_ensemble_averages_its_models_probabilities_each_at_its_own_spacing(tmp_path, capsys):
    image, _ = phantom(size=(32, 28, 20), spacing=(1.0, 1.0, 1.5), origin=(3.0, -2.0, 7.0), direction=OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    models = [_tiny_model_file(tmp_path / "a.pt"), _tiny_model_file(tmp_path / "b.pt", 1, spacing_range=(2.0, 3.5))]
    runs = {"a": models[:1], "b": models[1:], "ab": models}
    for name, files in runs.items():
        code = main(["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / f"{name}.nrrd"), "--model",
                     *map(str, files), "--probabilities", str(tmp_path / f"p_{name}.nrrd"), "--patch", "32",
                     "--device", "cpu", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
    spacings = [m["spacing_mm"] for m in json.loads(out)["models"]]
    assert np.allclose(spacings, [[1.0, 1.0, 1.5], [2.0, 2.0, 2.0]], atol=1e-4)  # the oblique header's rounding
    a, b, ab = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"p_{n}.nrrd"))).astype(float) for n in runs)
    assert np.abs(ab - (a + b) / 2).max() <= 1.0  # each file rounds to a byte
    assert np.abs(a - b).max() > 10  # the models differ: the mean is neither
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ab.nrrd")))
    unique = (ab == ab.max(axis=-1, keepdims=True)).sum(axis=-1) == 1
    assert np.array_equal(np.array([0, 1, 2])[ab.argmax(axis=-1)][unique], labels[unique])


@pytest.mark.parametrize("other, words", [
    (dict(labels={0: "background", 1: "shell", 2: "nucleus"}), ["b.pt", "different labels", "2 nucleus"]),
    (dict(labels={0: "background", 1: "shell", 3: "core"}), ["b.pt", "different labels", "3 core"]),
    (dict(dim=2), ["b.pt", "2D"]),
])
def test_an_ensemble_of_models_with_other_labels_or_dimensions_is_refused(other, words, tmp_path, capsys):
    image, _ = phantom(size=(16, 16, 16))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    models = [_tiny_model_file(tmp_path / "a.pt"), _tiny_model_file(tmp_path / "b.pt", seed=1, **other)]
    code, err = segment(capsys, tmp_path / "scan.nrrd", "-o", tmp_path / "out.nrrd", "--model", *models)
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert code == 2 and len(lines) == 1, err
    assert all(word in lines[0] for word in ["a.pt", *words]), lines[0]
    assert not (tmp_path / "out.nrrd").exists()
