"""Fill a ledger with many synthetic lease rows, fast (tests and benchmarks).

The schema comes from broker itself (broker.db.open_engine creates and migrates the file, as any
command does); the rows go in with plain sqlite3 `executemany` in one transaction. Rows carry no
secret unless `secret` is given. Lease ids are `<mount>/<creds|sts>/<role>/<tag><n>`, unique per tag.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator

COLUMNS = (
    "lease_id",
    "cache_key",
    "profile",
    "vault_addr",
    "namespace",
    "mount",
    "role",
    "endpoint",
    "credential_type",
    "access_key_id",
    "role_session_name",
    "role_arn",
    "renewable",
    "issued_at",
    "renewed_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
    "revoke_error",
    "secret",
    "host",
    "os_user",
)
INSERT = f"INSERT INTO leases ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def ensure_schema(db_path: str) -> None:
    """Create/migrate the ledger exactly as a broker command would."""
    from broker import db

    db.open_engine(db_path).dispose()


def seed_leases(
    db_path: str,
    n: int,
    *,
    expired: bool = False,
    credential_type: str = "iam_user",
    state: str = "active",
    mount: str = "aws",
    role: str = "ci",
    profile: str | None = None,
    namespace: str = "",
    vault_addr: str = "http://127.0.0.1:8200",
    tag: str = "seed",
    now: int | None = None,
    lifetime: int = 3600,
    secret: bytes | None = None,
    batch: int = 50_000,
) -> int:
    """Insert `n` lease rows and return n. expired=True puts every expiry in the past (spread over
    the last day); otherwise they end between now+lifetime/2 and now+lifetime. Revoked rows
    (state="revoked") get a revoked_at."""
    now = int(time.time()) if now is None else now
    rows = _rows(
        n,
        expired=expired,
        credential_type=credential_type,
        state=state,
        mount=mount,
        role=role,
        profile=profile,
        namespace=namespace,
        vault_addr=vault_addr,
        tag=tag,
        now=now,
        lifetime=lifetime,
        secret=secret,
    )
    insert_rows(db_path, rows, batch=batch)
    return n


def insert_rows(db_path: str, rows: Iterable[tuple], *, batch: int = 50_000) -> None:
    """executemany of ready tuples in COLUMNS order, committed every `batch` rows."""
    ensure_schema(db_path)
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    try:
        chunk: list[tuple] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                _write(conn, chunk)
                chunk = []
        if chunk:
            _write(conn, chunk)
    finally:
        conn.close()


def lease_row(**fields) -> tuple:
    """One row in COLUMNS order from keyword fields (sensible defaults for the rest)."""
    now = int(time.time())
    defaults = {
        "lease_id": "",
        "cache_key": None,
        "profile": None,
        "vault_addr": "http://127.0.0.1:8200",
        "namespace": "",
        "mount": "aws",
        "role": "ci",
        "endpoint": "creds",
        "credential_type": "iam_user",
        "access_key_id": "AKIA",
        "role_session_name": None,
        "role_arn": None,
        "renewable": 1,
        "issued_at": now,
        "renewed_at": None,
        "expires_at": now + 3600,
        "state": "active",
        "revoked_at": None,
        "revoked_by": None,
        "revoke_error": None,
        "secret": None,
        "host": "seed-host",
        "os_user": "seed",
    }
    unknown = set(fields) - set(defaults)
    if unknown:
        raise ValueError(f"unknown lease columns {sorted(unknown)}")
    defaults.update(fields)
    return tuple(defaults[c] for c in COLUMNS)


def _write(conn: sqlite3.Connection, chunk: list[tuple]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, chunk)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _rows(
    n,
    *,
    expired,
    credential_type,
    state,
    mount,
    role,
    profile,
    namespace,
    vault_addr,
    tag,
    now,
    lifetime,
    secret,
) -> Iterator[tuple]:
    sts = credential_type != "iam_user"
    endpoint = "sts" if sts else "creds"
    for i in range(n):
        if expired:
            expires_at = now - 1 - (i * 86400 // max(n, 1))
        else:
            expires_at = now + lifetime // 2 + (i * (lifetime // 2) // max(n, 1))
        issued_at = expires_at - lifetime
        yield (
            f"{mount}/{endpoint}/{role}/{tag}{i:08d}",
            None,
            profile,
            vault_addr,
            namespace,
            mount,
            role,
            endpoint,
            credential_type,
            f"AKIA{tag.upper()[:4]}{i:012d}"[:20],
            f"broker-seed-{tag}-{i}" if credential_type == "assumed_role" else None,
            None,
            0 if sts else 1,
            issued_at,
            None,
            expires_at,
            state,
            now - 10 if state == "revoked" else None,
            "seed" if state == "revoked" else None,
            None,
            secret,
            "seed-host",
            "seed",
        )
