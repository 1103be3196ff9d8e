"""fleet ledger: a host login may push rows only for the host names its owner allowed it

Revision ID: f003
Revises: f002
Create Date: 2026-12-02 01:45:00

Row-level security checked only `db_user`: a host login chose `host` itself and could speak for
any host (and plant rows for invented ones). Now the database owner keeps `fleet_host_logins`, one
row per (login, host name) it may push, and the hosts' policy checks every new row against it.
Hosts read only their own entries; responders read all; only the owner writes. After upgrading,
the owner adds every host login's names (see the README), e.g.
    INSERT INTO fleet_host_logins (db_user, host) VALUES ('host_web1', 'web1.example.com');
Existing rows are kept as they are.
"""

from alembic import op

revision = "f003"
down_revision = "f002"
branch_labels = None
depends_on = None

HOST_ROLE = "broker_host"
RESPONDER_ROLE = "broker_responder"

HOST_ALLOWED = (
    "db_user = current_user AND EXISTS (SELECT 1 FROM fleet_host_logins allowed "
    "WHERE allowed.db_user = current_user AND allowed.host = fleet_leases.host)"
)


def upgrade() -> None:
    op.execute("""
        CREATE TABLE fleet_host_logins (
            db_user text NOT NULL,
            host text NOT NULL,
            CONSTRAINT pk_fleet_host_logins PRIMARY KEY (db_user, host)
        )
    """)
    op.execute("ALTER TABLE fleet_host_logins ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY host_own_names ON fleet_host_logins FOR SELECT TO {HOST_ROLE} USING (db_user = current_user)"
    )
    op.execute(f"CREATE POLICY responder_read ON fleet_host_logins FOR SELECT TO {RESPONDER_ROLE} USING (true)")
    op.execute(f"GRANT SELECT ON fleet_host_logins TO {HOST_ROLE}, {RESPONDER_ROLE}")
    op.execute("DROP POLICY host_own_rows ON fleet_leases")
    op.execute(
        f"CREATE POLICY host_own_rows ON fleet_leases FOR ALL TO {HOST_ROLE} "
        f"USING (db_user = current_user) WITH CHECK ({HOST_ALLOWED})"
    )


def downgrade() -> None:
    op.execute("DROP POLICY host_own_rows ON fleet_leases")
    op.execute(
        f"CREATE POLICY host_own_rows ON fleet_leases FOR ALL TO {HOST_ROLE} "
        "USING (db_user = current_user) WITH CHECK (db_user = current_user)"
    )
    op.execute("DROP TABLE fleet_host_logins")
