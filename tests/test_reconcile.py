"""`broker reconcile`: the ledger checked against Vault (real processes, the Vault double, kill -9
of issuing workers after Vault issued and before they recorded)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess

import pytest
import requests

from tests.support.brokerproc import broker_argv, child_env, credential, run_broker
from tests.support.helpers import wait_for

WORKERS = 10


def _ledger(query: str) -> list[tuple]:
    conn = sqlite3.connect(os.environ["BROKER_DB"])
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _reconcile(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = run_broker("reconcile", "--format", "json", *args, timeout=120)
    return result, (json.loads(result.stdout) if result.stdout.strip() else {})


def _revoke_outside_broker(vault, lease_id: str) -> None:
    reply = requests.put(
        f"{vault.url}/v1/sys/leases/revoke",
        json={"lease_id": lease_id},
        headers={"X-Vault-Token": vault.root_token},
        timeout=10,
    )
    assert reply.status_code == 204, reply.text


@pytest.mark.timeout(240)
def test_ten_killed_workers_are_all_found_and_revoked(vault):
    assert run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy").returncode == 0
    vault.set_latency(6, path_contains="creds/")  # Vault issues at once; only its answer waits
    callers = [
        subprocess.Popen(
            broker_argv("credential-process", "--profile", "dev", "--no-cache"),
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(WORKERS)
    ]
    # every worker wrote its intent (with its pid) and Vault has issued: kill -9 the workers
    wait_for(lambda: len(_ledger("SELECT pid FROM intents")) == WORKERS, timeout=60, interval=0.1)
    wait_for(lambda: len(vault.issued) == WORKERS, timeout=60, interval=0.1)
    for (pid,) in _ledger("SELECT pid FROM intents"):
        os.kill(pid, signal.SIGKILL)
    for caller in callers:
        caller.wait(timeout=60)
    vault.set_latency(0, path_contains="creds/")
    assert _ledger("SELECT count(*) FROM leases") == [(0,)]  # nothing recorded: the leases are unknown

    result, report = _reconcile("--vault-list")
    assert result.returncode == 0, result.stderr
    issued = {i.lease_id for i in vault.issued}
    assert {u["lease_id"] for u in report["unknown"]} == issued  # all ten found
    assert report["summary"]["unknown"] == WORKERS
    assert all(u["issue_time"] and u["expire_time"] for u in report["unknown"])
    assert all(u["intent"] and "interrupted issuance (profile dev" in u["intent"] for u in report["unknown"])

    refused = run_broker("reconcile", "--revoke-unknown")
    assert refused.returncode == 2 and "--yes" in refused.stderr  # stdin is not a terminal
    dry, dry_report = _reconcile("--revoke-unknown", "--dry-run")
    assert dry.returncode == 0 and {u["result"] for u in dry_report["unknown"]} == {"would_revoke"}
    assert issued <= vault.live_leases()

    done, done_report = _reconcile("--revoke-unknown", "--yes")
    assert done.returncode == 0, done.stderr
    assert {u["result"] for u in done_report["unknown"]} == {"revoked"}
    assert not issued & vault.live_leases()
    assert _ledger("SELECT count(*) FROM intents") == [(0,)]  # resolved
    again, again_report = _reconcile("--vault-list")
    assert again.returncode == 0 and again_report["unknown"] == []


@pytest.mark.timeout(180)
def test_rows_vault_no_longer_knows_are_marked_ended_and_a_partial_run_resumes(vault):
    for name, role in (("dev", "deploy"), ("ci", "ci")):
        assert run_broker("profile", "add", name, "--mount", "aws", "--role", role).returncode == 0
    first = credential("--profile", "dev")["AccessKeyId"]
    credential("--profile", "ci")
    gone = next(i.lease_id for i in vault.issued if i.access_key == first)
    _revoke_outside_broker(vault, gone)

    vault.inject_fault(403, count=1, path_contains="sys/leases/lookup")
    failed, failed_report = _reconcile()
    assert failed.returncode == 8
    assert failed_report["summary"]["lookup_failed"] == 1
    line = failed.stderr.strip().splitlines()
    assert len(line) == 1 and "permission denied" in line[0] and "run the same command again" in line[0]

    result, report = _reconcile()
    assert result.returncode == 0, result.stderr
    assert report["summary"]["lookup_failed"] == 0
    ended = [r for run in (failed_report, report) for r in run["checked"] if r["result"] == "ended"]
    assert [(r["lease_id"], r["reason"]) for r in ended] == [(gone, "revoked outside broker")]  # once, not twice
    rows = json.loads(run_broker("leases", "--format", "json", "--profile", "dev").stdout)
    assert [(r["state"], r["end_reason"]) for r in rows] == [("revoked", "revoked outside broker")]
    assert credential("--profile", "dev")["AccessKeyId"] != first  # its cached secret was wiped
    table = run_broker("reconcile")
    assert table.returncode == 0 and "0 ended" in table.stdout
