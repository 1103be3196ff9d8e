"""Rendering rows as a table, JSON or CSV. Services hand over dicts of public fields only; json and
csv stream row by row, so a listing of any size never sits in memory whole."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TextIO

    Row = Mapping[str, object]

FORMATS = ("table", "json", "csv")


def mask_key(access_key_id: str) -> str:
    """An access key id for logs: its last four characters. Listings and reports, which audit
    needs, show it whole; logs do not."""
    return f"...{access_key_id[-4:]}" if len(access_key_id) > 4 else "..."


def render(
    rows: Iterable[Row],
    fmt: str,
    columns: list[str],
    *,
    headers: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    widths: Mapping[str, int] | None = None,
) -> int:
    """Write `rows` (only the `columns` keys) in `fmt`; returns how many rows were written.
    A table given `widths` (column -> characters, known beforehand) streams too."""
    out = out or sys.stdout
    if fmt == "json":
        return _json(rows, columns, out)
    if fmt == "csv":
        return _csv(rows, columns, out)
    if widths is not None:
        return _fixed_table(rows, columns, headers or {}, widths, out)
    return _table(rows, columns, headers or {}, out)


def _json(rows: Iterable[Row], columns: list[str], out: TextIO) -> int:
    return json_array(([json.dumps({c: row.get(c) for c in columns})] for row in rows), out)


def json_array(batches: Iterable[list[str]], out: TextIO | None = None) -> int:
    """Write batches of already-encoded JSON objects as the one JSON array `render` writes,
    streamed (for rows a database encoded itself); returns how many objects."""
    out = out or sys.stdout
    count = 0
    out.write("[")
    for batch in batches:
        if batch:
            out.write(",\n  " if count else "\n  ")
            out.write(",\n  ".join(batch))
            count += len(batch)
    out.write("\n]\n" if count else "]\n")
    return count


def _csv(rows: Iterable[Row], columns: list[str], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
        count += 1
    return count


def _table(rows: Iterable[Row], columns: list[str], headers: Mapping[str, str], out: TextIO) -> int:
    from tabulate import tabulate

    body = [["-" if row.get(c) in (None, "") else row.get(c) for c in columns] for row in rows]
    if not body:
        return 0
    out.write(tabulate(body, headers=[headers.get(c, c) for c in columns], tablefmt="simple") + "\n")
    return len(body)


def _fixed_table(
    rows: Iterable[Row], columns: list[str], headers: Mapping[str, str], widths: Mapping[str, int], out: TextIO
) -> int:
    """tabulate's "simple" layout, row by row, with column widths decided before the first row."""
    names = [headers.get(c, c) for c in columns]
    sizes = [max(len(name), int(widths.get(c, 0))) for c, name in zip(columns, names, strict=True)]
    count = 0
    for row in rows:
        if not count:
            out.write("  ".join(n.ljust(w) for n, w in zip(names, sizes, strict=True)).rstrip() + "\n")
            out.write("  ".join("-" * w for w in sizes) + "\n")
        cells = ["-" if row.get(c) in (None, "") else str(row.get(c)) for c in columns]
        out.write("  ".join(v.ljust(w) for v, w in zip(cells, sizes, strict=True)).rstrip() + "\n")
        count += 1
    return count
