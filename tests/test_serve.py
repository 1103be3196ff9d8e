"""`broker serve`: the loopback credential endpoint as a foreground process."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from broker import credserver
from tests.support.brokerproc import assert_one_line_error, child_env, run_broker


def add_profile(name: str, *flags: str) -> None:
    from click.testing import CliRunner

    from broker.cli import cli

    result = CliRunner().invoke(cli, ["profile", "add", name, *flags])
    assert result.exit_code == 0, result.output


def read_lines(stream, count: int, timeout: float = 15.0) -> list[str]:
    """The first `count` lines of a pipe (read unbuffered), waiting at most `timeout` seconds."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {count} lines within {timeout}s (got {data!r})"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"stream closed after {data!r}"
            data += chunk
    return data.decode().splitlines()[:count]


class Serving:
    def __init__(self, proc: subprocess.Popen, exports: dict):
        self.proc = proc
        self.url = exports["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        self.token = exports["AWS_CONTAINER_AUTHORIZATION_TOKEN"]

    def get(self, headers: dict | None = None, path: str = "/") -> tuple[int, dict]:
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate(timeout=5)
        return self.proc.returncode, err


def start_serve(*args: str) -> Serving:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_lines(proc.stdout, 2)
    except AssertionError:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"serve did not start: {err}") from None
    exports = {}
    for line in lines:
        assert line.startswith("export AWS_CONTAINER_"), line
        name, _, value = line[len("export ") :].partition("=")
        exports[name] = value
    return Serving(proc, exports)


@pytest.fixture
def serving(vault, aws_env):
    add_profile("dev", "--mount", "aws", "--role", "deploy", "--region", "eu-west-1")
    server = start_serve("-vv", "serve", "dev")
    yield server
    if server.proc.poll() is None:
        server.stop(signal.SIGKILL)


def test_serve_answers_the_sdk_and_refuses_without_the_token(serving, aws_env):
    from botocore.credentials import ContainerProvider

    assert serving.url.startswith("http://127.0.0.1:") and serving.url.endswith("/")
    credentials = ContainerProvider(
        environ={
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": serving.url,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": serving.token,
        }
    ).load()
    assert credentials.method == "container-role"
    frozen = credentials.get_frozen_credentials()
    arn = aws_env.client("sts", (frozen.access_key, frozen.secret_key, frozen.token)).get_caller_identity()["Arn"]
    assert ":assumed-role/" in arn

    status, body = serving.get({"Authorization": serving.token})
    assert status == 200 and set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert body["AccessKeyId"] == frozen.access_key  # the same cached credential
    assert body["Expiration"].endswith("Z") and len(body["Expiration"]) == 20
    assert serving.get()[0] == 403
    assert serving.get({"Authorization": serving.token + "x"})[0] == 403
    assert serving.get({"Authorization": "Bearer " + serving.token})[0] == 200
    assert serving.get({"Authorization": serving.token}, path="/other")[0] == 404

    code, err = serving.stop()
    assert code == 0
    assert "stopped serving profile dev" in err
    for secret in (serving.token, frozen.secret_key, frozen.token):
        assert secret not in err  # even at -vv


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_shuts_down_cleanly(serving, sig):
    code, err = serving.stop(sig)
    assert code == 0, err
    assert "Traceback" not in err and "stopped serving" in err
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", int(serving.url.rsplit(":", 1)[1].strip("/"))), timeout=2).close()


def test_serve_port_in_use_is_one_line(vault):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_broker("serve", "dev", "--port", str(port))
    assert_one_line_error(result, code=2, contains=f"port {port} on 127.0.0.1 is in use")


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["serve", "nosuch"], 3, "unknown profile 'nosuch'"),
        (["serve", "dev", "--port", "70000"], 2, "--port"),
        (["serve"], 2, "PROFILE"),
    ],
)
def test_serve_bad_input_is_one_line(args, code, words):
    assert_one_line_error(run_broker(*args), code=code, contains=words)


def test_serve_vault_down_fails_before_printing():
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_TOKEN": "t", "BROKER_VAULT_RETRY_SECONDS": "0.2"}
    assert_one_line_error(run_broker("serve", "dev", env=env), code=4, contains="cannot connect to Vault")


# -- the server object ------------------------------------------------------------------------------


def test_token_check_is_exact():
    server = credserver.CredentialServer(app=None, request=None)
    assert server.authorized(server.token) and server.authorized("Bearer " + server.token)
    assert not server.authorized(None) and not server.authorized("") and not server.authorized(server.token[:-1])
    assert not server.authorized("bearer " + server.token) and not server.authorized(server.token + " ")
    assert len(server.token) >= 40 and server.token != credserver.CredentialServer(None, None).token


def test_container_body_always_has_a_token_field():
    from broker.execenv import Keys

    body = credserver.container_body(Keys("AKIAEXAMPLE", "s", None, 0))
    assert body == {
        "AccessKeyId": "AKIAEXAMPLE",
        "SecretAccessKey": "s",
        "Token": "",
        "Expiration": "1970-01-01T00:00:00Z",
    }
