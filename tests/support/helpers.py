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
