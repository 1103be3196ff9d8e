"""Debian's PgBouncer in transaction pooling mode in front of a tests/support/pg.py PostgreSQL, for tests.

    with PgBouncer(pg, pool_size=10) as bouncer:      # or the session fixture `pgbouncer`
        bouncer.url("host_a", db)                     # postgresql+psycopg://host_a:...@127.0.0.1:PORT/db
        bouncer.server_count(db)                      # server connections PgBouncer holds for db

PgBouncer listens on 127.0.0.1 at a free port (and a Unix socket in its own temporary directory),
`pool_mode = transaction`, `max_client_conn` 2000, `default_pool_size` as asked. Every database name
is forwarded to the PostgreSQL server (`* =` fallback). Logins: `auth_type = scram-sha-256` with an
`auth_file` holding the plain-text passwords of the roles tests/support/pg.py creates (broker_owner, host_a..c,
resp_1..2, all with the server's one test password), so PgBouncer does SCRAM towards the client and
towards PostgreSQL. The admin console (database `pgbouncer`) takes the login ADMIN_USER, which
exists only in PgBouncer's auth_file.

PgBouncer refuses to run as root, so as root it runs as the `postgres` account (like tests/support/pg.py).

What a client must set behind transaction pooling: PgBouncer 1.18 (Debian 12) does not track
server-side prepared statements, and consecutive transactions of one client can land on different
server connections. psycopg 3 prepares a statement after it ran 5 times (`prepare_threshold`), which
then fails with `prepared statement "_pg3_0" does not exist` (or "already exists"); so connect with
`prepare_threshold=None` (psycopg.connect(..., prepare_threshold=None); with SQLAlchemy
`create_engine(url, connect_args={"prepare_threshold": None})`). Session state (SET without LOCAL,
advisory locks held across transactions, LISTEN, temporary tables) does not survive a transaction
either: use SET LOCAL / pg_advisory_xact_lock inside the transaction.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from tests.support.helpers import ServerProcess
from tests.support.pg import HOST_ROLES, OWNER, RESPONDER_ROLES, PostgresServer, free_port

PGBOUNCER = os.environ.get("BROKER_TEST_PGBOUNCER", shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
ADMIN_USER = "pgbouncer_admin"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def available() -> str | None:
    """None when PgBouncer can be started here, else the reason it cannot."""
    if not os.path.exists(PGBOUNCER):
        return f"PgBouncer is not installed ({PGBOUNCER} is missing; apt-get install pgbouncer)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` account to run pgbouncer as"
    return None


class PgBouncer(ServerProcess):
    """One pgbouncer process; start() waits (bounded) until its admin console answers."""

    def __init__(
        self,
        pg: PostgresServer,
        *,
        pool_size: int = 10,
        max_client_conn: int = 2000,
        pool_mode: str = "transaction",
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.pg = pg
        self.pool_size = int(pool_size)
        self.max_client_conn = int(max_client_conn)
        self.pool_mode = pool_mode
        self.extra_settings = dict(extra_settings or {})
        self.host = "127.0.0.1"
        self.port = 0
        self.password = pg.password  # the same for every login, the admin one included
        self.dir = tempfile.mkdtemp(prefix="broker-pgbouncer-")
        self.proc: subprocess.Popen | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            info = pwd.getpwnam("postgres")
            os.chown(self.dir, info.pw_uid, info.pw_gid)
        os.chmod(self.dir, 0o700)

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def logfile(self) -> str:
        return os.path.join(self.dir, "pgbouncer.log")

    def _write_config(self) -> str:
        users = (OWNER, *HOST_ROLES, *RESPONDER_ROLES, ADMIN_USER)
        auth_file = os.path.join(self.dir, "userlist.txt")
        with open(auth_file, "w", encoding="utf-8") as fh:
            for user in users:
                fh.write(f'"{user}" "{self.password}"\n')
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": self.dir,
            "auth_type": "scram-sha-256",
            "auth_file": auth_file,
            "admin_users": ADMIN_USER,
            "stats_users": ADMIN_USER,
            "pool_mode": self.pool_mode,
            "max_client_conn": str(self.max_client_conn),
            "default_pool_size": str(self.pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "server_lifetime": "3600",
            "server_idle_timeout": "600",
            "server_connect_timeout": "5",
            "server_login_retry": "1",
            "query_wait_timeout": "30",
            "ignore_startup_parameters": "extra_float_digits",  # not `options`: broker needs no special config
            "logfile": self.logfile,
            "log_connections": "0",
            "log_disconnections": "0",
            "log_pooler_errors": "1",
        }
        settings.update(self.extra_settings)
        config = os.path.join(self.dir, "pgbouncer.ini")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write("[databases]\n")
            fh.write(f"* = host={self.pg.host} port={self.pg.port}\n\n[pgbouncer]\n")
            for key, value in settings.items():
                fh.write(f"{key} = {value}\n")
        if self._as_root:
            info = pwd.getpwnam("postgres")
            for path in (auth_file, config):
                os.chown(path, info.pw_uid, info.pw_gid)
                os.chmod(path, 0o600)
        return config

    def start(self) -> PgBouncer:
        last = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            config = self._write_config()
            kwargs: dict[str, Any] = {}
            if self._as_root:
                kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
            self.proc = subprocess.Popen(
                [PGBOUNCER, config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.dir,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                start_new_session=True,
                **kwargs,
            )
            last = self._wait_ready(READY_TIMEOUT)
            if not last:
                return self
            self._terminate()
        raise RuntimeError(f"pgbouncer did not become ready: {last}; log: {self.log_tail()}")

    def _wait_ready(self, timeout: float) -> str:
        """ "" once the admin console answers SHOW VERSION, else why not (bounded in time and count)."""
        deadline = time.monotonic() + timeout
        last = "not tried"
        for _ in range(int(timeout / 0.05) + 1):
            if self.proc is None or self.proc.poll() is not None:
                return f"pgbouncer exited with {None if self.proc is None else self.proc.returncode}"
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                self.admin("SHOW VERSION")
                return ""
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return f"timed out after {timeout}s ({last})"

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # pgbouncer: SIGINT = safe shutdown, SIGTERM = immediate
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)

    @property
    def log_path(self) -> str:
        return self.logfile

    # -- addresses (same shape as PostgresServer.url) ------------------------------------------------

    def url(self, user: str, dbname: str, *, password: bool = True, driver: str = "postgresql+psycopg") -> str:
        """A URL for `user` to `dbname` through PgBouncer; the client must set prepare_threshold=None."""
        secret = f":{self.password}" if password else ""
        return f"{driver}://{user}{secret}@{self.host}:{self.port}/{dbname}"

    url_for = url

    def connect(self, user: str, dbname: str, **kwargs: Any) -> Any:
        """A psycopg connection through PgBouncer, with prepare_threshold=None (see the module doc)."""
        import psycopg

        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("prepare_threshold", None)
        return psycopg.connect(
            host=self.host, port=self.port, user=user, password=self.password, dbname=dbname, **kwargs
        )

    # -- admin console ---------------------------------------------------------------------------------

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run an admin console command (SHOW POOLS, SHOW SERVERS, RECONNECT, ...) and return its rows.

        The console speaks only the simple query protocol, so the command goes through
        PGconn.exec_ (psycopg's normal execute uses the extended protocol).
        """
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=ADMIN_USER,
            password=self.password,
            dbname="pgbouncer",
            autocommit=True,
            connect_timeout=5,
            prepare_threshold=None,
        ) as conn:
            result = conn.pgconn.exec_(command.encode())
            if result.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
                message = (result.error_message or b"").decode(errors="replace").strip()
                raise RuntimeError(f"pgbouncer admin {command!r} failed: {message}")
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            rows = []
            for r in range(result.ntuples):
                row = {}
                for c, name in enumerate(names):
                    value = result.get_value(r, c)
                    row[name] = None if value is None else value.decode(errors="replace")
                rows.append(row)
            return rows

    def show_pools(self) -> list[dict[str, Any]]:
        """SHOW POOLS rows (database, user, cl_active, cl_waiting, sv_active, sv_idle, ..., pool_mode),
        values as text."""
        return self.admin("SHOW POOLS")

    def show_servers(self) -> list[dict[str, Any]]:
        return self.admin("SHOW SERVERS")

    def server_count(self, database: str | None = None, user: str | None = None) -> int:
        """How many server connections PgBouncer holds (to `database` / as `user` when given)."""
        return sum(
            1
            for row in self.show_servers()
            if (database is None or row.get("database") == database) and (user is None or row.get("user") == user)
        )


# -- pytest fixture (import it into a test module: `from tests.support.pg import pg` and
#    `from tests.support.pgbouncer import pgbouncer`) ----------------------------------------------------------

try:
    import pytest
except ImportError:  # usable without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def pgbouncer(pg: PostgresServer) -> Iterator[PgBouncer]:
        """A session PgBouncer (transaction pooling, default_pool_size 10) in front of the session `pg`."""
        reason = available()
        if reason:
            pytest.skip(reason)
        with PgBouncer(pg, pool_size=10) as bouncer:
            yield bouncer
