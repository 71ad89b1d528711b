"""Progress and resource reporting for long runs.

On a terminal each stage shows a tqdm bar on stderr. Otherwise each stage prints one line when it starts,
``[2/4] predict``, so that another program (the Slicer module) can follow along, and a line when it ends
with its time and peak memory. Every stage records its wall time and peak resident memory (and peak GPU
memory when CUDA is used).

With ``progress_lines`` (``hyperspace segment --progress-lines``) the reporter also prints machine-readable
lines on its stream for a program to parse (see ``parse_progress_line``): one when a stage starts, one per
update of its step count and one when it ends (with its ``seconds``)::

    HYPERSPACE_PROGRESS {"stage": 3, "stages": 5, "name": "predict 18 windows of 32x32x32", "done": 4, "total": 18}

``total`` is null for a stage without steps.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

import torch
from tqdm import tqdm

from .system import resident_memory_mb

Update = Callable[[int], None]
PROGRESS_PREFIX = "HYPERSPACE_PROGRESS "


def parse_progress_line(line: str) -> dict | None:
    """The event of a progress line (a dict with stage, stages, name, done, total, and seconds at the end of a
    stage), or ``None`` for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(line[len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and {"stage", "stages", "done", "total"} <= set(event) else None


def progress_fraction(event: dict) -> float:
    """The fraction of the whole run finished at a progress event: finished stages plus the share of this one."""
    if "seconds" in event:
        share = 1.0
    else:
        share = min(event["done"] / event["total"], 1.0) if event["total"] else 0.0
    return (event["stage"] - 1 + share) / event["stages"]


@dataclass
class StageRecord:
    name: str
    seconds: float
    peak_memory_mb: float
    peak_gpu_memory_mb: float | None = None


class _PeakSampler:
    """Samples resident memory in a background thread while a stage runs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = resident_memory_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_memory_mb())

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_memory_mb())


class Reporter:
    """Reports stages of a run on ``stream`` and records their time and memory."""

    def __init__(self, stages: int, stream: TextIO | None = None, quiet: bool = False,
                 progress_lines: bool = False) -> None:
        self.stages = stages
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.progress_lines = progress_lines
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.records: list[StageRecord] = []

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def _progress(self, name: str, done: int | None, total: int | None, **extra: float) -> None:
        """Print a machine-readable progress line (with ``progress_lines``, even when quiet)."""
        if self.progress_lines:
            event = {"stage": len(self.records) + 1, "stages": self.stages, "name": name, "done": done,
                     "total": total, **extra}
            print(PROGRESS_PREFIX + json.dumps(event), file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Update]:
        """Run one stage; the block may call the yielded function with a number of finished steps."""
        label = f"[{len(self.records) + 1}/{self.stages}] {name}"
        use_bar = self.interactive and not self.quiet and total is not None
        if not use_bar:
            self.log(label)
        bar = tqdm(total=total, desc=label, file=self.stream, leave=False, dynamic_ncols=True) if use_bar else None
        done = 0

        def update(steps: int) -> None:
            nonlocal done
            done += steps
            if bar:
                bar.update(steps)
            self._progress(name, done, total)

        self._progress(name, 0 if total is not None else None, total)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with _PeakSampler() as sampler:
            try:
                yield update
            finally:
                if bar:
                    bar.close()
        gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        record = StageRecord(name, time.perf_counter() - start, sampler.peak, gpu)
        self._progress(name, done if total is not None else None, total, seconds=round(record.seconds, 3))
        self.records.append(record)
        self.log(f"{label}: {record.seconds:.2f} s, peak memory {record.peak_memory_mb:.0f} MB"
                 + (f", GPU {gpu:.0f} MB" if gpu is not None else ""))
