"""`broker prune`: what goes and what stays, dry run, idempotence, quiet cron mode, one prune at a
time, and a prune racing ten credential-process processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

from broker import locks
from broker.cli import run as broker_run
from tests.support.helpers import wait_for
from tests.support.ledger_seed import insert_rows, lease_row, seed_leases


def cli(capsys, *args):
    code = broker_run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def count(where="1=1") -> int:
    conn = sqlite3.connect(os.environ["BROKER_DB"])
    try:
        return conn.execute(f"SELECT count(*) FROM leases WHERE {where}").fetchone()[0]
    finally:
        conn.close()


def test_prune_on_an_empty_ledger(capsys):
    code, out, err = cli(capsys, "prune")
    assert (code, out, err) == (0, "removed 0 ledger rows (0 expired, 0 revoked)\n", "")


def test_prune_removes_exactly_the_rows_past_their_expiry(capsys):
    db = os.environ["BROKER_DB"]
    now = int(time.time())
    seed_leases(db, 10, expired=True, tag="old")
    seed_leases(db, 5, expired=True, state="revoked", tag="oldrev")
    seed_leases(db, 4, state="revoked", tag="newrev")
    seed_leases(db, 7, tag="live")
    insert_rows(db, [lease_row(lease_id="aws/creds/ci/edge", expires_at=now + 5)])
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO outbox (lease_row, enqueued_at) SELECT id, 0 FROM leases WHERE lease_id = ?",
            ("aws/creds/ci/old00000003",),
        )
    conn.close()

    code, out, err = cli(capsys, "prune", "--dry-run")
    assert code == 0 and err == ""
    assert out == "would remove 14 ledger rows (9 expired, 5 revoked); kept 1 not yet pushed to the fleet ledger\n"
    assert count() == 27

    code, out, err = cli(capsys, "prune")
    assert code == 0 and err == ""
    assert out == "removed 14 ledger rows (9 expired, 5 revoked); kept 1 not yet pushed to the fleet ledger\n"
    assert count() == 13
    assert count("expires_at > strftime('%s','now')") == 12
    assert count("lease_id = 'aws/creds/ci/old00000003'") == 1

    code, out, _ = cli(capsys, "prune")
    assert code == 0 and out.startswith("removed 0 ledger rows")


def test_prune_quiet_prints_nothing(capsys):
    seed_leases(os.environ["BROKER_DB"], 3, expired=True)
    assert cli(capsys, "prune", "--quiet") == (0, "", "")
    assert count() == 0


def test_a_second_prune_does_nothing_while_one_runs(capsys):
    db = os.environ["BROKER_DB"]
    seed_leases(db, 3, expired=True)
    with locks.hold(locks.lock_path(db, "prune"), 1.0):
        code, out, err = cli(capsys, "prune")
    assert code == 0 and out == ""
    assert "another `broker prune` is running" in err
    assert count() == 3


def test_prune_in_large_batches_removes_everything(capsys):
    db = os.environ["BROKER_DB"]
    seed_leases(db, 30_000, expired=True, tag="bulk")
    seed_leases(db, 10, tag="live")
    code, out, _ = cli(capsys, "prune")
    assert code == 0 and out.startswith("removed 30000 ledger rows")
    assert count() == 10


def _spawn(args):
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_prune_racing_ten_credential_process_calls(vault):
    """Cache hits and new issuances run while prune deletes 100,000 rows: every call succeeds, the
    hits serve the cached key, every newly recorded lease survives, and only expired rows go."""
    db = os.environ["BROKER_DB"]
    first = subprocess.run(
        [sys.executable, "-m", "broker", "credential-process", "--mount", "aws", "--role", "ci"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    cached_key = json.loads(first.stdout)["AccessKeyId"]
    seed_leases(db, 100_000, expired=True, tag="race")

    pruner = _spawn(["prune"])
    wait_for(lambda: count() < 100_001 or pruner.poll() is not None, timeout=30, interval=0.01)
    hits = [_spawn(["credential-process", "--mount", "aws", "--role", "ci"]) for _ in range(6)]
    misses = [_spawn(["credential-process", "--mount", "aws", "--role", "deploy", "--no-cache"]) for _ in range(4)]
    outputs = []
    for proc in [pruner, *hits, *misses]:
        out, err = proc.communicate(timeout=120)
        outputs.append((proc.returncode, out, err))

    code, out, err = outputs[0]
    assert code == 0, err
    assert out == "removed 100000 ledger rows (100000 expired, 0 revoked)\n"
    for code, _out, err in outputs[1:]:
        assert code == 0, err
        assert "locked" not in err
    hit_keys = {json.loads(out)["AccessKeyId"] for _, out, _ in outputs[1:7]}
    assert hit_keys == {cached_key}
    miss_keys = {json.loads(out)["AccessKeyId"] for _, out, _ in outputs[7:]}
    assert len(miss_keys) == 4
    conn = sqlite3.connect(db)
    try:
        recorded = {row[0] for row in conn.execute("SELECT access_key_id FROM leases")}
        intents = conn.execute("SELECT count(*) FROM intents").fetchone()[0]
    finally:
        conn.close()
    assert recorded == miss_keys | {cached_key}
    assert intents == 0
