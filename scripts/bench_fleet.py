#!/usr/bin/env python3
"""Benchmarks for the fleet ledger (issue 8), against a real PostgreSQL started in a temporary
directory (tests/support/pg.py) and the Vault double + moto (`python -m tests.support.vault_double`).

    python scripts/bench_fleet.py                    # every scenario
    python scripts/bench_fleet.py fleet-list         # some of them

The figures and their targets:
- fleet-list:   `broker leases --fleet --role R --format json` over 100,000 rows from 200 hosts <= 1 s
- fleet-revoke: `broker revoke --fleet --role R --yes` of 1,000 leases, Vault adding 20 ms/request <= 4 s
- fleet-miss:   a credential-process miss with PostgreSQL unreachable (and hung) is <= 100 ms slower
                than one with no ledger URL (medians, interleaved runs)
- whois:        `broker whois AKID` over 1,000,000 rows from 10,000 hosts: <= 50 ms of query time, <= 1 s end to end
- window-list:  `broker leases --fleet --issued-after 2h --role R --format json` over the same table <= 1 s
- keys-revoke:  `broker revoke --fleet --access-keys-from keys.txt`, 1,000 keys of that table, Vault adding
                20 ms/request <= 4 s
- fleet-10k:    ten thousand hosts, everything through PgBouncer (transaction pooling, pool of
                POOL_SIZE server connections): one ledger grown by COPY to 10k, 100k and 1,000,000 rows
                from 10,000 host logins' worth of data, and at each size
                `leases --fleet --role R --format json` (R: a tenth of the rows) <= 1 s; at 1,000,000:
                1,000 `broker ledger sync` processes each pushing 10 rows (0 failures, <= 20 s, PostgreSQL
                backends sampled from pg_stat_activity never above the pool size), the same pushes as
                plain psycopg clients (what the database side absorbs without Python start-up),
                `revoke --fleet --role R` of 10,000 leases at +20 ms per Vault request <= 15 s, and
                `ledger prune --older-than 90d` with the worst push latency during it <= 100 ms.
                `--sync-at-once N` bounds how many sync processes run at once (default 100: each
                `broker` start costs ~0.4 s CPU and ~45 MB; 1,000 at once would need ~45 GB);
                `--rows N` changes the largest size (e.g. 200000 for a quick run).

scripts/bench.py can run these too: `SCENARIOS` maps each name to `scenario(workdir, double)` like
its own scenarios (double: an object whose `.info` holds the ready file of tests.support.vault_double), and
`stop_postgres()` stops the one server they share. Nothing here is a test: timing lives here.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import broker_command, command_line, line, run  # noqa: E402 - after the path set-up above

LIST_ROWS = 100_000
LIST_HOSTS = 200
REVOKE_LEASES = 1_000
REVOKE_LATENCY_MS = 20
MISS_RUNS = 11
LIST_RUNS = 5
BIG_ROWS = 1_000_000
BIG_HOSTS = 10_000
# whois, window-list, keys-revoke
BIG_ROLES = 10  # role-0 .. role-9; the listing selects one
BIG_SPACING = 2  # seconds between issuances: 1,000,000 rows span 23 days, 2 h hold 3,600 of them
WHOIS_RUNS = 5
KEYS_REVOKED = 1_000
# fleet-10k
BIG_SIZES = (10_000, 100_000, 1_000_000)
POOL_SIZE = 20
SYNC_PROCESSES = 1_000
SYNC_ROWS = 10
SYNC_AT_ONCE = 100
BIG_REVOKE = 10_000
BIG_REVOKE_CONCURRENCY = 64
PUSH_PROBES_DURING_PRUNE = 0.05  # seconds between two probe pushes while the prune runs

_pg = None  # the PostgresServer the scenarios share
_bouncer = None  # the PgBouncer in front of it (fleet-10k)


def postgres():
    """The shared PostgreSQL server, started on first use (roles as in the README)."""
    global _pg
    if _pg is None:
        from tests.support.pg import PostgresServer, available

        reason = available()
        if reason:
            raise SystemExit(f"cannot run the fleet benchmarks: {reason}")
        _pg = PostgresServer()
        try:
            _pg.start()
        except BaseException:
            _pg.stop()
            _pg = None
            raise
    return _pg


def stop_postgres() -> None:
    """Stop the PgBouncer (fleet-10k) and the PostgreSQL the scenarios share."""
    global _pg, _bouncer
    if _bouncer is not None:
        _bouncer.stop()
        _bouncer = None
    if _pg is not None:
        _pg.stop()
        _pg = None


def fresh_ledger() -> tuple[str, str]:
    """A new shared database with the schema made by `broker ledger init`: (db name, owner URL)."""
    pg = postgres()
    name = pg.create_database()
    owner_url = pg.url("broker_owner", name)
    result = subprocess.run(
        broker_command() + ["ledger", "init"],
        env=base_env({"BROKER_LEDGER_URL": owner_url}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode:
        raise SystemExit(f"broker ledger init failed: {result.stderr.strip()}")
    return name, owner_url


def base_env(extra: dict | None = None, home: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "AWS_", "BROKER_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if home is not None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        env.update(
            HOME=str(home),
            BROKER_DB=str(home / "data" / "broker.db"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_DATA_HOME=str(home / "data-home"),
            BROKER_KEY_STORE="file",
        )
    env.update(extra or {})
    return env


def seed_rows(dbname: str, count: int, hosts: int, role: str, *, credential_type: str = "assumed_role") -> None:
    """`count` active leases of `role` spread over `hosts` hosts, written with COPY as the owner (the
    rows a fleet of hosts would have pushed; the trigger fills listing_json as for a push)."""
    import psycopg

    pg = postgres()
    now = int(time.time())
    with psycopg.connect(pg.url("broker_owner", dbname, driver="postgresql")) as conn:
        columns = (
            "lease_id, access_key_id, vault_addr, namespace, mount, role, profile, credential_type, "
            "role_session_name, issued_at, expires_at, state, host, os_user, db_user"
        )
        with conn.cursor().copy(f"COPY fleet_leases ({columns}) FROM STDIN") as copy:
            for i in range(count):
                h = i % hosts
                token = secrets.token_hex(12)
                copy.write_row(
                    (
                        f"aws/sts/{role}/{token}",
                        f"ASIA{token[:16].upper()}",
                        "http://127.0.0.1:8200",
                        "",
                        "aws",
                        role,
                        role,
                        credential_type,
                        f"broker-user{h}-20261126T000000-{token[:8]}",
                        datetime.fromtimestamp(now - i, UTC),
                        datetime.fromtimestamp(now - i + 3600, UTC),
                        "active",
                        f"host-{h:03d}",
                        f"user{h}",
                        "host_a",
                    )
                )
        conn.execute("ANALYZE fleet_leases")


_big: dict[str, str] = {}  # the 1,000,000-row ledger the responder scenarios share: {"db": name}


def big_ledger() -> str:
    """A shared ledger of BIG_ROWS leases from BIG_HOSTS hosts with Vault identities, seeded once
    with COPY (the trigger fills listing_json as for a push)."""
    if "db" in _big:
        return _big["db"]
    import psycopg

    dbname, _owner = fresh_ledger()
    pg = postgres()
    now = int(time.time())
    started = time.perf_counter()
    columns = (
        "lease_id, access_key_id, vault_addr, namespace, mount, role, profile, credential_type, role_session_name, "
        "issued_at, expires_at, state, host, os_user, db_user, display_name, entity_id, token_accessor, "
        "token_policies, account_id, principal_arn"
    )
    with psycopg.connect(pg.url("broker_owner", dbname, driver="postgresql")) as conn:
        with conn.cursor().copy(f"COPY fleet_leases ({columns}) FROM STDIN") as copy:
            for i in range(BIG_ROWS):
                h = i % BIG_HOSTS
                role = f"role-{i % BIG_ROLES}"
                key = f"ASIA{i:016d}"
                session = f"broker-user{h}-{i:08d}"
                issued = now - i * BIG_SPACING
                copy.write_row(
                    (
                        f"aws/sts/{role}/{i:024d}",
                        key,
                        "http://127.0.0.1:8200",
                        "",
                        "aws",
                        role,
                        role,
                        "assumed_role",
                        session,
                        datetime.fromtimestamp(issued, UTC),
                        datetime.fromtimestamp(issued + 3600, UTC),
                        "active",
                        f"host-{h:05d}",
                        f"user{h}",
                        "host_a",
                        f"oidc-user{h}",
                        f"entity-{h:05d}",
                        f"accessor-{h:05d}",
                        "creds,lookup",
                        "123456789012",
                        f"arn:aws:sts::123456789012:assumed-role/{role}/{session}",
                    )
                )
        conn.execute("ANALYZE fleet_leases")
    line("seed the responder ledger", f"{time.perf_counter() - started:.1f} s", "-", True, f"{BIG_ROWS} rows, COPY")
    _big["db"] = dbname
    return dbname


def explain(url: str, query) -> tuple[float, list[str]]:
    """PostgreSQL's own execution time (EXPLAIN ANALYZE, ms) of a SQLAlchemy query, and the scan
    nodes of its plan (index-backed or not): figures that the machine's load does not distort."""
    from broker.app import App

    app = App(str(ROOT / "nonexistent-bench.db"), url)
    try:
        with app.fleet.begin("explain") as conn:
            compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
            conn.exec_driver_sql("SELECT 1")
            (plan,) = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + str(compiled), compiled.params).one()
    finally:
        app.close()
    scans: list[str] = []

    def walk(node: dict) -> None:
        if "Scan" in node["Node Type"]:
            scans.append(node["Node Type"] + (f" {node['Index Name']}" if "Index Name" in node else ""))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return plan[0]["Execution Time"], scans


def _query_ms(url: str, key: str, runs: int) -> float:
    """The median time of whois's fleet query alone (in process, connection warm)."""
    from broker import whois
    from broker.app import App

    app = App(str(ROOT / "nonexistent-bench.db"), url)
    try:
        from sqlalchemy import or_

        from broker.fleet.listing import FLEET

        t = FLEET
        where = [or_(t.c.access_key_id.in_([key]), t.c.lease_id.in_([key]), t.c.role_session_name.in_([key]))]
        whois.fleet_rows(app, where)  # warm: connection, schema check
        walls = []
        for _ in range(runs):
            started = time.perf_counter()
            rows = whois.fleet_rows(app, where)
            walls.append(time.perf_counter() - started)
        if len(rows) != 1:
            raise SystemExit(f"whois query found {len(rows)} rows for {key}")
        return statistics.median(walls) * 1000
    finally:
        app.close()


def scenario_whois(workdir: Path, double=None) -> dict:
    """`broker whois AKID --format json` over 1,000,000 rows from 10,000 hosts."""
    dbname = big_ledger()
    url = postgres().url("resp_1", dbname)
    env = base_env({"BROKER_LEDGER_URL": url, "BROKER_HOST": "responder"}, workdir / "whois")
    key = f"ASIA{BIG_ROWS // 2 + 17:016d}"
    walls = []
    for _ in range(WHOIS_RUNS):
        wall, result = timed(broker_command() + ["whois", key, "--format", "json"], env)
        if result.returncode:
            raise SystemExit(f"whois failed ({result.returncode}): {result.stderr.strip()}")
        walls.append(wall)
    found = json.loads(result.stdout)[0]["leases"]
    query_ms = _query_ms(url, key, WHOIS_RUNS * 4)
    wall = statistics.median(walls)
    from sqlalchemy import or_, select

    from broker.fleet.listing import FLEET

    t = FLEET
    server_ms, scans = explain(
        url,
        select(t.c.lease_id).where(
            or_(t.c.access_key_id.in_([key]), t.c.lease_id.in_([key]), t.c.role_session_name.in_([key]))
        ),
    )
    line("whois AKID: query", f"{query_ms:.1f} ms", "<= 50 ms", query_ms <= 50, f"over {BIG_ROWS} rows, round trip")
    line("whois AKID: PostgreSQL", f"{server_ms:.2f} ms", "<= 50 ms", server_ms <= 50, "; ".join(scans))
    line(
        "whois AKID: end to end",
        f"{wall:.2f} s",
        "<= 1 s",
        wall <= 1.0 and len(found) == 1,
        f"{BIG_ROWS} rows from {BIG_HOSTS} hosts, median of {WHOIS_RUNS}",
    )
    return {"name": "whois", "query_ms": query_ms, "seconds": wall, "runs": walls}


def scenario_window_list(workdir: Path, double=None) -> dict:
    """`broker leases --fleet --issued-after 2h --role R --format json` over the same table."""
    dbname = big_ledger()
    env = base_env({"BROKER_LEDGER_URL": postgres().url("resp_1", dbname)}, workdir / "window-list")
    argv = broker_command() + ["leases", "--fleet", "--issued-after", "2h", "--role", "role-3", "--format", "json"]
    walls = []
    for _ in range(LIST_RUNS):
        wall, result = timed(argv, env)
        if result.returncode:
            raise SystemExit(f"leases --fleet --issued-after failed: {result.stderr.strip()}")
        walls.append(wall)
    rows = len(json.loads(result.stdout))
    expected = 7200 // BIG_SPACING // BIG_ROLES
    median = statistics.median(walls)
    from sqlalchemy import select

    from broker.fleet.listing import FLEET, where
    from broker.selection import Selection

    selection = Selection(role="role-3", issued_after=int(time.time()) - 7200)
    query = select(FLEET.c.listing_json).where(*where(selection)).order_by(FLEET.c.issued_at.desc())
    server_ms, scans = explain(postgres().url("resp_1", dbname), query)
    line("  its query in PostgreSQL", f"{server_ms:.2f} ms", "-", True, "; ".join(scans))
    line(
        "leases --fleet --issued-after 2h --role R",
        f"{median:.2f} s",
        "<= 1 s",
        median <= 1.0 and abs(rows - expected) <= 2,
        f"{rows} of {BIG_ROWS} rows, median of {LIST_RUNS}",
    )
    return {"name": "window-list", "seconds": median, "rows": rows, "runs": walls}


def scenario_keys_revoke(workdir: Path, double) -> dict:
    """`broker revoke --fleet --access-keys-from keys.txt`: 1,000 keys of the 1,000,000-row table,
    the Vault double adding 20 ms a request."""
    dbname = big_ledger()
    keys = workdir / "keys.txt"  # the newest 1,000 leases (issued in the last 2,000 s): live ones
    keys.write_text("".join(f"ASIA{i:016d}\n" for i in range(KEYS_REVOKED)))
    env = base_env(
        {
            "BROKER_LEDGER_URL": postgres().url("resp_1", dbname),
            "BROKER_HOST": "responder",
            "VAULT_ADDR": double.info["vault_addr"],
            "VAULT_TOKEN": double.info["token"],
        },
        workdir / "keys-revoke",
    )
    argv = broker_command() + ["revoke", "--fleet", "--access-keys-from", str(keys), "--yes", "--format", "json"]
    from broker.fleet.listing import FLEET, where
    from broker.fleet.revoke import _target_query
    from broker.selection import Selection

    claim = _target_query(
        FLEET,
        where(Selection(access_keys=tuple(f"ASIA{i:016d}" for i in range(KEYS_REVOKED)), state="active")),
        limit=256,
    )
    server_ms, scans = explain(postgres().url("resp_1", dbname), claim)
    line("  one claim batch in PostgreSQL", f"{server_ms:.2f} ms", "-", True, "; ".join(sorted(set(scans))))
    wall, result = timed(argv, env)
    if result.returncode:
        raise SystemExit(f"revoke --fleet --access-keys-from failed ({result.returncode}): {result.stderr[-300:]}")
    summary = json.loads(result.stdout)["summary"]
    handled = summary["revoked"]
    line(
        f"revoke --fleet --access-keys-from, {KEYS_REVOKED} keys, +{REVOKE_LATENCY_MS}ms",
        f"{wall:.2f} s",
        "<= 4 s",
        wall <= 4.0 and handled == KEYS_REVOKED,
        f"{summary['revoked']} revoked, in a table of {BIG_ROWS} rows",
    )
    return {"name": "keys-revoke", "seconds": wall, "summary": summary}


def timed(argv: list[str], env: dict, timeout: float = 300) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - started, result


# -- the scenarios ---------------------------------------------------------------------------------------


def scenario_fleet_list(workdir: Path, double=None) -> dict:
    """`broker leases --fleet --role R --format json` over 100,000 rows from 200 hosts."""
    dbname, _owner = fresh_ledger()
    seed_rows(dbname, LIST_ROWS, LIST_HOSTS, "deploy")
    env = base_env(
        {"BROKER_LEDGER_URL": postgres().url("resp_1", dbname), "BROKER_HOST": "responder"},
        workdir / "fleet-list",
    )
    argv = broker_command() + ["leases", "--fleet", "--role", "deploy", "--format", "json"]
    walls = []
    listing = workdir / "fleet-list.json"
    for _ in range(LIST_RUNS):  # output to a file, as `broker leases --fleet ... > leases.json`
        with open(listing, "w") as out:
            started = time.perf_counter()
            result = subprocess.run(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            walls.append(time.perf_counter() - started)
        if result.returncode:
            raise SystemExit(f"leases --fleet failed: {result.stderr.strip()}")
    rows = len(json.loads(listing.read_text()))
    median = statistics.median(walls)
    line(
        "leases --fleet --role R --format json",
        f"{median:.2f} s",
        "<= 1 s",
        median <= 1.0 and rows == LIST_ROWS,
        f"{rows} rows from {LIST_HOSTS} hosts, median of {LIST_RUNS}",
    )
    return {"name": "fleet-list", "seconds": median, "rows": rows, "runs": walls}


def scenario_fleet_revoke(workdir: Path, double) -> dict:
    """`broker revoke --fleet --role R --yes` of 1,000 leases, the Vault double adding 20 ms a request."""
    dbname, _owner = fresh_ledger()
    seed_rows(dbname, REVOKE_LEASES, 50, "ops")
    env = base_env(
        {
            "BROKER_LEDGER_URL": postgres().url("resp_1", dbname),
            "BROKER_HOST": "responder",
            "VAULT_ADDR": double.info["vault_addr"],
            "VAULT_TOKEN": double.info["token"],
        },
        workdir / "fleet-revoke",
    )
    wall, result = timed(broker_command() + ["revoke", "--fleet", "--role", "ops", "--yes", "--format", "json"], env)
    if result.returncode:
        raise SystemExit(f"revoke --fleet failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    revoked = json.loads(result.stdout)["summary"]["revoked"]
    line(
        f"revoke --fleet, {REVOKE_LEASES} leases, +{REVOKE_LATENCY_MS}ms",
        f"{wall:.2f} s",
        "<= 4 s",
        wall <= 4.0 and revoked == REVOKE_LEASES,
        f"{revoked} revoked",
    )
    return {"name": "fleet-revoke", "seconds": wall, "revoked": revoked}


def scenario_fleet_miss(workdir: Path, double) -> dict:
    """A credential-process miss with no ledger URL, PostgreSQL unreachable and PostgreSQL hung."""
    from tests.support.pg import HungServer, closed_port_url

    pg = postgres()
    dbname, _owner = fresh_ledger()
    broker = broker_command()
    with HungServer() as hung:
        urls = {
            "none": None,
            "unreachable": closed_port_url("host_a", pg.password, dbname),
            "hung": hung.url("host_a", pg.password, dbname),
        }
        envs = {}
        for name, url in urls.items():  # one host each: a failed sync backs off per local ledger
            env = base_env(
                {
                    "VAULT_ADDR": double.info["vault_addr"],
                    "VAULT_TOKEN": double.info["token"],
                    "BROKER_HOST": f"miss-{name}",
                    **({"BROKER_LEDGER_URL": url} if url else {}),
                },
                workdir / f"fleet-miss-{name}",
            )
            added = subprocess.run(
                broker + ["profile", "add", "dev", "--mount", "aws", "--role", "deploy"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if added.returncode:
                raise SystemExit(f"profile add failed: {added.stderr.strip()}")
            timed(broker + ["credential-process", "--profile", "dev", "--no-cache"], env)  # warm up
            envs[name] = env
        walls: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(MISS_RUNS):
            for name, env in envs.items():
                wall, result = timed(broker + ["credential-process", "--profile", "dev", "--no-cache"], env)
                if result.returncode:
                    raise SystemExit(f"credential-process failed: {result.stderr.strip()}")
                walls[name].append(wall)
    medians = {name: statistics.median(values) for name, values in walls.items()}
    figures = {}
    for name in ("unreachable", "hung"):
        paired = statistics.median(w - n for w, n in zip(walls[name], walls["none"], strict=True))
        figures[name] = paired
        line(
            f"miss, PostgreSQL {name}",
            f"{paired * 1000:+.0f} ms",
            "<= +100 ms",
            paired <= 0.100,
            f"median {medians[name] * 1000:.0f} ms vs {medians['none'] * 1000:.0f} ms without a ledger URL; "
            f"median of {MISS_RUNS} paired runs",
        )
    return {"name": "fleet-miss", "slower": figures, "medians": medians}


# -- fleet-10k: ten thousand hosts through PgBouncer ----------------------------------------------------

DAY = 86400


def pgbouncer():
    """PgBouncer in transaction mode in front of postgres(): POOL_SIZE server connections at most
    for the whole database (max_db_connections), whatever the number of logins and clients."""
    global _bouncer
    if _bouncer is None:
        from tests.support.pgbouncer import PgBouncer, available

        reason = available()
        if reason:
            raise SystemExit(f"cannot run fleet-10k: {reason}")
        _bouncer = PgBouncer(postgres(), pool_size=POOL_SIZE, extra_settings={"max_db_connections": str(POOL_SIZE)})
        try:
            _bouncer.start()
        except BaseException:
            _bouncer.stop()
            _bouncer = None
            raise
    return _bouncer


def grow(dbname: str, total: int, have: int) -> float:
    """COPY rows until the ledger holds `total` synthetic rows (from `have`): a tenth of role
    `deploy`, the rest over nine other roles, issued over the last 180 days by BIG_HOSTS hosts,
    each with its own login name (db_user host_00000 ...). Returns the seconds the COPY took."""
    from tests.support.fleet_seed import copy_rows, fleet_rows

    add = total - have
    if add <= 0:
        return 0.0
    now = time.time() - have % 997  # a different phase per stage: no two stages share a second
    per_role = add // 10
    started = time.perf_counter()

    def rows():
        for r, role in enumerate(["deploy", *[f"svc-{n}" for n in range(9)]]):
            count = per_role if r else add - 9 * per_role
            yield from fleet_rows(
                count,
                newest=now - r,
                spacing=180 * DAY / count,
                hosts=BIG_HOSTS,
                role=role,
                db_user=None,
                tag=f"s{have}-",
            )

    copy_rows(postgres().url("broker_owner", dbname), rows())
    with postgres().superuser(dbname) as conn:  # a ledger in steady state: vacuumed, hint bits set
        conn.execute("VACUUM ANALYZE fleet_leases")
    return time.perf_counter() - started


def list_seconds(dbname: str, workdir: Path, runs: int = 3, *, direct: bool = False) -> tuple[float, int]:
    """Median wall of `broker leases --fleet --role deploy --format json > file` as a responder
    through PgBouncer (or straight to PostgreSQL), and the rows it wrote."""
    server = postgres() if direct else pgbouncer()
    env = base_env(
        {"BROKER_LEDGER_URL": server.url("resp_1", dbname), "BROKER_HOST": "responder"},
        workdir / "fleet-10k-list",
    )
    argv = broker_command() + ["leases", "--fleet", "--role", "deploy", "--format", "json"]
    out_path = workdir / "fleet-10k-list.json"
    walls = []
    for _ in range(runs):
        with open(out_path, "w") as out:
            started = time.perf_counter()
            result = subprocess.run(
                argv, env=env, stdout=out, stderr=subprocess.PIPE, text=True, timeout=600, stdin=subprocess.DEVNULL
            )
            walls.append(time.perf_counter() - started)
        if result.returncode:
            raise SystemExit(f"leases --fleet failed: {result.stderr.strip()}")
    with open(out_path, "rb") as fh:
        rows = sum(1 for line_ in fh if line_.lstrip().startswith(b"{"))
    return statistics.median(walls), rows


class BackendSampler:
    """Samples pg_stat_activity (client backends on one database) every `every` seconds in a thread."""

    def __init__(self, dbname: str, every: float = 0.02) -> None:
        import threading

        self.dbname, self.every = dbname, every
        self.peak = 0
        self.lock_waits = 0  # the most backends seen waiting on a lock at once
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with postgres().superuser() as conn:
            while not self._stop.is_set():
                count, waiting = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity "
                    "WHERE datname = %s AND backend_type = 'client backend'",
                    (self.dbname,),
                ).fetchone()
                self.peak = max(self.peak, count)
                self.lock_waits = max(self.lock_waits, waiting)
                self.samples += 1
                self._stop.wait(self.every)

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def sync_hosts(workdir: Path, dbname: str, count: int, rows_each: int) -> list:
    """`count` simulated hosts, each a local ledger with `rows_each` leases waiting in its outbox
    (copies of one template database, every lease id made unique), logging in as host_a/b/c."""
    import shutil
    import sqlite3

    from tests.support.pg import Host

    bouncer = pgbouncer()
    template = Host(workdir / "sync", "template", None)
    template.add_leases(rows_each)
    hosts = []
    for i in range(count):
        host = Host(workdir / "sync", f"sync-{i:04d}", bouncer.url(f"host_{'abc'[i % 3]}", dbname))
        os.makedirs(os.path.dirname(host.db), exist_ok=True)
        shutil.copyfile(template.db, host.db)
        conn = sqlite3.connect(host.db)
        with conn:
            conn.execute(
                "UPDATE leases SET lease_id = lease_id || ?, access_key_id = access_key_id || ?, host = ?",
                (f"-{i:04d}", f"{i:04d}", host.name),
            )
        conn.close()
        hosts.append(host)
    return hosts


def run_syncs(hosts: list, at_once: int) -> dict:
    """`broker ledger sync --quiet` for every host, `at_once` processes at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.pg import child_env

    argv = broker_command() + ["ledger", "sync", "--quiet"]

    def one(host) -> tuple[float, int, str]:
        started = time.perf_counter()
        done = subprocess.run(
            argv, env=child_env(host.env()), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
        return time.perf_counter() - started, done.returncode, done.stderr.strip()[-200:]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        results = list(pool.map(one, hosts))
    wall = time.perf_counter() - started
    failures = [err for _, code, err in results if code]
    return {
        "wall": wall,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "median_process": statistics.median(w for w, _, _ in results),
        "max_process": max(w for w, _, _ in results),
    }


def _push_rows(count: int, tag: str) -> list[dict]:
    from broker.fleet.ledger import utc

    now = int(time.time())
    return [
        {
            "lease_id": f"aws/sts/deploy/{tag}-{n}",
            "access_key_id": f"ASIA{secrets.token_hex(8).upper()}",
            "vault_addr": "http://127.0.0.1:8200",
            "namespace": "",
            "mount": "aws",
            "role": "deploy",
            "profile": "deploy",
            "credential_type": "assumed_role",
            "role_session_name": f"broker-probe-{n}",
            "issued_at": utc(now),
            "expires_at": utc(now + 3600),
            "state": "active",
            "revoked_at": None,
            "revoked_by": None,
            "host": f"probe-{tag}",
            "os_user": "probe",
            "display_name": None,
            "entity_id": None,
            "token_accessor": None,
            "token_policies": None,
            "account_id": None,
            "principal_arn": None,
            "end_reason": None,
        }
        for n in range(count)
    ]


def push_once(url: str, rows: list[dict]) -> float:
    """One push as broker does it (its engine, its upsert, one transaction); returns its seconds."""
    from broker import settings
    from broker.fleet import ledger as fleet

    ledger = fleet.FleetLedger(url, settings.load())
    ledger._checked = True  # the probe measures the push transaction, not the schema check
    try:
        started = time.perf_counter()
        with ledger.begin("pushing lease rows") as conn:
            fleet._upsert(conn, rows)
        return time.perf_counter() - started
    finally:
        ledger.dispose()


def run_plain_pushes(dbname: str, clients: int, rows_each: int, threads: int = 100) -> dict:
    """The same pushes from `clients` connections in this process (threads): the database and
    PgBouncer's side of the storm, without 1,000 Python start-ups."""
    from concurrent.futures import ThreadPoolExecutor

    bouncer = pgbouncer()
    batches = [
        (bouncer.url(f"host_{'abc'[i % 3]}", dbname), _push_rows(rows_each, f"plain{i}")) for i in range(clients)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        walls = list(pool.map(lambda b: push_once(*b), batches))
    return {"wall": time.perf_counter() - started, "max_push": max(walls), "median_push": statistics.median(walls)}


def prune_with_probes(dbname: str, workdir: Path) -> dict:
    """`broker ledger prune --older-than 90d` as the owner through PgBouncer, while a host pushes
    10 new rows every PUSH_PROBES_DURING_PRUNE s and re-pushes rows the prune is about to delete."""
    import threading

    bouncer = pgbouncer()
    # rows the probe may re-push: old rows pushed by host_a (the probe's login), made for it
    from tests.support.fleet_seed import copy_rows, fleet_rows

    copy_rows(
        postgres().url("broker_owner", dbname),
        fleet_rows(20_000, newest=time.time() - 150 * DAY, spacing=30 * DAY / 20_000, db_user="host_a", tag="old-"),
    )
    old = postgres().query(
        dbname, "SELECT lease_id, access_key_id FROM fleet_leases WHERE lease_id LIKE 'aws/sts/deploy/old-%'"
    )
    url = bouncer.url("host_a", dbname)

    def probes(stop, new_walls: list[float], old_walls: list[float]) -> None:
        n = 0
        while not stop.is_set() and n < 100_000:
            n += 1
            new_walls.append(push_once(url, _push_rows(10, f"during{time.time_ns()}")))
            lease_id, akid = old[(n * 7919) % len(old)]
            row = _push_rows(1, "x")[0] | {"lease_id": lease_id, "access_key_id": akid, "state": "active"}
            old_walls.append(push_once(url, [row]))
            stop.wait(PUSH_PROBES_DURING_PRUNE)

    baseline_new: list[float] = []
    baseline_old: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=probes, args=(stop, baseline_new, baseline_old), daemon=True)
    thread.start()
    time.sleep(10)  # the same probes without a prune: what this machine's load alone costs
    stop.set()
    thread.join(timeout=30)
    new_walls: list[float] = []
    old_walls: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=probes, args=(stop, new_walls, old_walls), daemon=True)
    env = base_env({"BROKER_LEDGER_URL": bouncer.url("broker_owner", dbname)}, workdir / "fleet-10k-prune")
    thread.start()
    try:
        with BackendSampler(dbname) as sampler:
            wall, result = timed(
                broker_command() + ["ledger", "prune", "--older-than", "90d", "--format", "json"], env, timeout=1800
            )
    finally:
        stop.set()
        thread.join(timeout=30)
    if result.returncode:
        raise SystemExit(f"ledger prune failed: {result.stderr.strip()}")
    report = json.loads(result.stdout)
    return {
        "wall": wall,
        "report": report,
        "pushes": len(new_walls),
        "worst_new_push": max(new_walls, default=0.0),
        "worst_old_push": max(old_walls, default=0.0),
        "median_new_push": statistics.median(new_walls) if new_walls else 0.0,
        "baseline_worst_push": max(baseline_new + baseline_old, default=0.0),
        "baseline_median_push": statistics.median(baseline_new) if baseline_new else 0.0,
        "peak_lock_waits": sampler.lock_waits,
    }


def scenario_fleet_10k(workdir: Path, double) -> dict:
    """Ten thousand hosts through PgBouncer: the listing curve, the sync storm, revoke and prune."""
    print(f"# load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores, shared)", flush=True)
    bouncer = pgbouncer()
    dbname, _owner = fresh_ledger()
    sizes = [n for n in BIG_SIZES if n < BIG_ROWS] + [BIG_ROWS]
    figures: dict = {"name": "fleet-10k", "pool_size": POOL_SIZE, "curve": []}
    have = 0
    for size in sizes:
        copy_seconds = grow(dbname, size, have)
        have = size
        median, rows = list_seconds(dbname, workdir)
        direct, _ = list_seconds(dbname, workdir, direct=True)
        figures["curve"].append(
            {"rows": size, "listed": rows, "seconds": median, "direct_seconds": direct, "copy_seconds": copy_seconds}
        )
        line(
            f"leases --fleet --role R, {size:,} rows",
            f"{median:.2f} s",
            "<= 1 s",
            median <= 1.0,
            f"{rows:,} rows of R written, via PgBouncer (direct: {direct:.2f} s), median of 3; "
            f"COPY + VACUUM took {copy_seconds:.0f} s; load {os.getloadavg()[0]:.1f}",
        )

    if SYNC_PROCESSES:  # --syncs 0 skips the storm (it takes long on a loaded machine)
        hosts = sync_hosts(workdir, dbname, SYNC_PROCESSES, SYNC_ROWS)
        with BackendSampler(dbname) as sampler:
            storm = run_syncs(hosts, SYNC_AT_ONCE)
        pushed = postgres().query(dbname, "SELECT count(*) FROM fleet_leases WHERE host LIKE 'sync-%'")[0][0]
        pending = sum(host.pending() for host in hosts)
        figures["sync"] = storm | {"pushed": pushed, "pending": pending, "peak_backends": sampler.peak}
        line(
            f"{SYNC_PROCESSES} ledger sync x {SYNC_ROWS} rows",
            f"{storm['wall']:.1f} s",
            "<= 20 s",
            storm["wall"] <= 20 and storm["failures"] == 0 and pending == 0,
            f"{storm['failures']} failures, {pushed:,} rows pushed, {pending} pending; "
            f"{SYNC_AT_ONCE} processes at once; "
            f"process median {storm['median_process']:.2f} s, max {storm['max_process']:.2f} s",
        )
        line(
            "  PostgreSQL backends during it",
            f"peak {sampler.peak}",
            f"<= {POOL_SIZE}",
            sampler.peak <= POOL_SIZE,
            f"{sampler.samples} samples of pg_stat_activity",
        )
        with BackendSampler(dbname) as sampler:
            plain = run_plain_pushes(dbname, SYNC_PROCESSES, SYNC_ROWS)
        figures["plain_pushes"] = plain | {"peak_backends": sampler.peak}
        line(
            f"  the same {SYNC_PROCESSES} pushes, no process start",
            f"{plain['wall']:.1f} s",
            "(database side)",
            True,
            f"push median {plain['median_push'] * 1000:.0f} ms, max {plain['max_push'] * 1000:.0f} ms; "
            f"peak backends {sampler.peak}; 100 client threads in one process",
        )

    from tests.support.fleet_seed import copy_rows, fleet_rows

    copy_rows(
        postgres().url("broker_owner", dbname),
        fleet_rows(BIG_REVOKE, newest=time.time(), spacing=0.01, hosts=BIG_HOSTS, role="ops", db_user=None),
    )
    env = base_env(
        {
            "BROKER_LEDGER_URL": bouncer.url("resp_1", dbname),
            "BROKER_HOST": "responder",
            "VAULT_ADDR": double.info["vault_addr"],
            "VAULT_TOKEN": double.info["token"],
            "BROKER_REVOKE_CONCURRENCY": str(BIG_REVOKE_CONCURRENCY),
        },
        workdir / "fleet-10k-revoke",
    )
    argv = broker_command() + ["revoke", "--fleet", "--role", "ops", "--yes", "--format", "json"]
    wall, result = timed(argv, env, timeout=900)
    if result.returncode:
        raise SystemExit(f"revoke --fleet failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    revoked = json.loads(result.stdout)["summary"]["revoked"]
    figures["revoke"] = {"seconds": wall, "revoked": revoked, "concurrency": BIG_REVOKE_CONCURRENCY}
    line(
        f"revoke --fleet, {BIG_REVOKE:,} leases, +{REVOKE_LATENCY_MS}ms",
        f"{wall:.1f} s",
        "<= 15 s",
        wall <= 15 and revoked == BIG_REVOKE,
        f"{revoked:,} revoked, BROKER_REVOKE_CONCURRENCY={BIG_REVOKE_CONCURRENCY}, "
        f"{have + SYNC_PROCESSES * SYNC_ROWS * 2 + BIG_REVOKE:,} rows in the ledger",
    )

    pruned = prune_with_probes(dbname, workdir)
    figures["prune"] = pruned
    report = pruned["report"]
    line(
        "ledger prune --older-than 90d",
        f"{pruned['wall']:.1f} s",
        "(no target)",
        True,
        f"{report['removed']:,} rows removed in {report['batches']} batches, longest {report['longest_batch_ms']} ms",
    )
    worst = max(pruned["worst_new_push"], pruned["worst_old_push"])
    line(
        "  worst push during the prune",
        f"{worst * 1000:.0f} ms",
        "<= 100 ms",
        worst <= 0.100,
        f"{pruned['pushes']} probe pushes: new rows worst {pruned['worst_new_push'] * 1000:.0f} ms "
        f"(median {pruned['median_new_push'] * 1000:.0f} ms), re-pushed doomed rows worst "
        f"{pruned['worst_old_push'] * 1000:.0f} ms; "
        f"without a prune: worst {pruned['baseline_worst_push'] * 1000:.0f} ms "
        f"(median {pruned['baseline_median_push'] * 1000:.0f} ms); most backends waiting on a lock at once: "
        f"{pruned['peak_lock_waits']}",
    )
    figures["load_average"] = os.getloadavg()
    return figures


SCENARIOS = {
    "fleet-list": scenario_fleet_list,
    "fleet-revoke": scenario_fleet_revoke,
    "fleet-miss": scenario_fleet_miss,
    "whois": scenario_whois,
    "window-list": scenario_window_list,
    "keys-revoke": scenario_keys_revoke,
    "fleet-10k": scenario_fleet_10k,
}
LATENCY_MS = {
    "fleet-revoke": REVOKE_LATENCY_MS,
    "keys-revoke": REVOKE_LATENCY_MS,
    "fleet-10k": REVOKE_LATENCY_MS,
}  # the Vault double's added latency per scenario


def needs_double(name: str) -> bool:
    """Every fleet scenario but the listing talks to Vault."""
    return name not in ("fleet-list", "whois", "window-list")


def _options(parser) -> None:
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--rows", type=int, default=BIG_ROWS, help="fleet-10k: the largest ledger size")
    parser.add_argument("--syncs", type=int, default=SYNC_PROCESSES, help="fleet-10k: sync processes in all")
    parser.add_argument("--revoke", type=int, default=BIG_REVOKE, help="fleet-10k: leases revoke --fleet revokes")
    parser.add_argument(
        "--sync-at-once", type=int, default=SYNC_AT_ONCE, help="fleet-10k: sync processes running at once"
    )


def main() -> None:
    args, chosen = command_line(
        __doc__,
        SCENARIOS,
        "broker fleet benchmarks",
        _options,
    )
    global BIG_ROWS, SYNC_AT_ONCE, SYNC_PROCESSES, BIG_REVOKE
    BIG_ROWS, SYNC_AT_ONCE, SYNC_PROCESSES, BIG_REVOKE = args.rows, args.sync_at_once, args.syncs, args.revoke
    figures = run(chosen, SCENARIOS, LATENCY_MS, cleanup=stop_postgres, needs_double=needs_double)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
