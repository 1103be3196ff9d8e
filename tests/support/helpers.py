"""Small bounded helpers shared by the tests."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Call `predicate` until it returns something truthy; return that value.

    Bounded in time (`timeout`) and in count (timeout / interval + 1 calls).
    Raises TimeoutError with the last falsy value otherwise.
    """
    if timeout < 0 or interval <= 0:
        raise ValueError("timeout must be >= 0 and interval > 0")
    deadline = time.monotonic() + timeout
    last: T | None = None
    for _ in range(math.ceil(timeout / interval) + 1):
        last = predicate()
        if last:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    raise TimeoutError(f"condition not met within {timeout}s (last value: {last!r})")


def update_lease_times(
    db_path: str,
    assignments: str,
    where: str = "1",
    params: tuple[object, ...] = (),
    values: tuple[object, ...] = (),
) -> None:
    """`UPDATE leases SET <assignments> WHERE <where>` (`values` bind the first, `params` the
    second) as the broker itself changes a row's expiry: each cached secret is opened for the old
    expires_at and resealed for the new one (the associated data binds a blob to its row's expiry,
    so a bare UPDATE would leave it unopenable)."""
    import sqlite3

    from broker import crypto, settings

    key = crypto.load_key(settings.load())
    assert key is not None, "no broker key yet: issue a credential first"
    columns = "id, lease_id, cache_key, access_key_id, expires_at, secret, sealed_token"
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            rows = conn.execute(f"SELECT {columns} FROM leases WHERE ({where}) AND secret IS NOT NULL", params)
            opened = {r[0]: (r[1:4], crypto.open_credential(key, *r[1:])) for r in rows.fetchall()}
            conn.execute(f"UPDATE leases SET {assignments} WHERE {where}", (*values, *params))
            for row_id, (identity, credential) in opened.items():
                if credential is None:
                    continue
                (expires_at,) = conn.execute("SELECT expires_at FROM leases WHERE id = ?", (row_id,)).fetchone()
                secret, token = crypto.seal_credential(key, *identity, expires_at, *credential)
                conn.execute("UPDATE leases SET secret = ?, sealed_token = ? WHERE id = ?", (secret, token, row_id))
    finally:
        conn.close()


class ServerProcess:
    """The life cycle two test servers share (bao proxy, PgBouncer): `start()` and `_terminate()`
    are theirs; stopping removes their private directory `dir`, and `log_path` is their log."""

    dir: str
    log_path: str
    LOG_TAIL_CHARS = 2000

    def start(self) -> ServerProcess:
        raise NotImplementedError

    def _terminate(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        import shutil

        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int | None = None) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-(chars or self.LOG_TAIL_CHARS) :]
        except OSError:
            return "(no log)"
