"""kill -9 at random points: the ledger stays consistent and loses no lease Vault issued."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time

from tests.support.brokerproc import broker_argv, child_env, credential, run_broker
from tests.support.helpers import wait_for

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
        proc = subprocess.Popen(
            broker_argv("credential-process", "--profile", "dev", "--no-cache"),
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
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


def _kill_at_random(args: list[str], rng: random.Random, latest: float) -> None:
    proc = subprocess.Popen(
        broker_argv(*args),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(rng.uniform(0.2, latest))
    proc.kill()
    proc.wait(timeout=10)


def _track_real_leases(vault, db_path: str, count: int) -> None:
    """`count` real leases from the double, recorded as broker records them (fast: no CLI start-ups)."""
    import hvac

    from tests.support.ledger_seed import insert_rows, lease_row

    client = hvac.Client(url=vault.url, token=vault.root_token)
    now = int(time.time())
    rows = []
    for _ in range(count):
        response = client.secrets.aws.generate_credentials(name="deploy", endpoint="sts", mount_point="aws")
        rows.append(
            lease_row(
                lease_id=response["lease_id"],
                credential_type="assumed_role",
                role="deploy",
                endpoint="sts",
                vault_addr=vault.url,
                issued_at=now,
                expires_at=now + 3600,
                access_key_id=response["data"]["access_key"],
            )
        )
    insert_rows(db_path, rows)


def test_kill_during_revoke_never_contradicts_vault(vault):
    db_path = os.environ["BROKER_DB"]
    vault.latency = 0.02
    rng = random.Random(7)
    for _run in range(10):
        _track_real_leases(vault, db_path, 30)
        _kill_at_random(["revoke", "--role", "deploy", "--yes"], rng, 1.0)
        assert integrity(db_path) == "ok"
        live = vault.live_leases()
        states = ledger(db_path)
        assert not [lease for lease, state in states.items() if state == "revoked" and lease in live]
    rerun = run_broker("revoke", "--role", "deploy", "--yes")
    assert rerun.returncode == 0, rerun.stderr
    states = ledger(db_path)
    assert set(states.values()) == {"revoked"}
    assert not set(states) & vault.live_leases()


def test_kill_during_prune_keeps_the_ledger_whole(vault):
    from tests.support.ledger_seed import seed_leases

    db_path = os.environ["BROKER_DB"]
    keep = credential("--mount", "aws", "--role", "deploy")
    rng = random.Random(11)
    for run in range(10):
        seed_leases(db_path, 30_000, expired=True, tag=f"r{run}-")
        _kill_at_random(["prune"], rng, 1.0)
        assert integrity(db_path) == "ok"
        assert credential("--mount", "aws", "--role", "deploy") == keep
    assert run_broker("prune").returncode == 0
    assert list(ledger(db_path)) == [vault.issued[-1].lease_id]


def test_doctor_reports_an_interrupted_issuance():
    db_path = os.environ["BROKER_DB"]
    run_broker("profile", "list")
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO intents (profile, vault_addr, namespace, mount, role, endpoint, role_session_name, started_at,"
        " pid, host) VALUES (NULL, 'http://v', '', 'aws', 'deploy', 'sts', 'broker-x-1', ?, 999999, ?)",
        (int(time.time()) - 600, __import__("socket").gethostname()),
    )
    conn.commit()
    conn.close()
    result = run_broker("doctor")
    assert "interrupted issuances: 1, first aws/sts/deploy" in result.stdout
    assert "session broker-x-1" in result.stdout
