"""`profile add --write-aws-config` / `profile remove`: editing the AWS config without losing a byte."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from broker import awsconfig
from tests.support.brokerproc import assert_one_line_error, run_broker

USER_CONFIG = """\
# my AWS config; keep this comment
[default]
region = eu-central-1
output = json

[profile other]   ; inline note
role_arn = arn:aws:iam::123456789012:role/x
source_profile = default
s3 =
  max_concurrent_requests = 20

[sso-session corp]
sso_region = us-east-1
"""

VALUES = {"credential_process": "/opt/broker credential-process --profile dev", "region": "eu-west-1"}


def config_file() -> Path:
    return Path(os.environ["AWS_CONFIG_FILE"])


# -- the text edits (pure) ---------------------------------------------------------------------------


def test_set_then_unset_restores_the_file_exactly():
    written = awsconfig.set_keys(USER_CONFIG, "dev", VALUES)
    assert written.startswith(USER_CONFIG)
    assert written[len(USER_CONFIG) :] == (
        "\n[profile dev]\ncredential_process = /opt/broker credential-process --profile dev\nregion = eu-west-1\n"
    )
    assert awsconfig.set_keys(written, "dev", VALUES) == written  # idempotent
    assert awsconfig.unset_broker(written, "dev") == (USER_CONFIG, "removed")


def test_set_updates_only_the_owned_keys_of_an_existing_section():
    text = (
        USER_CONFIG
        + "\n[profile dev]\n# why this profile exists\noutput = text\n"
        + "credential_process = old-helper\n  --flag\nregion=us-west-2\n"
    )
    written = awsconfig.set_keys(text, "dev", VALUES)
    assert written == USER_CONFIG + (
        "\n[profile dev]\n# why this profile exists\noutput = text\n"
        "credential_process = /opt/broker credential-process --profile dev\nregion = eu-west-1\n"
    )
    # the section has a key of the user's: only broker's credential_process goes
    assert awsconfig.unset_broker(written, "dev")[0] == USER_CONFIG + (
        "\n[profile dev]\n# why this profile exists\noutput = text\nregion = eu-west-1\n"
    )


def test_set_adds_missing_keys_after_the_last_one_and_keeps_crlf():
    text = "[profile dev]\r\noutput = json\r\n\r\n[profile z]\r\nregion = x\r\n"
    assert awsconfig.set_keys(text, "dev", VALUES) == (
        "[profile dev]\r\noutput = json\r\ncredential_process = /opt/broker credential-process --profile dev\r\n"
        "region = eu-west-1\r\n\r\n[profile z]\r\nregion = x\r\n"
    )


def test_default_profile_uses_the_default_section():
    text = "[default]\noutput = json\n"
    assert (
        awsconfig.set_keys(text, "default", {"credential_process": "b"})
        == "[default]\noutput = json\ncredential_process = b\n"
    )


def test_unset_leaves_other_helpers_alone():
    text = "[profile dev]\ncredential_process = aws-vault export --format=json dev\n"
    assert awsconfig.unset_broker(text, "dev") == (text, "kept")
    assert awsconfig.unset_broker(text, "other") == (text, "absent")
    mine = "[profile dev]\ncredential_process = /x/broker credential-process --profile devx\n"
    assert awsconfig.unset_broker(mine, "dev") == (mine, "kept")


def test_duplicate_sections_are_refused():
    with pytest.raises(Exception, match="2 \\[profile dev\\] sections"):
        awsconfig.set_keys("[profile dev]\na=1\n[profile  dev]\nb=2\n", "dev", VALUES)


@pytest.mark.parametrize(
    "path", ["/usr/local/bin/broker", "/Users/J Doe/.local/bin/broker", '/odd/"quoted"\\dir/broker']
)
def test_the_broker_path_survives_the_sdks_splitting(monkeypatch, path):
    monkeypatch.setattr(awsconfig, "broker_argv", lambda: [path])
    value = awsconfig.credential_process_value("dev")
    assert shlex.split(value) == [path, "credential-process", "--profile", "dev"]
    assert value.startswith("'") == (path != "/usr/local/bin/broker")  # plain paths stay unquoted
    assert awsconfig.is_ours(value, "dev")


def test_broker_argv_is_absolute(monkeypatch, tmp_path):
    script = tmp_path / "bin" / "broker"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bin/broker", "profile", "add"])
    assert awsconfig.broker_argv() == [str(script)]
    monkeypatch.setattr(sys, "argv", [str(Path(awsconfig.__file__).with_name("__main__.py"))])
    assert awsconfig.broker_argv() == [sys.executable, "-m", "broker"]


# -- the file, end to end -----------------------------------------------------------------------------


def add(*extra: str):
    return run_broker(
        "profile",
        "add",
        "dev",
        "--mount",
        "aws",
        "--role",
        "deploy",
        "--region",
        "eu-west-1",
        "--write-aws-config",
        *extra,
    )


def test_add_writes_atomically_with_a_backup_and_remove_undoes_it():
    path = config_file()
    path.write_text(USER_CONFIG)
    path.chmod(0o644)
    first = add()
    assert first.returncode == 0, first.stderr
    assert "added [profile dev] in" in first.stderr and "broker-backup" in first.stderr
    text = path.read_text()
    assert text.startswith(USER_CONFIG)
    line = next(x for x in text.splitlines() if x.startswith("credential_process = "))
    words = shlex.split(line.split(" = ", 1)[1])
    assert os.path.isabs(words[0])
    assert words[-5:] == ["--db", os.environ["BROKER_DB"], "credential-process", "--profile", "dev"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the mode is kept
    backup = Path(str(path) + ".broker-backup")
    assert backup.read_text() == USER_CONFIG and stat.S_IMODE(backup.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir() if "tmp" in p.name] == []

    again = add()  # idempotent: same bytes, backup untouched
    assert again.returncode == 0 and "already up to date" in again.stderr
    assert path.read_text() == text and backup.read_text() == USER_CONFIG

    removed = run_broker("profile", "remove", "dev")
    assert removed.returncode == 0 and "removed [profile dev]" in removed.stderr
    assert path.read_text() == USER_CONFIG
    assert backup.read_text() == text


def test_a_new_config_is_private_and_symlinks_are_followed(tmp_path, monkeypatch):
    real = tmp_path / "dotfiles" / "aws-config"
    real.parent.mkdir()
    assert add().returncode == 0
    assert stat.S_IMODE(config_file().stat().st_mode) == 0o600
    assert not Path(str(config_file()) + ".broker-backup").exists()  # nothing to back up

    link = tmp_path / "linked-config"
    real.write_text(USER_CONFIG)
    link.symlink_to(real)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(link))
    assert add().returncode == 0
    assert link.is_symlink() and real.read_text().startswith(USER_CONFIG + "\n[profile dev]\n")


def test_botocore_runs_the_written_credential_process(vault, moto_server):
    import boto3

    assert add().returncode == 0
    session = boto3.session.Session(profile_name="dev")
    assert session.region_name == "eu-west-1"
    credentials = session.get_credentials()
    assert credentials.method == "custom-process"
    sts = session.client("sts", endpoint_url=moto_server.endpoint)
    assert ":assumed-role/" in sts.get_caller_identity()["Arn"]


def test_without_the_flag_the_config_is_untouched():
    result = run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy")
    assert result.returncode == 0
    assert not config_file().exists()


def test_remove_keeps_a_section_that_is_not_brokers():
    text = "[profile dev]\ncredential_process = something-else\n"
    config_file().write_text(text)
    assert run_broker("profile", "add", "dev", "--mount", "aws", "--role", "deploy").returncode == 0
    assert run_broker("profile", "remove", "dev").returncode == 0
    assert config_file().read_text() == text


def test_unwritable_config_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "a-file" / "config"))
    result = add()
    assert_one_line_error(result, contains="the AWS config")
    assert "profile dev itself is saved" in result.stderr
    assert "dev" in run_broker("profile", "list").stdout
