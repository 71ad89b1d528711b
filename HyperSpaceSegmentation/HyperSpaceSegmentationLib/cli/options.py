"""The parts of the command line that several commands share: the parser class every (sub)command uses, the
options that recur from command to command, and ``type=`` validators that give a bad value's one-line error while
the arguments are parsed."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..errors import UserError
from ..models import DEFAULT_MODEL

DEVICE_HELP = "auto (CUDA if present), cpu or cuda (default auto)"
SHORT_DEVICE_HELP = "auto, cpu or cuda (default auto)"
QUIET_HELP = "no progress output"


class Parser(argparse.ArgumentParser):
    """Usage errors end, like every other error, in one ``hyperspace: error:`` line that says what to do; options
    are taken only as spelled out (an abbreviation such as ``--mode`` must never be read as ``--model``); an empty
    value (an unset shell variable) is an error, never the current folder or a default."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def parse_known_args(self, args=None, namespace=None):
        """Parse as argparse does, then refuse an empty value of any argument (a ``UserError``)."""
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:  # a subcommand's parser checks its own arguments
            value = getattr(namespace, action.dest, None)
            if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
                shown = "/".join(action.option_strings) or action.metavar or action.dest.upper()
                raise UserError(f"{shown} is empty (an unset shell variable?): give a value")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        """Print the usage and one error line that points to ``--help``; exit with code 2."""
        self.print_usage(sys.stderr)
        self.exit(2, f"hyperspace: error: {message}; run '{self.prog} --help' for the options\n")


def add_device(parser: argparse.ArgumentParser, help: str = DEVICE_HELP, default: str | None = "auto") -> None:
    """``--device``: where the networks run."""
    parser.add_argument("--device", default=default, help=help)


def add_overwrite(parser: argparse.ArgumentParser, help: str) -> None:
    """``--overwrite``: replace the command's existing outputs."""
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_quiet(parser: argparse.ArgumentParser, help: str = QUIET_HELP) -> None:
    """``--quiet``: no progress output."""
    parser.add_argument("--quiet", action="store_true", help=help)


def add_json(parser: argparse.ArgumentParser, help: str) -> None:
    """``--json``: machine-readable output on stdout."""
    parser.add_argument("--json", action="store_true", help=help)


def add_allow_extrapolation(parser: argparse.ArgumentParser, help: str) -> None:
    """``--allow-extrapolation``: keep spacings outside the model's trained range."""
    parser.add_argument("--allow-extrapolation", action="store_true", help=help)


def add_model_file(parser: argparse.ArgumentParser, help: str) -> None:
    """The optional positional MODEL file (default: the embedded model)."""
    parser.add_argument("model", nargs="?", default=None, help=help)


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """``--model``: one model file (default: the embedded model)."""
    parser.add_argument("--model", default=None, help=f"model file (default: the embedded {DEFAULT_MODEL.name})")


def process_count(text: str) -> int:
    """``--workers``: a whole number of processes, 1 or more."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if count < 1:
        raise UserError(f"--workers {count}: give 1 or more processes")
    return count


def csv_file(text: str) -> str:
    """A results file, which is written as CSV: a name ending in .csv (an empty one is the parser's to refuse)."""
    if text.strip() and not text.lower().endswith(".csv"):
        raise UserError(f"{text}: results are written as CSV; give a name ending in .csv")
    return text
