# ruff: noqa: F811 - the PostgreSQL fixtures come from tests/support/pg.py, imported by name
"""Issue 12: a hostile Vault, a hostile neighbour, a hostile fleet row. Each test plays the attack
against real parts (an HTTP listener on loopback, real broker processes) and checks that the
token, the credential and the responder's reach stay where they should."""

from __future__ import annotations

import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.brokerproc import assert_one_line_error, credential, run_broker
from tests.support.helpers import update_lease_times
from tests.support.pg import Host, fleet_db, pg  # noqa: F401 - pytest fixtures
from tests.support.vault_double import VaultDouble, setup_standard_roles
from tests.test_serve import read_lines, serving  # noqa: F401 - a pytest fixture


@dataclass
class Capture:
    """What a hostile listener saw: every request's path and headers."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def tokens(self) -> list[str]:
        return [h.get("x-vault-token", "") for _, _, h in self.requests]


class HostileListener:
    """An HTTP server on loopback that answers every request with `status` and records it."""

    def __init__(self, port: int = 0, *, status: int = 204, body: bytes = b"", headers: dict[str, str] | None = None):
        capture = self.capture = Capture()
        reply_status, reply_body, reply_headers = status, body, headers or {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(min(length, 1 << 20))
                capture.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(reply_status)
                for name, value in reply_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply_body)))
                self.end_headers()
                self.wfile.write(reply_body)

            do_GET = do_PUT = do_POST = do_DELETE = do_LIST = _any  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def listener_factory() -> Iterator:
    made: list[HostileListener] = []

    def make(port: int = 0, **kwargs: object) -> HostileListener:
        listener = HostileListener(port, **kwargs)  # type: ignore[arg-type]
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.stop()


def _rows(*columns: str) -> list[tuple]:
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:
        return db.execute(f"SELECT {', '.join(columns)} FROM leases ORDER BY id").fetchall()  # noqa: S608


# -- 1. the token goes only to the Vault it is meant for ---------------------------------------------------


@pytest.fixture
def throwaway_then_production(moto_server, monkeypatch, listener_factory):
    """Issue from a throwaway Vault on port P, stop it, switch to a production Vault and token,
    and let a neighbour listen on P."""
    throwaway = VaultDouble(moto_server.endpoint, root_token="throwaway-token").start()  # noqa: S106
    setup_standard_roles(throwaway)
    port = urllib.parse.urlsplit(throwaway.url).port
    assert port
    monkeypatch.setenv("VAULT_ADDR", throwaway.url)
    monkeypatch.setenv("VAULT_TOKEN", throwaway.root_token)
    credential("--mount", "aws", "--role", "ci")  # renewable iam_user
    credential("--mount", "aws", "--role", "deploy")
    throwaway.stop()
    production = VaultDouble(moto_server.endpoint, root_token="production-token").start()  # noqa: S106
    setup_standard_roles(production)
    monkeypatch.setenv("VAULT_ADDR", production.url)
    monkeypatch.setenv("VAULT_TOKEN", production.root_token)
    hostile = listener_factory(port)
    try:
        yield hostile, production, throwaway.url
    finally:
        production.stop()


@pytest.mark.parametrize("command", [["renew", "--all"], ["revoke", "--all", "--yes"]])
def test_lease_operations_never_send_the_token_to_a_recorded_address(throwaway_then_production, command):
    hostile, production, old_url = throwaway_then_production
    result = run_broker(*command)
    assert hostile.capture.requests == []
    assert "production-token" not in json.dumps(hostile.capture.requests)
    assert result.returncode != 0
    assert "other vault" in result.stdout.replace("_", " ")
    assert old_url in result.stdout + result.stderr
    # the rows of the other Vault are left as they are: active, secret kept, no error written
    assert [(state, err) for state, err in _rows("state", "revoke_error")] == [("active", None)] * 2
    assert not [path for _, path in production.requests if "/sys/leases/" in path]  # meaningless there


def test_revoke_prefix_goes_only_to_the_configured_vault(throwaway_then_production):
    hostile, production, old_url = throwaway_then_production
    result = run_broker("revoke", "--mount", "aws", "--role", "deploy", "--prefix", "--yes")
    assert hostile.capture.requests == []
    assert old_url not in result.stdout.split("note:")[0].split("revoke-prefix", 1)[-1]
    assert production.url in result.stdout


# -- 2. no redirect carries the token elsewhere --------------------------------------------------------------


def test_a_redirect_to_another_origin_is_refused_and_the_token_stays_home(vault, listener_factory):
    hostile = listener_factory(body=b'{"data": {}}', headers={"Content-Type": "application/json"})
    vault.inject_fault("redirect", count=5, path_contains="aws/creds/deploy", location=hostile.url)
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy")
    assert hostile.capture.requests == []
    assert result.stdout == ""
    assert_one_line_error(result, contains="redirect")
    assert hostile.url in result.stderr


def test_a_redirect_to_the_configured_origin_is_followed(vault):
    vault.inject_fault("redirect", count=1, path_contains="aws/creds/deploy", location=vault.url)
    assert credential("--mount", "aws", "--role", "deploy")["AccessKeyId"] == vault.issued[-1].access_key


# -- 3. bounded in total, not per read --------------------------------------------------------------------------


def test_a_dripping_vault_is_cut_off_at_the_total_deadline(vault, monkeypatch):
    monkeypatch.setenv("BROKER_VAULT_TIMEOUT", "2")
    vault.inject_fault("drip", count=1, path_contains="aws/creds/deploy", interval=0.5)
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy", timeout=45)
    assert result.stdout == ""
    assert_one_line_error(result, contains="did not answer")


def test_a_dripping_vault_falls_back_to_the_still_valid_cached_credential(vault, monkeypatch):
    first = credential("--mount", "aws", "--role", "deploy")
    update_lease_times(  # 10 minutes left of an hour: due for renewal
        os.environ["BROKER_DB"], "issued_at = strftime('%s','now') - 3000, expires_at = strftime('%s','now') + 600"
    )
    monkeypatch.setenv("BROKER_VAULT_TIMEOUT", "2")
    vault.inject_fault("drip", count=1, path_contains="aws/creds/deploy", interval=0.5)
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy", timeout=45)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["AccessKeyId"] == first["AccessKeyId"]
    assert "serving the cached credential" in result.stderr


def test_a_huge_answer_is_refused_without_buffering_it(vault):
    vault.inject_fault("huge", count=1, path_contains="aws/creds/deploy", megabytes=100)
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy", timeout=45)
    assert result.stdout == ""
    assert_one_line_error(result, contains="MB")


# -- 4. a host login cannot speak for another host, nor steer a responder ------------------------------------

PSQL = "/usr/lib/postgresql/15/bin/psql"


def _psql(pg, login: str, dbname: str, sql: str) -> subprocess.CompletedProcess:
    """`psql` as `login`: what a hostile host with its own database password can run."""
    return subprocess.run(
        [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host, "-p", str(pg.port), "-U", login, "-d", dbname],
        input=sql,
        env={"PATH": os.environ.get("PATH", ""), "PGPASSWORD": pg.password, "PGCONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _plant(
    lease_id: str, host: str, role: str = "dev", mount: str = "aws", akid: str = "ASIAPLANTED", user: str = "mallory"
) -> str:
    return (
        "INSERT INTO fleet_leases (lease_id, access_key_id, vault_addr, namespace, mount, role, credential_type, "
        "issued_at, expires_at, host, os_user) VALUES "
        f"('{lease_id}', '{akid}', 'http://127.0.0.1:8200', '', '{mount}', '{role}', 'assumed_role', now(), "
        f"now() + interval '1 hour', '{host}', '{user}');\n"
    )


def test_a_host_login_cannot_plant_rows_for_other_hosts(tmp_path, pg, fleet_db):
    Host(tmp_path, "web-1", pg.url("host_a", fleet_db))  # the owner allows host_a to be web-1
    planted = _psql(pg, "host_a", fleet_db, "".join(_plant(f"aws/sts/dev/x{i}", f"invented-{i}") for i in range(50)))
    assert planted.returncode != 0 and "row-level security" in planted.stderr
    assert pg.query(fleet_db, "SELECT count(*) FROM fleet_leases") == [(0,)]
    honest = _psql(pg, "host_a", fleet_db, _plant("aws/sts/dev/own", "web-1"))
    assert honest.returncode == 0, honest.stderr
    assert pg.query(fleet_db, "SELECT host, db_user FROM fleet_leases") == [("web-1", "host_a")]
    # nor may it add names to its own allow-list, or pose as another login
    widen = _psql(pg, "host_a", fleet_db, "INSERT INTO fleet_host_logins VALUES ('host_a', 'invented-1');")
    assert widen.returncode != 0 and "permission denied" in widen.stderr
    other = _psql(
        pg,
        "host_a",
        fleet_db,
        _plant("aws/sts/dev/y", "web-1")
        .replace("os_user)", "os_user, db_user)")
        .replace("'mallory')", "'mallory', 'host_b')"),
    )
    assert other.returncode != 0


def test_broker_says_which_host_name_a_login_may_not_push(tmp_path, pg, fleet_db):
    host = Host(tmp_path, "payments-db-1", pg.url("host_a", fleet_db))
    pg.query(fleet_db, "DELETE FROM fleet_host_logins WHERE host = 'payments-db-1'")  # the owner never allowed it
    host.add_leases(1)
    result = host.broker("ledger", "sync")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "fleet_host_logins" in result.stderr and "payments-db-1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_planted_lease_id_cannot_steer_a_responders_revoke(tmp_path, pg, fleet_db, vault, aws_env):
    vault.add_role("aws", "dev", "assumed_role")
    host = Host(tmp_path, "web-1", pg.url("host_a", fleet_db))
    host.add_leases(0, role="dev", issued=[credential_issued(vault, "dev")])
    assert host.broker("ledger", "sync").returncode == 0
    planted = [
        _plant("database/creds/payments-prod/2f1b9c0e", "web-1", akid="ASIAPLANT1"),
        _plant("aws/creds/payments-prod/7cbd1a2e", "web-1", akid="ASIAPLANT2"),
        _plant("aws/sts/dev/../../sys/x", "web-1", akid="ASIAPLANT3"),
        _plant("aws/sts/other/x", "web-1", akid="ASIAPLANT4", user="=HYPERLINK(1)\x1b]0;owned\x07"),
    ]
    assert _psql(pg, "host_a", fleet_db, "".join(planted)).returncode == 0
    desk = Host(tmp_path, "desk-1", pg.url("resp_1", fleet_db), user="oncall")
    plan = desk.broker("revoke", "--fleet", "--role", "dev", "--dry-run")  # the table report: whose rows
    assert "PUSHED BY" in plan.stdout and "host_a" in plan.stdout  # (exit 8: the planted rows are refused)
    result = desk.broker("revoke", "--fleet", "--role", "dev", "--yes", "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode != 0
    outcomes = {lease["lease_id"]: (lease["result"], lease["error"] or "") for lease in report["leases"]}
    assert outcomes[vault.issued[-1].lease_id][0] == "revoked"
    for sql in planted:
        lease_id = sql.split("('", 1)[1].split("'", 1)[0]
        result_, error = outcomes[lease_id]
        assert result_ == "failed" and "refused" in error and "host_a" in error
    assert vault.revoke_calls == [vault.issued[-1].lease_id]
    assert {lease["db_user"] for lease in report["leases"]} == {"host_a"}
    table = desk.broker("leases", "--fleet")
    assert "PUSHED BY" in table.stdout and "host_a" in table.stdout
    assert "\x1b" not in table.stdout and "\\x1b]0;owned\\x07" in table.stdout
    listed = desk.broker("leases", "--fleet", "--format", "csv")
    assert "'=HYPERLINK(1)" in listed.stdout
    assert not [cell for line in listed.stdout.splitlines() for cell in line.split(",") if cell.startswith("=")]


def credential_issued(vault, role: str):
    """One lease the double really holds, issued straight through its API."""
    import requests

    with requests.Session() as http:
        http.trust_env = False
        reply = http.post(
            f"{vault.url}/v1/aws/sts/{role}",
            json={"ttl": "1h"},
            headers={"X-Vault-Token": vault.root_token},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
    return vault.issued[-1]


# -- 5. the credential server cannot be starved by a neighbour ----------------------------------------------

NEIGHBOUR = r"""
import select, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if i % 2:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a slow request head, never finished
    held.append(s)
print("ready", flush=True)
closed, deadline = set(), time.monotonic() + 20
while len(closed) < count and time.monotonic() < deadline:
    ready, _, _ = select.select([s for s in held if s.fileno() not in closed], [], [], 0.5)
    for s in ready:
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            closed.add(s.fileno())
print(len(closed), flush=True)
"""


def test_idle_sockets_of_a_neighbour_do_not_starve_the_credential_server(serving):
    port = urllib.parse.urlsplit(serving.url).port
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(port), "400"], stdout=subprocess.PIPE, text=True)
    try:
        assert read_lines(neighbour.stdout, 1, timeout=30) == ["ready"]
        status, body = serving.get({"Authorization": serving.token})
        assert status == 200 and body["AccessKeyId"]
        assert serving.get()[0] == 403
        out, _ = neighbour.communicate(timeout=40)
        assert int(out.split()[-1]) == 400  # every idle or slow socket was cut off by the server
    finally:
        if neighbour.poll() is None:
            neighbour.kill()
            neighbour.communicate(timeout=5)
    assert serving.get({"Authorization": serving.token})[0] == 200


# -- 6. data from Vault is data -------------------------------------------------------------------------------

INJECTED_SECRET = "wJalrXUtnFEMI/K7MDENG\n[profile evil]\ncredential_process = sh -c 'touch /tmp/pwned'"


def _vault_answer(**changes: object) -> bytes:
    answer: dict = {
        "request_id": "r",
        "lease_id": "aws/creds/ci/abcdefghijklmnopqrstuvwx",
        "lease_duration": 3600,
        "renewable": True,
        "data": {"access_key": "AKIAIOSFODNN7EXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG", "session_token": None},
    }
    data = changes.pop("data", {})
    answer.update(changes)
    answer["data"].update(data)
    return json.dumps(answer).encode()


@pytest.mark.parametrize(
    "answer, words",
    [
        (_vault_answer(data={"secret_key": INJECTED_SECRET}), "secret_key"),
        (_vault_answer(data={"access_key": "AKIA\x1b]0;pwned\x07"}), "access_key"),
        (_vault_answer(data={"session_token": "tok en"}), "session token"),
        (_vault_answer(lease_id="database/creds/payments-prod/abc"), "lease id"),
        (_vault_answer(lease_duration=10 * 366 * 86400), "lease_duration"),
    ],
    ids=["secret-with-newlines", "key-with-escape", "token-with-space", "lease-elsewhere", "ten-years"],
)
def test_a_hostile_vault_answer_is_refused_in_one_line_and_revoked(listener_factory, monkeypatch, answer, words):
    hostile = listener_factory(status=200, body=answer, headers={"Content-Type": "application/json"})
    monkeypatch.setenv("VAULT_ADDR", hostile.url)
    monkeypatch.setenv("VAULT_TOKEN", "t")
    result = run_broker("credential-process", "--mount", "aws", "--role", "ci")
    assert_one_line_error(result, contains=words)
    assert "pwned" not in result.stderr and "\x1b" not in result.stderr
    revokes = [path for method, path, _ in hostile.capture.requests if "sys/leases/revoke" in path]
    assert bool(revokes) == (words != "lease id")  # a lease id outside the request is never acted on
    export = run_broker("export", "--mount", "aws", "--role", "ci", "--format", "ini")
    assert export.returncode != 0 and "credential_process" not in export.stdout


def test_control_characters_and_formulas_are_escaped_in_tables_and_csv(vault):
    credential("--mount", "aws", "--role", "deploy")
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:
        db.execute("UPDATE leases SET role_session_name = ?, profile = ?", ("\x1b]0;owned\x07x", "=HYPERLINK(1)"))
    table = run_broker("leases", "--wide")  # the session name is a --wide column
    assert table.returncode == 0 and "\x1b" not in table.stdout and "\\x1b]0;owned\\x07x" in table.stdout
    listed = run_broker("leases", "--format", "csv")
    assert "'=HYPERLINK(1)" in listed.stdout  # csv keeps the data, but no formula starts a cell
    assert not [cell for line in listed.stdout.splitlines() for cell in line.split(",") if cell.startswith("=")]


# -- 7. shell-safe config lines -------------------------------------------------------------------------------


def test_a_db_path_with_shell_syntax_runs_nothing_under_sh(vault, tmp_path, monkeypatch):
    import configparser

    marker = tmp_path / "pwned"
    db = tmp_path / f"$(touch {marker})" / "`touch {marker}`" / "broker.db"
    args = ["profile", "add", "dev", "--mount", "aws", "--role", "deploy", "--write-aws-config"]
    result = run_broker("--db", str(db), *args)
    assert result.returncode == 0, result.stderr
    config = configparser.RawConfigParser()
    config.read(os.environ["AWS_CONFIG_FILE"])
    value = config["profile dev"]["credential_process"]
    ran = subprocess.run(["sh", "-c", value], capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert not marker.exists()
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["AccessKeyId"]
    refused = run_broker("--db", str(tmp_path / "it's" / "broker.db"), *args)
    assert refused.returncode != 0 and "single quote" in refused.stderr and "Traceback" not in refused.stderr


# -- 8. the child gets credentials, not broker's secrets ---------------------------------------------------------

CHILD = (
    "import json, os, sys;"
    "from botocore.session import Session;"
    "creds = Session().get_credentials();"
    "print(json.dumps({'env': dict(os.environ), 'method': creds.method if creds else None}))"
)


@pytest.mark.parametrize("mode", [[], ["--server"]], ids=["env", "server"])
def test_exec_children_get_credentials_not_brokers_secrets(vault, aws_env, tmp_path, monkeypatch, mode):
    from broker import crypto
    from tests.test_exec import add_profile

    add_profile("dev", "--mount", "aws", "--role", "deploy", "--region", "eu-west-1")
    web_token = tmp_path / "web-identity-token"
    web_token.write_text("eyJhbGciOi.fake.token")
    monkeypatch.setenv("BROKER_KEY", crypto.new_key_text())
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/ci-web-identity")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(web_token))
    result = run_broker("exec", *mode, "dev", "--", sys.executable, "-c", CHILD)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for name in ("VAULT_TOKEN", "BROKER_KEY", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        assert name not in seen["env"], name
    assert vault.root_token not in json.dumps(seen["env"])
    assert seen["method"] == ("container-role" if mode else "env")
    kept = run_broker("exec", *mode, "--keep-vault-token", "dev", "--", sys.executable, "-c", CHILD)
    assert json.loads(kept.stdout)["env"]["VAULT_TOKEN"] == vault.root_token
    assert "BROKER_KEY" not in json.loads(kept.stdout)["env"]


# -- 9. small ones ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db.internal user=host_a password=s3cretpw dbname=broker",
        "host=db.internal password='s3cret pw' user=host_a",
        "postgresql://host_a:s3cretpw@[db.internal/broker",
        "postgresql://host_a:s3cretpw@db.internal:99999999/broker",
        "postgresql://db.internal/broker?password=s3cretpw",
    ],
)
def test_fleet_dsns_never_show_their_password(dsn):
    from broker.fleet.ledger import mask_url

    assert "s3cret" not in mask_url(dsn)
    result = run_broker("ledger", "status", env={"BROKER_LEDGER_URL": dsn})
    assert "s3cret" not in result.stdout + result.stderr


def test_vault_addr_userinfo_is_never_stored_or_shown(vault, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", vault.url.replace("http://", "http://bob:hunter2pw@"))
    credential("--mount", "aws", "--role", "deploy")
    assert "hunter2pw" not in str(_rows("vault_addr", "cache_key"))
    vault.sealed = True
    failed = run_broker("credential-process", "--mount", "aws", "--role", "ci")
    listed = run_broker("leases", "--format", "json")
    doctor = run_broker("doctor")
    assert failed.returncode != 0
    for result in (failed, listed, doctor):
        assert "hunter2pw" not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
@pytest.mark.parametrize("what", ["file-owner", "file-mode", "dir-mode"])
def test_a_key_file_another_user_could_replace_is_refused(vault, what):
    from broker import crypto, settings

    credential("--mount", "aws", "--role", "deploy")
    path = crypto.key_file(settings.load())
    if what == "file-owner":
        os.chown(path, 65534, 65534)  # nobody: a second OS user
    elif what == "file-mode":
        os.chmod(path, 0o666)
    else:
        os.chmod(os.path.dirname(path), 0o777)
    result = run_broker("credential-process", "--mount", "aws", "--role", "deploy")
    assert_one_line_error(result, contains="key")
    assert "refusing" in result.stderr or "writable" in result.stderr


def test_a_sealed_blob_copied_into_another_row_does_not_open(vault):
    first = credential("--mount", "aws", "--role", "deploy")
    second = credential("--mount", "aws", "--role", "fed")
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:
        rows = db.execute("SELECT id, secret, sealed_token, cache_key FROM leases ORDER BY id").fetchall()
        assert all(secret and token for _, secret, token, _ in rows)  # secret and token sealed apart
        (one, secret, token, _), (two, _, _, fed_key) = rows
        # someone who can write the database re-labels the deploy row as the fed request's cache entry
        db.execute("UPDATE leases SET state = 'revoked', secret = NULL WHERE id = ?", (two,))
        db.execute("UPDATE leases SET cache_key = ? WHERE id = ?", (fed_key, one))
    again = credential("--mount", "aws", "--role", "fed")
    assert again["AccessKeyId"] not in (first["AccessKeyId"], second["AccessKeyId"])  # not served: issued anew
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:  # a blob moved into the other field does not open
        db.execute(
            "UPDATE leases SET secret = sealed_token, sealed_token = secret WHERE access_key_id = ?",
            (again["AccessKeyId"],),
        )
    assert credential("--mount", "aws", "--role", "fed")["AccessKeyId"] != again["AccessKeyId"]


def test_a_sealed_blob_bound_to_another_expiry_does_not_open_and_renew_reseals(vault, cli):
    from broker import cache, crypto, settings

    first = credential("--mount", "aws", "--role", "ci")  # iam_user: renewable
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:
        row = db.execute(
            "SELECT id, lease_id, cache_key, access_key_id, expires_at, secret, sealed_token FROM leases"
        ).fetchone()
    row_id, lease_id, cache_key, key_id, expires_at, secret, token = row
    key = crypto.load_key(settings.load())
    assert key is not None
    assert crypto.open_credential(key, lease_id, cache_key, key_id, expires_at, secret, token) is not None
    # the same lease id and cache key with another expiry: the blob does not open
    assert crypto.open_credential(key, lease_id, cache_key, key_id, expires_at + 86400, secret, token) is None
    # someone who can write the database stretches the row's expiry: not served, issued anew
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:
        db.execute("UPDATE leases SET expires_at = expires_at + 86400 WHERE id = ?", (row_id,))
    again = credential("--mount", "aws", "--role", "ci")
    assert again["AccessKeyId"] != first["AccessKeyId"]
    # `broker renew --all` moves expires_at and reseals in the same transaction: still a cache hit
    proc = cli(["renew", "--all", "--increment", "2h"])
    assert proc.returncode == 0, proc.stderr
    assert "2 renewed" in proc.stdout
    with sqlite3.connect(os.environ["BROKER_DB"]) as db:
        (renewed,) = db.execute(
            "SELECT expires_at FROM leases WHERE access_key_id = ?", (again["AccessKeyId"],)
        ).fetchone()
    assert renewed != again["Expiration"] and cache.iso_utc(renewed) != again["Expiration"]
    issued = len(vault.issued)
    hit = run_broker("-v", "credential-process", "--mount", "aws", "--role", "ci")
    assert hit.returncode == 0, hit.stderr
    served = json.loads(hit.stdout)
    assert served["AccessKeyId"] == again["AccessKeyId"] and served["Expiration"] == cache.iso_utc(renewed)
    assert "hit:" in hit.stderr and len(vault.issued) == issued  # from the cache: no issuance


def test_origins_compare_scheme_host_and_port():
    from broker.bulk import same_vault
    from broker.vault import strip_userinfo, vault_origin

    assert vault_origin("https://vault:8200/")[:3] != vault_origin("http://vault:8200")[:3]  # never https -> http
    assert vault_origin("https://Vault:443")[:3] == vault_origin("https://vault")[:3]
    assert same_vault("https://bob:pw@vault:8200/", "https://vault:8200")
    assert not same_vault("http://127.0.0.1:8201", "http://127.0.0.1:8200")
    assert strip_userinfo("https://bob:pw@vault:8200/v1") == "https://vault:8200/v1"
