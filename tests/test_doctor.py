"""`broker doctor`: one line per check, non-zero exit on any FAIL, nothing created or issued."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
from pathlib import Path

from tests.support.brokerproc import run_broker

LINE = re.compile(r"(ok  |warn|FAIL) \S.*")


def add_profile(name: str, *flags: str) -> None:
    from click.testing import CliRunner

    from broker.cli import cli

    result = CliRunner().invoke(cli, ["profile", "add", name, *flags])
    assert result.exit_code == 0, result.output


def doctor(env: dict | None = None) -> tuple[int, list[str]]:
    result = run_broker("doctor", env={"BROKER_VAULT_RETRY_SECONDS": "0.2", **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(LINE.fullmatch(line) for line in lines), result.stdout
    assert "root-token" not in result.stdout + result.stderr
    return result.returncode, lines


def line_for(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


def test_doctor_all_well(vault):
    add_profile("dev", "--mount", "aws", "--role", "deploy", "--credential-type", "assumed_role")
    add_profile("team", "--mount", "aws", "--role", "deploy", "--namespace", "team1")
    assert run_broker("key", "status").returncode == 0
    code, lines = doctor({"BROKER_KEY_STORE": "file"})
    assert code == 0, lines
    assert line_for(lines, "vault address").startswith("ok   vault address: http://127.0.0.1:")
    assert line_for(lines, "vault token") == "ok   vault token: never expires; policies: root"
    assert line_for(lines, "database schema") == "ok   database schema: revision 0002 (current)"
    assert line_for(lines, "profile dev:") == "ok   profile dev: aws/roles/deploy (assumed_role)"
    assert line_for(lines, "profile team:") == "ok   profile team: aws/roles/deploy in namespace team1 (assumed_role)"
    assert not os.path.exists(os.path.join(os.environ["XDG_CONFIG_HOME"], "broker", "key"))  # nothing created


def test_doctor_reports_missing_roles_and_mounts(vault):
    add_profile("gone", "--mount", "aws", "--role", "nosuch")
    add_profile("nomount", "--mount", "elsewhere", "--role", "deploy")
    add_profile("wrongtype", "--mount", "aws", "--role", "deploy", "--credential-type", "federation_token")
    code, lines = doctor()
    assert code == 1
    assert (
        line_for(lines, "profile gone:")
        == "FAIL profile gone: aws/roles/nosuch: Vault has no role 'nosuch' on mount 'aws'"
    )
    assert line_for(lines, "profile nomount:").startswith(
        "FAIL profile nomount: elsewhere/roles/deploy: Vault has no AWS"
    )
    assert line_for(lines, "profile wrongtype:").startswith("warn ") and "issues assumed_role" in lines[-1]


def test_a_token_that_cannot_read_roles_is_a_warning(vault):
    vault.add_token("limited-token", policies={"creds", "lookup"})
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    code, lines = doctor({"VAULT_TOKEN": "limited-token"})
    assert code == 0, lines
    assert line_for(lines, "vault token") == "ok   vault token: never expires; policies: creds, lookup"
    assert line_for(lines, "profile dev:").startswith("warn profile dev: aws/roles/deploy: cannot verify")
    assert "limited-token" not in "\n".join(lines)


def test_an_invalid_token_fails(vault):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    code, lines = doctor({"VAULT_TOKEN": "not-a-token"})
    assert code == 1
    assert line_for(lines, "vault reachable").startswith("ok ")
    assert line_for(lines, "vault token").startswith("FAIL vault token: denied")
    assert line_for(lines, "profile dev:").startswith("warn profile dev: aws/roles/deploy: not checked")


def test_vault_unreachable_and_bad_address():
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, lines = doctor({"VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_TOKEN": "t"})
    assert code == 1
    assert line_for(lines, "vault reachable").startswith("FAIL vault reachable: cannot connect to Vault")
    assert line_for(lines, "profile dev").startswith("warn ")
    code, lines = doctor({"VAULT_ADDR": "vault.example.com"})
    assert code == 1
    assert line_for(lines, "vault address").startswith(
        "FAIL vault address: VAULT_ADDR 'vault.example.com' is not a URL"
    )


def test_doctor_creates_no_database(vault):
    code, lines = doctor()
    assert code == 0, lines
    assert line_for(lines, "database:").startswith("warn database: ")
    assert not os.path.exists(os.environ["BROKER_DB"])


def test_unsafe_permissions_and_a_newer_schema_fail(vault):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    db = Path(os.environ["BROKER_DB"])
    key_file = Path(os.environ["XDG_CONFIG_HOME"]) / "broker" / "key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text("A" * 43 + "=\n")
    key_file.chmod(0o644)
    db.chmod(0o666)
    code, lines = doctor({"BROKER_KEY_STORE": "file"})
    assert code == 1
    assert line_for(lines, "database permissions").startswith(f"FAIL database permissions: {db} is writable by group")
    assert line_for(lines, "encryption key").startswith(f"FAIL encryption key: {key_file} is readable by group")

    db.chmod(0o600)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    code, lines = doctor({"BROKER_KEY": "not base64 of 32 bytes"})
    assert code == 1
    assert line_for(lines, "database schema").startswith("FAIL database schema: revision 9999 is newer")
    assert line_for(lines, "encryption key").startswith("FAIL encryption key: BROKER_KEY must be base64")
    assert "not base64 of 32 bytes" not in "\n".join(lines)


def test_token_lifetimes():
    from broker.doctor import _token_check

    assert _token_check({"ttl": 7200, "renewable": True, "policies": ["default", "aws"], "id": "s.secret"}).line() == (
        "ok   vault token: ttl 2h (renewable); policies: default, aws"
    )
    short = _token_check({"ttl": 300, "policies": ["default"]})
    assert short.status == "warn" and "expires in 5m" in short.what and "vault token renew" in short.what
