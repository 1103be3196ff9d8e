"""A newcomer's first hour: -v says what happened, global options after the command, idempotent
`profile add`, `broker list` and `clear`, exec without `--`, `--duration`, `export --unset`."""

from __future__ import annotations

import json

import pytest

from broker.cli import hoist_global_options
from tests.support.brokerproc import assert_one_line_error, credential, run_broker


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["credential-process", "--profile", "p", "-v"], ["-v", "credential-process", "--profile", "p"]),
        (["leases", "--db", "x", "-vv"], ["--db", "x", "-vv", "leases"]),
        (["profile", "add", "x", "--db=z"], ["--db=z", "profile", "add", "x"]),
        # the program's arguments after `exec PROFILE` (or after `--`) are never touched
        (["exec", "-v", "--duration", "1h", "p", "aws", "-v"], ["-v", "exec", "--duration", "1h", "p", "aws", "-v"]),
        (["--db", "d", "exec", "p", "--", "aws", "-v"], ["--db", "d", "exec", "p", "--", "aws", "-v"]),
        (["revoke", "--lease-id", "x", "--", "-v"], ["revoke", "--lease-id", "x", "--", "-v"]),
    ],
)
def test_global_options_are_moved_before_the_command(args, expected):
    assert hoist_global_options(args) == expected


def test_verbose_says_miss_why_vault_path_lock_wait_then_hit(vault):
    first = run_broker("credential-process", "--mount", "aws", "--role", "deploy", "-v")
    assert first.returncode == 0, first.stderr
    json.loads(first.stdout)  # stdout is the JSON only
    log = first.stderr
    assert "miss: request (aws/creds/deploy): no cached credential for this request" in log
    assert "issuance lock taken after" in log
    assert "vault: GET http://127.0.0.1:" in log and "/v1/aws/creds/deploy" in log
    assert "vault: aws/creds/deploy answered in" in log
    assert "cache key:" not in log  # that is -vv

    hit = run_broker("credential-process", "--mount", "aws", "--role", "deploy", "-vv")
    assert hit.returncode == 0
    key_id = json.loads(hit.stdout)["AccessKeyId"]
    assert key_id not in hit.stderr and f"...{key_id[-4:]}" in hit.stderr  # logs mask key ids
    assert "broker: INFO: hit: aws/deploy: cached credential" in hit.stderr
    assert "broker: DEBUG: cache key: http://127.0.0.1:" in hit.stderr

    quiet = run_broker("credential-process", "--mount", "aws", "--role", "deploy")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_verbose_revoke_says_one_line_per_lease(vault):
    credential("--mount", "aws", "--role", "ci", "--no-cache")
    credential("--mount", "aws", "--role", "ci", "--no-cache")
    result = run_broker("revoke", "--role", "ci", "--yes", "-v")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("INFO: revoked ") == 2


def test_global_options_after_the_command_in_the_full_cli(vault, tmp_path):
    other = tmp_path / "other" / "b.db"
    result = run_broker("credential-process", "--mount", "aws", "--role", "ci", "--db", str(other), "-v")
    assert result.returncode == 0, result.stderr
    assert other.exists()
    listed = run_broker("leases", "--format", "json", "--db", str(other))
    assert len(json.loads(listed.stdout)) == 1
    assert_one_line_error(run_broker("leases", "--db"), code=2)


def profile_add(*args: str):
    return run_broker("profile", "add", *args)


def test_an_identical_profile_add_keeps_the_cached_credential(vault):
    assert profile_add("dev", "--mount", "aws", "--role", "deploy", "--ttl", "1h").stderr == "added profile dev\n"
    first = credential("--profile", "dev")
    again = profile_add("dev", "--mount", "aws", "--role", "deploy", "--ttl", "60m")
    assert again.returncode == 0
    assert again.stderr == "unchanged profile dev (kept its cached credential)\n"
    assert credential("--profile", "dev") == first
    assert len(vault.issued) == 1
    changed = profile_add("dev", "--mount", "aws", "--role", "deploy", "--ttl", "2h")
    assert changed.stderr == "updated profile dev\n"
    assert credential("--profile", "dev")["AccessKeyId"] != first["AccessKeyId"]
    assert len(vault.issued) == 2


@pytest.mark.parametrize("kind", ["assumed_role", "federation_token", "session_token"])
def test_profile_add_refuses_a_ttl_sts_refuses(vault, kind):
    result = profile_add("short", "--mount", "aws", "--role", "deploy", "--ttl", "10m", "--credential-type", kind)
    assert_one_line_error(result, contains=f"below the 900s (15m) minimum AWS allows for {kind}", code=2)
    assert "short" not in run_broker("profile", "list").stdout


def test_a_short_ttl_of_an_unknown_type_is_a_warning_and_iam_user_is_fine(vault):
    warned = profile_add("maybe", "--mount", "aws", "--role", "ci", "--ttl", "5m")
    assert warned.returncode == 0
    assert warned.stderr.startswith("broker: warning: --ttl 300s is below the 900s minimum of STS credentials")
    fine = profile_add("ci", "--mount", "aws", "--role", "ci", "--ttl", "5m", "--credential-type", "iam_user")
    assert fine.returncode == 0 and fine.stderr == "added profile ci\n"
