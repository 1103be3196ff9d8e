"""`broker ledger prune --older-than 90d`: the fleet ledger's retention, for the database owner.

What goes: rows whose lease expired before the cut-off (now minus --older-than), active or revoked,
as the README's old `DELETE ... WHERE expires_at < now() - interval '90 days'` did. Only the owner
may delete (hosts and responders have no DELETE grant); anyone else gets a one-line "denied".

Why a host's push never waits on it for long: the rows go in small batches, each its own short
transaction that walks the (issued_at, lease_id) index from where the last one stopped (a lease
expires after it is issued, so every doomed row has issued_at before the cut-off too) and locks its
rows with FOR UPDATE SKIP LOCKED: a row a push or a `revoke --fleet` holds is skipped (the next run
takes it), never waited for. The only locks a push can meet are those of the batch running now,
and the batch size adapts so that each batch takes about BATCH_TARGET_SECONDS. Nothing is
session state, so it runs through PgBouncer in transaction mode as well as direct.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.app import App

FIRST_BATCH_ROWS = 1_000
MIN_BATCH_ROWS = 100
MAX_BATCH_ROWS = 10_000
BATCH_TARGET_SECONDS = 0.03  # each batch's locks last about this long: far below a push's 100 ms budget
PRUNE_LOCK_TIMEOUT = "100ms"  # a batch that would wait on a lock (DDL, say) fails fast instead

# One batch: the next rows past the cursor in index order, locked without waiting, deleted.
_BATCH_SQL = """
WITH doomed AS (
    SELECT lease_id, access_key_id FROM fleet_leases
    WHERE issued_at < :cutoff AND expires_at < :cutoff
      AND (issued_at, lease_id) > (:after_issued, :after_lease)
    ORDER BY issued_at, lease_id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
DELETE FROM fleet_leases f USING doomed d
WHERE f.lease_id = d.lease_id AND f.access_key_id = d.access_key_id
RETURNING f.issued_at, f.lease_id, f.state
"""
_COUNT_SQL = "SELECT state, count(*) FROM fleet_leases WHERE expires_at < :cutoff GROUP BY state"


@dataclass
class FleetPruneResult:
    url: str
    cutoff: datetime
    dry_run: bool
    expired: int = 0  # rows active when they expired
    revoked: int = 0
    batches: int = 0
    longest_batch_seconds: float = 0.0
    seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list, repr=False)

    @property
    def removed(self) -> int:
        return self.expired + self.revoked

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = (
            f"{verb} {self.removed} fleet ledger row{'' if self.removed == 1 else 's'} "
            f"({self.expired} expired, {self.revoked} revoked) that expired before "
            f"{self.cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')} from {self.url}"
        )
        if not self.dry_run and self.batches:
            text += f" in {self.batches} batches (longest {self.longest_batch_seconds * 1000:.0f} ms)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "cutoff": self.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "dry_run": self.dry_run,
            "removed": self.removed,
            "expired": self.expired,
            "revoked": self.revoked,
            "batches": self.batches,
            "longest_batch_ms": round(self.longest_batch_seconds * 1000, 1),
            "seconds": round(self.seconds, 3),
        }


def prune_fleet(app: App, older_than: int, *, dry_run: bool = False) -> FleetPruneResult:
    """Delete (or with dry_run, count) the fleet rows that expired more than `older_than` seconds ago."""
    from sqlalchemy import text

    ledger = app.fleet
    started = time.monotonic()
    with ledger.begin("reading the clock") as conn:
        now: datetime = conn.execute(text("SELECT now()")).scalar_one()
    result = FleetPruneResult(ledger.masked, now - timedelta(seconds=older_than), dry_run)
    if dry_run:
        with ledger.begin("counting old rows") as conn:
            for state, count in conn.execute(text(_COUNT_SQL), {"cutoff": result.cutoff}):
                _add(result, state, int(count))
        result.seconds = time.monotonic() - started
        return result
    after: tuple[datetime, str] = (datetime.min.replace(tzinfo=now.tzinfo), "")
    limit = FIRST_BATCH_ROWS
    while True:
        batch_started = time.monotonic()
        with ledger.begin("deleting old rows") as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{PRUNE_LOCK_TIMEOUT}'"))
            rows = conn.execute(
                text(_BATCH_SQL),
                {"cutoff": result.cutoff, "after_issued": after[0], "after_lease": after[1], "limit": limit},
            ).all()
        elapsed = time.monotonic() - batch_started
        if not rows:
            break
        result.batches += 1
        result.batch_seconds.append(elapsed)
        result.longest_batch_seconds = max(result.longest_batch_seconds, elapsed)
        for _issued, _lease, state in rows:
            _add(result, state, 1)
        after = max((issued, lease) for issued, lease, _state in rows)
        limit = _next_limit(limit, len(rows), elapsed)
    result.seconds = time.monotonic() - started
    return result


def _add(result: FleetPruneResult, state: str, count: int) -> None:
    if state == "revoked":
        result.revoked += count
    else:
        result.expired += count


def _next_limit(limit: int, done: int, elapsed: float) -> int:
    """The next batch's size, aiming at BATCH_TARGET_SECONDS (at most doubling or halving)."""
    if done < limit or elapsed <= 0:
        return limit
    wanted = int(done * BATCH_TARGET_SECONDS / elapsed)
    return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, limit * 2, max(limit // 2, wanted)))
