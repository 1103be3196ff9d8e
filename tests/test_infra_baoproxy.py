"""tests/support/baoproxy.py: a real OpenBao Proxy (auto-auth token_file, api_proxy) in front of the double."""

from __future__ import annotations

import pytest
import requests

from tests.support.baoproxy import bao_proxy, make_bao_proxy  # noqa: F401 - fixtures
from tests.support.helpers import wait_for

pytestmark = pytest.mark.timeout(90)


def test_tokenless_request_goes_out_with_the_auto_auth_token(vault, make_bao_proxy):  # noqa: F811
    vault.add_token("proxy-token", display_name="proxy")
    proxy = make_bao_proxy(token="proxy-token")
    before = len(vault.seen)
    resp = requests.get(f"{proxy.url}/v1/aws/creds/deploy", timeout=10)  # no token of its own
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["data"]["access_key"] and body["lease_id"].startswith("aws/creds/deploy/")
    forwarded = [seen for seen in vault.seen[before:] if seen.path == "/v1/aws/creds/deploy"]
    assert len(forwarded) == 1 and forwarded[0].token == "proxy-token"
    assert all(seen.token == "proxy-token" for seen in vault.seen if seen.path != "/v1/sys/health")
    assert ("GET", "/v1/auth/token/lookup-self") in vault.requests  # what token_file auto-auth asked

    own = requests.get(f"{proxy.url}/v1/aws/creds/deploy", headers={"X-Vault-Token": "root-token"}, timeout=10)
    assert own.status_code == 200 and vault.seen[-1].token == "root-token"  # a caller's token is kept


def test_require_request_header(vault, make_bao_proxy):  # noqa: F811
    proxy = make_bao_proxy(require_request_header=True)
    before = len(vault.requests)
    refused = requests.get(f"{proxy.url}/v1/aws/creds/deploy", timeout=10)
    assert refused.status_code == 412
    assert refused.json() == {"errors": ['missing "X-Vault-Request" header']}
    assert len(vault.requests) == before  # answered by the proxy, never forwarded

    ok = requests.get(f"{proxy.url}/v1/aws/creds/deploy", headers={"X-Vault-Request": "true"}, timeout=10)
    assert ok.status_code == 200, ok.text
    assert vault.seen[-1].token == "root-token" and vault.seen[-1].header("X-Vault-Request") == "true"


def test_the_proxy_renews_a_token_with_a_ttl(vault, make_bao_proxy):  # noqa: F811
    vault.add_token("short-lived", ttl=8)
    proxy = make_bao_proxy(token="short-lived")
    wait_for(
        lambda: (
            ("POST", "/v1/auth/token/renew-self") in vault.requests
            or ("PUT", "/v1/auth/token/renew-self") in vault.requests
        ),
        timeout=20,
        interval=0.2,
    )
    assert requests.get(f"{proxy.url}/v1/aws/creds/deploy", timeout=10).status_code == 200
