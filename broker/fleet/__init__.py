"""The fleet ledger: every host's leases in one PostgreSQL database, beside the local SQLite one.

- `ledger`: the connection (`FleetLedger`, one per command as `App.fleet`), the shared schema,
  push and pull of lease rows, sync;
- `listing`: `broker leases --fleet`;
- `revoke`: `broker revoke --fleet` (row claims around broker.bulk's engine);
- `models`: the tables, mirrored by the Alembic environment in migrations/fleet/.

Nothing here is imported on the cache-hit path.
"""
