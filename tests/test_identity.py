"""Who asked: every lease records the Vault identity of the issuing token (auth/token/lookup-self,
once per token, cached without the token), the AWS account and principal; AccountId reaches SDKs."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from broker import cache, identity
from broker.vault import account_of_arn
from tests.support.brokerproc import credential, run_broker


def rows(db_path: str, query: str = "SELECT * FROM leases ORDER BY id") -> list[dict]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(query)]
    finally:
        conn.close()


def lookups(vault) -> int:
    return sum(1 for _method, path in vault.requests if path.endswith("auth/token/lookup-self"))


@pytest.fixture
def responder_token(vault, monkeypatch):
    token = "hvs.alice-token-for-tests"
    accessor = vault.add_token(token, display_name="oidc-alice", entity_id="7d2e3f2a-1b2c-4d5e-8f90-123456789abc")
    monkeypatch.setenv("VAULT_TOKEN", token)
    return token, accessor


def test_assumed_role_lease_records_identity_account_and_arn(vault, aws_env, responder_token, tmp_path):
    import os

    token, accessor = responder_token
    assert run_broker("profile", "add", "deploy", "--mount", "aws", "--role", "deploy", "--ttl", "1h").returncode == 0
    first = credential("--profile", "deploy")
    issued = vault.issued[-1]
    account = issued.arn.split(":")[4]
    assert first["AccountId"] == account and len(account) == 12
    db = os.environ["BROKER_DB"]
    row = rows(db)[0]
    assert row["display_name"] == "oidc-alice"
    assert row["entity_id"] == "7d2e3f2a-1b2c-4d5e-8f90-123456789abc"
    assert row["token_accessor"] == accessor
    assert row["token_policies"] == "creds,lookup,renew,revoke"
    assert row["account_id"] == account and row["principal_arn"] == issued.arn
    # a cache hit (fast path) makes no Vault call and still says AccountId
    before = len(vault.requests)
    assert credential("--profile", "deploy") == first
    assert len(vault.requests) == before
    # a second issuance with the same token: no second lookup-self
    credential("--no-cache", "--profile", "deploy")
    assert lookups(vault) == 1
    cached = rows(db, "SELECT * FROM token_identities")
    assert len(cached) == 1
    assert cached[0]["token_hash"] == hashlib.sha256(f"{vault.url}\n{token}".encode()).hexdigest()
    assert token not in repr(cached) and cached[0]["accessor"] == accessor


def test_a_token_without_lookup_self_still_issues(vault, aws_env, monkeypatch):
    import os

    vault.add_token("hvs.no-lookup", policies=["creds"])
    monkeypatch.setenv("VAULT_TOKEN", "hvs.no-lookup")
    result = run_broker("credential-process", "--mount", "aws", "--role", "ci")
    assert result.returncode == 0, result.stderr
    row = rows(os.environ["BROKER_DB"])[0]
    assert row["access_key_id"] and row["display_name"] is None and row["token_accessor"] is None
    assert row["account_id"] is None and "AccountId" not in result.stdout
    # the 403 is remembered: the next issuance does not ask again
    assert run_broker("credential-process", "--no-cache", "--mount", "aws", "--role", "ci").returncode == 0
    assert lookups(vault) == 1


def test_profile_account_id_for_iam_user_and_export_json(vault, aws_env):
    import json

    assert (
        run_broker("profile", "add", "ci", "--mount", "aws", "--role", "ci", "--account-id", "210987654321").returncode
        == 0
    )
    first = credential("--profile", "ci")
    assert first["AccountId"] == "210987654321"
    exported = run_broker("export", "ci", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["AccountId"] == "210987654321"
    bad = run_broker("profile", "add", "x", "--mount", "aws", "--role", "ci", "--account-id", "12345")
    assert bad.returncode != 0 and "12 digits" in bad.stderr and "Traceback" not in bad.stderr


def test_iam_user_without_account_has_no_account_id(vault, aws_env):
    assert "AccountId" not in credential("--mount", "aws", "--role", "ci")


def test_account_of_arn_and_lookup_parsing():
    assert account_of_arn("arn:aws:sts::123456789012:assumed-role/deploy/broker-x") == "123456789012"
    assert account_of_arn("arn:aws:sts::12345:assumed-role/deploy/x") is None
    assert account_of_arn("arn:aws:sts::123456789012:assumed-role/d\n/x") is None
    assert account_of_arn(None) is None
    parsed = identity.parse_lookup(
        {"display_name": "bad\x1bname", "entity_id": "e1", "accessor": "a b", "policies": ["b", "a", 3, "x,y"]}
    )
    assert parsed == identity.Identity(display_name=None, entity_id="e1", accessor=None, policies="a,b")
    assert '"AccountId": "123456789012"' in cache.render_process_json("AKIA1", "s", None, 0, "123456789012")
    assert "AccountId" not in cache.render_process_json("AKIA1", "s", None, 0, "12")
