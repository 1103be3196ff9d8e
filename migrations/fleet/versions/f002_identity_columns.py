"""fleet ledger: who asked, which account, why a lease ended, who pushed; indexes for responders

Revision ID: f002
Revises: f001
Create Date: 2026-12-02 01:10:00

- the Vault identity, account and principal ARN columns the local ledger gained in 0002, and
  end_reason (reconcile);
- indexes a responder's questions need at a million rows: by access key id, by session name, by
  Vault entity, and a role's leases by issue time;
- listing_json carries the new fields and db_user (the login that pushed the row: a host login
  chooses every other field itself), and every existing row's JSON is rewritten.
"""

import sqlalchemy as sa
from alembic import op

revision = "f002"
down_revision = "f001"
branch_labels = None
depends_on = None

HOST_ROLE = "broker_host"
RESPONDER_ROLE = "broker_responder"

NEW_COLUMNS = [
    ("display_name", sa.Text()),
    ("entity_id", sa.Text()),
    ("token_accessor", sa.Text()),
    ("token_policies", sa.Text()),
    ("account_id", sa.String(length=12)),
    ("principal_arn", sa.Text()),
    ("end_reason", sa.Text()),
]

# The public fields of a listing, in output order, and the column each is read from (f001's, then
# the new ones).
LISTED = [
    ("lease_id", "lease_id"),
    ("host", "host"),
    ("user", "os_user"),
    ("profile", "profile"),
    ("mount", "mount"),
    ("role", "role"),
    ("namespace", "namespace"),
    ("credential_type", "credential_type"),
    ("access_key_id", "access_key_id"),
    ("role_session_name", "role_session_name"),
    ("vault_addr", "vault_addr"),
    ("issued_at", "issued_at"),
    ("expires_at", "expires_at"),
    ("state", "state"),
    ("revoked_at", "revoked_at"),
    ("revoked_by", "revoked_by"),
    ("revoke_error", "revoke_error"),
    ("end_reason", "end_reason"),
    ("display_name", "display_name"),
    ("entity_id", "entity_id"),
    ("token_accessor", "token_accessor"),
    ("token_policies", "token_policies"),
    ("account_id", "account_id"),
    ("principal_arn", "principal_arn"),
    ("db_user", "db_user"),
]
TIMES = ("issued_at", "expires_at", "revoked_at")


def _listing_json_sql(listed: list[tuple[str, str]]) -> str:
    """NEW's public fields as the text json.dumps gives ({"k": v, ...}); times ISO-8601 UTC whatever
    the session's DateStyle; the state as stored (a listing derives "expired" when it reads)."""
    parts = []
    for i, (key, column) in enumerate(listed):
        if column in TIMES:
            value = f"to_json(to_char(NEW.{column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))"
        else:
            value = f"to_json(NEW.{column})"
        prefix = ("{" if i == 0 else ", ") + f'"{key}": '
        parts.append(f"'{prefix}' || COALESCE({value}::text, 'null')")
    return " || ".join(parts) + " || '}'"


def _before_write(listed: list[tuple[str, str]]) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION fleet_leases_before_write() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                IF OLD.state = 'revoked' THEN
                    NEW.state := 'revoked';
                    NEW.revoked_at := OLD.revoked_at;
                    NEW.revoked_by := OLD.revoked_by;
                END IF;
                NEW.updated_at := now();
            END IF;
            NEW.listing_json := {_listing_json_sql(listed)};
            RETURN NEW;
        END
        $$
    """


def upgrade() -> None:
    for name, kind in NEW_COLUMNS:
        op.add_column("fleet_leases", sa.Column(name, kind, nullable=True))
    op.create_index("ix_fleet_leases_access_key_id", "fleet_leases", ["access_key_id"], unique=False)
    op.create_index("ix_fleet_leases_role_session_name", "fleet_leases", ["role_session_name"], unique=False)
    op.create_index("ix_fleet_leases_entity_id", "fleet_leases", ["entity_id"], unique=False)
    op.create_index("ix_fleet_leases_role_issued_at", "fleet_leases", ["role", "issued_at"], unique=False)
    op.execute(_before_write(LISTED))
    op.execute("UPDATE fleet_leases SET listing_json = NULL")  # the trigger writes each row's new JSON
    # Reconciliation marks why a row ended, locally (pushed by the host) or fleet-wide (a responder).
    op.execute(f"GRANT UPDATE (end_reason) ON fleet_leases TO {HOST_ROLE}, {RESPONDER_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE UPDATE (end_reason) ON fleet_leases FROM {HOST_ROLE}, {RESPONDER_ROLE}")
    op.execute(_before_write(LISTED[:16]))
    for name in ("role_issued_at", "entity_id", "role_session_name", "access_key_id"):
        op.drop_index(f"ix_fleet_leases_{name}", table_name="fleet_leases")
    for name, _kind in reversed(NEW_COLUMNS):
        op.drop_column("fleet_leases", name)
    op.execute("UPDATE fleet_leases SET listing_json = NULL")
