"""Key management for secrets at rest: status and rotation (re-encrypting every cached secret)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from broker import crypto
from broker.errors import UsageError
from broker.models import Lease

if TYPE_CHECKING:
    from broker.app import App


@dataclass(frozen=True)
class KeyStatus:
    source: str
    location: str | None
    exists: bool
    sealed_secrets: int


def status(app: App) -> KeyStatus:
    kind, where = crypto.key_source(app.env)
    key = app.key(create=False)
    with app.transaction(read_only=True) as session:
        count = session.scalar(select(func.count()).select_from(Lease).where(Lease.secret.is_not(None)))
    return KeyStatus(source=kind, location=where, exists=key is not None, sealed_secrets=count or 0)


@dataclass(frozen=True)
class Rotation:
    reencrypted: int
    discarded: int


def rotate(app: App) -> Rotation:
    """Seal every cached secret under a new key, then store the key, in one write transaction:
    a crash at any point leaves secrets that open with the stored key, or none (re-issued)."""
    if crypto.key_source(app.env)[0] == "BROKER_KEY":
        raise UsageError("the key comes from BROKER_KEY; set a new value there instead (cached secrets are discarded)")
    old = app.key(create=True)
    assert old is not None  # create=True always yields a key; tells mypy
    new_text = crypto.new_key_text()
    new = crypto._decode(new_text, "the new key")
    reencrypted = discarded = 0
    with app.transaction() as session:
        rows = session.execute(
            select(
                Lease.id,
                Lease.lease_id,
                Lease.cache_key,
                Lease.access_key_id,
                Lease.expires_at,
                Lease.secret,
                Lease.sealed_token,
            ).where(Lease.secret.is_not(None))
        )
        for row_id, lease_id, cache_key, access_key_id, expires_at, blob, token_blob in rows.all():
            opened = crypto.open_credential(old, lease_id, cache_key, access_key_id, expires_at, blob, token_blob)
            if opened is None:
                session.execute(
                    update(Lease).where(Lease.id == row_id).values(secret=None, sealed_token=None, cache_key=None)
                )
                discarded += 1
                continue
            secret, sealed_token = crypto.seal_credential(new, lease_id, cache_key, access_key_id, expires_at, *opened)
            session.execute(update(Lease).where(Lease.id == row_id).values(secret=secret, sealed_token=sealed_token))
            reencrypted += 1
        crypto.store_key(app.env, new_text)
    return Rotation(reencrypted=reencrypted, discarded=discarded)
