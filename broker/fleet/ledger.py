"""The fleet ledger: every host's leases in one PostgreSQL database.

The local SQLite ledger stays the source of truth for serving credentials; this module copies its
lease rows out and brings fleet revocations back in:

- push: rows named in the local `outbox` (written in the same transaction that records, renews or
  revokes a lease) are upserted by (lease_id, access_key_id); an outbox entry is deleted only after
  PostgreSQL committed the row and only if the row did not change meanwhile. A kill at any point
  loses nothing and duplicates nothing.
- pull: the host's active leases that a responder revoked in the shared ledger are marked revoked
  locally and their cached secrets wiped, so the next credential-process issues anew.
- list / claim / mark: what `broker leases --fleet` and `broker revoke --fleet` read and write,
  in broker/fleet/listing.py and broker/fleet/revoke.py on top of this module's connection.

PostgreSQL is reached through SQLAlchemy + psycopg 3, imported only by this package (the
cache-hit path never loads it). Every failure becomes a one-line FleetError that shows the URL
with its password masked and never the driver's raw text.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from broker import cache, db, listing, locks
from broker.errors import (
    BrokerError,
    FleetDenied,
    FleetError,
    FleetSchemaMismatch,
    FleetUnreachable,
    UsageError,
)
from broker.fleet.models import FLEET_LEASES, HOST_ROLE, RESPONDER_ROLE, VERSION_TABLE, FleetLease
from broker.models import LEASES, Lease, OutboxEntry, Setting

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import URL, Connection, Engine

    from broker.app import App
    from broker.settings import Env

log = logging.getLogger(__name__)

# The shared schema this code reads and writes, and every revision it knows (oldest first).
# tests/test_fleet_ledger.py checks both against migrations/fleet/versions.
SCHEMA_HEAD = "f003"
KNOWN_REVISIONS = ("f001", "f002", "f003")

INIT_LOCK_KEY = 0x62726F6B6572  # "broker": serialises `ledger init` runs (pg_advisory_xact_lock)
CONNECT_TIMEOUT_SECONDS = 3  # libpq's minimum is 2
STATEMENT_TIMEOUT_MS = 15_000
LOCK_TIMEOUT_MS = 5_000
PUSH_BATCH = 500
PULL_BATCH = 1_000
SYNC_LOCK = "fleet-sync"
SYNC_LOCK_WAIT_SECONDS = 30.0
LAST_PUSH_KEY = "fleet.last_push"
LAST_PULL_KEY = "fleet.last_pull"
# After a failed sync, misses start no background sync for this long: during an outage a busy CI
# runner must not start a doomed PostgreSQL client per credential. Cron and prune still try.
RETRY_AFTER_KEY = "fleet.retry_after"
BACKOFF_SECONDS = 30

# The public fields of a fleet row, in output order (json/csv carry every one of them): the local
# listing's, plus the host and OS user a row names, its Vault, and the login that pushed it.
_PUBLIC = listing.PUBLIC_COLUMNS
COLUMNS = [_PUBLIC[0], "host", "user", *_PUBLIC[1:8], "vault_addr", *_PUBLIC[8:], "db_user"]
TIME_COLUMNS = ("issued_at", "expires_at", "revoked_at")


# -- the URL: parsed, masked, never shown with its password ---------------------------------------


def _authority(raw: str) -> str:
    rest = raw.split("://", 1)[1] if "://" in raw else raw
    return rest.split("/", 1)[0].split("?", 1)[0]


_KEYWORD_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)""", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|[?&;])[^=&]*password[^=&]*=)[^&]*", re.IGNORECASE)


def mask_url(raw: str) -> str:
    """The URL (or libpq keyword DSN) as the user gave it, with any password replaced by ***;
    a malformed URL loses everything between its scheme and its last '@' but the user name."""
    from sqlalchemy.engine import make_url

    if "://" not in raw:  # a libpq keyword DSN: host=db user=u password='p w'
        return _KEYWORD_PASSWORD.sub(r"\1***", raw)
    if _authority(raw).count("@") > 1:  # an unescaped @ in the password: hide all before the last @
        scheme = raw.split("://", 1)[0] + "://" if "://" in raw else ""
        host_part = raw.split("://", 1)[-1].rsplit("@", 1)[1]
        return f"{scheme}***@{host_part.split('?', 1)[0]}"
    try:
        url = make_url(raw)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown only as a hint
        scheme, _, rest = raw.partition("://")
        if "@" in rest:
            user = rest.rsplit("@", 1)[0].split(":", 1)[0]
            rest = f"{user}:***@" + rest.rsplit("@", 1)[1]
        return _QUERY_PASSWORD.sub(r"\1***", f"{scheme}://{rest}")
    if url.query:
        url = url.update_query_dict({k: "***" for k in url.query if "password" in k.lower()})
    return url.render_as_string(hide_password=True)


def parse_url(raw: str) -> URL:
    """A SQLAlchemy URL on psycopg 3; `postgresql://` is taken as psycopg 3 too."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if _authority(raw).count("@") > 1:
        raise UsageError(
            f"the fleet ledger URL {mask_url(raw)!r} has more than one '@' before the host: "
            "percent-encode an '@' in the password as %40 (or put the password in ~/.pgpass)"
        )
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # the parser's own text may quote the password: not shown
        raise UsageError(
            f"the fleet ledger URL {mask_url(raw)!r} is not a URL like postgresql://broker@db.internal/broker"
        ) from None
    if url.drivername not in ("postgresql", "postgresql+psycopg", "postgres"):
        raise UsageError(
            f"the fleet ledger URL {mask_url(raw)!r} must be a PostgreSQL URL "
            f"(postgresql:// or postgresql+psycopg://), not {url.drivername}://"
        )
    return url.set(drivername="postgresql+psycopg")


# -- connections and error translation -------------------------------------------------------------


class FleetLedger:
    """The fleet ledger for one command: an engine (no pool, short timeouts) and the schema check."""

    def __init__(self, raw_url: str, env: Env) -> None:
        self.raw_url = raw_url
        self.url = parse_url(raw_url)
        self.masked = mask_url(raw_url)
        self._secrets = [s for s in (self.url.password, env.pgpassword) if s]
        self._host = env.host_name()
        self._engine: Engine | None = None
        self._checked = False

    @property
    def engine(self) -> Engine:
        """No pool, no server-side prepared statements and the timeouts set per transaction, so that
        the same code works direct and through PgBouncer in transaction pooling mode (which keeps no
        prepared statements and rejects the `options` startup parameter)."""
        if self._engine is None:
            from sqlalchemy import create_engine, event
            from sqlalchemy.pool import NullPool

            self._engine = create_engine(
                self.url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                    "application_name": "broker",
                    "prepare_threshold": None,
                },
            )
            event.listen(self._engine, "begin", _set_local_timeouts)
        return self._engine

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(str(secret), "***")
        return text

    def _reason(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        diag = getattr(orig, "diag", None)
        text = getattr(diag, "message_primary", None) or str(orig) or type(orig).__name__
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        first = lines[0] if lines else type(orig).__name__
        if first.startswith("connection failed: ") and len(lines) > 0:
            first = first[len("connection failed: ") :]
        first = self._scrub(" ".join(first.split()))
        return first if len(first) <= 240 else first[:237] + "..."

    def translate(self, exc: BaseException, what: str) -> FleetError:
        orig = getattr(exc, "orig", None) or exc
        sqlstate = getattr(orig, "sqlstate", None) or ""
        reason = self._reason(exc)
        if sqlstate == "42501" and "row-level security" in reason:
            return FleetDenied(
                f"the fleet ledger {self.masked} refused {what}: this login may not push rows for host "
                f"{self._host!r} (or another host name a row names); the database owner allows a login its "
                "host names in fleet_host_logins (see the README)"
            )
        if sqlstate == "42501":
            return FleetDenied(
                f"the fleet ledger {self.masked} denied {what}: {reason}; check this role's GRANTs (see the README)"
            )
        if sqlstate == "42P01":
            return FleetSchemaMismatch(
                f"the fleet ledger {self.masked} has no broker tables; run `broker ledger init` as the database owner"
            )
        if sqlstate in ("57014", "55P03"):
            return FleetUnreachable(f"the fleet ledger {self.masked} timed out during {what}: {reason}")
        if sqlstate and not sqlstate.startswith(("08", "28", "3D", "53", "57")):
            return FleetError(f"the fleet ledger {self.masked} failed {what}: {reason}")
        return FleetUnreachable(f"cannot reach the fleet ledger {self.masked}: {reason}")

    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except FleetError:
            raise
        except SQLAlchemyError as exc:
            raise self.translate(exc, what) from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise self.translate(exc, what) from None
            raise

    @contextlib.contextmanager
    def begin(self, what: str, *, check_schema: bool = True) -> Iterator[Connection]:
        """A connection in one transaction (committed on success), its errors translated."""
        with self.translated(what), self.engine.begin() as conn:
            if check_schema and not self._checked:
                check_revision(read_revision(conn), self.masked)
                self._checked = True
            yield conn

    def check(self) -> None:
        """Connect and check the shared schema (so a sync with nothing to move still proves the link)."""
        with self.begin("checking the schema"):
            pass

    def revision(self) -> str | None:
        with self.translated("reading the schema revision"), self.engine.connect() as conn:
            return read_revision(conn)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


# One round trip at the start of every transaction: SET LOCAL's effect, through any pooler.
_TIMEOUTS_SQL = (
    f"SELECT set_config('statement_timeout', '{STATEMENT_TIMEOUT_MS}', true), "
    f"set_config('lock_timeout', '{LOCK_TIMEOUT_MS}', true), "
    f"set_config('idle_in_transaction_session_timeout', '{4 * STATEMENT_TIMEOUT_MS}', true)"
)


def _set_local_timeouts(conn: Connection) -> None:
    """The `begin` event: this transaction's timeouts (psycopg opens the transaction with it)."""
    raw: Any = conn.connection.driver_connection
    raw.execute(_TIMEOUTS_SQL)


def read_revision(conn: Connection) -> str | None:
    from sqlalchemy import text

    exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": VERSION_TABLE}).scalar()
    if exists is None:
        return None
    revision: str | None = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()  # noqa: S608
    return revision


def check_revision(revision: str | None, masked: str) -> None:
    if revision == SCHEMA_HEAD:
        return
    if revision is None:
        raise FleetSchemaMismatch(
            f"the fleet ledger {masked} has no broker schema; run `broker ledger init` as the database owner"
        )
    if revision in KNOWN_REVISIONS:
        raise FleetSchemaMismatch(
            f"the fleet ledger {masked} has schema {revision}, older than this broker's {SCHEMA_HEAD}; "
            f"run `broker ledger init` as the database owner to upgrade it"
        )
    raise FleetSchemaMismatch(
        f"the fleet ledger {masked} has schema {revision}, newer than this broker understands "
        f"(it knows up to {SCHEMA_HEAD}); upgrade broker on this machine"
    )


# -- ledger init ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitResult:
    url: str
    before: str | None
    after: str


def fleet_migrations_dir() -> str:
    from broker import db

    path = os.path.join(db.migrations_dir(), "fleet")
    if not os.path.isfile(os.path.join(path, "env.py")):
        raise BrokerError("broker's fleet migration scripts are missing from this installation; reinstall broker")
    return path


def init_schema(app: App) -> InitResult:
    """Create or upgrade the shared schema with Alembic, in process; refuse a newer one.

    All of it is one transaction (PostgreSQL's DDL is transactional) under a transaction-scoped
    advisory lock, so two inits at once run one after the other, and a transaction pooler
    (PgBouncer in transaction mode) serves it as well as a direct connection."""
    from sqlalchemy import text

    ledger = app.fleet
    with ledger.begin("the schema upgrade", check_schema=False) as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INIT_LOCK_KEY})
        before = read_revision(conn)
        if before is not None and before not in KNOWN_REVISIONS:
            check_revision(before, ledger.masked)  # raises: newer than this code
        if before == SCHEMA_HEAD:
            return InitResult(ledger.masked, before, SCHEMA_HEAD)
        _require_roles(conn, ledger.masked)
        from alembic import command

        config = db.alembic_config(fleet_migrations_dir(), conn)
        log.info("upgrading the fleet ledger %s from %s to %s", ledger.masked, before or "empty", SCHEMA_HEAD)
        command.upgrade(config, "head")
    return InitResult(ledger.masked, before, SCHEMA_HEAD)


def _require_roles(conn: Connection, masked: str) -> None:
    from sqlalchemy import text

    found = set(
        conn.execute(
            text("SELECT rolname FROM pg_roles WHERE rolname IN (:h, :r)"),
            {"h": HOST_ROLE, "r": RESPONDER_ROLE},
        ).scalars()
    )
    missing = [r for r in (HOST_ROLE, RESPONDER_ROLE) if r not in found]
    if missing:
        raise FleetError(
            f"the fleet ledger {masked} lacks the role(s) {', '.join(missing)} its grants name; "
            "have a DBA run "
            + " ".join(f"CREATE ROLE {r} NOLOGIN;" for r in missing)
            + " (see the README), then run `broker ledger init` again"
        )


# -- status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerStatus:
    url: str
    revision: str | None
    pending: int
    last_push: int | None
    error: FleetError | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "revision": self.revision,
            "pending": self.pending,
            "last_push": cache.iso_utc(self.last_push) if self.last_push else None,
        }


def status(app: App) -> LedgerStatus:
    """What is known locally (pending rows, last push) and, when PostgreSQL answers, its revision."""
    ledger = app.fleet
    pending, last_push = local_status(app)
    error: FleetError | None = None
    try:
        revision = ledger.revision()
        if revision != SCHEMA_HEAD:
            try:
                check_revision(revision, ledger.masked)
            except FleetError as exc:
                error = exc
    except FleetError as exc:
        revision, error = None, exc
    return LedgerStatus(ledger.masked, revision, pending, last_push, error)


def local_status(app: App) -> tuple[int, int | None]:
    with app.transaction(read_only=True) as session:
        pending = session.scalar(select(func.count()).select_from(OutboxEntry)) or 0
        value = session.scalar(select(Setting.value).where(Setting.key == LAST_PUSH_KEY))
    return pending, int(value) if value else None


# -- push: the outbox to PostgreSQL ------------------------------------------------------------------

# Local Lease columns that make up a shared row: every column the two tables share, except
# revoke_error (on a fleet row, the responder's); those in _MUTABLE may change after the first push.
_PUSHED = tuple(name for name in FLEET_LEASES.c.keys() if name in LEASES.c and name != "revoke_error")
_MUTABLE = ("expires_at", "state", "revoked_at", "revoked_by", "end_reason")


def utc(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _shared_row(lease: Lease) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(lease, name) for name in _PUSHED}
    for name in TIME_COLUMNS:
        row[name] = utc(row[name])
    row["namespace"] = row["namespace"] or ""
    return row


def _read_outbox(app: App, after: int, limit: int) -> list[tuple[OutboxEntry, Lease | None]]:
    with app.transaction(read_only=True) as session:
        return list(
            session.execute(
                select(OutboxEntry, Lease)
                .outerjoin(Lease, Lease.id == OutboxEntry.lease_row)
                .where(OutboxEntry.lease_row > after)
                .order_by(OutboxEntry.lease_row)
                .limit(limit)
            ).tuples()
        )


def _forget_pushed(app: App, pushed: dict[int, tuple[object, ...]], orphans: list[int]) -> int:
    """Delete the outbox entries of rows PostgreSQL committed, unless the row changed since it was
    read (then it stays queued and goes out with its new state next time)."""
    with app.transaction() as session:
        if orphans:
            session.execute(delete(OutboxEntry).where(OutboxEntry.lease_row.in_(orphans)))
        current = session.execute(
            select(Lease.id, *[getattr(Lease, c) for c in _MUTABLE]).where(Lease.id.in_(list(pushed)))
        ).all()
        done = [row[0] for row in current if tuple(row[1:]) == pushed[row[0]]]
        gone = [row_id for row_id in pushed if row_id not in {row[0] for row in current}]
        if done or gone:
            session.execute(delete(OutboxEntry).where(OutboxEntry.lease_row.in_(done + gone)))
    return len(done)


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    from sqlalchemy.dialects.postgresql import insert

    stmt = insert(FLEET_LEASES)
    stmt = stmt.on_conflict_do_update(
        index_elements=["lease_id", "access_key_id"],
        set_={name: stmt.excluded[name] for name in _MUTABLE},
    )
    conn.execute(stmt, rows)


def push(app: App) -> int:
    """Upsert every outbox row into the fleet ledger, a batch per transaction; returns rows pushed.
    Each entry is read once per call, so rows changing all the time cannot keep it looping."""
    pushed_total = 0
    after = 0
    while True:
        batch = _read_outbox(app, after, PUSH_BATCH)
        if not batch:
            break
        after = batch[-1][0].lease_row
        orphans = [entry.lease_row for entry, lease in batch if lease is None]
        leases = [lease for _entry, lease in batch if lease is not None]
        if leases:
            with app.fleet.begin("pushing lease rows") as conn:
                _upsert(conn, [_shared_row(lease) for lease in leases])
        pushed = {lease.id: tuple(getattr(lease, c) for c in _MUTABLE) for lease in leases}
        pushed_total += _forget_pushed(app, pushed, orphans) if (pushed or orphans) else 0
        if len(batch) < PUSH_BATCH:
            break
    with app.transaction() as session:  # the outbox as read at the start is in PostgreSQL
        session.merge(Setting(key=LAST_PUSH_KEY, value=str(int(time.time()))))
    return pushed_total


# -- pull: fleet revocations of this host's leases -----------------------------------------------------


def pull(app: App) -> int:
    """Mark revoked the local active leases a responder revoked in the fleet ledger, wiping their
    cached secrets; returns how many. Only this host's own rows are asked for (by lease id)."""
    from sqlalchemy import and_, tuple_

    with app.transaction(read_only=True) as session:
        local = session.execute(
            select(Lease.id, Lease.lease_id, Lease.access_key_id).where(Lease.state == "active", Lease.lease_id != "")
        ).all()
    by_key = {(lease_id, akid): row_id for row_id, lease_id, akid in local}
    keys = list(by_key)
    revoked: list[tuple[int, int, str | None]] = []
    t = FleetLease.__table__
    for start in range(0, len(keys), PULL_BATCH):
        chunk = keys[start : start + PULL_BATCH]
        with app.fleet.begin("reading revocations") as conn:
            rows = conn.execute(
                select(t.c.lease_id, t.c.access_key_id, t.c.revoked_at, t.c.revoked_by).where(
                    and_(t.c.state == "revoked", tuple_(t.c.lease_id, t.c.access_key_id).in_(chunk))
                )
            ).all()
        for lease_id, akid, revoked_at, revoked_by in rows:
            when = int(revoked_at.timestamp()) if revoked_at else int(time.time())
            revoked.append((by_key[(lease_id, akid)], when, revoked_by))
    if revoked:
        with app.transaction() as session:
            for row_id, when, who in revoked:
                session.execute(
                    update(Lease)
                    .where(Lease.id == row_id, Lease.state == "active")
                    .values(state="revoked", revoked_at=when, revoked_by=who or "fleet", secret=None, sealed_token=None)
                )
        log.info("marked %d lease(s) revoked by the fleet ledger; their cached secrets are wiped", len(revoked))
    with app.transaction() as session:
        session.merge(Setting(key=LAST_PULL_KEY, value=str(int(time.time()))))
    return len(revoked)


# -- sync: push then pull, one at a time per local ledger -----------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    ran: bool  # False when another sync held the lock (background mode only)
    pushed: int = 0
    pulled: int = 0
    pending: int = 0


def sync(app: App, *, background: bool = False, wait: bool = True) -> SyncResult:
    """Drain the outbox into the fleet ledger and pull revocations of this host's leases.
    With wait=False, skip at once (ran=False) if another sync runs; background (after a miss) also
    lowers this process's priority. When PostgreSQL cannot be reached the error propagates and every
    pending row stays queued."""
    app.fleet  # noqa: B018 - a UsageError before anything else when no ledger URL is set
    path = locks.lock_path(app.db_path, SYNC_LOCK)
    if background:
        with contextlib.suppress(OSError):
            os.nice(10)  # never compete with the credential-process calls that started it
    if background or not wait:
        with locks.try_hold(path) as held:
            if not held:
                return SyncResult(ran=False)
            return _sync_locked(app)
    with locks.hold(path, SYNC_LOCK_WAIT_SECONDS, "fleet sync lock"):
        return _sync_locked(app)


def sync_before_prune(app: App) -> SyncResult | None:
    """`broker prune` first pushes what waits in the outbox (the rows it must keep until then) and
    pulls revocations. PostgreSQL being down is a warning, never a reason not to prune."""
    if not app.ledger_url:
        return None
    try:
        return sync(app, wait=False)
    except FleetError as exc:
        log.warning("fleet ledger sync skipped: %s", exc)
        return None


def _sync_locked(app: App) -> SyncResult:
    try:
        app.fleet.check()
        pushed = push(app)
        pulled = pull(app)
    except FleetError:
        with app.transaction() as session:
            session.merge(Setting(key=RETRY_AFTER_KEY, value=str(int(time.time()) + BACKOFF_SECONDS)))
        raise
    with app.transaction() as session:
        session.execute(delete(Setting).where(Setting.key == RETRY_AFTER_KEY))
    pending, _ = local_status(app)
    return SyncResult(ran=True, pushed=pushed, pulled=pulled, pending=pending)


def spawn_background_sync(app: App) -> bool:
    """After a miss: start `broker ledger sync --background` detached, and never wait for it.

    The child gets /dev/null for stdin/stdout/stderr (an SDK waits for the helper's pipes to close),
    its own session, and the ledger URL in its environment (never on its command line). Nothing is
    started while another sync holds the lock, when the outbox is empty, or for BACKOFF_SECONDS
    after a failed sync."""
    if not app.ledger_url:
        return False
    try:
        with locks.try_hold(locks.lock_path(app.db_path, SYNC_LOCK)) as free:
            if not free:
                return False
        with app.sqlite() as conn:
            pending, retry_after = conn.execute(
                "SELECT (SELECT 1 FROM outbox LIMIT 1), (SELECT value FROM settings WHERE key = ?)",
                (RETRY_AFTER_KEY,),
            ).fetchone()
        if pending is None or (retry_after and int(retry_after) > time.time()):
            return False
    except (BrokerError, OSError) as exc:  # the credential is already out: never fail the call now
        log.info("not starting a background fleet sync: %s", exc)
        return False
    env = dict(os.environ, BROKER_LEDGER_URL=app.ledger_url)
    try:
        subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            [sys.executable, "-m", "broker", "--db", app.db_path, "ledger", "sync", "--background"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    except OSError as exc:
        log.info("could not start a background fleet sync (%s); `broker ledger sync` will push later", exc)
        return False
    return True
