"""The life cycle of the Slicer logic's background job on real MRML nodes (slicer-core, headless): a non-ASCII or
undecodable output line, any failure while loading the result, a timed-out wait, a process that will not die, a job
that is dropped, a closed scene and a removed volume; temporary files under Slicer's temporary path and a responsive
window while ``wait`` runs. Stand-in engine processes are this Python running a few lines (every platform)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import psutil
import pytest

from conftest import asymmetric_phantom
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.io.images import write_labels
from test_mrml_logic import NAMES, logic, model_file, scene, volume_node  # noqa: F401  (fixtures)

COPY_LATER = "import shutil, sys, time; time.sleep(float(sys.argv[3])); shutil.copy(sys.argv[1], sys.argv[2])"


def start(command: list[str], tmp_path: Path, volume, **keywords):
    """A job running ``command`` (after this Python) with a temporary folder of its own; returns (job, folder)."""
    from HyperSpaceSegmentationLib.mrml_logic import SegmentationJob

    folder = tmp_path / f"job{len(list(tmp_path.glob('job*')))}"
    folder.mkdir()
    (folder / "input.nrrd").write_bytes(b"a scan's copy")
    return SegmentationJob([sys.executable, *command], str(folder), str(folder / "result.seg.nrrd"), volume,
                           **keywords), folder


def ended(process: subprocess.Popen) -> bool:
    return process.poll() is not None


@pytest.fixture
def result_file(tmp_path) -> Path:
    """A .seg.nrrd as the engine writes it, for a stand-in engine to copy to the job's output."""
    _, labels = asymmetric_phantom(size=(12, 10, 8))
    return write_labels(labels, tmp_path / "prepared.seg.nrrd", NAMES)


def test_a_non_ascii_or_undecodable_output_line_ends_the_job_with_its_message(scene, tmp_path):
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    script = ("import sys\nprint('reading C:/Users/Jos\u00e9/scan.nrrd')\nsys.stdout.flush()\n"
              "sys.stdout.buffer.write(b'hyperspace: error: cannot read C:/Users/Jos\\xe9/scan.nrrd (cp1252)\\n')\n"
              "sys.exit(2)")
    job, folder = start(["-c", script], tmp_path, volume)
    with pytest.raises(UserError, match=r"cannot read C:/Users/Jos\ufffd/scan.nrrd \(cp1252\)"):
        job.wait(timeout=30)
    assert job.status == "failed" and "reading C:/Users/Jos\u00e9/scan.nrrd" in job.log  # UTF-8 read back exactly
    assert not folder.exists() and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_any_failure_while_loading_the_result_fails_the_job_and_leaves_no_node(scene, tmp_path, result_file,
                                                                                 monkeypatch):
    from HyperSpaceSegmentationLib.mrml_logic import job as mrml_job

    def broken(path, volumeNode):
        raise KeyError("no colour table named Inferno")

    monkeypatch.setattr(mrml_job, "load_uncertainty", broken)
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    job, folder = start(["-c", COPY_LATER, str(result_file), str(tmp_path / "job0" / "result.seg.nrrd"), "0"],
                        tmp_path, volume, uncertainty=str(tmp_path / "job0" / "uncertainty.nrrd"))
    with pytest.raises(RuntimeError, match="no colour table named Inferno"):
        job.wait(timeout=30)
    assert (job.status, job.result, job.uncertainty) == ("failed", None, None)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0  # the segmentation loaded first is removed
    assert not folder.exists()


def test_wait_keeps_the_window_responsive_and_a_timeout_ends_the_process(scene, tmp_path, monkeypatch):
    import slicer

    events = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: events.append(1)), raising=False)
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    job, folder = start(["-c", "import time; time.sleep(120)"], tmp_path, volume)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="still running after 1 s, so it was cancelled"):
        job.wait(timeout=1)
    assert time.monotonic() - began < 15 and len(events) >= 5  # Qt events processed while waiting
    assert job.status == "cancelled" and ended(job.process) and not folder.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        job.wait()


def test_cancel_returns_even_when_the_process_cannot_be_ended(scene, tmp_path, monkeypatch):
    from HyperSpaceSegmentationLib.mrml_logic import process as mrml_process

    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    job, folder = start(["-c", "import time; time.sleep(120)"], tmp_path, volume)
    process = job.process
    monkeypatch.setattr(mrml_process, "END_TIMEOUT_S", 0.5)
    with monkeypatch.context() as immortal:  # as a process of another user or an elevated one on Windows
        immortal.setattr(psutil.Process, "kill", lambda self: None)
        immortal.setattr(subprocess.Popen, "kill", lambda self: None)
        cancelling = threading.Thread(target=job.cancel, daemon=True)
        cancelling.start()
        cancelling.join(timeout=20)
        returned = not cancelling.is_alive()
    process.kill()  # the real kill, which also frees a cancel that would block for ever
    process.wait(timeout=30)
    assert returned, "cancel() blocked on a process that could not be ended"
    assert job.status == "cancelled" and not folder.exists()
    assert any("could not be ended" in line for line in job.log)


def test_a_dropped_job_ends_its_process_and_removes_its_folder(scene, tmp_path):
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    job, folder = start(["-c", "import time; time.sleep(120)"], tmp_path, volume)
    process = job.process
    assert folder.exists() and not ended(process)
    del job
    gc.collect()
    assert not folder.exists()
    process.wait(timeout=30)


def test_closing_the_scene_cancels_the_job_and_loads_nothing_into_the_next_scene(scene, tmp_path, result_file):
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    job, folder = start(["-c", COPY_LATER, str(result_file), str(tmp_path / "job0" / "result.seg.nrrd"), "1.5"],
                        tmp_path, volume)
    scene.Clear(False)  # File > Close Scene
    assert job.status == "cancelled" and ended(job.process) and not folder.exists()
    time.sleep(2.0)  # when the stand-in would have written its result
    assert job.poll() == "cancelled" and job.result is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert any("scene was closed" in line for line in job.log)


def test_a_volume_removed_while_it_is_segmented_loads_nothing(scene, tmp_path, result_file):
    volume = volume_node(asymmetric_phantom(size=(12, 10, 8))[0])
    job, folder = start(["-c", COPY_LATER, str(result_file), str(tmp_path / "job0" / "result.seg.nrrd"), "0.5"],
                        tmp_path, volume)
    scene.RemoveNode(volume)
    with pytest.raises(RuntimeError, match="scan was removed from the scene while it was segmented"):
        job.wait(timeout=30)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0 and not folder.exists()


def test_temporary_files_go_under_slicers_temporary_path(scene, logic, tmp_path, model_file, monkeypatch):
    import slicer

    temporary = tmp_path / "Slicer temporary"
    events = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(temporary),
                                                             processEvents=lambda: events.append(1)), raising=False)
    volume = volume_node(asymmetric_phantom(size=(20, 18, 14))[0])
    job = logic.segment(volume, "native", model=model_file, device="cpu", wait=False)
    assert Path(job.folder).parent == temporary and (Path(job.folder) / "input.nrrd").is_file()
    assert job.wait(timeout=120).IsA("vtkMRMLSegmentationNode") and events
    assert list(temporary.iterdir()) == []
    shutil.rmtree(temporary)
