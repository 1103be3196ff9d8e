"""Shared fixtures: an isolated environment, a session moto server, the Vault double."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import free_port, wait_for
from tests.support.vault_double import (
    AWS_REGION,
    VaultDouble,
    aws_admin_credentials,
    aws_client,
    setup_standard_roles,
    start_moto_server,
)

__all__ = ["free_port", "wait_for"]

_CLEARED_PREFIXES = ("VAULT_", "AWS_", "BROKER_")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No VAULT_*/AWS_*/BROKER_* from the outside; HOME, DB, AWS config and XDG dirs under tmp_path."""
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "aws").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BROKER_DB", str(tmp_path / "data" / "broker.db"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var, sub in (
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("XDG_CACHE_HOME", "xdg-cache"),
        ("XDG_RUNTIME_DIR", "xdg-runtime"),
    ):
        path = tmp_path / sub
        path.mkdir(mode=0o700)
        monkeypatch.setenv(var, str(path))
    # Loopback only: never send 127.0.0.1 traffic through a proxy from the outer environment.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """broker in this process (faster than a child); returns a CompletedProcess-like result."""
    import subprocess

    from broker.cli import run as broker_run

    def invoke(args):
        code = broker_run(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return invoke


@dataclasses.dataclass
class MotoServer:
    """The session's moto server. IAM auth is enforced once a VaultDouble (or admin_credentials) ran."""

    endpoint: str
    server: Any

    def admin_credentials(self) -> tuple[str, str]:
        """(access_key_id, secret_access_key) of an allow-everything IAM user in this moto."""
        return aws_admin_credentials(self.endpoint)

    def client(self, service: str, credentials: tuple[str, ...] | None = None) -> Any:
        """A botocore client for `service` against moto: as admin, or with (key, secret[, token])."""
        return aws_client(self.endpoint, service, credentials or self.admin_credentials())


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server, endpoint = start_moto_server()
    try:
        yield MotoServer(endpoint=endpoint, server=server)
    finally:
        server.stop()


@pytest.fixture
def vault(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[VaultDouble]:
    """A started VaultDouble with the standard roles; VAULT_ADDR/VAULT_TOKEN point at it."""
    double = VaultDouble(moto_server.endpoint).start()
    try:
        setup_standard_roles(double)
        monkeypatch.setenv("VAULT_ADDR", double.url)
        monkeypatch.setenv("VAULT_TOKEN", double.root_token)
        yield double
    finally:
        double.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Point boto3/botocore (here and in child processes) at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", AWS_REGION)
    return moto_server
