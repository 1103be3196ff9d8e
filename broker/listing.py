"""`broker leases`: which ledger rows a selection names, as rows of public fields only.

PUBLIC_COLUMNS is the one whitelist of lease fields that may leave the database in a listing or a
report. The query selects these columns and nothing else, so a secret key or session token (sealed
in `leases.secret`) cannot reach any output format, whatever a renderer does.

Listings stream: rows come from the database in batches (yield_per) and go out one by one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from broker import cache, durations
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
# The table: the first ten, how long each active credential has left, the state and when revoked,
# who asked (the Vault display name) for which account, and why a revocation failed.
TABLE_COLUMNS = [*PUBLIC_COLUMNS[:10], "left", "state", "revoked_at", "display_name", "account_id", "revoke_error"]
REVOKE_ERROR_WIDTH = 40  # the table shows the start of a failed revocation's error; json/csv all of it
TABLE_HEADERS = {
    "lease_id": "LEASE ID",
    "profile": "PROFILE",
    "mount": "MOUNT",
    "role": "ROLE",
    "namespace": "NAMESPACE",
    "credential_type": "TYPE",
    "access_key_id": "ACCESS KEY ID",
    "role_session_name": "SESSION NAME",
    "issued_at": "ISSUED (UTC)",
    "expires_at": "EXPIRES (UTC)",
    "left": "LEFT",
    "state": "STATE",
    "revoked_at": "REVOKED (UTC)",
    "display_name": "ASKED BY",
    "account_id": "ACCOUNT",
    "revoke_error": "REVOKE ERROR",
}
YIELD_PER = 2000
# Widths of the table's columns whose values have a known size: "2026-11-26 19:08:30", "expired",
# "32d23h59m59s".
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
        row["revoke_error"] = table_error(row["revoke_error"])
    else:
        for name in TIME_COLUMNS:
            row[name] = iso_or_none(values[name])
    return row


def shortened(text: str | None, width: int) -> str | None:
    """`text` cut to `width` characters (ending in "...") for a table column."""
    return text if text is None or len(text) <= width else text[: width - 3] + "..."


def table_error(text: str | None) -> str | None:
    """A revoke_error for the table: without its leading timestamp, shortened."""
    if text and len(text) > 21 and text[4] == "-" and text[19] == "Z" and text[20] == " ":
        text = text[21:]
    return shortened(text, REVOKE_ERROR_WIDTH)


def list_leases(app: App, selection: Selection, *, table: bool = False) -> Listing:
    """The leases `selection` names, newest first, streamed. For a table, column widths
    come from one aggregate query first, so the table streams as well."""
    now = int(time.time())
    widths = _table_widths(app, selection, now) if table else None
    return Listing(
        rows=_stream(app, selection, now, table=table),
        columns=TABLE_COLUMNS if table else PUBLIC_COLUMNS,
        headers=TABLE_HEADERS if table else None,
        widths=widths,
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


def _table_widths(app: App, selection: Selection, now: int) -> dict[str, int]:
    text_columns = [c for c in TABLE_COLUMNS if c in PUBLIC_COLUMNS and c not in (*TIME_COLUMNS, "state")]
    query = select(*[func.max(func.length(getattr(Lease, c))) for c in text_columns]).where(*_where(selection, now))
    with app.transaction(read_only=True) as session:
        maxima = session.execute(query).one()
    widths = {c: max(1, m or 0) for c, m in zip(text_columns, maxima, strict=True)}
    widths.update(FIXED_WIDTHS)
    widths["revoke_error"] = min(widths["revoke_error"], REVOKE_ERROR_WIDTH)
    return widths
