"""Rendering rows as a table, JSON or CSV. Services hand over dicts of public fields only; json and
csv stream row by row, so a listing of any size never sits in memory whole."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable

FORMATS = ("table", "json", "csv")


def render(rows: Iterable[dict], fmt: str, columns: list[str], *, headers: dict | None = None, out=None) -> int:
    """Write `rows` (only the `columns` keys) in `fmt`; returns how many rows were written."""
    out = out or sys.stdout
    if fmt == "json":
        return _json(rows, columns, out)
    if fmt == "csv":
        return _csv(rows, columns, out)
    return _table(rows, columns, headers or {}, out)


def _json(rows, columns, out) -> int:
    return json_array(([json.dumps({c: row.get(c) for c in columns})] for row in rows), out)


def json_array(batches: Iterable[list[str]], out=None) -> int:
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


def _csv(rows, columns, out) -> int:
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
        count += 1
    return count


def _table(rows, columns, headers, out) -> int:
    from tabulate import tabulate

    body = [["-" if row.get(c) in (None, "") else row.get(c) for c in columns] for row in rows]
    if not body:
        return 0
    out.write(tabulate(body, headers=[headers.get(c, c) for c in columns], tablefmt="simple") + "\n")
    return len(body)
