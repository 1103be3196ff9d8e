"""Cross-process locks on files next to the database (fcntl.flock).

The kernel drops a flock when its holder dies, so a lock file left by a killed process never
blocks the next one. Standard library only.
"""

import contextlib
import fcntl
import hashlib
import os
import time

from broker.errors import LockTimeout

TYPE_CHECKING = False  # typing is not imported on the cache-hit path; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Iterator

POLL_SECONDS = 0.005
ISSUANCE_WAIT_SECONDS = 60.0  # BROKER_WAIT's default: how long a caller waits for an issuance to end

# Locks this process already holds, handed from the cache-hit path to the full CLI (see
# fastpath.serve): taking them again through a new descriptor would wait on ourselves.
_adopted: dict[str, int] = {}


def lock_path(db_path: str, name: str) -> str:
    """A lock file for `name` (any string) in `<db dir>/locks/`."""
    directory = os.path.join(os.path.dirname(db_path), "locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return os.path.join(directory, f"{digest}.lock")


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def acquire(path: str, timeout: float, what: str = "lock") -> int:
    """Take an exclusive lock on `path`, waiting at most `timeout` seconds; returns its descriptor
    (close it to release)."""
    fd = _open(path)
    deadline = time.monotonic() + timeout
    delay = POLL_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(
                    f"timed out after {timeout:g}s waiting for the {what} held by another broker process"
                ) from None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)


def adopt(path: str, fd: int) -> None:
    """Record that this process holds the lock on `path` through `fd`; `hold` will use it."""
    _adopted[path] = fd


@contextlib.contextmanager
def hold(path: str, timeout: float, what: str = "lock") -> "Iterator[int]":
    """Hold an exclusive lock on `path`, waiting at most `timeout` seconds for it."""
    fd = _adopted.pop(path, None)
    if fd is None:
        fd = acquire(path, timeout, what)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_hold(path: str) -> "Iterator[bool]":
    """Yield True while holding the lock, or False at once when another process holds it."""
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)
