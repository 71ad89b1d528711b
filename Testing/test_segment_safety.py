"""``hyperspace segment`` given what a user in a hurry gives it: an empty argument, a folder without images, outputs
that are inputs, a memory budget that no spacing meets, mixed 2D and 3D batches, earlier results among the scans,
an interrupted batch and its continuation (``--skip-existing``), and odd case lists. Each one ends in a one-line
error before any work, or in a clear per-case failure, and nothing a user had is lost."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import segment_batch
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, DEFAULT_MODEL_2D
from HyperSpaceSegmentationLib.inference.cases import collect_cases
from HyperSpaceSegmentationLib.io.model_file import save_model

from conftest import phantom, tiny_model
from test_cli import image_file  # noqa: F401 (fixture)
from test_segment_batch import assert_one_line_error, read_summary, run, write_scans


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# 1. an empty argument, a folder with no images ---------------------------------------------------------------------
@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_input_is_an_error_not_the_current_folder(empty, tmp_path, capsys, monkeypatch, tiny_model_file):
    write_scans(tmp_path, ["alpha.nrrd", "beta.nii.gz"], size=(16, 16, 12))
    monkeypatch.chdir(tmp_path)
    before = contents(tmp_path)
    code, out, err = run(capsys, "segment", empty, "-o", "out.nrrd", "--model", tiny_model_file, "--device", "cpu")
    assert_one_line_error(code, err, "INPUT is empty", "unset shell variable")
    assert out == "" and not (tmp_path / "out.nrrd").exists() and contents(tmp_path) == before


@pytest.mark.parametrize("argv,option", [
    (["segment", "alpha.nrrd", "-o", "seg.nrrd", "--model", "{model}", ""], "--model"),
    (["segment", "alpha.nrrd", "-o", "seg.nrrd", "--model", "{model}", "--mask", ""], "--mask"),
    (["segment", "alpha.nrrd", "beta.nii.gz", "-o", "out", "--model", "{model}", "--summary", " "], "--summary"),
    (["segment", "alpha.nrrd", "-o", "seg.nrrd", "--model", "{model}", "--probabilities", ""], "--probabilities"),
    (["info", ""], "MODEL"),
    (["evaluate", "alpha.nrrd", "alpha.nrrd", "-o", ""], "-o/--output"),
    (["analyze", "cka", "{model}", "--spacings", "1", "2", "-o", ""], "-o/--output"),
])
def test_an_empty_option_is_an_error_not_a_default_or_the_current_folder(argv, option, tmp_path, capsys, monkeypatch,
                                                                          tiny_model_file):
    write_scans(tmp_path, ["alpha.nrrd", "beta.nii.gz"], size=(16, 16, 12))
    monkeypatch.chdir(tmp_path)
    before = contents(tmp_path)
    code, out, err = run(capsys, *[a.format(model=tiny_model_file) for a in argv])
    assert_one_line_error(code, err, f"{option} is empty", "unset shell variable")
    assert out == "" and contents(tmp_path) == before and [p for p in tmp_path.iterdir() if p.is_dir()] == []


@pytest.mark.parametrize("holds", ["nothing", "results only"])
def test_a_folder_without_images_says_so_and_does_not_blame_the_output(holds, tmp_path, capsys, tiny_model_file):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a scan", encoding="utf-8")
    if holds == "results only":
        sitk.WriteImage(phantom(size=(8, 8, 8))[1], str(folder / "alpha.seg.nrrd"))
    code, _, err = run(capsys, "segment", folder, "-o", tmp_path / "results", "--model", tiny_model_file)
    assert_one_line_error(code, err, f"folder {folder} holds no image file", "without a DICOM series")
    assert ("only .seg.nrrd results" in err) == (holds == "results only")
    assert "output format" not in err and not (tmp_path / "results").exists()


# 2. no output may be an input ---------------------------------------------------------------------------------------
def test_the_summary_may_not_be_the_cases_csv_even_with_overwrite(tmp_path, capsys, tiny_model_file):
    write_scans(tmp_path / "scans", ["alpha.nrrd"], size=(16, 16, 12))
    listing = tmp_path / "cases.csv"
    listing.write_text(f"id,image\nalpha,{tmp_path / 'scans' / 'alpha.nrrd'}\n", encoding="utf-8")
    before = listing.read_bytes()
    code, _, err = run(capsys, "segment", listing, "-o", tmp_path / "out", "--summary", listing, "--overwrite",
                       "--model", tiny_model_file, "--device", "cpu")
    assert_one_line_error(code, err, "summary", "is the cases CSV")
    assert listing.read_bytes() == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["-o", "--probabilities", "--uncertainty"])
def test_no_output_may_be_a_model_file(option, tmp_path, capsys, image_file):
    model = save_model(tiny_model(), tmp_path / "model.nrrd")  # a model file under an image's name
    before = model.read_bytes()
    outputs = {"-o": tmp_path / "labels.nrrd", option: model}
    argv = [a for pair in outputs.items() for a in pair]
    code, _, err = run(capsys, "segment", image_file, *argv, "--model", model, "--overwrite", "--device", "cpu")
    assert_one_line_error(code, err, "is the model")
    assert model.read_bytes() == before and not (tmp_path / "labels.nrrd").exists()


def test_no_batch_output_may_be_a_model_file(tmp_path, capsys):
    write_scans(tmp_path / "scans", ["alpha.nrrd"], size=(16, 16, 12))
    (tmp_path / "out").mkdir()
    model = save_model(tiny_model(), tmp_path / "out" / "alpha.seg.nrrd")  # where alpha's output would go
    before = model.read_bytes()
    code, _, err = run(capsys, "segment", tmp_path / "scans", "-o", tmp_path / "out", "--model", model, "--overwrite",
                       "--device", "cpu")
    assert_one_line_error(code, err, "alpha.seg.nrrd", "is the model")
    assert model.read_bytes() == before


# 3. the memory-budget error suggests only what works ---------------------------------------------------------------
SUGGESTIONS = re.compile(r"--spacing [0-9. ]+?(?= --| or |\)|$)(?: --allow-extrapolation)?|--max-memory \d+")


@pytest.mark.parametrize("options", [
    ["--spacing", "3", "--max-memory", "1"],  # no spacing of the range 0.8-3.5 mm fits: was told 4.00 mm (clamped)
    ["--spacing", "1.1", "--max-memory", "1.5"],  # a spacing of the range fits, but not the 1.48 mm once suggested
])
def test_following_the_memory_error_works(options, image_file, tmp_path, capsys, tiny_model_file):
    output = tmp_path / "out.nrrd"
    base = ["segment", image_file, "-o", output, "--model", tiny_model_file, "--device", "cpu", "--quiet"]
    code, _, err = run(capsys, *base, *options)
    assert_one_line_error(code, err, "MB")
    suggestions = SUGGESTIONS.findall(err.strip().splitlines()[-1])
    assert suggestions, err
    for suggestion in suggestions:
        words = suggestion.split()
        if words[0] == "--spacing" and "--allow-extrapolation" not in words:
            assert all(0.8 <= float(v) <= 3.5 for v in words[1:]), err  # in the trained range: not clamped
        given = dict(zip(options[::2], options[1::2]))
        given.update({words[0]: " ".join(v for v in words[1:] if not v.startswith("--"))})
        argv = [a for key, value in given.items() for a in (key, *value.split())]
        argv += [w for w in words if w == "--allow-extrapolation"]
        code, _, err_after = run(capsys, *base, *argv, "--overwrite")
        assert code == 0, f"following '{suggestion}' of\n{err}\ngave\n{err_after}"
        assert output.exists()
        output.unlink()


# 11. batches ---------------------------------------------------------------------------------------------------------
needs_default_models = pytest.mark.skipif(not (DEFAULT_MODEL.exists() and DEFAULT_MODEL_2D.exists()),
                                          reason="the embedded models are not built")


@needs_default_models
def test_a_2d_image_in_a_batch_of_volumes_fails_clearly(tmp_path, capsys):
    scans = tmp_path / "scans"
    write_scans(scans, ["alpha.nrrd", "beta.nii.gz"], size=(20, 20, 16))
    picture = (np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(scans / "flat.png"))
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", scans, "-o", out, "--device", "cpu", "--spacing", "3", "--quiet")
    assert code == 1, err
    rows = read_summary(out / "summary.csv")
    assert [rows[i]["status"] for i in ("alpha", "beta", "flat")] == ["done", "done", "failed"]
    assert "2D image in a batch of volumes" in rows["flat"]["error"]
    assert not (out / "flat.seg.nrrd").exists()
    # pictures alone still go to the 2D model, with its labels
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (scans / "flat.png").rename(pictures / "flat.png")
    code, _, err = run(capsys, "segment", pictures, "-o", tmp_path / "out2", "--device", "cpu", "--quiet",
                       "--output-suffix", ".png")
    assert code == 0, err


def test_a_glob_leaves_out_earlier_results(tmp_path):
    write_scans(tmp_path, ["alpha.nrrd", "beta.nrrd"], size=(8, 8, 8))
    sitk.WriteImage(phantom(size=(8, 8, 8))[1], str(tmp_path / "alpha.seg.nrrd"))
    cases, batch = collect_cases([str(tmp_path / "*.nrrd")])
    assert batch and [c.id for c in cases] == ["alpha", "beta"]


def test_a_rerun_into_the_scans_folder_leaves_out_its_own_outputs(tmp_path, capsys, tiny_model_file):
    scans = tmp_path / "scans"
    write_scans(scans, ["alpha.nrrd", "beta.nrrd"], size=(16, 16, 12))
    argv = ["segment", scans, "-o", scans, "--output-suffix", "_labels.nii.gz", "--model", tiny_model_file,
            "--device", "cpu", "--spacing", "2", "--quiet"]
    assert run(capsys, *argv)[0] == 0
    first = contents(scans)
    code, _, err = run(capsys, *argv, "--overwrite")  # the outputs are no scans of the second run
    assert code == 0, err
    assert "2 file(s) found are outputs of this batch" not in err  # --quiet
    assert list(read_summary(scans / "summary.csv")) == ["alpha", "beta"]
    assert sorted(contents(scans)) == sorted(first) == [
        "alpha.nrrd", "alpha_labels.nii.gz", "beta.nrrd", "beta_labels.nii.gz", "summary.csv"]


def test_a_rerun_into_the_scans_folder_leaves_out_outputs_that_share_a_scans_id(tmp_path, capsys, tiny_model_file):
    scans = tmp_path / "scans"
    write_scans(scans, ["alpha.nrrd", "beta.nrrd"], size=(16, 16, 12))
    argv = ["segment", scans, "-o", scans, "--output-suffix", ".nii.gz", "--model", tiny_model_file,
            "--device", "cpu", "--spacing", "2", "--quiet"]
    assert run(capsys, *argv)[0] == 0  # alpha.nii.gz next to alpha.nrrd: the same id
    first = contents(scans)
    (scans / "beta.nii.gz").unlink()  # as if the first run had stopped before beta
    code, _, err = run(capsys, *argv, "--skip-existing")
    assert code == 0, err
    rows = read_summary(scans / "summary.csv")
    assert {k: rows[k]["status"] for k in rows} == {"alpha": "skipped", "beta": "done"}
    assert contents(scans)["alpha.nii.gz"] == first["alpha.nii.gz"] and (scans / "beta.nii.gz").is_file()
    assert run(capsys, *argv, "--overwrite")[0] == 0


@pytest.mark.parametrize("problem", ["file name as folder", "empty suffix", "picture for volumes"])
def test_batch_output_names_are_checked_before_any_work(problem, tmp_path, capsys, tiny_model_file):
    write_scans(tmp_path / "scans", ["alpha.nrrd", "beta.nrrd"], size=(16, 16, 12))
    out, extra = tmp_path / "out", []
    if problem == "file name as folder":
        out, words = tmp_path / "out.nrrd", ["-o", "out.nrrd", "looks like a file name", "folder"]
    elif problem == "empty suffix":
        extra, words = ["--output-suffix", ""], ["--output-suffix is empty", "unset shell variable"]
    else:
        extra, words = ["--output-suffix", ".png"], ["case alpha", "volume of 16 x 16 x 12", "picture"]
    code, stdout, err = run(capsys, "segment", tmp_path / "scans", "-o", out, "--model", tiny_model_file,
                            "--device", "cpu", *extra)
    assert_one_line_error(code, err, *words)
    assert "load model" not in err and stdout == "" and not out.exists()


def interrupt_at_case(monkeypatch, number):
    """Make the batch's case ``number`` (1-based) end in a KeyboardInterrupt, as Ctrl+C does."""
    segment_case, calls = segment_batch.segment_case, []

    def segment(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return segment_case(*args, **kwargs)

    monkeypatch.setattr(segment_batch, "segment_case", segment)


def test_an_interrupted_batch_writes_the_summary_of_its_cases_and_continues_with_skip_existing(
        tmp_path, capsys, monkeypatch, tiny_model_file):
    write_scans(tmp_path / "scans", size=(16, 16, 12))
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "scans", "-o", out, "--model", tiny_model_file, "--device", "cpu", "--spacing", "2",
            "--quiet"]
    with monkeypatch.context() as patch:
        interrupt_at_case(patch, 2)
        code, _, err = run(capsys, *argv)
    assert code == 130 and "cancelled" in err and "Traceback" not in err
    rows = read_summary(out / "summary.csv")
    assert [(i, r["status"]) for i, r in rows.items()] == [("alpha", "done"), ("beta", "cancelled")]
    assert sorted(contents(out)) == ["alpha.seg.nrrd", "summary.csv"]  # nothing of beta, no temporary file
    alpha = (out / "alpha.seg.nrrd").read_bytes()

    code, stdout, err = run(capsys, *argv, "--skip-existing", "--overwrite")
    assert_one_line_error(code, err, "--skip-existing", "--overwrite")

    code, stdout, err = run(capsys, *[a for a in argv if a != "--quiet"], "--skip-existing")
    assert code == 0, err
    rows = read_summary(out / "summary.csv")
    assert [(i, r["status"]) for i, r in rows.items()] == [("alpha", "skipped"), ("beta", "done"), ("gamma", "done")]
    assert rows["alpha"]["output"] == str(out / "alpha.seg.nrrd")
    assert "segmented 2 of 3 cases" in stdout and "1 skipped" in stdout, stdout
    assert (out / "alpha.seg.nrrd").read_bytes() == alpha  # kept as it was
    assert sorted(contents(out)) == ["alpha.seg.nrrd", "beta.seg.nrrd", "gamma.seg.nrrd", "summary.csv"]


def test_skip_existing_keeps_a_file_that_is_no_summary_and_needs_a_batch(tmp_path, capsys, tiny_model_file):
    scans = write_scans(tmp_path / "scans", ["alpha.nrrd"], size=(16, 16, 12))
    mine = tmp_path / "out" / "summary.csv"
    mine.parent.mkdir()
    mine.write_text("my,own,table\n1,2,3\n", encoding="utf-8")
    code, _, err = run(capsys, "segment", tmp_path / "scans", "-o", tmp_path / "out", "--model", tiny_model_file,
                       "--skip-existing")
    assert_one_line_error(code, err, "summary.csv", "no summary")
    assert mine.read_text() == "my,own,table\n1,2,3\n"
    code, _, err = run(capsys, "segment", scans[0], "-o", tmp_path / "one.nrrd", "--model", tiny_model_file,
                       "--skip-existing")
    assert_one_line_error(code, err, "--skip-existing", "batch")


# 13. smaller ones --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["one option", "two options", "a copy"])
def test_the_same_model_twice_is_no_ensemble(form, image_file, tmp_path, capsys, tiny_model_file):
    models = {"one option": ["--model", tiny_model_file, tiny_model_file],
              "two options": ["--model", tiny_model_file, "--model", tiny_model_file],
              "a copy": ["--model", tiny_model_file, save_model(tiny_model(), tmp_path / "copy.pt")]}[form]
    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "out.nrrd", *models)
    assert_one_line_error(code, err, "same weights" if form == "a copy" else "given twice", "each model once")
    assert not (tmp_path / "out.nrrd").exists()


def test_model_given_twice_as_an_option_makes_an_ensemble(image_file, tmp_path, capsys, tiny_model_file):
    flat = save_model(tiny_model(dim=2), tmp_path / "flat.pt")  # both are used: their dimensions differ
    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "out.nrrd", "--model", tiny_model_file,
                       "--model", flat, "--device", "cpu")
    assert_one_line_error(code, err, "3D model but", "same dimensions")


@pytest.mark.parametrize("options, words", [
    (["--remove-smaller-than", "10", "2", "--remove-smaller-than", "20", "1", "2"], ["label 2", "two sizes"]),
    (["--remove-smaller-than", "10", "--remove-smaller-than", "20", "1"], ["label 1", "two sizes"]),
    (["--remove-smaller-than", "10", "--remove-smaller-than", "20"], ["every class", "two sizes"]),
])
def test_one_class_gets_one_size(options, words, image_file, tmp_path, capsys, tiny_model_file):
    code, _, err = run(capsys, "segment", image_file, "-o", tmp_path / "out.nrrd", "--model", tiny_model_file,
                       *options)
    assert_one_line_error(code, err, *words)


def test_a_semicolon_csv_gets_a_hint_at_the_delimiter(tmp_path, capsys, tiny_model_file):
    write_scans(tmp_path / "scans", ["alpha.nrrd"], size=(8, 8, 8))
    listing = tmp_path / "cases.csv"
    listing.write_text("id;image\nalpha;scans/alpha.nrrd\n", encoding="utf-8")
    code, _, err = run(capsys, "segment", listing, "-o", tmp_path / "out", "--model", tiny_model_file)
    assert_one_line_error(code, err, "semicolons", "commas")


@pytest.mark.parametrize("case_id, words", [
    ("..", ["'..'", "names a folder"]), ("..x", ["'..x'", "hidden file"]), ("a:b", ["':'"]), ("x.", ["ends in"]),
    ("nul", ["device name"]),
])
def test_case_ids_that_cannot_name_a_file(case_id, words, tmp_path, capsys, tiny_model_file):
    write_scans(tmp_path / "scans", ["alpha.nrrd"], size=(8, 8, 8))
    listing = tmp_path / "cases.csv"
    with open(listing, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["id", "image"], [case_id, "scans/alpha.nrrd"]])
    code, _, err = run(capsys, "segment", listing, "-o", tmp_path / "out", "--model", tiny_model_file)
    assert_one_line_error(code, err, "line 2", *words)
    assert not (tmp_path / "out").exists()


def test_when_no_spacing_fits_the_memory_error_suggests_none(monkeypatch, image_file):
    """The input grid's own arrays need memory at any working spacing: with too little free, no --spacing helps."""
    from HyperSpaceSegmentationLib import system
    from HyperSpaceSegmentationLib.errors import UserError
    from HyperSpaceSegmentationLib.inference import Segmenter

    monkeypatch.setattr(system, "available_memory_mb", lambda device: 1.0)
    image = sitk.ReadImage(str(image_file))
    segmenter = Segmenter(tiny_model(), device="cpu")
    with pytest.raises(UserError, match="free memory on cpu") as raised:
        segmenter.check_memory(image, (3.5, 3.5, 3.5), allow_extrapolation=True)
    assert "--spacing" not in str(raised.value) and "--max-memory" not in str(raised.value)


def test_a_spacing_beyond_the_trained_range_is_suggested_only_with_allow_extrapolation():
    """Only a spacing coarser than the trained range (0.8-3.5 mm) fits the budget: without --allow-extrapolation,
    such a spacing is clamped to 3.5 mm, so the advice must add the flag (or suggest something else that fits)."""
    from HyperSpaceSegmentationLib.errors import UserError
    from HyperSpaceSegmentationLib.inference import Segmenter

    image = sitk.Image([256, 256, 200], sitk.sitkFloat32)  # the estimate reads the grid alone
    segmenter = Segmenter(tiny_model(), device="cpu", max_memory_mb=305)
    assert segmenter.estimate_memory_mb(image, (3.5,) * 3) > 305  # the coarsest trained spacing does not fit
    with pytest.raises(UserError) as raised:
        segmenter.check_memory(image, (3.0,) * 3, allow_extrapolation=False)
    suggestions = SUGGESTIONS.findall(str(raised.value))
    assert any(s.startswith("--spacing") for s in suggestions), raised.value
    for suggestion in suggestions:
        words = suggestion.split()
        if words[0] == "--spacing":
            spacing = tuple(float(v) for v in words[1:] if not v.startswith("--"))
            extrapolate = "--allow-extrapolation" in words
            assert extrapolate or max(spacing) <= 3.5, raised.value  # would be clamped, and fail again
            assert segmenter.check_memory(image, spacing, allow_extrapolation=extrapolate) <= 305
