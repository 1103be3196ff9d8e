"""`broker renew`, and credential-process renewing a cached iam_user lease near its end
(broker.issuance.renew_cached) with its fallback to a new issuance when the max TTL caps it."""

from __future__ import annotations

import json
import os
import sqlite3
import time

from tests.support.brokerproc import run_broker
from tests.support.helpers import update_lease_times


def issue(*args):
    proc = run_broker("credential-process", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def row_of(key_id):
    conn = sqlite3.connect(os.environ["BROKER_DB"])
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM leases WHERE access_key_id = ?", (key_id,)).fetchone())
    finally:
        conn.close()


def test_renew_extends_iam_user_leases_and_reports_sts_as_not_renewable(vault, cli):
    ci = issue("--mount", "aws", "--role", "ci")
    deploy = issue("--mount", "aws", "--role", "deploy")
    before = row_of(ci["AccessKeyId"])

    started = int(time.time())
    proc = cli(["renew", "--all", "--increment", "2h"])
    assert proc.returncode == 0, proc.stderr
    assert "1 renewed, 1 not renewable" in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if before["access_key_id"] in line)
    assert " renewed " in line

    after = row_of(ci["AccessKeyId"])
    assert started + 7200 - 5 <= after["expires_at"] <= int(time.time()) + 7200
    assert after["renewed_at"] >= started
    assert row_of(deploy["AccessKeyId"])["expires_at"] == row_of(deploy["AccessKeyId"])["expires_at"]
    sts_line = next(line for line in proc.stdout.splitlines() if "assumed_role" in line)
    assert "not_renewable" in sts_line


def test_renew_capped_by_max_ttl_records_what_vault_granted(vault, cli):
    ci = issue("--mount", "aws", "--role", "ci")
    lease_id = row_of(ci["AccessKeyId"])["lease_id"]
    vault.backdate_lease(lease_id, 86400 - 600)  # role ci: max TTL 24h, so ~10 minutes are left to grant
    proc = cli(["renew", "--lease-id", lease_id, "--increment", "1h"])
    assert proc.returncode == 0, proc.stderr
    assert "capped" in proc.stdout
    assert row_of(ci["AccessKeyId"])["expires_at"] <= int(time.time()) + 600


def test_renew_failures_exit_non_zero_and_unknown_leases_are_usage_errors(vault, monkeypatch, cli):
    issue("--mount", "aws", "--role", "ci")
    vault.add_token("no-renew", policies={"creds", "lookup", "revoke"})
    monkeypatch.setenv("VAULT_TOKEN", "no-renew")
    proc = cli(["renew", "--all"])
    assert proc.returncode == 8
    assert "1 failed" in proc.stdout and "403" in proc.stdout

    proc = cli(["renew", "--lease-id", "aws/creds/ci/nosuch"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert "in the ledger" in proc.stderr

    proc = cli(["renew"])
    assert proc.returncode == 2


def _near_its_end(key_id):
    """Make the cached lease no longer a cache hit (under 15 minutes left) but still renewable."""
    now = int(time.time())
    update_lease_times(
        os.environ["BROKER_DB"],
        "issued_at = ?, expires_at = ?",
        "access_key_id = ?",
        (key_id,),
        values=(now - 3000, now + 600),
    )


def test_credential_process_renews_a_cached_iam_user_lease_near_its_end(vault):
    first = issue("--mount", "aws", "--role", "ci")
    _near_its_end(first["AccessKeyId"])
    issued = len(vault.issued)

    again = issue("--mount", "aws", "--role", "ci")
    assert again["AccessKeyId"] == first["AccessKeyId"]
    assert len(vault.issued) == issued  # no new IAM user
    row = row_of(first["AccessKeyId"])
    assert row["renewed_at"] is not None
    assert row["expires_at"] >= int(time.time()) + 3600 - 10


def test_credential_process_issues_anew_when_the_max_ttl_caps_the_renewal(vault):
    first = issue("--mount", "aws", "--role", "ci")
    _near_its_end(first["AccessKeyId"])
    vault.backdate_lease(row_of(first["AccessKeyId"])["lease_id"], 86400 - 300)
    issued = len(vault.issued)

    again = issue("--mount", "aws", "--role", "ci")
    assert again["AccessKeyId"] != first["AccessKeyId"]
    assert len(vault.issued) == issued + 1
