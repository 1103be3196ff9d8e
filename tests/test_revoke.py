"""`broker revoke`: selection, confirmation rules, Vault revocation in the lease's namespace, ledger
marking, partial failure and rerun, --prefix, and the STS deny policies (pure unit tests first)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from broker import policies as deny
from broker.bulk import Target
from tests.support.helpers import wait_for
from tests.support.ledger_seed import seed_leases

NOW = 1_780_000_000  # 2026-05-28T20:26:40Z


def _target(**fields) -> Target:
    base = dict(
        lease_id="aws/sts/deploy/x",
        namespace="",
        credential_type="assumed_role",
        access_key_id="ASIA1",
        role="deploy",
        mount="aws",
        role_session_name="broker-a-1",
        expires_at=NOW + 3600,
        issued_at=NOW - 60,
        vault_addr="http://v",
        row_id=1,
    )
    base.update(fields)
    return Target(**base)


# -- the deny-policy builder (pure) --------------------------------------------------------------------


def test_deny_policies_for_assumed_role_sessions_and_role_wide():
    targets = [
        _target(role_session_name="s-1"),
        _target(role_session_name="s-2", lease_id="aws/sts/deploy/y"),
    ]
    policies = deny.deny_policies(targets, NOW)
    assert [p.scope for p in policies] == ["sessions", "issued-before"]
    sessions, before = policies
    statement = sessions.policy["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Action"] == "*" and statement["Resource"] == "*"
    assert statement["Condition"] == {"StringLike": {"aws:userid": ["*:s-1", "*:s-2"]}}
    assert sessions.attach_to == "role" and sessions.principal == deny.ROLE_PLACEHOLDER
    assert sessions.lease_count == 2
    assert before.policy["Statement"][0]["Condition"] == {
        "DateLessThan": {"aws:TokenIssueTime": "2026-05-28T20:26:40Z"}
    }
    command = sessions.command()
    assert command.startswith("aws iam put-role-policy --role-name ROLE_NAME --policy-name broker-deny-sessions-")
    assert json.loads(command.split("--policy-document ", 1)[1].strip("'")) == sessions.policy


def test_deny_policies_use_role_id_and_role_name_when_known():
    arn = "arn:aws:iam::123456789012:role/path/DeployRole"
    policies = deny.deny_policies([_target(role_arn=arn)], NOW, role_id="AROAEXAMPLE")
    assert policies[0].principal == "DeployRole"
    assert policies[0].policy["Statement"][0]["Condition"] == {
        "StringEquals": {"aws:userid": ["AROAEXAMPLE:broker-a-1"]}
    }


def test_deny_policies_without_session_names_fall_back_to_role_wide():
    policies = deny.deny_policies([_target(), _target(role_session_name=None, lease_id="aws/sts/deploy/z")], NOW)
    assert [p.scope for p in policies] == ["issued-before"]


def test_deny_policies_for_federation_and_session_tokens_go_on_the_vault_user_once_per_mount():
    targets = [
        _target(credential_type="federation_token", role="fed", role_session_name=None),
        _target(credential_type="session_token", role="sess", role_session_name=None),
        _target(credential_type="iam_user", role="ci", role_session_name=None),
    ]
    policies = deny.deny_policies(targets, NOW)
    assert len(policies) == 1
    (policy,) = policies
    assert policy.attach_to == "user" and policy.principal == deny.VAULT_USER_PLACEHOLDER
    assert policy.credential_type == "federation_token, session_token" and policy.lease_count == 2
    assert "put-user-policy --user-name VAULT_IAM_USER" in policy.command()


def test_deny_policies_split_many_sessions_under_the_iam_size_limit():
    names = [f"broker-someone-20260528T202640-{i:08x}" for i in range(600)]
    targets = [_target(role_session_name=n, lease_id=f"aws/sts/deploy/{i}") for i, n in enumerate(names)]
    sessions = [p for p in deny.deny_policies(targets, NOW) if p.scope == "sessions"]
    assert len(sessions) > 1
    assert len({p.policy_name for p in sessions}) == len(sessions)
    covered = [n for p in sessions for n in p.policy["Statement"][0]["Condition"]["StringLike"]["aws:userid"]]
    assert sorted(covered) == sorted(f"*:{n}" for n in names)
    assert all(len(json.dumps(p.policy, separators=(",", ":"))) <= 10_240 for p in sessions)
    assert sum(p.lease_count for p in sessions) == 600


def test_no_deny_policy_for_iam_users_or_nothing():
    assert deny.deny_policies([], NOW) == []
    assert deny.deny_policies([_target(credential_type="iam_user", role_session_name=None)], NOW) == []


# -- helpers -------------------------------------------------------------------------------------------


def run(args, *, timeout=60, env=None, stdin=subprocess.DEVNULL):
    """`python -m broker ARGS` in a child process (the environment, with the worktree on PYTHONPATH)."""
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=stdin,
    )


def issue(*args):
    proc = run(["credential-process", *args])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ledger(where="1=1"):
    conn = sqlite3.connect(os.environ["BROKER_DB"])
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM leases WHERE {where} ORDER BY id")]
    finally:
        conn.close()


def lease_for(key_id):
    (row,) = ledger(f"access_key_id = '{key_id}'")
    return row


def aws_works(moto_server, creds) -> bool:
    from botocore.exceptions import ClientError

    client = moto_server.client("sts", (creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("SessionToken")))
    try:
        client.get_caller_identity()
        return True
    except ClientError:
        return False


# -- flags and confirmation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--all", "--role", "ci"],
        ["--lease-id", "x", "--profile", "p"],
        ["--prefix", "--role", "ci"],
        ["--prefix", "--all"],
    ],
)
def test_bad_selections_are_usage_errors(args, cli):
    proc = cli(["revoke", "--yes", *args])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("broker: ") and proc.stderr.count("\n") == 1


def test_without_a_terminal_revoke_needs_yes_or_dry_run(vault):
    creds = issue("--mount", "aws", "--role", "ci")
    proc = run(["revoke", "--all"])  # a real process with stdin on /dev/null
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--yes" in proc.stderr and "--dry-run" in proc.stderr
    row = lease_for(creds["AccessKeyId"])
    assert row["state"] == "active" and row["secret"] is not None
    assert vault.revoke_calls == []


def test_dry_run_changes_nothing(vault, cli):
    creds = issue("--mount", "aws", "--role", "ci")
    proc = cli(["revoke", "--all", "--dry-run", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True
    assert [lease["result"] for lease in report["leases"]] == ["would_revoke"]
    assert vault.revoke_calls == []
    row = lease_for(creds["AccessKeyId"])
    assert row["state"] == "active" and row["secret"] is not None


# -- iam_user: revoke really kills the key -------------------------------------------------------------


def test_revoking_an_iam_user_lease_deletes_the_key_and_the_cache_issues_anew(vault, aws_env, moto_server, cli):
    creds = issue("--mount", "aws", "--role", "ci")
    assert aws_works(moto_server, creds)
    row = lease_for(creds["AccessKeyId"])
    user = next(i.iam_user_name for i in vault.issued if i.access_key == creds["AccessKeyId"])

    proc = cli(["revoke", "--lease-id", row["lease_id"], "--yes"])
    assert proc.returncode == 0, proc.stderr
    assert "1 revoked" in proc.stdout

    row = lease_for(creds["AccessKeyId"])
    assert row["state"] == "revoked" and row["revoked_at"] and row["revoked_by"]
    assert row["secret"] is None and row["revoke_error"] is None
    assert row["lease_id"] not in vault.live_leases()
    iam = moto_server.client("iam")
    assert creds["AccessKeyId"] not in {
        k["AccessKeyId"]
        for u in iam.list_users()["Users"]
        if u["UserName"] == user
        for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    }
    assert not aws_works(moto_server, creds)

    fresh = issue("--mount", "aws", "--role", "ci")
    assert fresh["AccessKeyId"] != creds["AccessKeyId"]


def test_already_revoked_and_unknown_leases_are_not_errors(vault, cli):
    creds = issue("--mount", "aws", "--role", "ci")
    lease_id = lease_for(creds["AccessKeyId"])["lease_id"]
    assert cli(["revoke", "--lease-id", lease_id, "--yes"]).returncode == 0
    proc = cli(
        [
            "revoke",
            "--lease-id",
            lease_id,
            "--lease-id",
            "aws/creds/ci/nosuchlease",
            "--yes",
            "--format",
            "json",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    results = {lease["lease_id"]: lease["result"] for lease in json.loads(proc.stdout)["leases"]}
    assert results == {lease_id: "already_revoked", "aws/creds/ci/nosuchlease": "not_in_ledger"}
    assert vault.revoke_calls.count(lease_id) == 1  # the already-revoked one was not sent again


# -- partial failure and rerun -------------------------------------------------------------------------


def test_token_without_revoke_capability_leaves_rows_active_and_a_rerun_finishes(vault, monkeypatch, cli):
    first = issue("--mount", "aws", "--role", "ci")
    second = issue("--mount", "aws", "--role", "ci", "--no-cache")
    third = issue("--mount", "aws", "--role", "deploy")
    keys = [first["AccessKeyId"], second["AccessKeyId"], third["AccessKeyId"]]
    vault.add_token("no-revoke", policies={"creds", "lookup", "renew"})

    monkeypatch.setenv("VAULT_TOKEN", "no-revoke")
    proc = cli(["revoke", "--all", "--yes"])
    assert proc.returncode == 8, proc.stderr
    assert "3 failed" in proc.stdout
    assert "3 of 3 revocations failed" in proc.stderr
    rows = [lease_for(k) for k in keys]
    assert all(r["state"] == "active" for r in rows)
    assert all("403" in r["revoke_error"] for r in rows)
    assert all(r["secret"] is None for r in rows)  # never served again, even though Vault said no
    assert {r["lease_id"] for r in rows} <= vault.live_leases()
    assert not any(k in proc.stdout + proc.stderr for k in (first["SecretAccessKey"], third["SessionToken"]))

    monkeypatch.setenv("VAULT_TOKEN", vault.root_token)
    vault.revoke_calls.clear()
    proc = cli(["revoke", "--all", "--yes"])
    assert proc.returncode == 0, proc.stderr
    assert "3 revoked" in proc.stdout
    assert sorted(vault.revoke_calls) == sorted(r["lease_id"] for r in rows)
    assert all(lease_for(k)["state"] == "revoked" and lease_for(k)["revoke_error"] is None for k in keys)

    vault.revoke_calls.clear()
    proc = cli(["revoke", "--all", "--yes"])
    assert proc.returncode == 0 and "nothing to revoke" in proc.stdout
    assert vault.revoke_calls == []


def test_one_failure_among_many_is_listed_with_the_successes(vault, cli):
    for _ in range(3):
        issue("--mount", "aws", "--role", "deploy", "--no-cache")
    vault.inject_fault(403, count=1, path_contains="sys/leases/revoke")
    proc = cli(["revoke", "--role", "deploy", "--yes", "--format", "json"])
    assert proc.returncode == 8
    report = json.loads(proc.stdout)
    assert report["summary"]["revoked"] == 2 and report["summary"]["failed"] == 1
    failed = [lease for lease in report["leases"] if lease["result"] == "failed"]
    assert "403" in failed[0]["error"]
    active = ledger("state = 'active'")
    assert [r["lease_id"] for r in active] == [failed[0]["lease_id"]]

    proc = cli(["revoke", "--role", "deploy", "--yes", "--format", "json"])
    assert proc.returncode == 0
    assert [lease["lease_id"] for lease in json.loads(proc.stdout)["leases"]] == [failed[0]["lease_id"]]


# -- STS honesty ---------------------------------------------------------------------------------------


def test_sts_revoke_says_the_credentials_stay_valid_and_prints_the_deny_policy(vault, aws_env, moto_server, cli):
    creds = issue("--mount", "aws", "--role", "deploy")
    row = lease_for(creds["AccessKeyId"])
    assert row["role_session_name"]

    proc = cli(["revoke", "--role", "deploy", "--yes"])
    assert proc.returncode == 0, proc.stderr
    assert "Vault cannot invalidate STS credentials" in proc.stdout
    assert "This credential (1 assumed_role) stays valid until its expires_at" in proc.stdout
    assert f"*:{row['role_session_name']}" in proc.stdout
    assert "aws:TokenIssueTime" in proc.stdout
    assert aws_works(moto_server, creds)  # exactly what the warning says
    assert lease_for(creds["AccessKeyId"])["state"] == "revoked"


def test_json_report_of_a_mixed_run(vault, cli):
    issue("--mount", "aws", "--role", "ci")
    deploy = issue("--mount", "aws", "--role", "deploy")
    issue("--mount", "aws", "--role", "fed", "--credential-type", "federation_token")
    proc = cli(["revoke", "--all", "--yes", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["revoked"] == 3 and report["summary"]["failed"] == 0
    assert {lease["credential_type"] for lease in report["leases"]} == {
        "iam_user",
        "assumed_role",
        "federation_token",
    }
    assert report["sts"]["count"] == 2 and "cannot invalidate" in report["sts"]["warning"]
    scopes = {(p["credential_type"], p["scope"], p["attach_to"]) for p in report["sts"]["deny_policies"]}
    assert scopes == {
        ("assumed_role", "sessions", "role"),
        ("assumed_role", "issued-before", "role"),
        ("federation_token", "issued-before", "user"),
    }
    session_name = lease_for(deploy["AccessKeyId"])["role_session_name"]
    assert any(f"*:{session_name}" in p["command"] for p in report["sts"]["deny_policies"])


def test_lease_is_revoked_in_the_namespace_it_was_issued_in(vault, cli):
    assert cli(["profile", "add", "t1", "--mount", "aws", "--role", "deploy", "--namespace", "team1"]).returncode == 0
    creds = issue("--profile", "t1")
    row = lease_for(creds["AccessKeyId"])
    assert row["namespace"] == "team1" and row["lease_id"] in vault.live_leases()
    proc = cli(["revoke", "--profile", "t1", "--yes"])
    assert proc.returncode == 0, proc.stderr
    assert row["lease_id"] not in vault.live_leases()
    assert lease_for(creds["AccessKeyId"])["state"] == "revoked"


# -- --prefix ------------------------------------------------------------------------------------------


def test_prefix_revokes_server_side_and_marks_rows(vault, monkeypatch, cli):
    creds = issue("--mount", "aws", "--role", "deploy")
    vault.add_token("no-sudo", policies={"creds", "lookup", "renew", "revoke"})
    monkeypatch.setenv("VAULT_TOKEN", "no-sudo")
    proc = cli(["revoke", "--prefix", "--role", "deploy", "--mount", "aws", "--yes"])
    assert proc.returncode == 8
    assert "FAILED: sys/leases/revoke-prefix/aws/creds/deploy" in proc.stdout
    assert lease_for(creds["AccessKeyId"])["state"] == "active"

    monkeypatch.setenv("VAULT_TOKEN", vault.root_token)
    proc = cli(["revoke", "--prefix", "--role", "deploy", "--mount", "aws", "--yes", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {(c["namespace"], c["prefix"], c["ok"]) for c in report["prefix_calls"]} == {
        ("", "aws/creds/deploy", True),
        ("", "aws/sts/deploy", True),
    }
    assert {"aws/creds/deploy", "aws/sts/deploy"} <= set(vault.prefix_revoke_calls)
    assert lease_for(creds["AccessKeyId"])["state"] == "revoked"
    assert not any(lease.startswith("aws/creds/deploy/") for lease in vault.live_leases())


# -- many leases, bounded concurrency, commits as results arrive ---------------------------------------


def test_many_leases_are_all_revoked_once(vault, cli):
    db = os.environ["BROKER_DB"]
    seed_leases(db, 300, credential_type="assumed_role", role="deploy", vault_addr=vault.url, tag="many")
    proc = cli(["revoke", "--all", "--yes", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["revoked"] == 300
    assert len(vault.revoke_calls) == 300 and len(set(vault.revoke_calls)) == 300
    assert ledger("state != 'revoked'") == []


def test_a_killed_run_keeps_what_it_revoked_and_a_rerun_finishes(vault, monkeypatch, cli):
    db = os.environ["BROKER_DB"]
    seed_leases(db, 200, credential_type="assumed_role", role="deploy", vault_addr=vault.url, tag="kill")
    vault.latency = 0.05
    monkeypatch.setenv("BROKER_REVOKE_CONCURRENCY", "4")
    child = subprocess.Popen(
        [sys.executable, "-m", "broker", "revoke", "--all", "--yes"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(vault.revoke_calls) >= 60, timeout=30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    marked = {r["lease_id"] for r in ledger("state = 'revoked'")}
    assert marked, "results are committed as they arrive, not at the end"
    assert marked <= set(vault.revoke_calls)  # nothing is marked that Vault was not asked to revoke
    assert len(marked) < 200

    vault.latency = 0.0
    proc = cli(["revoke", "--all", "--yes", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["revoked"] == 200 - len(marked)
    assert ledger("state != 'revoked'") == []


def test_revoke_leaves_expired_rows_alone(vault, cli):
    db = os.environ["BROKER_DB"]
    seed_leases(db, 5, expired=True, vault_addr=vault.url, tag="old")
    proc = cli(["revoke", "--all", "--yes"])
    assert proc.returncode == 0 and "nothing to revoke" in proc.stdout
    assert vault.revoke_calls == []


# -- on a terminal: confirmation and progress -------------------------------------------------------------


def _on_a_terminal(args, answer: bytes, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run broker with stdin and stderr on a pseudo-terminal, answer the prompt, collect the output."""
    import pty
    import select

    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(master, answer)
                answered = True
            if child.poll() is not None and not ready:
                break
        out = child.stdout.read().decode()
        code = child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        child.stdout.close()
        os.close(master)
    return code, out, seen.decode(errors="replace")


def test_a_terminal_is_asked_and_no_means_nothing_happens(vault):
    seed_leases(os.environ["BROKER_DB"], 5, credential_type="assumed_role", role="deploy", vault_addr=vault.url)
    code, out, terminal = _on_a_terminal(["revoke", "--all"], b"n\n")
    assert "Revoke 5 leases (all active leases: 5 assumed_role)? [y/N]" in terminal
    assert code == 1 and "aborted" in terminal and out == ""
    assert vault.revoke_calls == []
    assert ledger("state = 'revoked'") == []


def test_a_terminal_that_says_yes_gets_a_progress_bar(vault):
    seed_leases(os.environ["BROKER_DB"], 40, credential_type="assumed_role", role="deploy", vault_addr=vault.url)
    code, out, terminal = _on_a_terminal(["revoke", "--all"], b"y\n")
    assert code == 0, terminal
    assert "revoking" in terminal and "100%" in terminal
    assert out.startswith("revoke (all active leases): 40 revoked")
    assert len(ledger("state = 'revoked'")) == 40
