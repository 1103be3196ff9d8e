"""A slow Vault never loses a lease: the issuing worker outlives its caller and records the lease
the moment Vault answers (real processes, the double's answer latency, kill -9)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.support.brokerproc import broker_argv, child_env, run_broker
from tests.support.helpers import wait_for


def rows(db_path: str, query: str = "SELECT lease_id, state, profile FROM leases") -> list[tuple]:
    if not os.path.exists(db_path):
        return []
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path() -> str:
    return os.environ["BROKER_DB"]


@pytest.fixture
def deploy(vault):
    assert run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy").returncode == 0
    return vault


@pytest.mark.timeout(90)
@pytest.mark.parametrize("latency", [4, 8])
def test_a_slow_vault_still_gives_a_credential(deploy, db_path, latency):
    deploy.set_latency(latency, path_contains="creds/")
    result = run_broker("credential-process", "--profile", "dev", timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["AccessKeyId"] == deploy.issued[-1].access_key
    assert [r[0] for r in rows(db_path)] == [deploy.issued[-1].lease_id]
    assert rows(db_path, "SELECT count(*) FROM intents") == [(0,)]


@pytest.mark.timeout(90)
def test_a_caller_killed_mid_issuance_leaves_a_recorded_lease(deploy, db_path):
    deploy.set_latency(8, path_contains="creds/")
    caller = subprocess.Popen(
        broker_argv("credential-process", "--profile", "dev"),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # the issuance has begun once its worker wrote the intent row (a loaded machine may take a while
    # to start Python); the caller dies 2 s into it
    wait_for(lambda: rows(db_path, "SELECT pid FROM intents"), timeout=60, interval=0.05)
    time.sleep(2)
    os.killpg(caller.pid, signal.SIGKILL)  # the caller's whole group, as a terminal's hang-up would
    caller.wait(timeout=10)
    assert rows(db_path) == []  # Vault has not answered yet
    # the worker (its own session) records it when Vault answers at ~8 s: bounded polling
    recorded = wait_for(lambda: rows(db_path), timeout=20, interval=0.2)
    assert [r[0] for r in recorded] == [deploy.issued[0].lease_id]
    assert recorded[0][1:] == ("active", "dev")
    deploy.set_latency(0, path_contains="creds/")
    hit = run_broker("credential-process", "--profile", "dev")
    assert hit.returncode == 0, hit.stderr
    assert json.loads(hit.stdout)["AccessKeyId"] == deploy.issued[0].access_key
    assert len(deploy.issued) == 1  # the next call was a cache hit


@pytest.mark.timeout(90)
def test_a_caller_that_stops_waiting_says_so_and_its_reader_sees_eof(deploy, db_path):
    """BROKER_WAIT=2 against an 8 s Vault: the caller exits with a line saying the issuance goes on;
    a `broker credential-process | reader` pipe ends when the caller does, not when the worker does."""
    deploy.set_latency(8, path_contains="creds/")
    reader = subprocess.Popen(
        ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )  # the `| grep` of a shell pipeline
    caller = subprocess.Popen(
        broker_argv("credential-process", "--profile", "dev"),
        env=child_env({"BROKER_WAIT": "2"}),
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader.stdin.close()  # only the caller (and, were it wrong, the worker) holds the pipe now
    reader.stdin = None
    _out, err = caller.communicate(timeout=30)
    assert caller.returncode == 4
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "goes on in the background" in lines[0], err
    out, _ = reader.communicate(timeout=5)  # EOF although the worker still waits on Vault
    assert out == b""
    assert rows(db_path) == []
    recorded = wait_for(lambda: rows(db_path), timeout=20, interval=0.2)
    assert [r[0] for r in recorded] == [deploy.issued[0].lease_id]


@pytest.mark.timeout(90)
def test_a_worker_that_times_out_leaves_its_intent_for_doctor(deploy, db_path):
    deploy.set_latency(4, path_contains="creds/")
    result = run_broker("credential-process", "--profile", "dev", env={"BROKER_VAULT_TIMEOUT": "1"}, timeout=60)
    assert result.returncode == 4
    assert "did not answer" in result.stderr and "reconcile" in result.stderr
    assert rows(db_path, "SELECT count(*) FROM intents") == [(1,)]
    deploy.set_latency(0, path_contains="creds/")
    doctor = run_broker("doctor")
    assert "reconcile" in doctor.stdout + doctor.stderr
