"""The only module that talks to Vault (through hvac). No hvac response or exception leaves it.

hvac reads its TLS variables once at import and ignores VAULT_AGENT_ADDR, VAULT_NAMESPACE and
VAULT_SKIP_VERIFY, so every setting is read here, when the command runs, and passed explicitly.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import settings
from broker.errors import (
    UsageError,
    VaultBadResponse,
    VaultDenied,
    VaultError,
    VaultRejected,
    VaultSealed,
    VaultTimeout,
    VaultUnreachable,
    one_line,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import hvac

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0  # seconds per request in total: the Rust SDK gives a credential helper 5 s in all
# An issuance may take Vault several IAM calls in a row (more across a region or under load), and a
# request given up on may still have minted a credential: its worker waits like the vault CLI (60 s).
DEFAULT_ISSUE_TIMEOUT = 60.0
MAX_BODY_BYTES = 4 << 20  # a Vault answer larger than this is not Vault's: refused, not buffered
MAX_REDIRECTS = 3
DEFAULT_RETRY_SECONDS = 2.0  # total time spent retrying connection errors, 429, 502 and 503
TRUE_WORDS = {"1", "true", "yes", "on", "t", "y"}


def strip_userinfo(addr: str) -> str:
    """`addr` without any `user:password@` (never shown, sent or stored); a malformed URL is kept
    only up to where it stops parsing."""
    try:
        parts = urllib.parse.urlsplit(addr)
        netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return addr.split("://", 1)[0] + "://<malformed>" if "://" in addr else "<malformed address>"


def vault_origin(addr: str) -> tuple[str, str, int | None, str]:
    """What makes two Vault addresses the same Vault: scheme, host, port (defaulted) and path."""
    try:
        parts = urllib.parse.urlsplit(addr.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return ("", addr, None, "")
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/"))


def _env_seconds(name: str, raw: str, default: float) -> float:
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 < value <= 600:
        raise UsageError(f"{name}={raw!r} must be between 0 and 600 seconds")
    return value


class RedirectRefused(Exception):
    """Vault answered with a redirect broker does not follow (another origin, or https to http)."""


class TooLarge(Exception):
    """Vault's answer was larger than MAX_BODY_BYTES."""


class DeadlineExceeded(Exception):
    """A Vault request did not end (headers and body) within its total deadline."""


def bounded_session(addr: str, deadline_seconds: float) -> Any:
    """A requests.Session whose every request ends within `deadline_seconds` in total (connect,
    headers and body: a Vault dripping one byte a second is cut off), reads at most MAX_BODY_BYTES
    of body, and follows a redirect only to `addr`'s own origin (a standby pointing at itself
    through a load balancer); any other redirect raises RedirectRefused, so the token is never
    sent elsewhere."""
    import requests
    import requests.adapters

    home = vault_origin(addr)[:3]

    class BoundedAdapter(requests.adapters.HTTPAdapter):
        def send(
            self,
            request: requests.PreparedRequest,
            stream: bool = False,
            timeout: float | tuple[float, float] | tuple[float, None] | None = None,
            verify: bool | str = True,
            cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
            proxies: Mapping[str, str] | None = None,
        ) -> requests.Response:
            ends = time.monotonic() + deadline_seconds
            response = super().send(
                request,
                stream=True,
                timeout=(deadline_seconds, deadline_seconds),
                verify=verify,
                cert=cert,
                proxies=proxies,
            )
            if response.is_redirect:
                target = urllib.parse.urljoin(request.url or "", response.headers.get("location", ""))
                if vault_origin(target)[:3] != home:
                    response.close()
                    raise RedirectRefused(strip_userinfo(target))
            _read_bounded(response, ends)
            return response

    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    adapter = BoundedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _read_bounded(response: Any, ends: float) -> None:
    """Read `response`'s body into it, by whatever the socket has, until `ends` or MAX_BODY_BYTES."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        response.close()
        raise TooLarge(length)
    raw = response.raw
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    body = bytearray()
    try:
        while True:
            left = ends - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded()
            if sock is not None:
                sock.settimeout(left)
            chunk = raw.read1(65536) if hasattr(raw, "read1") else raw.read(65536)
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise TooLarge(str(len(body)))
    except (DeadlineExceeded, TooLarge):
        response.close()
        raise
    except Exception as exc:  # socket timeouts surface as urllib3 errors here, not requests ones
        response.close()
        if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
            raise DeadlineExceeded() from None
        import requests

        raise requests.exceptions.ChunkedEncodingError(_short(exc)) from None
    response._content = bytes(body)  # noqa: SLF001 - what requests does itself without stream=True
    response._content_consumed = True  # noqa: SLF001
    response.close()


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    token: str | None
    verify: bool | str
    cert: tuple[str, str] | None
    timeout: float
    retry_seconds: float
    token_source: str = "VAULT_TOKEN"  # noqa: S105 - where the token came from, not a token
    issue_timeout: float = DEFAULT_ISSUE_TIMEOUT
    addr_source: str = "VAULT_ADDR"  # where addr came from (settings.Env.vault_addr_source), for messages

    @classmethod
    def from_env(cls, env: settings.Env) -> VaultSettings:
        addr = env.vault_addr
        parsed = urllib.parse.urlsplit(addr)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"{env.vault_addr_source} {addr!r} is not a URL like https://vault.example.com:8200")
        verify: bool | str = env.cacert or env.capath or True
        if env.skip_verify.strip().lower() in TRUE_WORDS:
            verify = False
        if bool(env.client_cert) != bool(env.client_key):
            raise UsageError("VAULT_CLIENT_CERT and VAULT_CLIENT_KEY must be set together")
        token, token_source = read_token(env)
        return cls(
            addr=addr,
            token=token,
            verify=verify,
            cert=(env.client_cert, env.client_key) if env.client_cert and env.client_key else None,
            timeout=_env_seconds("BROKER_VAULT_TIMEOUT", env.vault_timeout, DEFAULT_TIMEOUT),
            issue_timeout=_env_seconds("BROKER_VAULT_TIMEOUT", env.vault_timeout, DEFAULT_ISSUE_TIMEOUT),
            retry_seconds=_env_seconds("BROKER_VAULT_RETRY_SECONDS", env.vault_retry_seconds, DEFAULT_RETRY_SECONDS),
            token_source=token_source,
            addr_source=env.vault_addr_source,
        )


def read_token(env: settings.Env) -> tuple[str | None, str]:
    """`VAULT_TOKEN`, else `~/.vault-token`, else None (a Vault Agent/Proxy with auto-auth), and
    where it came from."""
    if env.token.strip():
        return env.token.strip(), "VAULT_TOKEN"
    try:
        with open(os.path.join(os.path.expanduser("~"), ".vault-token"), encoding="utf-8") as handle:
            token = handle.read().strip() or None
    except OSError:
        token = None
    return token, "~/.vault-token" if token else "none (a Vault Agent's auto-auth)"


@dataclass(frozen=True)
class Issued:
    """What Vault handed out, parsed. `expires_at` counts from before the request was sent, so it
    is never later than the credential's real end."""

    lease_id: str
    namespace: str
    renewable: bool
    credential_type: str
    access_key_id: str
    secret_key: str
    session_token: str | None
    role_session_name: str | None
    issued_at: int
    expires_at: int
    arn: str | None = None  # data.arn of an assumed_role answer, validated (the AWS principal)

    def __repr__(self) -> str:  # never show the secret halves
        return f"Issued(lease_id={self.lease_id!r}, access_key_id={self.access_key_id!r}, expires_at={self.expires_at})"


def join_namespace(*parts: str | None) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def namespace_of_lease(header_namespace: str, request_path: str, lease_id: str) -> str:
    """Where a lease lives: the header namespace plus any namespace written as a mount prefix.
    Vault's lease id starts with the request path *inside* the namespace, so for a request to
    `ns1/aws/dev/creds/r` whose lease is `aws/dev/creds/r/<id>`, the prefix `ns1` is a namespace."""
    lease_path = lease_id.rsplit("/", 1)[0] if "/" in lease_id else ""
    if lease_path and request_path != lease_path and request_path.endswith("/" + lease_path):
        return join_namespace(header_namespace, request_path[: -len(lease_path) - 1])
    return join_namespace(header_namespace)


class Vault:
    """A Vault connection for one command: hvac clients per namespace, with retries and one-line errors."""

    def __init__(self, vault_settings: VaultSettings) -> None:
        self.settings = vault_settings
        self._clients: dict[tuple[str, float], hvac.Client] = {}

    @property
    def addr(self) -> str:
        return self.settings.addr

    def client(self, namespace: str = "", timeout: float | None = None) -> hvac.Client:
        """The hvac client for `namespace`, whose requests time out after `timeout` (default: settings.timeout)."""
        timeout = timeout or self.settings.timeout
        if (namespace, timeout) not in self._clients:
            import hvac

            session = bounded_session(self.settings.addr, timeout)
            session.verify = self.settings.verify  # hvac copies session.verify over verify=
            if self.settings.verify is False:  # VAULT_SKIP_VERIFY: say so once, in our own words
                import urllib3

                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                log.info("TLS certificate verification is off for %s (VAULT_SKIP_VERIFY)", self.settings.addr)
            session.trust_env = False  # no HTTP(S)_PROXY detours for a loopback agent
            self._clients[namespace, timeout] = hvac.Client(
                url=self.settings.addr,
                token=self.settings.token,
                namespace=namespace or None,
                verify=self.settings.verify,
                cert=self.settings.cert,
                timeout=timeout,
                session=session,
            )
        return self._clients[namespace, timeout]

    # -- the calls -------------------------------------------------------------------------------

    def issue(
        self,
        *,
        namespace: str,
        mount: str,
        role: str,
        endpoint: str,
        ttl: int | None,
        role_arn: str | None,
        role_session_name: str | None,
        credential_type: str | None,
        mfa_code: str | None = None,
    ) -> Issued:
        """Mint one credential. A read timeout is not retried: Vault may have issued already.
        `mfa_code` (session_token roles with an MFA device, Vault 1.16+) goes in the body; hvac cannot send it."""
        timeout = self.settings.issue_timeout
        client = self.client(namespace, timeout)
        started = int(time.time())

        def call(which: str) -> object:
            if mfa_code:
                return self._issue_with_mfa(client, mount, which, role, ttl, mfa_code)
            return client.secrets.aws.generate_credentials(
                name=role,
                role_arn=role_arn,
                ttl=f"{ttl}s" if ttl else None,
                endpoint=which,
                mount_point=mount,
                role_session_name=role_session_name,
            )

        what = f"{mount}/{endpoint}/{role}"
        log.info(
            "vault: %s %s/v1/%s%s", "GET", self.settings.addr, what, f" (namespace {namespace})" if namespace else ""
        )
        try:
            response = self._call(what, lambda: call(endpoint), retry_read_timeout=False, timeout=timeout)
        except VaultRejected as exc:
            if "legacy role" not in str(exc) or credential_type:
                raise
            endpoint = "sts" if endpoint == "creds" else "creds"  # a legacy role fixes the path
            what = f"{mount}/{endpoint}/{role}"
            response = self._call(what, lambda: call(endpoint), retry_read_timeout=False, timeout=timeout)
        log.info("vault: %s answered in %.3fs", what, time.time() - started)
        return self._parse_issued(
            response, namespace, f"{mount.strip('/')}/{endpoint}/{role}", credential_type, role_session_name, started
        )

    def _parse_issued(
        self,
        response: object,
        header_namespace: str,
        request_path: str,
        credential_type: str | None,
        session_name: str | None,
        started: int,
    ) -> Issued:
        if not isinstance(response, dict):
            raise VaultBadResponse(
                f"{self.addr} answered {request_path} with something that is not Vault's JSON; "
                f"is VAULT_ADDR a Vault server?"
            )
        raw_lease_id = response.get("lease_id") or ""
        lease_id = raw_lease_id if isinstance(raw_lease_id, str) else ""
        lease_ok = lease_id_under(lease_id, request_path)
        namespace = namespace_of_lease(header_namespace, request_path, lease_id) if lease_ok else header_namespace
        data = response.get("data")
        if not isinstance(data, dict):
            data = {}
        access_key, secret_key = data.get("access_key"), data.get("secret_key")
        token = data.get("session_token") or data.get("security_token") or None
        duration = _int(response.get("lease_duration")) or _int(data.get("ttl"))
        problem = None
        if not isinstance(access_key, str) or not access_key or not isinstance(secret_key, str) or not secret_key:
            problem = "had no access_key/secret_key"
        elif duration <= 0:
            problem = "had neither lease_duration nor data.ttl"
        else:
            problem = answer_problem(lease_id, lease_ok, access_key, secret_key, token, duration, data.get("arn"))
        if problem:
            revoked = bool(lease_id) and lease_ok and self.revoke_quietly(lease_id, namespace)
            outcome = (
                f"revoked lease {lease_id}"
                if revoked
                else "nothing to revoke"
                if not lease_id
                else "could NOT revoke it: revoke it by hand"
                if lease_ok
                else "its lease id was not revoked (not a path under the request)"
            )
            raise VaultBadResponse(
                f"Vault's answer for {request_path} {problem}; nothing was recorded or served ({outcome})"
            )
        assert isinstance(access_key, str) and isinstance(secret_key, str)  # checked above; tells mypy
        credential_type = recorded_type(credential_type, data, token)
        arn = data.get("arn")
        if credential_type == "assumed_role" and isinstance(arn, str) and "/" in arn:
            session_name = arn.rsplit("/", 1)[1]  # the name AWS actually used
        elif credential_type != "assumed_role":
            session_name = None
        return Issued(
            lease_id=lease_id,
            namespace=namespace,
            renewable=bool(response.get("renewable")),
            credential_type=credential_type,
            access_key_id=access_key,
            secret_key=secret_key,
            session_token=token if isinstance(token, str) else None,
            role_session_name=session_name,
            issued_at=started,
            expires_at=started + duration,
            arn=arn if isinstance(arn, str) and valid_arn(arn) else None,
        )

    @staticmethod
    def _issue_with_mfa(
        client: hvac.Client, mount: str, endpoint: str, role: str, ttl: int | None, code: str
    ) -> object:
        body: dict[str, str] = {"mfa_code": code}
        if ttl:
            body["ttl"] = f"{ttl}s"
        return client.adapter.post(f"/v1/{mount.strip('/')}/{endpoint}/{role}", json=body)

    def issue_static(self, *, namespace: str, mount: str, role: str) -> Issued:
        """Read a static role's credential (GET {mount}/static-creds/{role}, Vault 1.14+): no lease,
        the same key for every reader until Vault rotates it at `data.expiration`."""
        client = self.client(namespace)
        started = int(time.time())
        what = f"{mount.strip('/')}/static-creds/{role}"
        log.info("vault: GET %s/v1/%s%s", self.settings.addr, what, f" (namespace {namespace})" if namespace else "")
        response = self._call(what, lambda: client.adapter.get(f"/v1/{what}"), retry_read_timeout=True)
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise VaultBadResponse(f"{self.addr} answered {what} with something that is not Vault's JSON")
        access_key, secret_key = data.get("access_key"), data.get("secret_key")
        expires_at = _rfc3339(data.get("expiration")) or (
            started + _int(data.get("ttl")) if _int(data.get("ttl")) else 0
        )
        if not (isinstance(access_key, str) and access_key and isinstance(secret_key, str) and secret_key):
            raise VaultBadResponse(f"Vault's answer for {what} had no access_key/secret_key; nothing was recorded")
        if expires_at <= started:
            raise VaultBadResponse(f"Vault's answer for {what} had no future expiration; nothing was recorded")
        return Issued(
            lease_id="",
            namespace=namespace,
            renewable=False,
            credential_type="static",
            access_key_id=access_key,
            secret_key=secret_key,
            session_token=None,
            role_session_name=None,
            issued_at=started,
            expires_at=int(expires_at),
        )

    def read_static_role(self, mount: str, role: str, namespace: str = "") -> dict[str, Any] | None:
        """A static role's configuration (GET {mount}/static-roles/{role}); like read_role."""
        return self.read_role(mount, role, namespace, kind="static-roles")

    def revoke(self, lease_id: str, namespace: str = "") -> None:
        """Revoke one lease (Vault answers 204 for unknown and already-revoked leases too)."""
        client = self.client(namespace)
        self._call("sys/leases/revoke", lambda: client.sys.revoke_lease(lease_id), retry_read_timeout=True)

    def revoke_quietly(self, lease_id: str, namespace: str = "") -> bool:
        try:
            self.revoke(lease_id, namespace)
            return True
        except VaultError as exc:
            log.warning("could not revoke %s: %s", lease_id, exc)
            return False

    def revoke_prefix(self, prefix: str, namespace: str = "") -> None:
        client = self.client(namespace)
        self._call(
            f"sys/leases/revoke-prefix/{prefix}", lambda: client.sys.revoke_prefix(prefix), retry_read_timeout=True
        )

    def renew(self, lease_id: str, namespace: str = "", increment: int | None = None) -> int:
        """Renew a lease; returns the new lease_duration in seconds."""
        client = self.client(namespace)
        response = self._call(
            f"sys/leases/renew {lease_id}",
            lambda: client.sys.renew_lease(lease_id, increment=increment),
            retry_read_timeout=True,
        )
        duration = _int(response.get("lease_duration")) if isinstance(response, dict) else 0
        if duration <= 0:
            raise VaultBadResponse(f"Vault's renewal of {lease_id} carried no lease_duration")
        return duration

    def read_role(self, mount: str, role: str, namespace: str = "", kind: str = "roles") -> dict[str, Any] | None:
        """An AWS secrets engine role's configuration (GET {mount}/roles/{role}), without issuing;
        None when the mount has no such role. A mount that does not exist raises VaultRejected
        ("no handler for route"); a token without read on it raises VaultDenied."""
        import hvac.exceptions as hx

        client = self.client(namespace)
        path = f"/v1/{mount.strip('/')}/{kind}/{role}"

        def call() -> object:
            try:
                return client.adapter.get(path)
            except hx.InvalidPath as exc:
                if any("no handler for route" in str(e) for e in (getattr(exc, "errors", None) or [])):
                    raise
                return None

        response = self._call(f"{mount}/{kind}/{role}", call, retry_read_timeout=True)
        if response is None:
            return None
        data = response.get("data") if isinstance(response, dict) else None
        return data if isinstance(data, dict) else {}

    def lookup(self, lease_id: str, namespace: str = "") -> dict[str, Any] | None:
        """What Vault knows of a lease (PUT sys/leases/lookup: id, issue_time, expire_time, ttl,
        renewable), or None when Vault does not know it (400 "invalid lease": revoked or expired)."""
        import hvac.exceptions as hx

        client = self.client(namespace)

        def call() -> object:
            try:
                return client.sys.read_lease(lease_id)
            except hx.InvalidRequest as exc:
                if any("invalid lease" in str(e) for e in (getattr(exc, "errors", None) or [])):
                    return None
                raise

        response = self._call(f"sys/leases/lookup {lease_id}", call, retry_read_timeout=True)
        if response is None:
            return None
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise VaultBadResponse(f"Vault's lookup of {lease_id} carried no data")
        return data

    def list_leases(self, prefix: str, namespace: str = "") -> list[str]:
        """Every lease id Vault holds under `prefix` (LIST sys/leases/lookup/<prefix>, a sudo path),
        walking sub-prefixes; empty when there are none (404)."""
        import hvac.exceptions as hx

        client = self.client(namespace)
        found: list[str] = []
        pending = [prefix.strip("/") + "/"]
        while pending:
            current = pending.pop()

            def call(current: str = current) -> object:
                try:
                    return client.adapter.list(f"/v1/sys/leases/lookup/{urllib.parse.quote(current)}")
                except hx.InvalidPath:
                    return None

            response = self._call(f"LIST sys/leases/lookup/{current}", call, retry_read_timeout=True)
            data = response.get("data") if isinstance(response, dict) else None
            keys = data.get("keys") if isinstance(data, dict) else None
            for key in keys if isinstance(keys, list) else []:
                if not isinstance(key, str) or not key or ".." in key or key.startswith("/"):
                    continue  # untrusted: only plain path segments
                if key.endswith("/"):
                    pending.append(current + key)
                else:
                    found.append(current + key)
        return sorted(found)

    def lookup_self(self) -> dict[str, Any]:
        client = self.client("")
        response = self._call("auth/token/lookup-self", client.auth.token.lookup_self, retry_read_timeout=True)
        return response.get("data") or {} if isinstance(response, dict) else {}

    # -- retries and error translation -------------------------------------------------------------

    def _call(
        self, what: str, fn: Callable[[], object], *, retry_read_timeout: bool, timeout: float | None = None
    ) -> object:
        import hvac.exceptions as hx
        import requests

        deadline = time.monotonic() + self.settings.retry_seconds
        delay = 0.1
        while True:
            try:
                return fn()
            except RedirectRefused as exc:
                raise VaultBadResponse(
                    f"Vault at {self.addr} redirected {what} to {exc}; broker follows no redirect to another "
                    "address (the token would go there): set VAULT_ADDR to the address Vault names"
                ) from None
            except TooLarge:
                raise VaultBadResponse(
                    f"{self.addr} answered {what} with more than {MAX_BODY_BYTES >> 20} MB; that is not Vault's answer"
                ) from None
            except (requests.exceptions.JSONDecodeError, requests.exceptions.TooManyRedirects):
                raise VaultBadResponse(
                    f"{self.addr} answered {what} with something that is not Vault's JSON; "
                    "is VAULT_ADDR a Vault server?"
                ) from None
            except (
                DeadlineExceeded,
                requests.exceptions.ReadTimeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                if not retry_read_timeout:
                    raise VaultTimeout(
                        f"Vault at {self.addr} did not answer {what} within {timeout or self.settings.timeout:g}s "
                        "(not retried: Vault may have issued; `broker reconcile --vault-list` finds such a "
                        "lease; BROKER_VAULT_TIMEOUT sets the wait)"
                    ) from None
                error: VaultError = VaultUnreachable(f"Vault at {self.addr} did not answer {what}: {_short(exc)}")
            except requests.exceptions.InvalidURL:
                raise UsageError(f"VAULT_ADDR {self.addr!r} is not a usable URL") from None
            except requests.exceptions.SSLError as exc:
                raise VaultUnreachable(
                    f"TLS with Vault at {self.addr} ({self._where()}) failed: {tls_cause(exc)}"
                ) from None
            except requests.exceptions.ConnectionError:
                error = VaultUnreachable(
                    f"cannot connect to Vault at {self.addr} ({self._where()}); "
                    "is it running and is that the right address?"
                )
            except requests.exceptions.RequestException as exc:
                raise VaultUnreachable(f"request to Vault at {self.addr} failed: {_short(exc)}") from None
            except hx.VaultDown:
                error = VaultSealed(f"Vault at {self.addr} is sealed or unavailable (503) for {what}")
            except hx.RateLimitExceeded:
                error = VaultError(f"Vault at {self.addr} rate-limited {what} (429)")
            except hx.BadGateway as exc:
                error = VaultError(f"Vault at {self.addr} answered 502 for {what}: {_vault_message(exc)}")
            except hx.Forbidden:
                raise VaultDenied(self._denied(what)) from None
            except hx.InvalidRequest as exc:
                raise VaultRejected(f"Vault rejected {what}: {_vault_message(exc)}") from None
            except hx.InvalidPath as exc:
                raise VaultRejected(f"Vault has no {what} (404): {_vault_message(exc) or 'check the mount'}") from None
            except hx.VaultError as exc:
                status = {"InternalServerError": " (500)", "VaultNotInitialized": " (501, not initialised)"}.get(
                    type(exc).__name__, ""
                )
                raise VaultError(f"Vault at {self.addr} failed {what}{status}: {_vault_message(exc)}") from None
            if time.monotonic() + delay > deadline:
                raise error
            log.info("%s; retrying in %.1fs", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _where(self) -> str:
        source = self.settings.addr_source
        return "the default address: VAULT_ADDR is unset" if source.startswith("the default") else f"from {source}"

    def _denied(self, what: str) -> str:
        if self.settings.token is None:
            return (
                f"permission denied (403) on {what} at Vault {self.addr}: no token was sent (VAULT_TOKEN unset, "
                "no ~/.vault-token); set VAULT_TOKEN, run `vault login`, or point VAULT_AGENT_ADDR at an agent"
            )
        return (
            f"permission denied (403) on {what} at Vault {self.addr}; check the token from "
            f"{self.settings.token_source} and its policies"
        )


def tls_cause(exc: BaseException) -> str:
    """What went wrong in a TLS handshake, in words, with OpenSSL's own reason in full."""
    import re

    text = " ".join(str(exc).split())
    reasons = re.findall(r"\[SSL: [A-Z0-9_]+\] [^'\")(]*?(?=\s*\(_ssl|'|\"|\)|$)", text)
    reason = reasons[-1].strip() if reasons else text.rsplit(": ", 1)[-1][:300]
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer failure" in text:
        return f"the server did not answer TLS: is it a plain http:// listener? ({reason})"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "hostname" in text.lower() or "match" in text.lower():
            return f"the certificate is not for this host name ({reason})"
        return (
            f"the server's certificate is signed by a CA broker does not trust ({reason}); "
            "point VAULT_CACERT or VAULT_CAPATH at that CA"
        )
    return f"{reason}; check VAULT_CACERT/VAULT_CAPATH and VAULT_CLIENT_CERT/VAULT_CLIENT_KEY"


MAX_LEASE_SECONDS = 366 * 86400
_ACCESS_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_LEASE_SUFFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")


def printable_token(value: object, longest: int) -> bool:
    """Printable ASCII without whitespace (0x21-0x7e), 1 to `longest` characters."""
    return isinstance(value, str) and 0 < len(value) <= longest and all("!" <= c <= "~" for c in value)


def lease_id_under(lease_id: str, request_path: str) -> bool:
    """Whether `lease_id` is `<request path>/<suffix>` (the request path seen inside a namespace
    may lack the namespace prefix a mount was written with; vault-api.md 1.5). Empty: no lease."""
    if not lease_id:
        return True
    path, _, suffix = lease_id.rpartition("/")
    return (
        len(lease_id) <= 1024
        and bool(path)
        and bool(suffix)
        and set(suffix) <= _LEASE_SUFFIX_CHARS
        and ".." not in path.split("/")
        and (path == request_path or request_path.endswith("/" + path))
        and printable_token(lease_id, 1024)
    )


def answer_problem(
    lease_id: str,
    lease_ok: bool,
    access_key: str,
    secret_key: str,
    token: object,
    duration: int,
    arn: object,
) -> str | None:
    """What makes an issued credential unusable as data, or None. Everything Vault sends ends up in
    config files, shells and terminals: only plain tokens of bounded length pass."""
    if not lease_ok:
        return f"had a lease id {lease_id[:80]!r} that is not a path under the request"
    if not (16 <= len(access_key) <= 128 and set(access_key) <= _ACCESS_KEY_CHARS):
        return "had an access_key that is not an AWS access key id"
    if not printable_token(secret_key, 256):
        return "had a secret_key with whitespace, control characters or over 256 characters"
    if token is not None and not printable_token(token, 16384):
        return "had a session token with whitespace, control characters or over 16384 characters"
    if duration > MAX_LEASE_SECONDS:
        return f"had a lease_duration of {duration}s, over a year"
    if arn is not None and not printable_token(arn, 2048):
        return "had an arn with whitespace or control characters"
    return None


def _rfc3339(value: object) -> int:
    """Epoch seconds of Vault's RFC 3339 time (`2026-12-02T02:30:00.123456789Z`, or with an offset); 0 if not one."""
    import datetime as dt
    import re

    if not isinstance(value, str) or len(value) > 64:
        return 0
    text = re.sub(r"(\.\d{1,6})\d*", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return 0
    return int(parsed.timestamp()) if parsed.tzinfo else 0


def _int(value: object) -> int:
    if not isinstance(value, str | int | float):  # JSON's other values: null, lists, objects
        return 0
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def recorded_type(hint: str | None, data: dict[str, Any], token: object) -> str:
    """The credential type the ledger records: what Vault's answer shows, whatever the request
    claimed (a hint only picks the endpoint). A session token means STS; an `arn` means
    assumed_role. federation_token and session_token answers look alike, so there the hint, or
    the presence of `data.ttl`, decides."""
    if not token:
        return "iam_user"
    if data.get("arn"):
        return "assumed_role"
    if hint in ("federation_token", "session_token"):
        return hint
    return "federation_token" if "ttl" in data else "session_token"


_ARN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:/+=,.@_-")


def valid_arn(arn: str) -> bool:
    """An AWS ARN of printable ARN characters (`arn:<partition>:<service>:<region>:<account>:<resource>`)."""
    parts = arn.split(":", 5)
    return (
        len(arn) <= 2048
        and len(parts) == 6
        and parts[0] == "arn"
        and parts[1].startswith("aws")
        and bool(parts[2])
        and bool(parts[5])
        and set(arn) <= _ARN_CHARS
    )


def account_of_arn(arn: str | None) -> str | None:
    """The 12-digit account of an ARN such as arn:aws:sts::123456789012:assumed-role/R/S, else None."""
    if not arn or not valid_arn(arn):
        return None
    account = arn.split(":", 5)[4]
    return account if len(account) == 12 and account.isdigit() else None


def _short(exc: BaseException) -> str:
    return one_line(type(exc).__name__ + (f": {exc.args[0]}" if exc.args else ""), 200)


def _vault_message(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple) and errors:
        return one_line("; ".join(str(e) for e in errors), 300)
    return (
        one_line(getattr(exc, "text", "") or "", 300)[:200]
        if "<html" not in str(getattr(exc, "text", "")).lower()
        else "an HTML page"
    )
