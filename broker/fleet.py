"""The fleet ledger: every host's leases in one PostgreSQL database.

The local SQLite ledger stays the source of truth for serving credentials; this module copies its
lease rows out and brings fleet revocations back in:

- push: rows named in the local `outbox` (written in the same transaction that records, renews or
  revokes a lease) are upserted by (lease_id, access_key_id); an outbox entry is deleted only after
  PostgreSQL committed the row and only if the row did not change meanwhile. A kill at any point
  loses nothing and duplicates nothing.
- pull: the host's active leases that a responder revoked in the shared ledger are marked revoked
  locally and their cached secrets wiped, so the next credential-process issues anew.
- list / claim / mark: what `broker leases --fleet` and `broker revoke --fleet` read and write.

PostgreSQL is reached through SQLAlchemy + psycopg 3, imported only here and in fleet_models (the
cache-hit path never loads them). Every failure becomes a one-line FleetError that shows the URL
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update

from broker import cache, locks, settings
from broker.errors import (
    BrokerError,
    FleetDenied,
    FleetError,
    FleetSchemaMismatch,
    FleetUnreachable,
    UsageError,
)
from broker.models import Lease, OutboxEntry, Setting

log = logging.getLogger(__name__)

# The shared schema this code reads and writes, and every revision it knows (oldest first).
# tests/test_fleet_schema.py checks both against migrations/fleet/versions.
SCHEMA_HEAD = "f001"
KNOWN_REVISIONS = ("f001",)

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

# The public fields of a fleet row, in output order (json/csv carry every one of them).
COLUMNS = [
    "lease_id",
    "host",
    "user",
    "profile",
    "mount",
    "role",
    "namespace",
    "credential_type",
    "access_key_id",
    "role_session_name",
    "vault_addr",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
]
TIME_COLUMNS = ("issued_at", "expires_at", "revoked_at")
STATES = ("active", "expired", "revoked", "all")


# -- the URL: parsed, masked, never shown with its password ---------------------------------------


def require_url(app) -> str:
    if not app.ledger_url:
        raise UsageError("no fleet ledger configured: give --ledger-url URL or set BROKER_LEDGER_URL")
    return app.ledger_url


def mask_url(raw: str) -> str:
    """The URL as the user gave it, with any password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(raw)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown only as a hint
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", raw.split("?", 1)[0])
    if url.query:
        url = url.update_query_dict({k: "***" for k in url.query if "password" in k.lower()})
    return url.render_as_string(hide_password=True)


def parse_url(raw: str):
    """A SQLAlchemy URL on psycopg 3; `postgresql://` is taken as psycopg 3 too."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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

    def __init__(self, raw_url: str):
        self.url = parse_url(raw_url)
        self.masked = mask_url(raw_url)
        self._secrets = [s for s in (self.url.password, os.environ.get("PGPASSWORD")) if s]
        self._engine = None
        self._checked = False

    @property
    def engine(self):
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            options = (
                f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} "
                f"-c idle_in_transaction_session_timeout={4 * STATEMENT_TIMEOUT_MS}"
            )
            self._engine = create_engine(
                self.url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                    "options": options,
                    "application_name": "broker",
                },
            )
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
    def translated(self, what: str):
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
    def begin(self, what: str, *, check_schema: bool = True):
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


def read_revision(conn) -> str | None:
    from sqlalchemy import text

    exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": fleet_version_table()}).scalar()
    if exists is None:
        return None
    return conn.execute(text(f"SELECT version_num FROM {fleet_version_table()}")).scalar()  # noqa: S608


def fleet_version_table() -> str:
    from broker.fleet_models import VERSION_TABLE

    return VERSION_TABLE


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


def init_schema(raw_url: str) -> InitResult:
    """Create or upgrade the shared schema with Alembic, in process; refuse a newer one."""
    ledger = FleetLedger(raw_url)
    try:
        with ledger.begin("the schema upgrade", check_schema=False) as conn:
            before = read_revision(conn)
            if before is not None and before not in KNOWN_REVISIONS:
                check_revision(before, ledger.masked)  # raises: newer than this code
            if before == SCHEMA_HEAD:
                return InitResult(ledger.masked, before, SCHEMA_HEAD)
            _require_roles(conn, ledger.masked)
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", fleet_migrations_dir().replace("%", "%%"))
            config.attributes["connection"] = conn
            log.info("upgrading the fleet ledger %s from %s to %s", ledger.masked, before or "empty", SCHEMA_HEAD)
            command.upgrade(config, "head")
        return InitResult(ledger.masked, before, SCHEMA_HEAD)
    finally:
        ledger.dispose()


def _require_roles(conn, masked: str) -> None:
    from sqlalchemy import text

    from broker.fleet_models import HOST_ROLE, RESPONDER_ROLE

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

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "revision": self.revision,
            "pending": self.pending,
            "last_push": cache.iso_utc(self.last_push) if self.last_push else None,
        }


def status(app) -> LedgerStatus:
    """What is known locally (pending rows, last push) and, when PostgreSQL answers, its revision."""
    ledger = FleetLedger(require_url(app))
    pending, last_push = local_status(app)
    try:
        revision = ledger.revision()
        error = None
        if revision != SCHEMA_HEAD:
            try:
                check_revision(revision, ledger.masked)
            except FleetError as exc:
                error = exc
    except FleetError as exc:
        revision, error = None, exc
    finally:
        ledger.dispose()
    return LedgerStatus(ledger.masked, revision, pending, last_push, error)


def local_status(app) -> tuple[int, int | None]:
    with app.transaction(read_only=True) as session:
        pending = session.scalar(select(func.count()).select_from(OutboxEntry)) or 0
        value = session.scalar(select(Setting.value).where(Setting.key == LAST_PUSH_KEY))
    return pending, int(value) if value else None


# -- push: the outbox to PostgreSQL ------------------------------------------------------------------

# Local Lease columns that make up a shared row; the last four may change after the first push.
_PUSHED = (
    "lease_id",
    "access_key_id",
    "vault_addr",
    "namespace",
    "mount",
    "role",
    "profile",
    "credential_type",
    "role_session_name",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
    "host",
    "os_user",
)
_MUTABLE = ("expires_at", "state", "revoked_at", "revoked_by")


def _utc(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _shared_row(lease: Lease) -> dict:
    row = {name: getattr(lease, name) for name in _PUSHED}
    for name in TIME_COLUMNS:
        row[name] = _utc(row[name])
    row["namespace"] = row["namespace"] or ""
    return row


def _read_outbox(app, after: int, limit: int) -> list[tuple[OutboxEntry, Lease | None]]:
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


def _forget_pushed(app, pushed: dict[int, tuple], orphans: list[int]) -> int:
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


def _upsert(conn, rows: list[dict]) -> None:
    from sqlalchemy.dialects.postgresql import insert

    from broker.fleet_models import FleetLease

    stmt = insert(FleetLease.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["lease_id", "access_key_id"],
        set_={name: stmt.excluded[name] for name in _MUTABLE},
    )
    conn.execute(stmt, rows)


def push(app, ledger: FleetLedger) -> int:
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
            with ledger.begin("pushing lease rows") as conn:
                _upsert(conn, [_shared_row(lease) for lease in leases])
        pushed = {lease.id: tuple(getattr(lease, c) for c in _MUTABLE) for lease in leases}
        pushed_total += _forget_pushed(app, pushed, orphans) if (pushed or orphans) else 0
        if len(batch) < PUSH_BATCH:
            break
    with app.transaction() as session:  # the outbox as read at the start is in PostgreSQL
        session.merge(Setting(key=LAST_PUSH_KEY, value=str(int(time.time()))))
    return pushed_total


# -- pull: fleet revocations of this host's leases -----------------------------------------------------


def pull(app, ledger: FleetLedger) -> int:
    """Mark revoked the local active leases a responder revoked in the fleet ledger, wiping their
    cached secrets; returns how many. Only this host's own rows are asked for (by lease id)."""
    from sqlalchemy import and_, tuple_

    from broker.fleet_models import FleetLease

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
        with ledger.begin("reading revocations") as conn:
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
                    .values(state="revoked", revoked_at=when, revoked_by=who or "fleet", secret=None)
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


def sync(app, *, background: bool = False, wait: bool = True) -> SyncResult:
    """Drain the outbox into the fleet ledger and pull revocations of this host's leases.
    With wait=False, skip at once (ran=False) if another sync runs; background (after a miss) also
    lowers this process's priority. When PostgreSQL cannot be reached the error propagates and every
    pending row stays queued."""
    url = require_url(app)
    path = locks.lock_path(app.db_path, SYNC_LOCK)
    if background:
        with contextlib.suppress(OSError):
            os.nice(10)  # never compete with the credential-process calls that started it
    if background or not wait:
        with locks.try_hold(path) as held:
            if not held:
                return SyncResult(ran=False)
            return _sync_locked(app, url)
    with locks.hold(path, SYNC_LOCK_WAIT_SECONDS, "fleet sync lock"):
        return _sync_locked(app, url)


def sync_before_prune(app) -> SyncResult | None:
    """`broker prune` first pushes what waits in the outbox (the rows it must keep until then) and
    pulls revocations. PostgreSQL being down is a warning, never a reason not to prune."""
    if not app.ledger_url:
        return None
    try:
        return sync(app, wait=False)
    except FleetError as exc:
        log.warning("fleet ledger sync skipped: %s", exc)
        return None


def _sync_locked(app, url: str) -> SyncResult:
    ledger = FleetLedger(url)
    try:
        ledger.check()
        pushed = push(app, ledger)
        pulled = pull(app, ledger)
    except FleetError:
        with app.transaction() as session:
            session.merge(Setting(key=RETRY_AFTER_KEY, value=str(int(time.time()) + BACKOFF_SECONDS)))
        raise
    finally:
        ledger.dispose()
    with app.transaction() as session:
        session.execute(delete(Setting).where(Setting.key == RETRY_AFTER_KEY))
    pending, _ = local_status(app)
    return SyncResult(ran=True, pushed=pushed, pulled=pulled, pending=pending)


def spawn_background_sync(app) -> bool:
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


def _where(t, selector: FleetSelector, now) -> list:
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


def _epoch(column):
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
            _epoch(t.c.issued_at).label("issued_at"),
            _epoch(t.c.expires_at).label("expires_at"),
            state.label("state"),
            _epoch(t.c.revoked_at).label("revoked_at"),
            t.c.revoked_by,
        )
        .where(*_where(t, selector, now))
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
    query = select(text).where(*_where(t, selector, func.now())).order_by(t.c.issued_at.desc(), t.c.lease_id.desc())
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
                    *_where(t, selector, func.now())
                )
            ).one()
    finally:
        ledger.dispose()
    widths = {name: max(1, m or 0) for name, m in zip(text_columns, maxima, strict=True)}
    widths.update(dict.fromkeys(TIME_COLUMNS, 19), state=len("expired"), left=12)  # as audit's table
    return widths


# -- `broker revoke --fleet`: claims, the shared revoke engine, marks ----------------------------------------

CLAIM_PER_WORKER = 16  # rows claimed per batch = this many per concurrent Vault worker
OTHERS_WAIT_SECONDS = 120  # how long to wait for rows another responder holds
CLAIM_HOLD_SECONDS = 600  # a claim's transaction may sit this long while Vault answers


@dataclass(frozen=True)
class FleetRevokeSelector:
    """Which fleet leases `broker revoke --fleet` revokes: exactly one kind of selection."""

    lease_ids: tuple[str, ...] = ()
    role: str | None = None
    mount: str | None = None
    host: str | None = None
    user: str | None = None
    all: bool = False

    def validated(self) -> FleetRevokeSelector:
        kinds = [bool(self.lease_ids), bool(self.role), bool(self.host), bool(self.user), self.all]
        if sum(kinds) != 1 or (self.mount and not self.role):
            raise UsageError(
                "say which fleet leases: --role R [--mount M], --host H, --user U, --lease-id ID (repeatable) or --all"
            )
        if any(not lease_id.strip() for lease_id in self.lease_ids):
            raise UsageError("--lease-id needs a non-empty lease id")
        return self

    def describe(self) -> str:
        if self.lease_ids:
            what = f"{len(self.lease_ids)} lease id{'s' if len(self.lease_ids) != 1 else ''}"
        elif self.role:
            what = f"role {self.role}" + (f" on mount {self.mount}" if self.mount else " on any mount")
        elif self.host:
            what = f"host {self.host}"
        elif self.user:
            what = f"user {self.user}"
        else:
            what = "all active leases"
        return f"{what}, every host of the fleet"

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "fleet": True,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()},
        }

    def rows(self, state: str = "active") -> FleetSelector:
        return FleetSelector(
            mount=self.mount,
            role=self.role,
            host=self.host,
            user=self.user,
            lease_ids=self.lease_ids,
            state=state,
        )


def _target_class():
    """revoke.Target plus the host and OS user a fleet row names (in the json report)."""
    from dataclasses import dataclass as _dataclass

    from broker import revoke as revoking

    global _FleetTarget
    if _FleetTarget is None:

        @_dataclass(frozen=True)
        class FleetTarget(revoking.Target):
            host: str = ""
            os_user: str = ""
            recorded_vault_addr: str = ""  # the host's Vault address, for audit only

            def public(self) -> dict:
                return {**super().public(), "host": self.host, "user": self.os_user}

        _FleetTarget = FleetTarget
    return _FleetTarget


_FleetTarget = None
_TARGET_FIELDS = (
    "lease_id",
    "access_key_id",
    "namespace",
    "credential_type",
    "role",
    "mount",
    "role_session_name",
    "profile",
    "host",
    "os_user",
    "vault_addr",
    "issued_at",
    "expires_at",
    "state",
    "revoked_by",
)


def _target_query(t, where, *, lock: str | None = None, limit: int | None = None, after=None):
    from sqlalchemy import tuple_

    query = select(*[(_epoch(t.c[n]).label(n) if n in TIME_COLUMNS else t.c[n]) for n in _TARGET_FIELDS]).where(*where)
    if after is not None:
        query = query.where(tuple_(t.c.lease_id, t.c.access_key_id) > tuple_(*after))
    query = query.order_by(t.c.lease_id, t.c.access_key_id)
    if limit:
        query = query.limit(limit)
    if lock == "skip":
        query = query.with_for_update(skip_locked=True)
    elif lock == "wait":
        query = query.with_for_update()
    return query


def _to_target(row, vault_addr: str, now: float):
    fields = dict(zip(_TARGET_FIELDS, row, strict=True))
    state = "expired" if fields["state"] == "active" and fields["expires_at"] <= now else fields["state"]
    return _target_class()(
        lease_id=fields["lease_id"],
        namespace=fields["namespace"] or "",
        credential_type=fields["credential_type"],
        access_key_id=fields["access_key_id"],
        role=fields["role"],
        mount=fields["mount"],
        role_session_name=fields["role_session_name"],
        expires_at=fields["expires_at"],
        issued_at=fields["issued_at"],
        vault_addr=vault_addr,
        profile=fields["profile"],
        state=state,
        host=fields["host"],
        os_user=fields["os_user"],
        recorded_vault_addr=fields["vault_addr"],
    )


def _mark(conn, results, revoked_by: str) -> None:
    """Commit a batch's outcomes to the claimed rows: revoked rows get state/time/who; failed rows
    keep `active` with the error (a rerun retries them)."""
    from sqlalchemy import bindparam

    from broker.fleet_models import FleetLease

    t = FleetLease.__table__
    key = (t.c.lease_id == bindparam("k_lease"), t.c.access_key_id == bindparam("k_akid"))
    done = [{"k_lease": r.target.lease_id, "k_akid": r.target.access_key_id, "at": _utc(r.at)} for r in results if r.ok]
    failed = [
        {
            "k_lease": r.target.lease_id,
            "k_akid": r.target.access_key_id,
            "error": f"{cache.iso_utc(r.at)} {r.error}",
        }
        for r in results
        if not r.ok
    ]
    if done:
        conn.execute(
            update(t)
            .where(*key, t.c.state == "active")
            .values(state="revoked", revoked_at=bindparam("at"), revoked_by=revoked_by, revoke_error=None),
            done,
        )
    if failed:
        conn.execute(update(t).where(*key, t.c.state == "active").values(revoke_error=bindparam("error")), failed)


def revoke_fleet(
    app,
    selector: FleetRevokeSelector,
    *,
    dry_run: bool = False,
    confirm=None,
    progress=None,
    concurrency: int | None = None,
):
    """`broker revoke --fleet`: revoke every matching active lease of every host in Vault, through
    this machine's Vault address and token and in each row's namespace, and mark the shared rows
    revoked by user@host. Selection, the concurrent engine, the report and the deny policies are
    broker.revoke's; this adds row claims, so two responders at once revoke each lease once:
    rows are claimed in batches (SELECT ... FOR UPDATE SKIP LOCKED), revoked, marked and committed;
    rows another responder holds are waited for and reported as it left them."""
    from broker import revoke as revoking

    selector = selector.validated()
    now = int(time.time())
    report = revoking.RevokeReport(selector=selector, dry_run=dry_run, at=now)
    addr = settings.vault_addr()
    ledger = FleetLedger(require_url(app))
    from broker.fleet_models import FleetLease

    t = FleetLease.__table__
    active_where = _where(t, selector.rows("active"), func.now())
    try:
        with ledger.begin("reading leases") as conn:
            planned = [_to_target(row, addr, now) for row in conn.execute(_target_query(t, active_where))]
            if selector.lease_ids:
                listed_rows = [
                    _to_target(row, addr, now)
                    for row in conn.execute(_target_query(t, _where(t, selector.rows("all"), func.now())))
                ]
        unknown: list = []
        if selector.lease_ids:
            known = {target.lease_id for target in listed_rows}
            for target in listed_rows:
                if target.state in ("revoked", "expired") and target.lease_id not in {p.lease_id for p in planned}:
                    outcome = "already_revoked" if target.state == "revoked" else "expired"
                    report.results.append(revoking.Result(target, True, outcome, None, now))
            unknown = [
                _target_class().unknown(lease_id, settings.vault_namespace(), addr)
                for lease_id in dict.fromkeys(selector.lease_ids)
                if lease_id not in known
            ]
        if dry_run:
            report.results += [revoking.Result(x, True, "would_revoke", None, now) for x in planned + unknown]
            return report
        make_vault = _per_thread(revoking.vault_factory())  # checks VAULT_ADDR & co. before anything changes
        if confirm is not None and (planned or unknown):
            confirm(revoking.describe_plan(selector, planned + unknown, []))
        workers = concurrency or revoking.concurrency_from_env()
        by = responder()
        if progress is not None and len(planned) + len(unknown) > 1:
            with progress(len(planned) + len(unknown)) as bar:
                _revoke_claimed(ledger, t, active_where, report, make_vault, workers, by, addr, bar.update)
                _revoke_unknown(unknown, report, make_vault, workers, bar.update)
        else:
            _revoke_claimed(ledger, t, active_where, report, make_vault, workers, by, addr, None)
            _revoke_unknown(unknown, report, make_vault, workers, None)
        _report_others(ledger, t, planned, report, addr, now)
    finally:
        ledger.dispose()
    report.results.sort(key=lambda r: (r.target.host, r.target.lease_id))
    if os.path.exists(app.db_path) and app.ledger_url:
        with contextlib.suppress(FleetError):
            _pull_now(app)  # this machine's own leases among them stop being served at once
    return report


def _per_thread(make_vault):
    """make_vault, remembering each worker thread's Vault across the claimed batches: every batch
    runs on a new pool whose threads replace the last one's, so a thread id is never shared by
    two live threads, and one connection per worker serves the whole run."""
    import threading

    made: dict[tuple[int, str], object] = {}

    def cached(addr: str):
        key = (threading.get_ident(), addr)
        if key not in made:
            made[key] = make_vault(addr)
        return made[key]

    return cached


def _fleet_outcome(result):
    """The engine says `not_in_ledger` for a target without a local row; a fleet row is a ledger row."""
    import dataclasses

    if result.outcome == "not_in_ledger" and result.target.state != "unknown":
        return dataclasses.replace(result, outcome="revoked")
    return result


def _revoke_claimed(ledger, t, active_where, report, make_vault, workers, by, addr, tick) -> None:
    from sqlalchemy import text, tuple_

    from broker import revoke as revoking

    attempted: set[tuple[str, str]] = set()
    batch_size = max(1, workers * CLAIM_PER_WORKER)
    after = ("", "")
    deadline = time.monotonic() + OTHERS_WAIT_SECONDS
    phase = "skip"  # first every row nobody holds, in key order; then wait for the rest
    while True:
        with ledger.translated("claiming leases"), ledger.engine.connect() as conn:
            transaction = conn.begin()
            try:
                conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{CLAIM_HOLD_SECONDS}s'"))
                if phase == "skip":
                    query = _target_query(t, active_where, lock="skip", limit=batch_size, after=after)
                else:
                    conn.execute(text(f"SET LOCAL lock_timeout = '{OTHERS_WAIT_SECONDS}s'"))
                    where = list(active_where)
                    if attempted:
                        where.append(tuple_(t.c.lease_id, t.c.access_key_id).notin_(sorted(attempted)))
                    query = _target_query(t, where, lock="wait", limit=batch_size)
                now = time.time()
                claimed = [_to_target(row, addr, now) for row in conn.execute(query)]
                if not claimed:
                    transaction.rollback()
                    if phase == "wait" or time.monotonic() > deadline:
                        return
                    phase = "wait"
                    continue
                if phase == "skip":
                    after = (claimed[-1].lease_id, claimed[-1].access_key_id)
                attempted.update((x.lease_id, x.access_key_id) for x in claimed)
                results = [_fleet_outcome(revoking._without_lease(x, int(now))) for x in claimed if not x.lease_id]

                def on_result(batch: list, results: list = results) -> None:
                    results.extend(_fleet_outcome(r) for r in batch)
                    if tick is not None:
                        tick(len(batch))

                try:
                    revoking.revoke_targets([x for x in claimed if x.lease_id], make_vault, workers, on_result)
                finally:  # even when interrupted: what Vault revoked is marked and committed
                    _mark(conn, results, by)
                    transaction.commit()
                    report.results.extend(results)
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise


def _revoke_unknown(unknown, report, make_vault, workers, tick) -> None:
    """Lease ids the fleet ledger does not know are still revoked in Vault (as the local revoke does)."""
    from broker import revoke as revoking

    def on_result(batch: list) -> None:
        report.results.extend(batch)
        if tick is not None:
            tick(len(batch))

    revoking.revoke_targets(unknown, make_vault, workers, on_result)


def _report_others(ledger, t, planned, report, addr, now) -> None:
    """Rows that were active when this run planned, that another responder revoked meanwhile."""
    from sqlalchemy import tuple_

    from broker import revoke as revoking

    ours = {(r.target.lease_id, r.target.access_key_id) for r in report.results}
    theirs = [(x.lease_id, x.access_key_id) for x in planned if (x.lease_id, x.access_key_id) not in ours]
    for start in range(0, len(theirs), PULL_BATCH):
        keys = theirs[start : start + PULL_BATCH]
        where = [t.c.state == "revoked", tuple_(t.c.lease_id, t.c.access_key_id).in_(keys)]
        with ledger.begin("reading leases") as conn:
            for row in conn.execute(_target_query(t, where)):
                report.results.append(
                    revoking.Result(
                        _to_target(row, addr, now),
                        True,
                        "already_revoked",
                        f"revoked by {row[-1]} meanwhile",
                        now,
                    )
                )


def _pull_now(app) -> None:
    ledger = FleetLedger(require_url(app))
    try:
        pull(app, ledger)
    finally:
        ledger.dispose()
