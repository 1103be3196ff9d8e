"""A loopback credential endpoint in the container-credentials format (what ECS tasks get).

An SDK pointed at it with AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN
asks again whenever its copy nears expiry (botocore: under 15 minutes left), so a child can run far
longer than one credential lives. Every answer goes through `issuance.obtain`: the same cache, the
same single flight and the same ledger as `credential-process`.

Only 127.0.0.1, a random token per server (never logged), compared in constant time; 403 for a
missing or wrong token. One selector thread reads every request head (bounded in number, size
and time, so idle or slow sockets of a neighbour without the token hold no thread and starve
nobody) and refuses the unauthorized at once; authorized requests are answered one at a time by
one worker: the App, its Vault client and the forked issuance worker are not meant to be used by
several threads at once, and the SDK asks rarely.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import queue
import secrets
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING

from broker import cache, output
from broker.errors import BrokerError, UsageError
from broker.execenv import Endpoint

if TYPE_CHECKING:
    from broker.app import App
    from broker.issuance import Credential, IssueRequest

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PATH = "/"
TOKEN_BYTES = 30  # as aws-vault's ECS server
MAX_CONNECTIONS = 64  # connections still sending their request head; a new one evicts the oldest
HEAD_SECONDS = 5.0  # from accept to the end of the request head, in total
MAX_HEAD_BYTES = 16 * 1024
MAX_QUEUED = 8  # authorized requests waiting for the worker
WRITE_SECONDS = 10.0  # for a slow reader of an answer
POLL_SECONDS = 0.2


class CredentialServer:
    """`start()` binds and serves in a thread; `stop()` shuts down and joins. A context manager."""

    def __init__(self, app: App, request: IssueRequest, *, port: int = 0) -> None:
        self.app = app
        self.request = request
        self.port = port
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.served = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.url, self.token)

    def start(self) -> CredentialServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self.port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {self.port} on {HOST} is in use; choose another --port, or leave it out for a random one"
                ) from None
            if exc.errno == errno.EACCES:
                raise UsageError(f"not allowed to listen on {HOST}:{self.port}; use a port above 1023") from None
            raise BrokerError(f"cannot listen on {HOST}:{self.port}: {exc.strerror}") from None
        self.port = listener.getsockname()[1]
        server = self._server = _Server(self, listener)
        self._threads = [
            threading.Thread(target=server.serve, name=f"broker-credserver-{self.port}", daemon=True),
            threading.Thread(target=server.worker, name=f"broker-credserver-{self.port}-worker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("credential endpoint for %s listening on %s", self.request.describe(), self.url)
        return self

    def stop(self) -> None:
        server, threads = self._server, self._threads
        self._server, self._threads = None, []
        if server is None:
            return
        server.stop()
        with contextlib.suppress(queue.Full):
            server.work.put(None, timeout=1.0)
        for thread in threads:
            thread.join(timeout=10.0)
        with contextlib.suppress(OSError):
            server.listener.close()
        server.close()

    def __enter__(self) -> CredentialServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a request gets -------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if not header:
            return False
        presented = header[len("Bearer ") :] if header.startswith("Bearer ") else header
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self.token.encode())

    def answer(self) -> tuple[int, dict[str, str]]:
        """(status, body) for an authorized request: the container-credentials object, or a
        one-line error (no secret in it) that the SDK reports."""
        from broker import issuance

        with self._lock:
            try:
                credential = issuance.obtain(self.app, self.request)
            except BrokerError as exc:
                log.warning("could not serve credentials for %s: %s", self.request.describe(), exc)
                return 500, {"Message": " ".join(str(exc).split())}
            self.served += 1
        log.info("served %s until %s", output.mask_key(credential.access_key_id), cache.iso_utc(credential.expires_at))
        return 200, container_body(credential)


def container_body(credential: Credential) -> dict[str, str]:
    """The ECS container-credentials response. `Token` is always present (botocore requires the
    key); it is empty for iam_user keys, which have none."""
    return {
        "AccessKeyId": credential.access_key_id,
        "SecretAccessKey": credential.secret_key,
        "Token": credential.session_token or "",
        "Expiration": cache.iso_utc(credential.expires_at),
    }


# -- the server: one selector thread reads every request; only authorized ones reach the worker ---------


class _Connection:
    """One accepted socket while its request head is read (never longer than HEAD_SECONDS)."""

    __slots__ = ("sock", "peer", "buffer", "deadline")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        self.deadline = time.monotonic() + HEAD_SECONDS


def _response(status: int, body: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}.get(
        status, "Internal Server Error"
    )
    head = (
        f"HTTP/1.0 {status} {reason}\r\nServer: broker\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + data


def _send_and_close(sock: socket.socket, payload: bytes, *, blocking_seconds: float = 0.0) -> None:
    """Best effort: a refusal is written without waiting (a reader that does not read loses it);
    an answer waits at most `blocking_seconds` for a slow reader."""
    try:
        if blocking_seconds:
            sock.settimeout(blocking_seconds)
            sock.sendall(payload)
        else:
            sock.send(payload)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _parse_head(raw: bytes) -> tuple[str, str, dict[str, str]] | None:
    try:
        text = raw.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, _version = request_line.split(" ")
    except ValueError:
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


class _Server:
    """Accepts and reads request heads for every connection on one thread with a selector: at most
    MAX_CONNECTIONS open (a new one evicts the oldest still reading), each cut off HEAD_SECONDS after
    it was accepted, heads bounded to MAX_HEAD_BYTES. Refusals (no or wrong token, bad path or
    method) are written from this thread at once; an authorized GET goes to the one worker thread,
    which answers requests one at a time (the App and its Vault client are not thread-safe)."""

    def __init__(self, owner: CredentialServer, listener: socket.socket) -> None:
        self.owner = owner
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.reading: dict[int, _Connection] = {}
        self.work: queue.Queue[socket.socket | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    def serve(self) -> None:
        self.listener.setblocking(False)
        self._wake_r.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in self.selector.select(timeout=POLL_SECONDS):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is not self._wake_r:
                        self._read(key.data)
                self._expire()
        finally:
            for conn in list(self.reading.values()):
                self._drop(conn)
            self.selector.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        for _ in range(64):  # drain the backlog, bounded per turn
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.reading) >= MAX_CONNECTIONS:
                oldest = min(self.reading.values(), key=lambda c: c.deadline)
                self._drop(oldest)
            sock.setblocking(False)
            conn = _Connection(sock, str(peer[0]))
            self.reading[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Connection) -> None:
        self.reading.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.reading.values() if c.deadline <= now]:
            self._drop(conn)

    def _release(self, conn: _Connection) -> socket.socket:
        self.reading.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        return conn.sock

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        conn.buffer += chunk
        end = conn.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buffer) > MAX_HEAD_BYTES:
                _send_and_close(self._release(conn), _response(400, {"Message": "request head too large"}))
            return
        parsed = _parse_head(conn.buffer[:end])
        sock = self._release(conn)
        if parsed is None:
            _send_and_close(sock, _response(400, {"Message": "malformed request"}))
            return
        method, target, headers = parsed
        if not self.owner.authorized(headers.get("authorization")):
            log.warning("refused a credential request without the right token from %s", conn.peer)
            _send_and_close(sock, _response(403, {"Message": "missing or wrong Authorization token"}))
        elif method != "GET":
            _send_and_close(sock, _response(405, {"Message": "use GET"}))
        elif target.split("?", 1)[0] != PATH:
            _send_and_close(sock, _response(404, {"Message": f"no such path; credentials are served at {PATH}"}))
        else:
            log.debug("credential endpoint: %s %s", method, target.split("?", 1)[0])
            try:
                self.work.put_nowait(sock)
            except queue.Full:
                _send_and_close(sock, _response(503, {"Message": "too many requests waiting"}))

    def worker(self) -> None:
        while True:
            sock = self.work.get()
            if sock is None:
                return
            try:
                status, body = self.owner.answer()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any one request
                log.warning("credential endpoint: internal error %s", type(exc).__name__)
                status, body = 500, {"Message": f"internal error: {type(exc).__name__}"}
            _send_and_close(sock, _response(status, body), blocking_seconds=WRITE_SECONDS)
