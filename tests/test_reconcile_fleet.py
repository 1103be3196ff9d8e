"""`broker reconcile --fleet`: every host's rows in the fleet ledger checked against Vault by a
responder (real PostgreSQL, the Vault double)."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json

import requests

from tests.support.pg import (  # noqa: F401 - pytest fixtures
    Host,
    fleet_db,
    pg,
)
from tests.test_fleet_revoke import issue


def _revoke_in_vault(vault, lease_id: str) -> None:
    reply = requests.put(
        f"{vault.url}/v1/sys/leases/revoke",
        json={"lease_id": lease_id},
        headers={"X-Vault-Token": vault.root_token},
        timeout=10,
    )
    assert reply.status_code == 204, reply.text


def test_fleet_rows_vault_no_longer_knows_are_ended_and_unknown_leases_found(tmp_path, pg, fleet_db, vault):
    hosts = [Host(tmp_path, f"host-{x}", pg.url(f"host_{x}", fleet_db), user=f"user{x}") for x in "ab"]
    pushed = {}
    for host in hosts:
        pushed[host.name] = issue(vault, 2)
        host.add_leases(0, issued=pushed[host.name])
        assert host.broker("ledger", "sync").returncode == 0
    gone = [pushed["host-a"][0].lease_id, pushed["host-b"][1].lease_id]
    for lease_id in gone:
        _revoke_in_vault(vault, lease_id)
    stray = issue(vault, 1)[0]  # issued by hand: no ledger has it
    desk = Host(tmp_path, "desk-1", pg.url("resp_1", fleet_db), user="oncall")

    result = desk.broker("reconcile", "--fleet", "--vault-list", "--format", "json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ended = sorted((r["lease_id"], r["reason"]) for r in report["checked"] if r["result"] == "ended")
    assert ended == sorted((lease_id, "revoked outside broker") for lease_id in gone)
    assert report["summary"]["live"] == 2
    assert [u["lease_id"] for u in report["unknown"]] == [stray.lease_id]

    rows = pg.query(fleet_db, "SELECT lease_id, state, end_reason, revoked_by FROM fleet_leases ORDER BY lease_id")
    marked = {r[0]: r[1:] for r in rows if r[1] == "revoked"}
    assert set(marked) == set(gone)
    assert all(m[1] == "revoked outside broker" and m[2].startswith("reconcile by oncall@") for m in marked.values())
    again = desk.broker("reconcile", "--fleet", "--format", "json", timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["summary"]["ended"] == 0  # nothing left to mark
