"""Rendering rows as a table, JSON or CSV. Services hand over dicts of public fields only; json and
csv stream row by row, so a listing of any size never sits in memory whole."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from broker.renew import RenewReport
    from broker.revoke import RevokeReport

    Row = Mapping[str, object]


def mask_key(access_key_id: str) -> str:
    """An access key id for logs: its last four characters. Listings and reports, which audit
    needs, show it whole; logs do not."""
    return f"...{access_key_id[-4:]}" if len(access_key_id) > 4 else "..."


_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def terminal_safe(value: object) -> str:
    """A cell for a terminal: control characters (ESC, CR, newlines, C1) shown as \\xNN, never sent."""
    return str(value).translate(_CONTROL)


def csv_safe(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or tab/CR) gets a leading '."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


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
    streamed (for rows a database encoded itself); returns how many objects. Nothing is written
    until the source has produced its first batch (or ended): a source that fails first leaves
    stdout empty, not a lone `[` before the error."""
    out = out or sys.stdout
    count = 0
    started = False
    for batch in batches:
        if not started:
            out.write("[")
            started = True
        if batch:
            out.write(",\n  " if count else "\n  ")
            out.write(",\n  ".join(batch))
            count += len(batch)
    if not started:
        out.write("[")
    out.write("\n]\n" if count else "]\n")
    return count


def _csv(rows: Iterable[Row], columns: list[str], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else csv_safe(row.get(c)) for c in columns})
        count += 1
    return count


def _table(rows: Iterable[Row], columns: list[str], headers: Mapping[str, str], out: TextIO) -> int:
    from tabulate import tabulate

    body = [["-" if row.get(c) in (None, "") else _cell(row.get(c)) for c in columns] for row in rows]
    if not body:
        return 0
    out.write(tabulate(body, headers=[headers.get(c, c) for c in columns], tablefmt="simple") + "\n")
    return len(body)


def _cell(value: object) -> object:
    return terminal_safe(value) if isinstance(value, str) else value


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
        cells = ["-" if row.get(c) in (None, "") else terminal_safe(row.get(c)) for c in columns]
        out.write("  ".join(v.ljust(w) for v, w in zip(cells, sizes, strict=True)).rstrip() + "\n")
        count += 1
    return count


# -- reports of bulk operations -------------------------------------------------------------------------

REVOKE_COLUMNS = [
    "lease_id",
    "credential_type",
    "access_key_id",
    "role_session_name",
    "mount",
    "role",
    "namespace",
    "expires_at",
    "result",
    "error",
]
REVOKE_HEADERS = {
    "lease_id": "LEASE ID",
    "credential_type": "TYPE",
    "access_key_id": "ACCESS KEY ID",
    "role_session_name": "SESSION NAME",
    "mount": "MOUNT",
    "role": "ROLE",
    "namespace": "NAMESPACE",
    "expires_at": "EXPIRES (UTC)",
    "result": "RESULT",
    "error": "ERROR",
}
RENEW_COLUMNS = ["lease_id", "credential_type", "access_key_id", "result", "expires_at", "detail"]
RENEW_HEADERS = {
    "lease_id": "LEASE ID",
    "credential_type": "TYPE",
    "access_key_id": "ACCESS KEY ID",
    "result": "RESULT",
    "expires_at": "EXPIRES (UTC)",
    "detail": "DETAIL",
}
# What each placeholder in a deny policy stands for.
PRINCIPAL_HINT = {"role": "IAM role that Vault role assumes", "user": "IAM user of aws/config/root"}


def render_report(report: RevokeReport | RenewReport, fmt: str, out: TextIO | None = None) -> None:
    """Write the report of a bulk operation in `fmt` (table or json)."""
    from broker.renew import RenewReport

    out = out or sys.stdout
    if isinstance(report, RenewReport):
        _renew_report(report, out)
    elif fmt == "json":
        from broker.revoke import report_dict

        out.write(json.dumps(report_dict(report), indent=2) + "\n")
    else:
        _revoke_report(report, out)


def _revoke_report(report: RevokeReport, out: TextIO) -> None:
    """A table of every lease and what happened, the prefix calls, the STS warning and
    ready-to-paste deny policies."""
    from broker import policies

    out.write(_revoke_summary(report) + "\n")
    rows = [{**r.target.public(), "result": r.outcome, "error": r.error} for r in report.results]
    if rows:
        out.write("\n")
        render(rows, "table", REVOKE_COLUMNS, headers=REVOKE_HEADERS, out=out)
    for call in report.prefix_calls:
        where = f" in namespace {call.namespace}" if call.namespace else ""
        state = {None: "would call", True: "revoked", False: "FAILED"}[call.ok]
        out.write(
            f"{state}: sys/leases/revoke-prefix/{call.prefix}{where} at {call.vault_addr}"
            f"{' (' + call.error + ')' if call.error else ''}\n"
        )
    if report.prefix_calls:
        out.write(
            "note: revoke-prefix revokes every lease under these prefixes, issued to anyone, "
            "not only the ones in this ledger\n"
        )
    sts = report.sts_targets()
    warning = policies.sts_warning(sts, dry_run=report.dry_run)
    if warning:
        out.write("\nWARNING: " + warning + "\n")
        for policy in policies.deny_policies(sts, report.at):
            out.write(
                f"\n# {policy.vault_role} ({policy.credential_type}, {policy.lease_count} lease"
                f"{'s' if policy.lease_count != 1 else ''}): {policy.note}\n"
            )
            if policy.principal in (policies.ROLE_PLACEHOLDER, policies.VAULT_USER_PLACEHOLDER):
                out.write(f"# replace {policy.principal} with the {PRINCIPAL_HINT[policy.attach_to]}\n")
            out.write(policy.command() + "\n")
    if report.failed:
        out.write(
            f"\n{len(report.failed)} revocation{'s' if len(report.failed) != 1 else ''} failed; "
            f"run the same command again to retry only those\n"
        )


def _revoke_summary(report: RevokeReport) -> str:
    parts = [f"{n} {name.replace('_', ' ')}" for name, n in report.counts().items() if n]
    head = "revoke --dry-run" if report.dry_run else "revoke"
    return f"{head} ({report.describe()}): " + (", ".join(parts) if parts else "nothing to revoke")


def _renew_report(report: RenewReport, out: TextIO) -> None:
    from broker import cache

    rows: list[dict[str, Any]] = [
        {
            "lease_id": r.target.lease_id,
            "credential_type": r.target.credential_type,
            "access_key_id": r.target.access_key_id,
            "result": r.outcome,
            "expires_at": cache.iso_utc(r.expires_at or r.target.expires_at or 0),
            "detail": r.error,
        }
        for r in report.results
    ]
    render(rows, "table", RENEW_COLUMNS, headers=RENEW_HEADERS, out=out)
    out.write(report.summary() + "\n")


def write_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(value, indent=2) + "\n")


def write_text(text: str, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(text if text.endswith("\n") or not text else text + "\n")
