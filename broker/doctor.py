"""`broker doctor`: check what broker depends on, one line per check, changing nothing.

It never issues a credential, never migrates or creates the database, never creates a key, and
never prints a secret (lookup-self answers with the token itself: only its ttl and policies are
read). A failed check does not stop the others.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import cache, crypto, durations, settings
from broker.errors import BrokerError, VaultDenied, VaultRejected

if TYPE_CHECKING:
    from broker.app import App
    from broker.vault import Vault

OK, WARN, FAIL = "ok", "warn", "FAIL"
SHORT_TOKEN_SECONDS = 600
STALE_INTENT_SECONDS = 120  # an issuance takes seconds; an intent this old lost its worker

# A profile as _check_database reads it: (name, mount, role, namespace, credential_type).
ProfileRow = tuple[str, str, str, str | None, str | None]


@dataclass(frozen=True)
class Check:
    status: str  # ok | warn | FAIL
    what: str

    def line(self) -> str:
        return f"{self.status:<4} {self.what}"


def run_checks(app: App) -> list[Check]:
    checks: list[Check] = []
    vault = _check_vault(app.env, checks)
    profile_rows = _check_database(app.env, app.db_path, checks)
    _check_key(app.env, checks)
    _check_profiles(app.env, vault, profile_rows, checks)
    return checks


# -- Vault ----------------------------------------------------------------------------------------


def _check_vault(env: settings.Env, checks: list[Check]) -> Vault | None:
    from broker.vault import Vault, VaultSettings

    try:
        vault_settings = VaultSettings.from_env(env)
    except BrokerError as exc:
        checks.append(Check(FAIL, f"vault address: {exc}"))
        return None
    checks.append(
        Check(
            OK,
            f"vault address: {vault_settings.addr} (from {env.vault_addr_source}); "
            f"token from {vault_settings.token_source}",
        )
    )
    vault = Vault(vault_settings)
    try:
        data = vault.lookup_self()
    except VaultDenied:
        checks.append(Check(OK, f"vault reachable at {vault_settings.addr}"))
        checks.append(
            Check(
                FAIL,
                "vault token: denied by auth/token/lookup-self (403): it is invalid or expired; "
                "log in again (vault login) or set VAULT_TOKEN",
            )
        )
        return None
    except BrokerError as exc:
        checks.append(Check(FAIL, f"vault reachable: {exc}"))
        return None
    checks.append(Check(OK, f"vault reachable at {vault_settings.addr}"))
    checks.append(_token_check(data))
    return vault


def _token_check(data: dict[str, Any]) -> Check:
    policies = data.get("policies") or []
    shown = ", ".join(str(p) for p in policies) if isinstance(policies, list) else "?"
    try:
        ttl = int(data.get("ttl") or 0)
    except (TypeError, ValueError):
        ttl = 0
    if ttl <= 0:
        return Check(OK, f"vault token: never expires; policies: {shown}")
    left = durations.format_duration(ttl)
    renewable = "renewable" if data.get("renewable") else "not renewable"
    if ttl < SHORT_TOKEN_SECONDS:
        return Check(
            WARN,
            f"vault token: expires in {left} ({renewable}); renew it (vault token renew) or log in again; "
            f"policies: {shown}",
        )
    return Check(OK, f"vault token: ttl {left} ({renewable}); policies: {shown}")


# -- the ledger and the key ------------------------------------------------------------------------


def _check_database(env: settings.Env, path: str, checks: list[Check]) -> list[ProfileRow] | None:
    """Path, permissions and schema revision, read-only; returns the profiles when readable."""
    directory = os.path.dirname(path)
    if not os.path.exists(path):
        checks.append(Check(WARN, f"database: {path} does not exist yet (created on first use)"))
        return None
    if os.path.isdir(path):
        checks.append(Check(FAIL, f"database: {path} is a directory; give a file path with --db or BROKER_DB"))
        return None
    problems = [
        p
        for p in (
            settings.permission_problem(directory, os.stat(directory), 0o700),
            settings.permission_problem(path, os.stat(path), 0o600),
        )
        if p
    ]
    if problems:
        checks.append(Check(FAIL, f"database permissions: {'; '.join(problems)}"))
    elif not os.access(path, os.R_OK | os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        checks.append(Check(FAIL, f"database permissions: {path} or its directory is not writable by this user"))
    else:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        checks.append(Check(OK, f"database: {path} (mode {mode:04o})"))
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        checks.append(Check(FAIL, f"database schema: cannot open {path}: {exc}"))
        return None
    try:
        try:
            row = conn.execute(cache.SCHEMA_QUERY).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None
        revision = row[0] if row else None
        if revision is None:
            checks.append(Check(WARN, "database schema: empty (set up on first use)"))
            return None
        if revision != cache.SCHEMA_HEAD:
            checks.append(_revision_check(revision))
            return None
        checks.append(Check(OK, f"database schema: revision {revision} (current)"))
        checks.append(_interrupted_issuances(env, conn))
        return conn.execute(
            "SELECT name, mount, role, namespace, credential_type FROM profiles ORDER BY name"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        checks.append(Check(FAIL, f"database schema: cannot read {path}: {exc}"))
        return None
    finally:
        conn.close()


def _interrupted_issuances(env: settings.Env, conn: sqlite3.Connection) -> Check:
    """Intent rows whose worker died (or gave up) before recording: Vault may hold a lease the ledger
    lacks. A worker of this host that is gone counts at once; any other intent once it is old."""
    rows = conn.execute(
        "SELECT namespace, mount, endpoint, role, role_session_name, started_at, pid, host FROM intents "
        "ORDER BY started_at"
    ).fetchall()
    here = env.host_name()
    old = int(time.time()) - STALE_INTENT_SECONDS
    stale = [r for r in rows if (r[7] == here and not _pid_alive(r[6])) or r[5] < old]
    if not stale:
        return Check(OK, "interrupted issuances: none")
    namespace, mount, endpoint, role, session_name, started_at, _pid, _host = stale[0]
    path = "/".join(p for p in (namespace, mount, endpoint, role) if p)
    session = f", session {session_name}" if session_name else ""
    return Check(
        WARN,
        f"interrupted issuances: {len(stale)}, first {path} at {cache.iso_utc(started_at)}{session}; Vault may hold "
        f"leases this ledger lacks: find them with `broker reconcile --vault-list` (a token that may list "
        f"sys/leases/lookup/{mount}/{endpoint}/{role}, a sudo path)",
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _revision_check(revision: str) -> Check:
    try:
        from alembic.script import ScriptDirectory

        from broker import db

        known = {rev.revision for rev in ScriptDirectory.from_config(db.alembic_config()).walk_revisions()}
    except (ImportError, BrokerError):
        known = set()
    if revision in known:
        return Check(
            WARN,
            f"database schema: revision {revision}, older than {cache.SCHEMA_HEAD}; "
            f"migrated (with a backup) on next use",
        )
    return Check(
        FAIL,
        f"database schema: revision {revision} is newer than this broker knows ({cache.SCHEMA_HEAD}); upgrade broker",
    )


def _check_key(env: settings.Env, checks: list[Check]) -> None:
    """Where the key for cached secrets is, and that it is usable; never creates one."""
    try:
        kind, where = crypto.key_source(env)
        if kind == "BROKER_KEY":
            crypto.load_key(env, create=False, allow_keyring=False)
            checks.append(Check(OK, "encryption key: from BROKER_KEY"))
        elif kind == "keyring":
            found = crypto.load_key(env, create=False)
            if found is None:
                checks.append(
                    Check(WARN, f"encryption key: none in the OS keyring ({where}) yet; created at the first issuance")
                )
            else:
                checks.append(Check(OK, f"encryption key: in the OS keyring ({where})"))
        else:
            _check_key_file(env, where or crypto.key_file(env), checks)
    except (crypto.KeyUnusable, OSError) as exc:
        checks.append(Check(FAIL, f"encryption key: {getattr(exc, 'strerror', None) or exc}"))


def _check_key_file(env: settings.Env, path: str, checks: list[Check]) -> None:
    if not os.path.exists(path):
        checks.append(Check(WARN, f"encryption key: {path} does not exist yet (created at the first issuance)"))
        return
    info = os.stat(path)
    directory = os.path.dirname(path)
    problems = [
        p
        for p in (
            settings.permission_problem(path, info, 0o600),
            settings.permission_problem(directory, os.stat(directory), 0o700),
        )
        if p
    ]
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        problems.append(f"{path} is readable by group or others; fix: chmod 600 {path}")
    if problems:
        checks.append(Check(FAIL, f"encryption key: {'; '.join(problems)}"))
        return
    if crypto.load_key(env, create=False, allow_keyring=False) is None:
        checks.append(Check(FAIL, f"encryption key: cannot read {path}"))
        return
    checks.append(Check(OK, f"encryption key: {path} (mode {stat.S_IMODE(info.st_mode):04o})"))


# -- profiles -------------------------------------------------------------------------------------


def _check_profiles(env: settings.Env, vault: Vault | None, rows: list[ProfileRow] | None, checks: list[Check]) -> None:
    if rows is None:
        return
    if not rows:
        checks.append(Check(WARN, "profiles: none yet; add one with `broker profile add NAME --mount M --role R`"))
        return
    for name, mount, role, namespace, credential_type in rows:
        kind = "static-roles" if credential_type == "static" else "roles"
        what = f"profile {name}: {mount}/{kind}/{role}" + (
            f" in namespace {env.vault_namespace(namespace)}" if env.vault_namespace(namespace) else ""
        )
        if vault is None:
            checks.append(Check(WARN, f"{what}: not checked (Vault is not usable)"))
            continue
        checks.append(_role_check(vault, what, mount, role, env.vault_namespace(namespace), credential_type))


def _role_check(vault: Vault, what: str, mount: str, role: str, namespace: str, credential_type: str | None) -> Check:
    static = credential_type == "static"
    kind = "static-roles" if static else "roles"
    try:
        data = vault.read_static_role(mount, role, namespace) if static else vault.read_role(mount, role, namespace)
    except VaultDenied:
        return Check(WARN, f"{what}: cannot verify (the token lacks read on {mount}/{kind}/*; issuing may still work)")
    except VaultRejected as exc:
        if "no handler for route" in str(exc):
            return Check(FAIL, f"{what}: Vault has no AWS secrets engine mounted at {mount!r}")
        return Check(FAIL, f"{what}: {exc}")
    except BrokerError as exc:
        return Check(FAIL, f"{what}: {exc}")
    if data is None:
        return Check(FAIL, f"{what}: Vault has no role {role!r} on mount {mount!r}")
    if static:
        return Check(OK, f"{what} (static, rotated every {data.get('rotation_period', '?')}s)")
    found = data.get("credential_type")
    found = ",".join(found) if isinstance(found, list) else found
    if credential_type and found and credential_type not in str(found).split(","):
        return Check(WARN, f"{what}: the role issues {found}, but the profile says {credential_type}")
    return Check(OK, f"{what} ({found or 'type not shown'})")
