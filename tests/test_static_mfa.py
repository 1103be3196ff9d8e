"""The rest of Vault's AWS engine: static roles (credential type `static`: no lease, cached until Vault
rotates the key) and session_token roles with MFA (--mfa-code, or a prompt on the controlling terminal)."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time
import uuid

from tests.support.brokerproc import ROOT, assert_one_line_error, child_env, credential, run_broker

MFA_SERIAL = "arn:aws:iam::123456789012:mfa/dev"


def static_reads(vault) -> int:
    return sum(1 for _method, path in vault.requests if "/static-creds/" in path)


def test_a_static_role_is_cached_until_rotation_listed_without_a_lease_and_not_revoked(vault):
    vault.add_static_role("legacy", rotation_period=3600, username=f"static-{uuid.uuid4().hex[:12]}")
    add = run_broker("profile", "add", "st", "--mount", "aws", "--role", "legacy", "--credential-type", "static")
    assert add.returncode == 0, add.stderr
    first = credential("--profile", "st")
    assert "SessionToken" not in first
    assert credential("--profile", "st") == first  # a cache hit
    assert static_reads(vault) == 1
    # the same key for every reader: an ad-hoc request reads it again and gets the same key
    assert (
        credential("--mount", "aws", "--role", "legacy", "--credential-type", "static")["AccessKeyId"]
        == (first["AccessKeyId"])
    )
    rows = json.loads(run_broker("leases", "--format", "json", "--profile", "st").stdout)
    assert [(r["lease_id"], r["credential_type"], r["access_key_id"]) for r in rows] == [
        ("", "static", first["AccessKeyId"])
    ]
    # cached until its expiration: Vault's rotation time
    expiry = time.strptime(first["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
    assert 3500 < time.mktime(expiry) - time.mktime(time.gmtime()) <= 3600

    revoked = run_broker("revoke", "--profile", "st", "--yes")
    assert revoked.returncode == 0, revoked.stderr
    assert "1 not revocable" in revoked.stdout
    assert "static role credentials have no lease, so Vault has nothing to revoke" in revoked.stdout
    assert not [p for _m, p in vault.requests if "sys/leases/revoke" in p]


def test_doctor_reads_a_static_role(vault):
    vault.add_static_role("legacy", username=f"static-{uuid.uuid4().hex[:12]}")  # moto outlives the test
    run_broker("profile", "add", "st", "--mount", "aws", "--role", "legacy", "--credential-type", "static")
    result = run_broker("doctor")
    assert "ok   profile st: aws/static-roles/legacy (static, rotated every 3600s)" in result.stdout


def mfa_role(vault) -> None:
    vault.add_role("aws", "mfa", "session_token", mfa_serial_number=MFA_SERIAL)
    vault.set_mfa_code("mfa", "123456")


def test_mfa_code_flag_and_a_clear_error_without_a_terminal(vault):
    mfa_role(vault)
    flags = ("--mount", "aws", "--role", "mfa", "--credential-type", "session_token")
    missing = run_broker("credential-process", *flags)  # stdin is /dev/null and there is no controlling tty
    assert_one_line_error(missing, contains="needs an MFA code and there is no terminal to ask on: pass --mfa-code")
    wrong = run_broker("credential-process", *flags, "--mfa-code", "000000")
    assert_one_line_error(wrong, contains="invalid MFA one time pass code")
    assert_one_line_error(run_broker("credential-process", *flags, "--mfa-code", "12ab"), contains="6 digits")
    good = run_broker("credential-process", *flags, "--mfa-code", "123456")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["SessionToken"]
    assert credential(*flags) == json.loads(good.stdout)  # cached: no code needed until it expires


def test_mfa_prompt_on_the_controlling_terminal(vault):
    mfa_role(vault)
    argv = [sys.executable, "-m", "broker", "credential-process", "--mount", "aws", "--role", "mfa"]
    env = child_env()
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, argv, env)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not answered and b"MFA code for" in seen:
                os.write(fd, b"123456\n")
                answered = True
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert answered, text
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "123456" not in text  # not echoed
    answer = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert answer["SessionToken"]
