"""Load: 50 processes at a time, 20 rounds, mixing credential-process, leases, prune and revoke on
one database. No "database is locked", no failure, no lost lease."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from tests.support.brokerproc import broker_argv, child_env, run_broker

PROCESSES = 50
ROUNDS = 20
PROFILES = ("deploy", "ci", "fed")


def command_for(index: int, round_: int) -> list[str]:
    """Each round: 46 credential-process calls (one --no-cache), one leases, one prune, one revoke."""
    slot = (index + round_) % PROCESSES
    profile = PROFILES[(index + round_) % len(PROFILES)]
    if slot == 47:
        return ["leases", "--format", "json"]
    if slot == 48:
        return ["prune", "--quiet"]
    if slot == 49:
        return ["revoke", "--profile", profile, "--yes", "--format", "json"]
    if slot == 5:
        return ["credential-process", "--profile", profile, "--no-cache"]
    return ["credential-process", "--profile", profile]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fifty_processes_twenty_rounds(vault):
    for name, role in (("deploy", "deploy"), ("ci", "ci"), ("fed", "fed")):
        assert run_broker("profile", "add", name, "--mount", "aws", "--role", role).returncode == 0
    env = child_env()
    failures, locked, ran = [], 0, 0
    for round_ in range(ROUNDS):
        procs = []
        for index in range(PROCESSES):
            args = command_for(index, round_)
            procs.append(
                (
                    args,
                    subprocess.Popen(
                        broker_argv(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    ),
                )
            )
        for args, proc in procs:
            out, err = proc.communicate(timeout=120)
            ran += 1
            locked += "locked" in err.lower()
            if proc.returncode != 0:
                failures.append((args, proc.returncode, err.strip()))
            elif args[0] == "credential-process":
                assert json.loads(out)["Version"] == 1
    assert ran == PROCESSES * ROUNDS
    assert locked == 0
    assert failures == []
    db_path = os.environ["BROKER_DB"]
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        recorded = {row[0] for row in conn.execute("SELECT lease_id FROM leases")}
        assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
    finally:
        conn.close()
    assert {i.lease_id for i in vault.issued} <= recorded
