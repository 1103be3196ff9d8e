"""`broker exec`: the child's environment, exit status, signals, nesting, errors, and --server keeping
a long-running boto3 child alive on credentials that expire during its run."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from broker import execenv
from tests.support.brokerproc import assert_one_line_error, child_env, run_broker

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SHORT_TTL = 3  # the double's lease lasts TTL - 1 s: 2 s


def broker(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return run_broker(*args, env=env, timeout=timeout)


def add_profile(name: str, *flags: str) -> None:
    """In process (fast); the commands under test run as real processes."""
    from click.testing import CliRunner

    from broker.cli import cli

    result = CliRunner().invoke(cli, ["profile", "add", name, *flags])
    assert result.exit_code == 0, result.output


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    for word in words:
        assert_one_line_error(result, code=code, contains=word)


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.02)


# -- the environment (pure) -------------------------------------------------------------------------


def test_child_env_replaces_every_inherited_credential_source():
    inherited = {name: "old" for name in execenv.REMOVED_VARS} | {"PATH": "/bin", "AWS_ENDPOINT_URL": "http://x"}
    keys = execenv.Keys("AKIDNEW", "secret", None, 1_800_000_000)
    env = execenv.child_env(inherited, "dev", region="eu-west-1", keys=keys)
    assert env == {
        "PATH": "/bin",
        "AWS_ENDPOINT_URL": "http://x",
        "AWS_ACCESS_KEY_ID": "AKIDNEW",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_CREDENTIAL_EXPIRATION": "2027-01-15T08:00:00Z",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "BROKER_PROFILE": "dev",
    }
    served = execenv.child_env(inherited, "dev", endpoint=execenv.Endpoint("http://127.0.0.1:1/", "tok"))
    assert served["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://127.0.0.1:1/"
    assert served["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == "tok"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_REGION"} & set(served)


# -- env mode ---------------------------------------------------------------------------------------


DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), sys.stdout); sys.exit(7)"


def test_exec_sets_the_environment_and_returns_the_exit_status(vault, aws_env):
    add_profile("dev", "--mount", "aws", "--role", "deploy", "--region", "eu-west-1")
    polluted = {
        "AWS_PROFILE": "other",
        "AWS_DEFAULT_PROFILE": "other",
        "AWS_ACCESS_KEY_ID": "AKIAOLD",
        "AWS_SECRET_ACCESS_KEY": "old",
        "AWS_SESSION_TOKEN": "old",
        "AWS_SECURITY_TOKEN": "old",
        "AWS_CREDENTIAL_FILE": "/nowhere",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/nowhere",
    }
    result = broker("exec", "dev", "--", sys.executable, "-c", DUMP_ENV, env=polluted)
    assert result.returncode == 7, result.stderr
    env = json.loads(result.stdout)
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_FILE",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        assert name not in env
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIA") and env["AWS_SECRET_ACCESS_KEY"] != "old"
    assert env["AWS_SESSION_TOKEN"] != "old"
    assert ISO_UTC.fullmatch(env["AWS_CREDENTIAL_EXPIRATION"])
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["BROKER_PROFILE"] == "dev"
    assert env["AWS_ACCESS_KEY_ID"] not in result.stderr and env["AWS_SECRET_ACCESS_KEY"] not in result.stderr
    # the keys work in AWS (moto with IAM auth on)
    sts = aws_env.client("sts", (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"]))
    assert ":assumed-role/" in sts.get_caller_identity()["Arn"]


def test_iam_user_keys_in_both_modes(vault, aws_env):
    add_profile("ci", "--mount", "aws", "--role", "ci", "--credential-type", "iam_user")
    result = broker("exec", "ci", "--", sys.executable, "-c", DUMP_ENV)
    env = json.loads(result.stdout)
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"  # from aws_env, untouched
    assert "AWS_SESSION_TOKEN" not in env  # iam_user keys have none
    assert env["AWS_ACCESS_KEY_ID"].startswith("AKIA")
    # through the endpoint too: keys without a session token come with an empty Token
    served = broker(
        "exec",
        "ci",
        "--server",
        "--",
        sys.executable,
        "-c",
        "import boto3; print(boto3.session.Session().client('sts').get_caller_identity()['Arn'])",
    )
    assert served.returncode == 0, served.stderr
    assert ":user/" in served.stdout


def test_exec_refuses_to_nest_unless_forced(vault, aws_env):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    nested = {"BROKER_PROFILE": "outer"}
    one_line_error(broker("exec", "dev", "--", "true", env=nested), 2, "outer", "--force")
    forced = broker("exec", "dev", "--force", "--", sys.executable, "-c", DUMP_ENV, env=nested)
    assert forced.returncode == 7, forced.stderr
    assert json.loads(forced.stdout)["BROKER_PROFILE"] == "dev"


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["exec", "dev"], 2, ["no command to run", "--"]),
        (["exec", "dev", "--"], 2, ["no command to run"]),
        (["exec", "dev", "--server", "--"], 2, ["no command to run"]),
        (["exec", "nosuch", "--", "true"], 3, ["unknown profile 'nosuch'"]),
        (["exec", "dev", "--bogus", "--", "true"], 2, ["--bogus"]),
    ],
)
def test_exec_bad_input_is_one_line(args, code, words):
    one_line_error(broker(*args), code, *words)


def test_exec_command_not_found(vault, aws_env):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    one_line_error(broker("exec", "dev", "--", "no-such-command-xyz"), 127, "command not found: no-such-command-xyz")
    one_line_error(broker("exec", "dev", "--server", "--", "no-such-command-xyz"), 127, "command not found")


# -- signals and exit status ------------------------------------------------------------------------

TRAP = textwrap.dedent("""
    import pathlib, signal, sys, time
    out, signum = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    def on_signal(got, frame):
        (out / "got").write_text(str(got))
        sys.exit(42)
    signal.signal(signum, on_signal)
    (out / "ready").write_text("")
    for _ in range(300):
        time.sleep(0.1)
    sys.exit(0)
""")


@pytest.mark.parametrize(
    "mode, sig",
    [([], signal.SIGTERM), (["--server"], signal.SIGTERM), (["--server"], signal.SIGINT)],
    ids=["env-SIGTERM", "server-SIGTERM", "server-SIGINT-not-from-a-terminal"],
)
def test_signals_to_broker_exec_reach_the_child(vault, aws_env, tmp_path, mode, sig):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker",
            "exec",
            "dev",
            *mode,
            "--",
            sys.executable,
            "-c",
            TRAP,
            str(tmp_path),
            str(int(sig)),
        ],
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_file(tmp_path / "ready")
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert (tmp_path / "got").read_text() == str(int(sig))
    assert proc.returncode == 42  # the child's status, through broker


def test_server_mode_dies_of_the_signal_that_killed_the_child(vault, aws_env):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    result = broker(
        "exec", "dev", "--server", "--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    )
    assert result.returncode == -signal.SIGTERM, result.stderr
    status = broker("exec", "dev", "--server", "--", sys.executable, "-c", "raise SystemExit(5)")
    assert status.returncode == 5, status.stderr


# -- credentials that expire during the run ----------------------------------------------------------

# A boto3 program that keeps calling STS for `seconds`, then reports what happened.
LONG_RUN = textwrap.dedent("""
    import json, sys, time
    import boto3
    seconds = float(sys.argv[1])
    session = boto3.session.Session()
    credentials = session.get_credentials()
    first_expiry = credentials._expiry_time.timestamp()
    sts = session.client("sts")
    report = {"method": credentials.method, "first_expiry": first_expiry, "ok": 0, "keys": [], "last_ok": None}
    started = time.time()
    try:
        while time.time() - started < seconds:
            sts.get_caller_identity()
            report["ok"] += 1
            report["last_ok"] = time.time()
            report["keys"].append(credentials.get_frozen_credentials().access_key)
            time.sleep(0.25)
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["failed_at"] = time.time()
    print(json.dumps(report))
    sys.exit(1 if "error" in report else 0)
""")


@pytest.fixture
def short_profile(vault):
    """A profile whose credentials live 2 s (the double's STS minimum switched off)."""
    vault.enforce_min_sts_ttl = False
    vault.add_role("aws", "short", "assumed_role", default_sts_ttl=SHORT_TTL, max_sts_ttl=SHORT_TTL)
    add_profile("short", "--mount", "aws", "--role", "short", "--credential-type", "assumed_role")
    return "short"


def test_server_mode_keeps_a_long_run_alive_past_expiry(short_profile, aws_env, tmp_path):
    run_for = SHORT_TTL + 1.5
    result = broker("exec", short_profile, "--server", "--", sys.executable, "-c", LONG_RUN, str(run_for), timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["method"] == "container-role"
    assert report["last_ok"] > report["first_expiry"] + 1  # kept working after the first credential expired
    assert len(set(report["keys"])) >= 2  # ... because it was given new ones
    # all of them went through the ledger
    db = sqlite3.connect(os.environ["BROKER_DB"])
    issued = {row[0] for row in db.execute("SELECT access_key_id FROM leases WHERE profile = ?", (short_profile,))}
    db.close()
    assert set(report["keys"]) <= issued


def test_env_mode_fails_once_the_credential_expires(short_profile, aws_env):
    """moto does not enforce STS expiry, so what fails is botocore itself: the env provider's refresh
    re-reads the same variables and raises once they are past AWS_CREDENTIAL_EXPIRATION."""
    run_for = SHORT_TTL + 1.5
    result = broker("exec", short_profile, "--", sys.executable, "-c", LONG_RUN, str(run_for), timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["method"] == "env"
    assert report["ok"] >= 1 and len(set(report["keys"])) == 1
    assert "refreshed credentials are still expired" in report["error"]
    assert report["failed_at"] >= report["first_expiry"]


COUNT_SIGINT = textwrap.dedent("""
    import pathlib, signal, sys, time
    out = pathlib.Path(sys.argv[1])
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(time.monotonic()))
    (out / "ready").write_text("")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (seen and time.monotonic() - seen[0] > 0.5):
        time.sleep(0.02)
    sys.exit(len(seen))
""")


def test_ctrl_c_on_a_terminal_reaches_the_child_once(vault, aws_env, tmp_path):
    """The terminal signals the whole foreground group, child included: broker must not add a
    second SIGINT (a second Ctrl-C makes Terraform abandon its run)."""
    import fcntl
    import termios

    add_profile("dev", "--mount", "aws", "--role", "deploy")
    controller, terminal = os.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker",
            "exec",
            "dev",
            "--server",
            "--",
            sys.executable,
            "-c",
            COUNT_SIGINT,
            str(tmp_path),
        ],
        env=child_env(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        wait_for_file(tmp_path / "ready")
        os.write(controller, b"\x03")  # Ctrl-C
        assert proc.wait(timeout=15) == 1  # the child's exit status: one SIGINT seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        os.close(controller)
