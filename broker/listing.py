"""Reading the ledger for people: which leases match a filter, as rows of public fields only.

PUBLIC_COLUMNS is the one whitelist of lease fields that may leave the database in a listing or a
report. The query selects these columns and nothing else, so a secret key or session token (sealed
in `leases.secret`) cannot reach any output format, whatever a renderer does.

Listings stream: rows come from the database in batches (yield_per) and go out one by one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import and_, func, select, true

from broker import cache, durations
from broker.errors import UsageError
from broker.models import Lease

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
]
TIME_COLUMNS = ("issued_at", "expires_at", "revoked_at")
# The table adds how long each active credential has left.
TABLE_COLUMNS = [*PUBLIC_COLUMNS[:10], "left", *PUBLIC_COLUMNS[10:]]
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
}
STATES = ("active", "expired", "revoked", "all")
YIELD_PER = 2000
_TABLE_TIME_WIDTH = 19  # "2026-11-26 19:08:30"
_LEFT_WIDTH = 12  # "32d23h59m59s"

_SELECTED = [getattr(Lease, name) for name in PUBLIC_COLUMNS if name != "state"] + [Lease.state]
_SELECTED_NAMES = [name for name in PUBLIC_COLUMNS if name != "state"] + ["state"]


@dataclass(frozen=True)
class LeaseFilter:
    """Which ledger rows a listing shows; None means any."""

    profile: str | None = None
    mount: str | None = None
    role: str | None = None
    state: str = "all"

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise UsageError(f"invalid state {self.state!r}: one of {', '.join(STATES)}")

    def where(self, now: int):
        """The SQL condition for this filter at time `now` ("expired" = active and past its end)."""
        parts = []
        if self.profile is not None:
            parts.append(Lease.profile == self.profile)
        if self.mount is not None:
            parts.append(Lease.mount == self.mount.strip("/"))
        if self.role is not None:
            parts.append(Lease.role == self.role)
        if self.state == "active":
            parts += [Lease.state == "active", Lease.expires_at > now]
        elif self.state == "expired":
            parts += [Lease.state == "active", Lease.expires_at <= now]
        elif self.state == "revoked":
            parts.append(Lease.state == "revoked")
        return and_(true(), *parts)


@dataclass
class Listing:
    """What `broker leases` renders: rows (a one-shot generator) and how to lay them out."""

    rows: Iterator[dict]
    columns: list[str]
    headers: dict | None = None
    widths: dict | None = None  # for a streamed table


def derived_state(state: str, expires_at: int, now: float) -> str:
    return "expired" if state == "active" and expires_at <= now else state


def iso_or_none(epoch: int | None) -> str | None:
    return cache.iso_utc(epoch) if epoch is not None else None


def readable_time(epoch: int | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch is not None else None


def time_left(state: str, expires_at: int, now: float) -> str | None:
    return durations.format_duration(int(expires_at - now)) if state == "active" else None


def public_row(values: dict, now: float, *, table: bool) -> dict:
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


def list_leases(app, lease_filter: LeaseFilter, *, table: bool = False) -> Listing:
    """The leases matching `lease_filter`, newest first, streamed. For a table, column widths
    come from one aggregate query first, so the table streams as well."""
    now = int(time.time())
    widths = _table_widths(app, lease_filter, now) if table else None
    return Listing(
        rows=_stream(app, lease_filter, now, table=table),
        columns=TABLE_COLUMNS if table else PUBLIC_COLUMNS,
        headers=TABLE_HEADERS if table else None,
        widths=widths,
    )


def _stream(app, lease_filter: LeaseFilter, now: int, *, table: bool) -> Iterator[dict]:
    query = (
        select(*_SELECTED)
        .where(lease_filter.where(now))
        .order_by(Lease.issued_at.desc(), Lease.id.desc())
        .execution_options(yield_per=YIELD_PER)
    )
    with app.transaction(read_only=True) as session:
        for values in session.execute(query):
            yield public_row(dict(zip(_SELECTED_NAMES, values, strict=True)), now, table=table)


def _table_widths(app, lease_filter: LeaseFilter, now: int) -> dict:
    text_columns = [c for c in PUBLIC_COLUMNS if c not in TIME_COLUMNS and c != "state"]
    query = select(*[func.max(func.length(getattr(Lease, c))) for c in text_columns]).where(lease_filter.where(now))
    with app.transaction(read_only=True) as session:
        maxima = session.execute(query).one()
    widths = {c: max(1, m or 0) for c, m in zip(text_columns, maxima, strict=True)}
    widths.update(dict.fromkeys(TIME_COLUMNS, _TABLE_TIME_WIDTH))
    widths.update(state=len("expired"), left=_LEFT_WIDTH)
    return widths
