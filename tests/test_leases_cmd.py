"""`broker leases`: filters, order, formats, the public-column whitelist (no secret in any format,
checked against the real secret values), an empty ledger, and 100,000 rows streamed."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from broker import listing
from broker.cli import run as broker_run
from tests.support.brokerproc import run_broker
from tests.support.ledger_seed import insert_rows, lease_row, seed_leases


def cli(capsys, *args):
    code = broker_run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_whitelist_is_the_issue_s_columns_and_nothing_secret():
    assert listing.PUBLIC_COLUMNS == [
        "lease_id",
        "profile",
        "mount",
        "role",
        "namespace",
        "credential_type",
        "access_key_id",
        "role_session_name",
        "issued_at",
        "expires_at",
        "state",
        "revoked_at",
        "revoked_by",
        "revoke_error",
        "end_reason",
        "display_name",
        "entity_id",
        "token_accessor",
        "token_policies",
        "account_id",
        "principal_arn",
    ]
    assert not {"secret", "sealed_token", "cache_key"} & set(listing.TABLE_COLUMNS)
    assert "revoke_error" in listing.TABLE_COLUMNS  # shortened in the table, whole in json/csv


@pytest.mark.parametrize("fmt,expected", [("json", "[]\n"), ("csv", ",".join(listing.PUBLIC_COLUMNS) + "\n")])
def test_empty_ledger(capsys, fmt, expected):
    assert cli(capsys, "leases", "--format", fmt) == (0, expected, "")


def test_empty_ledger_table_says_so_on_stderr(capsys):
    code, out, err = cli(capsys, "leases")
    assert code == 0 and out == ""
    assert "no leases" in err


def _seed_mixed(db):
    now = int(time.time())
    insert_rows(
        db,
        [
            lease_row(lease_id="aws/creds/ci/a", profile="p1", role="ci", issued_at=now - 300, expires_at=now + 3300),
            lease_row(
                lease_id="aws/sts/deploy/b",
                role="deploy",
                endpoint="sts",
                credential_type="assumed_role",
                role_session_name="broker-me-1",
                renewable=0,
                issued_at=now - 200,
                expires_at=now + 3400,
            ),
            lease_row(lease_id="aws/creds/ci/c", role="ci", issued_at=now - 7200, expires_at=now - 3600),
            lease_row(
                lease_id="other/creds/ci/d",
                mount="other",
                role="ci",
                issued_at=now - 100,
                expires_at=now + 3500,
                state="revoked",
                revoked_at=now - 50,
            ),
        ],
    )
    return now


def test_default_lists_every_state_newest_first(capsys):
    _seed_mixed(os.environ["BROKER_DB"])
    code, out, _ = cli(capsys, "leases", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["lease_id"] for r in rows] == [
        "other/creds/ci/d",
        "aws/sts/deploy/b",
        "aws/creds/ci/a",
        "aws/creds/ci/c",
    ]
    assert [r["state"] for r in rows] == ["revoked", "active", "active", "expired"]
    assert list(rows[0]) == listing.PUBLIC_COLUMNS
    assert rows[0]["revoked_at"].endswith("Z") and rows[1]["revoked_at"] is None
    assert rows[1]["role_session_name"] == "broker-me-1"
    time.strptime(rows[1]["issued_at"], "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--state", "active"], ["aws/sts/deploy/b", "aws/creds/ci/a"]),
        (["--state", "expired"], ["aws/creds/ci/c"]),
        (["--state", "revoked"], ["other/creds/ci/d"]),
        (["--role", "ci"], ["other/creds/ci/d", "aws/creds/ci/a", "aws/creds/ci/c"]),
        (["--mount", "other"], ["other/creds/ci/d"]),
        (["--profile", "p1"], ["aws/creds/ci/a"]),
        (["--role", "ci", "--mount", "aws", "--state", "active"], ["aws/creds/ci/a"]),
    ],
)
def test_filters(capsys, args, expected):
    _seed_mixed(os.environ["BROKER_DB"])
    code, out, _ = cli(capsys, "leases", "--format", "csv", *args)
    assert code == 0
    assert [r["lease_id"] for r in csv.DictReader(io.StringIO(out))] == expected


def test_wide_table_shows_readable_times_and_time_left(capsys):
    _seed_mixed(os.environ["BROKER_DB"])
    code, out, _ = cli(capsys, "leases", "--wide")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["LEASE", "ID", "PROFILE"] and "LEFT" in lines[0]
    assert len(lines) == 2 + 4
    active = next(line for line in lines if line.startswith("aws/sts/deploy/b"))
    assert time.strftime("%Y-%m-%d ", time.gmtime()) in active
    assert "56m" in active or "57m" in active  # ~56m40s left
    expired = next(line for line in lines if line.startswith("aws/creds/ci/c"))
    assert " expired " in expired
    widths = {len(line.rstrip()) <= len(lines[1]) for line in lines}
    assert widths == {True}  # every row fits the streamed column layout


def test_bad_state_is_a_usage_error():
    proc = run_broker("leases", "--state", "gone")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1


def test_no_secret_in_any_format(vault, capsys):
    """Issue one credential of each type, then look for the real secret values in every output."""
    secrets = []
    for role, extra in (
        ("ci", []),
        ("deploy", []),
        ("fed", ["--credential-type", "federation_token"]),
        ("sess", ["--credential-type", "session_token"]),
    ):
        proc = run_broker("credential-process", "--mount", "aws", "--role", role, *extra)
        assert proc.returncode == 0, proc.stderr
        creds = json.loads(proc.stdout)
        secrets.append(creds["SecretAccessKey"])
        if creds.get("SessionToken"):
            secrets.append(creds["SessionToken"])
    assert len(secrets) == 7
    conn = sqlite3.connect(os.environ["BROKER_DB"])
    assert conn.execute("SELECT count(*) FROM leases WHERE secret IS NOT NULL").fetchone()[0] == 4
    conn.close()

    outputs = []
    for fmt in ("table", "json", "csv"):
        for state in ("all", "active"):
            code, out, err = cli(capsys, "leases", "--format", fmt, "--state", state)
            assert code == 0
            outputs.append(out + err)
    code, out, err = cli(capsys, "revoke", "--all", "--dry-run", "--format", "json")
    assert code == 0
    outputs.append(out + err)
    code, out, err = cli(capsys, "-vv", "revoke", "--all", "--yes")
    assert code == 0
    outputs.append(out + err)
    for fmt in ("table", "json", "csv"):
        code, out, err = cli(capsys, "leases", "--format", fmt)
        outputs.append(out + err)
    for text in outputs:
        for secret in secrets:
            assert secret not in text
            assert secret[:16] not in text


def _child_rss(args) -> tuple[subprocess.CompletedProcess, int]:
    """Run broker in a child that reports its own peak RSS (KiB, VmHWM: this program's memory only,
    unlike ru_maxrss, which keeps the high-water mark of the forking parent) as its last stderr line."""
    code = (
        "import atexit, sys\n"
        "def peak():\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "    sys.stderr.write('RSS %s\\n' % line.split()[1])\n"
        "atexit.register(peak)\n"
        "from broker.entry import main\n"
        f"main({args!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    return proc, int(proc.stderr.strip().splitlines()[-1].split()[1])


def test_100k_rows_stream_in_every_format():
    db = os.environ["BROKER_DB"]
    seed_leases(db, 1_000, tag="small")
    _, small_rss = _child_rss(["leases", "--format", "json"])
    seed_leases(db, 99_000, tag="big", credential_type="assumed_role", role="deploy")

    proc, json_rss = _child_rss(["leases", "--format", "json"])
    assert proc.returncode == 0
    rows = json.loads(proc.stdout)
    assert len(rows) == 100_000
    assert rows[0]["issued_at"] >= rows[-1]["issued_at"]

    proc, table_rss = _child_rss(["leases", "--state", "active"])
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 100_002

    # Streaming: the whole listing (~30 MB of JSON) never sits in memory.
    assert json_rss - small_rss < 20_000, (small_rss, json_rss)
    assert table_rss - small_rss < 20_000, (small_rss, table_rss)
