"""`broker login`: the console sign-in URL, against a loopback stand-in for the federation endpoint."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from broker import signin
from tests.support.brokerproc import assert_one_line_error, run_broker

SIGNIN_TOKEN = "stand-in-signin-token-0123456789"


@dataclass
class Federation:
    """What AWS's federation endpoint does for getSigninToken, on 127.0.0.1, recording each request."""

    url: str = ""
    requests: list[dict] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def federation(monkeypatch) -> Iterator[Federation]:
    state = Federation()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            state.requests.append({"path": parts.path, **query})
            if state.status != 200 or query.get("Action") != "getSigninToken":
                body = b"<html>error</html>"
                self.send_response(state.status if state.status != 200 else 400)
            else:
                body = json.dumps({"SigninToken": SIGNIN_TOKEN}).encode()
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/federation"
    monkeypatch.setenv("BROKER_FEDERATION_URL", state.url)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def add_profile(name: str, *flags: str) -> None:
    from click.testing import CliRunner

    from broker.cli import cli

    result = CliRunner().invoke(cli, ["profile", "add", name, *flags])
    assert result.exit_code == 0, result.output


def exported(profile: str) -> dict:
    result = run_broker("export", profile, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_login_url_for_an_assumed_role(vault, aws_env, federation):
    add_profile("dev", "--mount", "aws", "--role", "deploy", "--region", "eu-west-1")
    result = run_broker("login", "dev", "--stdout", "--path", "s3/home")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing about the URL or the credentials on stderr
    url = result.stdout.strip()
    assert url.startswith(federation.url + "?")
    login = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    assert login == {
        "Action": "login",
        "Issuer": "broker",
        "SigninToken": SIGNIN_TOKEN,
        "Destination": "https://eu-west-1.console.aws.amazon.com/s3/home?region=eu-west-1",
    }
    (asked,) = federation.requests
    assert asked["Action"] == "getSigninToken" and asked["path"] == "/federation"
    credential = exported("dev")  # the cached credential it used
    assert json.loads(asked["Session"]) == {
        "sessionId": credential["AccessKeyId"],
        "sessionKey": credential["SecretAccessKey"],
        "sessionToken": credential["SessionToken"],
    }
    assert 900 <= int(asked["SessionDuration"]) <= 3600  # the credential's remaining life


def test_login_with_a_federation_token_sends_no_session_duration(vault, aws_env, federation):
    add_profile("fed", "--mount", "aws", "--role", "fed", "--credential-type", "federation_token")
    result = run_broker("login", "fed", "--stdout", "--region", "us-west-2")
    assert result.returncode == 0, result.stderr
    (asked,) = federation.requests
    assert "SessionDuration" not in asked
    login = parse_qs(urlsplit(result.stdout.strip()).query)
    assert login["Destination"] == ["https://us-west-2.console.aws.amazon.com/console/home?region=us-west-2"]


@pytest.mark.parametrize("flags", [["--credential-type", "iam_user"], []], ids=["declared", "found-on-issue"])
def test_iam_user_profiles_cannot_sign_in(vault, aws_env, federation, flags):
    add_profile("ci", "--mount", "aws", "--role", "ci", *flags)
    result = run_broker("login", "ci", "--stdout")
    assert_one_line_error(result, code=2, contains="iam_user credentials, which cannot sign in")
    assert "assumed_role or federation_token" in result.stderr
    assert federation.requests == []


def test_session_token_profiles_cannot_sign_in(federation):
    add_profile("sess", "--mount", "aws", "--role", "sess", "--credential-type", "session_token")
    assert_one_line_error(run_broker("login", "sess", "--stdout"), code=2, contains="session_token credentials")


def test_a_refusing_federation_endpoint_is_one_line_without_secrets(vault, aws_env, federation):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    federation.status = 400
    result = run_broker("login", "dev", "--stdout")
    assert_one_line_error(result, code=1, contains="answered 400 to getSigninToken")
    secret = exported("dev")["SecretAccessKey"]
    assert secret not in result.stderr and "Session" not in result.stderr


def test_login_opens_the_browser_when_not_asked_for_stdout(vault, aws_env, federation, tmp_path, monkeypatch):
    opened = tmp_path / "opened"
    browser = tmp_path / "fake-browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(stat.S_IRWXU)
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    result = run_broker("login", "dev", env={"BROWSER": str(browser), "DISPLAY": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert opened.read_text().startswith(federation.url + "?Action=login&")


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["login", "nosuch", "--stdout"], 3, "unknown profile 'nosuch'"),
        (["login", "dev", "--stdout", "--path", "https://evil.example/"], 2, "invalid --path"),
        (["login", "dev", "--stdout", "--region", "Mars"], 2, "invalid region"),
        (["login", "dev", "--stdout", "--federation-url", "http://signin.example/federation"], 2, "must use https"),
    ],
)
def test_login_bad_input_is_one_line(args, code, words):
    add_profile("dev", "--mount", "aws", "--role", "deploy")
    assert_one_line_error(run_broker(*args), code=code, contains=words)


def test_destination_and_partitions():
    assert signin.destination(None, None) == "https://console.aws.amazon.com/console/home"
    assert signin.destination("eu-west-1", "ec2/home#Instances:") == (
        "https://eu-west-1.console.aws.amazon.com/ec2/home?region=eu-west-1#Instances:"
    )
    assert (
        signin.destination("cn-north-1", "s3/home?x=1")
        == "https://cn-north-1.console.amazonaws.cn/s3/home?x=1&region=cn-north-1"
    )
    assert signin.default_federation_url("us-gov-west-1") == "https://signin.amazonaws-us-gov.com/federation"
    assert signin.default_federation_url(None) == "https://signin.aws.amazon.com/federation"
    assert signin.session_duration("assumed_role", 100_000, 0) == 43200
    assert signin.session_duration("assumed_role", 60, 0) == 900
    assert signin.session_duration("federation_token", 100_000, 0) is None
    assert os.path.basename(signin.check_path("/s3/home")) == "home"
