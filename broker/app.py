"""What a command works with: the ledger, Vault, the fleet ledger and the encryption key, each
opened on first use so that `--help`, `profile list` and a cache hit never build what they do not
need, and each closed once, by `close()`, when the command ends."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from broker import crypto, db, settings
from broker.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from broker.fleet.ledger import FleetLedger
    from broker.vault import Vault


class App:
    def __init__(self, db_option: str | None = None, ledger_url: str | None = None):
        self.env = settings.load()
        self.db_path = settings.db_path(db_option, self.env)
        self.ledger_url = ledger_url or self.env.ledger_url or None

    @cached_property
    def engine(self) -> Engine:
        return db.open_engine(self.db_path)

    @cached_property
    def vault(self) -> Vault:
        from broker.vault import Vault, VaultSettings

        return Vault(VaultSettings.from_env(self.env))

    @cached_property
    def fleet(self) -> FleetLedger:
        """The fleet ledger named by --ledger-url / BROKER_LEDGER_URL (a UsageError without one)."""
        from broker.fleet.ledger import FleetLedger

        if not self.ledger_url:
            raise UsageError("no fleet ledger configured: give --ledger-url URL or set BROKER_LEDGER_URL")
        try:
            import psycopg  # noqa: F401 - the optional driver, checked here so its absence is one clear line
        except ImportError:
            raise UsageError(
                "a fleet ledger URL is set but its PostgreSQL driver (psycopg 3) is not installed: "
                "install the fleet extra, pip install 'vault-lease-broker[fleet]'"
            ) from None
        return FleetLedger(self.ledger_url, self.env)

    def close(self) -> None:
        """Dispose of what was opened (connection pools); safe to call more than once."""
        for name in ("fleet", "engine"):
            opened = self.__dict__.pop(name, None)
            if opened is not None:
                opened.dispose()

    def key(self, create: bool = True) -> bytes | None:
        try:
            return crypto.load_key(self.env, create=create)
        except crypto.KeyUnusable as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"cannot use the key file {crypto.key_file(self.env)}: {exc.strerror}") from None

    def transaction(self, *, read_only: bool = False) -> contextlib.AbstractContextManager[Session]:
        return db.transaction(self.engine, self.db_path, read_only=read_only)

    @contextlib.contextmanager
    def sqlite(self) -> Iterator[sqlite3.Connection]:
        """The pool's plain sqlite3 connection (autocommit), for the cache queries in cache.py."""
        with db.translated(self.db_path), self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            yield driver
