"""`broker whois`: a responder holding an access key id from CloudTrail finds the whole story, in the
local ledger and then the fleet ledger (a real PostgreSQL), with the deny policy for live STS."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json
import os

import pytest

from tests.support.brokerproc import assert_one_line_error, credential, run_broker
from tests.support.pg import Host, fleet_db, pg  # noqa: F401 - pytest fixtures

ENTITY = "0b8f6a52-7c1e-4d3a-9e2f-5a6b7c8d9e0f"


@pytest.fixture
def alice(vault, monkeypatch):
    accessor = vault.add_token("hvs.alice", display_name="oidc-alice", entity_id=ENTITY)
    monkeypatch.setenv("VAULT_TOKEN", "hvs.alice")
    return accessor


def test_whois_of_a_key_moto_issued(vault, aws_env, alice, monkeypatch):
    monkeypatch.setenv("BROKER_HOST", "build-7")
    assert run_broker("profile", "add", "deploy", "--mount", "aws", "--role", "deploy", "--ttl", "1h").returncode == 0
    cred = credential("--profile", "deploy")
    key = cred["AccessKeyId"]
    # the key is real: moto says who it is, as CloudTrail would
    sts = aws_env.client("sts", (key, cred["SecretAccessKey"], cred["SessionToken"]))
    arn = sts.get_caller_identity()["Arn"]
    issued = vault.issued[-1]

    result = run_broker("whois", key, "--format", "json")
    assert result.returncode == 0, result.stderr
    (answer,) = json.loads(result.stdout)
    assert answer["found"] and answer["id"] == key
    (lease,) = answer["leases"]
    assert lease["source"] == "local" and lease["host"] == "build-7" and lease["user"]
    assert lease["profile"] == "deploy" and lease["lease_id"] == issued.lease_id
    assert (lease["display_name"], lease["entity_id"], lease["token_accessor"]) == ("oidc-alice", ENTITY, alice)
    assert lease["principal_arn"] == issued.arn and lease["account_id"] == arn.split(":")[4]
    assert lease["state"] == "active" and lease["revoked_at"] is None
    kinds = {p["scope"] for p in answer["deny_policies"]}
    assert kinds == {"sessions", "issued-before"}
    session = lease["role_session_name"]
    assert any(session in p["command"] and "put-role-policy" in p["command"] for p in answer["deny_policies"])
    assert cred["SecretAccessKey"] not in result.stdout and cred["SessionToken"] not in result.stdout

    # by lease id and by session name too; the table form
    by_lease = run_broker("whois", issued.lease_id, session)
    assert by_lease.returncode == 0, by_lease.stderr
    assert by_lease.stdout.count(key) >= 2 and "oidc-alice" in by_lease.stdout and "put-role-policy" in by_lease.stdout

    # revoked: whois says when and by whom; the STS credential is still live, so the policy stays
    revoked = run_broker("revoke", "--access-key", key, "--yes", "--format", "json")
    assert revoked.returncode == 0, revoked.stderr
    report = json.loads(revoked.stdout)
    assert report["leases"][0]["display_name"] == "oidc-alice" and report["leases"][0]["result"] == "revoked"
    (answer,) = json.loads(run_broker("whois", key, "--format", "json").stdout)
    assert answer["leases"][0]["state"] == "revoked" and answer["leases"][0]["revoked_by"]
    assert answer["deny_policies"]


def test_whois_unknown_says_where_it_looked(vault, aws_env):
    credential("--mount", "aws", "--role", "ci")
    result = run_broker("whois", "AKIAUNKNOWN000000000")
    assert_one_line_error(result, code=3, contains="AKIAUNKNOWN000000000")
    assert "local ledger" in result.stderr and os.environ["BROKER_DB"] in result.stderr
    mixed = run_broker("whois", "AKIAUNKNOWN000000000", vault.issued[-1].access_key)
    assert mixed.returncode == 3 and vault.issued[-1].access_key in mixed.stdout
    assert "not found: AKIAUNKNOWN000000000" in mixed.stderr


def test_whois_across_the_fleet(tmp_path, pg, fleet_db, vault, aws_env, alice):
    host = Host(tmp_path, "web-3", pg.url("host_a", fleet_db), user="deployer")
    issued = host.broker("credential-process", "--mount", "aws", "--role", "ci")
    assert issued.returncode == 0, issued.stderr
    key = json.loads(issued.stdout)["AccessKeyId"]
    assert host.broker("ledger", "sync").returncode == 0
    desk = Host(tmp_path, "desk", pg.url("resp_1", fleet_db), user="oncall")
    result = desk.broker("whois", key, "AKIANOWHERE000000000", "--format", "json")
    assert result.returncode == 3
    found, missing = json.loads(result.stdout)
    (lease,) = found["leases"]
    assert lease["source"] == "fleet" and lease["host"] == "web-3" and lease["user"] == "deployer"
    assert lease["display_name"] == "oidc-alice" and lease["entity_id"] == ENTITY and lease["token_accessor"] == alice
    assert not missing["found"] and any("fleet ledger" in place for place in missing["looked_in"])
    assert "fleet ledger" in result.stderr and "pw" not in result.stderr.replace("pwd", "")


def test_whois_answers_locally_when_the_fleet_ledger_is_down(vault, aws_env, monkeypatch):
    from tests.support.pg import closed_port_url

    key = credential("--mount", "aws", "--role", "ci")["AccessKeyId"]
    monkeypatch.setenv("BROKER_LEDGER_URL", closed_port_url())
    result = run_broker("whois", key, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["leases"][0]["source"] == "local"
    assert "warning" in result.stderr and "pw@" not in result.stderr
    missing = run_broker("whois", "AKIANOWHERE000000000")
    assert_one_line_error(missing, code=3, contains="fleet ledger, which failed")
