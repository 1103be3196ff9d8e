"""The fleet ledger's tables, in PostgreSQL (the local ledger's are in models.py).

One row per lease of every host: what `broker leases --fleet` lists and `broker revoke --fleet`
marks. Never a secret key or session token. The schema changes only through an Alembic migration
in migrations/fleet/versions plus broker.fleet.ledger.SCHEMA_HEAD; tests/test_fleet_ledger.py proves
these models and the migrations agree.

Who may do what is enforced by PostgreSQL itself (grants, row-level security and a trigger made by
the migration): a host's login role writes and reads only the rows it pushed (`db_user`); a
responder reads every row and may change only the revocation columns; a revoked row stays revoked.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import CheckConstraint, DateTime, Index, MetaData, String, Table, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from broker.models import NAMING

# The table Alembic keeps the shared schema's revision in (not `alembic_version`, so the fleet
# tables may live in a database that other Alembic projects use too).
VERSION_TABLE = "broker_fleet_version"

# Group roles the migration grants to; the README shows how a DBA creates them.
HOST_ROLE = "broker_host"
RESPONDER_ROLE = "broker_responder"

TIMESTAMP = DateTime(timezone=True)


class FleetBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class FleetLease(FleetBase):
    """One lease some host was issued, as that host last pushed it, plus any fleet revocation."""

    __tablename__ = "fleet_leases"

    lease_id: Mapped[str] = mapped_column(Text, primary_key=True)  # "" when Vault issued no lease
    access_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    vault_addr: Mapped[str] = mapped_column(Text)  # the host's Vault address: for audit only
    namespace: Mapped[str] = mapped_column(Text, server_default="")
    mount: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(64))
    credential_type: Mapped[str] = mapped_column(String(32))
    role_session_name: Mapped[str | None] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(TIMESTAMP)
    expires_at: Mapped[datetime] = mapped_column(TIMESTAMP)
    state: Mapped[str] = mapped_column(String(16), server_default="active")
    revoked_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    revoked_by: Mapped[str | None] = mapped_column(Text)
    revoke_error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    os_user: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str | None] = mapped_column(Text)
    entity_id: Mapped[str | None] = mapped_column(Text)
    token_accessor: Mapped[str | None] = mapped_column(Text)
    token_policies: Mapped[str | None] = mapped_column(Text)
    account_id: Mapped[str | None] = mapped_column(String(12))
    principal_arn: Mapped[str | None] = mapped_column(Text)
    end_reason: Mapped[str | None] = mapped_column(Text)
    # The PostgreSQL role that pushed the row; row-level security keys a host's rights on it.
    db_user: Mapped[str] = mapped_column(Text, server_default=text("CURRENT_USER"))
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=text("now()"))
    # The row's public fields as JSON text, rewritten by a trigger on every write (the state as
    # stored: a listing derives "expired"), so a listing of 100,000 rows encodes nothing.
    listing_json: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("state IN ('active', 'revoked')", name="state"),
        Index("ix_fleet_leases_role_mount", "role", "mount"),
        Index("ix_fleet_leases_host", "host"),
        Index("ix_fleet_leases_os_user", "os_user"),
        Index("ix_fleet_leases_issued_at_lease_id", "issued_at", "lease_id"),  # newest first
        Index("ix_fleet_leases_access_key_id", "access_key_id"),
        Index("ix_fleet_leases_role_session_name", "role_session_name"),
        Index("ix_fleet_leases_entity_id", "entity_id"),
        Index("ix_fleet_leases_role_issued_at", "role", "issued_at"),
    )


class FleetHostLogin(FleetBase):
    """A host name a host login may push rows for (the owner keeps this; row-level security on
    fleet_leases checks each new row's `host` against it)."""

    __tablename__ = "fleet_host_logins"

    db_user: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text, primary_key=True)


# The Core table (declarative types `__table__` as a FromClause).
FLEET_LEASES = cast(Table, FleetLease.__table__)
