"""`broker export`: env, json and ini renderings of a profile's credential."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess

import pytest

from broker import execenv
from tests.support.brokerproc import assert_one_line_error, run_broker


def broker(*args: str) -> subprocess.CompletedProcess:
    return run_broker(*args)


def add_profile(name: str, *flags: str) -> None:
    from click.testing import CliRunner

    from broker.cli import cli

    result = CliRunner().invoke(cli, ["profile", "add", name, *flags])
    assert result.exit_code == 0, result.output


def test_export_formats_agree_and_work(vault, aws_env):
    add_profile("dev", "--mount", "aws", "--role", "deploy", "--region", "eu-west-1")
    env_out = broker("export", "dev")
    assert env_out.returncode == 0 and env_out.stderr == "", env_out.stderr
    exported = {}
    for line in env_out.stdout.splitlines():
        match = re.fullmatch(r"export (AWS_[A-Z_]+)=(.+)", line)
        assert match, line
        exported[match.group(1)] = shlex.split(match.group(2))[0]
    assert list(exported) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ]
    assert exported["AWS_REGION"] == "eu-west-1"

    as_json = json.loads(broker("export", "dev", "--format", "json").stdout)
    assert as_json == {
        "Version": 1,
        "AccessKeyId": exported["AWS_ACCESS_KEY_ID"],
        "SecretAccessKey": exported["AWS_SECRET_ACCESS_KEY"],
        "SessionToken": exported["AWS_SESSION_TOKEN"],
        "Expiration": exported["AWS_CREDENTIAL_EXPIRATION"],
        "AccountId": "123456789012",  # moto's account, from the assumed role's ARN
    }  # the same cached credential

    ini = configparser.ConfigParser()
    ini.read_string(broker("export", "dev", "--format", "ini").stdout)
    assert ini.sections() == ["dev"]
    assert dict(ini["dev"]) == {
        "aws_access_key_id": exported["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": exported["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": exported["AWS_SESSION_TOKEN"],
    }
    sts = aws_env.client(
        "sts", (exported["AWS_ACCESS_KEY_ID"], exported["AWS_SECRET_ACCESS_KEY"], exported["AWS_SESSION_TOKEN"])
    )
    assert ":assumed-role/" in sts.get_caller_identity()["Arn"]


def test_export_env_is_evaluable_by_a_shell(vault, aws_env):
    add_profile("ci", "--mount", "aws", "--role", "ci", "--credential-type", "iam_user")
    text = broker("export", "ci").stdout
    assert "AWS_SESSION_TOKEN" not in text  # iam_user keys have none
    shown = subprocess.run(
        ["sh", "-c", text + 'printf "%s|%s" "$AWS_ACCESS_KEY_ID" "$AWS_CREDENTIAL_EXPIRATION"'],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": os.environ["PATH"]},
    )
    key, expiration = shown.stdout.split("|")
    assert key.startswith("AKIA") and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expiration)


def test_render_export_quotes_for_the_shell():
    keys = execenv.Keys("AKIA1", "a'b c/+=", None, 0)
    text = execenv.render_export(keys, "env", profile="p")
    assert "export AWS_SECRET_ACCESS_KEY='a'\"'\"'b c/+='\n" in text
    assert execenv.render_export(keys, "ini", profile="p").startswith("[p]\naws_access_key_id = AKIA1\n")


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["export", "nosuch"], 3, "unknown profile 'nosuch'"),
        (["export", "dev", "--format", "yaml"], 2, "'yaml' is not one of"),
        (["export"], 2, "PROFILE"),
    ],
)
def test_export_bad_input_is_one_line(args, code, words):
    assert_one_line_error(broker(*args), code=code, contains=words)


def test_shell_completion_knows_the_new_commands():
    """Click's completion (documented in the README): `_BROKER_COMPLETE=bash_source broker`."""
    words = run_broker(env={"_BROKER_COMPLETE": "bash_complete", "COMP_WORDS": "broker ex", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["plain,exec", "plain,export"]
    formats = run_broker(
        env={"_BROKER_COMPLETE": "bash_complete", "COMP_WORDS": "broker export dev --format ", "COMP_CWORD": "4"}
    )
    assert formats.stdout.split() == ["plain,env", "plain,json", "plain,ini"]
