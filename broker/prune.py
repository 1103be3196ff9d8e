"""Removing ledger rows whose credentials have ended, in small transactions, safely beside
credential-process.

What goes: every row whose `expires_at` has passed, active (expired) or revoked. No such row can be
served (the cache-hit query wants `expires_at > now`) or renewed (renewal wants a minute left), and
Vault has already ended or revoked its lease. What stays: rows the fleet ledger has not confirmed
yet (in `outbox`), so a fleet push never loses a lease's last state.

Why it never gets in the way: cache hits only read, and in WAL mode a reader never waits for a
writer. Writers (issuance, revoke) wait at most one batch: each batch is one short BEGIN IMMEDIATE
transaction sized to take about BATCH_TARGET_SECONDS, with a pause after it so a waiting writer
gets its turn. A row another process is inserting or updating is inside that process's own write
transaction, which SQLite serialises with ours, so prune only ever sees committed rows. Two prunes
never run at once (a lock file, tried without waiting), which makes cron overlap harmless.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker import locks

if TYPE_CHECKING:
    import sqlite3

    from broker.app import App

log = logging.getLogger(__name__)

FIRST_BATCH_ROWS = 2000
MIN_BATCH_ROWS = 200
MAX_BATCH_ROWS = 20000
BATCH_TARGET_SECONDS = 0.04
PAUSE_FRACTION = 0.15  # pause after each batch, as a share of the batch's time
MIN_PAUSE_SECONDS = 0.002

# Constant SQL built from constant parts; every value is a bound parameter.
_EXPIRED = "expires_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.lease_row = leases.id)"
COUNT_QUERY = f"SELECT state, count(*) FROM leases WHERE {_EXPIRED} GROUP BY state"  # noqa: S608
KEPT_QUERY = "SELECT count(*) FROM leases JOIN outbox ON outbox.lease_row = leases.id WHERE expires_at <= ?"
DELETE_BATCH = (
    f"DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE {_EXPIRED} LIMIT ?) "  # noqa: S608
    "RETURNING state, lease_id, access_key_id"
)


@dataclass
class PruneResult:
    dry_run: bool
    expired: int = 0  # active rows past their expiry
    revoked: int = 0  # revoked rows past their expiry
    kept_for_fleet: int = 0  # past expiry but not yet confirmed by the fleet ledger
    busy: bool = False  # another prune held the lock: nothing was done
    seconds: float = 0.0

    @property
    def removed(self) -> int:
        return self.expired + self.revoked

    def summary(self) -> str:
        if self.busy:
            return "another `broker prune` is running; nothing done"
        verb = "would remove" if self.dry_run else "removed"
        text = f"{verb} {self.removed} ledger row{'' if self.removed == 1 else 's'}"
        text += f" ({self.expired} expired, {self.revoked} revoked)"
        if self.kept_for_fleet:
            text += f"; kept {self.kept_for_fleet} not yet pushed to the fleet ledger"
        return text


def prune_expired(app: App, *, dry_run: bool = False, now: int | None = None) -> PruneResult:
    """Delete (or with dry_run, count) the ledger rows whose credentials ended before `now`."""
    cutoff = int(time.time()) if now is None else now
    result = PruneResult(dry_run=dry_run)
    started = time.monotonic()
    _ = app.engine  # create, check and migrate the database before anything else
    if app.ledger_url and not dry_run:  # drain the outbox (rows kept for it can go) and pull revocations
        from broker.fleet import ledger

        ledger.sync_before_prune(app)
    with locks.try_hold(locks.lock_path(app.db_path, "prune")) as held:
        if not held:
            result.busy = True
            return result
        with app.sqlite() as conn:
            if dry_run:
                _count(conn, cutoff, result)
            else:
                _delete(conn, cutoff, result)
            result.kept_for_fleet = conn.execute(KEPT_QUERY, (cutoff,)).fetchone()[0]
    result.seconds = time.monotonic() - started
    log.info("%s in %.2fs", result.summary(), result.seconds)
    return result


def _count(conn: sqlite3.Connection, cutoff: int, result: PruneResult) -> None:
    for state, count in conn.execute(COUNT_QUERY, (cutoff,)):
        _add(result, state, count)


def _add(result: PruneResult, state: str, count: int) -> None:
    if state == "revoked":
        result.revoked += count
    else:
        result.expired += count


def _delete(conn: sqlite3.Connection, cutoff: int, result: PruneResult) -> None:
    """Batches until nothing is left, each sized to take about BATCH_TARGET_SECONDS."""
    size = FIRST_BATCH_ROWS
    while True:
        began = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            states = conn.execute(DELETE_BATCH, (cutoff, size)).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        took = time.monotonic() - began
        log.debug("deleted a batch of %d rows (batch size %d) in %.3fs", len(states), size, took)
        if log.isEnabledFor(logging.INFO):
            for state, lease_id, access_key_id in states:
                log.info("pruned %s lease %s (%s)", state, lease_id or "(no lease id)", access_key_id)
        revoked = sum(1 for (state, _lease, _key) in states if state == "revoked")
        result.revoked += revoked
        result.expired += len(states) - revoked
        if len(states) < size:
            return
        size = _next_size(size, took)
        time.sleep(max(MIN_PAUSE_SECONDS, took * PAUSE_FRACTION))


def _next_size(size: int, took: float) -> int:
    if took > 2 * BATCH_TARGET_SECONDS:
        return max(MIN_BATCH_ROWS, size // 2)
    if took < BATCH_TARGET_SECONDS / 2:
        return min(MAX_BATCH_ROWS, size * 2)
    return size
