"""``hyperspace segment`` on many scans in one process: inputs as files, folders, glob patterns and CSV lists; outputs
named after the cases on their inputs' grids; failed cases skipped and reported; the summary CSV; shards and
torchrun; models and generated networks reused across cases; the area under the memory-time curve."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HyperSpaceSegmentationLib.cli import main
from HyperSpaceSegmentationLib.inference.cases import collect_cases
from HyperSpaceSegmentationLib.io.model_file import save_model
from HyperSpaceSegmentationLib.networks import HyperSpaceNet
from HyperSpaceSegmentationLib.progress import Reporter, parse_progress_line, progress_fraction

from conftest import OBLIQUE, phantom, tiny_model

GRIDS = {  # name: (spacing, origin, direction): every case on a grid of its own
    "alpha.nrrd": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), None),
    "beta.nii.gz": ((1.2, 1.1, 1.5), (3.0, -4.0, 9.0), OBLIQUE),
    "gamma.mha": ((0.9, 1.3, 1.0), (-7.0, 2.0, 1.0), None),
}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_scans(folder: Path, names=tuple(GRIDS), size=(24, 20, 16)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(names):
        spacing, origin, direction = GRIDS.get(name, GRIDS["alpha.nrrd"])
        image, _ = phantom(size=size, spacing=spacing, origin=origin, direction=direction, seed=seed)
        sitk.WriteImage(image, str(folder / name))
        paths.append(folder / name)
    return paths


def read_summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return {row["id"]: row for row in csv.DictReader(file)}


def assert_one_line_error(code, err, *words):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("hyperspace: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def test_batch_with_a_broken_case_writes_the_others_on_their_grids(tmp_path, capsys, tiny_model_file):
    scans = write_scans(tmp_path / "scans")
    broken = tmp_path / "scans" / "broken.nii.gz"
    broken.write_bytes(b"garbage" * 10)
    out = tmp_path / "results" / "new"  # created, parents included
    code, _, err = run(capsys, "segment", scans[0], broken, *scans[1:], "-o", out, "--model", tiny_model_file,
                       "--device", "cpu", "--output-suffix", "_labels.nii.gz")
    assert code == 1, err
    failures = [line for line in err.splitlines() if line.startswith("hyperspace: case broken")]
    assert len(failures) == 1 and "could not be read" in failures[0] and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [  # nothing of the broken case, no temporary file
        "alpha_labels.nii.gz", "beta_labels.nii.gz", "gamma_labels.nii.gz", "summary.csv"]
    for scan in scans:
        image = sitk.ReadImage(str(scan))
        labels = sitk.ReadImage(str(out / f"{scan.name.split('.')[0]}_labels.nii.gz"))
        assert labels.GetSize() == image.GetSize()
        assert np.allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-6)
        assert np.allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-5)
        assert np.allclose(labels.GetDirection(), image.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2}
    rows = read_summary(out / "summary.csv")
    assert list(rows) == ["alpha", "broken", "beta", "gamma"]  # the order given
    assert {k: r["status"] for k, r in rows.items()} == {"alpha": "done", "broken": "failed", "beta": "done",
                                                        "gamma": "done"}
    assert "could not be read" in rows["broken"]["error"] and rows["broken"]["output"] == ""
    assert rows["beta"]["output"] == str(out / "beta_labels.nii.gz") and rows["beta"]["input"] == str(scans[1])
    assert [float(v) for v in rows["beta"]["spacing_mm"].split()] == pytest.approx([1.2, 1.1, 1.5])
    for row in (rows["alpha"], rows["beta"], rows["gamma"]):
        assert row["error"] == "" and row["gpu_memory_time_mb_s"] == ""  # on the CPU: no GPU memory
        seconds, peak, area = float(row["seconds"]), float(row["peak_memory_mb"]), float(row["memory_time_mb_s"])
        assert 0 < area <= peak * seconds  # resident memory over the case's time, never above its peak


def test_a_case_in_a_batch_equals_the_same_scan_segmented_alone(tmp_path, capsys, tiny_model_file):
    scans = write_scans(tmp_path / "scans")
    alone = tmp_path / "alone.nrrd"
    assert run(capsys, "segment", scans[1], "-o", alone, "--model", tiny_model_file, "--device", "cpu",
               "--spacing", "2")[0] == 0
    code, out, err = run(capsys, "segment", tmp_path / "scans", "-o", tmp_path / "batch", "--model", tiny_model_file,
                         "--device", "cpu", "--spacing", "2", "--output-suffix", ".nrrd", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"] == str(tmp_path / "batch" / "summary.csv")
    assert [case["status"] for case in report["cases"]] == ["done"] * 3
    batch = sitk.ReadImage(str(tmp_path / "batch" / "beta.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(batch), sitk.GetArrayFromImage(sitk.ReadImage(str(alone))))


def test_models_segmenters_and_networks_are_built_once_per_batch(tmp_path, capsys, tiny_model_file, monkeypatch):
    from HyperSpaceSegmentationLib.inference import Segmenter
    from HyperSpaceSegmentationLib.io import model_file

    write_scans(tmp_path / "scans", ["one.nrrd", "two.nrrd", "three.nrrd"])  # one grid: one working grid at 2 mm
    calls = {"load": 0, "segmenter": [], "network": 0}
    load, init, generate = model_file.load_model, Segmenter.__init__, HyperSpaceNet.static_unet

    def counted_load(*a, **k):
        calls["load"] += 1
        return load(*a, **k)

    def counted_init(self, *a, **k):
        calls["segmenter"].append(k)
        init(self, *a, **k)

    def counted_generate(self, *a, **k):
        calls["network"] += 1
        return generate(self, *a, **k)

    monkeypatch.setattr(model_file, "load_model", counted_load)
    monkeypatch.setattr(Segmenter, "__init__", counted_init)
    monkeypatch.setattr(HyperSpaceNet, "static_unet", counted_generate)
    other = save_model(tiny_model(seed=1), tmp_path / "other.pt")  # the same model twice is refused
    code, _, err = run(capsys, "segment", tmp_path / "scans", "-o", tmp_path / "out", "--model", tiny_model_file,
                       other, "--device", "cpu", "--spacing", "2", "--max-memory", "1234", "--quiet")
    assert code == 0, err
    assert calls["load"] == 2  # each file read once, for all three cases
    assert len(calls["segmenter"]) == 2 and all(k["max_memory_mb"] == 1234 for k in calls["segmenter"])
    assert calls["network"] == 2  # one network per member, generated for the one working spacing
    assert len(read_summary(tmp_path / "out" / "summary.csv")) == 3


def test_csv_of_cases_with_relative_paths_and_outputs(tmp_path, capsys, tiny_model_file):
    write_scans(tmp_path / "data" / "images")
    (tmp_path / "data" / "own").mkdir()
    listing = tmp_path / "data" / "cases.csv"
    listing.write_bytes("\ufeffid, image, output\r\nfirst, images/gamma.mha,\r\n,,\r\nsecond, images/alpha.nrrd, "
                        "own/second.nii.gz\r\n".encode("utf-8"))
    code, _, err = run(capsys, "segment", listing, "-o", tmp_path / "out", "--model", tiny_model_file,
                       "--device", "cpu", "--spacing", "2.5", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.seg.nrrd", "summary.csv"]
    second = sitk.ReadImage(str(tmp_path / "data" / "own" / "second.nii.gz"))
    assert second.GetSize() == sitk.ReadImage(str(tmp_path / "data" / "images" / "alpha.nrrd")).GetSize()
    rows = read_summary(tmp_path / "out" / "summary.csv")
    assert rows["first"]["input"] == str(tmp_path / "data" / "images" / "gamma.mha")
    assert rows["second"]["output"] == str(tmp_path / "data" / "own" / "second.nii.gz")
    assert [r["status"] for r in rows.values()] == ["done", "done"] and err == ""


def test_folders_and_glob_patterns_list_their_scans(tmp_path):
    folder = tmp_path / "scans"
    write_scans(folder, ["b.nii.gz", "a.nrrd", "c.seg.nrrd", "d.nii"])
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".hidden.nrrd").write_text("a temporary file of another run")
    cases, batch = collect_cases([str(folder)])
    assert batch and [(c.id, Path(c.image).name) for c in cases] == [("a", "a.nrrd"), ("b", "b.nii.gz"), ("d", "d.nii")]
    cases, batch = collect_cases([str(folder / "*.ni*")])
    assert batch and [c.id for c in cases] == ["b", "d"] and [c.index for c in cases] == [0, 1]
    cases, batch = collect_cases([str(folder / "a.nrrd")])
    assert not batch and [c.id for c in cases] == ["a"]  # one file: -o names the output file, as always


def test_a_folder_of_dicom_series_folders_is_a_batch(tmp_path, capsys, tiny_model_file):
    from test_cli import write_dicom_series

    (tmp_path / "study").mkdir()
    for name, origin in (("p1", (0.0, 0.0, 0.0)), ("p2", (5.0, -3.0, 2.0))):
        write_dicom_series(phantom(size=(16, 16, 8), spacing=(1.0, 1.0, 2.0), origin=origin)[0],
                           tmp_path / "study" / name)
    cases, batch = collect_cases([str(tmp_path / "study" / "p1")])
    assert not batch and [c.id for c in cases] == ["p1"]  # one series: as always
    code, _, err = run(capsys, "segment", tmp_path / "study", "-o", tmp_path / "out", "--model", tiny_model_file,
                       "--device", "cpu", "--output-suffix", ".nrrd", "--quiet")
    assert code == 0, err
    for name in ("p1", "p2"):
        labels = sitk.ReadImage(str(tmp_path / "out" / f"{name}.nrrd"))
        series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "study" / name)))
        assert labels.GetSize() == series.GetSize() and np.allclose(labels.GetOrigin(), series.GetOrigin())


@pytest.mark.parametrize("problem", ["duplicate id", "output exists", "output is an input", "no match",
                                     "review maps", "bad suffix", "bad shard", "bad memory budget"])
def test_usage_errors_stop_the_batch_before_any_work(problem, tmp_path, capsys, tiny_model_file):
    scans = write_scans(tmp_path / "scans")
    out = tmp_path / "out"
    inputs, extra, words = [tmp_path / "scans"], [], []
    if problem == "duplicate id":
        write_scans(tmp_path / "more", ["Alpha.nii.gz"])
        inputs.append(tmp_path / "more" / "Alpha.nii.gz")
        words = ["alpha", "own id"]
    elif problem == "output exists":
        out.mkdir()
        (out / "gamma.seg.nrrd").write_text("an earlier result")
        words = ["gamma.seg.nrrd", "exists", "--overwrite"]
    elif problem == "output is an input":
        listing = tmp_path / "cases.csv"
        listing.write_text(f"id,image,output\nx,{scans[1]},{scans[0]}\ny,{scans[0]},\n")
        inputs, words = [listing], ["alpha.nrrd", "is the input"]
    elif problem == "no match":
        inputs, words = [tmp_path / "scans" / "*.png"], ["no image file", "matches"]
    elif problem == "review maps":
        extra, words = ["--uncertainty", tmp_path / "u.nrrd"], ["--uncertainty", "one input"]
    elif problem == "bad suffix":
        extra, words = ["--output-suffix", ".txt"], ["--output-suffix", ".seg.nrrd"]
    elif problem == "bad shard":
        extra, words = ["--shard", "3/2"], ["--shard", "1 to n"]
    else:
        extra, words = ["--max-memory", "0"], ["--max-memory", "positive"]
    code, out_text, err = run(capsys, "segment", *inputs, "-o", out, "--model", tiny_model_file, "--device", "cpu",
                              *extra)
    assert_one_line_error(code, err, *words)
    assert "load model" not in err and out_text == ""
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == (["gamma.seg.nrrd"] if problem == "output exists" else [])  # the folder made is removed again


def test_shards_segment_every_case_exactly_once(tmp_path, capsys, tiny_model_file):
    names = [f"case{i}.nrrd" for i in range(5)]
    write_scans(tmp_path / "scans", names, size=(16, 16, 12))
    seen = []
    for part in (1, 2):
        code, _, err = run(capsys, "segment", tmp_path / "scans", "-o", tmp_path / "out", "--model", tiny_model_file,
                           "--device", "cpu", "--spacing", "2", "--shard", f"{part}/2", "--quiet")
        assert code == 0, err
        rows = read_summary(tmp_path / "out" / f"summary-shard-{part}-of-2.csv")
        assert all(row["status"] == "done" for row in rows.values())
        seen.append(list(rows))
    assert seen == [["case0", "case2", "case4"], ["case1", "case3"]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".nrrd") == \
        [f"case{i}.seg.nrrd" for i in range(5)]


def test_torchrun_shares_the_cases_and_writes_one_summary(tmp_path, tiny_model_file):
    write_scans(tmp_path / "scans", size=(16, 16, 12))
    broken = tmp_path / "scans" / "zeta.nrrd"
    broken.write_text("not an image")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m",
         "HyperSpaceSegmentationLib.cli", "segment", str(tmp_path / "scans"), "-o", str(tmp_path / "out"), "--model",
         str(tiny_model_file), "--device", "cpu", "--spacing", "2"],
        capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode != 0  # rank 1 had the broken case
    rows = read_summary(tmp_path / "out" / "summary.csv")
    assert list(rows) == ["alpha", "beta", "gamma", "zeta"]
    assert [r["status"] for r in rows.values()] == ["done", "done", "done", "failed"]
    assert "segmented 2 of 2 cases" in result.stdout and "segmented 1 of 2 cases" in result.stdout, result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "alpha.seg.nrrd", "beta.seg.nrrd", "gamma.seg.nrrd", "summary.csv"]


def test_progress_lines_carry_the_case(tmp_path, capsys, tiny_model_file):
    write_scans(tmp_path / "scans", ["one.nrrd", "two.nrrd"], size=(16, 16, 12))
    code, _, err = run(capsys, "segment", tmp_path / "scans", "-o", tmp_path / "out", "--model", tiny_model_file,
                       "--device", "cpu", "--quiet", "--progress-lines")
    assert code == 0
    events = [e for e in map(parse_progress_line, err.splitlines()) if e]
    assert {(e["case"], e["cases"], e["id"]) for e in events} == {(1, 2, "one"), (2, 2, "two")}
    fractions = [progress_fraction(e) for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 0.0
    assert max(f for f, e in zip(fractions, events) if e["case"] == 1) == 0.5


def test_single_scan_json_reports_the_memory_time_area(tmp_path, capsys, tiny_model_file):
    scan = write_scans(tmp_path, ["alpha.nrrd"])[0]
    code, out, _ = run(capsys, "segment", scan, "-o", tmp_path / "alpha.seg.nrrd", "--model", tiny_model_file,
                       "--device", "cpu", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["gpu_memory_time_mb_s"] is None
    stages = summary["stages"]
    assert all(s["memory_time_mb_s"] > 0 and s["gpu_memory_time_mb_s"] is None for s in stages)
    assert summary["memory_time_mb_s"] == pytest.approx(sum(s["memory_time_mb_s"] for s in stages), abs=0.5)


def test_memory_time_area_follows_the_resident_memory():
    """Holding 200 MB more for the second half of a stage adds about 200 MB times that half to its area."""
    reporter = Reporter(stages=2, quiet=True)
    for hold in (False, True):
        with reporter.stage("hold"):
            time.sleep(0.25)
            block = np.ones(200 * 2**20 // 8) if hold else None  # written, so resident
            time.sleep(0.25)
            del block
    idle, held = reporter.records
    base = idle.memory_time_mb_s / idle.seconds  # the mean resident memory without the block
    extra = held.memory_time_mb_s / held.seconds - base
    assert 60 < extra < 140  # about 200 MB for half the time: 100 MB on average
    assert held.peak_memory_mb > idle.peak_memory_mb + 150
