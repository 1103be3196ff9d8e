"""The models, the migrations and the cache-hit queries describe one schema."""

import sqlite3
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from broker import cache, db
from broker.app import App
from broker.models import Base


def test_schema_head_is_the_migrations_head():
    heads = ScriptDirectory.from_config(db.alembic_config()).get_heads()
    assert heads == [cache.SCHEMA_HEAD]


def test_models_and_migrations_agree(tmp_path):
    app = App(str(tmp_path / "ledger.db"))
    with app.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_hit_path_queries_run_against_the_migrated_schema(tmp_path):
    app = App(str(tmp_path / "ledger.db"))
    assert db.read_revision(app.engine) == cache.SCHEMA_HEAD
    conn = sqlite3.connect(app.db_path)
    assert conn.execute(cache.SCHEMA_QUERY).fetchone() == (cache.SCHEMA_HEAD,)
    assert conn.execute(cache.PROFILE_QUERY, ("nobody",)).fetchall() == []
    assert conn.execute(cache.HIT_QUERY, ("key", 0)).fetchall() == []
    profile_columns = {row[1] for row in conn.execute("PRAGMA table_info(profiles)")}
    assert set(cache.REQUEST_FIELDS) <= profile_columns


def test_new_database_files_are_private(tmp_path):
    app = App(str(tmp_path / "sub" / "ledger.db"))
    app.engine  # noqa: B018 - opening creates and migrates
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "sub" / "ledger.db").stat().st_mode & 0o777 == 0o600
    for suffix in ("-wal", "-shm"):
        extra = tmp_path / "sub" / f"ledger.db{suffix}"
        if extra.exists():
            assert extra.stat().st_mode & 0o777 == 0o600


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module of the package imports on its own, first: no import cycle hides behind an order."""
    import pkgutil

    import broker

    modules = sorted(m.name for m in pkgutil.walk_packages(broker.__path__, "broker.") if m.name != "broker.__main__")
    assert {"broker.cli", "broker.bulk", "broker.fleet.revoke", "broker.commands.leases"} <= set(modules)
    for module in modules:
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)
