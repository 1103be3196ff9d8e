"""Shell completion through Click's completion protocol on a real process: profile names where a
profile is asked for, lease ids for --lease-id. Completion reads the ledger and creates nothing."""

from __future__ import annotations

import os

from tests.support.brokerproc import credential, run_broker


def complete(*words: str) -> list[str]:
    """What bash completion offers for `broker WORDS...` (the last word is the one being completed)."""
    line = ["broker", *words]
    result = run_broker(
        env={"_BROKER_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(line), "COMP_CWORD": str(len(line) - 1)}
    )
    assert result.returncode == 0, result.stderr
    return [item.split(",", 1)[1] for item in result.stdout.splitlines() if item.startswith("plain,")]


def test_profile_names_and_lease_ids_complete(vault):
    for name in ("deploy", "dev", "ci"):
        assert run_broker("profile", "add", name, "--mount", "aws", "--role", "ci").returncode == 0
    assert complete("exec", "de") == ["deploy", "dev"]
    assert complete("exec", "--server", "") == ["ci", "deploy", "dev"]
    assert complete("export", "c") == ["ci"]
    assert complete("credential-process", "--profile", "d") == ["deploy", "dev"]
    assert complete("clear", "") == ["ci", "deploy", "dev"]
    assert complete("profile", "remove", "dep") == ["deploy"]
    assert complete("leases", "--profile", "") == ["ci", "deploy", "dev"]

    credential("--mount", "aws", "--role", "ci")
    (lease_id,) = complete("revoke", "--lease-id", "aws/")
    assert lease_id.startswith("aws/creds/ci/")
    assert complete("renew", "--lease-id", lease_id[:-3]) == [lease_id]
    assert complete("revoke", "--lease-id", "nosuch") == []


def test_completion_without_a_ledger_offers_nothing_and_creates_nothing():
    assert complete("exec", "") == []
    assert not os.path.exists(os.environ["BROKER_DB"])
