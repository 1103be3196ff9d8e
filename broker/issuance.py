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

from broker import cache, crypto, errors, identity, locks, output, profiles, settings
from broker.errors import BrokerError, IssuanceInBackground, LeaseNotRecorded, UsageError, VaultError, VaultTimeout
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
    account_id: str | None = None  # the profile's --account-id: recorded when Vault's answer has no ARN
    # a one-time MFA code for session_token roles with an MFA device; not part of the cache key
    mfa_code: str | None = field(default=None, repr=False, compare=False)

    @property
    def endpoint(self) -> str:
        return cache.endpoint_for(self.credential_type, self.ttl, self.role_arn)

    @property
    def cache_key(self) -> str:
        return cache.cache_key(self.vault_addr, self.namespace, self._fields(), self.profile)

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
    account_id: str | None = None  # known AWS account (AccountId in the credential_process JSON)

    def process_json(self) -> str:
        return cache.render_process_json(
            self.access_key_id, self.secret_key, self.session_token, self.expires_at, self.account_id
        )


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
        account_id=profile.account_id if profile else None,
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
    newest = _newest_row(app)
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
    with locks.hold(path, wait_seconds(app), f"issuance lock for {request.describe()}"):
        log.info("issuance lock taken after %.3fs", time.monotonic() - waiting)
        hit = cached(app, request, newer_than=newest)
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


def wait_seconds(app: App) -> float:
    """How long this caller waits for an issuance: `BROKER_WAIT`, default 60 s."""
    try:
        return app.env.wait_seconds(locks.ISSUANCE_WAIT_SECONDS)
    except ValueError:
        raise UsageError(f"BROKER_WAIT={app.env.wait!r} is not a number of seconds between 0 and 3600") from None


def _newest_row(app: App) -> int:
    with app.sqlite() as conn:
        return cache.newest_row(conn)


def cached(
    app: App, request: IssueRequest, *, fresh_only: bool = True, newer_than: int | None = None
) -> Credential | None:
    """The cached credential for `request`, if any may be served (fresh_only=False: any with at
    least a minute left, for when Vault cannot issue; newer_than: see cache.find_hit). A secret the
    current key cannot open is wiped: a lost key means re-issuing, never a crash."""
    key = app.key(create=False)
    if key is None:
        return None
    now = time.time()
    with app.sqlite() as conn:
        if fresh_only:
            row = cache.find_hit(conn, request.cache_key, now, newer_than)
        else:
            row = conn.execute(cache.HIT_QUERY, (request.cache_key, int(now))).fetchone()
            row = row if row and cache.still_valid(row[4], now) else None
    if row is None:
        return None
    row_id, access_key_id, blob, _started, expires_at, lease_id, token_blob, account_id = row
    opened = crypto.open_credential(key, lease_id, request.cache_key, access_key_id, expires_at, blob, token_blob)
    if opened is None:
        log.warning("a cached secret does not open with the current key; discarding it and issuing anew")
        with app.transaction() as session:
            session.execute(
                update(Lease).where(Lease.id == row_id).values(secret=None, sealed_token=None, cache_key=None)
            )
        return None
    return Credential(access_key_id, opened[0], opened[1], expires_at, row_id, account_id)


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
    if key is None:
        return None
    opened = crypto.open_credential(
        key, row.lease_id, row.cache_key, row.access_key_id, row.expires_at, row.secret, row.sealed_token
    )
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
        # The ledger keeps Vault's real end; renewed_at stays, and the secret (sealed for the old
        # expiry, and never served again) is wiped rather than resealed.
        with app.transaction() as session:
            session.execute(
                update(Lease).where(Lease.id == row.id).values(expires_at=expires_at, secret=None, sealed_token=None)
            )
            enqueue_for_fleet(app, session, row.id)
        return None
    # The sealed secret is bound to its row's expiry (crypto.row_aad): reseal it for the new one in
    # the same transaction, unless it was wiped meanwhile (a revoke, `profile forget`).
    secret, sealed_token = crypto.seal_credential(
        key, row.lease_id, row.cache_key, row.access_key_id, expires_at, *opened
    )
    with app.transaction() as session:
        session.execute(update(Lease).where(Lease.id == row.id).values(expires_at=expires_at, renewed_at=now))
        session.execute(
            update(Lease)
            .where(
                Lease.id == row.id,
                Lease.state == "active",
                Lease.secret.is_not(None),
                Lease.cache_key == row.cache_key,
            )
            .values(secret=secret, sealed_token=sealed_token)
        )
        enqueue_for_fleet(app, session, row.id)
    log.info("renewed %s until %s", row.lease_id, cache.iso_utc(expires_at))
    return Credential(row.access_key_id, opened[0], opened[1], expires_at, row.id, row.account_id)


# -- issuance in a worker that outlives its caller ------------------------------------------------


def issue_detached(app: App, request: IssueRequest, *, store_secret: bool) -> Credential:
    """Run issue_and_record in a worker in its own session and wait for its answer at most
    BROKER_WAIT seconds. The worker outlives its caller: if this process gives up or is killed,
    the worker still records (or revokes) the lease the moment Vault answers, and ends by its own
    deadline (worker_deadline). It holds none of the caller's stdio: a reader of the caller's
    stdout sees EOF when the caller exits; its log lines come through a pipe of its own.

    A single-threaded caller forks (cheap: everything is imported already). A multi-threaded one
    (the credential server) starts a fresh `broker _issue` process instead: fork() copies only the
    calling thread, and with it whatever locks and SQLite state the other threads were holding.
    """
    import sys
    import threading

    if threading.active_count() > 1:
        return _issue_in_subprocess(app, request, store_secret)
    wait = wait_seconds(app)
    sys.stdout.flush()
    sys.stderr.flush()
    # No SQLite connection may cross fork(): POSIX locks are not inherited, but SQLite's memory of
    # holding them is, and another process could then delete the WAL under the worker's feet.
    app.engine.dispose()
    answer_read, answer_write = os.pipe()
    log_read, log_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker; it also holds the caller's issuance lock (a shared flock) until it ends
        os.close(answer_read)
        os.close(log_read)
        try:
            os.setsid()
            _detach_stdio(log_write)
            text = worker_answer(app, request, store_secret)
            with os.fdopen(answer_write, "w") as pipe:
                pipe.write(text)
        except BaseException:  # noqa: S110 - the caller is gone; the ledger already holds the outcome
            pass
        os._exit(0)
    os.close(answer_write)
    os.close(log_write)
    answer = _await_worker(answer_read, log_read, wait)
    if answer is None:
        raise IssuanceInBackground(
            f"no credential within BROKER_WAIT={wait:g}s: Vault has not answered {request.describe()} yet; "
            f"the issuance goes on in the background (worker pid {pid}) and records the lease when Vault "
            "answers, so the next call gets it from the cache"
        )
    os.waitpid(pid, 0)
    return _from_worker(answer)


def _detach_stdio(log_fd: int) -> None:
    """The worker's stdin and stdout become /dev/null, its stderr (and so its log lines) a pipe the
    caller copies while it waits. dup2 swaps the descriptors under Python's sys.std* objects."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)


def _await_worker(answer_fd: int, log_fd: int, wait: float) -> str | None:
    """Read the worker's answer, copying its log lines to our stderr, for at most `wait` seconds;
    None when the time ran out first."""
    import selectors
    import sys

    deadline = time.monotonic() + wait
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        selector.register(answer_fd, selectors.EVENT_READ)
        selector.register(log_fd, selectors.EVENT_READ)
        open_fds = {answer_fd, log_fd}
        try:
            while answer_fd in open_fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                for ready, _events in selector.select(left):
                    fd = int(ready.fd)
                    data = os.read(fd, 65536)
                    if not data:
                        selector.unregister(fd)
                        open_fds.discard(fd)
                    elif fd == answer_fd:
                        chunks.append(data)
                    else:
                        sys.stderr.buffer.write(data)
                        sys.stderr.flush()
        finally:
            for fd in (answer_fd, log_fd):
                os.close(fd)
    return b"".join(chunks).decode()


def worker_deadline(app: App) -> None:
    """The worker's own deadline: past the issuance timeout and the retries (plus time to record),
    SIGALRM raises VaultTimeout there. The intent row stays (Vault may have issued): `doctor`
    shows it and `broker reconcile --vault-list` finds the lease."""
    import math
    import signal

    vault_settings = app.vault.settings
    limit = vault_settings.issue_timeout * 2 + vault_settings.retry_seconds + 15  # a legacy role asks twice

    def expired(_signum: int, _frame: object) -> None:
        raise VaultTimeout(f"the issuing worker gave up after {limit:g}s; Vault may have issued: see `broker doctor`")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(math.ceil(limit))


def worker_answer(app: App, request: IssueRequest, store_secret: bool) -> str:
    """Issue and record; the outcome as the JSON the caller decodes with _from_worker."""
    try:
        worker_deadline(app)
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

    wait = wait_seconds(app)
    env = dict(os.environ)  # the worker is this command again: the same environment
    if app.ledger_url:
        env["BROKER_LEDGER_URL"] = app.ledger_url  # by environment, never on a command line
    job = json.dumps({"request": asdict(request), "store_secret": store_secret})
    worker = subprocess.Popen(
        [sys.executable, "-m", "broker", "--db", app.db_path, "_issue"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = worker.communicate(job, timeout=wait)
    except subprocess.TimeoutExpired:  # left running: it records the lease when Vault answers
        raise IssuanceInBackground(
            f"no credential within BROKER_WAIT={wait:g}s for {request.describe()}; the issuance goes on in the "
            f"background (worker pid {worker.pid})"
        ) from None
    if err:
        sys.stderr.write(err)
    return _from_worker(out)


def _credential_dict(credential: Credential) -> dict[str, object]:
    return {
        "access_key_id": credential.access_key_id,
        "secret_key": credential.secret_key,
        "session_token": credential.session_token,
        "expires_at": credential.expires_at,
        "lease_row": credential.lease_row,
        "account_id": credential.account_id,
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
    who = identity.token_identity(app)  # cached per token; a failed lookup records no identity
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
    _disarm_deadline()  # Vault answered: recording must not be cut short
    try:
        key = app.key(create=True) if store_secret else None
        row_id = _record(app, request, issued, intent_id, key, who)
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
    return Credential(
        issued.access_key_id,
        issued.secret_key,
        issued.session_token,
        issued.expires_at,
        row_id,
        account_of(issued, request),
    )


def _disarm_deadline() -> None:
    import signal

    signal.alarm(0)


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


def account_of(issued: Issued, request: IssueRequest) -> str | None:
    """The AWS account: from the ARN in Vault's answer, else the profile's --account-id, else unknown."""
    from broker.vault import account_of_arn

    return account_of_arn(issued.arn) or request.account_id


def _record(
    app: App, request: IssueRequest, issued: Issued, intent_id: int, key: bytes | None, who: identity.Identity
) -> int:
    cache_key = request.cache_key if key else None
    secret, sealed_token = (
        crypto.seal_credential(
            key,
            issued.lease_id,
            cache_key,
            issued.access_key_id,
            issued.expires_at,
            issued.secret_key,
            issued.session_token,
        )
        if key
        else (None, None)
    )
    with app.transaction() as session:
        row = Lease(
            lease_id=issued.lease_id,
            cache_key=cache_key,
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
            secret=secret,
            sealed_token=sealed_token,
            host=app.env.host_name(),
            os_user=settings.os_user(),
            display_name=who.display_name,
            entity_id=who.entity_id,
            token_accessor=who.accessor,
            token_policies=who.policies,
            account_id=account_of(issued, request),
            principal_arn=issued.arn,
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
