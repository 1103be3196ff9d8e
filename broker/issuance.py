"""Issue, record, cache and serve credentials: everything `credential-process` does past a cache hit.

The order of events on a miss, and why:
1. take the per-request lock (single flight: one Vault request however many processes ask);
2. look in the cache again (another process may have issued while we waited);
3. renew a renewable cached lease that nears its end instead of minting a new IAM user;
4. otherwise issue in a forked worker in its own session, so that a killed caller cannot leave a
   lease Vault issued unrecorded: the worker writes an intent row, asks Vault, then records the
   lease and deletes the intent in one transaction (no transaction is open during the Vault call);
   if recording fails it revokes the lease in Vault and says so;
5. print only after the lease is committed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update

from broker import cache, crypto, errors, locks, output, profiles, settings
from broker.errors import BrokerError, LeaseNotRecorded, UsageError, VaultError, VaultTimeout
from broker.models import Intent, Lease, OutboxEntry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from broker.app import App
    from broker.vault import Issued

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssueRequest:
    profile: str | None
    vault_addr: str
    namespace: str
    mount: str
    role: str
    ttl: int | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    credential_type: str | None = None
    region: str | None = None
    # a one-time MFA code for session_token roles with an MFA device; not part of the cache key
    mfa_code: str | None = field(default=None, repr=False, compare=False)

    @property
    def endpoint(self) -> str:
        return cache.endpoint_for(self.credential_type, self.ttl, self.role_arn)

    @property
    def cache_key(self) -> str:
        return cache.cache_key(self.vault_addr, self.namespace, self._fields())

    def _fields(self) -> cache.RequestFields:
        return {name: getattr(self, name) for name in cache.REQUEST_FIELDS}

    def describe(self) -> str:
        where = f"profile {self.profile!r}" if self.profile else "request"
        return f"{where} ({self.mount}/{self.endpoint}/{self.role})"


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    expires_at: int
    lease_row: int | None = None

    def process_json(self) -> str:
        return cache.render_process_json(self.access_key_id, self.secret_key, self.session_token, self.expires_at)


def build_request(app: App, profile_name: str | None, flags: cache.RequestFields) -> IssueRequest:
    """The effective request from a profile and/or command-line flags, every part validated."""
    profile = None
    if profile_name:
        profile = profiles.get(app, profile_name)
    merged = cache.merge_request(profile.request_fields() if profile else None, flags)
    if not merged["mount"] or not merged["role"]:
        raise UsageError("say which credential: --profile NAME, or --mount MOUNT and --role ROLE")
    return IssueRequest(
        profile=profile_name,
        vault_addr=app.env.vault_addr,
        namespace=app.env.vault_namespace(
            profiles.check_path(merged["namespace"], "namespace") if merged["namespace"] else None
        ),
        mount=profiles.check_path(merged["mount"], "mount"),
        role=profiles.check_role(merged["role"]),
        ttl=merged["ttl"],
        role_arn=profiles.check_role_arn(merged["role_arn"]) if merged["role_arn"] else None,
        role_session_name=(
            profiles.check_session_name(merged["role_session_name"]) if merged["role_session_name"] else None
        ),
        credential_type=(
            profiles.check_credential_type(merged["credential_type"]) if merged["credential_type"] else None
        ),
        region=profile.region if profile else None,
        mfa_code=check_mfa_code(flags["mfa_code"]) if flags.get("mfa_code") else None,
    )


def check_mfa_code(code: str) -> str:
    if not (isinstance(code, str) and len(code) == 6 and code.isascii() and code.isdigit()):
        raise UsageError("invalid MFA code: the 6 digits your MFA device shows")
    return code


MFA_NEEDED = "MultiFactorAuthentication failed, must provide both MFA serial number and one time pass code"


def issue_asking_for_mfa(app: App, request: IssueRequest, *, store_secret: bool) -> Credential:
    """issue_detached; when the role turns out to need an MFA code that was not given, ask for one on
    the controlling terminal (/dev/tty: credential_process has no stdin) and issue again, or say how."""
    try:
        return issue_detached(app, request, store_secret=store_secret)
    except VaultError as exc:
        if request.mfa_code or MFA_NEEDED not in str(exc):
            raise
    code = prompt_on_tty(f"broker: MFA code for {request.describe()}: ")
    if code is None:
        raise UsageError(
            f"{request.describe()} needs an MFA code and there is no terminal to ask on: pass --mfa-code CODE"
        )
    return issue_detached(app, replace(request, mfa_code=check_mfa_code(code.strip())), store_secret=store_secret)


def prompt_on_tty(prompt: str) -> str | None:
    """Ask on the controlling terminal and read one line (not echoed); None when there is none."""
    import termios

    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    with os.fdopen(fd, "r+b", buffering=0) as tty:
        try:  # echo off before the prompt shows, so that nothing typed after it is echoed
            old = termios.tcgetattr(fd)
            new = termios.tcgetattr(fd)
            new[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSADRAIN, new)
        except termios.error:
            old = None
        tty.write(prompt.encode())
        try:
            line = tty.readline(64)
        finally:
            if old is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, old)
            tty.write(b"\n")
    return line.decode(errors="replace").strip() or None


def obtain(app: App, request: IssueRequest, *, use_cache: bool = True) -> Credential:
    """A credential for `request`: from the cache when one is fresh enough, else newly issued."""
    if not use_cache:
        return issue_asking_for_mfa(app, request, store_secret=False)
    log.debug("cache key: %s", request.cache_key)
    hit = cached(app, request)
    if hit:
        log.info("hit: %s: cached credential %s", request.describe(), output.mask_key(hit.access_key_id))
        return hit
    if log.isEnabledFor(logging.INFO):
        with app.sqlite() as conn:
            log.info("miss: %s: %s", request.describe(), cache.miss_reason(conn, request.cache_key, time.time()))
    path = locks.lock_path(app.db_path, request.cache_key)
    log.debug("issuance lock: %s", path)
    waiting = time.monotonic()
    with locks.hold(path, locks.ISSUANCE_WAIT_SECONDS, f"issuance lock for {request.describe()}"):
        log.info("issuance lock taken after %.3fs", time.monotonic() - waiting)
        hit = cached(app, request)
        if hit:
            log.info("hit: served from cache after waiting for another issuance")
            return hit
        renewed = renew_cached(app, request)
        if renewed:
            return renewed
        try:
            return issue_asking_for_mfa(app, request, store_secret=True)
        except VaultError as exc:
            fallback = cached(app, request, fresh_only=False)
            if fallback is None:
                raise
            log.warning("%s; serving the cached credential, valid until %s", exc, cache.iso_utc(fallback.expires_at))
            return fallback


def cached(app: App, request: IssueRequest, *, fresh_only: bool = True) -> Credential | None:
    """The cached credential for `request`, if any may be served (fresh_only=False: any with at
    least a minute left, for when Vault cannot issue). A secret the current key cannot open is
    wiped: a lost key means re-issuing, never a crash."""
    key = app.key(create=False)
    if key is None:
        return None
    now = time.time()
    with app.sqlite() as conn:
        if fresh_only:
            row = cache.find_hit(conn, request.cache_key, now)
        else:
            row = conn.execute(cache.HIT_QUERY, (request.cache_key, int(now))).fetchone()
            row = row if row and cache.still_valid(row[4], now) else None
    if row is None:
        return None
    row_id, access_key_id, blob, _started, expires_at = row
    opened = crypto.unseal(key, blob, access_key_id)
    if opened is None:
        log.warning("a cached secret does not open with the current key; discarding it and issuing anew")
        with app.transaction() as session:
            session.execute(update(Lease).where(Lease.id == row_id).values(secret=None, cache_key=None))
        return None
    return Credential(access_key_id, opened[0], opened[1], expires_at, row_id)


def renew_cached(app: App, request: IssueRequest) -> Credential | None:
    """Extend a renewable (iam_user) cached lease instead of minting another IAM user. Falls back
    to None (issue anew) when Vault refuses or caps the renewal short of a fresh credential."""
    now = int(time.time())
    with app.transaction(read_only=True) as session:
        row = session.scalars(
            select(Lease)
            .where(
                Lease.cache_key == request.cache_key,
                Lease.state == "active",
                Lease.renewable.is_(True),
                Lease.secret.is_not(None),
                Lease.lease_id != "",
                Lease.expires_at > now + cache.MIN_REMAINING,
            )
            .order_by(Lease.expires_at.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    key = app.key(create=False)
    opened = crypto.unseal(key, row.secret, row.access_key_id) if key else None
    if opened is None:
        return None
    try:
        duration = app.vault.renew(row.lease_id, row.namespace)
    except VaultError as exc:
        log.info("renewal of %s refused (%s); issuing a new credential", row.lease_id, exc)
        return None
    expires_at = now + duration
    # Capped by the max TTL: shorter than its last term and inside botocore's refresh window.
    lifetime = row.expires_at - (row.renewed_at or row.issued_at)
    if duration < min(cache.REFRESH_WINDOW, lifetime) or not cache.reusable(now, expires_at, now):
        log.info("renewal of %s capped at %ss by its max TTL; issuing a new credential", row.lease_id, duration)
        with app.transaction() as session:  # the ledger keeps Vault's real end; renewed_at stays, so no hit
            session.execute(update(Lease).where(Lease.id == row.id).values(expires_at=expires_at))
            enqueue_for_fleet(app, session, row.id)
        return None
    with app.transaction() as session:
        session.execute(update(Lease).where(Lease.id == row.id).values(expires_at=expires_at, renewed_at=now))
        enqueue_for_fleet(app, session, row.id)
    log.info("renewed %s until %s", row.lease_id, cache.iso_utc(expires_at))
    return Credential(row.access_key_id, opened[0], opened[1], expires_at, row.id)


# -- issuance in a worker that outlives its caller ------------------------------------------------


def issue_detached(app: App, request: IssueRequest, *, store_secret: bool) -> Credential:
    """Run issue_and_record in a worker in its own session and wait for its answer. If this
    process is killed meanwhile, the worker still records (or revokes) the lease.

    A single-threaded caller forks (cheap: everything is imported already). A multi-threaded one
    (the credential server) starts a fresh `broker _issue` process instead: fork() copies only the
    calling thread, and with it whatever locks and SQLite state the other threads were holding.
    """
    import sys
    import threading

    if threading.active_count() > 1:
        return _issue_in_subprocess(app, request, store_secret)
    sys.stdout.flush()
    sys.stderr.flush()
    # No SQLite connection may cross fork(): POSIX locks are not inherited, but SQLite's memory of
    # holding them is, and another process could then delete the WAL under the worker's feet.
    app.engine.dispose()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_fd)
        try:
            os.setsid()
            text = worker_answer(app, request, store_secret)
            with os.fdopen(write_fd, "w") as pipe:
                pipe.write(text)
        except BaseException:  # noqa: S110 - the caller is gone; the ledger already holds the outcome
            pass
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return _from_worker(text)


def worker_answer(app: App, request: IssueRequest, store_secret: bool) -> str:
    """Issue and record; the outcome as the JSON the caller decodes with _from_worker."""
    try:
        credential = issue_and_record(app, request, store_secret=store_secret)
        payload: dict[str, object] = {"credential": _credential_dict(credential)}
    except BrokerError as exc:
        payload = {"error": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as an internal error
        payload = {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
    return json.dumps(payload)


def _issue_in_subprocess(app: App, request: IssueRequest, store_secret: bool) -> Credential:
    import subprocess
    import sys
    from dataclasses import asdict

    env = dict(os.environ)  # the worker is this command again: the same environment
    if app.ledger_url:
        env["BROKER_LEDGER_URL"] = app.ledger_url  # by environment, never on a command line
    job = json.dumps({"request": asdict(request), "store_secret": store_secret})
    worker = subprocess.run(
        [sys.executable, "-m", "broker", "--db", app.db_path, "_issue"],
        input=job,
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,
        check=False,
    )
    if worker.stderr:
        sys.stderr.write(worker.stderr)
    return _from_worker(worker.stdout)


def _credential_dict(credential: Credential) -> dict[str, object]:
    return {
        "access_key_id": credential.access_key_id,
        "secret_key": credential.secret_key,
        "session_token": credential.session_token,
        "expires_at": credential.expires_at,
        "lease_row": credential.lease_row,
    }


def _from_worker(text: str) -> Credential:
    try:
        payload = json.loads(text)
    except ValueError:
        raise BrokerError(
            "the issuing worker died without an answer; see `broker leases` for what was recorded"
        ) from None
    if "credential" in payload:
        return Credential(**payload["credential"])
    error_class = getattr(errors, payload.get("error", ""), None)
    if not (isinstance(error_class, type) and issubclass(error_class, BrokerError)):
        raise BrokerError(f"internal error while issuing: {payload.get('message')}")
    raise error_class(payload.get("message", ""))


def issue_and_record(app: App, request: IssueRequest, *, store_secret: bool) -> Credential:
    session_name = request.role_session_name
    if session_name is None and request.credential_type in (None, "assumed_role"):
        session_name = generate_session_name()
    intent_id = _write_intent(app, request, session_name)
    try:
        if request.credential_type == "static":
            issued = app.vault.issue_static(namespace=request.namespace, mount=request.mount, role=request.role)
        else:
            issued = app.vault.issue(
                namespace=request.namespace,
                mount=request.mount,
                role=request.role,
                endpoint=request.endpoint,
                ttl=request.ttl,
                role_arn=request.role_arn,
                role_session_name=session_name,
                credential_type=request.credential_type,
                mfa_code=request.mfa_code,
            )
    except VaultTimeout:
        raise  # Vault may have issued: the intent row stays as the record of that
    except BaseException:
        _clear_intent(app, intent_id)
        raise
    try:
        key = app.key(create=True) if store_secret else None
        row_id = _record(app, request, issued, intent_id, key)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, BrokerError) else type(exc).__name__
        revoked = bool(issued.lease_id) and app.vault.revoke_quietly(issued.lease_id, issued.namespace)
        outcome = "revoked it in Vault" if revoked else "could NOT revoke it in Vault: revoke it by hand"
        raise LeaseNotRecorded(
            f"could not record lease {issued.lease_id or '(no lease id)'} ({issued.access_key_id}) in the ledger: "
            f"{reason}; {outcome}"
        ) from None
    log.info(
        "issued %s lease %s, %s, until %s",
        issued.credential_type,
        issued.lease_id or "(none)",
        output.mask_key(issued.access_key_id),
        cache.iso_utc(issued.expires_at),
    )
    return Credential(issued.access_key_id, issued.secret_key, issued.session_token, issued.expires_at, row_id)


def generate_session_name() -> str:
    """Unique per issuance, so one leaked session can be denied by aws:userid = ROLE_ID:NAME."""
    user = "".join(c for c in settings.os_user() if c.isascii() and (c.isalnum() or c in "+=,.@_-"))[:20] or "user"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"broker-{user}-{stamp}-{secrets.token_hex(4)}"[:64]


def _write_intent(app: App, request: IssueRequest, session_name: str | None) -> int:
    with app.transaction() as session:
        intent = Intent(
            profile=request.profile,
            vault_addr=request.vault_addr,
            namespace=request.namespace,
            mount=request.mount,
            role=request.role,
            endpoint=request.endpoint,
            role_session_name=session_name,
            started_at=int(time.time()),
            pid=os.getpid(),
            host=app.env.host_name(),
        )
        session.add(intent)
        session.flush()
        return intent.id


def _clear_intent(app: App, intent_id: int) -> None:
    try:
        with app.transaction() as session:
            session.execute(delete(Intent).where(Intent.id == intent_id))
    except BrokerError as exc:
        log.warning("could not clear issuance intent %s: %s", intent_id, exc)


def _record(app: App, request: IssueRequest, issued: Issued, intent_id: int, key: bytes | None) -> int:
    with app.transaction() as session:
        row = Lease(
            lease_id=issued.lease_id,
            cache_key=request.cache_key if key else None,
            profile=request.profile,
            vault_addr=request.vault_addr,
            namespace=issued.namespace,
            mount=request.mount,
            role=request.role,
            endpoint=request.endpoint,
            credential_type=issued.credential_type,
            access_key_id=issued.access_key_id,
            role_session_name=issued.role_session_name,
            role_arn=request.role_arn,
            renewable=issued.renewable,
            issued_at=issued.issued_at,
            expires_at=issued.expires_at,
            state="active",
            secret=crypto.seal(key, issued.secret_key, issued.session_token, issued.access_key_id) if key else None,
            host=app.env.host_name(),
            os_user=settings.os_user(),
        )
        session.add(row)
        session.flush()
        session.execute(delete(Intent).where(Intent.id == intent_id))
        enqueue_for_fleet(app, session, row.id)
        return row.id


def enqueue_for_fleet(app: App, session: Session, lease_row: int) -> None:
    """Mark a lease row for the fleet ledger's outbox (only when a ledger URL is configured)."""
    if app.ledger_url:
        session.merge(OutboxEntry(lease_row=lease_row, enqueued_at=int(time.time())))
