"""The fleet ledger's listing: `broker leases --fleet` (table, csv and the streamed json)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import func, select

from broker import cache, settings
from broker.fleet import COLUMNS, TIME_COLUMNS, FleetLedger, require_url

log = logging.getLogger(__name__)

# -- listing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSelector:
    """Which fleet rows: every given filter must match."""

    profile: str | None = None
    mount: str | None = None
    role: str | None = None
    host: str | None = None
    user: str | None = None
    lease_ids: tuple[str, ...] = ()
    state: str = "all"


def selector_where(t, selector: FleetSelector, now) -> list:
    from sqlalchemy import and_

    clauses = []
    for column, value in (
        (t.c.profile, selector.profile),
        (t.c.mount, selector.mount.strip("/") if selector.mount else None),
        (t.c.role, selector.role),
        (t.c.host, selector.host),
        (t.c.os_user, selector.user),
    ):
        if value is not None:
            clauses.append(column == value)
    if selector.lease_ids:
        clauses.append(t.c.lease_id.in_(list(selector.lease_ids)))
    if selector.state == "active":
        clauses.append(and_(t.c.state == "active", t.c.expires_at > now))
    elif selector.state == "expired":
        clauses.append(and_(t.c.state == "active", t.c.expires_at <= now))
    elif selector.state == "revoked":
        clauses.append(t.c.state == "revoked")
    return clauses


def epoch_of(column):
    from sqlalchemy import BigInteger, cast

    return cast(func.floor(func.extract("epoch", column)), BigInteger)


def list_leases(app, selector: FleetSelector, *, batch: int = 2_000) -> Iterator[dict]:
    """Every matching fleet row, newest first, streamed from a server-side cursor. Rows are dicts of
    the public COLUMNS with times as Unix seconds (None when unset)."""
    from sqlalchemy import case, literal_column

    from broker.fleet_models import FleetLease

    ledger = FleetLedger(require_url(app))
    t = FleetLease.__table__
    now = func.now()
    state = case(
        (t.c.state == "active", case((t.c.expires_at <= now, literal_column("'expired'")), else_=t.c.state)),
        else_=t.c.state,
    )
    query = (
        select(
            t.c.lease_id,
            t.c.host,
            t.c.os_user.label("user"),
            t.c.profile,
            t.c.mount,
            t.c.role,
            t.c.namespace,
            t.c.credential_type,
            t.c.access_key_id,
            t.c.role_session_name,
            t.c.vault_addr,
            epoch_of(t.c.issued_at).label("issued_at"),
            epoch_of(t.c.expires_at).label("expires_at"),
            state.label("state"),
            epoch_of(t.c.revoked_at).label("revoked_at"),
            t.c.revoked_by,
        )
        .where(*selector_where(t, selector, now))
        .order_by(t.c.issued_at.desc(), t.c.lease_id.desc())
    )
    try:
        with ledger.begin("listing leases") as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
            keys = list(result.keys())
            with ledger.translated("listing leases"):
                for partition in result.partitions():
                    for values in partition:
                        yield dict(zip(keys, values, strict=True))
    finally:
        ledger.dispose()


def json_rows(app, selector: FleetSelector, *, batch_size: int = 2_000) -> Iterator[list[str]]:
    """Every matching fleet row as one JSON object's text, newest first, in batches (what `leases
    --fleet --format json` writes): the trigger-kept `listing_json`, from a server-side cursor."""
    from sqlalchemy import and_, case

    from broker.fleet_models import FleetLease

    ledger = FleetLedger(require_url(app))
    t = FleetLease.__table__
    expired = and_(t.c.state == "active", t.c.expires_at <= func.now())
    text = case(
        (expired, func.replace(t.c.listing_json, '"state": "active"', '"state": "expired"')),
        else_=t.c.listing_json,
    )
    query = (
        select(text).where(*selector_where(t, selector, func.now())).order_by(t.c.issued_at.desc(), t.c.lease_id.desc())
    )
    try:
        with ledger.begin("listing leases") as conn:
            compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
            raw = conn.connection.driver_connection
            with ledger.translated("listing leases"), raw.cursor(name="broker_fleet_json") as cursor:
                cursor.execute(str(compiled), compiled.params)
                while batch := cursor.fetchmany(batch_size):
                    yield [text for (text,) in batch]
    finally:
        ledger.dispose()


def iso_row(row: dict) -> dict:
    """A listed row with its times as ISO-8601 UTC (json and csv)."""
    out = dict(row)
    for name in TIME_COLUMNS:
        if out.get(name) is not None:
            out[name] = cache.iso_utc(out[name])
    return out


def responder() -> str:
    """Who revokes: `user@host`, recorded as revoked_by on every row a fleet revoke marks."""
    return f"{settings.os_user()}@{settings.host_name()}"


# -- `broker leases --fleet`: table and csv (json: json_rows) ---------------------------------------------

TABLE_COLUMNS = [
    "host",
    "user",
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
    "left",
    "state",
    "revoked_at",
    "revoked_by",
]
TABLE_HEADERS = {"host": "HOST", "user": "USER", "revoked_by": "REVOKED BY"}


def listing(app, selector: FleetSelector, *, table: bool):
    """An audit.Listing of the fleet rows for `broker leases --fleet` in table or csv form: public
    fields only, times ISO-8601 UTC (csv) or readable with the time left (table), streamed."""
    from broker import audit

    if not table:
        return audit.Listing(rows=(iso_row(row) for row in list_leases(app, selector)), columns=COLUMNS)
    widths = _table_widths(app, selector)
    return audit.Listing(
        rows=_table_rows(app, selector),
        columns=TABLE_COLUMNS,
        headers={**audit.TABLE_HEADERS, **TABLE_HEADERS},
        widths=widths,
    )


def _table_rows(app, selector: FleetSelector) -> Iterator[dict]:
    from broker import audit

    for row in list_leases(app, selector):
        now = time.time()
        row["left"] = audit.time_left(row["state"], row["expires_at"], now)
        for name in TIME_COLUMNS:
            row[name] = audit.readable_time(row[name])
        yield row


def _table_widths(app, selector: FleetSelector) -> dict:
    """Column widths from one aggregate query, so that the table streams too."""
    from broker.fleet_models import FleetLease

    t = FleetLease.__table__
    text_columns = {
        "host": t.c.host,
        "user": t.c.os_user,
        "lease_id": t.c.lease_id,
        "profile": t.c.profile,
        "mount": t.c.mount,
        "role": t.c.role,
        "namespace": t.c.namespace,
        "credential_type": t.c.credential_type,
        "access_key_id": t.c.access_key_id,
        "role_session_name": t.c.role_session_name,
        "revoked_by": t.c.revoked_by,
    }
    ledger = FleetLedger(require_url(app))
    try:
        with ledger.begin("listing leases") as conn:
            maxima = conn.execute(
                select(*[func.max(func.length(c)) for c in text_columns.values()]).where(
                    *selector_where(t, selector, func.now())
                )
            ).one()
    finally:
        ledger.dispose()
    widths = {name: max(1, m or 0) for name, m in zip(text_columns, maxima, strict=True)}
    widths.update(dict.fromkeys(TIME_COLUMNS, 19), state=len("expired"), left=12)  # as audit's table
    return widths
