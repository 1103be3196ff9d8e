"""A Vault HTTP API double backed by moto, for tests, demos and benchmarks.

`VaultDouble` is a real HTTP server on 127.0.0.1 that speaks the subset of
Vault's API the broker uses (see ../shared/docs/vault-api.md): the AWS secrets engine
(`{mount}/creds/{role}`, `{mount}/sts/{role}`, `{mount}/static-creds/{role}`, reads and lists of
`{mount}/roles/` and `{mount}/static-roles/`), `sys/leases/*`, `auth/token/lookup-self`,
`auth/token/renew-self` and `sys/health`, with
Vault's envelopes, error bodies and status codes, namespaces, and a small
token/ACL model.

The AWS side is moto in server mode, reached with boto3 over HTTP. The double
switches moto's IAM authentication on (through moto's `/moto-api/reset-auth`
endpoint, the server-side form of `INITIAL_NO_AUTH_ACTION_COUNT`) after using
the few unauthenticated calls to create an admin IAM user for itself, so an
issued key is a key that exists in moto and a revoked iam_user key stops
working.

Only the standard library and boto3/botocore are used here; no hvac.

Run as a process (demo scripts, benchmarks)::

    python -m tests.support.vault_double --ready-file /tmp/ready.json [--latency-ms 5]

It starts moto and the double with the standard demo roles, writes
``{"vault_addr", "token", "aws_endpoint", "pid", ...}`` to the ready file
atomically, and runs until SIGTERM/SIGINT (or --max-seconds).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import secrets
import signal
import socket
import string
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "CREDENTIAL_TYPES",
    "DEFAULT_POLICIES",
    "FAULT_KINDS",
    "Issued",
    "SeenRequest",
    "VaultDouble",
    "aws_admin_credentials",
    "aws_client",
    "main",
    "setup_standard_roles",
    "start_moto_server",
]

log = logging.getLogger(__name__)

CREDENTIAL_TYPES = ("iam_user", "assumed_role", "federation_token", "session_token")
STS_TYPES = frozenset({"assumed_role", "federation_token", "session_token"})
DEFAULT_POLICIES = frozenset({"creds", "lookup", "renew", "revoke"})
# "roles": read (and list) on {mount}/roles/* and {mount}/static-roles/*; not in DEFAULT_POLICIES, like
# Vault's default policy, which has no read on a secrets engine's role configuration.
ALL_POLICIES = frozenset({"creds", "lookup", "renew", "revoke", "roles"})
FAULT_KINDS = ("hang", "malformed", "html", "missing_access_key", "reset", "drip", "redirect", "huge")
TOKEN_FIELDS = ("security_token", "session_token", "both")

DEFAULT_STS_TTL = 3600
MIN_STS_TTL = 900  # AWS DurationSeconds minimum for AssumeRole/GetFederationToken/GetSessionToken
MIN_AWS_USER_ROLLBACK_AGE = 300.0  # Vault's minAwsUserRollbackAge (5 min)
HANG_MAX_SECONDS = 30.0
DRIP_MAX_SECONDS = 120.0  # a "drip" answer is cut off (connection closed) after this long
LATENCY_MAX_SECONDS = 60.0  # set_latency() delays are capped here
MAX_BODY_BYTES = 1 << 20
_PROBE_HEADER = "X-Vault-Double-Probe"
AWS_REGION = "us-east-1"
BASE62 = string.ascii_letters + string.digits
_SESSION_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9+=,.@_-]")
_ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
_TRUST_ANYONE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)
_THROTTLE_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException", "SlowDown"}
)
_FAULT_MESSAGES = {
    400: ["invalid request"],
    401: ["unauthorized"],
    403: ["permission denied"],
    404: [],
    405: ["unsupported operation"],
    412: ["required index state not present"],
    500: ["internal error"],
    502: ["upstream rate limited"],
    503: ["Vault is sealed"],
}


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Issued:
    """One credential handed out by the double (also for no-lease STS responses)."""

    lease_id: str  # "" when no_lease_sts was on
    path: str  # namespace-relative request path, e.g. "aws/creds/ci"
    namespace: str  # "" for root, else e.g. "team1" or "ns1/ns2"
    mount: str
    role: str
    credential_type: str
    access_key: str
    secret_key: str
    session_token: str | None  # None for iam_user
    iam_user_name: str | None  # only for iam_user
    ttl: int  # seconds the client was told (lease_duration, or data.ttl for STS)
    renewable: bool
    issued_at: float  # time.time()
    arn: str | None = None  # AssumedRoleUser ARN for assumed_role


@dataclasses.dataclass(frozen=True)
class SeenRequest:
    """One client request as the double received it (see VaultDouble.seen)."""

    method: str
    path: str  # URL path as sent, e.g. "/v1/aws/creds/ci"
    token: str  # X-Vault-Token, else the Authorization: Bearer token, else ""
    headers: dict[str, str]  # every header, names as sent (last value wins)
    at: float  # time.time() when the request line was read

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclasses.dataclass
class _Role:
    namespace: str
    mount: str
    name: str
    credential_type: str
    role_arns: list[str]
    default_sts_ttl: int | None
    max_sts_ttl: int | None
    legacy: bool
    iam_lease_ttl: int
    iam_max_ttl: int
    policy_arns: list[str] = dataclasses.field(default_factory=list)
    iam_groups: list[str] = dataclasses.field(default_factory=list)
    user_path: str = "/"
    mfa_serial_number: str = ""
    mfa_code: str | None = None  # the one code the fake MFA device accepts (set_mfa_code)

    def config(self) -> dict[str, Any]:
        """`GET {mount}/roles/{name}` data, keys as Vault's awsRoleEntry.toResponseData (nil lists -> null)."""
        return {
            "credential_type": self.credential_type,
            "role_arns": list(self.role_arns) or None,
            "policy_arns": list(self.policy_arns) or None,
            "policy_document": "",
            "iam_groups": list(self.iam_groups) or None,
            "iam_tags": None,
            "default_sts_ttl": int(self.default_sts_ttl or 0),
            "max_sts_ttl": int(self.max_sts_ttl or 0),
            "user_path": self.user_path if self.credential_type == "iam_user" else "",
            "permissions_boundary_arn": "",
            "mfa_serial_number": self.mfa_serial_number,
            "session_tags": None,
            "external_id": "",
        }


@dataclasses.dataclass
class _StaticRole:
    namespace: str
    mount: str
    name: str
    username: str
    rotation_period: int
    access_key: str
    secret_key: str
    last_rotation: float


@dataclasses.dataclass
class _Lease:
    lease_id: str
    namespace: str
    mount: str
    role: str
    credential_type: str
    issue_time: float
    expire_time: float
    last_renewal: float | None
    renewable: bool
    max_ttl: int | None  # iam_user only
    iam_lease_ttl: int | None  # iam_user only: default renew increment
    iam_user_name: str | None


@dataclasses.dataclass
class _Token:
    token: str
    policies: frozenset[str]
    sudo: bool
    root: bool
    accessor: str
    creation_time: float
    display_name: str = "token"
    entity_id: str = ""
    ttl: int = 0  # 0: never expires
    renewable: bool = False
    expire_time: float | None = None
    last_renewal: float | None = None

    def expired(self, now: float) -> bool:
        return self.expire_time is not None and self.expire_time <= now


@dataclasses.dataclass
class _Fault:
    kind: str | int
    remaining: int
    path_contains: str
    interval: float = 1.0  # drip: seconds between bytes
    location: str = ""  # redirect: Location base URL
    size: int = 0  # huge: body bytes
    status: int = 307  # redirect status


class _VaultError(Exception):
    def __init__(self, status: int, errors: list[str] | None = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = [] if errors is None else list(errors)


@dataclasses.dataclass
class _Reply:
    status: int
    payload: Any = None  # dict -> JSON; None -> empty body
    content_type: str = "application/json"
    raw: bytes | None = None


# --------------------------------------------------------------------------- helpers


def _random_base62(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_GO_DURATION = re.compile(r"^(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h|d))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(value: Any, field: str = "ttl") -> int | None:
    """Parse Vault-style durations: int seconds, "900", "15m", "1h30m". None/"" -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _VaultError(400, [f'error converting input {value!r} for field "{field}"'])
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = str(value).strip()
    if text == "":
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    sign = 1
    body = text
    if body[:1] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if not _GO_DURATION.fullmatch(body):
        raise _VaultError(400, [f'error converting input {text} for field "{field}": time: invalid duration "{text}"'])
    total = sum(float(num) * _GO_UNITS[unit] for num, unit in _GO_PART.findall(body))
    return sign * int(total)


def format_go_duration(seconds: int) -> str:
    """Format seconds like Go's time.Duration.String() (3600 -> "1h0m0s")."""
    seconds = int(seconds)
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    seconds = abs(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        out = f"{h}h{m}m{s}s"
    elif m:
        out = f"{m}m{s}s"
    else:
        out = f"{s}s"
    return "-" + out if neg else out


def rfc3339(ts: float | None) -> str | None:
    """Go RFC3339Nano in the local offset ("Z" when UTC), trailing zeros trimmed."""
    if ts is None:
        return None
    total_ns = int(round(ts * 1e9))
    secs, frac = divmod(total_ns, 10**9)
    moment = dt.datetime.fromtimestamp(secs).astimezone()
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += ("." + f"{frac:09d}").rstrip("0")
    offset = moment.utcoffset() or dt.timedelta(0)
    if offset == dt.timedelta(0):
        return text + "Z"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _norm_ns(value: str | None) -> str:
    if not value:
        return ""
    return "/".join(part for part in value.split("/") if part)


def _join_ns(a: str, b: str) -> str:
    return _norm_ns(f"{a}/{b}")


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].strip().lower() in ("1", "t", "true", "yes", "on")


def _envelope(
    *,
    lease_id: str = "",
    renewable: bool = False,
    lease_duration: int = 0,
    data: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": None,
        "warnings": warnings or None,
        "auth": auth,
    }


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".vault-double-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------- AWS (moto) side


_BOTO_LOCK = threading.Lock()
_BOTO_SESSION: Any = None


def _botocore_session() -> Any:
    """A shared botocore session that ignores AWS_PROFILE and the user's config files."""
    import botocore.session

    global _BOTO_SESSION
    if _BOTO_SESSION is None:
        _BOTO_SESSION = botocore.session.Session(
            session_vars={
                "profile": (None, None, None, None),
                "config_file": (None, None, os.devnull, None),
                "credentials_file": (None, None, os.devnull, None),
            }
        )
    return _BOTO_SESSION


def _boto_config() -> Any:
    from botocore.config import Config

    # parameter_validation off: botocore would reject DurationSeconds < 900 and
    # long session names client-side; the double decides that itself (or lets
    # moto answer), like Vault gets it from AWS.
    return Config(
        retries={"max_attempts": 1, "mode": "standard"},
        parameter_validation=False,
        connect_timeout=5,
        read_timeout=20,
    )


def _aws_client(endpoint: str, service: str, access_key: str, secret_key: str, token: str | None = None) -> Any:
    with _BOTO_LOCK:  # creating clients from one session is not thread-safe; using them is
        return _botocore_session().create_client(
            service,
            region_name=AWS_REGION,
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            config=_boto_config(),
        )


def aws_client(endpoint: str, service: str, credentials: tuple[str, ...]) -> Any:
    """A botocore client for moto at `endpoint` with (key, secret[, session_token]); ignores AWS_* config."""
    key, secret, *rest = credentials
    return _aws_client(endpoint, service, key, secret, rest[0] if rest else None)


@dataclasses.dataclass
class _Admin:
    access_key: str
    secret_key: str
    arn: str
    sts: Any  # client used for the validity check


_ADMIN_LOCK = threading.Lock()
_ADMIN_CACHE: dict[str, _Admin] = {}  # endpoint -> admin user
_BOOTSTRAP_ATTEMPTS = 3


def _admin_still_valid(admin: _Admin) -> bool:
    try:
        ident = admin.sts.get_caller_identity()
    except Exception:  # noqa: BLE001 - any failure means "bootstrap again"
        return False
    # With auth switched off moto answers any key with a placeholder identity.
    return ident.get("Arn") == admin.arn


def aws_admin_credentials(endpoint: str) -> tuple[str, str]:
    """(access_key_id, secret_access_key) of the double's admin user in the moto at `endpoint`.

    The first call per moto server switches moto's IAM authentication on: it
    POSTs ``/moto-api/reset-auth`` with 3 (moto's `INITIAL_NO_AUTH_ACTION_COUNT`,
    counted from zero again), spends exactly those three unauthenticated actions
    on CreateUser, PutUserPolicy (allow everything) and CreateAccessKey, and from
    then on moto checks the signature and policies of every request. Cached per
    endpoint; re-created when moto was reset.
    """
    admin = _admin(endpoint)
    return admin.access_key, admin.secret_key


def _admin(endpoint: str) -> _Admin:
    import requests

    with _ADMIN_LOCK:
        cached = _ADMIN_CACHE.get(endpoint)
        if cached is not None and _admin_still_valid(cached):
            return cached
        last_error: Exception | None = None
        for _attempt in range(_BOOTSTRAP_ATTEMPTS):
            name = f"vault-double-admin-{_random_base62(8)}"
            try:
                resp = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"3", timeout=10)
                resp.raise_for_status()
                iam = _aws_client(endpoint, "iam", "AKIAVAULTDOUBLEBOOT", "bootstrap")
                user = iam.create_user(UserName=name)["User"]
                iam.put_user_policy(UserName=name, PolicyName="admin", PolicyDocument=_ALLOW_ALL)
                key = iam.create_access_key(UserName=name)["AccessKey"]
            except Exception as exc:  # noqa: BLE001 - another client may have used a free action
                last_error = exc
                continue
            admin = _Admin(
                access_key=key["AccessKeyId"],
                secret_key=key["SecretAccessKey"],
                arn=user["Arn"],
                sts=_aws_client(endpoint, "sts", key["AccessKeyId"], key["SecretAccessKey"]),
            )
            if _admin_still_valid(admin):
                _ADMIN_CACHE[endpoint] = admin
                return admin
            last_error = RuntimeError("moto did not accept the freshly created admin key")
        raise RuntimeError(f"could not bootstrap an admin user in moto at {endpoint}: {last_error}")


def _client_error_text(exc: Exception) -> tuple[str, str]:
    """(code, Go-SDK-like message) for a botocore exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {}) or {}
        meta = response.get("ResponseMetadata", {}) or {}
        code = str(err.get("Code", "Unknown"))
        message = str(err.get("Message", ""))
        status = meta.get("HTTPStatusCode", 400)
        request_id = meta.get("RequestId", "")
        return code, f"{code}: {message}\n\tstatus code: {status}, request id: {request_id}"
    return type(exc).__name__, f"RequestError: {exc}"


_AWS_LOCK = threading.Lock()
_AWS_CACHE: dict[str, _Aws] = {}


def _aws_for(endpoint: str) -> _Aws:
    """The shared admin-side AWS access for `endpoint` (rebuilt when the admin user changed)."""
    admin = _admin(endpoint)
    with _AWS_LOCK:
        aws = _AWS_CACHE.get(endpoint)
        if aws is None or aws.access_key != admin.access_key:
            aws = _AWS_CACHE[endpoint] = _Aws(endpoint, admin)
        return aws


class _Aws:
    """boto3 access to moto as the double's admin user."""

    def __init__(self, endpoint: str, admin: _Admin) -> None:
        self.endpoint = endpoint
        self.access_key, self.secret_key = admin.access_key, admin.secret_key
        self.iam = _aws_client(endpoint, "iam", self.access_key, self.secret_key)
        self.sts = _aws_client(endpoint, "sts", self.access_key, self.secret_key)
        self._role_lock = threading.Lock()
        self._role_arns: dict[str, str] = {}

    def ensure_role(self, name: str) -> str:
        """ARN of a moto IAM role `name` (trusting anyone, allowed everything); create if missing."""
        with self._role_lock:
            if name in self._role_arns:
                return self._role_arns[name]
            try:
                arn = self.iam.get_role(RoleName=name)["Role"]["Arn"]
            except Exception as exc:  # noqa: BLE001
                if _client_error_text(exc)[0] != "NoSuchEntity":
                    raise
                try:
                    arn = self.iam.create_role(
                        RoleName=name,
                        AssumeRolePolicyDocument=_TRUST_ANYONE,
                        MaxSessionDuration=43200,
                        Description="created by tests/support/vault_double.py",
                    )["Role"]["Arn"]
                    self.iam.put_role_policy(RoleName=name, PolicyName="allow-all", PolicyDocument=_ALLOW_ALL)
                except Exception as exc2:  # noqa: BLE001
                    if _client_error_text(exc2)[0] != "EntityAlreadyExists":
                        raise
                    arn = self.iam.get_role(RoleName=name)["Role"]["Arn"]
            self._role_arns[name] = arn
            return arn

    def create_iam_user(self, user_name: str) -> tuple[str, str]:
        self.iam.create_user(UserName=user_name, Path="/")
        try:
            self.iam.put_user_policy(
                UserName=user_name, PolicyName=f"vault-{user_name}"[:128], PolicyDocument=_ALLOW_ALL
            )
            key = self.iam.create_access_key(UserName=user_name)["AccessKey"]
        except Exception:
            self.delete_iam_user(user_name, missing_ok=True)
            raise
        return key["AccessKeyId"], key["SecretAccessKey"]

    def delete_iam_user(self, user_name: str, *, missing_ok: bool) -> None:
        """Vault's pathUserRollback: keys, policies, groups, then the user."""
        try:
            keys = self.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]
            for key in keys:
                self.iam.delete_access_key(UserName=user_name, AccessKeyId=key["AccessKeyId"])
            for policy in self.iam.list_user_policies(UserName=user_name)["PolicyNames"]:
                self.iam.delete_user_policy(UserName=user_name, PolicyName=policy)
            for policy in self.iam.list_attached_user_policies(UserName=user_name)["AttachedPolicies"]:
                self.iam.detach_user_policy(UserName=user_name, PolicyArn=policy["PolicyArn"])
            for group in self.iam.list_groups_for_user(UserName=user_name)["Groups"]:
                self.iam.remove_user_from_group(UserName=user_name, GroupName=group["GroupName"])
            self.iam.delete_user(UserName=user_name)
        except Exception as exc:  # noqa: BLE001
            if missing_ok and _client_error_text(exc)[0] == "NoSuchEntity":
                return
            raise


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    double: VaultDouble


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped double refuses everything
    server_version = "VaultDouble/1.0"
    sys_version = ""
    timeout = 15  # socket timeout for reading the request

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _dispatch(self) -> None:
        self.server.double._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_HEAD = do_PATCH = do_OPTIONS = _dispatch


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        total = 0
        for _ in range(10_000):
            line = handler.rfile.readline(65537)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline(65537)
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise _VaultError(413, ["request body too large"])
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline(65537)
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    if length > MAX_BODY_BYTES:
        raise _VaultError(413, ["request body too large"])
    return handler.rfile.read(length) if length > 0 else b""


# --------------------------------------------------------------------------- the double


class VaultDouble:
    """A Vault HTTP API double on 127.0.0.1 whose AWS engine issues real moto credentials."""

    def __init__(self, aws_endpoint: str, *, root_token: str = "root-token", latency: float = 0.0) -> None:
        self.aws_endpoint = aws_endpoint.rstrip("/")
        self.root_token = root_token
        self.url = ""
        # runtime switches
        self.token_field = "security_token"
        self.no_lease_sts = False
        self.sealed = False
        self.latency = float(latency)
        self.enforce_min_sts_ttl = True
        # observation
        self.issued: list[Issued] = []
        self.revocations: collections.Counter[str] = collections.Counter()
        self.revoke_calls: list[str] = []
        self.prefix_revoke_calls: list[str] = []  # prefixes sent to revoke-prefix / revoke-force
        self.expired: list[str] = []  # leases ended by expire_lease() or lazy expiry
        self.requests: list[tuple[str, str]] = []
        # parallel to `requests`: the token each request carried ("" for none) and the full record
        self.request_tokens: list[str] = []
        self.seen: list[SeenRequest] = []
        self.internal_errors: list[str] = []  # tracebacks of bugs in the double (answered 500)
        # state
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._tokens: dict[str, _Token] = {}
        self._roles: dict[tuple[str, str, str], _Role] = {}
        self._mounts: set[tuple[str, str]] = set()
        self._namespaces: set[str] = {""}
        self._ns_ids: dict[str, str] = {}
        self._leases: dict[str, _Lease] = {}
        self._faults: list[_Fault] = []
        self._latencies: dict[str, float] = {}  # path_contains -> seconds (set_latency)
        self._static_roles: dict[tuple[str, str, str], _StaticRole] = {}
        self._pending_roles: list[_Role] = []
        self._aws: _Aws | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._cluster_id = str(uuid.uuid4())
        self._tokens[root_token] = _Token(
            token=root_token,
            policies=ALL_POLICIES,
            sudo=True,
            root=True,
            accessor=_random_base62(24),
            creation_time=time.time(),
            display_name="root",
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> VaultDouble:
        if self._started:
            return self
        self._aws = _aws_for(self.aws_endpoint)
        for role in self._pending_roles:
            self._materialise_role(role)
        self._pending_roles.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.double = self
        self._server = server
        port = server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"vault-double-{port}",
            daemon=True,
        )
        self._thread.start()
        self._started = True
        self._wait_until_serving(timeout=5.0)
        return self

    def _wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        for _ in range(200):
            if time.monotonic() >= deadline:
                break
            try:
                with socket.create_connection(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), timeout=1.0) as sock:
                    sock.sendall(f"GET /v1/sys/health HTTP/1.0\r\n{_PROBE_HEADER}: 1\r\n\r\n".encode())
                    sock.settimeout(2.0)
                    if sock.recv(12).startswith(b"HTTP/1."):
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"vault double did not start serving within {timeout}s: {last}")

    def stop(self) -> None:
        self._stop_event.set()  # releases "hang" faults and latency sleeps
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10.0)
        self._started = False

    def __enter__(self) -> VaultDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ configuration

    def add_token(
        self,
        token: str,
        *,
        policies: Iterable[str] = DEFAULT_POLICIES,
        sudo: bool = False,
        display_name: str = "token",
        entity_id: str = "",
        ttl: int = 0,
        renewable: bool | None = None,
    ) -> str:
        """Register a service token; returns its accessor.

        `ttl` > 0 gives it an expiry (lookup-self shows `ttl`/`expire_time`; an expired token gets 403)
        and makes it renewable unless `renewable=False`; renew-self then extends it by `ttl` (or the
        increment asked for). `display_name` and `entity_id` show in lookup-self, renew-self's auth block
        and (display_name) the iam_user user names, as Vault's do.
        """
        policies = frozenset(policies)
        unknown = policies - ALL_POLICIES
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; known: {sorted(ALL_POLICIES)}")
        now = time.time()
        record = _Token(
            token=token,
            policies=policies,
            sudo=sudo,
            root=False,
            accessor=_random_base62(24),
            creation_time=now,
            display_name=display_name,
            entity_id=entity_id,
            ttl=int(ttl),
            renewable=bool(ttl > 0) if renewable is None else bool(renewable),
            expire_time=now + ttl if ttl > 0 else None,
        )
        with self._lock:
            self._tokens[token] = record
        return record.accessor

    def token_accessor(self, token: str) -> str:
        """The accessor of a known token (KeyError if unknown)."""
        with self._lock:
            return self._tokens[token].accessor

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def add_role(
        self,
        mount: str,
        name: str,
        credential_type: str,
        *,
        namespace: str = "",
        role_arns: list[str] | None = None,
        default_sts_ttl: int | None = None,
        max_sts_ttl: int | None = None,
        legacy: bool = False,
        iam_lease_ttl: int = 3600,
        iam_max_ttl: int = 86400,
        policy_arns: list[str] | None = None,
        iam_groups: list[str] | None = None,
        user_path: str = "/",
        mfa_serial_number: str = "",
    ) -> None:
        """Create (or replace) a dynamic role. `mfa_serial_number` (session_token roles) makes issuing
        require the `mfa_code` set with set_mfa_code(). The other extras only show in `GET .../roles/`."""
        if credential_type not in CREDENTIAL_TYPES:
            raise ValueError(f"credential_type must be one of {CREDENTIAL_TYPES}, not {credential_type!r}")
        mount = _norm_ns(mount)
        namespace = _norm_ns(namespace)
        if not mount or not name or "/" in name:
            raise ValueError("mount must be non-empty and name must be a single path segment")
        role = _Role(
            namespace=namespace,
            mount=mount,
            name=name,
            credential_type=credential_type,
            role_arns=list(role_arns or []),
            default_sts_ttl=default_sts_ttl,
            max_sts_ttl=max_sts_ttl,
            legacy=legacy,
            iam_lease_ttl=int(iam_lease_ttl),
            iam_max_ttl=int(iam_max_ttl),
            policy_arns=list(policy_arns or []),
            iam_groups=list(iam_groups or []),
            user_path=user_path,
            mfa_serial_number=mfa_serial_number,
        )
        if mfa_serial_number and credential_type != "session_token":
            raise ValueError("mfa_serial_number is only valid for session_token roles")
        if credential_type == "assumed_role" and not role.role_arns:
            if self._aws is not None:
                self._materialise_role(role)
            else:
                self._pending_roles.append(role)
        with self._lock:
            self._roles[(namespace, mount, name)] = role
            self._mounts.add((namespace, mount))
            parts = namespace.split("/") if namespace else []
            for i in range(1, len(parts) + 1):
                self._namespaces.add("/".join(parts[:i]))

    def _materialise_role(self, role: _Role) -> None:
        assert self._aws is not None
        slug = re.sub(r"[^A-Za-z0-9+=,.@_-]", "-", "/".join(p for p in (role.namespace, role.mount, role.name) if p))
        arn = self._aws.ensure_role(f"vault-double-{slug}"[:64])
        role.role_arns = [arn]

    def set_mfa_code(self, role: str, code: str | None, *, mount: str = "aws", namespace: str = "") -> None:
        """The TOTP code the MFA device of session_token `role` accepts (None: accept nothing)."""
        with self._lock:
            found = self._roles[(_norm_ns(namespace), _norm_ns(mount), role)]
            if not found.mfa_serial_number:
                raise ValueError(f"role {role!r} has no mfa_serial_number")
            found.mfa_code = code

    def add_static_role(
        self,
        name: str,
        *,
        mount: str = "aws",
        namespace: str = "",
        rotation_period: int = 3600,
        username: str | None = None,
    ) -> str:
        """A static role (Vault 1.14+ `static-roles/{name}`) backed by a real moto IAM user and key.

        Creates the IAM user (default name `vault-static-{name}`) with an allow-all inline policy and
        one access key; `GET {mount}/static-creds/{name}` hands the same key to every reader until
        rotate_static_role(). Needs a started double. Returns the IAM user name.
        """
        if self._aws is None:
            raise RuntimeError("add_static_role needs a started VaultDouble")
        mount, namespace = _norm_ns(mount), _norm_ns(namespace)
        if not mount or not name or "/" in name:
            raise ValueError("mount must be non-empty and name must be a single path segment")
        if rotation_period < 1:
            raise ValueError("rotation_period must be >= 1 second")
        user = username or f"vault-static-{name}"[:64]
        access_key, secret_key = self._aws.create_iam_user(user)
        role = _StaticRole(
            namespace=namespace,
            mount=mount,
            name=name,
            username=user,
            rotation_period=int(rotation_period),
            access_key=access_key,
            secret_key=secret_key,
            last_rotation=time.time(),
        )
        with self._lock:
            self._static_roles[(namespace, mount, name)] = role
            self._mounts.add((namespace, mount))
            parts = namespace.split("/") if namespace else []
            for i in range(1, len(parts) + 1):
                self._namespaces.add("/".join(parts[:i]))
        return user

    def rotate_static_role(self, name: str, *, mount: str = "aws", namespace: str = "") -> tuple[str, str]:
        """Rotate a static role like Vault does: a new access key in moto, then the old one deleted.

        Returns the new (access_key, secret_key).
        """
        assert self._aws is not None
        with self._lock:
            role = self._static_roles[(_norm_ns(namespace), _norm_ns(mount), name)]
        new = self._aws.iam.create_access_key(UserName=role.username)["AccessKey"]
        old = role.access_key
        with self._lock:
            role.access_key, role.secret_key = new["AccessKeyId"], new["SecretAccessKey"]
            role.last_rotation = time.time()
        self._aws.iam.delete_access_key(UserName=role.username, AccessKeyId=old)
        return role.access_key, role.secret_key

    def set_latency(self, seconds: float, *, path_contains: str = "") -> None:
        """Delay the answer to every request whose path contains `path_contains` by `seconds`.

        Unlike `latency` (which waits before handling), the request is carried out first and only the
        answer waits: a credential asked for is issued, and its lease exists, even when the client gave
        up before the answer came. `seconds <= 0` removes the delay for that `path_contains`. Capped at
        LATENCY_MAX_SECONDS; stop() releases waiting answers.
        """
        with self._lock:
            if seconds <= 0:
                self._latencies.pop(path_contains, None)
            else:
                self._latencies[path_contains] = min(float(seconds), LATENCY_MAX_SECONDS)

    def inject_fault(
        self,
        kind: str | int,
        count: int = 1,
        path_contains: str = "",
        *,
        interval: float = 1.0,
        location: str = "",
        megabytes: float = 1.0,
        status: int = 307,
    ) -> None:
        """Make the next `count` requests whose path contains `path_contains` fail as `kind`.

        kind: an HTTP status (answered with Vault's error body for it), or
          "hang"      read the request, answer nothing (released after HANG_MAX_SECONDS or by stop());
          "malformed" 200 with truncated JSON; "html" 200 with a captive-portal HTML page;
          "missing_access_key" the real answer (credential issued) without data.access_key;
          "reset"     TCP reset instead of an answer;
          "drip"      the real answer (credential issued), headers at once, then the body one byte
                      every `interval` seconds (cut off after DRIP_MAX_SECONDS; stop() ends it);
          "redirect"  `status` (307) with `Location`: `location` plus the request's path and query when
                      `location` has no path of its own (as a standby redirects to the active node),
                      else `location` as given; nothing is issued;
          "huge"      200, Content-Type application/json, a valid envelope `megabytes` MB long; nothing
                      is issued.
        """
        if isinstance(kind, bool) or not isinstance(kind, (int, str)):
            raise TypeError("kind must be an HTTP status int or one of " + ", ".join(FAULT_KINDS))
        if isinstance(kind, int) and not 100 <= kind <= 599:
            raise ValueError(f"bad status {kind}")
        if isinstance(kind, str) and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS} or an int status")
        if count < 1:
            raise ValueError("count must be >= 1")
        if kind == "redirect" and not location:
            raise ValueError("a redirect fault needs location=")
        if kind == "drip" and interval <= 0:
            raise ValueError("interval must be > 0")
        with self._lock:
            self._faults.append(
                _Fault(
                    kind=kind,
                    remaining=int(count),
                    path_contains=path_contains,
                    interval=float(interval),
                    location=location,
                    size=int(megabytes * (1 << 20)),
                    status=int(status),
                )
            )

    def clear_faults(self) -> None:
        """Drop pending faults and every set_latency() delay."""
        with self._lock:
            self._faults.clear()
            self._latencies.clear()

    # ------------------------------------------------------------------ observation / time

    def live_leases(self) -> set[str]:
        self._reap_expired()
        with self._lock:
            return set(self._leases)

    def expire_lease(self, lease_id: str) -> None:
        """Simulate Vault's expiry manager revoking `lease_id`; no-op if unknown.

        An iam_user lease's user is deleted in moto; not counted in `revocations`.
        """
        with self._lock:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                return
            self.expired.append(lease_id)
        self._destroy_backend(lease, force=True)

    def backdate_lease(self, lease_id: str, seconds: float) -> None:
        """Pretend `lease_id` was issued (and last renewed) `seconds` earlier; its expire_time is kept.

        Lets tests reach "past the max TTL" on renew and Vault's 5-minute rule
        for iam_user users deleted out of band, without waiting.
        """
        with self._lock:
            lease = self._leases[lease_id]
            lease.issue_time -= seconds
            if lease.last_renewal is not None:
                lease.last_renewal -= seconds

    def namespace_id(self, namespace: str) -> str:
        """The made-up 5-char namespace ID used as lease-id suffix ("" for the root namespace)."""
        namespace = _norm_ns(namespace)
        if not namespace:
            return ""
        with self._lock:
            if namespace not in self._ns_ids:
                self._ns_ids[namespace] = _random_base62(5)
            return self._ns_ids[namespace]

    @property
    def aws_admin(self) -> tuple[str, str]:
        """(access_key_id, secret_access_key) of the admin user the double uses in moto."""
        return aws_admin_credentials(self.aws_endpoint)

    def _reap_expired(self) -> None:
        now = time.time()
        with self._lock:
            due = [lease for lease in self._leases.values() if lease.expire_time <= now]
            for lease in due:
                del self._leases[lease.lease_id]
                self.expired.append(lease.lease_id)
        for lease in due:
            self._destroy_backend(lease, force=True)

    def _destroy_backend(self, lease: _Lease, *, force: bool) -> None:
        """Vault's secretAccessKeysRevoke: iam_user -> delete in AWS; STS -> nothing."""
        if lease.credential_type != "iam_user" or not lease.iam_user_name or self._aws is None:
            return
        try:
            self._aws.delete_iam_user(lease.iam_user_name, missing_ok=False)
        except Exception as exc:  # noqa: BLE001
            if force:
                return
            code, text = _client_error_text(exc)
            if code == "NoSuchEntity" and time.time() - lease.issue_time > MIN_AWS_USER_ROLLBACK_AGE:
                return
            raise _VaultError(
                400,
                [f"failed to revoke entry: resp: (*logical.Response)(nil) err: Error deleting user: {text}"],
            ) from exc

    # ------------------------------------------------------------------ request handling

    def _handle(self, h: _Handler) -> None:
        method = h.command.upper()
        split = urlsplit(h.path)
        if h.headers.get(_PROBE_HEADER):  # start()'s readiness probe: not a client request
            self._send(h, method, _Reply(200, {"ok": True}))
            return
        seen = SeenRequest(
            method=method,
            path=split.path,
            token=self._raw_token(h.headers),
            headers={k: v for k, v in h.headers.items()},
            at=time.time(),
        )
        with self._lock:
            self.requests.append((method, split.path))
            self.request_tokens.append(seen.token)
            self.seen.append(seen)
        try:
            body = _read_body(h)
        except _VaultError as exc:
            self._send(h, method, _Reply(exc.status, {"errors": exc.errors}))
            return
        except (OSError, ValueError):
            self._reset(h)
            return
        if self.latency > 0:
            self._stop_event.wait(min(self.latency, HANG_MAX_SECONDS))
        fault = self._take_fault(split.path)
        if fault is not None and fault.kind not in ("missing_access_key", "drip"):
            self._apply_fault(h, method, fault, split)
            return
        try:
            reply = self._route(method, split, h.headers, body)
        except _VaultError as exc:
            reply = _Reply(exc.status, {"errors": exc.errors})
        except Exception:  # noqa: BLE001 - a bug in the double: answer like Vault's 500
            with self._lock:
                self.internal_errors.append(traceback.format_exc())
            log.exception("vault double internal error")
            reply = _Reply(500, {"errors": ["internal error"]})
        delay = self._latency_for(split.path)
        if delay > 0:  # the work is done (lease registered); only the answer waits
            self._stop_event.wait(delay)
        if fault is not None and fault.kind == "drip":
            self._send_drip(h, method, reply, fault.interval)
            return
        if fault is not None:  # missing_access_key
            if reply.status == 200 and isinstance(reply.payload, dict):
                data = reply.payload.get("data")
                if isinstance(data, dict):
                    data.pop("access_key", None)
                else:
                    reply.payload["data"] = {}
            else:
                reply = _Reply(200, _envelope(data={}))
        self._send(h, method, reply)

    def _latency_for(self, path: str) -> float:
        with self._lock:
            matching = [seconds for needle, seconds in self._latencies.items() if needle in path]
        return max(matching, default=0.0)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _apply_fault(self, h: _Handler, method: str, fault: _Fault, split: Any) -> None:
        kind = fault.kind
        path = split.path
        if isinstance(kind, int):
            if kind == 429:
                errors = [f'request path "{path.removeprefix("/v1/")}": rate limit quota exceeded']
            else:
                errors = _FAULT_MESSAGES.get(kind, [f"injected fault {kind}"])
            self._send(h, method, _Reply(kind, {"errors": errors}))
        elif kind == "hang":
            self._stop_event.wait(HANG_MAX_SECONDS)
            h.close_connection = True  # answer nothing; the connection is closed
        elif kind == "malformed":
            raw = (
                b'{"request_id": "'
                + str(uuid.uuid4()).encode()
                + b'", "lease_id": "aws/creds/x/'
                + b'", "data": {"access_key": '
            )
            self._send(h, method, _Reply(200, raw=raw))
        elif kind == "html":
            raw = (
                b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>"
                b"<body><h1>Network login required</h1><p>Please authenticate.</p></body></html>\n"
            )
            self._send(h, method, _Reply(200, content_type="text/html; charset=utf-8", raw=raw))
        elif kind == "reset":
            self._reset(h)
        elif kind == "redirect":
            target = urlsplit(fault.location)
            location = fault.location
            if target.path in ("", "/"):
                location = fault.location.rstrip("/") + split.path + (f"?{split.query}" if split.query else "")
            try:
                h.send_response(fault.status)
                h.send_header("Cache-Control", "no-store")
                h.send_header("Location", location)
                h.send_header("Content-Length", "0")
                h.end_headers()
            except OSError:
                h.close_connection = True
        elif kind == "huge":
            self._send_huge(h, method, fault.size)

    @staticmethod
    def _send_huge(h: _Handler, method: str, size: int) -> None:
        head = json.dumps(_envelope(data={"padding": ""}))
        prefix, _, suffix = head.partition('"padding": ""')
        prefix_b = (prefix + '"padding": "').encode()
        suffix_b = ('"' + suffix).encode()
        pad = max(size - len(prefix_b) - len(suffix_b), 0)
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(prefix_b) + pad + len(suffix_b)))
            h.end_headers()
            if method == "HEAD":
                return
            h.wfile.write(prefix_b)
            chunk = b"x" * 65536
            left = pad
            while left > 0:
                n = min(left, len(chunk))
                h.wfile.write(chunk[:n])
                left -= n
            h.wfile.write(suffix_b)
        except OSError:
            h.close_connection = True

    def _send_drip(self, h: _Handler, method: str, reply: _Reply, interval: float) -> None:
        body = reply.raw if reply.raw is not None else json.dumps(reply.payload).encode() if reply.payload else b""
        deadline = time.monotonic() + DRIP_MAX_SECONDS
        try:
            h.send_response(reply.status)
            h.send_header("Cache-Control", "no-store")
            h.send_header("Content-Type", reply.content_type)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.flush()
            if method == "HEAD":
                return
            for i in range(len(body)):
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                if i + 1 < len(body) and (self._stop_event.wait(interval) or time.monotonic() >= deadline):
                    break
        except OSError:
            pass
        h.close_connection = True

    @staticmethod
    def _reset(h: _Handler) -> None:
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        except OSError:
            pass
        h.close_connection = True

    @staticmethod
    def _send(h: _Handler, method: str, reply: _Reply) -> None:
        if reply.raw is not None:
            body = reply.raw
        elif reply.payload is None:
            body = b""
        else:
            body = json.dumps(reply.payload).encode("utf-8")
        try:
            h.send_response(reply.status)
            h.send_header("Cache-Control", "no-store")
            if body or reply.status not in (204, 202):
                h.send_header("Content-Type", reply.content_type)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if method != "HEAD" and body:
                h.wfile.write(body)
        except OSError:
            h.close_connection = True

    # ------------------------------------------------------------------ routing

    def _split_namespace(self, header_ns: str, rel: str) -> tuple[str, str]:
        ns = header_ns
        with self._lock:
            known = set(self._namespaces)
        for _ in range(64):
            head, sep, tail = rel.partition("/")
            if not sep or not head:
                break
            candidate = _join_ns(ns, head)
            if candidate not in known or candidate == ns:
                break
            ns, rel = candidate, tail
        return ns, rel

    def _route(self, method: str, split: Any, headers: Any, body: bytes) -> _Reply:
        path = re.sub(r"/{2,}", "/", unquote(split.path))
        query = parse_qs(split.query, keep_blank_values=True)
        if not path.startswith("/v1/"):
            raise _VaultError(404, [])
        if method == "GET" and _truthy(query.get("list")):
            method = "LIST"
        if method == "LIST" and not path.endswith("/"):
            path += "/"
        ns, rel = self._split_namespace(_norm_ns(headers.get("X-Vault-Namespace")), path[len("/v1/") :])
        if rel.rstrip("/") == "sys/health" and method in ("GET", "HEAD"):
            return self._health(query)
        if self.sealed:
            raise _VaultError(503, ["Vault is sealed"])
        self._reap_expired()
        token = self._authenticate(headers)
        if method in ("GET", "LIST", "HEAD"):
            params: dict[str, Any] = {k: v[-1] for k, v in query.items()}
        else:
            params = self._parse_body(headers, body)

        if rel == "sys/leases/lookup":
            self._allow(method, ("PUT", "POST"))
            self._require(token, "lookup")
            return self._lease_lookup(ns, params)
        if rel.startswith("sys/leases/lookup/"):
            self._allow(method, ("LIST",))
            self._require_sudo(token)
            return self._lease_list(ns, rel[len("sys/leases/lookup/") :])
        for op in ("renew", "revoke"):
            base = f"sys/leases/{op}"
            if rel == base or rel.startswith(base + "/"):
                self._allow(method, ("PUT", "POST"))
                self._require(token, op)
                url_id = rel[len(base) + 1 :] if rel.startswith(base + "/") else ""
                lease_id = str(params.get("lease_id") or url_id or "")
                if op == "renew":
                    return self._lease_renew(ns, lease_id, params.get("increment"))
                return self._lease_revoke(ns, lease_id, params)
        for op in ("revoke-prefix", "revoke-force"):
            base = f"sys/leases/{op}/"
            if rel.startswith(base):
                self._allow(method, ("PUT", "POST"))
                self._require_sudo(token)
                return self._lease_revoke_prefix(ns, rel[len(base) :], force=op == "revoke-force", params=params)
        if rel == "auth/token/lookup-self":
            self._allow(method, ("GET", "POST", "PUT"))
            self._require(token, "lookup")
            return _Reply(200, _envelope(data=self._token_data(token)))
        if rel == "auth/token/renew-self":
            self._allow(method, ("POST", "PUT"))
            return self._renew_self(token, params.get("increment"))
        parts = rel.split("/")
        config_kind = parts[-2] if len(parts) >= 3 else ""
        if config_kind in ("roles", "static-roles"):
            listing = method == "LIST" and parts[-1] == ""
            mount = "/".join(parts[:-2])
            if listing or parts[-1]:
                with self._lock:
                    mounted = (ns, mount) in self._mounts
                self._require(token, "roles")
                if not mounted:
                    raise _VaultError(404, [f'no handler for route "{rel}"'])
                self._allow(method, ("GET", "LIST"))
                return self._role_config(ns, mount, parts[-2], "" if listing else parts[-1])
        if len(parts) >= 3 and parts[-2] == "static-creds" and parts[-1]:
            mount = "/".join(parts[:-2])
            with self._lock:
                mounted = (ns, mount) in self._mounts
            self._require(token, "creds")
            if not mounted:
                raise _VaultError(404, [f'no handler for route "{rel}"'])
            self._allow(method, ("GET",))
            return self._static_creds(ns, mount, parts[-1])
        if len(parts) >= 3 and parts[-2] in ("creds", "sts") and parts[-1]:
            mount = "/".join(parts[:-2])
            with self._lock:
                mounted = (ns, mount) in self._mounts
            if not mounted:
                self._require(token, "creds")
                raise _VaultError(404, [f'no handler for route "{rel}"'])
            self._allow(method, ("GET", "POST", "PUT"))
            self._require(token, "creds")
            return self._issue(ns, mount, parts[-2], parts[-1], params, token)
        raise _VaultError(404, [f'no handler for route "{rel}"'])

    @staticmethod
    def _allow(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise _VaultError(405, ["unsupported operation"])

    @staticmethod
    def _raw_token(headers: Any) -> str:
        raw = headers.get("X-Vault-Token") or ""
        if not raw:
            auth = headers.get("Authorization") or ""
            if auth.lower().startswith("bearer "):
                raw = auth[7:].strip()
        return raw

    def _authenticate(self, headers: Any) -> _Token:
        raw = self._raw_token(headers)
        with self._lock:
            token = self._tokens.get(raw) if raw else None
        if token is None or token.expired(time.time()):
            raise _VaultError(403, ["permission denied"])
        return token

    @staticmethod
    def _require(token: _Token, policy: str) -> None:
        if not token.root and policy not in token.policies:
            raise _VaultError(403, ["permission denied"])

    @staticmethod
    def _require_sudo(token: _Token) -> None:
        if not (token.root or token.sudo):
            raise _VaultError(403, ["permission denied"])

    @staticmethod
    def _parse_body(headers: Any, body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        ctype = (headers.get("Content-Type") or "").lower()
        if "application/x-www-form-urlencoded" in ctype:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            return {k: v[-1] for k, v in form.items()}
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise _VaultError(400, [f"failed to parse JSON input: {exc}"]) from exc
        if parsed is None:
            return {}
        if not isinstance(parsed, dict):
            raise _VaultError(400, ["failed to parse JSON input: expected a JSON object"])
        return parsed

    def _health(self, query: dict[str, list[str]]) -> _Reply:
        status = 200
        if self.sealed:
            status = int((query.get("sealedcode") or ["503"])[-1])
        elif query.get("activecode"):
            status = int(query["activecode"][-1])
        return _Reply(
            status,
            {
                "initialized": True,
                "sealed": bool(self.sealed),
                "standby": False,
                "performance_standby": False,
                "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled",
                "server_time_utc": int(time.time()),
                "version": "1.15.6+double",
                "cluster_name": "vault-double",
                "cluster_id": self._cluster_id,
            },
        )

    # ------------------------------------------------------------------ tokens

    def _token_policies(self, token: _Token) -> list[str]:
        if token.root:
            return ["root"]
        return sorted(token.policies | ({"sudo"} if token.sudo else set()))

    @staticmethod
    def _token_ttl(token: _Token, now: float) -> int:
        return 0 if token.expire_time is None else max(int(token.expire_time - now), 0)

    def _token_data(self, token: _Token) -> dict[str, Any]:
        now = time.time()
        data = {
            "accessor": token.accessor,
            "creation_time": int(token.creation_time),
            "creation_ttl": token.ttl,
            "display_name": token.display_name,
            "entity_id": token.entity_id,
            "expire_time": rfc3339(token.expire_time),
            "explicit_max_ttl": 0,
            "id": token.token,
            "issue_time": rfc3339(token.creation_time),
            "meta": None,
            "num_uses": 0,
            "orphan": True,
            "path": "auth/token/root" if token.root else "auth/token/create",
            "policies": self._token_policies(token),
            "renewable": token.renewable,
            "ttl": self._token_ttl(token, now),
            "type": "service",
        }
        if token.last_renewal is not None:
            data["last_renewal"] = rfc3339(token.last_renewal)
            data["last_renewal_time"] = int(token.last_renewal)
        return data

    def _token_auth(self, token: _Token) -> dict[str, Any]:
        policies = self._token_policies(token)
        return {
            "client_token": token.token,
            "accessor": token.accessor,
            "policies": policies,
            "token_policies": policies,
            "identity_policies": None,
            "metadata": None,
            "lease_duration": self._token_ttl(token, time.time()),
            "renewable": token.renewable,
            "entity_id": token.entity_id,
            "token_type": "service",
            "orphan": True,
            "mfa_requirement": None,
            "num_uses": 0,
        }

    def _renew_self(self, token: _Token, increment_raw: Any) -> _Reply:
        """Vault: a non-expiring token renews as a no-op; a non-renewable one with a TTL -> 400."""
        if token.expire_time is not None:
            if not token.renewable:
                raise _VaultError(400, ["lease is not renewable"])
            increment = parse_duration(increment_raw, "increment") or token.ttl
            now = time.time()
            with self._lock:
                token.expire_time = now + increment
                token.last_renewal = now
        return _Reply(200, _envelope(auth=self._token_auth(token)))

    # ------------------------------------------------------------------ role configuration, static roles

    def _role_config(self, ns: str, mount: str, kind: str, name: str) -> _Reply:
        with self._lock:
            if kind == "roles":
                table: dict[tuple[str, str, str], Any] = self._roles
            else:
                table = self._static_roles
            if not name:
                keys = sorted(n for (r_ns, r_mount, n) in table if (r_ns, r_mount) == (ns, mount))
                if not keys:
                    raise _VaultError(404, [])
                return _Reply(200, _envelope(data={"keys": keys}))
            role = table.get((ns, mount, name))
            if role is None:
                raise _VaultError(404, [])
            if kind == "roles":
                return _Reply(200, _envelope(data=role.config()))
            return _Reply(
                200,
                _envelope(data={"name": role.name, "username": role.username, "rotation_period": role.rotation_period}),
            )

    def _static_creds(self, ns: str, mount: str, name: str) -> _Reply:
        with self._lock:
            role = self._static_roles.get((ns, mount, name))
            if role is None:
                raise _VaultError(404, [])  # Vault: no stored credentials -> nil response
            now = time.time()
            expiration = role.last_rotation + role.rotation_period
            data = {
                "access_key": role.access_key,
                "secret_key": role.secret_key,
                "expiration": rfc3339(expiration),
                "last_vault_rotation": rfc3339(role.last_rotation),
                "rotation_period": role.rotation_period,
                "ttl": max(int(expiration - now), 0),
            }
        return _Reply(200, _envelope(data=data))

    # ------------------------------------------------------------------ AWS engine

    def _token_fields(self, value: str | None) -> dict[str, str | None]:
        mode = self.token_field
        if mode == "session_token":
            return {"session_token": value}
        if mode == "both":
            return {"security_token": value, "session_token": value}
        return {"security_token": value}

    def _new_lease_id(self, ns: str, request_path: str) -> str:
        lease_id = f"{request_path}/{_random_base62(24)}"
        if ns:
            lease_id += "." + self.namespace_id(ns)
        return lease_id

    def _issue(
        self, ns: str, mount: str, endpoint: str, role_name: str, params: dict[str, Any], token: _Token
    ) -> _Reply:
        with self._lock:
            role = self._roles.get((ns, mount, role_name))
        if role is None:
            raise _VaultError(400, [f'Role "{role_name}" not found'])
        ctype = role.credential_type
        if role.legacy and (endpoint == "sts") == (ctype == "iam_user"):
            raise _VaultError(
                400,
                [
                    f"attempted to retrieve {ctype} credentials through the {endpoint} path;"
                    " this is not allowed for legacy roles"
                ],
            )
        assert self._aws is not None, "VaultDouble.start() was not called"
        request_path = f"{mount}/{endpoint}/{role_name}"
        display = token.display_name
        if ctype == "iam_user":
            return self._issue_iam_user(ns, role, request_path, display)
        return self._issue_sts(ns, role, request_path, params, display)

    def _issue_iam_user(self, ns: str, role: _Role, request_path: str, display: str) -> _Reply:
        assert self._aws is not None
        now_unix = int(time.time())
        user_name = f"vault-{display}-{role.name[:42]}-{now_unix}-{_random_base62(20)}"[:64]
        try:
            access_key, secret_key = self._aws.create_iam_user(user_name)
        except _VaultError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._aws_error("Error creating IAM user", exc) from exc
        issued_at = time.time()
        duration = min(role.iam_lease_ttl, role.iam_max_ttl)
        lease_id = self._new_lease_id(ns, request_path)
        lease = _Lease(
            lease_id=lease_id,
            namespace=ns,
            mount=role.mount,
            role=role.name,
            credential_type="iam_user",
            issue_time=issued_at,
            expire_time=issued_at + duration,
            last_renewal=None,
            renewable=True,
            max_ttl=role.iam_max_ttl,
            iam_lease_ttl=role.iam_lease_ttl,
            iam_user_name=user_name,
        )
        record = Issued(
            lease_id=lease_id,
            path=request_path,
            namespace=ns,
            mount=role.mount,
            role=role.name,
            credential_type="iam_user",
            access_key=access_key,
            secret_key=secret_key,
            session_token=None,
            iam_user_name=user_name,
            ttl=duration,
            renewable=True,
            issued_at=issued_at,
        )
        with self._lock:
            self._leases[lease_id] = lease
            self.issued.append(record)
        data: dict[str, Any] = {"access_key": access_key, "secret_key": secret_key}
        data.update(self._token_fields(None))
        return _Reply(200, _envelope(lease_id=lease_id, renewable=True, lease_duration=duration, data=data))

    def _sts_ttl(self, role: _Role, params: dict[str, Any]) -> int:
        requested = parse_duration(params.get("ttl"), "ttl")
        if not requested:  # absent or 0 -> role default
            ttl = role.default_sts_ttl or DEFAULT_STS_TTL
        else:
            ttl = requested
        if role.max_sts_ttl and ttl > role.max_sts_ttl:
            ttl = role.max_sts_ttl
        return ttl

    def _issue_sts(self, ns: str, role: _Role, request_path: str, params: dict[str, Any], display: str) -> _Reply:
        assert self._aws is not None
        ctype = role.credential_type
        prefix = "Error assuming role" if ctype == "assumed_role" else "Error generating STS keys"
        ttl = self._sts_ttl(role, params)
        role_arn: str | None = None
        session_name = ""
        if ctype == "assumed_role":
            requested_arn = str(params.get("role_arn") or "")
            if not requested_arn:
                if len(role.role_arns) != 1:
                    raise _VaultError(400, ["did not supply a role_arn parameter and unable to determine one"])
                role_arn = role.role_arns[0]
            elif requested_arn not in role.role_arns:
                raise _VaultError(
                    400, [f'role_arn "{requested_arn}" not in allowed role arns for Vault role "{role.name}"']
                )
            else:
                role_arn = requested_arn
            session_name = _SESSION_NAME_BAD_CHARS.sub("_", str(params.get("role_session_name") or ""))
            if not session_name:
                session_name = f"vault-{int(time.time())}-{_random_base62(20)}"[:32]
        if self.enforce_min_sts_ttl and ttl < MIN_STS_TTL:
            op = {
                "assumed_role": "AssumeRole",
                "federation_token": "GetFederationToken",
                "session_token": "GetSessionToken",
            }[ctype]
            raise _VaultError(
                400,
                [
                    f"{prefix}: InvalidParameter: 1 validation error(s) found.\n"
                    f"- minimum field value of {MIN_STS_TTL}, {op}Input.DurationSeconds.\n"
                ],
            )
        mfa: dict[str, str] = {}
        if ctype == "session_token" and role.mfa_serial_number:
            mfa = self._check_mfa(role, str(params.get("mfa_code") or ""))
        arn: str | None = None
        try:
            if ctype == "assumed_role":
                out = self._aws.sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=ttl)
                creds = out["Credentials"]
                arn = out["AssumedRoleUser"]["Arn"]
            else:
                if ctype == "federation_token":
                    fed_name = f"vault-{int(time.time())}-{_random_base62(20)}"[:32]
                    self._aws.sts.get_federation_token(Name=fed_name, DurationSeconds=ttl, Policy=_ALLOW_ALL)
                    backing_session = fed_name
                else:
                    self._aws.sts.get_session_token(DurationSeconds=ttl, **mfa)
                    backing_session = f"vault-session-{_random_base62(18)}"
                # moto answers GetFederationToken/GetSessionToken with one fixed
                # example key that its own auth rejects; mint unique, working
                # temporary credentials from a backing role instead.
                backing_arn = self._aws.ensure_role("vault-double-sts-backing")
                creds = self._aws.sts.assume_role(
                    RoleArn=backing_arn, RoleSessionName=backing_session, DurationSeconds=ttl
                )["Credentials"]
        except _VaultError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._aws_error(prefix, exc) from exc
        issued_at = time.time()
        duration = max(ttl - 1, 0)
        data: dict[str, Any] = {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"]}
        data.update(self._token_fields(creds["SessionToken"]))
        if ctype == "assumed_role":
            data["arn"] = arn
        no_lease = self.no_lease_sts
        if ctype != "session_token" or no_lease:
            data["ttl"] = duration
        lease_id = "" if no_lease else self._new_lease_id(ns, request_path)
        record = Issued(
            lease_id=lease_id,
            path=request_path,
            namespace=ns,
            mount=role.mount,
            role=role.name,
            credential_type=ctype,
            access_key=creds["AccessKeyId"],
            secret_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            iam_user_name=None,
            ttl=duration,
            renewable=False,
            issued_at=issued_at,
            arn=arn,
        )
        with self._lock:
            if not no_lease:
                self._leases[lease_id] = _Lease(
                    lease_id=lease_id,
                    namespace=ns,
                    mount=role.mount,
                    role=role.name,
                    credential_type=ctype,
                    issue_time=issued_at,
                    expire_time=issued_at + duration,
                    last_renewal=None,
                    renewable=False,
                    max_ttl=None,
                    iam_lease_ttl=None,
                    iam_user_name=None,
                )
            self.issued.append(record)
        return _Reply(
            200,
            _envelope(lease_id=lease_id, renewable=False, lease_duration=0 if no_lease else duration, data=data),
        )

    @staticmethod
    def _check_mfa(role: _Role, code: str) -> dict[str, str]:
        """What AWS answers GetSessionToken for a user whose policy demands MFA, as Vault relays it (400)."""

        def denied(message: str) -> _VaultError:
            return _VaultError(
                400,
                [f"Error generating STS keys: AccessDenied: {message}\n\tstatus code: 403, request id: {uuid.uuid4()}"],
            )

        if not code:
            raise denied(
                "MultiFactorAuthentication failed, must provide both MFA serial number and one time pass code."
            )
        if role.mfa_code is None or not secrets.compare_digest(code, role.mfa_code):
            raise denied("MultiFactorAuthentication failed with invalid MFA one time pass code.")
        return {"SerialNumber": role.mfa_serial_number, "TokenCode": code}

    @staticmethod
    def _aws_error(prefix: str, exc: Exception) -> _VaultError:
        code, text = _client_error_text(exc)
        status = 502 if code in _THROTTLE_CODES else 400
        return _VaultError(status, [f"{prefix}: {text}"])

    # ------------------------------------------------------------------ sys/leases

    def _find_lease(self, ns: str, lease_id: str) -> _Lease | None:
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is None or lease.namespace != ns:
            return None
        return lease

    def _lease_lookup(self, ns: str, params: dict[str, Any]) -> _Reply:
        lease_id = str(params.get("lease_id") or "")
        if not lease_id:
            raise _VaultError(400, ["missing lease ID"])
        lease = self._find_lease(ns, lease_id)
        if lease is None:
            raise _VaultError(400, ["invalid lease"])
        now = time.time()
        data = {
            "id": lease.lease_id,
            "issue_time": rfc3339(lease.issue_time),
            "expire_time": rfc3339(lease.expire_time),
            "last_renewal": rfc3339(lease.last_renewal),
            "renewable": lease.renewable,
            "ttl": max(int(lease.expire_time - now), 0),
        }
        return _Reply(200, _envelope(data=data))

    def _lease_list(self, ns: str, prefix: str) -> _Reply:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        keys: set[str] = set()
        with self._lock:
            ids = [lease.lease_id for lease in self._leases.values() if lease.namespace == ns]
        for lease_id in ids:
            if not lease_id.startswith(prefix):
                continue
            rest = lease_id[len(prefix) :]
            head, sep, _tail = rest.partition("/")
            keys.add(head + "/" if sep else head)
        if not keys:
            raise _VaultError(404, [])
        return _Reply(200, _envelope(data={"keys": sorted(keys)}))

    def _lease_renew(self, ns: str, lease_id: str, increment_raw: Any) -> _Reply:
        if not lease_id:
            raise _VaultError(400, ["lease_id must be specified"])
        increment = parse_duration(increment_raw, "increment") or 0
        with self._lock:
            lease = self._find_lease(ns, lease_id)
            if lease is None:
                raise _VaultError(400, ["lease not found"])
            now = time.time()
            if lease.expire_time <= now:
                raise _VaultError(400, ["lease expired"])
            if not lease.renewable:
                raise _VaultError(400, ["lease is not renewable"])
            ttl = increment if increment > 0 else int(lease.iam_lease_ttl or 0)
            warnings: list[str] = []
            if lease.max_ttl:
                max_valid = lease.issue_time + lease.max_ttl
                if now >= max_valid:
                    raise _VaultError(400, ["past the max TTL, cannot renew"])
                if max_valid - ttl < now:
                    capped = int(max_valid - now)
                    warnings.append(
                        f'TTL of "{format_go_duration(ttl)}" exceeded the effective max_ttl of '
                        f'"{format_go_duration(capped)}"; TTL value is capped accordingly'
                    )
                    ttl = capped
            lease.expire_time = now + ttl
            lease.last_renewal = now
        return _Reply(
            200,
            _envelope(lease_id=lease_id, renewable=True, lease_duration=ttl, data=None, warnings=warnings),
        )

    def _lease_revoke(self, ns: str, lease_id: str, params: dict[str, Any]) -> _Reply:
        if not lease_id:
            raise _VaultError(400, ["lease_id must be specified"])
        with self._lock:
            self.revoke_calls.append(lease_id)
        self._revoke_one(ns, lease_id, force=False)
        sync = params.get("sync", True)
        if sync is False or (isinstance(sync, str) and sync.lower() in ("false", "0")):
            return _Reply(202, None)
        return _Reply(204, None)

    def _revoke_one(self, ns: str, lease_id: str, *, force: bool) -> bool:
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or lease.namespace != ns:
                return False
            del self._leases[lease_id]  # claimed: a concurrent revoke sees "unknown" -> 204
        try:
            self._destroy_backend(lease, force=force)
        except _VaultError:
            with self._lock:
                self._leases[lease_id] = lease
            raise
        with self._lock:
            self.revocations[lease_id] += 1
        return True

    def _lease_revoke_prefix(self, ns: str, prefix: str, *, force: bool, params: dict[str, Any]) -> _Reply:
        with self._lock:
            self.prefix_revoke_calls.append(prefix)
            exact = self._leases.get(prefix)
        if exact is not None and exact.namespace == ns and not prefix.endswith("/"):
            targets = [prefix]
        else:
            if not prefix.endswith("/"):
                prefix += "/"
            with self._lock:
                targets = [
                    lease.lease_id
                    for lease in self._leases.values()
                    if lease.namespace == ns and lease.lease_id.startswith(prefix)
                ]
        for lease_id in targets:
            self._revoke_one(ns, lease_id, force=force)
        sync = params.get("sync", True)
        if not force and (sync is False or (isinstance(sync, str) and sync.lower() in ("false", "0"))):
            return _Reply(202, None)
        return _Reply(204, None)


# --------------------------------------------------------------------------- standard setup and runner


def setup_standard_roles(vault: VaultDouble) -> None:
    """The demo/test setup: mount aws (deploy, ci, fed, sess) and namespace team1 aws/deploy."""
    vault.add_role("aws", "deploy", "assumed_role")
    vault.add_role("aws", "ci", "iam_user", iam_lease_ttl=3600)
    vault.add_role("aws", "fed", "federation_token")
    vault.add_role("aws", "sess", "session_token")
    vault.add_role("aws", "deploy", "assumed_role", namespace="team1")


def start_moto_server(timeout: float = 15.0) -> tuple[Any, str]:
    """Start `ThreadedMotoServer("127.0.0.1", 0, verbose=False)` with a bounded wait.

    Returns (server, "http://127.0.0.1:PORT"). The caller stops the server.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
    starter.start()
    starter.join(timeout)
    if starter.is_alive():
        raise RuntimeError(f"moto server did not start within {timeout}s")
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.vault_double",
        description="Run moto + the Vault double with the standard demo roles until SIGTERM/SIGINT.",
    )
    parser.add_argument("--ready-file", required=True, help="JSON written atomically once ready")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every Vault request")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit by itself after this long")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    moto, endpoint = start_moto_server()
    try:
        with VaultDouble(endpoint, latency=args.latency_ms / 1000.0) as vault:
            setup_standard_roles(vault)
            admin_key, admin_secret = vault.aws_admin
            _write_json_atomic(
                args.ready_file,
                {
                    "vault_addr": vault.url,
                    "token": vault.root_token,
                    "aws_endpoint": endpoint,
                    "pid": os.getpid(),
                    "aws_region": AWS_REGION,
                    "aws_admin_access_key_id": admin_key,
                    "aws_admin_secret_access_key": admin_secret,
                },
            )
            deadline = time.monotonic() + args.max_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                stop.wait(0.2)
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
