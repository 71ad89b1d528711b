"""`hyperspace evaluate --paths-csv`: spreadsheet-made and broken case lists, failed cases and the printed summary."""

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def masks(tmp_path):
    """Three label maps on one 1 mm grid: a cube, the same cube, and a disjoint cube of the same size."""
    paths = {}
    for name, start in (("ref", 2), ("same", 2), ("apart", 12)):
        array = np.zeros((8, 8, 20), np.uint8)
        array[2:6, 2:6, start:start + 4] = 1
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(paths[name]))
    return paths


def write_csv(tmp_path, text, encoding="utf-8", name="cases.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def table_value(out, label, metric_column=0):
    """The value printed for class ``label`` in the class-by-metric table."""
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == label:
            return float(fields[1 + metric_column])
    raise AssertionError(f"class {label} not in the output:\n{out}")


def test_batch_without_output_prints_the_mean_over_cases(tmp_path, capsys, masks):
    cases = write_csv(tmp_path, "id,mask,prediction\nperfect,ref.nii.gz,same.nii.gz\nmissed,ref.nii.gz,apart.nii.gz\n")
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases, "--metrics", "dice", "recall")
    assert code == 0, err
    assert table_value(out, "1", 0) == pytest.approx(0.5)  # Dice 1 and 0
    assert table_value(out, "1", 1) == pytest.approx(0.5)
    assert "-o results.csv" in out
    assert not list(tmp_path.glob("*results*"))


def test_spreadsheet_export_with_bom_crlf_and_spaces_is_read(tmp_path, capsys, masks):
    text = "id, mask, prediction\r\nperfect, ref.nii.gz, same.nii.gz\r\n,,\r\nmissed, ref.nii.gz, apart.nii.gz\r\n"
    cases = write_csv(tmp_path, text, encoding="utf-8-sig")
    output = tmp_path / "results.csv"
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases, "--metrics", "dice", "-o", output)
    assert code == 0, err
    lines = output.read_text().splitlines()
    assert lines[0] == "id,1_dice,1_empty"
    assert lines[1].startswith("perfect,1,") and lines[2].startswith("missed,0,")
    assert table_value(out, "1") == pytest.approx(0.5)


@pytest.mark.parametrize("problem, text, expected", [
    ("short row", "id,mask,prediction\na,ref.nii.gz\n", "line 2 has no prediction"),
    ("long row", "id,mask,prediction\na,ref.nii.gz,same.nii.gz,x\n", "line 2 has more values"),
    ("header only", "id,mask,prediction\r\n", "lists no cases"),
    ("empty file", "", "lacks the column(s) id, mask, prediction"),
    ("wrong columns", "case,reference,prediction\na,ref.nii.gz,same.nii.gz\n", "lacks the column(s) id, mask"),
    ("duplicate id", "id,mask,prediction\na,ref.nii.gz,same.nii.gz\nb,ref.nii.gz,same.nii.gz\na,ref.nii.gz,apart.nii.gz\n",
     "id 'a' appears on lines 2 and 4"),
])
def test_malformed_case_lists_give_one_line_errors(tmp_path, capsys, masks, problem, text, expected):
    code, out, err = run(capsys, "evaluate", "--paths-csv", write_csv(tmp_path, text), "-o", tmp_path / "results.csv")
    assert code == 2 and err.startswith("hyperspace: error:") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"id,mask,prediction\na,ref\x00.nii.gz,b\n"])
def test_binary_file_as_case_list_gives_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "cases.csv"
    path.write_bytes(content)
    code, _, err = run(capsys, "evaluate", "--paths-csv", path)
    assert code == 2 and err.count("\n") == 1 and "not a readable UTF-8 CSV" in err, err


def test_batch_in_which_every_case_failed_exits_2(tmp_path, capsys, masks):
    cases = write_csv(tmp_path, "id,mask,prediction\na,ref.nii.gz,gone.nii.gz\nb,gone.nii.gz,same.nii.gz\n")
    output = tmp_path / "results.csv"
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases, "-o", output)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("hyperspace: error: all 2 cases failed")
    assert any(line.startswith("hyperspace: case a failed:") and "gone.nii.gz" in line for line in lines)
    assert not output.exists() and out == ""


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_workers_below_one_are_refused(tmp_path, capsys, masks, workers):
    cases = write_csv(tmp_path, "id,mask,prediction\na,ref.nii.gz,same.nii.gz\n")
    code, _, err = run(capsys, "evaluate", "--paths-csv", cases, "--workers", workers)
    assert code == 2 and err.count("\n") == 1 and f"--workers {workers}" in err, err


def test_output_that_is_the_case_list_is_refused_even_with_overwrite(tmp_path, capsys, masks):
    cases = write_csv(tmp_path, "id,mask,prediction\na,ref.nii.gz,same.nii.gz\n")
    before = cases.read_bytes()
    code, _, err = run(capsys, "evaluate", "--paths-csv", cases, "-o", tmp_path / "." / "cases.csv", "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "is the paths CSV" in err, err
    assert cases.read_bytes() == before


def test_a_folder_as_case_list_is_called_a_folder(tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "--paths-csv", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "is a folder" in err and "does not exist" not in err, err


def test_a_class_in_some_cases_only_scores_perfect_where_absent(tmp_path, capsys, masks):
    array = np.zeros((8, 8, 20), np.uint8)
    array[2:6, 2:6, 2:6] = 2
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "two.nii.gz"))
    cases = write_csv(tmp_path, "id,mask,prediction\none,ref.nii.gz,same.nii.gz\ntwo,two.nii.gz,two.nii.gz\n")
    output = tmp_path / "results.csv"
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases, "--metrics", "dice", "haus95", "-o", output)
    assert code == 0, err
    lines = output.read_text().splitlines()
    assert lines[0] == "id,1_dice,1_haus95,1_empty,2_dice,2_haus95,2_empty"
    assert lines[1] == "one,1,0,none,1,0,both" and lines[2] == "two,1,0,both,1,0,none"
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert sorted(notes) == [f"note: class {label} is in neither the reference nor the prediction ({case}), so it scores "
                             "as a perfect match (MIST's convention): check the class list if that is unexpected"
                             for label, case in (("1", "two"), ("2", "one"))]


def test_a_batch_with_no_foreground_anywhere_is_an_error(tmp_path, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8)), str(tmp_path / "empty.nii.gz"))
    cases = write_csv(tmp_path, "id,mask,prediction\na,empty.nii.gz,empty.nii.gz\n")
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases)
    errors = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert code == 2 and len(errors) == 1 and "no foreground label in any case" in errors[0] and out == "", err


def test_workers_are_capped_at_the_number_of_cases(tmp_path, masks, monkeypatch):
    from HyperSpaceSegmentationLib.evaluation import evaluate as module

    sizes = []
    real = module.ProcessPoolExecutor
    monkeypatch.setattr(module, "ProcessPoolExecutor", lambda max_workers: sizes.append(max_workers) or real(max_workers))
    cases = [{"id": name, "mask": str(masks["ref"]), "prediction": str(masks[name])} for name in ("same", "apart")]
    rows = module.evaluate_batch(cases, None, ["dice"], 1.0, workers=1000)
    assert [row["1_dice"] for row in rows] == [1.0, 0.0] and sizes == [min(2, module.os.cpu_count() or 1)]


def test_std_summary_row_is_the_population_std_like_mist(tmp_path, capsys, masks):
    """MIST summarises with np.nanstd (ddof 0): Dice 1 and 0 have Std 0.5, not the sample std 0.707."""
    cases = write_csv(tmp_path, "id,mask,prediction\nperfect,ref.nii.gz,same.nii.gz\nmissed,ref.nii.gz,apart.nii.gz\n")
    output = tmp_path / "results.csv"
    code, _, err = run(capsys, "evaluate", "--paths-csv", cases, "--metrics", "dice", "-o", output)
    assert code == 0, err
    table = {line.split(",")[0]: line.split(",")[1] for line in output.read_text().splitlines()[1:]}
    assert float(table["perfect"]) == 1.0 and float(table["missed"]) == 0.0
    assert float(table["Mean"]) == pytest.approx(0.5)
    assert float(table["Std"]) == pytest.approx(0.5)


def test_existing_output_is_refused_before_reading_the_images(tmp_path, capsys, masks):
    """Without --overwrite an existing results file is the error, found before any work: not the missing
    prediction, which would only be found by reading it; the file is left as it was."""
    output = tmp_path / "results.csv"
    output.write_text("earlier results\n")
    code, _, err = run(capsys, "evaluate", masks["ref"], tmp_path / "missing.nii.gz", "-o", output)
    assert code == 2
    assert "exists" in err and "--overwrite" in err and str(output) in err, err
    assert "missing.nii.gz" not in err and "does not exist" not in err, err
    assert output.read_text() == "earlier results\n"
    cases = write_csv(tmp_path, "id,mask,prediction\nlost,ref.nii.gz,missing.nii.gz\n")
    code, _, err = run(capsys, "evaluate", "--paths-csv", cases, "-o", output)
    assert code == 2 and "exists" in err and "--overwrite" in err and "case lost failed" not in err, err
    assert output.read_text() == "earlier results\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_2d_prediction_for_a_volume_fails_that_case_only_even_with_resampling(tmp_path, capsys, masks, workers):
    """--resample-to-reference cannot turn a 2D image into a volume: that case fails with its reason, the others
    are scored (it crashed the whole batch)."""
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 20), np.uint8)), str(flat))
    cases = write_csv(tmp_path, f"id,mask,prediction\nflat,{masks['ref']},{flat}\ngood,{masks['ref']},{masks['same']}\n")
    output = tmp_path / "results.csv"
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases, "--resample-to-reference", "-o", output,
                         "--workers", workers, "--metrics", "dice")
    assert code == 0, err
    failure = [line for line in err.splitlines() if line.startswith("hyperspace: case flat failed:")]
    assert len(failure) == 1 and "different dimensions" in failure[0] and "is 3D" in failure[0], err
    assert "--resample-to-reference" not in failure[0] and "Traceback" not in err
    assert "mean over the 1 scored of 2 cases" in out and table_value(out, "1") == 1.0
    rows = output.read_text(encoding="utf-8").splitlines()
    assert rows[1].startswith("flat,,") and "different dimensions" in rows[1] and rows[2].startswith("good,1")


def test_an_unexpected_failure_of_one_case_does_not_end_the_batch(tmp_path, capsys, masks, monkeypatch):
    from HyperSpaceSegmentationLib.evaluation import evaluate as module

    real = module.evaluate_files

    def broken_for_one(reference, prediction, *args, **kwargs):
        if "apart" in str(prediction):
            raise RuntimeError("sitk::ERROR: something deep inside ITK\nsecond line")
        return real(reference, prediction, *args, **kwargs)

    monkeypatch.setattr(module, "evaluate_files", broken_for_one)
    cases = write_csv(tmp_path, f"id,mask,prediction\na,{masks['ref']},{masks['apart']}\nb,{masks['ref']},{masks['same']}\n")
    code, out, err = run(capsys, "evaluate", "--paths-csv", cases, "--metrics", "dice")
    assert code == 0, err
    assert "hyperspace: case a failed: could not be scored (RuntimeError: second line)" in err
    assert "mean over the 1 scored of 2 cases" in out


@pytest.mark.parametrize("delimiter, shown", [(";", "semicolons (;)"), ("\t", "tabs")])
def test_a_paths_csv_saved_with_semicolons_gets_a_hint_at_the_delimiter(tmp_path, capsys, delimiter, shown):
    listing = tmp_path / "cases.csv"
    listing.write_text(delimiter.join(["id", "mask", "prediction"]) + "\n" + delimiter.join(["a", "r.nrrd", "p.nrrd"])
                       + "\n", encoding="utf-8")
    code, out, err = run(capsys, "evaluate", "--paths-csv", listing)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"separates its columns with {shown}, not commas" in err and "id, mask and prediction" in err
