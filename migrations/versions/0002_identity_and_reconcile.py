"""who asked, which account, why a lease ended; the session token sealed on its own

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 01:10:00

Columns only (nullable) and two indexes: an upgrade of a populated ledger rewrites no row.
- leases: the Vault identity of the token that issued each lease (auth/token/lookup-self:
  display_name, entity_id, accessor, policies), the AWS account and principal ARN, why a row ended
  outside broker (reconcile), and the session token sealed apart from the secret key;
- profiles: the AWS account id a profile's credentials belong to, when the user says;
- token_identities: lookup-self answers by a hash of the token (never the token), so a token is
  looked up once, not once per issuance.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LEASE_COLUMNS = [
    sa.Column("sealed_token", sa.LargeBinary(), nullable=True),
    sa.Column("display_name", sa.Text(), nullable=True),
    sa.Column("entity_id", sa.Text(), nullable=True),
    sa.Column("token_accessor", sa.Text(), nullable=True),
    sa.Column("token_policies", sa.Text(), nullable=True),
    sa.Column("account_id", sa.String(length=12), nullable=True),
    sa.Column("principal_arn", sa.Text(), nullable=True),
    sa.Column("end_reason", sa.Text(), nullable=True),
]


def upgrade() -> None:
    for column in LEASE_COLUMNS:
        op.add_column("leases", column)
    op.create_index("ix_leases_access_key_id", "leases", ["access_key_id"], unique=False)
    op.create_index("ix_leases_issued_at", "leases", ["issued_at"], unique=False)
    op.add_column("profiles", sa.Column("account_id", sa.String(length=12), nullable=True))
    op.create_table(
        "token_identities",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("vault_addr", sa.Text(), nullable=False),
        sa.Column("accessor", sa.Text(), nullable=True),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("entity_id", sa.Text(), nullable=True),
        sa.Column("policies", sa.Text(), nullable=True),
        sa.Column("looked_up_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_token_identities")),
    )


def downgrade() -> None:
    op.drop_table("token_identities")
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.drop_column("account_id")
    with op.batch_alter_table("leases") as batch_op:
        batch_op.drop_index("ix_leases_issued_at")
        batch_op.drop_index("ix_leases_access_key_id")
        for column in reversed(LEASE_COLUMNS):
            batch_op.drop_column(column.name)
