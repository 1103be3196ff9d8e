"""tests/support/pgbouncer.py: a psycopg connection through PgBouncer (transaction pooling) runs queries."""

from __future__ import annotations

import pytest

from tests.support.pg import OWNER, pg  # noqa: F401 - the session fixture
from tests.support.pgbouncer import pgbouncer  # noqa: F401 - the session fixture

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def db(pg):  # noqa: F811
    name = pg.create_database()
    try:
        yield name
    finally:
        pg.drop_database(name)


def test_queries_through_pgbouncer_in_transaction_mode(pgbouncer, db):  # noqa: F811
    with pgbouncer.connect(OWNER, db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")
        for n in range(12):  # past psycopg's default prepare_threshold (5): prepared statements are off
            conn.execute("INSERT INTO t VALUES (%s)", (n,))
        assert conn.execute("SELECT count(*), sum(n) FROM t").fetchone() == (12, 66)
        assert conn.execute("SELECT current_user").fetchone() == (OWNER,)
    with pgbouncer.connect("host_a", db) as conn:
        with conn.transaction():
            assert conn.execute("SELECT 1").fetchone() == (1,)
    pools = [row for row in pgbouncer.show_pools() if row["database"] == db]
    assert pools and all(row["pool_mode"] == "transaction" for row in pools)
    assert 1 <= pgbouncer.server_count(db) <= 10
    assert pgbouncer.url("host_a", db).startswith(f"postgresql+psycopg://host_a:{pgbouncer.password}@127.0.0.1:")


def test_many_clients_share_few_server_connections(pgbouncer, db):  # noqa: F811
    conns = [pgbouncer.connect("host_b", db, autocommit=True) for _ in range(25)]
    try:
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pgbouncer.server_count(db, "host_b") <= pgbouncer.pool_size
    finally:
        for conn in conns:
            conn.close()


def test_sqlalchemy_engine_through_pgbouncer(pgbouncer, db):  # noqa: F811
    import sqlalchemy as sa

    engine = sa.create_engine(pgbouncer.url(OWNER, db), connect_args={"prepare_threshold": None})
    try:
        with engine.begin() as conn:
            for _ in range(8):
                assert conn.execute(sa.text("SELECT :x"), {"x": 3}).scalar() == 3
    finally:
        engine.dispose()
