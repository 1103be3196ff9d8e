"""The fleet ledger against a real PostgreSQL: push, list, pull, the outbox under failure, least
privilege, password masking and the shared schema. Leases here are recorded straight into each
host's local ledger (as credential-process records them); test_fleet_e2e.py goes through Vault."""

# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from broker.fleet import ledger as fleet
from broker.fleet import listing as fleet_listing
from broker.selection import Selection
from tests.support.pg import (  # noqa: F401 - pytest fixtures
    OWNER,
    Host,
    HungServer,
    allow_host,
    both_paths,
    child_env,
    closed_port_url,
    fleet_db,
    fleet_url,
    pg,
)
from tests.support.pgbouncer import pgbouncer  # noqa: F401 - pytest fixture (the PgBouncer path)


def one_line_error(result, code=1, contains=""):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("broker: "), result.stderr
    assert "Traceback" not in result.stderr
    assert contains in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def hosts(tmp_path, fleet_url, fleet_db):
    return [Host(tmp_path, f"host-{x}", fleet_url(f"host_{x}", fleet_db), user=f"user{x}") for x in "abc"]


def responder_app(tmp_path, fleet_url, fleet_db, who="resp_1"):
    return Host(tmp_path, f"responder-{who}", fleet_url(who, fleet_db)).app()


def listed(app, **filters):
    return list(fleet_listing.list_leases(app, Selection(**filters)))


@both_paths
def test_push_and_list_across_three_hosts(tmp_path, pg, fleet_url, fleet_db, hosts):
    a, b, c = hosts
    a.add_leases(3, role="deploy")
    b.add_leases(2, role="deploy")
    b.add_leases(1, role="ci", credential_type="iam_user")
    c.add_leases(4, role="ci", credential_type="iam_user", ttl=-10)  # expired
    for host in hosts:
        result = host.broker("ledger", "sync")
        assert result.returncode == 0, result.stderr
        assert "pushed" in result.stderr and result.stdout == ""
        assert host.pending() == 0
    responder = responder_app(tmp_path, fleet_url, fleet_db)
    rows = listed(responder)
    assert len(rows) == 10
    assert list(rows[0]) == fleet.COLUMNS
    assert [r["issued_at"] for r in rows] == sorted((r["issued_at"] for r in rows), reverse=True)
    assert {r["host"] for r in listed(responder, role="deploy")} == {"host-a", "host-b"}
    assert len(listed(responder, role="deploy", host="host-b")) == 2
    assert {r["user"] for r in listed(responder, user="userc")} == {"userc"}
    assert len(listed(responder, state="expired")) == 4
    assert len(listed(responder, state="active")) == 6
    assert len(listed(responder, role="ci", mount="aws", state="active")) == 1
    assert listed(responder, state="revoked") == []
    local = a.sql("SELECT lease_id, access_key_id, role_session_name, issued_at, expires_at FROM leases")
    shared = {
        (r["lease_id"], r["access_key_id"], r["role_session_name"], r["issued_at"], r["expires_at"])
        for r in listed(responder, host="host-a")
    }
    assert shared == set(local)
    # A host reads back only the rows its own login pushed (row-level security).
    assert {r["host"] for r in listed(b.app())} == {"host-b"}


@both_paths
def test_sync_is_idempotent_and_pushes_changes(tmp_path, pg, fleet_url, fleet_db, hosts):
    a = hosts[0]
    (row_id, lease_id), *_ = a.add_leases(2)
    assert a.broker("ledger", "sync").returncode == 0
    assert a.broker("ledger", "sync").returncode == 0
    a.sql("UPDATE leases SET expires_at = expires_at + 600 WHERE id = ?", (row_id,))
    a.sql("INSERT INTO outbox VALUES (?, ?)", (row_id, int(time.time())))
    assert a.broker("ledger", "sync").returncode == 0
    assert pg.query(fleet_db, "SELECT count(*) FROM fleet_leases")[0][0] == 2
    local_expiry = a.sql("SELECT expires_at FROM leases WHERE id = ?", (row_id,))[0][0]
    assert listed(a.app(), lease_ids=(lease_id,))[0]["expires_at"] == local_expiry


def test_status_reports_pending_and_last_push(tmp_path, pg, fleet_db, hosts):
    a = hosts[0]
    a.add_leases(3)
    result = a.broker("ledger", "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status == {
        "url": pg.url("host_a", fleet_db).replace(pg.password, "***"),
        "revision": fleet.SCHEMA_HEAD,
        "pending": 3,
        "last_push": None,
    }
    assert a.broker("ledger", "sync", "--quiet").stderr == ""
    status = json.loads(a.broker("ledger", "status", "--format", "json").stdout)
    assert status["pending"] == 0 and status["last_push"].endswith("Z")
    table = a.broker("ledger", "status")
    assert table.returncode == 0 and "revision   f003" in table.stdout and pg.password not in table.stdout


@pytest.mark.parametrize("server", ["stopped", "hung"])
def test_unreachable_ledger_keeps_the_outbox(tmp_path, pg, fleet_db, hosts, server):
    a = hosts[0]
    a.add_leases(2)
    with HungServer() as hung:
        url = (
            closed_port_url("host_a", pg.password, fleet_db)
            if server == "stopped"
            else hung.url("host_a", pg.password, fleet_db)
        )
        started = time.monotonic()
        result = a.broker("ledger", "sync", url=url)
        elapsed = time.monotonic() - started
        line = one_line_error(result, 1, "fleet ledger")
        assert pg.password not in result.stderr + result.stdout
        assert elapsed < fleet.CONNECT_TIMEOUT_SECONDS * 2 + 3, elapsed
        assert a.pending() == 2
        if server == "stopped":  # (the same connection path: a hung server is covered by sync)
            status = a.broker("ledger", "status", "--format", "json", url=url)
            assert status.returncode == 1
            assert json.loads(status.stdout) == {
                "url": url.replace(pg.password, "***"),
                "revision": None,
                "pending": 2,
                "last_push": None,
            }
            one_line_error(status, 1)
            assert pg.password not in status.stderr
        else:
            assert hung.accepted >= 1
            assert "timeout" in line or "timed out" in line
    assert a.broker("ledger", "sync").returncode == 0
    assert a.pending() == 0
    assert pg.query(fleet_db, "SELECT count(*) FROM fleet_leases")[0][0] == 2


def test_kill_9_during_a_push_loses_and_duplicates_nothing(tmp_path, pg, fleet_db, hosts):
    a = hosts[0]
    count = 12_000
    a.add_leases(count)
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "ledger", "sync"],
        env=child_env(a.env()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        pushed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            pushed = pg.query(fleet_db, "SELECT count(*) FROM fleet_leases")[0][0]
            if pushed:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the push finished before it could be killed; raise `count`"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stderr.close()
    assert 0 < pushed < count
    assert a.pending() > 0
    result = a.broker("ledger", "sync")
    assert result.returncode == 0, result.stderr
    assert a.pending() == 0
    total, distinct = pg.query(fleet_db, "SELECT count(*), count(DISTINCT lease_id) FROM fleet_leases")[0]
    assert total == distinct == count


@both_paths
def test_a_pulled_revocation_wipes_the_cached_secret(tmp_path, pg, fleet_url, fleet_db, hosts):
    a, b = hosts[0], hosts[1]
    (row_a, lease_a), (row_a2, _) = a.add_leases(2)
    b.add_leases(1)
    for host in (a, b):
        assert host.broker("ledger", "sync").returncode == 0
    with pg.superuser(fleet_db) as conn:  # as a responder would mark it (test_fleet_e2e does it for real)
        conn.execute("SET ROLE resp_1")
        conn.execute(
            "UPDATE fleet_leases SET state = 'revoked', revoked_at = now(), revoked_by = 'bob@laptop' "
            "WHERE lease_id = %s",
            (lease_a,),
        )
    result = a.broker("ledger", "sync")
    assert result.returncode == 0, result.stderr
    assert "pulled 1 revocation" in result.stderr
    state, revoked_by, secret = a.sql("SELECT state, revoked_by, secret FROM leases WHERE id = ?", (row_a,))[0]
    assert (state, revoked_by, secret) == ("revoked", "bob@laptop", None)
    assert a.sql("SELECT state FROM leases WHERE id = ?", (row_a2,))[0][0] == "active"
    assert b.sql("SELECT count(*) FROM leases WHERE state = 'revoked'")[0][0] == 0
    # The host later pushes an older state (say a renewal recorded before it pulled): it stays revoked.
    a.sql(
        "UPDATE leases SET state = 'active', revoked_at = NULL, revoked_by = NULL, "
        "expires_at = expires_at + 60 WHERE id = ?",
        (row_a,),
    )
    a.sql("INSERT INTO outbox VALUES (?, ?)", (row_a, int(time.time())))
    assert a.broker("ledger", "sync").returncode == 0
    assert pg.query(fleet_db, "SELECT state, revoked_by FROM fleet_leases WHERE lease_id = %s", (lease_a,)) == [
        ("revoked", "bob@laptop")
    ]


def test_least_privilege(tmp_path, pg, fleet_db, hosts):
    import psycopg

    a = hosts[0]
    ((_, lease_a),) = a.add_leases(1)
    assert a.broker("ledger", "sync").returncode == 0

    def as_role(role, sql, params=()):
        with psycopg.connect(pg.url(role, fleet_db, driver="postgresql"), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.rowcount

    # Another host neither sees nor changes host_a's rows.
    assert as_role("host_b", "UPDATE fleet_leases SET state = 'revoked' WHERE lease_id = %s", (lease_a,)) == 0
    # A host may not claim to be another login, nor touch columns outside its grant.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(
            "host_b",
            "INSERT INTO fleet_leases (lease_id, access_key_id, vault_addr, mount, role, "
            "credential_type, issued_at, expires_at, host, os_user, db_user) VALUES "
            "('x', 'AKIAX', 'v', 'aws', 'r', 'iam_user', now(), now(), 'h', 'u', 'host_a')",
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("host_a", "UPDATE fleet_leases SET host = 'elsewhere'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("host_a", "DELETE FROM fleet_leases")
    # Responders read everything and change only the revocation columns.
    assert as_role("resp_2", "SELECT * FROM fleet_leases") == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("resp_2", "UPDATE fleet_leases SET role = 'x'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("resp_2", "DELETE FROM fleet_leases")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role("resp_2", "CREATE TABLE public.t (x int)")
    # No broker role is a superuser, and none can create roles or databases.
    flags = pg.query(
        "postgres",
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname IN ('broker_owner', 'host_a', 'resp_1')",
    )
    assert all(not any(row[1:]) for row in flags) and len(flags) == 3


def test_password_never_shown(tmp_path, pg, fleet_db, hosts):
    a = hosts[0]
    a.add_leases(1)
    wrong = pg.url("host_a", fleet_db).replace(pg.password, "Sekr3t-Passw0rd")
    attempts = [
        (url, ("-v", "ledger", "sync"))
        for url in (
            wrong,
            closed_port_url("host_a", "Sekr3t-Passw0rd", fleet_db),
            wrong.replace(f"/{fleet_db}", "/nodb?sslmode=bogus"),
            "postgresql://host_a:Sekr3t-Passw0rd@[::1",
            wrong + "?password=Sekr3t-Passw0rd",
        )
    ] + [(wrong, ("ledger", "status"))]
    for url, args in attempts:
        result = a.broker(*args, url=url)
        assert result.returncode != 0
        assert "Sekr3t" not in result.stdout + result.stderr, (url, result.stderr)
        assert "***" in result.stderr or "not a URL" in result.stderr, result.stderr
    # The password may come from PGPASSWORD or ~/.pgpass instead of the URL (libpq's rules).
    bare = pg.url("host_a", fleet_db, password=False)
    assert a.broker("ledger", "sync", url=bare, PGPASSWORD=pg.password).returncode == 0
    pgpass = a.dir / ".pgpass"
    pgpass.write_text(f"{pg.host}:{pg.port}:{fleet_db}:host_a:{pg.password}\n")
    pgpass.chmod(0o600)
    assert a.broker("ledger", "status", url=bare).returncode == 0


def test_plain_postgresql_url_is_psycopg_3_and_others_are_refused(tmp_path, pg, fleet_db, hosts):
    a = hosts[0]
    a.add_leases(1)
    assert a.broker("ledger", "sync", url=pg.url("host_a", fleet_db, driver="postgresql")).returncode == 0
    one_line_error(a.broker("ledger", "sync", url="sqlite:////tmp/x.db"), 2, "PostgreSQL URL")
    one_line_error(a.broker("ledger", "sync", url="postgresql+asyncpg://u:pw@h/db"), 2, "PostgreSQL URL")
    one_line_error(a.broker("ledger", "sync", url=""), 2, "--ledger-url")


def test_no_ledger_url_changes_nothing(tmp_path):
    host = Host(tmp_path, "solo", None)
    result = host.broker("ledger", "status")
    one_line_error(result, 2, "--ledger-url")
    host.add_leases(1, enqueue=False)
    app = host.app()
    from broker import issuance

    with app.transaction() as session:
        issuance.enqueue_for_fleet(app, session, 1)
    assert host.pending() == 0
    assert fleet.spawn_background_sync(app) is False


def test_ledger_init_refuses_a_newer_schema(tmp_path, pg, fleet_db, hosts):
    a = hosts[0]
    owner = Host(tmp_path, "owner", pg.url(OWNER, fleet_db))
    result = owner.broker("ledger", "init")
    assert result.returncode == 0 and "already at schema f003" in result.stderr
    pg.query(fleet_db, "UPDATE broker_fleet_version SET version_num = 'f999'")
    one_line_error(owner.broker("ledger", "init"), 1, "newer than this broker")
    a.add_leases(1)
    one_line_error(a.broker("ledger", "sync"), 1, "upgrade broker")
    assert a.pending() == 1
    status = a.broker("ledger", "status", "--format", "json")
    assert status.returncode == 1 and json.loads(status.stdout)["revision"] == "f999"


def test_ledger_init_needs_the_group_roles_and_the_owner(tmp_path, pg):
    name = pg.create_database()
    try:
        host = Host(tmp_path, "h", pg.url("host_a", name))
        one_line_error(host.broker("ledger", "sync"), 1, "ledger init")
        one_line_error(host.broker("ledger", "init"), 1, "denied")
        owner = Host(tmp_path, "owner", pg.url(OWNER, name))
        result = owner.broker("ledger", "init")
        assert result.returncode == 0, result.stderr
        assert "upgraded from empty to schema f003" in result.stderr
        assert pg.password not in result.stderr
    finally:
        pg.drop_database(name)


def test_ledger_init_and_timeouts_through_pgbouncer(tmp_path, pg, pgbouncer):
    """`ledger init` is one transaction (transactional DDL under a transaction-scoped advisory lock),
    so a transaction pooler serves it; the timeouts are SET LOCAL per transaction, not startup options
    (which PgBouncer refuses), and never leak into the next client's transaction."""
    from sqlalchemy import text

    name = pg.create_database()
    try:
        owner = Host(tmp_path, "owner", pgbouncer.url(OWNER, name))
        result = owner.broker("ledger", "init")
        assert result.returncode == 0, result.stderr
        assert "upgraded from empty to schema f003" in result.stderr
        host = Host(tmp_path, "h", pgbouncer.url("host_a", name))
        host.add_leases(3)
        assert host.broker("ledger", "sync").returncode == 0 and host.pending() == 0
        app = host.app()
        try:
            with app.fleet.begin("a test") as conn:
                for _ in range(8):  # past psycopg's prepare threshold: nothing is prepared server-side
                    assert conn.execute(text("SELECT count(*) FROM fleet_leases")).scalar() == 3
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "15s"
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "5s"
        finally:
            app.close()
        with pgbouncer.connect("host_a", name, autocommit=True) as raw:  # a server connection broker used
            assert raw.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert pgbouncer.server_count(name) <= pgbouncer.pool_size
    finally:
        pg.drop_database(name)


def test_schema_matches_the_models_and_the_migrations(pg, fleet_db):
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from broker.fleet.models import VERSION_TABLE, FleetBase

    config = Config()
    config.set_main_option("script_location", fleet.fleet_migrations_dir())
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [fleet.SCHEMA_HEAD]
    assert tuple(reversed([r.revision for r in script.walk_revisions()])) == fleet.KNOWN_REVISIONS
    engine = create_engine(pg.url(OWNER, fleet_db))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(context, FleetBase.metadata) == []
    finally:
        engine.dispose()


def test_fleet_modules_stay_off_the_miss_and_hit_paths():
    code = (
        "import sys, broker.cli, broker.issuance, broker.fastpath;"
        "heavy = ('psycopg', 'broker.fleet', 'sqlalchemy.dialects.postgresql');"
        "bad = [m for m in sys.modules if m.startswith(heavy)];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@both_paths
def test_json_rows_match_the_public_fields(tmp_path, pg, fleet_url, fleet_db, hosts):
    a = hosts[0]
    (_, odd), *_ = a.add_leases(3)
    a.add_leases(1, ttl=-5)  # expired
    a.sql("UPDATE leases SET host = ?, os_user = ? WHERE lease_id = ?", ('la"p\\top\u00e9\n', "o'brien", odd))
    assert allow_host(a.url, 'la"p\\top\u00e9\n')  # the owner allows the odd name too (fleet_host_logins)
    assert a.broker("ledger", "sync").returncode == 0
    with pg.superuser(fleet_db) as conn:
        conn.execute("SET datestyle = 'SQL, DMY'")  # the session's DateStyle changes nothing
        conn.execute("SET ROLE resp_1")
        conn.execute(
            "UPDATE fleet_leases SET state = 'revoked', revoked_at = now(), revoked_by = 'x@y' WHERE lease_id = %s",
            (odd,),
        )
    responder = responder_app(tmp_path, fleet_url, fleet_db)
    expected = [fleet_listing.iso_row(row) for row in listed(responder)]
    encoded = [text for batch in fleet_listing.json_rows(responder, Selection(), batch_size=2) for text in batch]
    assert [json.loads(text) for text in encoded] == expected
    assert {r["state"] for r in expected} == {"active", "expired", "revoked"}
    assert [r for r in expected if r["lease_id"] == odd][0]["host"] == 'la"p\\top\u00e9\n'
    only = [json.loads(t) for b in fleet_listing.json_rows(responder, Selection(state="expired")) for t in b]
    assert len(only) == 1 and only[0]["state"] == "expired"


def test_an_unescaped_at_sign_in_the_password_is_refused_and_hidden():
    from broker.errors import UsageError

    raw = "postgresql://u:s3c@retpw@127.0.0.1:1/db"
    assert "s3c" not in fleet.mask_url(raw) and "retpw" not in fleet.mask_url(raw)
    with pytest.raises(UsageError) as caught:
        fleet.parse_url(raw)
    assert "s3c" not in str(caught.value) and "retpw" not in str(caught.value) and "%40" in str(caught.value)
