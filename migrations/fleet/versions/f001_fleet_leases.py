"""fleet ledger: shared lease rows, their access rules and sticky revocations

Revision ID: f001
Revises:
Create Date: 2026-11-26 20:00:00

Run as the database's owner (no superuser, no extension). The group roles broker_host and
broker_responder must exist first (a DBA creates them; see the README), because the grants and
row-level security policies below name them.
"""

import sqlalchemy as sa
from alembic import op

revision = "f001"
down_revision = None
branch_labels = None
depends_on = None

HOST_ROLE = "broker_host"
RESPONDER_ROLE = "broker_responder"
VERSION_TABLE = "broker_fleet_version"

# The public fields of a listing, in output order, and the column each is read from.
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
]
TIMES = ("issued_at", "expires_at", "revoked_at")


def _listing_json_sql() -> str:
    """NEW's public fields as the text json.dumps gives ({"k": v, ...}); times ISO-8601 UTC whatever
    the session's DateStyle; the state as stored (a listing derives "expired" when it reads)."""
    parts = []
    for i, (key, column) in enumerate(LISTED):
        if column in TIMES:
            value = f"to_json(to_char(NEW.{column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))"
        else:
            value = f"to_json(NEW.{column})"
        prefix = ("{" if i == 0 else ", ") + f'"{key}": '
        parts.append(f"'{prefix}' || COALESCE({value}::text, 'null')")
    return " || ".join(parts) + " || '}'"


def upgrade() -> None:
    bind = op.get_bind()
    missing = [
        role
        for role in (HOST_ROLE, RESPONDER_ROLE)
        if bind.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is None
    ]
    if missing:
        raise RuntimeError(
            f"missing PostgreSQL role(s) {', '.join(missing)}: create them first "
            f"(CREATE ROLE {HOST_ROLE} NOLOGIN; CREATE ROLE {RESPONDER_ROLE} NOLOGIN;)"
        )

    ts = sa.DateTime(timezone=True)
    op.create_table(
        "fleet_leases",
        sa.Column("lease_id", sa.Text(), nullable=False),
        sa.Column("access_key_id", sa.String(length=128), nullable=False),
        sa.Column("vault_addr", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), server_default="", nullable=False),
        sa.Column("mount", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("credential_type", sa.String(length=32), nullable=False),
        sa.Column("role_session_name", sa.String(length=64), nullable=True),
        sa.Column("issued_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("state", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.Column("revoke_error", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("os_user", sa.Text(), nullable=False),
        sa.Column("db_user", sa.Text(), server_default=sa.text("CURRENT_USER"), nullable=False),
        sa.Column("updated_at", ts, server_default=sa.text("now()"), nullable=False),
        sa.Column("listing_json", sa.Text(), nullable=True),
        sa.CheckConstraint("state IN ('active', 'revoked')", name=op.f("ck_fleet_leases_state")),
        sa.PrimaryKeyConstraint("lease_id", "access_key_id", name=op.f("pk_fleet_leases")),
    )
    op.create_index("ix_fleet_leases_role_mount", "fleet_leases", ["role", "mount"], unique=False)
    op.create_index("ix_fleet_leases_host", "fleet_leases", ["host"], unique=False)
    op.create_index("ix_fleet_leases_os_user", "fleet_leases", ["os_user"], unique=False)
    op.create_index("ix_fleet_leases_issued_at_lease_id", "fleet_leases", ["issued_at", "lease_id"], unique=False)

    # One function before every write: a revoked row stays revoked, whoever updates it later (a
    # host pushing an older local state, a renewal racing a fleet revoke), enforced here rather than
    # trusted to every client; and `listing_json` is rewritten, so that `leases --fleet --format
    # json` reads each row's JSON text instead of encoding 100,000 rows per call.
    op.execute(f"""
        CREATE FUNCTION fleet_leases_before_write() RETURNS trigger
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
            NEW.listing_json := {_listing_json_sql()};
            RETURN NEW;
        END
        $$
    """)
    op.execute(
        "CREATE TRIGGER before_write BEFORE INSERT OR UPDATE ON fleet_leases "
        "FOR EACH ROW EXECUTE FUNCTION fleet_leases_before_write()"
    )

    # Hosts: insert and update only the rows their own login role pushed, read those back (to
    # learn of revocations). Responders: read all rows, change only the revocation columns.
    op.execute("ALTER TABLE fleet_leases ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY host_own_rows ON fleet_leases FOR ALL TO {HOST_ROLE} "
        "USING (db_user = current_user) WITH CHECK (db_user = current_user)"
    )
    op.execute(f"CREATE POLICY responder_read ON fleet_leases FOR SELECT TO {RESPONDER_ROLE} USING (true)")
    op.execute(
        f"CREATE POLICY responder_mark ON fleet_leases FOR UPDATE TO {RESPONDER_ROLE} USING (true) WITH CHECK (true)"
    )
    op.execute(f"GRANT SELECT, INSERT ON fleet_leases TO {HOST_ROLE}")
    op.execute(f"GRANT UPDATE (expires_at, state, revoked_at, revoked_by, updated_at) ON fleet_leases TO {HOST_ROLE}")
    op.execute(f"GRANT SELECT ON fleet_leases TO {RESPONDER_ROLE}")
    op.execute(
        f"GRANT UPDATE (state, revoked_at, revoked_by, revoke_error, updated_at) ON fleet_leases TO {RESPONDER_ROLE}"
    )
    op.execute(f"GRANT SELECT ON {VERSION_TABLE} TO {HOST_ROLE}, {RESPONDER_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON {VERSION_TABLE} FROM {HOST_ROLE}, {RESPONDER_ROLE}")
    op.drop_table("fleet_leases")
    op.execute("DROP FUNCTION fleet_leases_before_write()")
