"""What a command works with: the ledger, Vault and the encryption key, each opened on first use
so that `--help`, `profile list` and a cache hit never build what they do not need."""

from __future__ import annotations

import contextlib
import os
from functools import cached_property

from broker import crypto, db, settings
from broker.errors import UsageError


class App:
    def __init__(self, db_option: str | None = None, ledger_url: str | None = None):
        self.db_path = settings.db_path(db_option)
        self.ledger_url = ledger_url or os.environ.get("BROKER_LEDGER_URL") or None

    @cached_property
    def engine(self):
        return db.open_engine(self.db_path)

    @cached_property
    def vault(self):
        from broker.vault import Vault

        return Vault()

    def key(self, create: bool = True) -> bytes | None:
        try:
            return crypto.load_key(create=create)
        except crypto.KeyUnusable as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"cannot use the key file {crypto.key_file()}: {exc.strerror}") from None

    def transaction(self, *, read_only: bool = False):
        return db.transaction(self.engine, self.db_path, read_only=read_only)

    @contextlib.contextmanager
    def sqlite(self):
        """The pool's plain sqlite3 connection (autocommit), for the cache queries in cache.py."""
        with db.translated(self.db_path), self.engine.connect() as conn:
            yield conn.connection.driver_connection
