"""The Slicer module's warm engine (``worker.py`` and ``mrml_logic.WarmEngine``) with real processes on real MRML nodes
(slicer-core, headless): a second run loads no model again and gives the one-shot command line's labels; Cancel kills
the worker and the next run starts a fresh one; a worker killed during a job fails that job with a message; a user
error leaves the worker up; a second job while one runs gets a process of its own; the worker ends when its stdin
closes (Slicer's exit). No GPU needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import asymmetric_phantom
from HyperSpaceSegmentationLib.errors import UserError
from test_mrml_logic import labels_on_volume_grid, logic, model_file, scene, volume_node  # noqa: F401  (fixtures)
from test_mrml_review import cli_segment


@pytest.fixture
def engine(logic):
    """The session's warm engine of the logic's Python, stopped before and after the test (a fresh worker)."""
    logic.stop_engine()
    engine = logic.engine()
    engine.started = 0  # counts the workers started in this test
    yield engine
    logic.stop_engine()


def started(job, timeout: float = 120.0) -> None:
    """Poll ``job`` until the engine has written a line of this job (it is then under way)."""
    deadline = time.monotonic() + timeout
    while not job.log and job.poll() == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.status == "running", job.error


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_second_run_at_another_spacing_loads_no_model_and_matches_the_command_line(scene, logic, engine, tmp_path,
                                                                                   model_file):
    image, _ = asymmetric_phantom(size=(24, 22, 16))
    volume = volume_node(image)
    first = logic.segment(volume, 1.0, model=model_file, device="cpu", wait=False)
    first.wait(timeout=180)
    second = logic.segment(volume, 2.0, model=model_file, device="cpu", wait=False)
    result = second.wait(timeout=180)
    assert second.process.pid == first.process.pid and engine.started == 1 and engine.alive  # one worker
    assert first.worker_report["models_loaded"] == 1
    assert second.worker_report["models_loaded"] == 0 and second.worker_report["models_reused"] == 1
    assert second.worker_report["exit_code"] == 0 and second.progress == 1.0
    assert any(line.startswith("[3/6] predict") for line in second.log)  # the engine's own lines, as one-shot
    expected, _ = cli_segment(tmp_path, image, "--model", model_file, "--spacing", 2)
    assert (labels_on_volume_grid(result, volume) == expected).all()
    assert not os.path.exists(first.folder) and not os.path.exists(second.folder)
    again = logic.segment(volume, 2.0, model=model_file, device="cpu", wait=False)  # same spacing: cached network
    again.wait(timeout=180)
    assert again.worker_report["models_loaded"] == 0 and again.process.pid == first.process.pid


def test_a_worker_started_ahead_takes_the_first_run(scene, logic, engine, model_file):
    """What the module does on entry: the worker's imports are done before the first Apply, which it then runs."""
    assert logic.start_engine() and engine.started == 1
    worker = engine.process.pid
    assert logic.start_engine() and engine.started == 1  # one runs: no second
    job = logic.segment(volume_node(asymmetric_phantom(size=(20, 18, 16))[0]), 2.0, model=model_file, device="cpu",
                        wait=False)
    assert job.wait(timeout=180) is not None, job.error
    assert job.process.pid == worker and engine.started == 1 and job.worker_report["exit_code"] == 0
    logic.stop_engine()
    logic.warmEngine = False  # the setting that turns warm engines off: nothing started ahead either
    assert not logic.start_engine() and engine.started == 1


def test_cancel_kills_the_worker_and_the_next_run_starts_a_fresh_one(scene, logic, engine, model_file):
    volume = volume_node(asymmetric_phantom(size=(64, 64, 48))[0])
    job = logic.segment(volume, 1.0, model=model_file, device="cpu", wait=False)
    started(job)
    worker = job.process.pid
    job.cancel()
    assert job.status == "cancelled" and job.result is None and gone(worker)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    small = volume_node(asymmetric_phantom(size=(20, 18, 16))[0], name="small")
    after = logic.segment(small, 2.0, model=model_file, device="cpu", wait=False)
    assert after.wait(timeout=180) is not None
    assert after.process.pid != worker and engine.started == 2 and after.worker_report["models_loaded"] == 1


def test_a_worker_killed_during_a_job_fails_it_with_a_message_and_the_next_run_works(scene, logic, engine,
                                                                                     model_file):
    volume = volume_node(asymmetric_phantom(size=(64, 64, 48))[0])
    job = logic.segment(volume, 1.0, model=model_file, device="cpu", wait=False)
    started(job)
    worker = job.process.pid
    psutil.Process(worker).kill()  # a crash: out of memory, a segmentation fault
    with pytest.raises(RuntimeError, match=r"the engine worker stopped during the job \(exit code -?\d+\).*next run "
                                           "starts a new one"):
        job.wait(timeout=60)
    assert job.status == "failed" and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not os.path.exists(job.folder)
    result = logic.segment(volume_node(asymmetric_phantom(size=(20, 18, 16))[0], name="small"), 2.0,
                           model=model_file, device="cpu")
    assert result is not None and engine.started == 2 and engine.process.pid != worker


def test_a_user_error_leaves_the_worker_up(scene, logic, engine, tmp_path, model_file):
    volume = volume_node(asymmetric_phantom(size=(20, 18, 16))[0])
    logic.segment(volume, 2.0, model=model_file, device="cpu")
    worker = engine.process.pid
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    job = logic.segment(volume, 2.0, model=broken, device="cpu", wait=False)
    with pytest.raises(UserError, match=r"^model file .*broken.pt is corrupt or not a model"):
        job.wait(timeout=60)
    assert job.worker_report["exit_code"] == 2 and engine.alive and engine.process.pid == worker
    after = logic.segment(volume, 3.0, model=model_file, device="cpu", wait=False)
    after.wait(timeout=180)
    assert after.process.pid == worker and after.worker_report["models_loaded"] == 0


def test_a_run_while_the_worker_is_busy_gets_a_process_of_its_own(scene, logic, engine, model_file):
    volume = volume_node(asymmetric_phantom(size=(20, 18, 16))[0])
    first = logic.segment(volume, 2.0, model=model_file, device="cpu", wait=False)
    second = logic.segment(volume, 3.0, model=model_file, device="cpu", wait=False)
    assert second.process.pid != first.process.pid and second.process.args[1:3] == ["-m",
                                                                                  "HyperSpaceSegmentationLib.cli"]
    assert first.wait(timeout=180) is not None and second.wait(timeout=180) is not None
    assert second.worker_report is None and first.worker_report["exit_code"] == 0 and engine.alive


def test_one_process_per_run_when_the_warm_engine_is_off(scene, logic, engine, model_file):
    logic.warmEngine = False
    job = logic.segment(volume_node(asymmetric_phantom(size=(20, 18, 16))[0]), 2.0, model=model_file, device="cpu",
                        wait=False)
    assert job.wait(timeout=180) is not None and job.process.poll() == 0 and engine.started == 0


def test_an_engine_without_a_worker_runs_each_job_in_a_process_of_its_own(scene, logic, tmp_path, model_file):
    """An older engine (no worker.py) behind PythonSlicer: the job still runs, one-shot, and says why once."""
    if os.name == "nt":
        pytest.skip("the stand-in PythonSlicer is a POSIX shell script")
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text('#!/bin/sh\nif [ "$2" = HyperSpaceSegmentationLib.worker ]; then\n'
                        '  echo "No module named HyperSpaceSegmentationLib.worker"; exit 1\nfi\n'
                        f'exec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    logic.pythonExecutable = str(launcher)
    volume = volume_node(asymmetric_phantom(size=(20, 18, 16))[0])
    job = logic.segment(volume, 2.0, model=model_file, device="cpu", wait=False)
    assert job.wait(timeout=180) is not None and job.worker_report is None
    assert "the warm engine did not start (No module named HyperSpaceSegmentationLib.worker): each run starts its " \
           "own engine process" in job.log
    assert logic.engine().unavailable == "No module named HyperSpaceSegmentationLib.worker"
    second = logic.segment(volume, 3.0, model=model_file, device="cpu", wait=False)
    assert second.process.args[1:3] == ["-m", "HyperSpaceSegmentationLib.cli"]  # no second try
    assert second.wait(timeout=180) is not None and logic.engine().started == 1


def test_slicers_exit_ends_the_worker(scene, logic, engine, model_file):
    from HyperSpaceSegmentationLib import mrml_logic

    logic.segment(volume_node(asymmetric_phantom(size=(20, 18, 16))[0]), 2.0, model=model_file, device="cpu")
    process = engine.process
    mrml_logic.stop_warm_engines()  # what atexit runs
    assert process.poll() == 0  # it ended by itself when its stdin closed
    assert not engine.alive


def test_the_worker_protocol_bad_lines_and_stdin_closing(tmp_path, model_file):
    """The worker alone: a malformed line and a job of another command end with an end line and the worker goes on;
    a job's output is the one-shot command's; closing stdin ends it with exit code 0."""
    import SimpleITK as sitk

    from HyperSpaceSegmentationLib.mrml_logic import engine_environment

    sitk.WriteImage(asymmetric_phantom(size=(20, 18, 16))[0], str(tmp_path / "scan.nrrd"))
    worker = subprocess.Popen([sys.executable, "-m", "HyperSpaceSegmentationLib.worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                              env={**os.environ, **engine_environment()})
    try:
        ready = worker.stdout.readline()
        facts = json.loads(ready.split("ready ", 1)[1])
        assert facts["torch"] == torch.__version__ and facts["cuda"] == torch.cuda.is_available()  # imported ahead
        assert ready.startswith("hyperspace-worker: ready ") and json.loads(ready.split("ready ", 1)[1])["pid"] == \
            worker.pid

        def job(line: str) -> tuple[list[str], dict]:
            worker.stdin.write(line + "\n")
            worker.stdin.flush()
            lines = []
            for out in worker.stdout:
                if out.startswith("hyperspace-worker: end "):
                    return lines, json.loads(out.split("end ", 1)[1])
                lines.append(out.rstrip("\n"))
            raise AssertionError(f"the worker ended: {lines}")

        lines, end = job("{not json")
        assert end["exit_code"] == 2 and lines[-1].startswith("hyperspace: error: bad job line")
        lines, end = job(json.dumps({"argv": ["train", "data.json"]}))
        assert end["exit_code"] == 2 and "runs segment jobs" in end["message"]
        arguments = ["segment", str(tmp_path / "scan.nrrd"), "-o", str(tmp_path / "out.seg.nrrd"), "--model",
                     str(model_file), "--device", "cpu", "--progress-lines"]
        lines, end = job(json.dumps({"argv": arguments, "cwd": str(tmp_path)}))
        assert end["exit_code"] == 0 and end["models_loaded"] == 1 and (tmp_path / "out.seg.nrrd").is_file()
        assert any(line.startswith("HYPERSPACE_PROGRESS ") for line in lines)
        lines, end = job(json.dumps({"argv": [*arguments, "--overwrite"]}))
        assert (end["exit_code"], end["models_loaded"], end["models_reused"]) == (0, 0, 1)
        os.utime(model_file, ns=(time.time_ns(), time.time_ns() + 10**9))  # the model file changed: read again
        lines, end = job(json.dumps({"argv": [*arguments, "--overwrite"]}))
        assert (end["exit_code"], end["models_loaded"]) == (0, 1)
        worker.stdin.close()
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
