#!/usr/bin/env python3
"""Benchmarks for broker's speed targets (issue 4), against a local Vault double and moto.

    python scripts/bench.py            # every scenario
    python scripts/bench.py hit cold   # some of them

Each figure is one line: the measured value, the target, and for process timings the ratio to
`python -c pass` measured in the same run (medians). Nothing here is a test: machines are noisy,
so timing lives here and behaviour assertions live in tests/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = 31


def broker_command() -> list[str]:
    """The installed console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("broker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "broker"]


def timed_run(argv: list[str], env: dict) -> tuple[float, int]:
    """(wall seconds, exit code) of one child process, output discarded."""
    started = time.perf_counter()
    code = subprocess.call(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, code


# Linux keeps a process's peak RSS across exec(), so a child forked from this (large) benchmark
# would report this process's memory. A small Python in between spawns the command and reports
# the command's own peak (its floor is that small Python's RSS, about that of `python -c pass`).
_RSS_PROBE = (
    "import os, sys; pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, "
    "file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]); "
    "print(os.wait4(pid, 0)[2].ru_maxrss)"
)


def peak_rss_kib(argv: list[str], env: dict) -> int:
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, *argv], env=env, capture_output=True, text=True)
    return int(probe.stdout.strip())


def medians(argv: list[str], env: dict, runs: int = RUNS) -> tuple[float, int]:
    """Median wall time and median peak RSS (KiB) over `runs` each."""
    walls = []
    for _ in range(runs):
        wall, code = timed_run(argv, env)
        if code != 0:
            raise SystemExit(f"benchmark command failed ({code}): {' '.join(argv)}")
        walls.append(wall)
    rss = [peak_rss_kib(argv, env) for _ in range(5)]
    return statistics.median(walls), int(statistics.median(rss))


def line(name: str, value: str, target: str, ok: bool, detail: str = "") -> None:
    print(f"{name:<38} {value:<26} target {target:<18} {'ok' if ok else 'MISSED'}  {detail}".rstrip(), flush=True)


class Double:
    """`python -m tests.support.vault_double` (Vault double + moto) as a separate process."""

    def __init__(self, workdir: Path, latency_ms: int = 0):
        self.ready = workdir / f"double-{latency_ms}.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.vault_double",
                "--ready-file",
                str(self.ready),
                "--latency-ms",
                str(latency_ms),
                "--max-seconds",
                "7200",  # fleet-10k runs long on a shared 2-core machine
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self.ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("the Vault double did not start")
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def environment(workdir: Path, double: Double, name: str) -> dict:
    home = workdir / name
    home.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "AWS_", "BROKER_"))}
    env.update(
        HOME=str(home),
        BROKER_DB=str(home / "data" / "broker.db"),
        XDG_CONFIG_HOME=str(home / "config"),
        VAULT_ADDR=double.info["vault_addr"],
        VAULT_TOKEN=double.info["token"],
        PYTHONPATH=str(ROOT),
    )
    return env


def run_ok(argv: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-4:])} failed: {result.stderr.strip()}")
    return result


def scenario_hit(workdir: Path, double: Double) -> None:
    env = environment(workdir, double, "hit")
    broker = broker_command()
    run_ok(broker + ["profile", "add", "dev", "--mount", "aws", "--role", "deploy"], env)
    run_ok(broker + ["credential-process", "--profile", "dev"], env)  # warm the cache
    python_wall, python_rss = medians([sys.executable, "-c", "pass"], env)
    hit_wall, hit_rss = medians(broker + ["credential-process", "--profile", "dev"], env)
    ratio = hit_wall / python_wall
    line(
        "cache hit vs python -c pass",
        f"{ratio:.2f}x",
        "<= 3.0x (4.0x enc)",
        ratio <= 3.0,
        f"hit {hit_wall * 1000:.1f} ms, python {python_wall * 1000:.1f} ms, medians of {RUNS}",
    )
    line(
        "cache hit peak RSS",
        f"{hit_rss / 1024:.1f} MiB",
        "<= 20 MiB",
        hit_rss <= 20 * 1024,
        f"python -c pass {python_rss / 1024:.1f} MiB",
    )
    miss_walls = []
    for _ in range(5):
        wall, _code = timed_run(broker + ["credential-process", "--profile", "dev", "--no-cache"], env)
        miss_walls.append(wall)
    line(
        "miss (--no-cache, Vault+STS on loopback)",
        f"{statistics.median(miss_walls) * 1000:.0f} ms",
        "-",
        True,
        "median of 5",
    )


def scenario_cold(workdir: Path, double: Double, processes: int = 50) -> None:
    env = environment(workdir, double, "cold")
    broker = broker_command()
    run_ok(broker + ["profile", "add", "cold", "--mount", "aws", "--role", "deploy"], env)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            broker + ["credential-process", "--profile", "cold"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outputs, failures = set(), 0
    for proc in procs:
        out, _err = proc.communicate(timeout=60)
        failures += proc.returncode != 0
        outputs.add(out)
    wall = time.perf_counter() - started
    conn = sqlite3.connect(env["BROKER_DB"])
    issued = conn.execute("SELECT count(*) FROM leases WHERE profile = 'cold'").fetchone()[0]
    conn.close()
    ok = issued == 1 and failures == 0 and len(outputs) == 1 and wall <= 2.0
    line(
        f"cold single flight, {processes} processes",
        f"{wall:.2f} s",
        "<= 2 s, 1 issue",
        ok,
        f"{issued} issuance(s), {failures} failure(s), {len(outputs)} distinct answer(s)",
    )


def _issue_real_leases(double: Double, count: int, role: str = "deploy") -> list[str]:
    """`count` real STS leases from the double (8 threads of hvac), for revoke to find in Vault."""
    from concurrent.futures import ThreadPoolExecutor

    import hvac

    def one(_):
        client = hvac.Client(url=double.info["vault_addr"], token=double.info["token"])
        return client.secrets.aws.generate_credentials(name=role, endpoint="sts", mount_point="aws")["lease_id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def scenario_revoke(workdir: Path, double: Double, count: int = 1000) -> None:
    from tests.support.ledger_seed import insert_rows, lease_row

    env = environment(workdir, double, "revoke")
    lease_ids = _issue_real_leases(double, count)
    now = int(time.time())
    insert_rows(
        env["BROKER_DB"],
        [
            lease_row(
                lease_id=lid,
                credential_type="assumed_role",
                role="deploy",
                endpoint="sts",
                vault_addr=double.info["vault_addr"],
                issued_at=now,
                expires_at=now + 3600,
                role_session_name=f"bench-{i}",
            )
            for i, lid in enumerate(lease_ids)
        ],
    )
    started = time.perf_counter()
    result = run_ok(broker_command() + ["revoke", "--role", "deploy", "--yes", "--format", "json"], env, timeout=300)
    wall = time.perf_counter() - started
    summary = json.loads(result.stdout)["summary"]
    line(
        f"revoke {count} tracked STS leases",
        f"{wall:.2f} s",
        "<= 4 s (+20 ms/req)",
        wall <= 4.0,
        f"summary {summary}, Vault double adds 20 ms per request",
    )


def _median_process_wall(argv: list[str], env: dict, runs: int = 3) -> float:
    return statistics.median(timed_run(argv, env)[0] for _ in range(runs))


def scenario_leases(workdir: Path, double: Double, count: int = 100_000) -> None:
    from tests.support.ledger_seed import seed_leases

    env = environment(workdir, double, "leases")
    seed_leases(env["BROKER_DB"], count // 2, state="active")
    seed_leases(env["BROKER_DB"], count // 4, expired=True, tag="e")
    seed_leases(env["BROKER_DB"], count - count // 2 - count // 4, state="revoked", tag="r")
    wall = _median_process_wall(broker_command() + ["leases", "--format", "json"], env)
    rss = peak_rss_kib(broker_command() + ["leases", "--format", "json"], env)
    line(
        f"leases --format json, {count:,} rows",
        f"{wall:.2f} s",
        "<= 3 s, streamed",
        wall <= 3.0,
        f"median of 3, peak RSS {rss / 1024:.0f} MiB",
    )


def scenario_prune(workdir: Path, double: Double, count: int = 1_000_000) -> None:
    """Prune alone for its own figure, then again (re-seeded) beside a loop of cache hits."""
    from tests.support.ledger_seed import seed_leases

    env = environment(workdir, double, "prune")
    broker = broker_command()
    run_ok(broker + ["profile", "add", "dev", "--mount", "aws", "--role", "deploy"], env)
    run_ok(broker + ["credential-process", "--profile", "dev"], env)
    seed_leases(env["BROKER_DB"], count, expired=True)
    wall, code = timed_run(broker + ["prune", "--quiet"], env)
    line(
        f"prune {count:,} expired rows",
        f"{wall:.2f} s",
        "<= 10 s",
        wall <= 10.0 and code == 0,
    )

    baseline = [timed_run(broker + ["credential-process", "--profile", "dev"], env)[0] for _ in range(15)]
    seed_leases(env["BROKER_DB"], count, expired=True, tag="again")
    hits: list[float] = []
    prune = subprocess.Popen(
        broker + ["prune", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while prune.poll() is None and len(hits) < 5000:
        hits.append(timed_run(broker + ["credential-process", "--profile", "dev"], env)[0])
    prune.wait(timeout=300)
    base = statistics.median(baseline)
    worst = max(hits) - base if hits else 0.0
    line(
        "cache hit delay during that prune",
        f"+{worst * 1000:.0f} ms worst",
        "<= 100 ms",
        worst <= 0.1,
        f"{len(hits)} hit processes, median {statistics.median(hits) * 1000:.0f} ms vs {base * 1000:.0f} ms idle",
    )


def scenario_convoy(workdir: Path, _double: Double | None, processes: int = 25, rounds: int = 20) -> None:
    """Issue 13's mixed load on 10-second leases, Vault +0.2 s on issuance: every round starts
    `processes` processes together (credential-process for two profiles of the short role, plus a
    `leases` and a `prune`); counts failures and issuances per lease lifetime per profile."""
    from tests.support.vault_double import VaultDouble, start_moto_server

    moto, endpoint = start_moto_server()
    vault = VaultDouble(endpoint).start()
    try:
        vault.add_role("aws", "short", "iam_user", iam_lease_ttl=10, iam_max_ttl=10)
        vault.set_latency(0.2, path_contains="creds/")
        here = types.SimpleNamespace(info={"vault_addr": vault.url, "token": vault.root_token})
        env = environment(workdir, here, "convoy")  # the in-process double, as a Double
        broker = broker_command()
        for name in ("short-a", "short-b"):
            run_ok(broker + ["profile", "add", name, "--mount", "aws", "--role", "short"], env)
        failures: list[str] = []
        started = time.perf_counter()
        for round_ in range(rounds):
            commands = []
            for index in range(processes):
                slot = (index + round_) % processes
                if slot == 0:
                    commands.append(["leases", "--format", "json"])
                elif slot == 1:
                    commands.append(["prune", "--quiet"])
                else:
                    commands.append(["credential-process", "--profile", ("short-a", "short-b")[index % 2]])
            procs = [
                (c, subprocess.Popen(broker + c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                for c in commands
            ]
            for command, proc in procs:
                _out, err = proc.communicate(timeout=180)
                if proc.returncode != 0:
                    failures.append(f"{command[0]} exit {proc.returncode}: {err.strip()[:120]}")
        wall = time.perf_counter() - started
        issued = len(vault.issued)
    finally:
        vault.stop()
        moto.stop()
    lifetimes = wall / 10
    per_lifetime = issued / 2 / lifetimes  # two profiles: two requests
    line(
        f"convoy: {processes} processes x {rounds} rounds, 10 s leases, Vault +0.2 s",
        f"{len(failures)} failures",
        "0 failures, <= ~1 issuance/lifetime/request",
        not failures and per_lifetime <= 1.5,
        f"{issued} issuances for 2 profiles in {wall:.1f} s = {per_lifetime:.2f} per lease lifetime per profile"
        + (f"; first failure: {failures[0]}" if failures else ""),
    )


SCENARIOS = {
    "convoy": scenario_convoy,
    "hit": scenario_hit,
    "cold": scenario_cold,
    "revoke": scenario_revoke,
    "leases": scenario_leases,
    "prune": scenario_prune,
}


LATENCY_MS = {"revoke": 20}  # the Vault double's added latency per scenario


def run(chosen: list[str], scenarios: dict, latency_ms: dict, cleanup=None, needs_double=lambda name: True) -> list:
    """Run the chosen scenarios, one Vault double per latency, and clean up whatever happens."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    doubles: dict[int, Double] = {}
    figures = []
    try:
        for name in chosen:
            latency = latency_ms.get(name, 0)
            if needs_double(name) and latency not in doubles:
                doubles[latency] = Double(workdir, latency)
            figures.append(scenarios[name](workdir, doubles.get(latency)))
    finally:
        for double in doubles.values():
            double.stop()
        if cleanup:
            cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


def command_line(doc: str, scenarios: dict, title: str, parser_hook=None):
    """Parse `[SCENARIO ...]` (default: all), refuse unknown names, print the run's header line.
    Returns (parsed arguments, chosen scenario names)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of: {', '.join(scenarios)}")
    if parser_hook:
        parser_hook(parser)
    args = parser.parse_args()
    chosen = args.scenarios or list(scenarios)
    unknown = set(chosen) - set(scenarios)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(scenarios)}")
    print(
        f"# {title}: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {' '.join(broker_command())}",
        flush=True,
    )
    return args, chosen


def main() -> None:
    import bench_fleet  # the fleet ledger's scenarios (PostgreSQL), scripts/bench_fleet.py

    scenarios = {**SCENARIOS, **bench_fleet.SCENARIOS}
    _args, chosen = command_line(__doc__, scenarios, "broker benchmarks")
    run(
        chosen,
        scenarios,
        {**LATENCY_MS, **bench_fleet.LATENCY_MS},
        cleanup=bench_fleet.stop_postgres,
        needs_double=lambda name: name != "convoy" and bench_fleet.needs_double(name),
    )


if __name__ == "__main__":
    main()
