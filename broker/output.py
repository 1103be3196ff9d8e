"""Rendering rows as a table, JSON or CSV. Services hand over dicts of public fields only; json and
csv stream row by row, so a listing of any size never sits in memory whole."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from broker.reconcile import ReconcileReport
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


# -- tables that fit: a column spec per table -----------------------------------------------------------
#
# A table declares its columns once (TableSpec): every column it can show, in order, with its header,
# the few shown by default (chosen to fit 120 characters for typical values) and, per column, a
# shortener for the table only (json and csv always carry the full values). `--wide` shows every
# column unshortened; `--columns a,b,c` picks (options.table_options adds both to a command).

TABLE_WIDTH = 120
SHORT_ID_CHARS = 8


def short_id(value: Any, now: float) -> str | None:
    """A lease id's last path segment, cut to 8 characters: aws/creds/deploy/TyM702fvk2yi -> TyM702fv..
    (the full id is in --wide, json and csv)."""
    if not value:
        return None
    tail = str(value).rsplit("/", 1)[-1]
    return tail if len(tail) <= SHORT_ID_CHARS + 2 else tail[:SHORT_ID_CHARS] + ".."


def relative_time(value: Any, now: float) -> str | None:
    """An epoch (or "YYYY-MM-DD HH:MM:SS"/ISO UTC text) relative to now: "in 55m", "3h12m ago"."""
    epoch = _epoch(value)
    if epoch is None:
        return None
    delta = int(epoch - now)
    text = _coarse(abs(delta))
    return "now" if text == "0s" else f"in {text}" if delta > 0 else f"{text} ago"


def cut(limit: int) -> Callable[[Any, float], str | None]:
    """A shortener that keeps the first `limit` characters of free text (errors, details)."""

    def shorten(value: Any, now: float) -> str | None:
        if value in (None, ""):
            return None
        text = " ".join(str(value).split())
        return text if len(text) <= limit else text[: limit - 2] + ".."

    return shorten


def _coarse(seconds: int) -> str:
    """At most two units: 45s, 12m30s, 3h12m, 2d4h."""
    for size, unit, sub, subunit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if seconds >= size:
            rest = (seconds % size) // sub
            return f"{seconds // size}{unit}" + (f"{rest}{subunit}" if rest else "")
    return f"{seconds}s"


def _epoch(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return float(value)
    import calendar

    text = str(value).replace("T", " ").rstrip("Z")
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return None


@dataclass(frozen=True)
class Column:
    name: str
    header: str
    shorten: Callable[[Any, float], str | None] | None = None  # the default table's form of a value
    width: int | None = None  # the shortened form's width when it is bounded (lets a table stream)


@dataclass(frozen=True)
class TableSpec:
    """Every column a table can show, in order, and the default ones."""

    columns: tuple[Column, ...]
    default: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def choose(self, wide: bool, chosen: Sequence[str] | None) -> list[str]:
        """The columns to show: --columns as given, --wide every one, else the default."""
        if chosen:
            return list(chosen)
        return self.names if wide else list(self.default)

    def unknown(self, chosen: Sequence[str]) -> list[str]:
        return [name for name in chosen if name not in self.names]

    @property
    def headers(self) -> dict[str, str]:
        return {c.name: c.header for c in self.columns}

    def shortened(self, row: Row, columns: Sequence[str], now: float, *, wide: bool) -> dict[str, Any]:
        """The row as the table shows it: each column's shortener applied unless `wide`."""
        out: dict[str, Any] = {}
        for name in columns:
            column, value = self.column(name), row.get(name)
            out[name] = column.shorten(value, now) if column.shorten and not wide else value
        return out

    def fixed_widths(self, columns: Sequence[str], *, wide: bool) -> dict[str, int]:
        """Widths known without looking at the rows (shortened columns with a bound)."""
        if wide:
            return {}
        return {c: w for c in columns if (w := self.column(c).width) is not None}


def render_table(
    spec: TableSpec,
    rows: Iterable[Row],
    columns: Sequence[str],
    *,
    wide: bool = False,
    out: TextIO | None = None,
    widths: Mapping[str, int] | None = None,
    now: float | None = None,
) -> int:
    """A table of `rows` laid out by `spec`: shortened unless `wide`; streamed when `widths` (the
    widths of the unbounded columns, measured beforehand) is given."""
    now = time.time() if now is None else now
    shown = (spec.shortened(row, columns, now, wide=wide) for row in rows)
    if widths is None:
        return _table(list(shown), list(columns), spec.headers, out or sys.stdout)
    sizes = dict(widths)
    for name, bound in spec.fixed_widths(columns, wide=wide).items():
        sizes[name] = min(sizes.get(name, bound), bound)
    return _fixed_table(shown, list(columns), spec.headers, sizes, out or sys.stdout)


# -- reports of bulk operations -------------------------------------------------------------------------

REVOKE_TABLE = TableSpec(
    columns=(
        Column("lease_id", "LEASE ID", short_id, SHORT_ID_CHARS + 2),
        Column("credential_type", "TYPE"),
        Column("access_key_id", "ACCESS KEY ID"),
        Column("role_session_name", "SESSION NAME", cut(24)),
        Column("mount", "MOUNT"),
        Column("role", "ROLE"),
        Column("namespace", "NAMESPACE"),
        Column("expires_at", "EXPIRES", relative_time),
        Column("result", "RESULT"),
        Column("error", "ERROR", cut(28)),
        Column("host", "HOST"),
        Column("user", "USER"),
        Column("db_user", "PUSHED BY"),
    ),
    default=("lease_id", "credential_type", "access_key_id", "role", "expires_at", "result", "error"),
)
FLEET_ONLY = ("host", "user", "db_user")  # revoke report columns only fleet rows have
RENEW_TABLE = TableSpec(
    columns=(
        Column("lease_id", "LEASE ID", short_id, SHORT_ID_CHARS + 2),
        Column("credential_type", "TYPE"),
        Column("access_key_id", "ACCESS KEY ID"),
        Column("result", "RESULT"),
        Column("expires_at", "EXPIRES", relative_time),
        Column("detail", "DETAIL", cut(40)),
    ),
    default=("lease_id", "credential_type", "access_key_id", "result", "expires_at", "detail"),
)
REVOKE_COLUMNS = REVOKE_TABLE.names
RENEW_COLUMNS = RENEW_TABLE.names
# What each placeholder in a deny policy stands for.
PRINCIPAL_HINT = {"role": "IAM role that Vault role assumes", "user": "IAM user of aws/config/root"}


RECONCILE_TABLE = TableSpec(
    columns=(
        Column("result", "RESULT"),
        Column("lease_id", "LEASE ID", short_id, SHORT_ID_CHARS + 2),
        Column("profile", "PROFILE"),
        Column("access_key_id", "ACCESS KEY ID"),
        Column("issued_at", "ISSUED", relative_time),
        Column("expires_at", "EXPIRES", relative_time),
        Column("detail", "DETAIL", cut(48)),
    ),
    default=("result", "lease_id", "profile", "expires_at", "detail"),
)


def render_report(
    report: RevokeReport | RenewReport | ReconcileReport,
    fmt: str,
    out: TextIO | None = None,
    *,
    wide: bool = False,
    columns: Sequence[str] | None = None,
) -> None:
    """Write the report of a bulk operation in `fmt` (table or json); the table shows `columns`
    (default: the spec's default ones, or every one when `wide`)."""
    from broker.reconcile import ReconcileReport
    from broker.renew import RenewReport

    out = out or sys.stdout
    if isinstance(report, ReconcileReport):
        if fmt == "json":
            from broker.reconcile import report_dict as reconcile_dict

            out.write(json.dumps(reconcile_dict(report), indent=2) + "\n")
        else:
            _reconcile_report(report, out, RECONCILE_TABLE.choose(wide, columns), wide)
    elif isinstance(report, RenewReport):
        _renew_report(report, out, RENEW_TABLE.choose(wide, columns), wide)
    elif fmt == "json":
        from broker.revoke import report_dict

        out.write(json.dumps(report_dict(report), indent=2) + "\n")
    else:
        shown = REVOKE_TABLE.choose(wide, columns)
        if not report.fleet and not columns:  # a local report has no host columns
            shown = [c for c in shown if c not in FLEET_ONLY]
        elif report.fleet and not (wide or columns):  # whose rows: the host, and the login that pushed them
            shown = ["host", "db_user", *shown]
        _revoke_report(report, out, shown, wide)


def _revoke_report(report: RevokeReport, out: TextIO, columns: list[str], wide: bool) -> None:
    """A table of every lease and what happened, the prefix calls, the STS warning and
    ready-to-paste deny policies."""
    from broker import policies

    out.write(_revoke_summary(report) + "\n")
    rows = [{**r.target.public(fleet=report.fleet), "result": r.outcome, "error": r.error} for r in report.results]
    if rows:
        out.write("\n")
        render_table(REVOKE_TABLE, rows, columns, wide=wide, out=out)
        _failures_in_full(report.results, out, wide)
    for call in report.prefix_calls:
        where = f" in namespace {call.namespace}" if call.namespace else ""
        state = {None: "would call", True: "revoked", False: "FAILED"}[call.ok]
        out.write(
            f"{state}: sys/leases/revoke-prefix/{call.prefix}{where} at {call.vault_addr}"
            f"{' (' + call.error + ')' if call.error else ''}\n"
        )
    if any(r.outcome == "not_revocable" for r in report.results):
        out.write(
            "note: static role credentials have no lease, so Vault has nothing to revoke; broker stopped serving "
            "them, and the key stays valid until Vault rotates it: vault write MOUNT/rotate-role/ROLE\n"
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


def _failures_in_full(results: Sequence[Any], out: TextIO, wide: bool) -> None:
    """Below a shortened table, each failure's whole error (other_vault included) with the full lease id."""
    if wide:
        return
    for result in results:
        if not result.ok and result.error:
            out.write(f"{result.outcome} {result.target.lease_id or '(no lease id)'}: {terminal_safe(result.error)}\n")


def _revoke_summary(report: RevokeReport) -> str:
    parts = [f"{n} {name.replace('_', ' ')}" for name, n in report.counts().items() if n]
    head = "revoke --dry-run" if report.dry_run else "revoke"
    return f"{head} ({report.describe()}): " + (", ".join(parts) if parts else "nothing to revoke")


def _renew_report(report: RenewReport, out: TextIO, columns: list[str], wide: bool) -> None:
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
    render_table(RENEW_TABLE, rows, columns, wide=wide, out=out)
    _failures_in_full(report.results, out, wide)
    out.write(report.summary() + "\n")


def _reconcile_report(report: ReconcileReport, out: TextIO, columns: list[str], wide: bool) -> None:
    """The summary, then one table row per ledger row Vault no longer knows (or could not be looked
    up) and per lease Vault holds that no ledger row explains, then each problem in full."""
    counts = report.summary()
    out.write(
        f"checked {counts['checked']} active lease(s) against Vault: {counts['live']} live, {counts['ended']} "
        f"ended{' (dry run: not marked)' if report.dry_run and counts['ended'] else ''}, "
        f"{counts['lookup_failed']} lookup(s) failed\n"
    )
    rows: list[dict[str, Any]] = [
        {
            "result": r.outcome,
            "lease_id": r.target.lease_id,
            "profile": r.target.profile,
            "access_key_id": r.target.access_key_id,
            "issued_at": r.target.issued_at,
            "expires_at": r.target.expires_at,
            "detail": r.error,
        }
        for r in report.checked
        if r.outcome != "live"
    ]
    if report.vault_list:
        outcome = {r.target: r for r in report.unknown_results}
        for u in report.unknown:
            done = outcome.get(u.target)
            why = f"{done.error}; " if done and done.error else ""
            rows.append(
                {
                    "result": done.outcome if done else "unknown",
                    "lease_id": u.target.lease_id,
                    "profile": None,
                    "access_key_id": None,
                    "issued_at": u.issue_time,
                    "expires_at": u.expire_time,
                    "detail": why + (u.intent or "no matching intent"),
                }
            )
        out.write(f"unknown leases in Vault (no ledger row): {len(report.unknown)}\n")
    if rows:
        out.write("\n")
        render_table(RECONCILE_TABLE, rows, columns, wide=wide, out=out)
        if not wide:
            for row in rows:
                if row["detail"]:
                    out.write(f"{row['result']} {row['lease_id']}: {terminal_safe(row['detail'])}\n")
    for error in report.list_errors:
        out.write(f"error: {terminal_safe(error)}\n")


def write_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(value, indent=2) + "\n")


def write_text(text: str, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(text if text.endswith("\n") or not text else text + "\n")
