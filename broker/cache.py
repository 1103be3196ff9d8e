"""The local credential cache: which cached credential may be served, and how it is printed.

This module is on the cache-hit path (see fastpath.py), so it uses the standard library only and
reads the ledger with plain sqlite3. Everything that writes goes through SQLAlchemy elsewhere; the
two meet in the column names below, and tests/test_schema.py fails if they drift apart.
"""

TYPE_CHECKING = False  # typing is not imported on the cache-hit path; mypy treats this name as True
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

# A request's fields (REQUEST_FIELDS) by name: strings from flags and profiles, ttl an int, any may be None.
# Loosely typed on purpose: callers validate each field (profiles.check_*) before use.
RequestFields = dict[str, "Any"]

# A servable cache row, as HIT_QUERY selects it:
# (id, access_key_id, sealed_secret, started_at, expires_at, lease_id, sealed_token, account_id or None).
Hit = tuple[int, str, bytes, int, int, str, bytes | None, "str | None"]

# The Alembic revision this code reads and writes. tests/test_schema.py checks it against the head
# of migrations/versions; db.py refuses databases whose revision it does not know.
SCHEMA_HEAD = "0002"

# The cache rule. botocore re-runs credential_process on every request once less than 15 minutes
# remain, and STS credentials may live only 15 minutes, so: reuse a credential while at least
# min(15 minutes, half its lifetime) remains, and never serve one with under a minute left.
REFRESH_WINDOW = 15 * 60
MIN_REMAINING = 60

STS_TYPES = ("assumed_role", "federation_token", "session_token")
# static: a static role's key ({mount}/static-creds/{role}, Vault 1.14+), no lease, cached until Vault rotates it.
CREDENTIAL_TYPES = ("iam_user", *STS_TYPES, "static")

# What a request is made of; a profile supplies defaults, command-line flags override them.
REQUEST_FIELDS = ("mount", "role", "namespace", "ttl", "role_arn", "role_session_name", "credential_type")

SCHEMA_QUERY = "SELECT version_num FROM alembic_version"
PROFILE_QUERY = (
    "SELECT mount, role, namespace, ttl, role_arn, role_session_name, credential_type FROM profiles WHERE name = ?"
)
HIT_QUERY = (
    "SELECT id, access_key_id, secret, COALESCE(renewed_at, issued_at), expires_at, lease_id, sealed_token, "
    "account_id FROM leases "
    "WHERE cache_key = ? AND state = 'active' AND secret IS NOT NULL AND expires_at > ? "
    "ORDER BY expires_at DESC LIMIT 1"
)


NEWEST_ROW_QUERY = "SELECT COALESCE(MAX(id), 0) FROM leases"

# A process that waited on the issuance lock takes the credential that issuance recorded (a row
# newer than its wait) while at least this many seconds remain, whatever the reuse rule says:
# otherwise leases shorter than two minutes would be issued once per waiter (a convoy).
WAITER_MIN_REMAINING = 2


def reusable(started_at: int, expires_at: int, now: float) -> bool:
    """True while the credential has enough life left to be served without issuing a new one.
    One that lives under two minutes can never keep a minute: it is reused while a quarter of its
    life (at least WAITER_MIN_REMAINING) remains, so a short role costs about one issuance per lease."""
    remaining = expires_at - now
    lifetime = expires_at - started_at
    if lifetime < 2 * MIN_REMAINING:
        return remaining >= max(WAITER_MIN_REMAINING, lifetime // 4)
    return remaining >= max(MIN_REMAINING, min(REFRESH_WINDOW, lifetime // 2))


def still_valid(expires_at: int, now: float) -> bool:
    """True while a credential may still be served at all (Vault down: better than nothing)."""
    return expires_at - now >= MIN_REMAINING


def merge_request(profile: RequestFields | None, flags: RequestFields) -> RequestFields:
    """The effective request: each flag given on the command line overrides the profile's value."""
    merged: RequestFields = dict.fromkeys(REQUEST_FIELDS)
    if profile:
        merged.update({k: v for k, v in profile.items() if k in merged})
    merged.update({k: v for k, v in flags.items() if k in merged and v not in (None, "")})
    return merged


def endpoint_for(credential_type: str | None, ttl: int | None, role_arn: str | None) -> str:
    """`creds`, `sts` or (static roles) `static-creds`. The role decides the credential type in Vault;
    the path matters only for legacy roles, so use `sts` whenever the request is known or looks like an
    STS request."""
    if credential_type == "iam_user":
        return "creds"
    if credential_type == "static":
        return "static-creds"
    if credential_type or ttl or role_arn:
        return "sts"
    return "creds"


def cache_key(vault_addr: str, namespace: str, request: RequestFields, profile: str | None = None) -> str:
    """Requests with equal keys may share a cached credential. A generated (unique) session name is
    not part of the request, so it does not split the cache; one the user chose does. The profile
    is part of the key: each profile's credential is its own lease row, so the ledger says which
    profile used which key (`leases --profile`, `revoke --profile` are exact)."""
    endpoint = endpoint_for(request["credential_type"], request["ttl"], request["role_arn"])
    parts = (
        vault_addr,
        namespace or "",
        (request["mount"] or "").strip("/"),
        endpoint,
        request["role"] or "",
        str(request["ttl"] or ""),
        request["role_arn"] or "",
        request["role_session_name"] or "",
        profile or "",
    )
    return "|".join(parts)


def newest_row(conn: "sqlite3.Connection") -> int:
    """The id of the newest ledger row: a waiter notes it before it waits (see find_hit)."""
    newest: int = conn.execute(NEWEST_ROW_QUERY).fetchone()[0]
    return newest


def find_hit(conn: "sqlite3.Connection", key: str, now: float, newer_than: int | None = None) -> Hit | None:
    """The freshest cached row for `key` that may be served (a `Hit`), or None. With `newer_than`
    (the newest row id before this process waited on the issuance lock), a row recorded meanwhile
    is served while it has not expired (WAITER_MIN_REMAINING), even below the reuse threshold."""
    row: Hit | None = conn.execute(HIT_QUERY, (key, int(now))).fetchone()
    if row is None:
        return None
    if reusable(row[3], row[4], now):
        return row
    if newer_than is not None and row[0] > newer_than and row[4] - now >= WAITER_MIN_REMAINING:
        return row
    return None


LATEST_QUERY = (
    "SELECT COALESCE(renewed_at, issued_at), expires_at, state, secret IS NOT NULL FROM leases "
    "WHERE cache_key = ? ORDER BY expires_at DESC LIMIT 1"
)


def miss_reason(conn: "sqlite3.Connection", key: str, now: float) -> str:
    """Why `key` has no servable credential, in words for `-v` (no cache, expired, below the reuse
    threshold, revoked); "fresh" when there is one after all."""
    row = conn.execute(LATEST_QUERY, (key,)).fetchone()
    if row is None:
        return "no cached credential for this request"
    started_at, expires_at, state, has_secret = row
    if state != "active":
        return f"the cached credential is {state}"
    if not has_secret:
        return "the cached secret was cleared"
    remaining = int(expires_at - now)
    if remaining <= 0:
        return f"the cached credential expired {-remaining}s ago"
    if not reusable(started_at, expires_at, now):
        needed = max(MIN_REMAINING, min(REFRESH_WINDOW, (expires_at - started_at) // 2))
        return f"the cached credential has {remaining}s left, below the reuse threshold of {needed}s"
    return "fresh"


def iso_utc(epoch: float) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`: the one timestamp form every AWS SDK reads the same way."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _plain(value: str) -> bool:
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def render_process_json(
    access_key_id: str, secret_key: str, session_token: str | None, expires_at: float, account_id: str | None = None
) -> str:
    """The credential_process object. Built by hand for the usual characters (no json import on a
    hit), through json for anything else. `AccountId` only when the account is known (12 digits):
    SDKs use it for account-based endpoints, so it is never a guess."""
    fields: list[tuple[str, int | str]] = [
        ("Version", 1),
        ("AccessKeyId", access_key_id),
        ("SecretAccessKey", secret_key),
    ]
    if session_token:
        fields.append(("SessionToken", session_token))
    fields.append(("Expiration", iso_utc(expires_at)))
    if account_id and len(account_id) == 12 and account_id.isdigit():
        fields.append(("AccountId", account_id))
    if all(isinstance(v, str) and _plain(v) for _, v in fields[1:]):
        return "{" + ", ".join(f'"{k}": {v}' if k == "Version" else f'"{k}": "{v}"' for k, v in fields) + "}"
    import json

    return json.dumps(dict(fields))
