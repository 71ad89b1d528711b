"""The Slicer logic's background engine process, without Qt: ``SegmentationJob`` runs ``hyperspace segment`` in a
separate process (``PythonSlicer`` in Slicer), follows its output and loads its result into the scene.

Its life cycle: the job ends done, failed or cancelled, and in every case its temporary folder (an uncompressed copy
of the scan) is removed and its process tree ended; a job that is never polled to its end, or dropped, does the same
when it is garbage collected or Python exits, and closing the scene of its volume cancels it, so that nothing is
loaded into the next scene. By default a job runs in the session's warm engine (``WarmEngine``: one worker process,
``worker.py``, that keeps models and networks loaded from job to job); cancelling such a job kills the worker, and
the next job starts a fresh one. The engine's output is read as UTF-8 (the child is told to write UTF-8), an undecodable
byte is replaced and never ends the reader. ``slicer`` and ``psutil`` are imported inside the functions.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .errors import UserError

ENGINE_PARENT = Path(__file__).resolve().parent.parent  # the folder that holds HyperSpaceSegmentationLib
ERROR_PREFIX = "hyperspace: error: "
UNCERTAINTY_REFERENCE_ROLE = "hyperspaceUncertainty"
"""The node reference role from a segmentation node to the uncertainty volume node of the same run."""
HEAT_MAP_COLORS = ("Inferno", "PET-Heat", "ColdToHotRainbow")
"""The colour tables tried, in this order, for an uncertainty volume (Slicer has Inferno; the Qt-free core, PET-Heat)."""
END_TIMEOUT_S = 10.0
"""How long ending a process tree (or waiting for an ended process) may take before the job gives up on it."""
ENGINE_MODULE = "HyperSpaceSegmentationLib.cli"
WORKER_MODULE = "HyperSpaceSegmentationLib.worker"
READY_PREFIX = "hyperspace-worker: ready "  # as worker.py writes them (not imported: worker.py needs no Slicer,
END_PREFIX = "hyperspace-worker: end "  # but this file must import without the engine's packages)


def temporary_folder() -> str:
    """A new folder for a job's files: under Slicer's temporary path (``slicer.app.temporaryPath``) when there is
    one, else under the system's temporary folder."""
    base = None
    try:
        import slicer

        base = getattr(getattr(slicer, "app", None), "temporaryPath", None) or None
    except ImportError:
        pass
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="hyperspace-", dir=base)


def process_events() -> None:
    """Let Slicer's window repaint and take input (``slicer.app.processEvents``), when there is a GUI."""
    try:
        import slicer
    except ImportError:
        return
    process = getattr(getattr(slicer, "app", None), "processEvents", None)
    if process is not None:
        process()


def engine_environment() -> dict[str, str]:
    """What the engine process needs on top of the current environment: the engine on its path, unbuffered UTF-8
    output (whatever the console's code page: a non-ASCII path on Windows stays readable)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(ENGINE_PARENT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}


def end_process_tree(process: subprocess.Popen, timeout: float | None = None) -> bool:
    """Kill ``process`` and all its children (every platform) and reap it, waiting ``timeout`` seconds at most
    (``END_TIMEOUT_S``); returns whether it has ended. A process that has already ended is left alone (its id may
    belong to another process by now)."""
    import psutil

    timeout = END_TIMEOUT_S if timeout is None else timeout
    if process.poll() is not None:
        return True
    try:
        root = psutil.Process(process.pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        processes = []
    for member in processes:
        try:
            member.kill()
        except psutil.Error:
            pass
    try:
        process.kill()  # also where psutil was denied access to the process
    except OSError:
        pass
    psutil.wait_procs(processes, timeout=timeout)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


GPU_PROBE = ("import json, torch\n"
             "cuda = torch.cuda.is_available()\n"
             "print(json.dumps({'cuda': cuda, 'free_mb': torch.cuda.mem_get_info()[0] / 2**20 if cuda else None}))")
"""What the GPU probe runs: whether the engine process finds CUDA, and the GPU's free memory (MB)."""


class GpuProbe:
    """Whether an engine process would find a CUDA GPU, and its free memory, asked in a short separate process (with
    ``executable``) so that CUDA never starts in Slicer's own process (a CUDA context there holds GPU memory for the
    whole session). ``result()`` never blocks: None while the probe runs (it is started on first use, and again
    when the last answer is older than ``max_age_s``), else ``{"cuda": bool, "free_mb": float | None}``, or
    ``{"error": reason}`` when the probe failed."""

    def __init__(self, executable: str, max_age_s: float = 60.0) -> None:
        self.executable = executable
        self.max_age_s = max_age_s
        self._answer: dict | None = None
        self._when = -math.inf
        self._thread: threading.Thread | None = None

    def result(self) -> dict | None:
        running = self._thread is not None and self._thread.is_alive()
        if not running and time.monotonic() - self._when > self.max_age_s:
            self._thread = threading.Thread(target=self._ask, daemon=True)
            self._thread.start()
        return self._answer

    def wait(self, timeout: float) -> dict | None:
        """Wait for the answer (``timeout`` seconds at most); for scripts and tests."""
        self.result()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._answer

    def _ask(self) -> None:
        try:
            done = subprocess.run([self.executable, "-c", GPU_PROBE], capture_output=True, timeout=120,
                                  env={**os.environ, **engine_environment()}, encoding="utf-8", errors="replace",
                                  creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))  # no console on Windows
            lines = done.stdout.strip().splitlines()
            answer = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            answer = {"error": str(error)}
        self._answer, self._when = answer, time.monotonic()


def run_engine_batch(python: str, options: list[str], cases: dict[str, Path], targets: dict[str, Path],
                     overwrite: bool) -> dict[str, str | None]:
    """Run one engine batch (``hyperspace segment`` with ``options``, by ``python``) over ``cases`` (``{id: scan}``)
    and copy each case's ``.seg.nrrd`` to ``targets[id]`` (atomically). Returns ``{id: None (done) or why it
    failed}``, from the batch's summary. Slicer's window stays responsive; an interruption ends the engine's process
    tree; the temporary folder is removed in every case."""
    import csv

    import slicer.util

    from .io.images import atomic_output

    folder = Path(temporary_folder())
    try:
        with open(folder / "cases.csv", "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["id", "image"])
            writer.writerows([case, str(Path(path).resolve())] for case, path in cases.items())
        summary, output = folder / "summary.csv", folder / "log.txt"
        with open(output, "w", encoding="utf-8") as log:
            try:
                process = slicer.util.launchConsoleProcess(
                    [python, "-m", "HyperSpaceSegmentationLib.cli", "segment", str(folder / "cases.csv"), "-o",
                     str(folder / "out"), "--output-suffix", ".seg.nrrd", "--summary", str(summary), "--quiet",
                     *options], useStartupEnvironment=False,
                    updateEnvironment=engine_environment(), cwd=str(folder))
            except OSError as error:
                raise UserError(f"cannot start {python} ({error.strerror or error}): set the logic's pythonExecutable "
                                "to a Python with the engine installed (PythonSlicer in Slicer)") from None
            if hasattr(process.stdout, "reconfigure"):
                process.stdout.reconfigure(encoding="utf-8", errors="replace")  # as the engine writes it
            reader = threading.Thread(target=lambda: log.writelines(process.stdout), daemon=True)
            reader.start()
            try:
                while process.poll() is None:
                    process_events()
                    time.sleep(0.1)
            finally:
                end_process_tree(process)
                reader.join(timeout=END_TIMEOUT_S)
        rows = {}
        if summary.is_file():
            with open(summary, encoding="utf-8", newline="") as file:
                rows = {row["id"]: row for row in csv.DictReader(file)}
        text = output.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line[len(ERROR_PREFIX):] for line in text if line.startswith(ERROR_PREFIX)]
        stopped = errors[-1] if errors else f"the engine stopped (exit code {process.returncode}): " + (
            text[-1] if text else "no output")
        outcome = {}
        for case, target in targets.items():
            row = rows.get(case)
            if row is None:
                outcome[case] = stopped
            elif row["status"] != "done":
                outcome[case] = row.get("error") or row["status"]
            else:
                try:
                    with atomic_output(target, overwrite) as partial:  # never a half-written file at a target
                        shutil.copyfile(row["output"], partial)
                    outcome[case] = None
                except (OSError, UserError) as error:
                    outcome[case] = f"{target} could not be written ({error}): check the free space of its folder"
        return outcome
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _release(held: dict, folder: str, scene: Any, tag: Any) -> None:
    """End what a job holds (see ``SegmentationJob``); runs once, also when the job is garbage collected. ``held``:
    the job's process, and whether it outlives the job (a warm engine's worker that finished the job)."""
    if scene is not None and tag is not None:
        try:
            scene.RemoveObserver(tag)
        except Exception:  # the scene is being torn down (Python exiting)
            pass
    if not held["keep"]:
        end_process_tree(held["process"])
    shutil.rmtree(folder, ignore_errors=True)


def _launch(command: list[str], folder: str) -> subprocess.Popen:
    """Start the one-shot engine process ``command`` in ``folder``, its output (stderr too) read as UTF-8."""
    import slicer.util

    try:
        process = slicer.util.launchConsoleProcess(command, useStartupEnvironment=False,
                                                   updateEnvironment=engine_environment(), cwd=folder)
    except OSError as error:
        raise _cannot_start(command[0], error) from None
    if hasattr(process.stdout, "reconfigure"):
        process.stdout.reconfigure(encoding="utf-8", errors="replace")  # nothing has been read yet
    return process


def _cannot_start(executable: str, error: OSError) -> UserError:
    return UserError(f"cannot start {executable} ({error.strerror or error}): set the logic's pythonExecutable to a "
                     "Python with the engine installed (PythonSlicer in Slicer)")


class WarmEngine:
    """The session's engine worker for one Python ``executable`` (``python -m HyperSpaceSegmentationLib.worker``):
    started by the first job, it keeps the models and the networks generated for each spacing loaded and runs one job
    at a time (a JSON line on its stdin; its output, the one-shot command's, then an end line). A reader thread puts
    its output lines on ``lines``, which the running job polls, so nothing here ever waits on the worker.

    ``stop()`` ends it (Cancel of its job kills its process tree; Slicer's exit and the logic's ``stop_engine`` stop
    it); a worker that crashed or was killed is replaced by a fresh one at the next job. ``unavailable`` says why
    this executable cannot run a worker (it did not start: an engine without ``worker.py``, a stand-in); its jobs then
    run one process each. ``started`` counts the workers started."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.process: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader: threading.Thread | None = None
        self.ready = False  # the worker has said it takes jobs
        self.unavailable: str | None = None
        self.started = 0
        self._job: weakref.ref | None = None

    @property
    def busy(self) -> bool:
        """Whether a job still runs in the worker (another job then runs in a process of its own)."""
        job = self._job() if self._job is not None else None
        return job is not None and job.status == "running"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def submit(self, job: Any, arguments: list[str], folder: str) -> subprocess.Popen:
        """Send the job with the command line's ``arguments`` (``segment ...``), run in ``folder``, to the worker,
        starting one when none runs; returns the worker's process. A ``UserError`` when it cannot be started."""
        line = json.dumps({"argv": arguments, "cwd": folder}) + "\n"
        if not self.alive:
            self._start()
        if not self._send(line) and self.ready:  # a worker that died while idle: a fresh one
            self._start()
            self._send(line)  # a fresh one that ends at once is seen by the job (no ready line: a process of its own)
        self._job = weakref.ref(job)
        return self.process

    def _send(self, line: str) -> bool:
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
            return True
        except (OSError, ValueError):  # its stdin is closed: it has ended
            return False

    def _start(self) -> None:
        self.stop()
        try:
            self.process = subprocess.Popen(
                [self.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env={**os.environ, **engine_environment()}, cwd=tempfile.gettempdir(),
                encoding="utf-8", errors="replace", creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except OSError as error:
            raise _cannot_start(self.executable, error) from None
        self.lines, self.ready = queue.Queue(), False
        self.reader = threading.Thread(target=_pump, args=(self.process.stdout, self.lines), daemon=True)
        self.reader.start()
        self.started += 1

    def stop(self, grace: float = 0.0) -> None:
        """End the worker: close its stdin (it ends by itself when idle), wait ``grace`` seconds, then end its process
        tree. Never blocks for ever."""
        process, self.process, self.ready = self.process, None, False
        if process is None:
            return
        try:
            process.stdin.close()
        except (OSError, ValueError):
            pass
        if grace > 0:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        end_process_tree(process)
        if self.reader is not None:
            self.reader.join(timeout=1.0)


_ENGINES: dict[str, WarmEngine] = {}


def warm_engine(executable: str) -> WarmEngine:
    """The session's warm engine for ``executable`` (one per executable, shared by every logic)."""
    if executable not in _ENGINES:
        _ENGINES[executable] = WarmEngine(executable)
    return _ENGINES[executable]


def stop_warm_engines(grace: float = 2.0) -> None:
    """Stop every warm engine of this session (at Slicer's exit, see ``atexit``)."""
    for engine in list(_ENGINES.values()):
        engine.stop(grace)


atexit.register(stop_warm_engines)


def _pump(stream: Any, lines: queue.Queue) -> None:
    """Put each output line on ``lines``, then None: always, whatever happens to the stream."""
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
    except Exception as error:  # an unreadable stream must not leave the job running for ever
        lines.put(f"{ERROR_PREFIX}the engine's output could not be read ({error})")
    finally:
        lines.put(None)


def _on_scene_close(job_ref: weakref.ref) -> None:
    job = job_ref()
    if job is not None and job.status == "running":
        job.cancel()
        job.log.append("cancelled: the scene was closed")


class SegmentationJob:
    """A ``hyperspace segment`` run in a background process; ``poll()`` it from the main thread (e.g. a QTimer).

    ``status`` is running, done, failed or cancelled; ``progress`` the finished fraction (0 to 1) from the engine's
    progress lines; ``log`` the other output lines; ``result`` the segmentation node when done; ``uncertainty`` the
    uncertainty volume node when done and asked for (``segment(..., uncertainty=True)``), else None; ``error`` the
    reason when failed. ``cancel()`` ends the process tree and removes the temporary folder: no node, no file is left.
    Closing the volume's scene cancels the job; a job dropped while running is cancelled when collected.

    ``command`` is the one-shot engine command line (``PYTHON -m HyperSpaceSegmentationLib.cli segment ...``). With
    ``engine`` (a ``WarmEngine``) the job runs in its worker instead, unless the worker is busy or unavailable;
    ``process`` is then the worker's, cancelling the job kills it, and ``worker_report`` holds the worker's end report
    (``models_loaded``: model files read for this job, 0 when all came from its cache). A worker that does not start
    (``engine.unavailable``) makes the job run in a process of its own; one that stops during the job fails it.
    """

    def __init__(self, command: list[str], folder: str, output: str, volumeNode: Any,
                 uncertainty: str | None = None, engine: WarmEngine | None = None) -> None:
        import slicer

        self.command = list(command)
        self.status = "running"
        self.progress = 0.0
        self.log: list[str] = []
        self.result = None
        self.uncertainty = None
        self.error: str | None = None
        self.folder = folder
        self._output = output
        self._uncertainty_file = uncertainty
        self._volumeNode = volumeNode
        self.worker_report: dict | None = None
        self._engine: WarmEngine | None = None
        self._before_ready: list[str] = []  # a worker's lines before it said it is ready
        warm = (engine is not None and engine.unavailable is None and not engine.busy
                and self.command[1:3] == ["-m", ENGINE_MODULE])
        if warm:
            self.process = engine.submit(self, self.command[3:], folder)
            self._engine, self._lines, self._reader, self._ready = engine, engine.lines, engine.reader, engine.ready
        else:
            self._start_process()
        self._held = {"process": self.process, "keep": False}
        scene, tag = volumeNode.GetScene(), None
        if scene is not None:
            job_ref = weakref.ref(self)
            tag = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, lambda caller, event: _on_scene_close(job_ref))
        self._release = weakref.finalize(self, _release, self._held, folder, scene, tag)

    def _start_process(self) -> None:
        """Run the job in a one-shot engine process of its own."""
        self.process = _launch(self.command, self.folder)
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=_pump, args=(self.process.stdout, self._lines), daemon=True)
        self._reader.start()
        if hasattr(self, "_held"):
            self._held["process"] = self.process

    def poll(self) -> str:
        """Take in the output so far (never blocks); when the process has ended, load its result. Returns status."""
        from .progress import parse_progress_line, progress_fraction

        while self.status == "running":
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                try:
                    code = self.process.wait(timeout=END_TIMEOUT_S)  # its output ends as it exits
                except subprocess.TimeoutExpired:  # it closed its output but goes on: it is ended
                    end_process_tree(self.process)
                    self.log.append(f"{ERROR_PREFIX}the engine process closed its output but did not end")
                    code = -1
                if self._engine is not None and not self._ready:  # no worker here: a process of its own
                    self._fall_back(code)
                    continue
                why = None
                if self._engine is not None:
                    last = self.log[-1] if self.log else "no output"
                    why = (f"the engine worker stopped during the job (exit code {code}): {last}; the next run starts "
                           "a new one")
                    code = code or -1
                self._finish(code, why)
                break
            if self._engine is not None:
                if not self._ready:
                    if line.startswith(READY_PREFIX):
                        self._ready = self._engine.ready = True
                        self.log.extend(self._before_ready)
                    else:
                        self._before_ready.append(line)
                    continue
                if line.startswith(END_PREFIX):
                    self._end_of_worker_job(line[len(END_PREFIX):])
                    break
            event = parse_progress_line(line)
            if event is not None:
                self.progress = progress_fraction(event)
            elif line:
                self.log.append(line)
        return self.status

    def _fall_back(self, code: int) -> None:
        """The warm engine did not start (an engine without ``worker.py``, or a stand-in): run this job, and the
        executable's next ones, in a process of their own."""
        reason = self._before_ready[-1] if self._before_ready else f"exit code {code}"
        self._engine.unavailable = reason
        self._engine = None
        self.log.append(f"the warm engine did not start ({reason}): each run starts its own engine process")
        try:
            self._start_process()
        except UserError as error:
            self._finish(-1, str(error))

    def _end_of_worker_job(self, text: str) -> None:
        try:
            report = json.loads(text)
            code = int(report["exit_code"])
        except (ValueError, KeyError, TypeError):
            report, code = {"exit_code": -1, "message": f"unreadable end line: {text}"}, -1
        self.worker_report = report
        self._held["keep"] = True  # the worker lives on for the next job
        message = report.get("message")
        self._finish(code, f"segmentation failed (exit code {code}): {message}" if message else None)

    def wait(self, timeout: float | None = None) -> Any:
        """Poll until the job ends (Slicer's window stays responsive) and return the segmentation node; raise
        ``UserError`` (a problem with the input or settings), ``RuntimeError`` (the process failed or was cancelled)
        or ``TimeoutError`` after ``timeout`` seconds, when the job is cancelled (its process ended)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"segmentation still running after {timeout:g} s, so it was cancelled: give a "
                                   "longer timeout, or none")
            process_events()
            time.sleep(0.05)
        if self.status == "failed":
            raise (UserError if self._user_error else RuntimeError)(self.error)
        if self.status == "cancelled":
            raise RuntimeError("segmentation was cancelled")
        return self.result

    def cancel(self) -> None:
        """End the process and all its children (on every platform, within ``END_TIMEOUT_S`` or so, never for ever)
        and remove the temporary folder."""
        if self.status != "running":
            return
        if not end_process_tree(self.process):
            self.log.append(f"the engine process {self.process.pid} could not be ended: end it in the system's task "
                            "manager")
        self._reader.join(timeout=1.0)
        self.status = "cancelled"
        self._release()

    @property
    def _user_error(self) -> bool:
        return any(line.startswith(ERROR_PREFIX) for line in self.log)

    def _finish(self, code: int, why: str | None = None) -> None:
        """End the job: load its result (``code`` 0), else fail with the engine's one-line error, or ``why``."""
        loaded: list[Any] = []
        try:
            if code != 0:
                errors = [line[len(ERROR_PREFIX):] for line in self.log if line.startswith(ERROR_PREFIX)]
                last = self.log[-1] if self.log else "no output"
                self.error = errors[-1] if errors else why or f"segmentation process failed (exit code {code}): {last}"
                self.status = "failed"
                return
            scene = self._volumeNode.GetScene()
            if scene is None or not scene.IsNodePresent(self._volumeNode):
                raise RuntimeError(f"{self._volumeNode.GetName()} was removed from the scene while it was segmented: "
                                   "nothing was loaded")
            result = load_segmentation(self._output, self._volumeNode)
            loaded.append(result)
            if self._uncertainty_file is not None:
                self.uncertainty = load_uncertainty(self._uncertainty_file, self._volumeNode)
                loaded.append(self.uncertainty)
                result.SetNodeReferenceID(UNCERTAINTY_REFERENCE_ROLE, self.uncertainty.GetID())
            self.result = result
            self.progress = 1.0
            self.status = "done"
        except Exception as error:  # whatever went wrong, the job ends failed with the reason, and no node is left
            for node in loaded:
                if node.GetScene() is not None:
                    node.GetScene().RemoveNode(node)
            self.uncertainty = None
            self.error, self.status = str(error) or type(error).__name__, "failed"
        finally:
            self._release()


def load_segmentation(path: str, volumeNode: Any) -> Any:
    """A new segmentation node from the engine's ``.seg.nrrd`` (segment names, label values and colours kept),
    with the volume's reference geometry, under its parent transform and next to it in the subject hierarchy."""
    import slicer

    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(
        f"{volumeNode.GetName()} segmentation"))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"the segmentation written by the engine ({path}) could not be read")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    _place_next_to(node, volumeNode)
    return node


def _place_next_to(node: Any, volumeNode: Any) -> None:
    """Put ``node`` under the volume's parent transform and next to it in the subject hierarchy."""
    import slicer

    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volume_item = hierarchy.GetItemByDataNode(volumeNode)
    if volume_item:  # Slicer's Qt plugins give every node an item; the Qt-free core does not
        parent, item = hierarchy.GetItemParent(volume_item), hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:
            hierarchy.CreateItem(parent, node)


def load_uncertainty(path: str, volumeNode: Any) -> Any:
    """A new scalar volume node "<volume> uncertainty" from the engine's ``--uncertainty`` file (on the volume's grid),
    under the volume's parent transform and next to it in the subject hierarchy, shown as a heat map from 0 to 1."""
    import slicer

    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(
        f"{volumeNode.GetName()} uncertainty"))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetSingleFile(True)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"the uncertainty written by the engine ({path}) could not be read")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    colors = next((c for c in (_color_node(scene, name) for name in HEAT_MAP_COLORS) if c is not None), None)
    if colors is not None:
        display.SetAndObserveColorNodeID(colors.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    _place_next_to(node, volumeNode)
    return node


def _color_node(scene: Any, name: str) -> Any:
    nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", name)
    return nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
