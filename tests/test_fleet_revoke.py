"""`broker leases --fleet` and `broker revoke --fleet` against a real PostgreSQL, the Vault double and
moto: every host's leases listed and revoked from one responder's machine, and two responders at once."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import collections
import csv
import io
import json
import subprocess
import sys
import time

import pytest
import requests

from tests.support.pg import (  # noqa: F401 - pytest fixtures
    Host,
    both_paths,
    child_env,
    fleet_db,
    fleet_url,
    pg,
)
from tests.support.pgbouncer import pgbouncer  # noqa: F401 - pytest fixture (the PgBouncer path)

RESPONDER_ENV = {"USER": "oncall", "LOGNAME": "oncall"}


def issue(vault, count: int, role: str = "deploy") -> list:
    """`count` leases the Vault double really holds (straight through its API: quicker than broker)."""
    before = len(vault.issued)
    with requests.Session() as http:
        http.trust_env = False
        for _ in range(count):
            reply = http.post(
                f"{vault.url}/v1/aws/sts/{role}",
                json={"ttl": "1h"},
                headers={"X-Vault-Token": vault.root_token},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
    return vault.issued[before:]


@pytest.fixture
def fleet(tmp_path, fleet_url, fleet_db, vault, aws_env):
    """Three hosts with pushed leases, and two responders."""
    hosts = [Host(tmp_path, f"host-{x}", fleet_url(f"host_{x}", fleet_db), user=f"user{x}") for x in "abc"]
    for host in hosts:
        host.add_leases(0, issued=issue(vault, 3))
        host.add_leases(0, role="ci", credential_type="iam_user", issued=issue(vault, 1, "ci"))
        result = host.broker("ledger", "sync")
        assert result.returncode == 0, result.stderr
    responders = [Host(tmp_path, f"desk-{n}", fleet_url(f"resp_{n}", fleet_db), user="oncall") for n in (1, 2)]
    return hosts, responders


def shared(pg, db, where="true"):
    return pg.query(db, f"SELECT lease_id, host, state, revoked_by, revoke_error FROM fleet_leases WHERE {where}")


@both_paths
def test_fleet_listing_then_revoke_across_three_hosts(pg, fleet_db, fleet, vault):
    hosts, (desk, _) = fleet
    # `leases --fleet`: formats, filters, a host's own view.
    result = desk.broker("leases", "--fleet", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 12 and list(rows[0]) == [
        "lease_id",
        "host",
        "user",
        "profile",
        "mount",
        "role",
        "namespace",
        "credential_type",
        "access_key_id",
        "role_session_name",
        "vault_addr",
        "issued_at",
        "expires_at",
        "state",
        "revoked_at",
        "revoked_by",
        "revoke_error",
        "end_reason",
        "display_name",
        "entity_id",
        "token_accessor",
        "token_policies",
        "account_id",
        "principal_arn",
        "db_user",
    ]
    by_host = desk.broker("leases", "--fleet", "--host", "host-b", "--role", "deploy", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(by_host.stdout)))
    assert len(parsed) == 3 and {r["host"] for r in parsed} == {"host-b"} and parsed[0]["issued_at"].endswith("Z")
    assert len(json.loads(desk.broker("leases", "--fleet", "--user", "userc", "--format", "json").stdout)) == 4
    table = desk.broker("leases", "--fleet", "--state", "active", "--role", "ci")
    assert table.returncode == 0 and table.stdout.count("host-") == 3 and "HOST" in table.stdout
    empty = desk.broker("leases", "--fleet", "--host", "nowhere")
    assert empty.returncode == 0 and empty.stdout == "" and "fleet ledger match" in empty.stderr
    # A host's own login sees its own rows only.
    assert {r["host"] for r in json.loads(hosts[0].broker("leases", "--fleet", "--format", "json").stdout)} == {
        "host-a"
    }
    bad = desk.broker("leases", "--host", "host-a")
    assert bad.returncode == 2 and "--fleet" in bad.stderr

    # `revoke --fleet --role deploy`: every host's deploy leases, once each.
    deploy = {row[0] for row in shared(pg, fleet_db, "role = 'deploy'")}
    dry = desk.broker("revoke", "--fleet", "--role", "deploy", "--dry-run", "--format", "json", **RESPONDER_ENV)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["summary"]["would_revoke"] == 9 and not vault.revoke_calls
    table = desk.broker("revoke", "--fleet", "--role", "deploy", "--dry-run", **RESPONDER_ENV)
    assert table.returncode == 0 and "would revoke" in table.stdout and "WARNING: Vault cannot" in table.stdout
    refused = desk.broker("revoke", "--fleet", "--role", "deploy", **RESPONDER_ENV)
    assert refused.returncode == 2 and "--yes" in refused.stderr and not vault.revoke_calls

    result = desk.broker("revoke", "--fleet", "--role", "deploy", "--yes", "--format", "json", **RESPONDER_ENV)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["revoked"] == 9 and report["selector"]["fleet"] is True
    assert {lease["host"] for lease in report["leases"]} == {"host-a", "host-b", "host-c"}
    assert collections.Counter(vault.revoke_calls) == {lease_id: 1 for lease_id in deploy}
    assert {lease_id: vault.revocations[lease_id] for lease_id in deploy} == dict.fromkeys(deploy, 1)
    assert {(r[2], r[3]) for r in shared(pg, fleet_db, "role = 'deploy'")} == {("revoked", "oncall@desk-1")}
    assert {r[2] for r in shared(pg, fleet_db, "role = 'ci'")} == {"active"}
    # STS honesty: the deny policy names the session of every host's revoked assumed_role lease.
    sts = report["sts"]
    assert sts["count"] == 9 and "Vault cannot invalidate STS credentials" in sts["warning"]
    names = {lease["role_session_name"] for lease in report["leases"]}
    policy = next(p for p in sts["deny_policies"] if p["scope"] == "sessions")
    listed = policy["policy"]["Statement"][0]["Condition"]["StringLike"]["aws:userid"]
    assert {n.split(":", 1)[1] for n in listed} == names and len(names) == 9
    # A rerun finds nothing left; each host's next sync marks its own rows and wipes their secrets.
    again = desk.broker("revoke", "--fleet", "--role", "deploy", "--yes", **RESPONDER_ENV)
    assert again.returncode == 0 and "nothing to revoke" in again.stdout
    assert len(vault.revoke_calls) == 9
    for host in hosts:
        assert host.broker("ledger", "sync").returncode == 0
        assert (
            host.sql("SELECT state, revoked_by, secret FROM leases WHERE role = 'deploy'")
            == [("revoked", "oncall@desk-1", None)] * 3
        )
        assert host.sql("SELECT state FROM leases WHERE role = 'ci'") == [("active",)]


def test_fleet_revoke_by_host_user_and_lease_id(pg, fleet_db, fleet, vault):
    hosts, (desk, _) = fleet
    by_host = desk.broker("revoke", "--fleet", "--host", "host-b", "--yes", "--format", "json", **RESPONDER_ENV)
    assert json.loads(by_host.stdout)["summary"]["revoked"] == 4
    assert {r[1] for r in shared(pg, fleet_db, "state = 'revoked'")} == {"host-b"}
    by_user = desk.broker("revoke", "--fleet", "--user", "userc", "--yes", "--format", "json", **RESPONDER_ENV)
    assert json.loads(by_user.stdout)["summary"]["revoked"] == 4
    (one,) = [r[0] for r in shared(pg, fleet_db, "host = 'host-a' AND role = 'ci'")]
    revoked_b = shared(pg, fleet_db, "host = 'host-b'")[0][0]
    ids = desk.broker(
        "revoke",
        "--fleet",
        "--lease-id",
        one,
        "--lease-id",
        revoked_b,
        "--lease-id",
        "aws/creds/x/nope",
        "--yes",
        "--format",
        "json",
        **RESPONDER_ENV,
    )
    summary = json.loads(ids.stdout)["summary"]
    assert (summary["revoked"], summary["already_revoked"], summary["not_in_ledger"]) == (1, 1, 1)
    assert collections.Counter(vault.revoke_calls).most_common(1)[0][1] == 1
    usage = desk.broker("revoke", "--fleet", "--host", "h", "--user", "u", "--yes")
    assert usage.returncode == 2 and "say which fleet leases" in usage.stderr
    assert desk.broker("revoke", "--fleet", "--profile", "p", "--yes").returncode == 2
    assert desk.broker("revoke", "--host", "h", "--yes").returncode == 2


def test_partial_failure_keeps_rows_active_and_a_rerun_finishes(pg, fleet_db, fleet, vault):
    hosts, (desk, _) = fleet
    vault.add_token("no-revoke", policies={"creds", "lookup", "renew"})
    failed = desk.broker(
        "revoke",
        "--fleet",
        "--role",
        "ci",
        "--yes",
        "--format",
        "json",
        VAULT_TOKEN="no-revoke",
        **RESPONDER_ENV,
    )
    assert failed.returncode == 8, failed.stderr
    assert json.loads(failed.stdout)["summary"]["failed"] == 3
    rows = shared(pg, fleet_db, "role = 'ci'")
    assert {r[2] for r in rows} == {"active"} and all("denied" in r[4] for r in rows)
    done = desk.broker("revoke", "--fleet", "--role", "ci", "--yes", "--format", "json", **RESPONDER_ENV)
    assert done.returncode == 0 and json.loads(done.stdout)["summary"]["revoked"] == 3
    assert {(r[2], r[4]) for r in shared(pg, fleet_db, "role = 'ci'")} == {("revoked", None)}


@both_paths
def test_two_responders_at_once_revoke_each_lease_once(tmp_path, pg, fleet_url, fleet_db, vault, aws_env):
    hosts = [Host(tmp_path, f"node-{i}", fleet_url(f"host_{'abc'[i % 3]}", fleet_db), user=f"u{i}") for i in range(3)]
    leases = []
    for host in hosts:
        issued = issue(vault, 20)
        leases += [x.lease_id for x in issued]
        host.add_leases(0, issued=issued)
        assert host.broker("ledger", "sync").returncode == 0
    vault.latency = 0.02  # Vault answers in 20 ms: the two runs overlap
    responders = [Host(tmp_path, f"desk-{n}", fleet_url(f"resp_{n}", fleet_db), user="oncall") for n in (1, 2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "revoke",
                "--fleet",
                "--role",
                "deploy",
                "--yes",
                "--format",
                "json",
            ],
            env=child_env(desk.env(BROKER_REVOKE_CONCURRENCY="2", **RESPONDER_ENV)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for desk in responders
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    calls = collections.Counter(call for call in vault.revoke_calls)
    print(
        f"two responders: {len(vault.revoke_calls)} revoke calls for {len(leases)} leases, "
        f"revoked {[r['summary']['revoked'] for r in reports]}, "
        f"already revoked {[r['summary']['already_revoked'] for r in reports]}"
    )
    assert calls == dict.fromkeys(leases, 1)
    assert sum(vault.revocations[x] for x in leases) == len(leases)
    assert sum(r["summary"]["revoked"] for r in reports) == len(leases)
    assert {r[2] for r in shared(pg, fleet_db)} == {"revoked"}
    by = collections.Counter(r[3] for r in shared(pg, fleet_db))
    assert set(by) <= {"oncall@desk-1", "oncall@desk-2"} and sum(by.values()) == len(leases)
    for report in reports:  # each report accounts for every lease: its own, or the other's
        assert report["summary"]["revoked"] + report["summary"]["already_revoked"] == len(leases)


def test_a_fleet_revoke_stops_the_next_credential_process_serving(tmp_path, pg, fleet_db, vault, aws_env):
    host = Host(tmp_path, "laptop", pg.url("host_a", fleet_db), user="alice")
    assert host.broker("profile", "add", "deploy", "--mount", "aws", "--role", "deploy").returncode == 0
    first = json.loads(host.broker("credential-process", "--profile", "deploy").stdout)
    deadline = time.monotonic() + 15
    while host.pending() and time.monotonic() < deadline:  # the background push after the miss
        time.sleep(0.05)
    assert host.pending() == 0
    desk = Host(tmp_path, "desk-1", pg.url("resp_1", fleet_db), user="oncall")
    result = desk.broker("revoke", "--fleet", "--host", "laptop", "--yes", "--format", "json", **RESPONDER_ENV)
    assert json.loads(result.stdout)["summary"]["revoked"] == 1
    assert host.broker("ledger", "sync").returncode == 0
    second = json.loads(host.broker("credential-process", "--profile", "deploy").stdout)
    assert second["AccessKeyId"] != first["AccessKeyId"]


def test_prune_drains_the_outbox_and_pulls_revocations(tmp_path, pg, fleet_db):
    from tests.support.pg import closed_port_url

    host = Host(tmp_path, "runner", pg.url("host_a", fleet_db), user="ci")
    (_, old), *_ = host.add_leases(2, ttl=-120)  # expired, never pushed: prune must keep them until pushed
    ((_, live),) = host.add_leases(1)
    down = host.broker("prune", url=closed_port_url("host_a", pg.password, fleet_db))
    assert down.returncode == 0, down.stderr
    assert "kept 2 not yet pushed" in down.stdout + down.stderr and "fleet ledger sync skipped" in down.stderr
    assert pg.password not in down.stderr
    result = host.broker("prune")
    assert result.returncode == 0, result.stderr
    assert "removed 2 ledger rows" in result.stdout and host.pending() == 0
    assert {r[0] for r in pg.query(fleet_db, "SELECT lease_id FROM fleet_leases")} >= {old, live}
    with pg.superuser(fleet_db) as conn:
        conn.execute("SET ROLE resp_1")
        conn.execute(
            "UPDATE fleet_leases SET state = 'revoked', revoked_at = now(), revoked_by = 'x@y' WHERE lease_id = %s",
            (live,),
        )
    assert host.broker("prune", "--quiet").returncode == 0
    assert host.sql("SELECT lease_id, state, secret FROM leases") == [(live, "revoked", None)]


def test_the_wait_phase_excludes_ten_thousand_attempted_leases(pg, fleet_db):
    """A responder's second phase leaves out every lease it already tried: 10,000 pairs as array
    parameters (a literal NOT IN list that long overflows PostgreSQL's parser stack)."""
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.pool import NullPool

    from broker.fleet.listing import FLEET
    from broker.fleet.revoke import _not_attempted

    pg.query(
        fleet_db,
        "INSERT INTO fleet_leases (lease_id, access_key_id, vault_addr, mount, role, credential_type, issued_at, "
        "expires_at, host, os_user) VALUES ('aws/sts/deploy/kept', 'ASIAKEPT', 'v', 'aws', 'deploy', "
        "'assumed_role', now(), now() + interval '1 hour', 'h', 'u')",
    )
    attempted = {(f"aws/sts/deploy/{i}", f"ASIA{i:016d}") for i in range(10_000)}
    engine = create_engine(pg.url("broker_owner", fleet_db), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            query = select(FLEET.c.lease_id).where(_not_attempted(FLEET, attempted))
            assert conn.execute(query).scalars().all() == ["aws/sts/deploy/kept"]
            attempted.add(("aws/sts/deploy/kept", "ASIAKEPT"))
            assert (
                conn.execute(select(func.count()).select_from(FLEET).where(_not_attempted(FLEET, attempted))).scalar()
                == 0
            )
    finally:
        engine.dispose()
