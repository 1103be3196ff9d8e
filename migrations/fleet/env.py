"""Alembic environment for the fleet ledger (PostgreSQL), apart from the local ledger's.

Run in process by broker/fleet.py (`broker ledger init`: connection passed in
`config.attributes["connection"]`, no logging setup), or by a developer from a checkout with
`alembic -c alembic.ini -x fleet=1 -x url=postgresql+psycopg://... upgrade head` after pointing
script_location at migrations/fleet.
"""

from alembic import context
from sqlalchemy import create_engine

from broker.fleet_models import VERSION_TABLE, FleetBase

config = context.config
target_metadata = FleetBase.metadata


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    if config.config_file_name:
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as conn:
        run(conn)
        conn.commit()
