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
    from collections.abc import Callable

    import hvac

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0  # seconds per request: the Rust SDK gives a credential helper 5 s in all
DEFAULT_RETRY_SECONDS = 2.0  # total time spent retrying connection errors, 429, 502 and 503
TRUE_WORDS = {"1", "true", "yes", "on", "t", "y"}


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


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    token: str | None
    verify: bool | str
    cert: tuple[str, str] | None
    timeout: float
    retry_seconds: float
    token_source: str = "VAULT_TOKEN"  # noqa: S105 - where the token came from, not a token

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
            retry_seconds=_env_seconds("BROKER_VAULT_RETRY_SECONDS", env.vault_retry_seconds, DEFAULT_RETRY_SECONDS),
            token_source=token_source,
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
        self._clients: dict[str, hvac.Client] = {}

    @property
    def addr(self) -> str:
        return self.settings.addr

    def client(self, namespace: str = "") -> hvac.Client:
        if namespace not in self._clients:
            import hvac
            import requests

            session = requests.Session()
            session.verify = self.settings.verify  # hvac copies session.verify over verify=
            if self.settings.verify is False:  # VAULT_SKIP_VERIFY: say so once, in our own words
                import urllib3

                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                log.info("TLS certificate verification is off for %s (VAULT_SKIP_VERIFY)", self.settings.addr)
            session.trust_env = False  # no HTTP(S)_PROXY detours for a loopback agent
            self._clients[namespace] = hvac.Client(
                url=self.settings.addr,
                token=self.settings.token,
                namespace=namespace or None,
                verify=self.settings.verify,
                cert=self.settings.cert,
                timeout=self.settings.timeout,
                session=session,
            )
        return self._clients[namespace]

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
        client = self.client(namespace)
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
            response = self._call(what, lambda: call(endpoint), retry_read_timeout=False)
        except VaultRejected as exc:
            if "legacy role" not in str(exc) or credential_type:
                raise
            endpoint = "sts" if endpoint == "creds" else "creds"  # a legacy role fixes the path
            what = f"{mount}/{endpoint}/{role}"
            response = self._call(what, lambda: call(endpoint), retry_read_timeout=False)
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
        lease_id = str(response.get("lease_id") or "")
        namespace = namespace_of_lease(header_namespace, request_path, lease_id)
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
        if problem:
            if lease_id:
                self.revoke_quietly(lease_id, namespace)
            raise VaultBadResponse(f"Vault's answer for {request_path} {problem}; nothing was recorded or served")
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
        self._call(f"sys/leases/revoke {lease_id}", lambda: client.sys.revoke_lease(lease_id), retry_read_timeout=True)

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

    def lookup_self(self) -> dict[str, Any]:
        client = self.client("")
        response = self._call("auth/token/lookup-self", client.auth.token.lookup_self, retry_read_timeout=True)
        return response.get("data") or {} if isinstance(response, dict) else {}

    # -- retries and error translation -------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], object], *, retry_read_timeout: bool) -> object:
        import hvac.exceptions as hx
        import requests

        deadline = time.monotonic() + self.settings.retry_seconds
        delay = 0.1
        while True:
            try:
                return fn()
            except requests.exceptions.JSONDecodeError:
                raise VaultBadResponse(
                    f"{self.addr} answered {what} with something that is not Vault's JSON; "
                    "is VAULT_ADDR a Vault server?"
                ) from None
            except (requests.exceptions.ReadTimeout, requests.exceptions.ChunkedEncodingError) as exc:
                if not retry_read_timeout:
                    raise VaultTimeout(
                        f"Vault at {self.addr} did not answer {what} within {self.settings.timeout:g}s "
                        f"(not retried: Vault may have issued; set BROKER_VAULT_TIMEOUT to wait longer)"
                    ) from None
                error: VaultError = VaultUnreachable(f"Vault at {self.addr} did not answer {what}: {_short(exc)}")
            except requests.exceptions.InvalidURL:
                raise UsageError(f"VAULT_ADDR {self.addr!r} is not a usable URL") from None
            except requests.exceptions.SSLError as exc:
                raise VaultUnreachable(
                    f"TLS with Vault at {self.addr} failed ({_short(exc)}); check VAULT_CACERT/VAULT_CAPATH"
                ) from None
            except requests.exceptions.ConnectionError:
                error = VaultUnreachable(
                    f"cannot connect to Vault at {self.addr}; is it running and is VAULT_ADDR right?"
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
                raise VaultDenied(
                    f"Vault at {self.addr} denied {what} (403 permission denied); check VAULT_TOKEN and its policies"
                ) from None
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
