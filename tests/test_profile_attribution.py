"""Every profile's credential is its own cache entry and lease row, so `leases --profile` and
`revoke --profile` are exact even for two profiles on the same mount and role."""

from __future__ import annotations

import json

from tests.support.brokerproc import credential, run_broker


def _leases(*args: str) -> list[dict]:
    result = run_broker("leases", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_two_profiles_on_one_role_are_attributed_and_revoked_apart(vault):
    for name in ("a", "b"):
        assert run_broker("profile", "add", name, "--mount", "aws", "--role", "deploy").returncode == 0
    key_a = credential("--profile", "a")["AccessKeyId"]
    key_b = credential("--profile", "b")["AccessKeyId"]
    assert key_a != key_b and len(vault.issued) == 2
    assert credential("--profile", "b")["AccessKeyId"] == key_b  # each profile's own cache entry
    assert credential("--profile", "a")["AccessKeyId"] == key_a
    assert len(vault.issued) == 2
    assert [row["access_key_id"] for row in _leases("--profile", "b")] == [key_b]
    assert [row["access_key_id"] for row in _leases("--profile", "a")] == [key_a]

    revoked = run_broker("revoke", "--profile", "b", "--yes", "--format", "json")
    assert revoked.returncode == 0, revoked.stderr
    b_lease = next(i.lease_id for i in vault.issued if i.access_key == key_b)
    a_lease = next(i.lease_id for i in vault.issued if i.access_key == key_a)
    live = set(vault.live_leases())
    assert b_lease not in live and a_lease in live
    assert credential("--profile", "a")["AccessKeyId"] == key_a  # a's credential untouched
    assert credential("--profile", "b")["AccessKeyId"] not in (key_a, key_b)  # b gets a new one
