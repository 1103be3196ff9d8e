"""A real PostgreSQL server for the fleet ledger's tests and benchmark, started in a temporary
directory and stopped afterwards; plus a "hung" server (a loopback listener that accepts and never
answers).

initdb refuses to run as root, so as root the server runs as the unprivileged `postgres` account
(`runuser -u postgres --`). It listens on 127.0.0.1 at a free port (password logins, scram) and on a
Unix socket in its directory (the `postgres` superuser, trust: used once per session to create the
roles, and per test to create a database). broker itself always runs as the least-privileged roles
the README documents: `broker_owner` (owns the database, runs `ledger init`), hosts `host_a..c`
(members of `broker_host`) and responders `resp_1`, `resp_2` (members of `broker_responder`).

"Hosts" (class Host) are separate local ledgers with different BROKER_HOST sharing the server.

    with PostgresServer() as pg:          # or the session fixture `pg` in a test module
        db = pg.create_database()         # owned by broker_owner
        pg.url("host_a", db)              # postgresql+psycopg://host_a:...@127.0.0.1:PORT/db
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PG_BIN = os.environ.get("BROKER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")
HOST_ROLES = ("host_a", "host_b", "host_c")
RESPONDER_ROLES = ("resp_1", "resp_2")
OWNER = "broker_owner"


def available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        return f"PostgreSQL is not installed ({PG_BIN}/initdb is missing; apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` account to run initdb as"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a temporary directory; every step bounded in time."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="broker-pg-")
        self.data = os.path.join(self.dir, "data")
        self.host = "127.0.0.1"
        self.port = 0
        self.password = secrets.token_urlsafe(12)  # the same for every test role
        self._counter = 0
        self._as_root = os.geteuid() == 0
        if self._as_root:
            info = pwd.getpwnam("postgres")
            os.chown(self.dir, info.pw_uid, info.pw_gid)
        os.chmod(self.dir, 0o700)

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        return subprocess.run(
            [*prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.dir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        )

    def start(self) -> PostgresServer:
        done = self._run(
            os.path.join(PG_BIN, "initdb"),
            "-D",
            self.data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as hba:
            hba.write(
                "local all postgres trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
            )
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            options = (
                f"-c listen_addresses={self.host} -p {self.port} -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
                "-c shared_buffers=64MB -c log_min_messages=warning"
            )
            done = self._run(
                os.path.join(PG_BIN, "pg_ctl"),
                "-D",
                self.data,
                "-l",
                os.path.join(self.dir, "server.log"),
                "-w",
                "-t",
                "20",
                "-o",
                options,
                "start",
            )
            if done.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-500:]} (see {self.dir}/server.log)")
        self.create_roles()
        return self

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            done = self._run(os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "-t", "15", "stop")
            if done.returncode:
                self._run(
                    os.path.join(PG_BIN, "pg_ctl"),
                    "-D",
                    self.data,
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "10",
                    "stop",
                )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- as the superuser (setup only) ---------------------------------------------------------------

    def superuser(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=self.dir, port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=5
        )

    def create_roles(self) -> None:
        """The README's setup: an owner, two NOLOGIN group roles, host and responder logins."""
        with self.superuser() as conn:
            conn.execute(f"CREATE ROLE {OWNER} LOGIN PASSWORD '{self.password}'")
            conn.execute("CREATE ROLE broker_host NOLOGIN")
            conn.execute("CREATE ROLE broker_responder NOLOGIN")
            for name in HOST_ROLES:
                conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{self.password}' IN ROLE broker_host")
            for name in RESPONDER_ROLES:
                conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{self.password}' IN ROLE broker_responder")

    def create_database(self, name: str | None = None) -> str:
        if name is None:
            self._counter += 1
            name = f"fleet_{os.getpid()}_{self._counter}"
        with self.superuser() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {OWNER}')
            conn.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
            conn.execute(f'GRANT CONNECT ON DATABASE "{name}" TO broker_host, broker_responder')
        return name

    def drop_database(self, name: str) -> None:
        with self.superuser() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url(self, user: str, dbname: str, *, password: bool = True, driver: str = "postgresql+psycopg") -> str:
        secret = f":{self.password}" if password else ""
        return f"{driver}://{user}{secret}@{self.host}:{self.port}/{dbname}"

    def query(self, dbname: str, sql: str, params=None) -> list[tuple]:
        """Run SQL as the superuser (test assertions only)."""
        with self.superuser(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def pg_stop(self) -> None:
        """Stop the server but keep its files (to test an unreachable server); pg_start brings it back."""
        self._run(os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "-t", "15", "stop")

    def pg_start(self) -> None:
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 -c shared_buffers=64MB"
        )
        done = self._run(
            os.path.join(PG_BIN, "pg_ctl"),
            "-D",
            self.data,
            "-l",
            os.path.join(self.dir, "server.log"),
            "-w",
            "-t",
            "20",
            "-o",
            options,
            "start",
        )
        if done.returncode:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")


class HungServer:
    """A loopback listener that accepts connections and never answers (a hung PostgreSQL)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(conn)

    def url(self, user: str = "host_a", password: str = "pw", dbname: str = "broker") -> str:
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def __enter__(self) -> HungServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self.sock.close()


def closed_port_url(user: str = "host_a", password: str = "pw", dbname: str = "broker") -> str:
    """A URL on a loopback port where nothing listens (an unreachable PostgreSQL)."""
    return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{free_port()}/{dbname}"


# -- simulated hosts: each a local ledger of its own with a different BROKER_HOST ------------------
ROOT = Path(__file__).resolve().parents[2]


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("BROKER_LEDGER_URL", None)
    env.update({k: v for k, v in (extra or {}).items() if v is not None})
    return env


def allow_host(url: str, host: str) -> bool:
    """As the database owner would (README, fleet section): let the host login in `url` push rows
    for `host`. False when the login is no host login or the schema is not there yet."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.username not in HOST_ROLES or not parsed.port:
        return False
    try:
        with psycopg.connect(
            host=parsed.host,
            port=parsed.port,
            user=OWNER,
            password=parsed.password,
            dbname=parsed.database,
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            conn.execute(
                "INSERT INTO fleet_host_logins (db_user, host) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (parsed.username, host),
            )
    except psycopg.Error:
        return False
    return True


class Host:
    """One machine: its own database, host name, OS user and PostgreSQL login."""

    def __init__(self, base: Path, name: str, url: str | None, *, user: str = "alice"):
        self.name = name
        self.user = user
        self.dir = Path(base) / name
        self.db = str(self.dir / "data" / "broker.db")
        self.url = url
        self.key_dir = str(self.dir / "key")
        if url:
            allow_host(url, name)

    def env(self, **extra) -> dict:
        return {
            "BROKER_DB": self.db,
            "BROKER_HOST": self.name,
            "BROKER_LEDGER_URL": self.url,
            "BROKER_KEY_DIR": self.key_dir,
            "BROKER_KEY_STORE": "file",
            "HOME": str(self.dir),
            "LOGNAME": self.user,
            "USER": self.user,
            **extra,
        }

    def app(self):
        from broker.app import App

        return App(self.db, self.url)

    def broker(self, *args: str, timeout: float = 60, url: str | None = "same", **extra) -> subprocess.CompletedProcess:
        env = self.env(**extra)
        if url != "same":
            env["BROKER_LEDGER_URL"] = url
        return subprocess.run(
            [sys.executable, "-m", "broker", *args],
            env=child_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def add_leases(
        self,
        count: int,
        *,
        role: str = "deploy",
        mount: str = "aws",
        namespace: str = "",
        credential_type: str = "assumed_role",
        ttl: int = 3600,
        issued_at: int | None = None,
        secret: bytes | None = b"sealed-placeholder",
        enqueue: bool = True,
        issued: list | None = None,
    ) -> list[tuple[int, str]]:
        """Record `count` active leases as credential-process would (outbox entries included), or
        the given `issued` ones (tests.support.vault_double.Issued: leases the Vault double really holds);
        returns [(row id, lease_id)]. Bulk sqlite3 for speed; the schema comes from broker itself."""
        self.app().engine.dispose()  # creates and migrates the database
        now = int(time.time()) if issued_at is None else issued_at
        sts = credential_type != "iam_user"
        specs = [
            (
                f"{mount}/{'sts' if sts else 'creds'}/{role}/{self.name}{i:06d}{token}{'.ns1d' if namespace else ''}",
                f"ASIA{token.upper()}",
                f"broker-{self.user}-{i}-{token}" if credential_type == "assumed_role" else None,
            )
            for i, token in ((i, secrets.token_hex(8)) for i in range(count))
        ]
        if issued is not None:
            specs = [(x.lease_id, x.access_key, x.arn.rsplit("/", 1)[1] if x.arn else None) for x in issued]
        rows = []
        for i, (lease_id, access_key_id, session_name) in enumerate(specs):
            rows.append(
                (
                    lease_id,
                    None,
                    None,
                    "http://127.0.0.1:8200",
                    namespace,
                    mount,
                    role,
                    "sts" if sts else "creds",
                    credential_type,
                    access_key_id,
                    session_name,
                    None,
                    not sts,
                    now - i,
                    None,
                    now - i + ttl,
                    "active",
                    None,
                    None,
                    None,
                    secret,
                    self.name,
                    self.user,
                )
            )
        count = len(rows)
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO leases (lease_id, cache_key, profile, vault_addr, namespace, mount, role, "
                    "endpoint, credential_type, access_key_id, role_session_name, role_arn, renewable, "
                    "issued_at, renewed_at, "
                    "expires_at, state, revoked_at, revoked_by, revoke_error, secret, host, os_user) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                ids = conn.execute("SELECT id, lease_id FROM leases ORDER BY id DESC LIMIT ?", (count,)).fetchall()
                if enqueue:
                    conn.executemany(
                        "INSERT OR REPLACE INTO outbox (lease_row, enqueued_at) VALUES (?, ?)",
                        [(row_id, now) for row_id, _ in ids],
                    )
        finally:
            conn.close()
        return sorted(ids)

    def sql(self, query: str, params=()) -> list[tuple]:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            with conn:
                return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def pending(self) -> int:
        return self.sql("SELECT count(*) FROM outbox")[0][0]


# -- pytest fixtures (import them into a test module: `from tests.support.pg import pg, fleet_db`) -----------

try:
    import pytest
except ImportError:  # the benchmark uses PostgresServer without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def pg() -> Iterator[PostgresServer]:
        reason = available()
        if reason:
            pytest.skip(reason)
        started = time.monotonic()
        with PostgresServer() as server:
            server.start_seconds = time.monotonic() - started
            yield server

    @pytest.fixture
    def fleet_url(request, pg):
        """A URL factory `fleet_url(login, db)`: straight to the session PostgreSQL, or through the
        session PgBouncer (transaction pooling) when a test is parametrized with `both_paths`. A test
        module using it imports `pgbouncer` from tests/support/pgbouncer.py too."""
        if getattr(request, "param", "direct") == "pgbouncer":
            return request.getfixturevalue("pgbouncer").url
        return pg.url

    # Run a test both straight to PostgreSQL and through PgBouncer in transaction pooling mode.
    both_paths = pytest.mark.parametrize("fleet_url", ["direct", "pgbouncer"], indirect=True)

    @pytest.fixture
    def fleet_db(pg) -> Iterator[str]:
        """A fresh database owned by broker_owner, its shared schema created with `ledger init`."""
        from broker.app import App
        from broker.fleet import ledger

        name = pg.create_database()
        owner = App(ledger_url=pg.url(OWNER, name))
        try:
            ledger.init_schema(owner)
        finally:
            owner.close()
        try:
            yield name
        finally:
            pg.drop_database(name)
