"""The fleet ledger end to end: real broker processes, the Vault double + moto, a real PostgreSQL."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest

from tests.support.helpers import wait_for
from tests.support.pg import (  # noqa: F401 - pytest fixtures
    PG_BIN,
    Host,
    HungServer,
    both_paths,
    child_env,
    closed_port_url,
    fleet_db,
    fleet_url,
    pg,
)
from tests.support.pgbouncer import pgbouncer  # noqa: F401 - pytest fixture (the PgBouncer path)


def cred(host: Host, *args: str, url="same") -> tuple[dict, float]:
    started = time.perf_counter()
    result = host.broker("credential-process", *args, url=url)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), elapsed


def shared_count(pg, db) -> int:
    return pg.query(db, "SELECT count(*) FROM fleet_leases")[0][0]


@pytest.fixture
def hosts(tmp_path, fleet_url, fleet_db, vault, aws_env):
    made = [Host(tmp_path, f"host-{x}", fleet_url(f"host_{x}", fleet_db), user=f"user{x}") for x in "abc"]
    for host in made:
        result = host.broker("profile", "add", "deploy", "--mount", "aws", "--role", "deploy", "--ttl", "1h")
        assert result.returncode == 0, result.stderr
    return made


@both_paths
def test_a_miss_pushes_in_the_background_and_no_secret_is_shared(tmp_path, pg, fleet_db, hosts, vault):
    secrets = []
    for host in hosts:
        first, _ = cred(host, "--profile", "deploy")
        again, _ = cred(host, "--profile", "deploy")  # a cache hit: the same credential, no push needed
        assert again == first
        iam, _ = cred(host, "--mount", "aws", "--role", "ci")
        secrets += [first["SecretAccessKey"], first["SessionToken"], iam["SecretAccessKey"]]
    wait_for(lambda: shared_count(pg, fleet_db) == 6, timeout=15)
    for host in hosts:
        wait_for(lambda h=host: h.pending() == 0, timeout=10)
    rows = pg.query(fleet_db, "SELECT host, os_user, role, credential_type, lease_id, db_user FROM fleet_leases")
    assert {(r[0], r[1], r[5]) for r in rows} == {(f"host-{x}", f"user{x}", f"host_{x}") for x in "abc"}
    assert {r[4] for r in rows} == {i.lease_id for i in vault.issued}
    # Dump every table of the shared database and look for the real secret values.
    dump = (
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{PG_BIN}/pg_dump",
                "-h",
                pg.dir,
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "--data-only",
                fleet_db,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        if pg._as_root
        else subprocess.run(
            [
                f"{PG_BIN}/pg_dump",
                "-h",
                pg.dir,
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "--data-only",
                fleet_db,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert "COPY public.fleet_leases" in dump and hosts[0].name in dump
    for secret in secrets:
        assert secret and secret not in dump


def test_a_miss_is_not_slowed_by_an_unreachable_or_hung_ledger(tmp_path, pg, fleet_db, hosts):
    """Misses with no ledger URL, PostgreSQL stopped and PostgreSQL hung (one host each), interleaved
    so that the noise of a shared machine hits each alike; compared as medians of paired differences."""
    runs = 10
    with HungServer() as hung:
        variants = {
            "none": (hosts[0], None),
            "stopped": (hosts[1], closed_port_url("host_b", pg.password, fleet_db)),
            "hung": (hosts[2], hung.url("host_c", pg.password, fleet_db)),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for host, _url in variants.values():
            cred(host, "--no-cache", "--profile", "deploy", url=None)  # warm up (key, moto role)
        for _ in range(runs):
            for name, (host, url) in variants.items():
                times[name].append(cred(host, "--no-cache", "--profile", "deploy", url=url)[1])
        assert hung.accepted >= 1  # a background sync did try the hung server
    median = {name: statistics.median(values) for name, values in times.items()}
    slower = {
        name: statistics.median(t - n for t, n in zip(times[name], times["none"], strict=True))
        for name in ("stopped", "hung")
    }
    print(
        "credential-process miss medians (s):",
        {k: round(v, 3) for k, v in median.items()},
        "median paired difference (s):",
        {k: round(v, 3) for k, v in slower.items()},
    )
    # The 100 ms figure is the benchmark's (scripts/bench.py fleet-miss: +12/+24 ms); timing bounds
    # that tight do not belong in a test on a noisy machine. What this asserts is the behaviour: no
    # miss waited for PostgreSQL, whose connect timeout alone is 3 s.
    assert slower["stopped"] <= 1.0, (median, slower)
    assert slower["hung"] <= 1.0, (median, slower)
    # Every row issued with a ledger URL waits in the outbox; a later sync delivers all of them.
    for name in ("stopped", "hung"):
        host = variants[name][0]
        assert host.pending() == runs
        result = host.broker("ledger", "sync")
        assert result.returncode == 0, result.stderr
        assert host.pending() == 0
    assert shared_count(pg, fleet_db) == 2 * runs


@both_paths
def test_a_pulled_revocation_makes_the_next_call_issue_anew(tmp_path, pg, fleet_db, hosts, vault):
    a, b = hosts[0], hosts[1]
    first, _ = cred(a, "--profile", "deploy")
    other, _ = cred(b, "--profile", "deploy")
    wait_for(lambda: shared_count(pg, fleet_db) == 2, timeout=15)
    with pg.superuser(fleet_db) as conn:  # a responder's mark (test_fleet_revoke.py goes through Vault)
        conn.execute("SET ROLE resp_1")
        conn.execute(
            "UPDATE fleet_leases SET state = 'revoked', revoked_at = now(), revoked_by = 'oncall@desk' "
            "WHERE host = 'host-a'"
        )
    assert cred(a, "--profile", "deploy")[0] == first  # not pulled yet: still served from the cache
    result = a.broker("ledger", "sync")
    assert result.returncode == 0 and "pulled 1 revocation" in result.stderr, result.stderr
    fresh, _ = cred(a, "--profile", "deploy")
    assert fresh["AccessKeyId"] != first["AccessKeyId"]
    assert cred(b, "--profile", "deploy")[0] == other
    assert a.sql("SELECT state, revoked_by, secret FROM leases WHERE access_key_id = ?", (first["AccessKeyId"],)) == [
        ("revoked", "oncall@desk", None)
    ]


def test_a_cache_hit_never_touches_the_fleet_ledger(tmp_path, pg, fleet_db, hosts):
    """With a ledger URL set, a hit imports neither psycopg nor the fleet modules (PostgreSQL is hung)."""
    host = hosts[0]
    cred(host, "--profile", "deploy")
    with HungServer() as hung:
        env = child_env(host.env(BROKER_LEDGER_URL=hung.url("host_a", pg.password, fleet_db)))
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "broker", "credential-process", "--profile", "deploy"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert not {m for m in imported if m.startswith(("psycopg", "broker.fleet", "sqlalchemy", "click"))}
        assert hung.accepted == 0
