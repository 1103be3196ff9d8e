"""The migrations upgrade populated databases of the previous schemas: a local ledger at 0001 with
leases, a profile and an outbox entry, and a fleet ledger at f001 (real PostgreSQL) with rows. Data
is kept, the new columns are null, and the responder's commands read the upgraded rows."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json
import os
import sqlite3
import time

from alembic import command
from sqlalchemy import create_engine

from broker import cache, db
from tests.support.brokerproc import run_broker
from tests.support.pg import OWNER, Host, pg  # noqa: F401 - pytest fixtures

NEW_LOCAL = ("display_name", "entity_id", "token_accessor", "token_policies", "account_id", "principal_arn")


def _local_0001(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(db.alembic_config(connection=conn), "0001")
    engine.dispose()
    os.chmod(path, 0o600)
    now = int(time.time())
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO profiles (name, mount, role, namespace, ttl, role_arn, role_session_name, "
            "credential_type, region, created_at, updated_at) "
            "VALUES ('ci', 'aws', 'ci', NULL, NULL, NULL, NULL, NULL, 'eu-west-1', ?, ?)",
            (now, now),
        )
        for i, (state, key) in enumerate((("active", "AKIAOLDSCHEMA0000001"), ("revoked", "ASIAOLDSCHEMA0000002"))):
            conn.execute(
                "INSERT INTO leases (lease_id, cache_key, profile, vault_addr, namespace, mount, role, endpoint, "
                "credential_type, access_key_id, role_session_name, role_arn, renewable, issued_at, renewed_at, "
                "expires_at, state, revoked_at, revoked_by, revoke_error, secret, host, os_user) "
                "VALUES (?, NULL, 'ci', 'http://127.0.0.1:8200', '', 'aws', 'ci', 'creds', ?, ?, NULL, NULL, 1, ?, "
                "NULL, ?, ?, ?, ?, NULL, NULL, 'old-host', 'olduser')",
                (
                    f"aws/creds/ci/old{i}",
                    "iam_user" if i == 0 else "session_token",
                    key,
                    now - 60,
                    now + 3600,
                    state,
                    now - 30 if state == "revoked" else None,
                    "oncall@desk" if state == "revoked" else None,
                ),
            )
        conn.execute("INSERT INTO outbox (lease_row, enqueued_at) VALUES (1, ?)", (now,))
    conn.close()


def test_local_0001_database_with_rows_upgrades_to_head():
    path = os.environ["BROKER_DB"]
    _local_0001(path)
    listed = run_broker("leases", "--format", "json")  # opening the database migrates it
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["access_key_id"] for r in rows) == ["AKIAOLDSCHEMA0000001", "ASIAOLDSCHEMA0000002"]
    assert all(r[name] is None for r in rows for name in NEW_LOCAL)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(cache.SCHEMA_QUERY).fetchone() == (cache.SCHEMA_HEAD,)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
        assert conn.execute("SELECT region, account_id FROM profiles WHERE name = 'ci'").fetchone() == (
            "eu-west-1",
            None,
        )
        kept = conn.execute("SELECT state, revoked_by, host, os_user FROM leases ORDER BY id").fetchall()
        assert kept == [("active", None, "old-host", "olduser"), ("revoked", "oncall@desk", "old-host", "olduser")]
    finally:
        conn.close()
    assert any(name.endswith(".bak") and ".0001." in name for name in os.listdir(os.path.dirname(path)))
    found = run_broker("whois", "ASIAOLDSCHEMA0000002", "--format", "json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["leases"][0]["revoked_by"] == "oncall@desk"


def test_fleet_f001_database_with_rows_upgrades_to_f002(tmp_path, pg):
    from broker.app import App
    from broker.fleet import ledger

    name = pg.create_database()
    owner = App(ledger_url=pg.url(OWNER, name))
    try:
        with owner.fleet.begin("the test's f001 schema", check_schema=False) as conn:
            command.upgrade(db.alembic_config(ledger.fleet_migrations_dir(), conn), "f001")
        for i in range(3):
            pg.query(
                name,
                "INSERT INTO fleet_leases (lease_id, access_key_id, vault_addr, namespace, mount, role, profile, "
                "credential_type, role_session_name, issued_at, expires_at, state, host, os_user) VALUES "
                "(%s, %s, 'http://vault:8200', '', 'aws', 'deploy', NULL, 'assumed_role', %s, now(), "
                "now() + interval '1 hour', 'active', %s, 'alice')",
                (f"aws/sts/deploy/f{i}", f"ASIAFLEETOLD000000{i:02d}", f"broker-alice-{i}", f"host-{i}"),
            )
        assert pg.query(name, "SELECT version_num FROM broker_fleet_version") == [("f001",)]
        result = ledger.init_schema(owner)
        assert (result.before, result.after) == ("f001", ledger.SCHEMA_HEAD)
    finally:
        owner.close()
    rows = pg.query(
        name,
        "SELECT access_key_id, host, display_name, entity_id, token_accessor, token_policies, account_id, "
        "principal_arn, end_reason FROM fleet_leases ORDER BY access_key_id",
    )
    assert [(r[0], r[1]) for r in rows] == [(f"ASIAFLEETOLD000000{i:02d}", f"host-{i}") for i in range(3)]
    assert all(value is None for r in rows for value in r[2:])
    desk = Host(tmp_path, "desk", pg.url("resp_1", name), user="oncall")
    listed = desk.broker("leases", "--fleet", "--format", "json", "--session-name", "broker-alice-1")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["access_key_id"] == "ASIAFLEETOLD00000001" and row["display_name"] is None and "entity_id" in row
    who = desk.broker("whois", "ASIAFLEETOLD00000002", "--format", "json")
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)[0]["leases"][0]["host"] == "host-2"
    pg.drop_database(name)
