"""The fleet ledger's listing: `broker leases --fleet` (table, csv and the streamed json)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, and_, case, cast, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from broker import cache, listing, output
from broker.fleet.ledger import COLUMNS, TIME_COLUMNS, utc
from broker.fleet.models import FLEET_LEASES
from broker.selection import Selection

if TYPE_CHECKING:
    from broker.app import App

FLEET = FLEET_LEASES
FLEET_COLUMNS = {c.key: c for c in FLEET.c}
FLEET_NAME = {"user": "os_user"}  # listing field -> fleet column, where they differ


def where(selection: Selection) -> list[ColumnElement[bool]]:
    """The selection's conditions on the fleet table, at PostgreSQL's now()."""
    return selection.conditions(FLEET_COLUMNS, func.now(), utc)


def epoch_of(column: Any) -> ColumnElement[int]:
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


def list_leases(app: App, selection: Selection, *, batch: int = 2_000) -> Iterator[dict[str, Any]]:
    """Every matching fleet row, newest first, streamed from a server-side cursor. Rows are dicts of
    the public COLUMNS with times as Unix seconds (None when unset)."""
    ledger = app.fleet
    t = FLEET
    now = func.now()
    state = case(
        (t.c.state == "active", case((t.c.expires_at <= now, literal_column("'expired'")), else_=t.c.state)),
        else_=t.c.state,
    )
    selected = {
        name: state
        if name == "state"
        else epoch_of(t.c[name])
        if name in TIME_COLUMNS
        else t.c[FLEET_NAME.get(name, name)]
        for name in COLUMNS
    }
    query = (
        select(*[column.label(name) for name, column in selected.items()])
        .where(*where(selection))
        .order_by(t.c.issued_at.desc(), t.c.lease_id.desc())
    )
    with ledger.begin("listing leases") as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        keys = list(result.keys())
        with ledger.translated("listing leases"):
            for partition in result.partitions():
                for values in partition:
                    yield dict(zip(keys, values, strict=True))


def json_rows(app: App, selection: Selection, *, batch_size: int = 2_000) -> Iterator[list[str]]:
    """Every matching fleet row as one JSON object's text, newest first, in batches (what `leases
    --fleet --format json` writes): the trigger-kept `listing_json`, from a server-side cursor."""
    ledger = app.fleet
    t = FLEET
    expired = and_(t.c.state == "active", t.c.expires_at <= func.now())
    text = case(
        (expired, func.replace(t.c.listing_json, '"state": "active"', '"state": "expired"')),
        else_=t.c.listing_json,
    )
    query = select(text).where(*where(selection)).order_by(t.c.issued_at.desc(), t.c.lease_id.desc())
    with ledger.begin("listing leases") as conn:
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        raw: Any = conn.connection.driver_connection
        with ledger.translated("listing leases"), raw.cursor(name="broker_fleet_json") as cursor:
            cursor.execute(str(compiled), compiled.params)
            while batch := cursor.fetchmany(batch_size):
                yield [text for (text,) in batch]


def iso_row(row: dict[str, Any]) -> dict[str, Any]:
    """A listed row with its times as ISO-8601 UTC (json and csv)."""
    out = dict(row)
    for name in TIME_COLUMNS:
        if out.get(name) is not None:
            out[name] = cache.iso_utc(out[name])
    return out


# -- `broker leases --fleet`: table and csv (json: json_rows) ---------------------------------------------

# The table puts host, user and the login that pushed the row (db_user: the one field a host
# cannot choose) first and adds the time left; csv carries every public COLUMN.
TABLE_HEADERS = {**listing.TABLE_HEADERS, "host": "HOST", "user": "USER", "db_user": "PUSHED BY"}
FLEET_TABLE = output.TableSpec(
    columns=tuple(
        output.Column(name, TABLE_HEADERS[name]) if name in ("host", "user", "db_user") else listing.table_column(name)
        for name in ["host", "user", "db_user", *[c for c in listing.TABLE_COLUMNS if c not in ("host", "user")]]
    ),
    default=("host", "user", "db_user", "lease_id", "role", "credential_type", "access_key_id", "expires_at", "state"),
)
TABLE_COLUMNS = FLEET_TABLE.names
# Text columns whose widths one aggregate query measures (name -> fleet column).
_TEXT_COLUMNS = {
    name: FLEET.c[FLEET_NAME.get(name, name)]
    for name in TABLE_COLUMNS
    if name in COLUMNS and name not in (*TIME_COLUMNS, "state")
}


def fleet_listing(
    app: App,
    selection: Selection,
    *,
    table: bool,
    wide: bool = False,
    columns: Sequence[str] | None = None,
) -> listing.Listing:
    """A listing of the fleet rows for `broker leases --fleet` in table or csv form: public fields
    only, times ISO-8601 UTC (csv) or readable with the time left (table), streamed."""
    if not table:
        rows = (iso_row(row) for row in list_leases(app, selection))
        return listing.Listing(rows=rows, columns=list(columns or COLUMNS))
    return listing.Listing(
        rows=_table_rows(app, selection),
        columns=FLEET_TABLE.choose(wide, [c for c in columns if c in TABLE_COLUMNS] if columns else None),
        widths=_table_widths(app, selection),
        spec=FLEET_TABLE,
        wide=wide,
    )


def _table_rows(app: App, selection: Selection) -> Iterator[dict[str, Any]]:
    for row in list_leases(app, selection):
        now = time.time()
        row["left"] = listing.time_left(row["state"], row["expires_at"], now)
        for name in TIME_COLUMNS:
            row[name] = listing.readable_time(row[name])
        yield row


def _table_widths(app: App, selection: Selection) -> dict[str, int]:
    """Column widths from one aggregate query, so that the table streams too."""
    with app.fleet.begin("listing leases") as conn:
        maxima = conn.execute(
            select(*[func.max(func.length(c)) for c in _TEXT_COLUMNS.values()]).where(*where(selection))
        ).one()
    widths = {name: max(1, m or 0) for name, m in zip(_TEXT_COLUMNS, maxima, strict=True)}
    widths.update(listing.FIXED_WIDTHS)
    return widths
