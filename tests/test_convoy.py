"""No convoy under contention: processes that waited for an issuance take what it produced, short
leases included (real processes on one database, the double's answer latency)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from broker import cache
from tests.support.brokerproc import broker_argv, child_env, run_broker

PROCESSES = 8
ROUNDS = 4


def _ledger(query: str) -> list[tuple]:
    conn = sqlite3.connect(os.environ["BROKER_DB"])
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_waves_on_ten_second_leases_cost_one_issuance_each_and_never_fail(vault):
    vault.add_role("aws", "short", "iam_user", iam_lease_ttl=10, iam_max_ttl=10)
    vault.set_latency(0.2, path_contains="creds/")
    assert run_broker("profile", "add", "short", "--mount", "aws", "--role", "short").returncode == 0
    env = child_env()
    failures: list[tuple[int, str]] = []
    for _round in range(ROUNDS):
        procs = [
            subprocess.Popen(
                broker_argv("credential-process", "--profile", "short"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(PROCESSES)
        ]
        keys = set()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures.append((proc.returncode, err.strip()))
            else:
                keys.add(json.loads(out)["AccessKeyId"])
        assert len(keys) <= 1 or failures  # a wave shares one credential
    assert failures == []
    assert 1 <= len(vault.issued) <= ROUNDS  # one issuance per wave at most, not one per process
    assert {i.lease_id for i in vault.issued} <= {r[0] for r in _ledger("SELECT lease_id FROM leases")}
    assert _ledger("SELECT count(*) FROM intents") == [(0,)]


def _hit_table(rows: list[tuple[int, int, int]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE leases (id INTEGER PRIMARY KEY, cache_key TEXT, state TEXT, secret BLOB, access_key_id TEXT, "
        "issued_at INT, renewed_at INT, expires_at INT, lease_id TEXT, sealed_token BLOB, account_id TEXT)"
    )
    for row_id, issued_at, expires_at in rows:
        conn.execute(
            "INSERT INTO leases VALUES (?, 'k', 'active', x'00', 'AKIA', ?, NULL, ?, 'l', NULL, NULL)",
            (row_id, issued_at, expires_at),
        )
    return conn


def test_a_waiter_takes_the_credential_recorded_while_it_waited():
    now = 1_000_000
    # a 900 s STS credential that Vault took 500 s to hand out: below the reuse threshold on arrival
    conn = _hit_table([(7, now - 500, now + 400)])
    assert cache.find_hit(conn, "k", now) is None  # a process that did not wait issues anew
    assert cache.find_hit(conn, "k", now, newer_than=6) is not None  # one that waited takes it
    assert cache.find_hit(conn, "k", now, newer_than=7) is None  # it was there before: not the waited-for one
    expiring = _hit_table([(8, now - 899, now + cache.WAITER_MIN_REMAINING - 1)])
    assert cache.find_hit(expiring, "k", now, newer_than=1) is None  # never one about to expire
