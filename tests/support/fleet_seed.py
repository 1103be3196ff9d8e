"""Fill a fleet ledger (PostgreSQL) with many synthetic lease rows, fast: COPY as the owner (tests and
scripts/bench_fleet.py). The before-write trigger fills listing_json as it does for a push; the owner
bypasses row-level security, so `db_user` may name any host login (10,000 of them, say)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

COLUMNS = (
    "lease_id",
    "access_key_id",
    "vault_addr",
    "namespace",
    "mount",
    "role",
    "profile",
    "credential_type",
    "role_session_name",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
    "host",
    "os_user",
    "db_user",
)


def fleet_rows(
    count: int,
    *,
    newest: float,
    spacing: float = 1.0,
    ttl: float = 3600,
    hosts: int = 1,
    role: str = "deploy",
    state: str = "active",
    credential_type: str = "assumed_role",
    db_user: str | None = "host_a",
    tag: str = "",
) -> Iterator[tuple[Any, ...]]:
    """`count` rows, the i-th issued at `newest - i * spacing` (Unix seconds) and expiring `ttl` later,
    spread round-robin over `hosts` hosts (host-00000 ...; db_user host_00000 ... when db_user is None)."""
    for i in range(count):
        h = i % hosts
        token = secrets.token_hex(10)
        issued = newest - i * spacing
        yield (
            f"aws/sts/{role}/{tag}{token}",
            f"ASIA{token[:16].upper()}",
            "http://127.0.0.1:8200",
            "",
            "aws",
            role,
            role,
            credential_type,
            f"broker-user{h}-{token[:8]}",
            datetime.fromtimestamp(issued, UTC),
            datetime.fromtimestamp(issued + ttl, UTC),
            state,
            datetime.fromtimestamp(issued + 60, UTC) if state == "revoked" else None,
            "oncall@desk" if state == "revoked" else None,
            f"host-{h:05d}",
            f"user{h}",
            db_user or f"host_{h:05d}",
        )


def copy_rows(url: str, rows: Iterable[tuple[Any, ...]], *, analyze: bool = True) -> int:
    """COPY `rows` (of COLUMNS) into fleet_leases over a psycopg URL (the owner's); returns how many."""
    import psycopg

    written = 0
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), prepare_threshold=None) as conn:
        with conn.cursor().copy(f"COPY fleet_leases ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                written += 1
        conn.commit()
        if analyze:
            conn.execute("ANALYZE fleet_leases")
            conn.commit()
    return written
