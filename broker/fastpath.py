"""The cache hit, answered without Click, SQLAlchemy, Alembic or hvac.

`broker credential-process` runs once per AWS CLI command and on every botocore refresh, so a hit
must cost little more than starting Python. This module answers the common case with one profile
query and one lease query through the standard library's sqlite3 and prints the JSON. Anything
else (a miss, an unfamiliar flag, a database that needs migrating, unsafe permissions, any error)
returns None and the full CLI takes over, with its validation and its error messages.
"""

import os
import sys
import time

try:  # the C module itself: `sqlite3` would also import datetime to register its adapters
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover
    import sqlite3  # type: ignore[no-redef]  # the same Connection class either way

from broker import cache, crypto, durations, settings
from broker.errors import LockTimeout

TYPE_CHECKING = False  # typing is not imported on the cache-hit path; mypy treats this name as True
if TYPE_CHECKING:
    from typing import Any

FLAG_FIELDS = {
    "--profile": "profile",
    "--mount": "mount",
    "--role": "role",
    "--ttl": "ttl",
    "--role-arn": "role_arn",
    "--role-session-name": "role_session_name",
    "--credential-type": "credential_type",
}
GLOBAL_FLAGS = {"--db": "db", "--ledger-url": "ledger_url"}
VERBOSE_FLAGS = {"-v": 1, "-vv": 2, "-vvv": 3, "--verbose": 1}


def parse(argv: list[str]) -> "dict[str, Any] | None":
    """`[--db P] [--ledger-url U] [-v] credential-process FLAGS` into a dict, or None if it is anything
    else. Global flags may also come after the command, as the full CLI allows; `-v`s add up."""
    options: dict[str, Any] = {}
    table = GLOBAL_FLAGS
    i = 0
    seen_command = False
    while i < len(argv):
        word = argv[i]
        if not seen_command and word == "credential-process":
            seen_command, table = True, {**FLAG_FIELDS, **GLOBAL_FLAGS}
            i += 1
            continue
        if word in VERBOSE_FLAGS:
            options["verbose"] = options.get("verbose", 0) + VERBOSE_FLAGS[word]
            i += 1
            continue
        name, eq, value = word.partition("=")
        if name not in table:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        if table[name] in options:
            return None
        options[table[name]] = value
        i += 1
    return options if seen_command else None


def _say(level: str, text: str) -> None:
    """One log line in the format of the full CLI's logging (no logging module on the hit path)."""
    sys.stderr.write(f"broker: {level}: {text}\n")


def _lock_path(path: str, key: str) -> str:
    from broker import locks

    return locks.lock_path(path, key)


def _hit_line(answer: str, options: "dict[str, Any]") -> str:
    """`hit: ...` naming the access key id and expiry, read back from the JSON about to be printed
    (the two fields that are no secret), never the secret halves."""
    expiration = answer.rpartition('"Expiration": "')[2].partition('"')[0]
    key_id = answer.partition('"AccessKeyId": "')[2].partition('"')[0][-4:]  # logs show the last four (mask_key)
    what = f"profile {options['profile']}" if "profile" in options else f"{options['mount']}/{options['role']}"
    return f"hit: {what}: cached credential ...{key_id}, expires {expiration or 'later'} (no Vault request)"


def _safe(path: str, wanted: int) -> bool:
    return settings.permission_problem(path, os.stat(path), wanted) is None


def serve(argv: list[str]) -> int | None:
    """Print a cached credential and return 0, or return None to hand over to the full CLI.

    On a miss this process waits for any issuance already in flight for the same request (the
    lock leases.obtain takes), then looks again: fifty processes started together cost one
    issuance and fifty cheap cache reads, not fifty full CLI start-ups. The process that gets the
    lock first keeps it and hands it to the full CLI, which issues under it.
    """
    options = parse(argv)
    if options is None:
        return None
    try:
        if "ttl" in options:
            options["ttl"] = durations.parse_ttl(options["ttl"])  # same range as the CLI's
        if options.get("credential_type", "iam_user") not in cache.CREDENTIAL_TYPES:
            return None  # the CLI says which types exist
        env = settings.load()
        path = settings.db_path(options.get("db"), env)
        if not (_safe(path, 0o600) and _safe(os.path.dirname(path), 0o700)):
            return None
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            key = _cache_key(conn, env, options)
            if key is None:
                return None
            verbose = options.get("verbose", 0)
            if verbose >= 2:
                _say("DEBUG", "cache key: " + key)
            answer = _answer(conn, env, key)
            if answer is None:  # noted after the miss: a hit costs one profile and one lease query
                if verbose >= 2:
                    _say("DEBUG", "lock: " + _lock_path(path, key))
                answer = _wait_for_issuance(conn, env, path, key, cache.newest_row(conn))
                if answer is None:
                    return None
            if verbose:
                _say("INFO", _hit_line(answer, options))
        finally:
            conn.close()
    except LockTimeout as exc:  # waiting again in the full CLI would double the wait
        sys.stderr.write(f"broker: {exc}\n")
        return exc.exit_code
    except Exception:  # anything odd: the full CLI redoes it properly and reports errors
        return None
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
    return 0


def _wait_for_issuance(conn: "sqlite3.Connection", env: settings.Env, path: str, key: str, newest: int) -> str | None:
    """Take the request's issuance lock and look again, taking what an issuance recorded while we
    waited (a row newer than `newest`). On a hit, release it and return the answer; otherwise keep
    holding it for the full CLI (locks.adopt) and return None."""
    from broker import locks

    lock = locks.lock_path(path, key)
    fd = locks.acquire(lock, env.wait_seconds(locks.ISSUANCE_WAIT_SECONDS), "issuance lock")
    try:
        answer = _answer(conn, env, key, newest)
    except BaseException:
        os.close(fd)
        raise
    if answer is None:
        locks.adopt(lock, fd)
    else:
        os.close(fd)
    return answer


def _cache_key(conn: "sqlite3.Connection", env: settings.Env, options: "dict[str, Any]") -> str | None:
    row = conn.execute(cache.SCHEMA_QUERY).fetchone()
    if row is None or row[0] != cache.SCHEMA_HEAD:
        return None
    profile = None
    if "profile" in options and ("mount" in options or "role" in options):
        return None  # the CLI reports the conflict
    if "profile" in options:
        found = conn.execute(cache.PROFILE_QUERY, (options["profile"],)).fetchone()
        if found is None:
            return None
        profile = dict(zip(cache.REQUEST_FIELDS, found, strict=True))
    elif "mount" not in options or "role" not in options:
        return None
    request = cache.merge_request(profile, options)
    if not request["mount"] or not request["role"]:
        return None
    return cache.cache_key(env.vault_addr, env.vault_namespace(request["namespace"]), request, options.get("profile"))


def _answer(conn: "sqlite3.Connection", env: settings.Env, key: str, newer_than: int | None = None) -> str | None:
    """The credential_process JSON for a servable cached credential, or None."""
    hit = cache.find_hit(conn, key, time.time(), newer_than)
    if hit is None:
        return None
    secret_key = crypto.load_key(env, create=False, allow_keyring=False)
    if secret_key is None:
        return None
    _row_id, access_key_id, blob, _started, expires_at, lease_id, token_blob, account_id = hit
    opened = crypto.open_credential(secret_key, lease_id, key, access_key_id, expires_at, blob, token_blob)
    if opened is None:
        return None
    return cache.render_process_json(access_key_id, opened[0], opened[1], expires_at, account_id)
