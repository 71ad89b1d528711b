"""A batch of ``hyperspace segment``: the batch's own checks, the plan of its outputs, its cases one after the other
(the next read while one is predicted; a failed case reported and skipped), its share under torchrun or ``--shard``,
and the summary CSV."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError, error_line
from .segment_run import MapFiles, SegmentationRun, batch_mode, memory_time, model_inputs, read_scan, segment_case


def segment_batch(args: argparse.Namespace, cases: list, *, device: Any, rank: int, world: int) -> int:
    """Segment this process's share of ``cases`` into the folder ``-o`` and write the summary CSV (rank 0 of a
    ``torchrun`` group: the one of every process); exit code 1 if a case of this process failed. Interrupted
    (Ctrl+C, SIGTERM), a single process writes the summary of the cases it went through before it stops."""
    from ..inference.cases import close_group, gather, parse_shard, share, write_summary
    from ..io.images import output_folder

    suffix = _check_batch_options(args, world)
    part, parts = parse_shard(args.shard) if args.shard is not None else (rank + 1, world)
    cases = _scans_of_batch(args, cases, suffix, rank)
    mine = share(cases, part - 1, parts)
    csv_inputs = {item: f"cases CSV {item}" for item in args.input
                  if item.lower().endswith(".csv") and Path(item).is_file()}
    other_inputs = {**csv_inputs, **{path: role for role, path in model_inputs(args).items()}}
    with output_folder(args.output, "-o") as folder:  # removed again if the run fails before any case
        default = f"summary-shard-{part}-of-{parts}.csv" if args.shard is not None else "summary.csv"
        summary = Path(args.summary) if args.summary else folder / default
        outputs, skip = _plan_outputs(args, rank=rank, world=world, mine=mine, cases=cases, folder=folder,
                                      suffix=suffix, summary=summary, other_inputs=other_inputs)
        run = SegmentationRun(args, device, world)
        run.mode = batch_mode(args, cases)
        rows, interrupted = segment_cases(args, run, cases=mine, outputs=outputs, skip=skip, total=len(cases))
        if interrupted:  # Ctrl+C: the cases done so far, in this process alone (other processes may be gone)
            if rank == 0 and world == 1 and rows:
                with contextlib.suppress(UserError, OSError):
                    write_summary(rows, summary, args.overwrite or args.skip_existing)
                    print(f"hyperspace: interrupted; the summary of the {len(rows)} cases gone through is in "
                          f"{summary} (run again with --skip-existing to continue)", file=sys.stderr)
            raise interrupted
        every = sorted((row for rows_of in gather(rows, world) for row in rows_of), key=lambda row: row["index"])
        if rank == 0:
            write_summary(every, summary, args.overwrite or args.skip_existing)
        gather(None, world)  # every process ends after the summary is written (torchrun stops all when one fails)
        close_group()
    return _report(args, rows, summary=summary if rank == 0 else None, folder=folder)


def _check_batch_options(args: argparse.Namespace, world: int) -> str:
    """Refuse the options of one INPUT and an output that names a file; the output suffix, checked."""
    from ..inference.cases import check_output_suffix
    from ..io.images import IMAGE_EXTENSIONS, extension

    if args.probabilities is not None or args.uncertainty is not None:
        raise UserError("--probabilities and --uncertainty name one file each, for one INPUT: segment the scans to "
                        "review one at a time with them")
    if args.mask is not None:
        raise UserError("--mask is the mask of one scan, for one INPUT: segment the scans with masks one at a time")
    suffix = ".seg.nrrd" if args.output_suffix is None else args.output_suffix
    check_output_suffix(suffix)
    if extension(args.output) in (*IMAGE_EXTENSIONS, ".csv") and not Path(args.output).is_dir():
        raise UserError(f"-o {args.output} looks like a file name, but the inputs make a batch, whose outputs go in a "
                        "folder: give -o a folder name (such as results), or segment one INPUT")
    if args.shard is not None and world > 1:
        raise UserError("--shard splits the cases among separate jobs, but under torchrun the processes share them "
                        "already: drop --shard")
    return suffix


def _plan_outputs(args: argparse.Namespace, *, rank: int, world: int, mine: list, cases: list, folder: Path,
                  suffix: str, summary: Path, other_inputs: dict[str, str]) -> tuple[list[Path], list[bool]]:
    """``(outputs, skip)`` of this process's cases ``mine``, every output (and rank 0's summary) checked before any
    work; under torchrun every process stops when one finds a problem, or none does."""
    from ..inference.cases import check_picture_outputs, check_summary, close_group, gather, plan_outputs

    problem = None
    try:
        outputs, skip = plan_outputs(mine, cases, folder, suffix, overwrite=args.overwrite, other_inputs=other_inputs,
                                     skip_existing=args.skip_existing)
        check_picture_outputs(mine, outputs)
        if rank == 0:
            check_summary(summary, {**{c.image: f"input of case {c.id}" for c in cases}, **other_inputs,
                                    **{str(o): f"output of case {c.id}" for c, o in zip(mine, outputs)}},
                          args.skip_existing, args.overwrite)
    except UserError as error:
        problem = str(error)
    problems = [p for p in gather(problem, world) if p]  # under torchrun: every process stops, or none
    if problems:
        close_group()
        raise UserError(problems[0])
    return outputs, skip


def _report(args: argparse.Namespace, rows: list[dict], *, summary: Path | None, folder: Path) -> int:
    """Print what the batch did (``summary``: the summary CSV this process wrote, if any); its exit code."""
    failed = sum(row["status"] == "failed" for row in rows)
    skipped = sum(row["status"] == "skipped" for row in rows)
    if args.json:
        print(json.dumps({"summary": str(summary) if summary is not None else None,
                          "cases": [{k: v for k, v in row.items() if k != "index"} for row in rows]}, indent=2))
    elif not args.quiet:
        where = f"; summary: {summary}" if summary is not None else ""
        notes = ([f"{failed} failed"] if failed else []) + \
            ([f"{skipped} skipped: their outputs exist"] if skipped else [])
        print(f"segmented {len(rows) - failed - skipped} of {len(rows)} cases into {folder}"
              + (f" ({'; '.join(notes)})" if notes else "") + where)
    return 1 if failed else 0


def _scans_of_batch(args: argparse.Namespace, cases: list, suffix: str, rank: int) -> list:
    """``cases`` without the files that a folder or pattern found but are outputs of this batch (an earlier run's,
    with a note), their ids checked: unique."""
    from ..inference.cases import check_unique_ids, drop_own_outputs

    cases, dropped = drop_own_outputs(cases, Path(args.output), suffix)
    if dropped and rank == 0 and not args.quiet:
        names = ", ".join(Path(case.image).name for case in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        print(f"note: {len(dropped)} file(s) found are outputs of this batch, not scans, and are left out: {names}",
              file=sys.stderr)
    if not cases:
        raise UserError(f"every file found is an output of this batch ({args.output}): give the scans to segment")
    check_unique_ids(cases)
    return cases


def segment_cases(args: argparse.Namespace, run: SegmentationRun, *, cases: list, outputs: list[Path],
                  skip: list[bool], total: int) -> tuple[list[dict], BaseException | None]:
    """Segment ``cases`` one after the other into ``outputs`` (those marked in ``skip`` not: their outputs exist),
    reading each next case in a background thread while one is predicted; a case that fails is reported in one line
    on stderr and skipped. ``(rows, interrupted)``: one summary row per case gone through, and the
    ``KeyboardInterrupt`` (Ctrl+C) or ``SystemExit`` (SIGTERM) that stopped the batch (its case listed as
    cancelled), if one did."""
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import CasePosition, CaseProgress

    progress = CaseProgress(len(cases), quiet=args.quiet)
    rows = []
    todo = [number for number, skipped in enumerate(skip) if not skipped]  # the cases to read, in order
    interrupted = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        reads = {}

        def read_ahead(number: int) -> None:
            """Start reading the next case to segment after case ``number`` (0-based)."""
            following = next((n for n in todo if n > number), None)
            if following is not None and following not in reads:
                reads[following] = pool.submit(read_scan, cases[following].image, args.input_spacing)

        read_ahead(-1)
        for number, (case, output) in enumerate(zip(cases, outputs), 1):
            row = {"index": case.index, "id": case.id, "input": case.image, "output": str(output), "status": "done",
                   "spacing_mm": None, "error": None}
            if skip[number - 1]:
                rows.append({**row, "status": "skipped", "error": "output exists (--skip-existing)"})
                continue
            read_ahead(number - 1)  # read the next case while this one is predicted
            position = CasePosition(number, len(cases), case.id)
            interrupted = _segment_row(args, run, case=case, output=output, row=row, position=position,
                                       read=reads[number - 1].result, progress=progress, total=total)
            if interrupted:
                for future in reads.values():
                    if future is not None:
                        future.cancel()
            reads[number - 1] = None  # the image is no longer needed
            rows.append(row)
            if interrupted:
                break
            progress.finish(position, row["status"], row["seconds"])
    progress.close()
    return rows, interrupted


def _segment_row(args: argparse.Namespace, run: SegmentationRun, *, case: Any, output: Path, row: dict,
                 position: Any, read: Callable[[], tuple], progress: Any, total: int) -> BaseException | None:
    """Segment ``case`` into ``output`` and fill in its summary ``row`` (status, spacing, error, time and memory);
    the ``KeyboardInterrupt`` or ``SystemExit`` that stopped it, if one did (its case cancelled, nothing written)."""
    from ..progress import Reporter

    progress.start(position)
    reporter = Reporter(stages=run.stages, quiet=args.quiet or progress.bar is not None,
                        progress_lines=args.progress_lines, device=run.device, case=position, on_stage=progress.stage)
    start = time.perf_counter()
    interrupted = None
    try:
        row["spacing_mm"] = segment_case(run, name=case.image, output=output, read=read, reporter=reporter,
                                         maps=MapFiles())["spacing_mm"]
    except (UserError, RuntimeError, MemoryError, OSError) as error:
        row.update(output=None, status="failed", error=error_line(error))
        progress.error(f"hyperspace: case {case.id} ({case.index + 1} of {total}) failed: {row['error']}")
    except (KeyboardInterrupt, SystemExit) as error:  # Ctrl+C, or terminated (SIGTERM, see main): this case
        row.update(output=None, status="cancelled", error="interrupted")  # is not written (nor its temporary)
        interrupted = error
    records = reporter.records  # the stages that ran to their end
    row.update(seconds=round(time.perf_counter() - start, 3),
               peak_memory_mb=round(max(r.peak_memory_mb for r in records), 1) if records else None,
               **memory_time(records))
    return interrupted
