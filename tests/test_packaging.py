"""The wheel carries its migrations: installed outside the checkout, broker creates a new ledger."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile

import pytest

from tests.support.brokerproc import ROOT


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_and_migrates_a_new_database(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    (wheel,) = dist.glob("vault_lease_broker-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "broker/migrations/env.py" in names
    assert any(n.startswith("broker/migrations/versions/0001") for n in names)
    assert not any("__pycache__" in n for n in names)

    target = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=240,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    db = tmp_path / "elsewhere" / "ledger.db"
    broker = str(target / "bin" / "broker")
    for args in (
        ["profile", "add", "dev", "--mount", "aws", "--role", "deploy"],
        ["profile", "list", "--format", "csv"],
    ):
        result = subprocess.run(
            [broker, "--db", str(db), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    assert "dev,aws,deploy" in result.stdout
    located = subprocess.run(
        [str(python), "-c", "from broker import db; print(db.migrations_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert located.stdout.strip().startswith(str(target))
