"""Alembic environment for the local ledger.

Run in process by broker/db.py (connection passed in `config.attributes["connection"]`, no logging
setup), or by a developer with `alembic -x db=PATH upgrade head` from a checkout.
"""

from alembic import context

from broker import db
from broker.models import Base

path = context.get_x_argument(as_dictionary=True).get("db")
db.run_migration_env(
    context, Base.metadata, path if not path or "://" in path else f"sqlite:///{path}", render_as_batch=True
)
