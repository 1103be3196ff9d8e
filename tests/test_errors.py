"""The error contract: one line on stderr, non-zero exit, empty stdout, no traceback, no secret,
and nothing written that claims a credential exists."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from tests.support.brokerproc import assert_one_line_error, credential, run_broker
from tests.support.helpers import free_port


def lease_count(db_path: str) -> int:
    if not os.path.exists(db_path):
        return 0
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT count(*) FROM leases").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@pytest.fixture
def db_path():
    return os.environ["BROKER_DB"]


@pytest.mark.parametrize(
    ("args", "contains", "code"),
    [
        (["credential-process", "--profile", "nope"], "unknown profile", 3),
        (["credential-process", "--mount", "aws"], "--role", 2),
        (["credential-process"], "--profile", 2),
        (["credential-process", "--mount", "aws", "--role", "ci", "--ttl", "5x"], "invalid duration", 2),
        (["credential-process", "--mount", "aws", "--role", "ci", "--ttl", "-5m"], "invalid duration", 2),
        (["credential-process", "--mount", "aws", "--role", "ci", "--ttl", "999h"], "out of range", 2),
        (["credential-process", "--mount", "aws/../sys", "--role", "ci"], "invalid mount", 2),
        (["credential-process", "--mount", "aws", "--role", ""], "", 2),
        (["credential-process", "--profile", "x", "--mount", "aws"], "not both", 2),
        (["profile", "add", "a/b", "--mount", "aws", "--role", "ci"], "invalid profile name", 2),
        (["profile", "add", "..", "--mount", "aws", "--role", "ci"], "invalid profile name", 2),
        (["profile", "add", "my profile", "--mount", "aws", "--role", "ci"], "invalid profile name", 2),
        (["profile", "add", "bad\x07name", "--mount", "aws", "--role", "ci"], "invalid profile name", 2),
        (["profile", "add", "ok", "--role", "ci"], "--mount", 2),
        (["profile", "remove", "ghost"], "unknown profile", 3),
        (["no-such-command"], "no such command", 2),
    ],
)
def test_bad_input(args, contains, code):
    assert_one_line_error(run_broker(*args), contains=contains, code=code)


def test_unreachable_vault(monkeypatch, db_path):
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("BROKER_VAULT_RETRY_SECONDS", "0.5")
    assert_one_line_error(run_broker("credential-process", "--mount", "aws", "--role", "ci"), contains="cannot connect")
    assert lease_count(db_path) == 0


@pytest.mark.parametrize(
    ("setup", "contains"),
    [
        (lambda v: setattr(v, "sealed", True), "sealed"),
        (lambda v: v.inject_fault(403, count=10), "denied"),
        (lambda v: v.inject_fault(500, count=10), "500"),
        (lambda v: v.inject_fault(502, count=10), "502"),
        (lambda v: v.inject_fault(429, count=10), "rate-limited"),
        (lambda v: v.inject_fault("malformed", count=10), "not vault's json"),
        (lambda v: v.inject_fault("html", count=10), "not vault's json"),
        (lambda v: v.inject_fault("missing_access_key", count=10), "no access_key"),
        (lambda v: v.inject_fault("hang", count=1, path_contains="aws/creds"), "did not answer"),
    ],
)
def test_vault_faults_without_a_cached_credential(vault, monkeypatch, db_path, setup, contains):
    monkeypatch.setenv("BROKER_VAULT_TIMEOUT", "1")
    monkeypatch.setenv("BROKER_VAULT_RETRY_SECONDS", "0.5")
    setup(vault)
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy", timeout=30)
    assert_one_line_error(result, contains=contains, code=4)
    assert lease_count(db_path) == 0
    for issued in vault.issued:
        assert issued.secret_key not in result.stderr


def test_unknown_role_and_bad_token(vault, monkeypatch):
    assert_one_line_error(
        run_broker("credential-process", "--mount", "aws", "--role", "nope"), contains='Role "nope" not found', code=4
    )
    monkeypatch.setenv("VAULT_TOKEN", "wrong-token")
    assert_one_line_error(run_broker("credential-process", "--mount", "aws", "--role", "ci"), contains="denied", code=4)


def test_unknown_mount(vault):
    assert_one_line_error(run_broker("credential-process", "--mount", "nomount", "--role", "ci"), code=4)


def test_transient_faults_are_retried(vault):
    vault.inject_fault(503, count=1)
    vault.inject_fault(429, count=1)
    vault.inject_fault("reset", count=1)
    assert credential("--mount", "aws", "--role", "deploy")["AccessKeyId"] == vault.issued[-1].access_key


def test_cached_credential_is_served_while_vault_is_down(vault, monkeypatch):
    first = credential("--mount", "aws", "--role", "deploy")
    vault.sealed = True
    assert credential("--mount", "aws", "--role", "deploy") == first
    vault.stop()
    assert credential("--mount", "aws", "--role", "deploy") == first


def test_corrupt_database(db_path):
    os.makedirs(os.path.dirname(db_path), mode=0o700, exist_ok=True)
    with open(db_path, "wb") as handle:
        handle.write(b"this is not a database" * 100)
    os.chmod(db_path, 0o600)
    assert_one_line_error(run_broker("profile", "list"), contains="not a broker database", code=5)


def test_truncated_database(vault, db_path):
    credential("--mount", "aws", "--role", "ci")
    run_broker("profile", "list")
    size = os.path.getsize(db_path)
    with open(db_path, "r+b") as handle:
        handle.truncate(size // 3)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.unlink(db_path + suffix)
    result = run_broker("credential-process", "--mount", "aws", "--role", "ci")
    assert_one_line_error(result, code=5)


def test_directory_at_database_path(db_path):
    os.makedirs(db_path)
    assert_one_line_error(run_broker("profile", "list"), contains="is a directory", code=5)


def test_unwritable_database_directory(tmp_path):
    if os.getuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_one_line_error(run_broker("--db", str(locked / "sub" / "b.db"), "profile", "list"), code=5)


def test_database_path_under_a_file(tmp_path):
    (tmp_path / "plainfile").write_text("x")
    assert_one_line_error(
        run_broker("--db", str(tmp_path / "plainfile" / "b.db"), "profile", "list"), contains="cannot create", code=5
    )


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o720])
def test_unsafe_directory_permissions_are_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    assert_one_line_error(run_broker("--db", str(shared / "b.db"), "profile", "list"), contains="chmod 700", code=5)


def test_unsafe_file_permissions_are_refused(db_path):
    run_broker("profile", "list")
    os.chmod(db_path, 0o666)
    assert_one_line_error(run_broker("profile", "list"), contains="chmod 600", code=5)


def test_vault_addr_that_is_not_a_url(monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", "vault.example.com")
    assert_one_line_error(
        run_broker("credential-process", "--mount", "aws", "--role", "ci"), contains="not a URL", code=2
    )


def test_newer_schema_is_refused_never_downgraded(db_path):
    run_broker("profile", "list")
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    assert_one_line_error(run_broker("profile", "list"), contains="newer than this broker", code=5)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("9999",)


@pytest.fixture
def immutable(tmp_path):
    """chattr +i on a path (a read-only file even for root); undone afterwards."""
    marked = []

    def mark(path):
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_read_only_database(vault, db_path, immutable):
    credential("--mount", "aws", "--role", "ci")
    run_broker("profile", "list")  # checkpoint: everything in the main file
    immutable(db_path)
    assert_one_line_error(
        run_broker("profile", "add", "x", "--mount", "aws", "--role", "ci"), contains="not writable", code=5
    )
    # a cache hit only reads, and is still served
    assert credential("--mount", "aws", "--role", "ci")["AccessKeyId"] == vault.issued[-1].access_key


def test_a_read_timeout_on_issuance_is_not_retried(vault, monkeypatch):
    """Each retry of creds/ would mint another IAM user: a timed-out issuance is asked once."""
    monkeypatch.setenv("BROKER_VAULT_TIMEOUT", "1")
    vault.inject_fault("hang", count=5)
    result = run_broker("credential-process", "--mount", "aws", "--role", "ci", timeout=30)
    assert_one_line_error(result, contains="not retried", code=4)
    assert [path for _method, path in vault.requests if "/creds/" in path] == ["/v1/aws/creds/ci"]
