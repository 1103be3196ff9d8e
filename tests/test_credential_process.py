"""credential-process end to end: the real broker process against the Vault double and moto."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest

from tests.support.brokerproc import ROOT, broker_argv, child_env, credential, run_broker
from tests.support.helpers import update_lease_times

ASSUMED_ROLE_ARN = "arn:aws:iam::123456789012:role/broker-assumed"


def ledger_rows(db_path: str) -> list[dict]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM leases ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def db_path(monkeypatch, tmp_path):
    import os

    return os.environ["BROKER_DB"]


def add_profile(name: str, *args: str) -> None:
    result = run_broker("profile", "add", name, *args)
    assert result.returncode == 0, result.stderr


def test_iam_user_credential_is_issued_recorded_cached_and_works(vault, aws_env, db_path):
    add_profile("ci", "--mount", "aws", "--role", "ci")
    first = credential("--profile", "ci")
    assert set(first) == {"Version", "AccessKeyId", "SecretAccessKey", "Expiration"}
    assert first["Version"] == 1 and first["Expiration"].endswith("Z")
    issued = vault.issued[-1]
    assert (issued.access_key, issued.secret_key) == (first["AccessKeyId"], first["SecretAccessKey"])

    rows = ledger_rows(db_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["lease_id"] == issued.lease_id and row["credential_type"] == "iam_user"
    assert row["mount"] == "aws" and row["role"] == "ci" and row["profile"] == "ci" and row["renewable"] == 1
    assert row["access_key_id"] == issued.access_key and row["state"] == "active"
    assert row["secret"] and issued.secret_key.encode() not in row["secret"]

    second = credential("--profile", "ci")
    assert second == first
    assert len(vault.issued) == 1

    sts = aws_env.client("sts", (first["AccessKeyId"], first["SecretAccessKey"]))
    assert issued.iam_user_name in sts.get_caller_identity()["Arn"]


@pytest.mark.parametrize("token_field", ["security_token", "session_token", "both"])
def test_assumed_role_gets_a_unique_recorded_session_name(vault, aws_env, db_path, token_field):
    vault.token_field = token_field
    add_profile("deploy", "--mount", "aws", "--role", "deploy", "--ttl", "1h")
    one = credential("--profile", "deploy")
    assert one["SessionToken"] == vault.issued[-1].session_token
    rows = ledger_rows(db_path)
    assert rows[0]["credential_type"] == "assumed_role"
    name = rows[0]["role_session_name"]
    assert name and name.startswith("broker-") and len(name) <= 64
    assert vault.issued[-1].arn.endswith("/" + name)
    # a fixed TTL of 1h: expiry within a few seconds of an hour from now
    expires = time.mktime(time.strptime(one["Expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3590 - 5 <= expires - time.time() <= 3600

    two = credential("--no-cache", "--profile", "deploy")
    assert two["AccessKeyId"] != one["AccessKeyId"]
    names = [r["role_session_name"] for r in ledger_rows(db_path)]
    assert len(set(names)) == 2

    ident = aws_env.client("sts", (one["AccessKeyId"], one["SecretAccessKey"], one["SessionToken"]))
    assert ident.get_caller_identity()["Arn"].endswith("/" + name)


@pytest.mark.parametrize(("role", "kind"), [("fed", "federation_token"), ("sess", "session_token")])
def test_other_sts_types(vault, aws_env, db_path, role, kind):
    out = credential("--mount", "aws", "--role", role, "--credential-type", kind, "--ttl", "20m")
    assert out["SessionToken"]
    row = ledger_rows(db_path)[0]
    assert row["credential_type"] == kind and row["endpoint"] == "sts" and row["profile"] is None
    assert row["role_session_name"] is None


def test_sts_without_a_lease_uses_data_ttl(vault, db_path):
    vault.no_lease_sts = True
    out = credential("--mount", "aws", "--role", "deploy", "--ttl", "30m")
    row = ledger_rows(db_path)[0]
    assert row["lease_id"] == ""
    assert 1790 <= row["expires_at"] - row["issued_at"] <= 1800
    assert credential("--mount", "aws", "--role", "deploy", "--ttl", "30m") == out
    assert len(vault.issued) == 1


def test_no_cache_records_the_lease_but_stores_no_secret(vault, db_path):
    a = credential("--mount", "aws", "--role", "ci", "--no-cache")
    b = credential("--mount", "aws", "--role", "ci", "--no-cache")
    assert a["AccessKeyId"] != b["AccessKeyId"]
    rows = ledger_rows(db_path)
    assert len(rows) == 2 and all(r["secret"] is None and r["cache_key"] is None for r in rows)
    # and a cached call afterwards does not pick up either of them
    c = credential("--mount", "aws", "--role", "ci")
    assert c["AccessKeyId"] not in {a["AccessKeyId"], b["AccessKeyId"]}


@pytest.mark.parametrize("how", ["mount-prefix", "env", "profile"])
def test_namespaces(vault, db_path, how):
    if how == "mount-prefix":
        out = credential("--mount", "team1/aws", "--role", "deploy")
    elif how == "env":
        out = credential("--mount", "aws", "--role", "deploy", env={"VAULT_NAMESPACE": "team1"})
    else:
        add_profile("t1", "--mount", "aws", "--role", "deploy", "--namespace", "team1")
        out = credential("--profile", "t1")
    issued = vault.issued[-1]
    assert issued.namespace == "team1" and out["AccessKeyId"] == issued.access_key
    row = ledger_rows(db_path)[0]
    assert row["namespace"] == "team1"
    assert row["lease_id"] == issued.lease_id and "." in row["lease_id"].rsplit("/", 1)[1]


def test_agent_address_wins_and_token_file_is_read(vault, tmp_path, monkeypatch):
    from tests.support.helpers import free_port

    monkeypatch.setenv("VAULT_AGENT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("VAULT_TOKEN")
    (tmp_path / "home" / ".vault-token").write_text(vault.root_token + "\n")
    assert credential("--mount", "aws", "--role", "ci")["AccessKeyId"] == vault.issued[-1].access_key


def test_twenty_cold_processes_make_one_vault_request(vault, db_path):
    add_profile("deploy", "--mount", "aws", "--role", "deploy")
    vault.latency = 0.2  # keep the first issuance in flight while the others arrive
    procs = [
        subprocess.Popen(
            broker_argv("credential-process", "--profile", "deploy"),
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert len(vault.issued) == 1
    assert all(o == outputs[0] for o in outputs)
    assert len(ledger_rows(db_path)) == 1


def test_different_profiles_do_not_wait_on_each_other(vault, db_path):
    add_profile("slow", "--mount", "aws", "--role", "deploy")
    add_profile("fast", "--mount", "aws", "--role", "fed")
    vault.inject_fault("hang", count=1, path_contains="/creds/deploy")
    slow = subprocess.Popen(
        broker_argv("credential-process", "--profile", "slow"),
        env=child_env({"BROKER_VAULT_TIMEOUT": "8"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # the slow one holds its lock and waits on Vault
    started = time.monotonic()
    fast = run_broker("credential-process", "--profile", "fast", timeout=30)
    elapsed = time.monotonic() - started
    assert fast.returncode == 0, fast.stderr
    _out, err = slow.communicate(timeout=30)
    assert "did not answer" in err  # the slow one really hung
    assert elapsed < 6, "a different profile waited for the hung one"


def test_botocore_reads_credentials_through_credential_process(vault, aws_env, tmp_path):
    import boto3

    add_profile("deploy", "--mount", "aws", "--role", "deploy")
    config = tmp_path / "aws" / "config"
    command = " ".join(broker_argv("credential-process", "--profile", "deploy"))
    config.write_text(f"[profile deploy]\ncredential_process = {command}\nregion = us-east-1\n")
    # the broker child inherits this test's environment (BROKER_DB, VAULT_*), plus PYTHONPATH
    import os

    os.environ["PYTHONPATH"] = str(ROOT)
    session = boto3.Session(profile_name="deploy")
    arn = session.client("sts", endpoint_url=aws_env.endpoint).get_caller_identity()["Arn"]
    assert ":assumed-role/" in arn and arn.endswith(vault.issued[-1].arn.rsplit("/", 1)[1])
    session.client("s3", endpoint_url=aws_env.endpoint).list_buckets()
    assert len(vault.issued) == 1


def test_a_cache_hit_loads_no_heavy_module(vault):
    add_profile("ci", "--mount", "aws", "--role", "ci")
    credential("--profile", "ci")
    probe = (
        "import sys, atexit\n"
        "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules))))\n"
        "sys.argv = ['broker', 'credential-process', '--profile', 'ci']\n"
        "from broker.entry import main\n"
        "main()\n"
    )
    import sys

    result = subprocess.run([sys.executable, "-c", probe], env=child_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["AccessKeyId"] == vault.issued[-1].access_key
    loaded = {m.split(".")[0] for m in result.stderr.split("MODULES ", 1)[1].split()}
    heavy = {"sqlalchemy", "alembic", "hvac", "requests", "urllib3", "click", "tabulate", "psycopg", "keyring"}
    assert not loaded & heavy
    assert len(vault.issued) == 1


def test_a_lease_that_cannot_be_recorded_is_revoked(vault, db_path):
    run_broker("profile", "list")  # creates the schema
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON leases BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    conn.commit()
    conn.close()
    result = run_broker("credential-process", "--mount", "aws", "--role", "ci")
    assert result.returncode == 6 and result.stdout == ""
    assert "revoked it in Vault" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    lease_id = vault.issued[-1].lease_id
    assert vault.revocations[lease_id] == 1 and lease_id not in vault.live_leases()
    assert vault.issued[-1].secret_key not in result.stderr


def test_renewable_lease_near_its_end_is_renewed_not_reissued(vault, db_path):
    first = credential("--mount", "aws", "--role", "ci")
    # pretend the hour has nearly passed: 10 minutes left
    update_lease_times(str(db_path), "issued_at = issued_at - 3000, expires_at = expires_at - 3000")
    again = credential("--mount", "aws", "--role", "ci")
    assert again["AccessKeyId"] == first["AccessKeyId"]
    assert len(vault.issued) == 1
    row = ledger_rows(db_path)[0]
    assert row["renewed_at"] is not None and row["expires_at"] - time.time() > 3000


def test_a_threaded_caller_issues_through_a_worker_process(vault, db_path):
    """In a multi-threaded process (the credential server) issuance runs in `broker _issue`."""
    import threading

    from broker import issuance
    from broker.app import App

    app = App()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(30,), daemon=True)
    other.start()
    try:
        request = issuance.build_request(app, None, {"mount": "aws", "role": "deploy"})
        got = issuance.obtain(app, request)
    finally:
        stop.set()
        other.join(5)
    assert got.access_key_id == vault.issued[-1].access_key and got.lease_row
    assert ledger_rows(db_path)[0]["lease_id"] == vault.issued[-1].lease_id
    assert issuance.obtain(app, request) == got


def test_a_wrong_credential_type_flag_does_not_mislabel_the_ledger(vault, db_path):
    """An STS credential stays STS in the ledger (revoke's warning and deny policy depend on it)."""
    out = credential("--mount", "aws", "--role", "deploy", "--credential-type", "iam_user", "--no-cache")
    assert out["SessionToken"]
    row = ledger_rows(db_path)[0]
    assert row["credential_type"] == "assumed_role" and row["role_session_name"]


@pytest.mark.parametrize("flags", [["--ttl", "0"], ["--credential-type", "bogus"], ["--ttl", "99h"]])
def test_the_cache_hit_path_rejects_what_the_cli_rejects(vault, flags):
    add_profile("deploy", "--mount", "aws", "--role", "deploy")
    credential("--profile", "deploy")
    result = run_broker("credential-process", "--profile", "deploy", *flags)
    assert result.returncode == 2 and result.stdout == ""


def test_a_held_issuance_lock_times_out_once(vault, db_path):
    from broker import cache, locks, settings

    add_profile("deploy", "--mount", "aws", "--role", "deploy")
    request = cache.merge_request({"mount": "aws", "role": "deploy"}, {})
    fd = locks.acquire(locks.lock_path(db_path, cache.cache_key(settings.load().vault_addr, "", request, "deploy")), 1)
    try:
        probe = (
            "import sys; from broker import fastpath, locks; locks.ISSUANCE_WAIT_SECONDS = 1.0\n"
            "sys.exit(fastpath.serve(['credential-process', '--profile', 'deploy']))\n"
        )
        import sys as _sys

        started = time.monotonic()
        result = subprocess.run(
            [_sys.executable, "-c", probe], env=child_env(), capture_output=True, text=True, timeout=30
        )
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
    assert result.returncode == 7 and "timed out after 1s" in result.stderr
    assert elapsed < 10
