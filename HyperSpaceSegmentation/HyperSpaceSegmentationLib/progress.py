"""Progress and resource reporting for long runs.

On a terminal each stage shows a tqdm bar on stderr. Otherwise each stage prints one line when it starts,
``[2/4] predict``, so that another program (the Slicer module) can follow along, and a line when it ends
with its time and peak memory. Every stage records its wall time, peak resident memory and the area under
its memory-time curve (and the same for GPU memory when CUDA is used).

The area under the memory-time curve (MB s) is the efficiency measure of the FLARE challenges, which integrate
the GPU memory of a whole run over its time. Here it is the resident memory (RSS) of this process, and on CUDA the
memory PyTorch has allocated on the device, sampled every 20 ms while a stage runs and integrated by trapezoids.

With ``progress_lines`` (``hyperspace segment --progress-lines``) the reporter also prints machine-readable
lines on its stream for a program to parse (see ``parse_progress_line``): one when a stage starts, one per
update of its step count and one when it ends (with its ``seconds``)::

    HYPERSPACE_PROGRESS {"stage": 3, "stages": 5, "name": "predict 18 windows of 32x32x32", "done": 4, "total": 18}

``total`` is null for a stage without steps. In a batch (``CasePosition``) every event also carries ``case``
(1-based), ``cases`` and the case's ``id``.
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
    """The fraction of the whole run finished at a progress event: finished stages plus the share of this one (in a
    batch: finished cases plus the share of this one)."""
    if "seconds" in event:
        share = 1.0
    else:
        share = min(event["done"] / event["total"], 1.0) if event["total"] else 0.0
    fraction = (event["stage"] - 1 + share) / event["stages"]
    return (event["case"] - 1 + fraction) / event["cases"] if "case" in event else fraction


@dataclass
class StageRecord:
    name: str
    seconds: float
    peak_memory_mb: float
    peak_gpu_memory_mb: float | None = None
    memory_time_mb_s: float = 0.0  # area under the resident memory-time curve
    gpu_memory_time_mb_s: float | None = None  # the same for the GPU memory allocated (CUDA only)


@dataclass(frozen=True)
class CasePosition:
    """Where a run's case stands in a batch: ``number`` (1-based) of ``count``, and its ``id``."""

    number: int
    count: int
    id: str


class _MemorySampler:
    """Samples resident memory (and the GPU memory allocated on ``gpu``) in a background thread while a stage runs:
    the peak, and the area under the memory-time curve (MB s, trapezoids)."""

    def __init__(self, gpu: torch.device | None = None, interval: float = 0.02) -> None:
        self.interval = interval
        self.gpu = gpu
        self.peak = resident_memory_mb()
        self.area = 0.0
        self.gpu_area = 0.0 if gpu is not None else None
        self._last = (time.perf_counter(), self.peak, self._gpu_mb())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _gpu_mb(self) -> float:
        return torch.cuda.memory_allocated(self.gpu) / 2**20 if self.gpu is not None else 0.0

    def _sample(self) -> None:
        now, memory, gpu = time.perf_counter(), resident_memory_mb(), self._gpu_mb()
        then, last_memory, last_gpu = self._last
        self.peak = max(self.peak, memory)
        self.area += (memory + last_memory) / 2 * (now - then)
        if self.gpu_area is not None:
            self.gpu_area += (gpu + last_gpu) / 2 * (now - then)
        self._last = (now, memory, gpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Reporter:
    """Reports stages of a run on ``stream`` and records their time and memory.

    GPU memory is recorded on ``device`` when it is a CUDA device (without ``device``: when CUDA is available).
    ``case``: the run is one case of a batch; its lines and events say which, and ``on_stage`` is told the name of
    each stage that starts (for a bar over the cases).
    """

    def __init__(self, stages: int, stream: TextIO | None = None, quiet: bool = False,
                 progress_lines: bool = False, device: torch.device | None = None,
                 case: CasePosition | None = None, on_stage: Callable[[str], None] | None = None) -> None:
        self.stages = stages
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.progress_lines = progress_lines
        self.device = device
        self.case = case
        self.on_stage = on_stage
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.records: list[StageRecord] = []

    def log(self, message: str) -> None:
        if not self.quiet:
            if self.case is not None:
                message = f"{self.case.id} ({self.case.number}/{self.case.count}): {message}"
            if self.interactive:
                tqdm.write(message, file=self.stream)  # above any bar, which stays at the bottom
            else:
                print(message, file=self.stream, flush=True)

    def _progress(self, name: str, done: int | None, total: int | None, **extra: float) -> None:
        """Print a machine-readable progress line (with ``progress_lines``, even when quiet)."""
        if self.progress_lines:
            event = {"stage": len(self.records) + 1, "stages": self.stages, "name": name, "done": done,
                     "total": total, **extra}
            if self.case is not None:
                event.update(case=self.case.number, cases=self.case.count, id=self.case.id)
            print(PROGRESS_PREFIX + json.dumps(event), file=self.stream, flush=True)

    def _gpu(self) -> torch.device | None:
        """The CUDA device whose memory is recorded, or ``None``."""
        if self.device is None:
            return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        return self.device if self.device.type == "cuda" else None

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Update]:
        """Run one stage; the block may call the yielded function with a number of finished steps."""
        label = f"[{len(self.records) + 1}/{self.stages}] {name}"
        use_bar = self.interactive and not self.quiet and total is not None
        if self.on_stage is not None:
            self.on_stage(name)
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
        gpu = self._gpu()
        if gpu is not None:
            torch.cuda.init()  # its memory statistics exist once CUDA is initialised (the first stage comes before)
            torch.cuda.reset_peak_memory_stats(gpu)
        start = time.perf_counter()
        with _MemorySampler(gpu) as sampler:
            try:
                yield update
            finally:
                if bar:
                    bar.close()
        peak_gpu = torch.cuda.max_memory_allocated(gpu) / 2**20 if gpu is not None else None
        record = StageRecord(name, time.perf_counter() - start, sampler.peak, peak_gpu, sampler.area,
                             sampler.gpu_area)
        self._progress(name, done if total is not None else None, total, seconds=round(record.seconds, 3))
        self.records.append(record)
        self.log(f"{label}: {record.seconds:.2f} s, peak memory {record.peak_memory_mb:.0f} MB"
                 + (f", GPU {peak_gpu:.0f} MB" if peak_gpu is not None else ""))


class CaseProgress:
    """Progress over the cases of a batch on ``stream``: on a terminal a tqdm bar that shows the current case and
    stage, else one line per finished case; nothing when ``quiet``."""

    def __init__(self, count: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.count = count
        self.stream = stream or sys.stderr
        self.quiet = quiet
        interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=count, desc="cases", unit="case", file=self.stream, dynamic_ncols=True) \
            if interactive and not quiet else None
        self.current = ""

    def start(self, case: CasePosition) -> None:
        self.current = case.id
        if self.bar is not None:
            self.bar.set_postfix_str(case.id)

    def stage(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.current}: {name}")

    def error(self, message: str) -> None:
        """Report a failed case, even when quiet (above the bar on a terminal)."""
        if self.bar is not None:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def finish(self, case: CasePosition, status: str, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif not self.quiet:
            print(f"case {case.number}/{case.count} {case.id}: {status} in {seconds:.1f} s", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
