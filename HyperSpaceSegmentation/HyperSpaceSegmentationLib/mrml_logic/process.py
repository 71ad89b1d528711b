"""The engine's processes as the Slicer logic starts them, without Qt: their environment and temporary folder, starting
one (``launch``), reading its output (``pump``), ending its process tree (``end_process_tree``, never blocking for
ever), and the GPU probe (``GpuProbe``: CUDA asked about in a short separate process, never in Slicer's own).
``slicer`` and ``psutil`` are imported inside the functions."""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import UserError

ENGINE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds HyperSpaceSegmentationLib
ENGINE_MODULE = "HyperSpaceSegmentationLib.cli"
ERROR_PREFIX = "hyperspace: error: "
END_TIMEOUT_S = 10.0
"""How long ending a process tree (or waiting for an ended process) may take before the job gives up on it."""
GPU_PROBE = ("import json, torch\n"
             "cuda = torch.cuda.is_available()\n"
             "print(json.dumps({'cuda': cuda, 'free_mb': torch.cuda.mem_get_info()[0] / 2**20 if cuda else None}))")
"""What the GPU probe runs: whether the engine process finds CUDA, and the GPU's free memory (MB)."""


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


def launch(command: list[str], folder: str) -> subprocess.Popen:
    """Start the one-shot engine process ``command`` in ``folder`` (Slicer's console process), its output (stderr
    too) read as UTF-8; a ``UserError`` when the executable cannot be started."""
    import slicer.util

    try:
        process = slicer.util.launchConsoleProcess(command, useStartupEnvironment=False,
                                                   updateEnvironment=engine_environment(), cwd=folder)
    except OSError as error:
        raise cannot_start(command[0], error) from None
    if hasattr(process.stdout, "reconfigure"):
        process.stdout.reconfigure(encoding="utf-8", errors="replace")  # nothing has been read yet
    return process


def cannot_start(executable: str, error: OSError) -> UserError:
    """The one-line error for an engine executable that does not start."""
    return UserError(f"cannot start {executable} ({error.strerror or error}): set the logic's pythonExecutable to a "
                     "Python with the engine installed (PythonSlicer in Slicer)")


def pump(stream: Any, lines: queue.Queue) -> None:
    """Put each output line on ``lines``, then None: always, whatever happens to the stream."""
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
    except Exception as error:  # an unreadable stream must not leave the job running for ever
        lines.put(f"{ERROR_PREFIX}the engine's output could not be read ({error})")
    finally:
        lines.put(None)


def start_reader(stream: Any) -> tuple[queue.Queue, threading.Thread]:
    """A queue of ``stream``'s lines (None at its end) and the started thread that fills it (``pump``)."""
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=pump, args=(stream, lines), daemon=True)
    reader.start()
    return lines, reader


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
        """The last answer (None before the first), starting a probe when none runs and the answer is old."""
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
