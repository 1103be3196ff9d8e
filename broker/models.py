"""The local ledger's tables. The schema is created and changed only by Alembic migrations
(migrations/versions); tests/test_schema.py proves these models and the migrations agree.

Times are whole Unix seconds (UTC): cheap to compare in the cache-hit query and in prune.
"""

from typing import cast

from sqlalchemy import BigInteger, Boolean, Index, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Profile(Base):
    """A named request: which mount and role to ask, with what parameters."""

    __tablename__ = "profiles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    mount: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    namespace: Mapped[str | None] = mapped_column(Text)
    ttl: Mapped[int | None] = mapped_column(Integer)
    role_arn: Mapped[str | None] = mapped_column(Text)
    role_session_name: Mapped[str | None] = mapped_column(String(64))
    credential_type: Mapped[str | None] = mapped_column(String(32))
    region: Mapped[str | None] = mapped_column(String(32))
    account_id: Mapped[str | None] = mapped_column(String(12))  # the AWS account, when the user says
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """One credential Vault issued to this machine, and what became of it.

    `state` is 'active' or 'revoked'; "expired" is derived (active and past expires_at). `secret`
    holds the AES-GCM-sealed secret key and session token while the credential may be served, and
    is wiped on revoke and for --no-cache issuances.
    """

    __tablename__ = "leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lease_id: Mapped[str] = mapped_column(Text)  # "" when Vault issued no lease
    cache_key: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(64))
    vault_addr: Mapped[str] = mapped_column(Text)
    namespace: Mapped[str] = mapped_column(Text, default="")
    mount: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(String(8))
    credential_type: Mapped[str] = mapped_column(String(32))
    access_key_id: Mapped[str] = mapped_column(String(128))
    role_session_name: Mapped[str | None] = mapped_column(String(64))
    role_arn: Mapped[str | None] = mapped_column(Text)
    renewable: Mapped[bool] = mapped_column(Boolean, default=False)
    issued_at: Mapped[int] = mapped_column(BigInteger)
    renewed_at: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="active")
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_by: Mapped[str | None] = mapped_column(Text)
    revoke_error: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    host: Mapped[str] = mapped_column(Text)
    os_user: Mapped[str] = mapped_column(Text)
    sealed_token: Mapped[bytes | None] = mapped_column(LargeBinary)  # the session token, sealed on its own
    # The Vault identity of the token that asked (auth/token/lookup-self), and the AWS principal.
    display_name: Mapped[str | None] = mapped_column(Text)
    entity_id: Mapped[str | None] = mapped_column(Text)
    token_accessor: Mapped[str | None] = mapped_column(Text)
    token_policies: Mapped[str | None] = mapped_column(Text)  # comma-separated
    account_id: Mapped[str | None] = mapped_column(String(12))
    principal_arn: Mapped[str | None] = mapped_column(Text)
    end_reason: Mapped[str | None] = mapped_column(Text)  # why the lease ended outside broker (reconcile)

    __table_args__ = (
        Index("ix_leases_cache_key_expires_at", "cache_key", "expires_at"),
        Index("ix_leases_expires_at", "expires_at"),
        Index("ix_leases_mount_role", "mount", "role"),
        Index("ix_leases_profile", "profile"),
        Index("ix_leases_lease_id", "lease_id"),
        Index("ix_leases_access_key_id", "access_key_id"),
        Index("ix_leases_issued_at", "issued_at"),
    )


class Intent(Base):
    """Written before a Vault issuance call and deleted in the transaction that records its lease.
    A row that outlives its process marks an issuance whose outcome the ledger does not know."""

    __tablename__ = "intents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    profile: Mapped[str | None] = mapped_column(String(64))
    vault_addr: Mapped[str] = mapped_column(Text)
    namespace: Mapped[str] = mapped_column(Text, default="")
    mount: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(String(8))
    role_session_name: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[int] = mapped_column(BigInteger)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(Text)


class TokenIdentity(Base):
    """What auth/token/lookup-self said of a token, keyed by a hash of the Vault address and the
    token (never the token itself), so each token is looked up once."""

    __tablename__ = "token_identities"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    vault_addr: Mapped[str] = mapped_column(Text)
    accessor: Mapped[str | None] = mapped_column(Text)
    display_name: Mapped[str | None] = mapped_column(Text)
    entity_id: Mapped[str | None] = mapped_column(Text)
    policies: Mapped[str | None] = mapped_column(Text)
    looked_up_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)


class OutboxEntry(Base):
    """A lease row whose latest state the fleet ledger has not confirmed yet."""

    __tablename__ = "outbox"

    lease_row: Mapped[int] = mapped_column(Integer, primary_key=True)
    enqueued_at: Mapped[int] = mapped_column(BigInteger)


class Setting(Base):
    """Small facts about this database (for example the time of the last fleet push)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# The Core table of leases (declarative types `__table__` as a FromClause), for bulk UPDATEs.
LEASES = cast(Table, Lease.__table__)
