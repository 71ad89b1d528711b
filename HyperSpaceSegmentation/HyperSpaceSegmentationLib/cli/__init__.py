"""The ``hyperspace`` command: segment, train, info, demo, evaluate, export and analyze without 3D Slicer.

Errors a user can fix print one line, ``hyperspace: error: ...``, and exit with code 2; outputs are written
to a temporary file and renamed, so an interrupted or failed run leaves nothing half-written. A batch of scans
(``segment`` with several inputs) reports a failed case in one line, goes on with the others and exits with code 1.

Who owns what (each command module holds its parser, ``add_parser``, and its ``run_*`` function):

- ``__init__``: ``main`` (the entry point), the top-level parser (``build_parser``) and ``COMMANDS``.
- ``__main__``: ``python -m HyperSpaceSegmentationLib.cli``, as the Slicer module runs it.
- ``options``: the parser class, the options several commands share, the ``type=`` validators.
- ``segment``: ``segment``'s options, one INPUT or a batch; ``segment_run``: what every case of a run shares
  (``SegmentationRun``) and one case's segmentation; ``segment_batch``: a batch, its shares and its summary.
- ``evaluate``, ``train``, ``export``, ``analyze``: the command of that name; ``info``: ``info`` and ``demo``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Callable, Sequence

from .. import __version__
from ..errors import UserError
from ..models import DEFAULT_MODEL, DEFAULT_MODEL_2D, SAMPLE_SCAN
from . import analyze, evaluate, export, info, segment, train
from .options import Parser

__all__ = ["COMMANDS", "DEFAULT_MODEL", "DEFAULT_MODEL_2D", "SAMPLE_SCAN", "build_parser", "main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "segment": segment.run_segment, "info": info.run_info, "demo": info.run_demo, "train": train.run_train,
    "evaluate": evaluate.run_evaluate, "export": export.run_export, "analyze": analyze.run_analyze,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``hyperspace`` command and all its commands."""
    parser = Parser(
        prog="hyperspace",
        description="Spacing-adaptive medical image segmentation (HyperSpace): one model, any voxel spacing.",
        epilog="Run 'hyperspace COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (segment, info, train, export, analyze, evaluate):  # info adds info and demo
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperspace`` script; returns the exit code."""
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # terminated: remove temporary files on the way out
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a name (cp1252 on Windows) gets \N escapes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"hyperspace: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperspace: cancelled", file=sys.stderr)
        return 130
