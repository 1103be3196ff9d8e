"""Alembic environment for the local ledger.

Run in process by broker/db.py (connection passed in `config.attributes["connection"]`, no logging
setup), or by a developer with `alembic -x db=PATH upgrade head` from a checkout.
"""

from alembic import context
from sqlalchemy import create_engine

from broker.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    if config.config_file_name:
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    db = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option("sqlalchemy.url")
    url = db if db and "://" in db else f"sqlite:///{db}"
    with create_engine(url).connect() as conn:
        run(conn)
        conn.commit()
