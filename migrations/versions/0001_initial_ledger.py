"""initial ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-26 19:03:52.594767
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "intents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("vault_addr", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("mount", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.String(length=8), nullable=False),
        sa.Column("role_session_name", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intents")),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lease_id", sa.Text(), nullable=False),
        sa.Column("cache_key", sa.Text(), nullable=True),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("vault_addr", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("mount", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.String(length=8), nullable=False),
        sa.Column("credential_type", sa.String(length=32), nullable=False),
        sa.Column("access_key_id", sa.String(length=128), nullable=False),
        sa.Column("role_session_name", sa.String(length=64), nullable=True),
        sa.Column("role_arn", sa.Text(), nullable=True),
        sa.Column("renewable", sa.Boolean(), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("renewed_at", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.Column("revoke_error", sa.Text(), nullable=True),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("os_user", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index("ix_leases_cache_key_expires_at", ["cache_key", "expires_at"], unique=False)
        batch_op.create_index("ix_leases_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_leases_lease_id", ["lease_id"], unique=False)
        batch_op.create_index("ix_leases_mount_role", ["mount", "role"], unique=False)
        batch_op.create_index("ix_leases_profile", ["profile"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("lease_row", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lease_row", name=op.f("pk_outbox")),
    )
    op.create_table(
        "profiles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("mount", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=True),
        sa.Column("ttl", sa.Integer(), nullable=True),
        sa.Column("role_arn", sa.Text(), nullable=True),
        sa.Column("role_session_name", sa.String(length=64), nullable=True),
        sa.Column("credential_type", sa.String(length=32), nullable=True),
        sa.Column("region", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_profiles")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("profiles")
    op.drop_table("outbox")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_index("ix_leases_profile")
        batch_op.drop_index("ix_leases_mount_role")
        batch_op.drop_index("ix_leases_lease_id")
        batch_op.drop_index("ix_leases_expires_at")
        batch_op.drop_index("ix_leases_cache_key_expires_at")

    op.drop_table("leases")
    op.drop_table("intents")
