"""Run the real `broker` as a child process (`python -m broker`), from this checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def broker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", *args]


def run_broker(*args: str, env: dict | None = None, timeout: float = 60, input: str | None = None):
    """The finished process (stdout/stderr as text). Bounded by `timeout`."""
    return subprocess.run(
        broker_argv(*args),
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def credential(*args: str, env: dict | None = None) -> dict:
    """`broker credential-process ARGS` parsed; fails the test with broker's stderr otherwise."""
    result = run_broker("credential-process", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result, *, contains: str = "", code: int | None = None) -> None:
    """The error contract: non-zero exit, empty stdout, one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("broker: "), lines[0]
    assert contains.lower() in lines[0].lower(), lines[0]
