"""The session's warm engine, without Qt: ``WarmEngine`` keeps one worker process (``worker.py``) per Python executable
that holds models and networks loaded from job to job; ``warm_engine`` finds it, ``stop_warm_engines`` ends them all
(at Python's exit too). ``SegmentationJob`` (``job.py``) sends its jobs there."""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import tempfile
import threading
import weakref
from typing import Any

from .process import cannot_start, end_process_tree, engine_environment, start_reader

WORKER_MODULE = "HyperSpaceSegmentationLib.worker"
READY_PREFIX = "hyperspace-worker: ready "  # as worker.py writes them (not imported: worker.py needs no Slicer,
END_PREFIX = "hyperspace-worker: end "  # but this file must import without the engine's packages)


class WarmEngine:
    """The session's engine worker for one Python ``executable`` (``python -m HyperSpaceSegmentationLib.worker``):
    started ahead (``start``) or by the first job, it keeps the models and the networks generated for each spacing loaded and runs one job
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
        """Whether its worker process runs."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start a worker unless one runs (ahead of the first job); a ``UserError`` when it cannot be started."""
        if not self.alive:
            self._start()

    def submit(self, job: Any, arguments: list[str], folder: str) -> subprocess.Popen:
        """Send the job with the command line's ``arguments`` (``segment ...``), run in ``folder``, to the worker,
        starting one when none runs; returns the worker's process. A ``UserError`` when it cannot be started."""
        line = json.dumps({"argv": arguments, "cwd": folder}) + "\n"
        self.start()
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
            raise cannot_start(self.executable, error) from None
        self.lines, self.reader = start_reader(self.process.stdout)
        self.ready = False
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
