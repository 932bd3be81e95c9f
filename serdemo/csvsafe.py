"""CSV cells that a spreadsheet will not run: untrusted text that looks like a formula is neutralised.

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and
some do after a leading tab or carriage return), so a file named ``=HYPERLINK(...).wav`` or a manifest
column holding ``=cmd|...`` would become a live formula in whoever opens the output. :func:`safe_cell`
prefixes such a string with a single quote (the OWASP advice), which spreadsheets show as text.

Only strings are touched: numbers we computed (a probability, a count, a negative offset) stay numbers,
so apply it to what came from outside (file names, paths, copied manifest columns). :func:`write_csv`
applies it to every string cell and writes the file atomically (:func:`serdemo.fsutil.atomic_write`).

    write_csv("out.csv", ["path", "label", "confidence"], rows)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Mapping

from serdemo.fsutil import atomic_write

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """``value`` unchanged unless it is a string a spreadsheet would read as a formula; then ``'`` + it."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _write_rows(f, fieldnames: list[str], rows: Iterable[Mapping]) -> None:
    writer = csv.DictWriter(f, fieldnames=[safe_cell(k) for k in fieldnames], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({safe_cell(k): safe_cell(v) for k, v in row.items()})


def csv_text(fieldnames: list[str], rows: Iterable[Mapping]) -> str:
    """The CSV text of ``rows`` (missing keys empty, extra keys an error), every string cell made safe."""
    buf = io.StringIO()
    _write_rows(buf, fieldnames, rows)
    return buf.getvalue()


def write_csv(path, fieldnames: list[str], rows: Iterable[Mapping]) -> Path:
    """Write ``rows`` (dicts keyed by ``fieldnames``; missing keys empty) to ``path`` as UTF-8 CSV, atomically,
    every string cell made safe; returns ``path``. ``rows`` may be a generator: rows are written as it yields
    them (into a temporary file beside ``path``, renamed over it at the end), so memory does not grow with
    the file, and an exception while iterating leaves no partial ``path``."""
    path = Path(path)

    def write(raw) -> None:
        f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        _write_rows(f, fieldnames, rows)
        f.flush()
        f.detach()  # atomic_write flushes, fsyncs and closes the binary file itself

    atomic_write(path, write)
    return path


__all__ = ["FORMULA_STARTS", "csv_text", "safe_cell", "write_csv"]
