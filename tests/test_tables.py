"""Tables that fit: the default table of `leases`, the `revoke` and `renew` reports fit 120 columns for
typical values (measured on the rendered output of a real run); --wide shows everything, --columns picks;
json and csv keep the full values."""

from __future__ import annotations

import csv
import io
import json

from broker import output
from tests.support.brokerproc import assert_one_line_error, credential, run_broker


def issue_typical_leases(vault) -> None:
    """One lease of each credential type, one through a profile with a typical name."""
    assert (
        run_broker("profile", "add", "deploy-prod", "--mount", "aws", "--role", "deploy", "--ttl", "1h").returncode == 0
    )
    credential("--profile", "deploy-prod")
    credential("--mount", "aws", "--role", "ci")
    credential("--mount", "aws", "--role", "fed", "--credential-type", "federation_token")
    credential("--mount", "aws", "--role", "sess", "--credential-type", "session_token")


def table_lines(text: str) -> list[str]:
    """The table's lines (header, dashes, rows): from the first header line to the first blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LEASE ID"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def assert_fits(lines: list[str], rows: int) -> None:
    assert len(lines) == 2 + rows, lines
    widest = max(len(line.rstrip()) for line in lines)
    assert widest <= output.TABLE_WIDTH, (widest, lines)


def test_leases_table_fits_120_columns_and_wide_shows_everything(vault):
    issue_typical_leases(vault)
    table = run_broker("leases")
    assert table.returncode == 0, table.stderr
    lines = table_lines(table.stdout)
    assert_fits(lines, 4)
    assert lines[0].split() == ["LEASE", "ID", "PROFILE", "MOUNT", "ROLE", "TYPE", "ACCESS", "KEY", "ID"] + [
        "ISSUED",
        "EXPIRES",
        "STATE",
    ]
    full_ids = [row["lease_id"] for row in json.loads(run_broker("leases", "--format", "json").stdout)]
    assert all("/" in lease_id and len(lease_id) > 30 for lease_id in full_ids)
    for lease_id in full_ids:
        assert lease_id not in table.stdout  # shortened ...
        assert lease_id.rsplit("/", 1)[1][:8] + ".." in table.stdout  # ... to its last segment's start
    assert " ago " in table.stdout and " in 59m" in table.stdout  # relative times

    wide = run_broker("leases", "--wide")
    assert all(lease_id in wide.stdout for lease_id in full_ids)
    assert "SESSION NAME" in wide.stdout and "ISSUED" in wide.stdout
    csv_rows = list(csv.DictReader(io.StringIO(run_broker("leases", "--format", "csv").stdout)))
    assert sorted(r["lease_id"] for r in csv_rows) == sorted(full_ids)


def test_columns_picks_and_orders_in_every_format(vault):
    credential("--mount", "aws", "--role", "ci")
    table = run_broker("leases", "--columns", "role,lease_id,left")
    assert table.stdout.splitlines()[0].split() == ["ROLE", "LEASE", "ID", "LEFT"]
    (row,) = json.loads(run_broker("leases", "--format", "json", "--columns", "role,lease_id").stdout)
    assert list(row) == ["role", "lease_id"] and row["lease_id"].startswith("aws/creds/ci/")
    assert_one_line_error(run_broker("leases", "--columns", "role,secret"), contains="unknown column secret", code=2)


def test_revoke_and_renew_reports_fit_120_columns(vault):
    issue_typical_leases(vault)
    vault.inject_fault(403, count=1, path_contains="sys/leases/renew")
    renewed = run_broker("renew", "--all")
    lines = table_lines(renewed.stdout)[:6]  # the summary line follows the table
    assert_fits(lines, 4)
    assert "\nfailed aws/" in renewed.stdout
    assert "..  iam_user" in renewed.stdout  # a short lease id

    vault.inject_fault(403, count=1, path_contains="sys/leases/revoke")
    revoked = run_broker("revoke", "--all", "--yes")
    lines = table_lines(revoked.stdout)[:6]
    assert_fits(lines, 4)
    assert "failed" in lines[-1] or any("  failed  " in line for line in lines)
    assert "\nfailed aws/" in revoked.stdout  # below the table: the failure in full, with the full lease id
    picked = run_broker("revoke", "--all", "--dry-run", "--columns", "lease_id,result")
    assert table_lines(picked.stdout)[:3][0].split() == ["LEASE", "ID", "RESULT"]
    wide = table_lines(run_broker("revoke", "--all", "--yes", "--wide").stdout)
    assert "SESSION NAME" in wide[0] and "NAMESPACE" in wide[0]


def test_shorteners():
    assert output.short_id("aws/creds/ci/k966K30uLZ15iFCmLYJ4Ee7o", 0) == "k966K30u.."
    assert output.short_id("", 0) is None
    assert output.relative_time(1000, 1000 + 3 * 3600 + 12 * 60 + 5) == "3h12m ago"
    assert output.relative_time("1970-01-01 00:16:40", 0) == "in 16m40s"
    assert output.relative_time(100 + 2 * 86400 + 4 * 3600, 100) == "in 2d4h"
    assert output.cut(10)("a  long   error message", 0) == "a long e.."


def reconcile_table(text: str) -> list[str]:
    """The reconcile table's lines: from its header to the first line that is not a table row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("RESULT", "LEASE ID")))
    end = start + 2
    while end < len(lines) and len(lines[end].split()) > 1 and "/" not in lines[end].split()[1]:
        end += 1  # the lines below the table name each problem with its full lease id (a path)
    return lines[start:end]


def test_the_reconcile_report_fits_120_columns(vault):
    import requests

    issue_typical_leases(vault)
    for issued in vault.issued[:2]:  # two leases revoked outside broker: reconcile marks them ended
        reply = requests.put(
            f"{vault.url}/v1/sys/leases/revoke",
            json={"lease_id": issued.lease_id},
            headers={"X-Vault-Token": vault.root_token},
            timeout=10,
        )
        assert reply.status_code == 204, reply.text
    wide = run_broker("reconcile", "--vault-list", "--dry-run", "--wide").stdout
    assert "ACCESS KEY ID" in reconcile_table(wide)[0] and vault.issued[0].lease_id in wide  # ids in full
    picked = reconcile_table(run_broker("reconcile", "--dry-run", "--columns", "lease_id,result").stdout)
    assert picked[0].split() == ["LEASE", "ID", "RESULT"] and len(picked) == 4
    result = run_broker("reconcile", "--vault-list")
    assert result.returncode == 0, result.stderr
    lines = reconcile_table(result.stdout)
    assert lines[0].split()[:3] == ["RESULT", "LEASE", "ID"]
    assert_fits(lines, 2)
    assert f"\nended {vault.issued[0].lease_id}: " in result.stdout  # below the table: in full
