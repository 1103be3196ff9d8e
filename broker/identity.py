"""Who asked for a lease: the Vault identity of the issuing token (auth/token/lookup-self), and the
AWS account and principal of what Vault handed out.

A token is looked up at most once while its answer holds: the answer is kept in `token_identities`
under sha256(vault_addr + "\\n" + token), never the token itself, and refreshed once the token's own
TTL has passed. A token that may not look itself up (403) is remembered as such for an hour, so it
costs one Vault call an hour, and issuance records what it knows. Vault's answer is untrusted:
every field is checked before it is stored.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.errors import BrokerError, VaultDenied, VaultError
from broker.models import TokenIdentity

if TYPE_CHECKING:
    from broker.app import App

log = logging.getLogger(__name__)

DENIED_SECONDS = 3600  # how long a 403 on lookup-self is remembered
AGENT_SECONDS = 300  # no token of our own (a Vault Agent's auto-auth): its token may change
MAX_POLICIES = 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+=")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Identity:
    display_name: str | None = None
    entity_id: str | None = None
    accessor: str | None = None
    policies: str | None = None  # sorted policy names, comma-joined


def token_hash(vault_addr: str, token: str) -> str:
    return hashlib.sha256(f"{vault_addr}\n{token}".encode()).hexdigest()


def _text(value: object, allowed: frozenset[str], limit: int) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit and set(value) <= allowed:
        return value
    return None


def _display_name(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable() and value.strip() == value:
        return value
    return None


def _policies(value: object) -> str | None:
    if not isinstance(value, list | tuple):
        return None
    names = sorted({p for p in value if _text(p, _NAME_CHARS, 128) and "," not in p})
    return ",".join(names[:MAX_POLICIES]) or None


def parse_lookup(data: Mapping[str, Any]) -> Identity:
    """The identity fields of a lookup-self `data` block, each validated (bad ones become None)."""
    return Identity(
        display_name=_display_name(data.get("display_name")),
        entity_id=_text(data.get("entity_id"), _ID_CHARS, 128),
        accessor=_text(data.get("accessor"), _ID_CHARS, 128),
        policies=_policies(data.get("policies")),
    )


def token_identity(app: App) -> Identity:
    """The identity of the token this command issues with: from the cache, else one lookup-self.
    Never raises: an unknown identity is recorded as unknown."""
    vault = app.vault
    key = token_hash(vault.addr, vault.settings.token or "")
    now = int(time.time())
    try:
        with app.transaction(read_only=True) as session:
            row = session.get(TokenIdentity, key)
            if row is not None and (row.expires_at is None or row.expires_at > now):
                return Identity(row.display_name, row.entity_id, row.accessor, row.policies)
    except BrokerError as exc:
        log.info("could not read the token identity cache: %s", exc)
    try:
        data = vault.lookup_self()
    except VaultDenied:
        log.info("the Vault token may not look itself up; leases record no Vault identity")
        _remember(app, key, Identity(), now, now + DENIED_SECONDS)
        return Identity()
    except VaultError as exc:
        log.info("could not look up the Vault token (%s); this lease records no Vault identity", exc)
        return Identity()
    identity = parse_lookup(data if isinstance(data, Mapping) else {})
    ttl = data.get("ttl") if isinstance(data, Mapping) else None
    expires_at = now + ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else None
    if not vault.settings.token:
        expires_at = min(expires_at or now + AGENT_SECONDS, now + AGENT_SECONDS)
    _remember(app, key, identity, now, expires_at)
    return identity


def _remember(app: App, key: str, identity: Identity, now: int, expires_at: int | None) -> None:
    try:
        with app.transaction() as session:
            session.merge(
                TokenIdentity(
                    token_hash=key,
                    vault_addr=app.vault.addr,
                    accessor=identity.accessor,
                    display_name=identity.display_name,
                    entity_id=identity.entity_id,
                    policies=identity.policies,
                    looked_up_at=now,
                    expires_at=expires_at,
                )
            )
    except BrokerError as exc:
        log.info("could not cache the token identity: %s", exc)
