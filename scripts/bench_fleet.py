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
BIG_ROLES = 10  # role-0 .. role-9; the listing selects one
BIG_SPACING = 2  # seconds between issuances: 1,000,000 rows span 23 days, 2 h hold 3,600 of them
WHOIS_RUNS = 5
KEYS_REVOKED = 1_000

_pg = None  # the PostgresServer the scenarios share


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
    global _pg
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


SCENARIOS = {
    "fleet-list": scenario_fleet_list,
    "fleet-revoke": scenario_fleet_revoke,
    "fleet-miss": scenario_fleet_miss,
    "whois": scenario_whois,
    "window-list": scenario_window_list,
    "keys-revoke": scenario_keys_revoke,
}
LATENCY_MS = {
    "fleet-revoke": REVOKE_LATENCY_MS,
    "keys-revoke": REVOKE_LATENCY_MS,
}  # the Vault double's added latency per scenario


def needs_double(name: str) -> bool:
    """Every fleet scenario but the listing talks to Vault."""
    return name not in ("fleet-list", "whois", "window-list")


def main() -> None:
    args, chosen = command_line(
        __doc__,
        SCENARIOS,
        "broker fleet benchmarks",
        lambda parser: parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON"),
    )
    figures = run(chosen, SCENARIOS, LATENCY_MS, cleanup=stop_postgres, needs_double=needs_double)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
