"""A loopback credential endpoint in the container-credentials format (what ECS tasks get).

An SDK pointed at it with AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN
asks again whenever its copy nears expiry (botocore: under 15 minutes left), so a child can run far
longer than one credential lives. Every answer goes through `issuance.obtain`: the same cache, the
same single flight and the same ledger as `credential-process`.

Only 127.0.0.1, a random token per server (never logged), compared in constant time; 403 for a
missing or wrong token. Requests are answered one at a time: the App, its Vault client and the
forked issuance worker are not meant to be used by several threads at once, and the SDK asks rarely.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class CredentialServer:
    """`start()` binds and serves in a thread; `stop()` shuts down and joins. A context manager."""

    def __init__(self, app: App, request: IssueRequest, *, port: int = 0) -> None:
        self.app = app
        self.request = request
        self.port = port
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.served = 0
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.url, self.token)

    def start(self) -> CredentialServer:
        try:
            httpd = _HTTPServer((HOST, self.port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {self.port} on {HOST} is in use; choose another --port, or leave it out for a random one"
                ) from None
            if exc.errno == errno.EACCES:
                raise UsageError(f"not allowed to listen on {HOST}:{self.port}; use a port above 1023") from None
            raise BrokerError(f"cannot listen on {HOST}:{self.port}: {exc.strerror}") from None
        httpd.owner = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"broker-credserver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("credential endpoint for %s listening on %s", self.request.describe(), self.url)
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=10.0)

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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: CredentialServer


class _Handler(BaseHTTPRequestHandler):
    server_version = "broker"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    server: _HTTPServer  # what _HTTPServer hands its handlers (the base class says BaseServer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the request line only, never headers
        log.debug("credential endpoint: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner: CredentialServer = self.server.owner
        if not owner.authorized(self.headers.get("Authorization")):
            log.warning("refused a credential request without the right token from %s", self.client_address[0])
            self._send(403, {"Message": "missing or wrong Authorization token"})
            return
        if self.path.split("?", 1)[0] != PATH:
            self._send(404, {"Message": f"no such path; credentials are served at {PATH}"})
            return
        self._send(*owner.answer())

    def do_POST(self) -> None:  # noqa: N802
        self._send(405, {"Message": "use GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    def _send(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away
            pass
