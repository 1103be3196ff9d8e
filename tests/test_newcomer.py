"""A newcomer's first hour: -v says what happened, global options after the command, idempotent
`profile add`, `broker list` and `clear`, exec without `--`, `--duration`, `export --unset`."""

from __future__ import annotations

import json
import sys

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


# -- what aws-vault users type ----------------------------------------------------------------------


def test_exec_without_dashes_runs_everything_after_the_profile(vault):
    assert profile_add("dev", "--mount", "aws", "--role", "deploy").returncode == 0
    code = (
        "import os, sys; print(os.environ['AWS_ACCESS_KEY_ID'], os.environ['AWS_CREDENTIAL_EXPIRATION'], sys.argv[1:])"
    )
    plain = run_broker("exec", "dev", sys.executable, "-c", code, "-v", "--server")
    assert plain.returncode == 0, plain.stderr
    key_id, _expiry, args = plain.stdout.split(" ", 2)
    assert args.strip() == "['-v', '--server']"  # the program's own arguments, untouched
    dashed = run_broker("exec", "dev", "--", sys.executable, "-c", code)
    assert dashed.stdout.split()[0] == key_id  # the same cached credential
    # --duration: this call's ttl (a separate request, so a separate credential)
    short = run_broker("exec", "--duration", "20m", "dev", sys.executable, "-c", code)
    assert short.returncode == 0, short.stderr
    assert short.stdout.split()[0] != key_id
    assert vault.issued[-1].ttl in (1199, 1200)


def test_list_shows_every_profile_with_its_live_credential_and_clear_drops_it(vault):
    profile_add("dev", "--mount", "aws", "--role", "deploy")
    profile_add("ci", "--mount", "aws", "--role", "ci")
    key_id = credential("--profile", "dev")["AccessKeyId"]
    rows = {r["profile"]: r for r in json.loads(run_broker("list", "--format", "json").stdout)}
    assert rows["dev"]["access_key_id"] == key_id and rows["dev"]["credential_type"] == "assumed_role"
    assert rows["dev"]["expires_at"].endswith("Z") and rows["dev"]["left"].startswith("59m")
    assert rows["ci"]["access_key_id"] is None
    table = run_broker("list").stdout
    assert "PROFILE" in table and key_id in table and "LEFT" in table

    cleared = run_broker("clear", "dev")
    assert cleared.returncode == 0 and cleared.stderr.startswith("cleared 1 cached credential of profile dev")
    assert json.loads(run_broker("list", "--format", "json").stdout)[1]["access_key_id"] is None
    leases = json.loads(run_broker("leases", "--format", "json").stdout)
    assert [r["state"] for r in leases] == ["active"]  # not revoked: the lease stays in the ledger
    assert credential("--profile", "dev")["AccessKeyId"] != key_id
    assert run_broker("clear").stderr.startswith("cleared 1 cached credential of every profile")
    assert_one_line_error(run_broker("clear", "nosuch"), contains="unknown profile 'nosuch'", code=3)


def test_export_duration_and_unset(vault):
    profile_add("dev", "--mount", "aws", "--role", "deploy", "--region", "eu-west-1")
    exported = run_broker("export", "dev", "--duration", "30m")
    assert exported.returncode == 0, exported.stderr
    assert "export AWS_ACCESS_KEY_ID=" in exported.stdout
    unset = run_broker("export", "dev", "--unset")
    assert unset.stdout.splitlines() == [
        "unset AWS_ACCESS_KEY_ID",
        "unset AWS_SECRET_ACCESS_KEY",
        "unset AWS_SESSION_TOKEN",
        "unset AWS_CREDENTIAL_EXPIRATION",
        "unset AWS_REGION",
        "unset AWS_DEFAULT_REGION",
    ]
    assert_one_line_error(run_broker("export", "dev", "--unset", "--format", "json"), contains="--unset", code=2)
