"""`hyperspace train` refuses bad data and settings with a one-line error before any training, and reports
validation Dice from the dataset's validation cases."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.io.model_file import load_model
from HyperSpaceSegmentationLib.training import TrainConfig, train

from conftest import assert_train_refused, phantom

FAST = ["--iterations", "2", "--patch", "16", "--batch-size", "1", "--features", "4", "8", "8", "16", "--rank", "2",
        "--device", "cpu", "--quiet"]


def write_dataset(folder, label=None, image=None, modality="mr", validation=False):
    """A one-case dataset JSON (plus the phantom as validation case if asked); ``label``/``image`` replace the
    training case's files."""
    phantom_image, phantom_labels = phantom(size=(24, 20, 16), seed=1)
    sitk.WriteImage(image if image is not None else phantom_image, str(folder / "image.nii.gz"))
    sitk.WriteImage(label if label is not None else phantom_labels, str(folder / "label.nii.gz"))
    spec = {"modality": modality, "labels": {"0": "background", "1": "shell", "2": "core"},
            "training": [{"id": "patient-7", "image": "image.nii.gz", "label": "label.nii.gz"}]}
    if validation:
        spec["validation"] = [{"id": "held-out", "image": "image.nii.gz", "label": "label.nii.gz"}]
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


def with_array(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def assert_refused(capsys, tmp_path, argv, *words):
    assert_train_refused(capsys, argv, *words, run=tmp_path / "run")


def _labels():
    return phantom(size=(24, 20, 16), seed=1)[1]


def _undeclared(labels):
    array = sitk.GetArrayFromImage(labels)
    array[array == 2] = 4
    return with_array(labels, array)


def _negative(labels):
    array = sitk.GetArrayFromImage(labels).astype(np.int16)
    array[0, 0, :3] = -1
    return with_array(labels, array)


def _other_spacing(labels):
    moved = sitk.Image(labels)
    moved.SetSpacing((1.0, 1.0, 2.0))
    return moved


def _other_size(labels):
    return sitk.GetImageFromArray(sitk.GetArrayFromImage(labels)[:, :, :-4])


def _intensity_float(labels):
    return phantom(size=(24, 20, 16), seed=1)[0]


def _intensity_integer(labels):
    return sitk.Cast(sitk.RescaleIntensity(phantom(size=(24, 20, 16), seed=1)[0], -1000, 1000), sitk.sitkInt16)


@pytest.mark.parametrize("make_label, words", [
    (_undeclared, ["label values 4", "does not declare"]),
    (_negative, ["label values -1", "does not declare"]),
    (_other_spacing, ["not on the grid of its image", "spacing"]),
    (_other_size, ["not on the grid of its image", "size"]),
    (_intensity_float, ["non-integer values", "intensity image"]),
    (_intensity_integer, ["does not declare", "intensity image"]),
], ids=["undeclared", "negative", "other-spacing", "other-size", "intensity-float", "intensity-integer"])
def test_bad_label_maps_are_refused_naming_the_case_and_file(tmp_path, capsys, make_label, words):
    dataset = write_dataset(tmp_path, label=make_label(_labels()))
    assert_refused(capsys, tmp_path, [dataset, "-o", tmp_path / "run", *FAST], "case patient-7", "label.nii.gz", *words)


def test_unsupported_modality_is_refused(tmp_path, capsys):
    dataset = write_dataset(tmp_path, modality="PET")
    assert_refused(capsys, tmp_path, [dataset, "-o", tmp_path / "run", *FAST], "modality 'PET' is not supported", '"mr"', '"ct"')


@pytest.mark.parametrize("options, words", [
    (["--iterations", "0"], ["--iterations 0", "1 or more"]),
    (["--fixed-spacing", "1.5"], ["--fixed-spacing applies to --method fs only"]),
    (["--method", "as", "--fixed-spacing", "1.5"], ["--fixed-spacing applies to --method fs only"]),
    (["--patch", "20", "--features", "4", "8", "8", "16"], ["--patch 20", "multiple of 8"]),
    (["--patch", "24", "--features", "4", "8", "8", "16", "32"], ["--patch 24", "multiple of 16", "such as 32"]),
    (["--patch", "8", "--features", "4", "8", "8", "16"], ["--patch 8", "at least 16"]),
    (["--spacing-range", "2", "1"], ["--spacing-range 2 1"]),
], ids=["no-iterations", "fixed-spacing-hyperspace", "fixed-spacing-as", "patch-20-4-levels", "patch-24-5-levels",
        "patch-too-small", "spacing-range"])
def test_bad_settings_are_refused(tmp_path, capsys, options, words):
    dataset = write_dataset(tmp_path)
    argv = [dataset, "-o", tmp_path / "run", "--iterations", "1", "--device", "cpu", "--quiet", *options]
    assert_refused(capsys, tmp_path, argv, *words)


def test_patch_divisor_follows_the_network_depth(tmp_path, capsys):
    """A 3-level network halves twice: 12 voxels are a valid patch for it (and refused for 4 levels above)."""
    dataset = write_dataset(tmp_path)
    code = main(["train", str(dataset), "-o", str(tmp_path / "run"), "--iterations", "1", "--patch", "12",
                 "--features", "4", "8", "8", "--rank", "2", "--batch-size", "1", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert load_model(tmp_path / "run" / "model.pt").unet_config.features == (4, 8, 8)


def test_output_that_is_a_file_or_under_a_file_is_refused_before_training(tmp_path, capsys):
    dataset = write_dataset(tmp_path)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    assert_refused(capsys, tmp_path, [dataset, "-o", blocker, *FAST], "notes.txt is a file")
    assert_refused(capsys, tmp_path, [dataset, "-o", blocker / "run", *FAST], "notes.txt")
    assert blocker.read_text() == "not a folder"


def test_read_only_output_folder_is_refused_before_training(tmp_path, capsys, read_only_folder):
    dataset = write_dataset(tmp_path)
    assert_refused(capsys, tmp_path, [dataset, "-o", read_only_folder, *FAST], "cannot write in folder", "locked")
    assert_refused(capsys, tmp_path, [dataset, "-o", read_only_folder / "run", *FAST], "cannot write in folder")


def test_validation_dice_is_reported_at_checkpoints_and_recorded(tmp_path, capsys):
    """The validation case is segmented with the engine at native and coarse spacing at every checkpoint."""
    dataset = write_dataset(tmp_path, validation=True)
    config = TrainConfig(dataset=str(dataset), output=str(tmp_path / "run"), iterations=40, checkpoint_every=20,
                         patch=16, batch_size=4, features=(4, 8, 8, 16), rank=2, hidden=16, device="cpu",
                         learning_rate=2e-2, augment=False, spacing_max=2.5)
    model = load_model(train(config))
    err = capsys.readouterr().err
    for step in (20, 40):
        assert f"validation at step {step}, native: Dice shell " in err
        assert f"validation at step {step}, 2.5 mm: Dice shell " in err
    history = model.training["validation_history"]
    assert [entry["step"] for entry in history] == [20, 40]
    final = model.training["validation_dice"]
    assert final == history[-1]["dice"] and set(final) == {"native", "2.5 mm"}
    for per_class in final.values():
        assert set(per_class) == {"shell", "core"}
    # the recorded Dice is what segmenting the validation case with the saved model gives
    prediction = tmp_path / "prediction.nii.gz"
    assert main(["segment", str(tmp_path / "image.nii.gz"), "-o", str(prediction), "--model",
                 str(tmp_path / "run" / "model.pt"), "--spacing", "native", "--device", "cpu", "--quiet"]) == 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
    truth = sitk.GetArrayFromImage(_labels())
    for value, name in ((1, "shell"), (2, "core")):
        a, b = predicted == value, truth == value
        assert final["native"][name] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-3)
    assert max(final["native"].values()) > 0.5  # and it has learnt something


def test_dataset_mistakes_found_by_trying_are_refused_and_leave_no_run_folder(tmp_path, capsys):
    dataset = write_dataset(tmp_path)
    spec = json.loads(dataset.read_text())
    cases = {
        "colour-range": ({**spec, "colors": {"1": [2, 0, 0]}}, ["colour of label 1", "0-1"]),
        "colour-undeclared": ({**spec, "colors": {"7": [1, 0, 0]}}, ["label 7", "does not declare"]),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        assert_refused(capsys, tmp_path, [path, "-o", tmp_path / "runs" / name, *FAST], *words)
        assert not (tmp_path / "runs").exists()
    assert_refused(capsys, tmp_path, [tmp_path, "-o", tmp_path / "runs" / "folder", *FAST], "is a folder")
    (tmp_path / "flat").mkdir()
    slice_ = sitk.GetImageFromArray(np.random.default_rng(0).random((20, 24)).astype(np.float32))
    stripes = sitk.GetImageFromArray((np.arange(480).reshape(20, 24) % 2).astype(np.uint8))
    flat = write_dataset(tmp_path / "flat", image=slice_, label=stripes)
    assert_refused(capsys, tmp_path, [flat, "-o", tmp_path / "runs" / "flat", *FAST], "--dim 2")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, words", [
    ([{"id": "a", "image": "image.nii.gz", "label": "label.nii.gz"}], ["holds a JSON list, not an object", "'training'"]),
    ("modality labels training", ["holds a JSON string, not an object"]),
    (7, ["holds a JSON number, not an object"]),
])
def test_a_dataset_that_is_no_json_object_is_a_one_line_error(tmp_path, capsys, content, words):
    write_dataset(tmp_path)
    path = tmp_path / "list.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    assert_refused(capsys, tmp_path, [path, "-o", tmp_path / "run", *FAST], *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("identifier", ["..", "..x", ".hidden", "a/b", "a\\b", " ", "tab\there"])
def test_case_ids_that_cannot_name_files_are_refused(tmp_path, capsys, identifier):
    dataset = write_dataset(tmp_path)
    spec = json.loads(dataset.read_text(encoding="utf-8"))
    spec["training"][0]["id"] = identifier
    dataset.write_text(json.dumps(spec), encoding="utf-8")
    assert_refused(capsys, tmp_path, [dataset, "-o", tmp_path / "run", *FAST], f"training case 0 has the id {identifier!r}",
                   "such as 'case-001'")


def test_case_ids_with_letters_of_any_language_are_kept(tmp_path):
    from HyperSpaceSegmentationLib.training.dataset import load_dataset

    dataset = write_dataset(tmp_path)
    spec = json.loads(dataset.read_text(encoding="utf-8"))
    spec["training"][0]["id"] = "café-Ø.2"
    dataset.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    assert load_dataset(dataset).training[0].id == "café-Ø.2"
