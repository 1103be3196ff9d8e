"""The responder's selectors on `leases` and `revoke`, local and --fleet (a real PostgreSQL):
--access-key, --access-keys-from, --issued-after/--issued-before, --namespace, --session-name,
--entity, --accessor, --display-name, --account; combined with AND; unknown keys said, not ignored."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json
import sqlite3

import pytest

from broker.errors import UsageError
from broker.selection import Selection, parse_time
from tests.support.brokerproc import credential, run_broker
from tests.support.pg import Host, fleet_db, pg  # noqa: F401 - pytest fixtures

ENTITY = "3c2b1a09-8f7e-4d6c-b5a4-112233445566"
NOW = 1_800_000_000


def test_parse_time_iso_and_ago():
    assert parse_time("2h", NOW) == NOW - 7200
    assert parse_time("30m", NOW) == NOW - 1800
    assert parse_time("2027-01-15T08:00:00Z", NOW) == 1_800_000_000
    assert parse_time("2027-01-15T09:00:00+01:00", NOW) == parse_time("2027-01-15T08:00:00Z", NOW)
    assert parse_time("2027-01-15", NOW) == 1799971200
    with pytest.raises(UsageError, match="ISO-8601"):
        parse_time("yesterday", NOW)


def test_for_revoke_counts_the_new_selectors_and_keeps_the_old_messages():
    assert Selection(access_keys=("AKIA0000000000000001",)).for_revoke().access_keys
    assert Selection(role="deploy", issued_after=NOW).for_revoke().role == "deploy"  # AND
    with pytest.raises(UsageError, match="say which leases"):
        Selection().for_revoke()
    with pytest.raises(UsageError, match="say which leases"):
        Selection(role="r", profile="p").for_revoke()
    with pytest.raises(UsageError, match="do not combine"):
        Selection(all=True, entity_id=ENTITY).for_revoke()
    with pytest.raises(UsageError, match="--prefix"):
        Selection(role="r", mount="aws", prefix=True, account="123456789012").for_revoke()
    assert Selection(display_name="x").for_fleet_revoke().display_name == "x"
    with pytest.raises(UsageError, match="earlier"):
        Selection(issued_after=NOW, issued_before=NOW - 1)


def _rows(db: str) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM leases ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def two_identities(vault, aws_env, monkeypatch):
    """A ci (iam_user) key issued with alice's token, a deploy (assumed_role) key with bob's."""
    import os

    vault.add_token("hvs.alice", display_name="oidc-alice", entity_id=ENTITY)
    vault.add_token("hvs.bob", display_name="oidc-bob")
    ci = credential("--mount", "aws", "--role", "ci", env={"VAULT_TOKEN": "hvs.alice"})["AccessKeyId"]
    deploy = credential("--mount", "aws", "--role", "deploy", "--ttl", "1h", env={"VAULT_TOKEN": "hvs.bob"})
    return ci, deploy["AccessKeyId"], os.environ["BROKER_DB"]


def _keys(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return sorted(row["access_key_id"] for row in json.loads(result.stdout))


def test_local_leases_selectors(two_identities, tmp_path):
    ci, deploy, db = two_identities
    ls = lambda *a, **kw: run_broker("leases", "--format", "json", *a, **kw)  # noqa: E731
    assert _keys(ls("--access-key", ci)) == [ci]
    assert _keys(ls("--entity", ENTITY)) == [ci]
    assert _keys(ls("--display-name", "oidc-bob")) == [deploy]
    session = next(r["role_session_name"] for r in _rows(db) if r["access_key_id"] == deploy)
    assert _keys(ls("--session-name", session)) == [deploy]
    account = next(r["account_id"] for r in _rows(db) if r["access_key_id"] == deploy)
    assert _keys(ls("--account", account)) == [deploy]
    accessor = next(r["token_accessor"] for r in _rows(db) if r["access_key_id"] == ci)
    assert _keys(ls("--accessor", accessor)) == [ci]
    assert _keys(ls("--issued-after", "10m")) == sorted([ci, deploy])
    assert _keys(ls("--issued-before", "10m")) == []
    assert _keys(ls("--namespace", "")) == sorted([ci, deploy])
    assert _keys(ls("--namespace", "team1")) == []
    # AND: the ci key is not a deploy lease
    assert _keys(ls("--access-key", ci, "--role", "deploy")) == []
    # unknown ids are said on stderr
    result = ls("--access-key", ci, "--access-key", "AKIANOSUCHKEY0000000")
    assert _keys(result) == [ci] and "AKIANOSUCHKEY0000000" in result.stderr
    # from a file and from stdin
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# from CloudTrail\n{ci}\n\n{deploy}\n")
    assert _keys(ls("--access-keys-from", str(keys))) == sorted([ci, deploy])
    assert _keys(ls("--access-keys-from", "-", input=deploy + "\n")) == [deploy]
    bad = ls("--issued-after", "last tuesday")
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr and "Traceback" not in bad.stderr
    keys.write_text("not a key\n")
    bad = ls("--access-keys-from", str(keys))
    assert bad.returncode == 2 and "line 1" in bad.stderr
    # the table and csv carry the identity (csv: every public column)
    csv_out = run_broker("leases", "--format", "csv", "--entity", ENTITY)
    assert "oidc-alice" in csv_out.stdout and "token_accessor" in csv_out.stdout.splitlines()[0]
    table = run_broker("leases", "--wide", "--display-name", "oidc-bob")
    assert "ASKED BY" in table.stdout and "oidc-bob" in table.stdout and account in table.stdout


def test_local_revoke_by_access_key_reports_unknown_and_sends_nothing_for_it(two_identities, vault):
    ci, deploy, db = two_identities
    before = [p for _m, p in vault.requests if "revoke" in p]
    result = run_broker(
        "revoke", "--access-key", ci, "--access-key", "AKIANOSUCHKEY0000000", "--yes", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    outcomes = {r["access_key_id"]: r["result"] for r in report["leases"]}
    assert outcomes == {ci: "revoked", "AKIANOSUCHKEY0000000": "unknown"}
    assert report["summary"]["unknown"] == 1 and report["selector"]["access_keys"]
    assert len([p for _m, p in vault.requests if "revoke" in p]) == len(before) + 1  # only ci's lease
    states = {r["access_key_id"]: r["state"] for r in _rows(db)}
    assert states == {ci: "revoked", deploy: "active"}
    # again: already revoked, not unknown
    again = json.loads(run_broker("revoke", "--access-key", ci, "--yes", "--format", "json").stdout)
    assert again["leases"][0]["result"] == "already_revoked"
    # a window AND a role: the deploy lease
    window = run_broker("revoke", "--issued-after", "1h", "--role", "deploy", "--dry-run", "--format", "json")
    assert [r["access_key_id"] for r in json.loads(window.stdout)["leases"]] == [deploy]


def test_fleet_selectors_list_and_revoke(tmp_path, pg, fleet_db, vault, aws_env):
    vault.add_token("hvs.alice", display_name="oidc-alice", entity_id=ENTITY)
    hosts = [Host(tmp_path, f"host-{x}", pg.url(f"host_{x}", fleet_db), user=f"user{x}") for x in "ab"]
    keys = {}
    for host in hosts:
        out = host.broker("credential-process", "--mount", "aws", "--role", "ci", VAULT_TOKEN="hvs.alice")
        assert out.returncode == 0, out.stderr
        keys[host.name] = json.loads(out.stdout)["AccessKeyId"]
        other = host.broker("credential-process", "--mount", "aws", "--role", "deploy", "--ttl", "1h")
        assert other.returncode == 0, other.stderr
        assert host.broker("ledger", "sync").returncode == 0
    desk = Host(tmp_path, "desk", pg.url("resp_1", fleet_db), user="oncall")
    listed = desk.broker("leases", "--fleet", "--format", "json", "--entity", ENTITY)
    assert _keys(listed) == sorted(keys.values())
    assert json.loads(listed.stdout)[0]["display_name"] == "oidc-alice"
    both = desk.broker("leases", "--fleet", "--format", "json", "--issued-after", "1h", "--role", "ci")
    assert _keys(both) == sorted(keys.values())
    one = desk.broker(
        "leases", "--fleet", "--format", "json", "--access-key", keys["host-a"], "--access-key", "AKIANOSUCHKEY0000000"
    )
    assert _keys(one) == [keys["host-a"]] and "AKIANOSUCHKEY0000000" in one.stderr
    table = desk.broker("leases", "--fleet", "--wide", "--display-name", "oidc-alice")
    assert table.returncode == 0 and keys["host-b"] in table.stdout and "oidc-alice" in table.stdout

    listing = tmp_path / "keys.txt"
    listing.write_text(f"{keys['host-b']}\nAKIANOSUCHKEY0000000\n")
    result = desk.broker("revoke", "--fleet", "--access-keys-from", str(listing), "--yes", "--format", "json")
    assert result.returncode == 0, result.stderr
    outcomes = {r["access_key_id"]: r["result"] for r in json.loads(result.stdout)["leases"]}
    assert outcomes == {keys["host-b"]: "revoked", "AKIANOSUCHKEY0000000": "unknown"}
    state = pg.query(fleet_db, "SELECT access_key_id, state FROM fleet_leases WHERE role = 'ci'")
    assert dict(state) == {keys["host-a"]: "active", keys["host-b"]: "revoked"}
