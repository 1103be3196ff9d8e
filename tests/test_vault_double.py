"""The Vault double, checked with the real hvac client and boto3 against moto."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions as hx
import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import MotoServer
from tests.support.helpers import wait_for
from tests.support.vault_double import VaultDouble, format_go_duration, parse_duration

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
ENVELOPE_KEYS = {
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
}
LOOKUP_KEYS = {"id", "issue_time", "expire_time", "last_renewal", "renewable", "ttl"}


def client(vault: VaultDouble, token: str | None = "root-token", namespace: str | None = None) -> hvac.Client:
    return hvac.Client(url=vault.url, token=token, namespace=namespace, timeout=10)


def creds_of(resp: dict[str, Any]) -> tuple[str, ...]:
    data = resp["data"]
    token = data.get("session_token") or data.get("security_token")
    return (data["access_key"], data["secret_key"]) + ((token,) if token else ())


def caller_arn(moto_server: MotoServer, creds: tuple[str, ...]) -> str:
    return str(moto_server.client("sts", creds).get_caller_identity()["Arn"])


def assert_rejected_by_moto(moto_server: MotoServer, creds: tuple[str, ...]) -> None:
    with pytest.raises(ClientError) as info:
        moto_server.client("sts", creds).get_caller_identity()
    assert info.value.response["Error"]["Code"] == "InvalidClientTokenId"


def parse_rfc3339(text: str) -> float:
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    assert match, text
    offset = "+00:00" if match[3] == "Z" else match[3]
    return dt.datetime.fromisoformat(match[1] + offset).timestamp() + float("0." + (match[2] or "0"))


# --------------------------------------------------------------------------- issuing


@pytest.mark.parametrize("endpoint", ["creds", "sts"])
@pytest.mark.parametrize(
    ("role", "ctype"),
    [("ci", "iam_user"), ("deploy", "assumed_role"), ("fed", "federation_token"), ("sess", "session_token")],
)
def test_generate_credentials_envelope(vault: VaultDouble, role: str, ctype: str, endpoint: str) -> None:
    resp = client(vault).secrets.aws.generate_credentials(role, endpoint=endpoint)

    assert set(resp) == ENVELOPE_KEYS
    assert resp["wrap_info"] is None and resp["warnings"] is None and resp["auth"] is None
    assert re.fullmatch(rf"aws/{endpoint}/{role}/[A-Za-z0-9]{{24}}", resp["lease_id"])
    data = resp["data"]
    if ctype == "iam_user":
        assert resp["renewable"] is True
        assert resp["lease_duration"] == 3600
        assert set(data) == {"access_key", "secret_key", "security_token"}
        assert data["security_token"] is None
        assert data["access_key"].startswith("AKIA")
    else:
        assert resp["renewable"] is False
        assert resp["lease_duration"] == 3599
        expected = {"access_key", "secret_key", "security_token"}
        expected |= {"assumed_role": {"arn", "ttl"}, "federation_token": {"ttl"}, "session_token": set()}[ctype]
        assert set(data) == expected
        assert data.get("ttl", 3599) == 3599
        assert data["security_token"]
    method = "GET" if endpoint == "creds" else "POST"
    assert vault.requests[-1] == (method, f"/v1/aws/{endpoint}/{role}")
    issued = vault.issued[-1]
    assert (issued.lease_id, issued.credential_type, issued.mount, issued.role) == (
        resp["lease_id"],
        ctype,
        "aws",
        role,
    )
    assert (issued.access_key, issued.secret_key) == (data["access_key"], data["secret_key"])
    assert issued.session_token == data["security_token"]
    assert issued.path == f"aws/{endpoint}/{role}" and issued.namespace == ""
    assert resp["lease_id"] in vault.live_leases()


def test_iam_user_key_works_until_revoked(vault: VaultDouble, moto_server: MotoServer) -> None:
    hv = client(vault)
    resp = hv.secrets.aws.generate_credentials("ci")
    lease = resp["lease_id"]
    issued = vault.issued[-1]
    assert issued.iam_user_name and issued.iam_user_name.startswith("vault-root-ci-")
    assert caller_arn(moto_server, creds_of(resp)).endswith(f":user/{issued.iam_user_name}")

    revoked = hv.sys.revoke_lease(lease)
    assert isinstance(revoked, requests.Response) and revoked.status_code == 204 and revoked.content == b""

    assert_rejected_by_moto(moto_server, creds_of(resp))
    with pytest.raises(ClientError):
        moto_server.client("iam").get_user(UserName=issued.iam_user_name)
    assert vault.revocations[lease] == 1
    assert lease not in vault.live_leases()
    # revoke is idempotent and never reveals unknown leases
    assert hv.sys.revoke_lease(lease).status_code == 204
    assert hv.sys.revoke_lease("aws/creds/ci/doesnotexist").status_code == 204
    assert vault.revocations[lease] == 1
    assert "aws/creds/ci/doesnotexist" not in vault.revocations
    assert vault.revoke_calls == [lease, lease, "aws/creds/ci/doesnotexist"]


def test_moto_enforces_authentication(vault: VaultDouble, moto_server: MotoServer) -> None:
    assert_rejected_by_moto(moto_server, ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"))
    assert caller_arn(moto_server, vault.aws_admin).startswith("arn:aws:iam::123456789012:user/vault-double-admin-")


@pytest.mark.parametrize("role", ["deploy", "fed", "sess"])
def test_sts_keys_work_and_survive_revoke(vault: VaultDouble, moto_server: MotoServer, role: str) -> None:
    hv = client(vault)
    resp = hv.secrets.aws.generate_credentials(role, endpoint="sts")
    other = hv.secrets.aws.generate_credentials(role, endpoint="sts")
    assert other["data"]["access_key"] != resp["data"]["access_key"]
    creds = creds_of(resp)
    arn = caller_arn(moto_server, creds)
    if role == "deploy":
        assert arn == resp["data"]["arn"]
        assert re.fullmatch(r"arn:aws:sts::123456789012:assumed-role/vault-double-aws-deploy/vault-\d{10}-\w{15}", arn)
        assert moto_server.client("s3", creds).list_buckets()["Buckets"] is not None
    with pytest.raises(hx.InvalidRequest) as info:
        hv.sys.renew_lease(resp["lease_id"])
    assert info.value.errors == ["lease is not renewable"]

    assert hv.sys.revoke_lease(resp["lease_id"]).status_code == 204
    assert vault.revocations[resp["lease_id"]] == 1
    assert resp["lease_id"] not in vault.live_leases()
    assert caller_arn(moto_server, creds) == arn  # STS credentials outlive their Vault lease


def test_role_arn_and_session_name(vault: VaultDouble, moto_server: MotoServer) -> None:
    arn_a = "arn:aws:iam::123456789012:role/RoleA"
    arn_b = "arn:aws:iam::123456789012:role/RoleB"
    vault.add_role("aws", "multi", "assumed_role", role_arns=[arn_a, arn_b])
    aws = client(vault).secrets.aws

    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("multi")
    assert info.value.errors == ["did not supply a role_arn parameter and unable to determine one"]
    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("multi", role_arn="arn:aws:iam::123456789012:role/Other")
    assert info.value.errors == [
        'role_arn "arn:aws:iam::123456789012:role/Other" not in allowed role arns for Vault role "multi"'
    ]
    resp = aws.generate_credentials("multi", role_arn=arn_b, role_session_name="my session!", endpoint="sts")
    assert resp["data"]["arn"] == "arn:aws:sts::123456789012:assumed-role/RoleB/my_session_"
    assert caller_arn(moto_server, creds_of(resp)) == resp["data"]["arn"]
    assert vault.requests[-1] == ("POST", "/v1/aws/sts/multi")

    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("multi", role_arn=arn_a, role_session_name="x" * 65)
    assert info.value.errors[0].startswith("Error assuming role: ")


def test_ttl_rules(vault: VaultDouble) -> None:
    aws = client(vault).secrets.aws
    assert aws.generate_credentials("deploy", ttl="15m")["lease_duration"] == 899  # GET query string
    assert vault.requests[-1] == ("GET", "/v1/aws/creds/deploy")
    assert aws.generate_credentials("fed", ttl=1800, endpoint="sts")["data"]["ttl"] == 1799
    assert aws.generate_credentials("ci", ttl="15m")["lease_duration"] == 3600  # ignored for iam_user

    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("deploy", ttl="10m")
    assert info.value.errors[0].startswith("Error assuming role: ")
    assert "DurationSeconds" in info.value.errors[0]
    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("fed", ttl=60, endpoint="sts")
    assert info.value.errors[0].startswith("Error generating STS keys: ")

    vault.enforce_min_sts_ttl = False
    short = aws.generate_credentials("deploy", ttl="30s")
    assert (short["lease_duration"], short["data"]["ttl"]) == (29, 29)

    vault.add_role("aws", "bounded", "assumed_role", default_sts_ttl=1200, max_sts_ttl=1800)
    assert aws.generate_credentials("bounded")["lease_duration"] == 1199
    assert aws.generate_credentials("bounded", ttl="2h")["lease_duration"] == 1799  # silently clamped

    form = requests.post(
        f"{vault.url}/v1/aws/sts/deploy",
        data={"ttl": "1000"},
        headers={"X-Vault-Token": "root-token"},
        timeout=10,
    )
    assert form.status_code == 200 and form.json()["lease_duration"] == 999
    with pytest.raises(hx.InvalidRequest):
        aws.generate_credentials("deploy", ttl="soon")


def test_duration_helpers() -> None:
    assert [parse_duration(v) for v in (None, "", 900, "900", "900s", "15m", "1h30m", "1.5h")] == [
        None,
        None,
        900,
        900,
        900,
        900,
        5400,
        5400,
    ]
    assert [format_go_duration(s) for s in (0, 45, 120, 3600, 5430)] == [
        "0s",
        "45s",
        "2m0s",
        "1h0m0s",
        "1h30m30s",
    ]


def test_legacy_roles_are_bound_to_their_path(vault: VaultDouble) -> None:
    vault.add_role("aws", "old-iam", "iam_user", legacy=True)
    vault.add_role("aws", "old-sts", "assumed_role", legacy=True)
    aws = client(vault).secrets.aws
    assert aws.generate_credentials("old-iam")["renewable"] is True
    assert aws.generate_credentials("old-sts", endpoint="sts")["renewable"] is False
    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("old-iam", endpoint="sts")
    assert info.value.errors == [
        "attempted to retrieve iam_user credentials through the sts path; this is not allowed for legacy roles"
    ]
    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("old-sts")
    assert info.value.errors == [
        "attempted to retrieve assumed_role credentials through the creds path; this is not allowed for legacy roles"
    ]


# --------------------------------------------------------------------------- errors and auth


def test_error_statuses_and_bodies(vault: VaultDouble) -> None:
    aws = client(vault).secrets.aws
    with pytest.raises(hx.InvalidRequest) as info:
        aws.generate_credentials("nope")
    assert info.value.errors == ['Role "nope" not found']
    with pytest.raises(hx.InvalidPath) as info:
        aws.generate_credentials("deploy", mount_point="nomount")
    assert info.value.errors == ['no handler for route "nomount/creds/deploy"']
    with pytest.raises(hx.Forbidden) as info:
        client(vault, token="wrong").secrets.aws.generate_credentials("deploy")
    assert info.value.errors == ["permission denied"]

    raw = requests.get(f"{vault.url}/v1/aws/creds/deploy", timeout=10)  # no token at all
    assert raw.status_code == 403
    assert raw.headers["Content-Type"] == "application/json"
    assert raw.json() == {"errors": ["permission denied"]}
    bearer = requests.get(
        f"{vault.url}/v1/aws/creds/deploy", headers={"Authorization": "Bearer root-token"}, timeout=10
    )
    assert bearer.status_code == 200 and bearer.json()["data"]["access_key"]
    wrong_method = requests.delete(
        f"{vault.url}/v1/aws/creds/deploy", headers={"X-Vault-Token": "root-token"}, timeout=10
    )
    assert wrong_method.status_code == 405 and wrong_method.json() == {"errors": ["unsupported operation"]}
    unknown = requests.get(f"{vault.url}/v1/secret/data/x", headers={"X-Vault-Token": "root-token"}, timeout=10)
    assert unknown.status_code == 404 and unknown.headers["Content-Type"] == "application/json"
    assert "errors" in unknown.json()
    empty_revoke = requests.put(
        f"{vault.url}/v1/sys/leases/revoke",
        json={"lease_id": ""},
        headers={"X-Vault-Token": "root-token"},
        timeout=10,
    )
    assert empty_revoke.status_code == 400 and empty_revoke.json() == {"errors": ["lease_id must be specified"]}


def test_tokens_and_policies(vault: VaultDouble) -> None:
    vault.add_token("lookup-only", policies={"lookup"})
    vault.add_token("plain")
    lookup_only = client(vault, token="lookup-only")
    with pytest.raises(hx.Forbidden):
        lookup_only.secrets.aws.generate_credentials("deploy")
    assert lookup_only.auth.token.lookup_self()["data"]["policies"] == ["lookup"]

    plain = client(vault, token="plain")
    lease = plain.secrets.aws.generate_credentials("ci")["lease_id"]
    assert plain.sys.read_lease(lease)["data"]["id"] == lease
    assert plain.sys.renew_lease(lease, increment=600)["lease_duration"] == 600
    with pytest.raises(hx.Forbidden):
        plain.sys.list_leases("aws/creds/ci")
    with pytest.raises(hx.Forbidden):
        plain.sys.revoke_prefix("aws/creds/ci")
    assert vault.issued[-1].iam_user_name.startswith("vault-token-ci-")
    me = plain.auth.token.lookup_self()["data"]
    assert me["id"] == "plain" and me["policies"] == ["creds", "lookup", "renew", "revoke"]
    assert plain.is_authenticated()
    assert plain.auth.token.renew_self()["auth"]["client_token"] == "plain"

    root_self = client(vault).auth.token.lookup_self()["data"]
    assert root_self["policies"] == ["root"] and root_self["ttl"] == 0 and root_self["expire_time"] is None

    vault.revoke_token("plain")
    with pytest.raises(hx.Forbidden):
        plain.secrets.aws.generate_credentials("deploy")
    assert not plain.is_authenticated()


def test_sealed_and_health(vault: VaultDouble) -> None:
    hv = client(vault)
    health = hv.sys.read_health_status(method="GET")  # hvac: dict on 200, Response otherwise
    assert health["sealed"] is False and health["initialized"] is True
    vault.sealed = True
    with pytest.raises(hx.VaultDown) as info:
        hv.secrets.aws.generate_credentials("deploy")
    assert info.value.errors == ["Vault is sealed"]
    with pytest.raises(hx.VaultDown):
        hv.sys.revoke_lease("aws/creds/deploy/x")
    sealed = hv.sys.read_health_status(method="GET")
    assert isinstance(sealed, requests.Response) and sealed.status_code == 503 and sealed.json()["sealed"] is True
    vault.sealed = False
    assert hv.secrets.aws.generate_credentials("deploy")["data"]["access_key"]


# --------------------------------------------------------------------------- switches


@pytest.mark.parametrize(
    ("mode", "keys"),
    [
        ("security_token", {"security_token"}),
        ("session_token", {"session_token"}),
        ("both", {"security_token", "session_token"}),
    ],
)
def test_token_field_switch(vault: VaultDouble, mode: str, keys: set[str]) -> None:
    vault.token_field = mode
    aws = client(vault).secrets.aws
    iam = aws.generate_credentials("ci")["data"]
    assert {k for k in iam if k.endswith("_token")} == keys
    assert all(iam[k] is None for k in keys)
    sts = aws.generate_credentials("deploy")["data"]
    assert {k for k in sts if k.endswith("_token")} == keys
    assert all(sts[k] == vault.issued[-1].session_token for k in keys)


def test_no_lease_sts(vault: VaultDouble, moto_server: MotoServer) -> None:
    vault.no_lease_sts = True
    aws = client(vault).secrets.aws
    for role in ("deploy", "fed", "sess"):
        resp = aws.generate_credentials(role, ttl="20m")
        assert (resp["lease_id"], resp["lease_duration"], resp["renewable"]) == ("", 0, False)
        assert resp["data"]["ttl"] == 1199
        assert vault.issued[-1].lease_id == "" and vault.issued[-1].ttl == 1199
    assert caller_arn(moto_server, creds_of(resp))
    iam = aws.generate_credentials("ci")
    assert iam["lease_id"] and iam["lease_duration"] == 3600
    assert vault.live_leases() == {iam["lease_id"]}


def test_latency(vault: VaultDouble) -> None:
    vault.latency = 0.3
    start = time.monotonic()
    client(vault).auth.token.lookup_self()
    assert time.monotonic() - start >= 0.3


# --------------------------------------------------------------------------- namespaces


def test_namespaces(vault: VaultDouble, moto_server: MotoServer) -> None:
    vault.add_role("aws/dev", "deploy", "assumed_role", namespace="ns1")
    vault.add_role("aws", "ci", "iam_user", namespace="ns1/ns2")
    team_id = vault.namespace_id("team1")
    assert re.fullmatch(r"[A-Za-z0-9]{5}", team_id)
    lease_re = rf"aws/creds/deploy/[A-Za-z0-9]{{24}}\.{team_id}"

    via_header = client(vault, namespace="team1").secrets.aws.generate_credentials("deploy")
    assert re.fullmatch(lease_re, via_header["lease_id"])
    via_prefix = client(vault).secrets.aws.generate_credentials("deploy", mount_point="team1/aws")
    assert re.fullmatch(lease_re, via_prefix["lease_id"])
    assert (vault.issued[-1].namespace, vault.issued[-1].mount, vault.issued[-1].path) == (
        "team1",
        "aws",
        "aws/creds/deploy",
    )

    dev_header = client(vault, namespace="ns1").secrets.aws.generate_credentials("deploy", mount_point="aws/dev")
    dev_prefix = client(vault).secrets.aws.generate_credentials("deploy", mount_point="ns1/aws/dev")
    for resp in (dev_header, dev_prefix):
        assert re.fullmatch(rf"aws/dev/creds/deploy/[A-Za-z0-9]{{24}}\.{vault.namespace_id('ns1')}", resp["lease_id"])
    with pytest.raises(hx.InvalidPath):
        client(vault, namespace="ns1").secrets.aws.generate_credentials("ci")  # no mount "aws" in ns1

    nested = client(vault, namespace="ns1/").secrets.aws.generate_credentials("ci", mount_point="ns2/aws")
    assert nested["lease_id"].endswith("." + vault.namespace_id("ns1/ns2"))
    assert vault.issued[-1].namespace == "ns1/ns2"

    root = client(vault)
    team = client(vault, namespace="team1")
    # Another namespace: revoke is a silent no-op, lookup and renew do not find it.
    assert root.sys.revoke_lease(via_header["lease_id"]).status_code == 204
    assert via_header["lease_id"] in vault.live_leases()
    assert vault.revocations[via_header["lease_id"]] == 0
    with pytest.raises(hx.InvalidRequest) as info:
        root.sys.read_lease(via_header["lease_id"])
    assert info.value.errors == ["invalid lease"]
    with pytest.raises(hx.InvalidRequest) as info:
        root.sys.renew_lease(nested["lease_id"])
    assert info.value.errors == ["lease not found"]

    assert team.sys.read_lease(via_header["lease_id"])["data"]["id"] == via_header["lease_id"]
    assert team.sys.revoke_lease(via_header["lease_id"]).status_code == 204
    assert vault.revocations[via_header["lease_id"]] == 1
    prefixed = requests.put(
        f"{vault.url}/v1/team1/sys/leases/revoke",
        json={"lease_id": via_prefix["lease_id"]},
        headers={"X-Vault-Token": "root-token"},
        timeout=10,
    )
    assert prefixed.status_code == 204 and vault.revocations[via_prefix["lease_id"]] == 1

    assert caller_arn(moto_server, creds_of(nested))
    assert client(vault, namespace="ns1/ns2").sys.revoke_lease(nested["lease_id"]).status_code == 204
    assert_rejected_by_moto(moto_server, creds_of(nested))


# --------------------------------------------------------------------------- sys/leases


def test_renew_and_lookup(vault: VaultDouble) -> None:
    vault.add_role("aws", "short", "iam_user", iam_lease_ttl=600, iam_max_ttl=1000)
    hv = client(vault)
    resp = hv.secrets.aws.generate_credentials("short")
    lease = resp["lease_id"]
    assert resp["lease_duration"] == 600

    looked = hv.sys.read_lease(lease)
    assert set(looked) == ENVELOPE_KEYS and looked["lease_id"] == ""
    data = looked["data"]
    assert set(data) == LOOKUP_KEYS
    assert data["id"] == lease and data["renewable"] is True and data["last_renewal"] is None
    assert 595 <= data["ttl"] <= 600
    assert abs(parse_rfc3339(data["expire_time"]) - parse_rfc3339(data["issue_time"]) - 600) < 1

    renewed = hv.sys.renew_lease(lease, increment=300)
    assert set(renewed) == ENVELOPE_KEYS
    assert (renewed["lease_id"], renewed["renewable"], renewed["lease_duration"]) == (lease, True, 300)
    assert renewed["data"] is None and renewed["warnings"] is None
    after = hv.sys.read_lease(lease)["data"]
    assert after["last_renewal"] is not None and 295 <= after["ttl"] <= 300
    assert hv.sys.renew_lease(lease, increment="5m")["lease_duration"] == 300
    assert hv.sys.renew_lease(lease)["lease_duration"] == 600  # no increment: the role's lease TTL
    url_id = requests.put(
        f"{vault.url}/v1/sys/leases/renew/{lease}",
        json={},
        headers={"X-Vault-Token": "root-token"},
        timeout=10,
    )
    assert url_id.status_code == 200 and url_id.json()["lease_id"] == lease

    capped = hv.sys.renew_lease(lease, increment="1h")
    assert 990 <= capped["lease_duration"] <= 1000
    assert "exceeded the effective max_ttl" in capped["warnings"][0]

    vault.backdate_lease(lease, 1001)
    with pytest.raises(hx.InvalidRequest) as info:
        hv.sys.renew_lease(lease, increment=60)
    assert info.value.errors == ["past the max TTL, cannot renew"]
    with pytest.raises(hx.InvalidRequest) as info:
        hv.sys.renew_lease("aws/creds/short/unknown")
    assert info.value.errors == ["lease not found"]
    with pytest.raises(hx.InvalidRequest) as info:
        hv.sys.read_lease("aws/creds/short/unknown")
    assert info.value.errors == ["invalid lease"]


def test_list_and_revoke_prefix(vault: VaultDouble, moto_server: MotoServer) -> None:
    hv = client(vault)
    ci_a = hv.secrets.aws.generate_credentials("ci")
    ci_b = hv.secrets.aws.generate_credentials("ci")
    deploy = hv.secrets.aws.generate_credentials("deploy")["lease_id"]
    sts = hv.secrets.aws.generate_credentials("deploy", endpoint="sts")["lease_id"]
    team = client(vault, namespace="team1").secrets.aws.generate_credentials("deploy")["lease_id"]

    suffixes = sorted(r["lease_id"].rsplit("/", 1)[1] for r in (ci_a, ci_b))
    assert hv.sys.list_leases("aws/creds/ci")["data"]["keys"] == suffixes
    assert hv.sys.list_leases("aws/")["data"]["keys"] == ["creds/", "sts/"]
    assert hv.sys.list_leases("aws/creds")["data"]["keys"] == ["ci/", "deploy/"]
    as_get = requests.get(
        f"{vault.url}/v1/sys/leases/lookup/aws/creds/ci",
        params={"list": "true"},
        headers={"X-Vault-Token": "root-token"},
        timeout=10,
    )
    assert as_get.status_code == 200 and as_get.json()["data"]["keys"] == suffixes
    with pytest.raises(hx.InvalidPath) as info:
        hv.sys.list_leases("aws/creds/fed")
    assert info.value.errors == []
    assert client(vault, namespace="team1").sys.list_leases("aws/creds/deploy")["data"]["keys"] == [
        team.rsplit("/", 1)[1]
    ]
    vault.add_token("sudoer", sudo=True)
    assert client(vault, token="sudoer").sys.list_leases("aws/sts")["data"]["keys"] == ["deploy/"]

    assert hv.sys.revoke_prefix("aws/creds/ci").status_code == 204
    for resp in (ci_a, ci_b):
        assert vault.revocations[resp["lease_id"]] == 1
        assert_rejected_by_moto(moto_server, creds_of(resp))
    assert vault.live_leases() == {deploy, sts, team}

    assert hv.sys.revoke_prefix("aws/creds/deploy").status_code == 204  # root namespace only
    assert vault.live_leases() == {sts, team}
    assert hv.sys.revoke_force("aws/sts").status_code == 204
    assert vault.live_leases() == {team}
    assert vault.prefix_revoke_calls == ["aws/creds/ci", "aws/creds/deploy", "aws/sts"]


def test_expire_lease_and_lazy_expiry(vault: VaultDouble, moto_server: MotoServer) -> None:
    hv = client(vault)
    resp = hv.secrets.aws.generate_credentials("ci")
    lease = resp["lease_id"]
    assert caller_arn(moto_server, creds_of(resp))
    vault.expire_lease(lease)
    assert_rejected_by_moto(moto_server, creds_of(resp))
    assert lease not in vault.live_leases() and vault.expired == [lease]
    assert vault.revocations[lease] == 0
    with pytest.raises(hx.InvalidRequest):
        hv.sys.read_lease(lease)
    vault.expire_lease(lease)  # unknown: no-op

    vault.enforce_min_sts_ttl = False
    short = hv.secrets.aws.generate_credentials("deploy", ttl=2)["lease_id"]
    assert short in vault.live_leases()
    wait_for(lambda: short not in vault.live_leases(), timeout=5, interval=0.1)


def test_revoke_of_user_deleted_out_of_band(vault: VaultDouble, moto_server: MotoServer) -> None:
    hv = client(vault)
    resp = hv.secrets.aws.generate_credentials("ci")
    user = vault.issued[-1].iam_user_name
    iam = moto_server.client("iam")
    iam.delete_access_key(UserName=user, AccessKeyId=resp["data"]["access_key"])
    for name in iam.list_user_policies(UserName=user)["PolicyNames"]:
        iam.delete_user_policy(UserName=user, PolicyName=name)
    iam.delete_user(UserName=user)

    with pytest.raises(hx.InvalidRequest) as info:  # younger than 5 minutes: Vault refuses
        hv.sys.revoke_lease(resp["lease_id"])
    assert info.value.errors[0].startswith("failed to revoke entry: ")
    assert resp["lease_id"] in vault.live_leases()
    vault.backdate_lease(resp["lease_id"], 301)
    assert hv.sys.revoke_lease(resp["lease_id"]).status_code == 204
    assert vault.revocations[resp["lease_id"]] == 1


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, hx.InvalidRequest),
        (403, hx.Forbidden),
        (429, hx.RateLimitExceeded),
        (500, hx.InternalServerError),
        (502, hx.BadGateway),
        (503, hx.VaultDown),
    ],
)
def test_status_faults(vault: VaultDouble, status: int, exc: type[Exception]) -> None:
    hv = client(vault)
    vault.inject_fault(status, count=2, path_contains="/creds/")
    hv.auth.token.lookup_self()  # other paths unaffected
    for _ in range(2):
        with pytest.raises(exc) as info:
            hv.secrets.aws.generate_credentials("deploy")
        assert isinstance(info.value.errors, list)
    assert vault.issued == []
    assert hv.secrets.aws.generate_credentials("deploy")["data"]["access_key"]


def test_fault_on_revoke_keeps_lease(vault: VaultDouble) -> None:
    hv = client(vault)
    lease = hv.secrets.aws.generate_credentials("ci")["lease_id"]
    vault.inject_fault(500, path_contains="sys/leases/revoke")
    with pytest.raises(hx.InternalServerError):
        hv.sys.revoke_lease(lease)
    assert lease in vault.live_leases()
    assert hv.sys.revoke_lease(lease).status_code == 204
    assert vault.revocations[lease] == 1


def test_body_faults(vault: VaultDouble) -> None:
    aws = client(vault).secrets.aws
    vault.inject_fault("malformed")
    bad = aws.generate_credentials("deploy")  # hvac hands back the raw Response when JSON fails
    assert isinstance(bad, requests.Response) and bad.status_code == 200
    assert bad.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(bad.text)

    vault.inject_fault("html")
    page = aws.generate_credentials("deploy")
    assert isinstance(page, requests.Response) and page.headers["Content-Type"].startswith("text/html")
    assert vault.issued == []

    vault.inject_fault("missing_access_key")
    partial = aws.generate_credentials("deploy")
    assert "access_key" not in partial["data"] and partial["data"]["secret_key"]
    assert partial["lease_id"] in vault.live_leases()  # the credential was really issued
    assert vault.issued[-1].lease_id == partial["lease_id"]

    vault.inject_fault("reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        aws.generate_credentials("deploy")
    assert aws.generate_credentials("deploy")["data"]["access_key"]
    with pytest.raises(ValueError):
        vault.inject_fault("bogus")


def test_hang_fault_is_released_by_timeout_and_stop(vault: VaultDouble) -> None:
    vault.inject_fault("hang")
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        hvac.Client(url=vault.url, token="root-token", timeout=0.5).secrets.aws.generate_credentials("deploy")
    assert time.monotonic() - start < 5
    assert client(vault).secrets.aws.generate_credentials("deploy")["data"]["access_key"]

    vault.inject_fault("hang")
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            requests.get(f"{vault.url}/v1/sys/health", timeout=20)
            outcome.append(None)
        except requests.RequestException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    wait_for(lambda: ("GET", "/v1/sys/health") in vault.requests, timeout=5)
    start = time.monotonic()
    vault.stop()
    worker.join(timeout=10)
    assert not worker.is_alive() and time.monotonic() - start < 5
    assert isinstance(outcome[0], requests.exceptions.ConnectionError)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{vault.url}/v1/sys/health", timeout=2)


# --------------------------------------------------------------------------- runner


def test_main_runs_as_a_process(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.vault_double", "--ready-file", str(ready), "--latency-ms", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        info = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), timeout=30, interval=0.1)
        assert {"vault_addr", "token", "aws_endpoint", "pid"} <= set(info)
        assert info["pid"] == proc.pid and info["token"] == "root-token"
        assert info["vault_addr"].startswith("http://127.0.0.1:")
        assert info["aws_endpoint"].startswith("http://127.0.0.1:")
        hv = hvac.Client(url=info["vault_addr"], token=info["token"], timeout=10)
        for role in ("ci", "deploy", "fed", "sess"):
            assert hv.secrets.aws.generate_credentials(role)["data"]["access_key"]
        team = hvac.Client(url=info["vault_addr"], token=info["token"], namespace="team1", timeout=10)
        resp = team.secrets.aws.generate_credentials("deploy")
        assert re.fullmatch(r"aws/creds/deploy/[A-Za-z0-9]{24}\.[A-Za-z0-9]{5}", resp["lease_id"])
        sts = MotoServer(endpoint=info["aws_endpoint"], server=None).client("sts", creds_of(resp))
        assert sts.get_caller_identity()["Arn"] == resp["data"]["arn"]

        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert out.strip() in (b"", b"ready")
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{info['vault_addr']}/v1/sys/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


# --------------------------------------------------------------------------- role reads, static roles, MFA


def raw(vault: VaultDouble, method: str, path: str, token: str | None = "root-token", **kwargs: Any) -> Any:
    headers = {"X-Vault-Token": token} if token else {}
    headers.update(kwargs.pop("headers", {}))
    kwargs.setdefault("timeout", 10)
    return requests.request(method, f"{vault.url}/v1/{path}", headers=headers, **kwargs)


def test_role_config_read(vault: VaultDouble) -> None:
    vault.add_role("aws", "limited", "assumed_role", default_sts_ttl=900, max_sts_ttl=7200)
    vault.add_role("aws", "grp", "iam_user", iam_groups=["devs"], policy_arns=["arn:aws:iam::aws:policy/ReadOnly"])
    resp = raw(vault, "GET", "aws/roles/limited")
    assert resp.status_code == 200 and set(resp.json()) == ENVELOPE_KEYS
    data = resp.json()["data"]
    assert data["credential_type"] == "assumed_role"
    assert data["role_arns"] and data["role_arns"][0].startswith("arn:aws:iam::")
    assert (data["default_sts_ttl"], data["max_sts_ttl"]) == (900, 7200)
    assert {"policy_arns", "iam_groups", "user_path", "mfa_serial_number", "iam_tags"} <= set(data)
    grp = raw(vault, "GET", "aws/roles/grp").json()["data"]
    assert grp["iam_groups"] == ["devs"] and grp["policy_arns"] == ["arn:aws:iam::aws:policy/ReadOnly"]
    assert grp["user_path"] == "/" and grp["role_arns"] is None and grp["credential_type"] == "iam_user"
    assert raw(vault, "GET", "aws/roles/deploy", headers={"X-Vault-Namespace": "team1"}).status_code == 200

    missing = raw(vault, "GET", "aws/roles/nosuch")
    assert missing.status_code == 404 and missing.json() == {"errors": []}
    assert client(vault).read("aws/roles/nosuch") is None
    nomount = raw(vault, "GET", "elsewhere/roles/deploy")
    assert nomount.status_code == 404 and nomount.json() == {
        "errors": ['no handler for route "elsewhere/roles/deploy"']
    }
    listed = raw(vault, "LIST", "aws/roles")
    assert listed.status_code == 200 and {"ci", "deploy", "fed", "sess", "grp"} <= set(listed.json()["data"]["keys"])

    vault.add_token("plain")  # DEFAULT_POLICIES: no read on roles
    assert raw(vault, "GET", "aws/roles/deploy", token="plain").status_code == 403
    assert raw(vault, "GET", "elsewhere/roles/deploy", token="plain").status_code == 403
    vault.add_token("reader", policies={"roles"})
    assert raw(vault, "GET", "aws/roles/deploy", token="reader").status_code == 200
    assert raw(vault, "POST", "aws/roles/deploy", token="reader", json={}).status_code == 405
    assert vault.issued == []  # reading a role issues nothing


def test_static_roles(vault: VaultDouble, moto_server: MotoServer) -> None:
    user = vault.add_static_role("svc", rotation_period=3600)
    first = raw(vault, "GET", "aws/static-creds/svc")
    assert first.status_code == 200
    body = first.json()
    assert (body["lease_id"], body["lease_duration"], body["renewable"]) == ("", 0, False)
    data = body["data"]
    assert set(data) == {"access_key", "secret_key", "expiration", "last_vault_rotation", "ttl", "rotation_period"}
    assert data["rotation_period"] == 3600 and 3590 <= data["ttl"] <= 3600
    assert abs(parse_rfc3339(data["expiration"]) - parse_rfc3339(data["last_vault_rotation"]) - 3600) < 1
    key = (data["access_key"], data["secret_key"])
    assert caller_arn(moto_server, key).endswith(f":user/{user}")

    vault.add_token("plain")
    again = raw(vault, "GET", "aws/static-creds/svc", token="plain").json()["data"]
    assert (again["access_key"], again["secret_key"]) == key  # the same key for every reader
    assert vault.live_leases() == set()

    new = vault.rotate_static_role("svc")
    assert new != key
    rotated = raw(vault, "GET", "aws/static-creds/svc").json()["data"]
    assert (rotated["access_key"], rotated["secret_key"]) == new
    assert caller_arn(moto_server, new).endswith(f":user/{user}")
    assert_rejected_by_moto(moto_server, key)  # the old key is deleted in moto

    role = raw(vault, "GET", "aws/static-roles/svc").json()["data"]
    assert role == {"name": "svc", "username": user, "rotation_period": 3600}
    missing = raw(vault, "GET", "aws/static-creds/nosuch")
    assert missing.status_code == 404 and missing.json() == {"errors": []}
    assert raw(vault, "GET", "nomount/static-creds/svc").status_code == 404
    vault.add_token("lookup-only", policies={"lookup"})
    assert raw(vault, "GET", "aws/static-creds/svc", token="lookup-only").status_code == 403


def test_session_token_role_with_mfa(vault: VaultDouble, moto_server: MotoServer) -> None:
    serial = "arn:aws:iam::123456789012:mfa/ci"
    vault.add_role("aws", "mfa", "session_token", mfa_serial_number=serial)
    assert raw(vault, "GET", "aws/roles/mfa").json()["data"]["mfa_serial_number"] == serial
    vault.set_mfa_code("mfa", "123456")

    missing = raw(vault, "POST", "aws/sts/mfa", json={})
    assert missing.status_code == 400
    assert missing.json()["errors"][0].startswith(
        "Error generating STS keys: AccessDenied: MultiFactorAuthentication failed, must provide both"
    )
    wrong = raw(vault, "POST", "aws/sts/mfa", json={"mfa_code": "000000"})
    assert wrong.status_code == 400 and "invalid MFA one time pass code" in wrong.json()["errors"][0]
    assert vault.issued == []

    ok = raw(vault, "POST", "aws/sts/mfa", json={"mfa_code": "123456", "ttl": "15m"})
    assert ok.status_code == 200
    body = ok.json()
    assert re.fullmatch(r"aws/sts/mfa/[A-Za-z0-9]{24}", body["lease_id"]) and body["lease_duration"] == 899
    assert body["renewable"] is False and body["data"]["security_token"]
    assert vault.issued[-1].credential_type == "session_token"
    assert caller_arn(moto_server, creds_of(body))
    with pytest.raises(ValueError):
        vault.set_mfa_code("sess", "1")  # no MFA device on that role
    with pytest.raises(ValueError):
        vault.add_role("aws", "bad", "assumed_role", mfa_serial_number=serial)


# --------------------------------------------------------------------------- identity and request records


def test_lookup_self_identity_and_token_ttl(vault: VaultDouble) -> None:
    accessor = vault.add_token("ci-token", display_name="approle-ci", entity_id="e-123", ttl=1800)
    me = raw(vault, "GET", "auth/token/lookup-self", token="ci-token").json()["data"]
    assert me["accessor"] == accessor == vault.token_accessor("ci-token")
    assert (me["display_name"], me["entity_id"], me["renewable"], me["creation_ttl"]) == (
        "approle-ci",
        "e-123",
        True,
        1800,
    )
    assert 1790 <= me["ttl"] <= 1800 and me["policies"] == ["creds", "lookup", "renew", "revoke"]
    assert abs(parse_rfc3339(me["expire_time"]) - time.time() - 1800) < 5
    assert {"id", "path", "meta", "num_uses", "orphan", "creation_time", "issue_time", "type"} <= set(me)

    renewed = raw(vault, "POST", "auth/token/renew-self", token="ci-token", json={"increment": "1h"}).json()
    assert renewed["auth"]["client_token"] == "ci-token" and renewed["auth"]["entity_id"] == "e-123"
    assert 3590 <= renewed["auth"]["lease_duration"] <= 3600 and renewed["auth"]["renewable"] is True
    assert raw(vault, "GET", "auth/token/lookup-self", token="ci-token").json()["data"]["last_renewal"]

    client(vault, token="ci-token").secrets.aws.generate_credentials("ci")
    assert vault.issued[-1].iam_user_name.startswith("vault-approle-ci-ci-")

    vault.add_token("short", ttl=1, renewable=False)
    assert raw(vault, "POST", "auth/token/renew-self", token="short").status_code == 400
    wait_for(lambda: raw(vault, "GET", "auth/token/lookup-self", token="short").status_code == 403, timeout=5)
    root = raw(vault, "GET", "auth/token/lookup-self").json()["data"]
    assert (root["display_name"], root["ttl"], root["expire_time"]) == ("root", 0, None)


def test_assumed_role_arn_has_motos_account(vault: VaultDouble, moto_server: MotoServer) -> None:
    account = moto_server.client("sts").get_caller_identity()["Account"]
    data = client(vault).secrets.aws.generate_credentials("deploy", role_session_name="me")["data"]
    assert re.fullmatch(rf"arn:aws:sts::{account}:assumed-role/[^/]+/me", data["arn"])
    assert caller_arn(moto_server, creds_of({"data": data})) == data["arn"]


def test_requests_record_tokens_and_headers(vault: VaultDouble) -> None:
    client(vault).secrets.aws.generate_credentials("deploy")
    raw(vault, "GET", "sys/health", token=None)
    raw(vault, "GET", "aws/creds/deploy", token=None, headers={"Authorization": "Bearer other"})
    assert len(vault.requests) == len(vault.request_tokens) == len(vault.seen) == 3
    assert vault.request_tokens == ["root-token", "", "other"]
    first = vault.seen[0]
    assert (first.method, first.path, first.token) == ("GET", "/v1/aws/creds/deploy", "root-token")
    assert first.header("x-vault-request") == "true"  # hvac sends it
    assert vault.seen[1].header("X-Vault-Request") is None


# --------------------------------------------------------------------------- latency and body faults


def test_set_latency_issues_even_when_the_client_gave_up(vault: VaultDouble) -> None:
    vault.set_latency(2.0, path_contains="/creds/")
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        raw(vault, "GET", "aws/creds/ci", timeout=0.5)
    assert time.monotonic() - start < 2
    wait_for(lambda: vault.issued, timeout=10)
    assert len(vault.issued) == 1 and vault.issued[0].lease_id in vault.live_leases()  # issued all the same
    fast = time.monotonic()
    raw(vault, "GET", "auth/token/lookup-self")  # other paths are not delayed
    assert time.monotonic() - fast < 1
    vault.set_latency(0, path_contains="/creds/")
    fast = time.monotonic()
    assert raw(vault, "GET", "aws/creds/deploy").status_code == 200
    assert time.monotonic() - fast < 1.5


def test_drip_fault(vault: VaultDouble) -> None:
    vault.inject_fault("drip", interval=0.05, path_contains="/creds/")
    start = time.monotonic()
    with requests.get(
        f"{vault.url}/v1/aws/creds/deploy", headers={"X-Vault-Token": "root-token"}, timeout=5, stream=True
    ) as resp:
        assert resp.status_code == 200 and time.monotonic() - start < 2  # headers at once
        first = resp.raw.read(1)
        assert first == b"{"
    assert vault.issued and vault.issued[-1].lease_id in vault.live_leases()

    vault.inject_fault("drip", interval=0.01)
    body = raw(vault, "GET", "auth/token/lookup-self")
    assert body.status_code == 200 and body.json()["data"]["id"] == "root-token"

    vault.inject_fault("drip", interval=0.8)
    start = time.monotonic()
    with requests.get(
        f"{vault.url}/v1/auth/token/lookup-self", headers={"X-Vault-Token": "root-token"}, timeout=1.5, stream=True
    ) as slow:
        assert slow.raw.read(4) == b'{"re'  # no ReadTimeout: every byte comes within the 1.5 s read timeout
    assert time.monotonic() - start >= 2.4
    with pytest.raises(ValueError):
        vault.inject_fault("drip", interval=0)


def test_redirect_and_huge_faults(vault: VaultDouble) -> None:
    vault.inject_fault("redirect", location="http://127.0.0.1:9/")
    resp = raw(vault, "GET", "aws/creds/deploy", params={"ttl": "1h"}, allow_redirects=False)
    assert resp.status_code == 307
    assert resp.headers["Location"] == "http://127.0.0.1:9/v1/aws/creds/deploy?ttl=1h"
    vault.inject_fault("redirect", location="http://elsewhere.invalid/v1/sys/health", status=302)
    resp = raw(vault, "GET", "aws/creds/deploy", allow_redirects=False)
    assert resp.status_code == 302 and resp.headers["Location"] == "http://elsewhere.invalid/v1/sys/health"
    assert vault.issued == []
    with pytest.raises(ValueError):
        vault.inject_fault("redirect")

    vault.inject_fault("huge", megabytes=3)
    big = raw(vault, "GET", "aws/creds/deploy")
    assert big.status_code == 200 and big.headers["Content-Type"] == "application/json"
    assert len(big.content) == 3 << 20 and int(big.headers["Content-Length"]) == 3 << 20
    assert set(big.json()) == ENVELOPE_KEYS
    assert vault.issued == []


# --------------------------------------------------------------------------- sys/leases lookup and list


def test_lease_lookup_and_list_as_vault(vault: VaultDouble) -> None:
    hv = client(vault)
    lease = hv.secrets.aws.generate_credentials("ci")["lease_id"]
    sts = hv.secrets.aws.generate_credentials("deploy", endpoint="sts")["lease_id"]
    data = raw(vault, "PUT", "sys/leases/lookup", json={"lease_id": sts}).json()["data"]
    assert set(data) == LOOKUP_KEYS and data["id"] == sts and data["renewable"] is False and data["ttl"] > 3500

    listed = raw(vault, "LIST", "sys/leases/lookup/aws/creds/ci/")
    assert listed.status_code == 200 and listed.json()["data"]["keys"] == [lease.rsplit("/", 1)[1]]
    assert raw(vault, "LIST", "sys/leases/lookup/aws/").json()["data"]["keys"] == ["creds/", "sts/"]
    vault.add_token("plain")
    assert raw(vault, "LIST", "sys/leases/lookup/aws/", token="plain").status_code == 403  # sudo needed
    assert raw(vault, "GET", "sys/leases/lookup/aws/").status_code == 405  # GET without ?list=true

    hv.sys.revoke_lease(lease)
    for gone in (lease, "aws/creds/ci/unknown"):
        looked = raw(vault, "PUT", "sys/leases/lookup", json={"lease_id": gone})
        assert looked.status_code == 400 and looked.json() == {"errors": ["invalid lease"]}
    empty = raw(vault, "LIST", "sys/leases/lookup/aws/creds/ci/")
    assert empty.status_code == 404 and empty.json() == {"errors": []}
