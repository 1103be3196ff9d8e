"""Vault settings are read from the environment when a command runs, not when hvac is imported."""

from __future__ import annotations

import hvac  # imported first on purpose: hvac reads its TLS variables at import time
import pytest

from broker import settings
from broker.errors import UsageError
from broker.vault import Vault, VaultSettings, namespace_of_lease


def test_tls_variables_are_read_at_call_time(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used for plain http")
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example.test:8200")
    monkeypatch.setenv("VAULT_CACERT", str(ca))
    monkeypatch.setenv("VAULT_CLIENT_CERT", "/etc/cert.pem")
    monkeypatch.setenv("VAULT_CLIENT_KEY", "/etc/key.pem")
    monkeypatch.setenv("VAULT_TOKEN", "t0ken")
    client = Vault(VaultSettings.from_env(settings.load())).client("team1")
    assert isinstance(client, hvac.Client)
    assert client.adapter.session.verify == str(ca)
    assert client.adapter._kwargs["cert"] == ("/etc/cert.pem", "/etc/key.pem")
    assert client.adapter.namespace == "team1"
    monkeypatch.setenv("VAULT_SKIP_VERIFY", "true")
    assert Vault(VaultSettings.from_env(settings.load())).client().adapter.session.verify is False


def test_capath_and_agent_address(monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", "https://server:8200")
    monkeypatch.setenv("VAULT_AGENT_ADDR", "http://127.0.0.1:8100")
    monkeypatch.setenv("VAULT_CAPATH", "/etc/ssl/certs")
    vault_settings = VaultSettings.from_env(settings.load())
    assert vault_settings.addr == "http://127.0.0.1:8100" and vault_settings.verify == "/etc/ssl/certs"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAULT_ADDR": "vault:8200"}, "not a URL"),
        ({"VAULT_ADDR": "unix:///run/vault.sock"}, "not a URL"),
        ({"VAULT_CLIENT_CERT": "/c.pem"}, "set together"),
        ({"BROKER_VAULT_TIMEOUT": "soon"}, "not a number"),
        ({"BROKER_VAULT_TIMEOUT": "-1"}, "between"),
    ],
)
def test_bad_settings(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=message):
        VaultSettings.from_env(settings.load())


@pytest.mark.parametrize(
    ("header", "path", "lease", "expected"),
    [
        ("", "aws/creds/ci", "aws/creds/ci/abc", ""),
        ("team1", "aws/sts/deploy", "aws/sts/deploy/abc.x1", "team1"),
        ("", "ns1/aws/dev/sts/deploy", "aws/dev/sts/deploy/abc.x1", "ns1"),
        ("ns1", "ns2/aws/creds/r", "aws/creds/r/abc.y", "ns1/ns2"),
        ("", "aws/creds/r", "", ""),
    ],
)
def test_namespace_of_a_lease(header, path, lease, expected):
    assert namespace_of_lease(header, path, lease) == expected


@pytest.mark.parametrize(
    ("hint", "data", "token", "expected"),
    [
        ("iam_user", {"arn": "arn:aws:sts::1:assumed-role/r/s", "ttl": 900}, "tok", "assumed_role"),
        ("iam_user", {"ttl": 900}, "tok", "federation_token"),
        ("assumed_role", {}, None, "iam_user"),
        ("session_token", {"ttl": 900}, "tok", "session_token"),
        ("federation_token", {}, "tok", "federation_token"),
        (None, {}, "tok", "session_token"),
        (None, {}, None, "iam_user"),
    ],
)
def test_the_recorded_type_follows_vaults_answer(hint, data, token, expected):
    from broker.vault import recorded_type

    assert recorded_type(hint, data, token) == expected
