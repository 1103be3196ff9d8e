"""Named profiles: validation of every user-supplied name, and the profile table's operations."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker import cache, db
from broker.errors import ProfileNotFound, UsageError
from broker.models import Lease, Profile

if TYPE_CHECKING:
    from broker.app import App

_PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_ROLE = re.compile(r"[A-Za-z0-9_.@+=,-]{1,128}")
_SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_ACCOUNT_ID = re.compile(r"\d{12}")


def _show(value: str) -> str:
    """Quote a bad value for an error message, control characters made visible."""
    return repr(value[:80])


def check_profile_name(name: str) -> str:
    if not isinstance(name, str) or not _PROFILE_NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"invalid profile name {_show(str(name))}: use up to 64 letters, digits, '.', '_' or '-'")
    return name


def check_path(value: str, what: str) -> str:
    """A mount or namespace: slash-separated segments, none empty, '.' or '..'."""
    cleaned = (value or "").strip("/")
    segments = cleaned.split("/")
    if not cleaned or len(cleaned) > 256 or any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        raise UsageError(f"invalid {what} {_show(str(value))}: use path segments of letters, digits, '.', '_', '-'")
    return cleaned


def check_role(role: str) -> str:
    if not isinstance(role, str) or not _ROLE.fullmatch(role) or role in (".", ".."):
        raise UsageError(f"invalid role {_show(str(role))}: a Vault role name such as 'deploy'")
    return role


def check_session_name(name: str) -> str:
    if not _SESSION_NAME.fullmatch(name):
        raise UsageError(f"invalid role session name {_show(name)}: 2-64 characters from letters, digits and +=,.@_-")
    return name


def check_role_arn(arn: str) -> str:
    if not _ROLE_ARN.fullmatch(arn):
        raise UsageError(f"invalid role ARN {_show(arn)}: expected arn:aws:iam::123456789012:role/NAME")
    return arn


def check_region(region: str) -> str:
    if not _REGION.fullmatch(region):
        raise UsageError(f"invalid region {_show(region)}: expected e.g. us-east-1")
    return region


def check_account_id(account_id: str) -> str:
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise UsageError(f"invalid AWS account id {_show(account_id)}: expected 12 digits, e.g. 123456789012")
    return account_id


def check_credential_type(kind: str) -> str:
    if kind not in cache.CREDENTIAL_TYPES:
        raise UsageError(f"invalid credential type {_show(kind)}: one of {', '.join(cache.CREDENTIAL_TYPES)}")
    return kind


STS_MIN_TTL = 900  # AWS refuses shorter STS sessions, and Vault relays the refusal at issue time


def check_ttl(ttl: int | None, credential_type: str | None) -> str | None:
    """Refuse a TTL Vault will refuse for an STS type; for an unknown type, a warning (or None)."""
    if ttl is None or ttl >= STS_MIN_TTL or credential_type in ("iam_user", "static"):
        return None
    if credential_type in cache.STS_TYPES:
        raise UsageError(
            f"--ttl {ttl}s is below the {STS_MIN_TTL}s (15m) minimum AWS allows for {credential_type} credentials"
        )
    return (
        f"--ttl {ttl}s is below the {STS_MIN_TTL}s minimum of STS credentials: fine for an iam_user role, "
        "refused by Vault for any other (say --credential-type to check now)"
    )


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    mount: str
    role: str
    namespace: str | None = None
    ttl: int | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    credential_type: str | None = None
    region: str | None = None
    account_id: str | None = None

    def validated(self) -> ProfileSpec:
        check_profile_name(self.name)
        if self.credential_type:
            check_credential_type(self.credential_type)
        check_ttl(self.ttl, self.credential_type)
        return ProfileSpec(
            name=self.name,
            mount=check_path(self.mount, "mount"),
            role=check_role(self.role),
            namespace=check_path(self.namespace, "namespace") if self.namespace else None,
            ttl=self.ttl,
            role_arn=check_role_arn(self.role_arn) if self.role_arn else None,
            role_session_name=check_session_name(self.role_session_name) if self.role_session_name else None,
            credential_type=check_credential_type(self.credential_type) if self.credential_type else None,
            region=check_region(self.region) if self.region else None,
            account_id=check_account_id(self.account_id) if self.account_id else None,
        )

    def request_fields(self) -> cache.RequestFields:
        return {k: v for k, v in asdict(self).items() if k in cache.REQUEST_FIELDS}


def _spec(row: Profile) -> ProfileSpec:
    return ProfileSpec(
        name=row.name,
        mount=row.mount,
        role=row.role,
        namespace=row.namespace,
        ttl=row.ttl,
        role_arn=row.role_arn,
        role_session_name=row.role_session_name,
        credential_type=row.credential_type,
        region=row.region,
        account_id=row.account_id,
    )


def get(app: App, name: str) -> ProfileSpec:
    with app.transaction(read_only=True) as session:
        return _get(session, name)


def _get(session: Session, name: str) -> ProfileSpec:
    check_profile_name(name)
    row = session.get(Profile, name)
    if row is None:
        raise ProfileNotFound(
            f"unknown profile {name!r}; see `broker profile list` or add it with `broker profile add`"
        )
    return _spec(row)


def add(app: App, spec: ProfileSpec) -> str:
    """Create or replace a profile: "added", "updated" or "unchanged". Re-adding an identical
    definition changes nothing and keeps its cached credential (a dotfiles script may run it on
    every login); a changed one wipes the cached secrets issued for the old definition, so they
    cannot be served under the new one."""
    spec = spec.validated()
    now = db.now()
    with app.transaction() as session:
        row = session.get(Profile, spec.name)
        if row is not None and _spec(row) == spec:
            return "unchanged"
        outcome = "added" if row is None else "updated"
        if row is None:
            row = Profile(name=spec.name, created_at=now)
            session.add(row)
        else:
            _wipe_cached_secrets(session, spec.name)
        for field, value in spec.request_fields().items():
            setattr(row, field, value)
        row.region = spec.region
        row.account_id = spec.account_id
        row.updated_at = now
    return outcome


def remove(app: App, name: str) -> None:
    """Delete a profile; its leases stay in the ledger (audit), their cached secrets go."""
    with app.transaction() as session:
        _get(session, name)
        _wipe_cached_secrets(session, name)
        session.execute(delete(Profile).where(Profile.name == name))


def _wipe_cached_secrets(session: Session, profile: str) -> None:
    session.execute(
        update(Lease).where(Lease.profile == profile).values(secret=None, sealed_token=None, cache_key=None)
    )


LIVE_QUERY = """
SELECT p.name, p.mount, p.role, l.credential_type, l.access_key_id, l.expires_at
FROM profiles p LEFT JOIN leases l ON l.id = (
    SELECT id FROM leases WHERE profile = p.name AND state = 'active' AND secret IS NOT NULL
    AND cache_key IS NOT NULL AND expires_at > ? ORDER BY expires_at DESC LIMIT 1)
ORDER BY p.name
"""


def live_credentials(app: App) -> list[dict[str, Any]]:
    """`broker list`: every profile with its cached credential (or None): type, key id, expiry."""
    now = int(time.time())
    with app.sqlite() as conn:
        rows = conn.execute(LIVE_QUERY, (now,)).fetchall()
    names = ("profile", "mount", "role", "credential_type", "access_key_id", "expires_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


def clear_cached(app: App, name: str | None) -> int:
    """Drop the cached secrets of profile `name` (every cached secret when None) without revoking:
    the leases stay in the ledger, active until they expire; the next request issues anew."""
    condition = [Lease.state == "active", Lease.secret.is_not(None)]
    with app.transaction() as session:
        if name is not None:
            _get(session, name)
            condition.append(Lease.profile == name)
        result = session.execute(update(Lease).where(*condition).values(secret=None, cache_key=None))
        return int(getattr(result, "rowcount", 0) or 0)


def list_all(app: App) -> list[ProfileSpec]:
    with app.transaction(read_only=True) as session:
        return [_spec(row) for row in session.scalars(select(Profile).order_by(Profile.name))]
