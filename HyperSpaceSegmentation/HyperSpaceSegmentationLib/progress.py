"""Progress and resource reporting for long runs.

On a terminal each stage shows a tqdm bar on stderr. Otherwise each stage prints one line when it starts,
``[2/4] predict``, so that another program (the Slicer module) can follow along, and a line when it ends
with its time and peak memory. Every stage records its wall time and peak resident memory (and peak GPU
memory when CUDA is used).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

import torch
from tqdm import tqdm

from .system import resident_memory_mb

Update = Callable[[int], None]


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

    def __init__(self, stages: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stages = stages
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.records: list[StageRecord] = []

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Update]:
        """Run one stage; the block may call the yielded function with a number of finished steps."""
        label = f"[{len(self.records) + 1}/{self.stages}] {name}"
        use_bar = self.interactive and not self.quiet and total is not None
        if not use_bar:
            self.log(label)
        bar = tqdm(total=total, desc=label, file=self.stream, leave=False, dynamic_ncols=True) if use_bar else None
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with _PeakSampler() as sampler:
            try:
                yield (bar.update if bar else (lambda n: None))
            finally:
                if bar:
                    bar.close()
        gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        record = StageRecord(name, time.perf_counter() - start, sampler.peak, gpu)
        self.records.append(record)
        self.log(f"{label}: {record.seconds:.2f} s, peak memory {record.peak_memory_mb:.0f} MB"
                 + (f", GPU {gpu:.0f} MB" if gpu is not None else ""))
