"""`broker ledger prune --older-than 90d` against a real PostgreSQL, direct and through PgBouncer: only
rows that expired before the cut-off go, in batches that skip rows someone else holds, only the
owner may run it. (How long a push waits during a prune at 1,000,000 rows: scripts/bench_fleet.py.)"""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json
import time

import pytest

from broker.fleet import retention
from tests.support.fleet_seed import copy_rows, fleet_rows
from tests.support.pg import (  # noqa: F401 - pytest fixtures
    OWNER,
    Host,
    both_paths,
    fleet_db,
    fleet_url,
    pg,
)
from tests.support.pgbouncer import pgbouncer  # noqa: F401 - pytest fixture (the PgBouncer path)

DAY = 86400


def seed(pg, db) -> dict[str, int]:
    """Rows of every kind around a 90-day cut-off; returns how many of each."""
    now = time.time()
    kinds = {
        "old_expired": fleet_rows(250, newest=now - 100 * DAY, spacing=60, tag="oe"),
        "old_revoked": fleet_rows(50, newest=now - 95 * DAY, spacing=60, state="revoked", tag="or"),
        "recent_expired": fleet_rows(40, newest=now - 10 * DAY, spacing=60, tag="re"),
        "active": fleet_rows(30, newest=now, spacing=10, tag="ac"),
        # issued long ago, renewed until five days ago: inside both windows, so it stays
        "old_but_renewed": fleet_rows(20, newest=now - 120 * DAY, spacing=60, ttl=115 * DAY, tag="rn"),
    }
    return {name: copy_rows(pg.url(OWNER, db), rows) for name, rows in kinds.items()}


def tags(pg, db) -> dict[str, int]:
    return dict(
        pg.query(db, "SELECT substr(split_part(lease_id, '/', 4), 1, 2), count(*) FROM fleet_leases GROUP BY 1")
    )


@both_paths
def test_prune_removes_only_rows_expired_before_the_cutoff(tmp_path, pg, fleet_url, fleet_db):
    seed(pg, fleet_db)
    owner = Host(tmp_path, "owner", fleet_url(OWNER, fleet_db))
    dry = owner.broker("ledger", "prune", "--older-than", "90d", "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) | {"url": None, "cutoff": None, "seconds": None} == {
        "url": None,
        "cutoff": None,
        "seconds": None,
        "dry_run": True,
        "removed": 300,
        "expired": 250,
        "revoked": 50,
        "batches": 0,
        "longest_batch_ms": 0.0,
    }
    assert sum(tags(pg, fleet_db).values()) == 390
    result = owner.broker("ledger", "prune", "--older-than", "90d")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "removed 300 fleet ledger rows (250 expired, 50 revoked)" in result.stderr
    assert pg.password not in result.stderr
    assert tags(pg, fleet_db) == {"re": 40, "ac": 30, "rn": 20}
    again = owner.broker("ledger", "prune", "--older-than", "90d", "--quiet")
    assert again.returncode == 0 and again.stderr == ""
    assert owner.broker("ledger", "prune", "--older-than", "7d", "--quiet").returncode == 0
    assert tags(pg, fleet_db) == {"ac": 30, "rn": 20}


def test_prune_goes_in_small_batches_and_skips_rows_others_hold(tmp_path, pg, fleet_db, monkeypatch):
    seed(pg, fleet_db)
    monkeypatch.setattr(retention, "FIRST_BATCH_ROWS", 40)
    monkeypatch.setattr(retention, "MAX_BATCH_ROWS", 40)
    monkeypatch.setattr(retention, "MIN_BATCH_ROWS", 40)
    held = pg.query(fleet_db, "SELECT lease_id FROM fleet_leases WHERE lease_id LIKE '%/oe%' LIMIT 1")[0][0]
    app = Host(tmp_path, "owner", pg.url(OWNER, fleet_db)).app()
    try:
        with pg.superuser(fleet_db) as other:  # a push (say) holds one doomed row's lock meanwhile
            other.execute("BEGIN")
            other.execute("SELECT 1 FROM fleet_leases WHERE lease_id = %s FOR UPDATE", (held,))
            result = retention.prune_fleet(app, 90 * DAY)
            other.execute("ROLLBACK")
        assert result.removed == 299 and result.batches >= 8
        assert pg.query(fleet_db, "SELECT lease_id FROM fleet_leases WHERE lease_id = %s", (held,)) == [(held,)]
        assert retention.prune_fleet(app, 90 * DAY).removed == 1  # the next run takes it
    finally:
        app.close()


def test_only_the_owner_may_prune_and_bad_durations_are_refused(tmp_path, pg, fleet_db):
    seed(pg, fleet_db)
    for login in ("host_a", "resp_1"):
        denied = Host(tmp_path, login, pg.url(login, fleet_db)).broker("ledger", "prune", "--older-than", "90d")
        assert denied.returncode == 1 and len(denied.stderr.strip().splitlines()) == 1, denied.stderr
        assert "denied" in denied.stderr and "Traceback" not in denied.stderr
    assert sum(tags(pg, fleet_db).values()) == 390
    owner = Host(tmp_path, "owner", pg.url(OWNER, fleet_db))
    for bad in ("1h", "soon", "0"):
        refused = owner.broker("ledger", "prune", "--older-than", bad)
        assert refused.returncode == 2 and "--older-than" in refused.stderr, refused.stderr
    assert owner.broker("ledger", "prune").returncode == 2


@pytest.mark.parametrize("size,elapsed,expected", [(1000, 0.06, 500), (1000, 0.01, 2000), (500, 0.03, 500)])
def test_the_batch_size_aims_at_the_target(size, elapsed, expected):
    assert retention._next_limit(size, size, elapsed) == expected
    assert retention._next_limit(size, size - 1, elapsed) == size  # a short batch: the end is near
