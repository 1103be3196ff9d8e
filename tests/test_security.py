"""Secrets at rest and in output: encrypted in the database, absent from logs and errors; the key
can be lost, rotated or kept in the OS keyring without breaking anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import crypto, locks, profiles, settings
from broker.errors import UsageError
from tests.support.brokerproc import assert_one_line_error, broker_argv, child_env, credential, run_broker


def database_bytes() -> bytes:
    db = os.environ["BROKER_DB"]
    blob = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            blob += Path(db + suffix).read_bytes()
    return blob


def secrets_of(vault) -> list[str]:
    values = []
    for issued in vault.issued:
        values.append(issued.secret_key)
        if issued.session_token:
            values.append(issued.session_token)
    return values


def test_no_secret_is_stored_in_plaintext(vault):
    credential("--mount", "aws", "--role", "ci")
    credential("--mount", "aws", "--role", "deploy")
    credential("--mount", "aws", "--role", "fed", "--credential-type", "federation_token")
    credential("--mount", "aws", "--role", "sess", "--no-cache")
    values = secrets_of(vault)
    assert len(values) == 7
    stored = database_bytes()
    assert stored
    found = [v for v in values if v.encode() in stored or v[:16].encode() in stored]
    assert found == []


def test_verbose_logs_and_errors_never_show_a_secret_or_the_token(vault):
    result = run_broker("-vv", "credential-process", "--mount", "aws", "--role", "deploy")
    assert result.returncode == 0
    assert "issued assumed_role lease" in result.stderr
    hit = run_broker("credential-process", "--mount", "aws", "--role", "deploy", "-vv")
    assert "hit:" in hit.stderr and "cache key:" in hit.stderr
    again = run_broker("-vv", "credential-process", "--mount", "aws", "--role", "deploy", "--no-cache")
    listed = run_broker("-vv", "leases", "--wide")
    revoked = run_broker("-vv", "revoke", "--role", "deploy", "--yes")
    assert "revoked" in revoked.stderr
    pruned = run_broker("-vv", "prune")
    vault.sealed = True
    failed = run_broker("-vv", "credential-process", "--mount", "aws", "--role", "ci")
    text = "".join(r.stderr for r in (result, hit, again, failed))
    text += "".join(r.stdout + r.stderr for r in (listed, revoked, pruned))  # not the credentials on stdout
    for value in [*secrets_of(vault), vault.root_token]:
        assert value not in text


def test_a_lost_key_means_a_new_credential_not_a_crash(vault):
    first = credential("--mount", "aws", "--role", "deploy")
    os.unlink(crypto.key_file(settings.load()))
    second = credential("--mount", "aws", "--role", "deploy")
    assert second["AccessKeyId"] != first["AccessKeyId"]
    assert credential("--mount", "aws", "--role", "deploy") == second
    assert len(vault.issued) == 2


def test_a_replaced_key_discards_what_it_cannot_open(vault, monkeypatch):
    first = credential("--mount", "aws", "--role", "deploy")
    monkeypatch.setenv("BROKER_KEY", crypto.new_key_text())
    second = credential("--mount", "aws", "--role", "deploy")
    assert second["AccessKeyId"] != first["AccessKeyId"]


def test_rotation_reencrypts_and_keeps_serving(vault):
    first = credential("--mount", "aws", "--role", "deploy")
    old_key = Path(crypto.key_file(settings.load())).read_text()
    result = run_broker("key", "rotate")
    assert result.returncode == 0 and "1 secret(s) re-encrypted" in result.stderr
    assert Path(crypto.key_file(settings.load())).read_text() != old_key
    assert oct(os.stat(crypto.key_file(settings.load())).st_mode & 0o777) == "0o600"
    assert credential("--mount", "aws", "--role", "deploy") == first
    assert len(vault.issued) == 1
    status = run_broker("key", "status")
    assert "source: file" in status.stdout and "sealed cached secrets: 1" in status.stdout
    assert old_key.strip() not in status.stdout


def test_broker_key_from_the_environment(vault, monkeypatch):
    monkeypatch.setenv("BROKER_KEY", crypto.new_key_text())
    first = credential("--mount", "aws", "--role", "deploy")
    assert credential("--mount", "aws", "--role", "deploy") == first
    assert not os.path.exists(crypto.key_file(settings.load()))
    assert_one_line_error(run_broker("key", "rotate"), contains="BROKER_KEY", code=2)
    monkeypatch.setenv("BROKER_KEY", "too-short")
    assert_one_line_error(run_broker("credential-process", "--mount", "aws", "--role", "deploy"), contains="BROKER_KEY")


def test_os_keyring_holds_the_key_and_hits_use_the_runtime_copy(vault, monkeypatch, tmp_path):
    pytest.importorskip("keyrings.alt")
    monkeypatch.setenv("BROKER_KEY_STORE", "keyring")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    first = credential("--mount", "aws", "--role", "deploy")
    assert not os.path.exists(crypto.key_file(settings.load()))
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "broker" / "key"
    assert runtime.exists() and runtime.stat().st_mode & 0o777 == 0o600
    assert credential("--mount", "aws", "--role", "deploy") == first
    runtime.unlink()  # a new login session: the slow path reads the keyring again
    assert credential("--mount", "aws", "--role", "deploy") == first
    assert runtime.exists() and len(vault.issued) == 1


def test_a_stale_lock_file_never_blocks(vault, tmp_path):
    db = os.environ["BROKER_DB"]
    run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from broker import locks; locks.acquire(sys.argv[1], 5); "
            "print('held', flush=True); time.sleep(60)",
            locks.lock_path(db, "anything"),
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    with locks.try_hold(locks.lock_path(db, "anything")) as got:
        assert got
    start = time.monotonic()
    credential("--profile", "dev")
    assert time.monotonic() - start < 10


def test_verbose_issue_keeps_stdout_json_only(vault):
    result = run_broker("-v", "credential-process", "--mount", "aws", "--role", "deploy")
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("{")


def test_killed_caller_still_records_the_lease(vault):
    """kill -9 of credential-process while Vault works: the forked worker records the lease."""
    vault.latency = 0.8
    proc = subprocess.Popen(
        broker_argv("credential-process", "--mount", "aws", "--role", "deploy"),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not vault.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=10)
    import sqlite3

    def recorded():
        conn = sqlite3.connect(os.environ["BROKER_DB"])
        try:
            return conn.execute("SELECT lease_id FROM leases").fetchall()
        finally:
            conn.close()

    from tests.support.helpers import wait_for

    rows = wait_for(recorded, timeout=15)  # noqa
    assert [r[0] for r in rows] == [i.lease_id for i in vault.issued]


@given(st.text(max_size=80))
def test_profile_name_validation_property(name):
    try:
        accepted = profiles.check_profile_name(name)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert accepted == name and 1 <= len(name) <= 64
    assert "/" not in name and ".." not in name and name.isascii() and name.isprintable() and " " not in name


@given(st.text(max_size=60))
def test_mount_validation_property(mount):
    try:
        cleaned = profiles.check_path(mount, "mount")
    except UsageError:
        return
    assert all(seg not in ("", ".", "..") for seg in cleaned.split("/"))
    assert cleaned.isascii() and " " not in cleaned


def test_logs_show_access_key_ids_masked(vault):
    result = run_broker("-v", "credential-process", "--mount", "aws", "--role", "deploy")
    key = vault.issued[-1].access_key
    assert key not in result.stderr and f"...{key[-4:]}" in result.stderr
