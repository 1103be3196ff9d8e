"""Alembic environment for the fleet ledger (PostgreSQL), apart from the local ledger's.

Run in process by broker/fleet/ledger.py (`broker ledger init`: connection passed in
`config.attributes["connection"]`, no logging setup), or by a developer from a checkout with
`alembic -c alembic.ini -x fleet=1 -x url=postgresql+psycopg://... upgrade head` after pointing
script_location at migrations/fleet.
"""

from alembic import context

from broker import db
from broker.fleet.models import VERSION_TABLE, FleetBase

url = context.get_x_argument(as_dictionary=True).get("url")
db.run_migration_env(context, FleetBase.metadata, url, version_table=VERSION_TABLE)
