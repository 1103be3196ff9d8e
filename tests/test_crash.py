"""kill -9 at random points: the ledger stays consistent and loses no lease Vault issued."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time

from tests.brokerproc import broker_argv, child_env, credential, run_broker
from tests.helpers import wait_for

RUNS = 50


def ledger(db_path: str) -> dict[str, str]:
    conn = sqlite3.connect(db_path)
    try:
        return dict(conn.execute("SELECT lease_id, state FROM leases"))
    finally:
        conn.close()


def integrity(db_path: str) -> str:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_kill_during_issuance_loses_no_lease(vault):
    db_path = os.environ["BROKER_DB"]
    run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy")
    vault.latency = 0.2
    rng = random.Random(20261126)
    for run in range(RUNS):
        proc = subprocess.Popen(broker_argv("credential-process", "--profile", "dev", "--no-cache"),
                                env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.0, 1.2))
        # every other run takes the whole process group, as a terminal's hang-up would
        if run % 2:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=10)

    def intents() -> int:
        conn = sqlite3.connect(db_path)
        try:
            return conn.execute("SELECT count(*) FROM intents").fetchone()[0]
        finally:
            conn.close()

    def settled():
        # workers live in their own sessions: every one finishes, records and clears its intent
        issued = {i.lease_id for i in vault.issued}
        return issued and issued <= set(ledger(db_path)) and intents() == 0

    wait_for(settled, timeout=30, interval=0.2)
    assert integrity(db_path) == "ok"
    recorded = ledger(db_path)
    assert {i.lease_id for i in vault.issued} <= set(recorded)
    live = vault.live_leases()
    assert all(recorded[lease] == "active" for lease in live if lease in recorded)
    assert len(vault.issued) >= RUNS // 5, "the kills came too early to test anything"
    # and the next command works without manual repair
    assert credential("--profile", "dev")["AccessKeyId"] == vault.issued[-1].access_key
