"""`broker leases`: which ledger rows a selection names, as rows of public fields only.

PUBLIC_COLUMNS is the one whitelist of lease fields that may leave the database in a listing or a
report. The query selects these columns and nothing else, so a secret key or session token (sealed
in `leases.secret`) cannot reach any output format, whatever a renderer does.

Listings stream: rows come from the database in batches (yield_per) and go out one by one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from broker import cache, durations, output
from broker.models import LEASES, Lease
from broker.selection import Selection

if TYPE_CHECKING:
    from broker.app import App

# The one whitelist: every field a listing or report may show. Never add `secret` or `cache_key`.
PUBLIC_COLUMNS = [
    "lease_id",
    "profile",
    "mount",
    "role",
    "namespace",
    "credential_type",
    "access_key_id",
    "role_session_name",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
    "revoke_error",
    "end_reason",
    # the Vault identity of the token that asked, and the AWS principal
    "display_name",
    "entity_id",
    "token_accessor",
    "token_policies",
    "account_id",
    "principal_arn",
]
TIME_COLUMNS = ("issued_at", "expires_at", "revoked_at")
TABLE_HEADERS = {
    "lease_id": "LEASE ID",
    "profile": "PROFILE",
    "mount": "MOUNT",
    "role": "ROLE",
    "namespace": "NAMESPACE",
    "credential_type": "TYPE",
    "access_key_id": "ACCESS KEY ID",
    "role_session_name": "SESSION NAME",
    "issued_at": "ISSUED",
    "expires_at": "EXPIRES",
    "left": "LEFT",
    "state": "STATE",
    "revoked_at": "REVOKED",
    "revoked_by": "REVOKED BY",
    "revoke_error": "REVOKE ERROR",
    "end_reason": "END REASON",
    "display_name": "ASKED BY",
    "entity_id": "ENTITY ID",
    "token_accessor": "TOKEN ACCESSOR",
    "token_policies": "POLICIES",
    "account_id": "ACCOUNT",
    "principal_arn": "PRINCIPAL ARN",
}
# Shorteners of the default table (json, csv and --wide carry the full values).
RELATIVE_WIDTH = len("23h59m ago") + 1
SHORTENERS: dict[str, tuple[Callable[[Any, float], str | None], int]] = {
    "lease_id": (output.short_id, output.SHORT_ID_CHARS + 2),
    "role_session_name": (output.cut(24), 24),
    "issued_at": (output.relative_time, RELATIVE_WIDTH),
    "expires_at": (output.relative_time, RELATIVE_WIDTH),
    "revoked_at": (output.relative_time, RELATIVE_WIDTH),
    "principal_arn": (output.cut(40), 40),
    "revoke_error": (lambda text, _now: table_error(text), 40),
}
REVOKE_ERROR_WIDTH = 40  # the table shows the start of a failed revocation's error; json/csv all of it


def table_error(text: str | None) -> str | None:
    """A revoke_error for the table: without its leading timestamp, shortened."""
    if text and len(text) > 21 and text[4] == "-" and text[19] == "Z" and text[20] == " ":
        text = text[21:]
    return text if text is None or len(text) <= REVOKE_ERROR_WIDTH else text[: REVOKE_ERROR_WIDTH - 3] + "..."


def table_column(name: str) -> output.Column:
    shorten, width = SHORTENERS.get(name, (None, None))
    return output.Column(name, TABLE_HEADERS.get(name, name.upper()), shorten, width)


# `broker leases`: every public column plus the time left; by default the ones an engineer looks
# at first, about 110 characters for typical values, and why a revocation failed when one did.
LEASES_TABLE = output.TableSpec(
    columns=tuple(table_column(name) for name in [*PUBLIC_COLUMNS[:10], "left", "state", *PUBLIC_COLUMNS[11:]]),
    default=(
        "lease_id",
        "profile",
        "mount",
        "role",
        "credential_type",
        "access_key_id",
        "issued_at",
        "expires_at",
        "state",
    ),
)
TABLE_COLUMNS = LEASES_TABLE.names
YIELD_PER = 2000
# Widths of the --wide table's columns whose values have a known size: "2026-11-26 19:08:30",
# "expired", "32d23h59m59s".
FIXED_WIDTHS = {"issued_at": 19, "expires_at": 19, "revoked_at": 19, "state": len("expired"), "left": 12}

# The local ledger's columns by name, for Selection.conditions.
LEDGER_COLUMNS: dict[str, ColumnElement[Any]] = {c.key: c for c in LEASES.c}

_SELECTED = [getattr(Lease, name) for name in PUBLIC_COLUMNS if name != "state"] + [Lease.state]
_SELECTED_NAMES = [name for name in PUBLIC_COLUMNS if name != "state"] + ["state"]


@dataclass
class Listing:
    """What `broker leases` renders: rows (a one-shot generator) and how to lay them out."""

    rows: Iterator[dict[str, Any]]
    columns: list[str]
    headers: dict[str, str] | None = None
    widths: dict[str, int] | None = None  # for a streamed table
    spec: output.TableSpec | None = None  # a table's layout (output.render_table)
    wide: bool = False

    def render(self, fmt: str) -> int:
        if fmt == "table" and self.spec is not None:
            return output.render_table(self.spec, self.rows, self.columns, wide=self.wide, widths=self.widths)
        return output.render(self.rows, fmt, self.columns, headers=self.headers, widths=self.widths)


def derived_state(state: str, expires_at: int, now: float) -> str:
    return "expired" if state == "active" and expires_at <= now else state


def iso_or_none(epoch: int | None) -> str | None:
    return cache.iso_utc(epoch) if epoch is not None else None


def readable_time(epoch: int | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch is not None else None


def time_left(state: str, expires_at: int, now: float) -> str | None:
    return durations.format_duration(int(expires_at - now)) if state == "active" else None


def public_row(values: dict[str, Any], now: float, *, table: bool) -> dict[str, Any]:
    """A listing row from selected public columns: derived state, times as ISO-8601 UTC (or
    readable, with time left, for the table)."""
    row = {name: values[name] for name in PUBLIC_COLUMNS}
    row["state"] = derived_state(values["state"], values["expires_at"], now)
    if table:
        row["left"] = time_left(row["state"], values["expires_at"], now)
        for name in TIME_COLUMNS:
            row[name] = readable_time(values[name])
    else:
        for name in TIME_COLUMNS:
            row[name] = iso_or_none(values[name])
    return row


def list_leases(
    app: App,
    selection: Selection,
    *,
    table: bool = False,
    wide: bool = False,
    columns: Sequence[str] | None = None,
) -> Listing:
    """The leases `selection` names, newest first, streamed. For a table, column widths
    come from one aggregate query first, so the table streams as well. `columns` picks fields
    (any format); a table shows the default columns, or every one when `wide`."""
    now = int(time.time())
    if not table:
        return Listing(rows=_stream(app, selection, now, table=False), columns=list(columns or PUBLIC_COLUMNS))
    shown = LEASES_TABLE.choose(wide, columns)
    probe = shown if wide or columns else [*shown, "revoke_error"]
    widths = _table_widths(app, selection, now, probe)
    if probe is not shown and widths.get("revoke_error", 0) > 1:  # a failed revocation: say why
        shown.append("revoke_error")
    return Listing(
        rows=_stream(app, selection, now, table=True),
        columns=shown,
        widths=widths,
        spec=LEASES_TABLE,
        wide=wide,
    )


def _stream(app: App, selection: Selection, now: int, *, table: bool) -> Iterator[dict[str, Any]]:
    query = (
        select(*_SELECTED)
        .where(*_where(selection, now))
        .order_by(Lease.issued_at.desc(), Lease.id.desc())
        .execution_options(yield_per=YIELD_PER)
    )
    with app.transaction(read_only=True) as session:
        for values in session.execute(query):
            yield public_row(dict(zip(_SELECTED_NAMES, values, strict=True)), now, table=table)


def _where(selection: Selection, now: int) -> list[ColumnElement[bool]]:
    return selection.conditions(LEDGER_COLUMNS, now)


def _table_widths(app: App, selection: Selection, now: int, shown: Sequence[str]) -> dict[str, int]:
    text_columns = [c for c in shown if c in PUBLIC_COLUMNS and c not in (*TIME_COLUMNS, "state")]
    if not text_columns:
        return dict(FIXED_WIDTHS)
    query = select(*[func.max(func.length(getattr(Lease, c))) for c in text_columns]).where(*_where(selection, now))
    with app.transaction(read_only=True) as session:
        maxima = session.execute(query).one()
    widths = {c: max(1, m or 0) for c, m in zip(text_columns, maxima, strict=True)}
    widths.update(FIXED_WIDTHS)
    return widths
