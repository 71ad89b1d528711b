"""The warm engine of the Slicer module: ``python -m HyperSpaceSegmentationLib.worker`` segments job after job in one
process, keeping the models it read and the networks it generated for each spacing, so that a second Apply pays
neither Python's start-up nor a model load nor (at a spacing seen before) the network generation.

The protocol, one line each way (UTF-8):

- The worker imports what a segmentation uses (PyTorch, SimpleITK, the engine: seconds, done before the first job,
  so the module starts it on entry), then writes ``hyperspace-worker: ready {"protocol": 1, "pid": N, "torch":
  "2.13.0", "cuda": false}`` on stdout (``cuda``: whether PyTorch sees a CUDA GPU).
- A job is one JSON line on stdin: ``{"argv": ["segment", INPUT, "-o", OUTPUT, ...], "cwd": FOLDER}``, the arguments
  the one-shot ``hyperspace segment`` command gets (only ``segment``) and the folder to run in (optional).
- The job writes what the one-shot command writes (progress lines, notes, ``hyperspace: error: ...``) on stdout and
  stderr, then the worker writes one end line on stdout: ``hyperspace-worker: end {"exit_code": 0, "message": null,
  "models_loaded": 0, "models_reused": 1, "seconds": 1.9}`` (``message``: why a job failed that the one-line errors do
  not say, such as an unexpected exception; ``models_loaded``: model files read for this job, 0 when every one came
  from the cache).
- A bad job (a user error, an unknown option, a malformed line) ends with its end line; the worker waits for the next.
  The worker ends when its stdin closes (Slicer closed or dropped it) or when it is killed (Cancel kills its process
  tree: the next job starts a fresh worker).

The cache (``EngineCache``) keys a model by its file's resolved path, size and modification time and the device, so
a model file that changes is read again; segmenters (which keep the generated networks) by the model and their
settings, and the segmenters of one model share its networks.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, TextIO

PROTOCOL = 1
READY_PREFIX = "hyperspace-worker: ready "
END_PREFIX = "hyperspace-worker: end "
MAX_MODELS = 4
"""Model files kept (the most recently used): an ensemble's models and a few others."""
MAX_SEGMENTERS = 16
"""Segmenters kept (one per model and settings such as the slices of a 2D run; their networks are shared)."""


class EngineCache:
    """Models and segmenters kept from run to run in one process (see ``cli.segment_run.SegmentationRun.cache``)."""

    def __init__(self) -> None:
        self._models: OrderedDict[tuple, Any] = OrderedDict()  # (file, size, mtime, device) -> model
        self._networks: dict[int, OrderedDict] = {}  # id(model) of a cached model -> its generated networks
        self._segmenters: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0
        self.reuses = 0

    def model(self, path: str | None, default: Path, device: Any) -> Any:
        """The model of file ``path`` (None: ``default``) for ``device``, read once while the file is unchanged."""
        from .models import load

        try:
            stat = os.stat(path or default)
        except OSError:  # missing: the loader says so in its own words
            return load(path, default)
        key = (os.path.normcase(os.path.realpath(path or default)), stat.st_size, stat.st_mtime_ns, str(device))
        if key in self._models:
            self.reuses += 1
            self._models.move_to_end(key)
            return self._models[key]
        model = load(path, default)
        self.loads += 1
        for old in [k for k in self._models if k[0] == key[0] or k[3] != key[3]]:  # changed file, other device
            self._forget(old)
        self._models[key] = model
        self._networks[id(model)] = OrderedDict()
        while len(self._models) > MAX_MODELS:
            self._forget(next(iter(self._models)))
        return model

    def _forget(self, key: tuple) -> None:
        model = self._models.pop(key)
        self._networks.pop(id(model), None)
        for old in [k for k in self._segmenters if k[0] == id(model)]:
            del self._segmenters[old]

    def segmenter(self, model: Any, **options: Any) -> Any:
        """A ``Segmenter`` of ``model`` with ``options`` (as ``SegmentationRun.segmenters`` builds it), built once; the
        segmenters of one cached model share the networks it generated."""
        from .inference import Segmenter

        key = (id(model), *sorted((name, _hashable(value)) for name, value in options.items()))
        if key in self._segmenters:
            self._segmenters.move_to_end(key)
            return self._segmenters[key]
        segmenter = Segmenter(model, **options)
        if id(model) in self._networks:
            segmenter._networks = self._networks[id(model)]
        self._segmenters[key] = segmenter
        while len(self._segmenters) > MAX_SEGMENTERS:
            self._segmenters.popitem(last=False)
        return segmenter


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def run_job(line: str, cache: EngineCache, out: TextIO) -> dict:
    """Run the job of one protocol line with ``cache``; returns its end report."""
    from . import cli

    began, loads, reuses = time.perf_counter(), cache.loads, cache.reuses
    code, message = 2, None
    home = os.getcwd()
    try:
        job = json.loads(line)
        argv = job.get("argv") if isinstance(job, dict) else None
        if not isinstance(argv, list) or not argv or not all(isinstance(word, str) for word in argv):
            raise ValueError('a job is {"argv": ["segment", ...]}')
        if argv[0] != "segment":
            raise ValueError(f"the worker runs segment jobs, not {argv[0]!r}")
        if job.get("cwd"):
            os.chdir(job["cwd"])
        code = cli.main(argv)
    except ValueError as error:  # a malformed job line: that job fails, the worker goes on
        message = f"bad job line ({error})"
        print(f"hyperspace: error: {message}", file=sys.stderr)
    except SystemExit as error:  # argparse's --help, or SIGTERM (cli.main's handler): ended below when terminated
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        if code == 143:
            raise
    except Exception as error:  # a failure that is not a user error: reported, the worker stays up
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}"
        code = 1
    finally:
        os.chdir(home)  # never hold the job's folder (Windows could not remove it)
        _release_gpu_memory()
    return {"exit_code": code, "message": message, "models_loaded": cache.loads - loads,
            "models_reused": cache.reuses - reuses, "seconds": round(time.perf_counter() - began, 3)}


def _release_gpu_memory() -> None:
    """Give the GPU memory that PyTorch keeps cached back after a job (other programs, and the module's estimate, see
    it free); the models and networks stay."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _preload() -> dict:
    """Import what a ``segment`` job uses but ``cli`` imports only when it runs (a second on the first job); returns
    the ready line's facts about PyTorch. A package that is missing is left to the job that needs it to report."""
    import importlib

    for name in ("torch", "SimpleITK", "scipy.ndimage", "slicerio", "HyperSpaceSegmentationLib.cli.segment",
                 "HyperSpaceSegmentationLib.cli.segment_batch", "HyperSpaceSegmentationLib.inference.segmenter",
                 "HyperSpaceSegmentationLib.io.images", "HyperSpaceSegmentationLib.evaluation.labels"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if "HyperSpaceSegmentationLib.inference.backends" in sys.modules:
        sys.modules["HyperSpaceSegmentationLib.inference.backends"].onnxruntime_installed()  # imports ONNX Runtime
    torch = sys.modules.get("torch")
    return {"torch": torch.__version__ if torch else None, "cuda": bool(torch and torch.cuda.is_available())}


def serve(stdin: TextIO, stdout: TextIO) -> int:
    """Take jobs from ``stdin`` until it closes; returns the exit code."""
    from .cli.segment_run import SegmentationRun

    cache = EngineCache()
    SegmentationRun.cache = cache
    ready = {"protocol": PROTOCOL, "pid": os.getpid(), **_preload()}
    stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
    stdout.flush()
    for line in stdin:
        if not line.strip():
            continue
        report = run_job(line, cache, stdout)
        sys.stderr.flush()  # the job's lines come before its end line
        stdout.write(END_PREFIX + json.dumps(report) + "\n")
        stdout.flush()
    return 0


def main() -> int:
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace" if stream is sys.stdin else "backslashreplace")
    try:
        return serve(sys.stdin, sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):  # Slicer went away
        return 0


if __name__ == "__main__":
    sys.exit(main())
