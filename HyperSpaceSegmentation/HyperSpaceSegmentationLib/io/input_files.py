"""The files a user names besides images (model files, dataset and config JSON, CSV lists of cases): that the path is
a file, and JSON and CSV text read the one way, each problem a one-line ``UserError`` in the caller's words."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..errors import UserError


def input_file(path: str | os.PathLike, folder: str, missing: str) -> Path:
    """``path`` as a ``Path`` when it is a file; else a ``UserError`` with the message ``folder`` (it is a folder) or
    ``missing`` (it does not exist), in which ``{path}`` stands for the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(folder.format(path=path))
    if not path.is_file():
        raise UserError(missing.format(path=path))
    return path


def read_json(path: Path, name: str) -> object:
    """The JSON file ``path`` (UTF-8, with or without a byte-order mark), called ``name`` ('dataset file') in the
    messages for text that is not UTF-8 or not valid JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"{name} {path} is not UTF-8 text: save it as a UTF-8 JSON file") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{name} {path} is not valid JSON ({error}): fix its syntax") from None


def read_csv_rows(path: Path, name: str, required: tuple[str, ...], columns: str,
                  layout: str = "") -> tuple[list[str], list[tuple[int, dict]]]:
    """``(column names, [(line number, row), ...])`` of the CSV file ``path`` (called ``name``, 'cases CSV', in the
    messages), rows whose cells are all blank left out. Spreadsheet exports are accepted: UTF-8 with or without a
    byte-order mark, CRLF line ends, spaces after the commas and around the column names. A one-line ``UserError``
    for text that is not UTF-8 CSV, a header without the ``required`` columns (``columns`` names them for the
    user, ``layout`` follows in the message: ' (MIST's layout)'), another delimiter than commas, or no rows."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        if "\x00" in text:
            raise csv.Error("it holds NUL characters")
        reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
        names = [column.strip() for column in reader.fieldnames or []]
        reader.fieldnames = names
        rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{name} {path} is not a readable UTF-8 CSV file ({error}): save it as CSV (UTF-8)") from None
    if missing := [column for column in required if column not in names]:
        if shown := foreign_delimiter(text):
            raise UserError(f"{name} {path} separates its columns with {shown}, not commas: save it as CSV with "
                            f"commas (a spreadsheet's 'CSV (comma delimited)'), with the columns {columns}")
        raise UserError(f"{name} {path} lacks the column(s) {', '.join(missing)}: its first line must name the "
                        f"columns {columns}{layout}")
    rows = [(line, row) for line, row in rows
            if any((value or "").strip() for value in row.values() if isinstance(value, str))]
    if not rows:
        raise UserError(f"{name} {path} lists no cases: add one line per case under the header")
    return names, rows


def foreign_delimiter(text: str) -> str | None:
    """How the first line of the CSV text ``text`` separates its columns when not with commas, as spreadsheets set
    to some languages save CSV: 'semicolons (;)', 'tabs' or 'bars (|)'; else ``None``."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    delimiter = next((d for d in ";\t|" if d in first and "," not in first), None)
    return {";": "semicolons (;)", "\t": "tabs", "|": "bars (|)"}.get(delimiter)
