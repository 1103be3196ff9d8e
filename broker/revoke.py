"""Revoking leases for incident response, in four steps that do not care where targets come from:

1. selection: ledger rows (or, later, fleet rows) become `Target`s;
2. `revoke_targets`: a concurrent engine that revokes each target's lease in Vault, one
   broker.vault.Vault per worker thread, and hands results back in batches as they arrive;
3. marking: each batch is committed to the ledger at once (revoked rows: state, time, who;
   failed rows: the error), so a run killed half-way loses nothing it already revoked;
4. the report, with the honest part about STS: Vault's revoke does not touch AWS for
   assumed_role / federation_token / session_token credentials, which stay valid until they
   expire unless an IAM deny policy cuts them off (`deny_policies`, a pure function).

Secrets go first: before any Vault call, the sealed secret of every selected row is wiped, so
credential-process cannot serve a credential that is being revoked, even if revoking it fails.
Failed rows stay `active` with `revoke_error` set; running the same command again retries exactly
those. Vault answers 204 for unknown and already-revoked leases, so a retry is always safe.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, update

from broker import audit, cache, settings
from broker.errors import BrokerError, UsageError
from broker.models import Lease

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 64
CHUNK = 500  # ids per IN (...) list
POLICY_CHAR_LIMIT = 10_000  # IAM inline role/user policies may hold 10,240 characters
STS_TYPES = cache.STS_TYPES


# -- targets and results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One lease to revoke, from whatever ledger knows it. Public fields only: never a secret."""

    lease_id: str
    namespace: str
    credential_type: str
    access_key_id: str
    role: str
    mount: str
    role_session_name: str | None
    expires_at: int | None
    issued_at: int | None
    vault_addr: str
    role_arn: str | None = None
    profile: str | None = None
    row_id: int | None = None  # the local ledger row; None when no ledger row is known
    state: str = "active"  # at selection time: active, expired, revoked, or unknown (not in the ledger)

    @classmethod
    def unknown(cls, lease_id: str, namespace: str, vault_addr: str):
        """A lease id no ledger row describes: still sent to Vault, reported as not in the ledger."""
        return cls(
            lease_id=lease_id,
            namespace=namespace,
            credential_type="unknown",
            access_key_id="",
            role="",
            mount="",
            role_session_name=None,
            expires_at=None,
            issued_at=None,
            vault_addr=vault_addr,
            state="unknown",
        )

    @property
    def is_sts(self) -> bool:
        return self.credential_type in STS_TYPES

    def public(self) -> dict:
        return {
            "lease_id": self.lease_id,
            "profile": self.profile,
            "mount": self.mount,
            "role": self.role,
            "namespace": self.namespace,
            "credential_type": self.credential_type,
            "access_key_id": self.access_key_id,
            "role_session_name": self.role_session_name,
            "issued_at": audit.iso_or_none(self.issued_at),
            "expires_at": audit.iso_or_none(self.expires_at),
        }


@dataclass(frozen=True)
class Result:
    """What happened to one target. `outcome` is what a report shows."""

    target: Target
    ok: bool
    # revoked | failed | already_revoked | expired | not_in_ledger (revoke sent to Vault) | would_revoke
    outcome: str
    error: str | None = None
    at: int = 0
    expires_at: int | None = None  # a renewal's new end


@dataclass(frozen=True)
class RevokeSelector:
    """Which leases: given lease ids, a role (optionally on one mount), a profile, a mount, or all.
    With `prefix`, Vault revokes server-side everything under <mount>/creds/<role> and
    <mount>/sts/<role> (needs --role and --mount, or --profile)."""

    lease_ids: tuple[str, ...] = ()
    role: str | None = None
    mount: str | None = None
    profile: str | None = None
    all: bool = False
    prefix: bool = False

    def validated(self) -> RevokeSelector:
        kinds = [bool(self.lease_ids), bool(self.role or self.mount), bool(self.profile), self.all]
        if sum(kinds) != 1:
            raise UsageError(
                "say which leases: --lease-id ID (repeatable), --role R [--mount M], --profile P, --mount M or --all"
            )
        if self.prefix and not ((self.role and self.mount) or self.profile):
            raise UsageError("--prefix needs --role R with --mount M, or --profile P")
        if any(not lease_id.strip() for lease_id in self.lease_ids):
            raise UsageError("--lease-id needs a non-empty lease id")
        return self

    def describe(self) -> str:
        if self.lease_ids:
            return f"{len(self.lease_ids)} lease id{'s' if len(self.lease_ids) != 1 else ''}"
        if self.profile:
            return f"profile {self.profile}"
        if self.role:
            return f"role {self.role}" + (f" on mount {self.mount}" if self.mount else " on any mount")
        if self.mount:
            return f"mount {self.mount}"
        return "all active leases"

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class PrefixCall:
    vault_addr: str
    namespace: str
    prefix: str
    ok: bool | None = None
    error: str | None = None


@dataclass
class RevokeReport:
    selector: RevokeSelector
    dry_run: bool
    at: int
    results: list[Result] = field(default_factory=list)
    prefix_calls: list[PrefixCall] = field(default_factory=list)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome == "failed"]

    def counts(self) -> dict:
        counted = Counter(r.outcome for r in self.results)
        return {
            name: counted.get(name, 0)
            for name in ("revoked", "would_revoke", "not_in_ledger", "failed", "already_revoked", "expired")
        }

    def sts_targets(self) -> list[Target]:
        """STS credentials that this run revoked (or would) in Vault but that AWS still honours."""
        return [
            r.target
            for r in self.results
            if r.target.is_sts
            and r.outcome in ("revoked", "would_revoke", "failed")
            and (r.target.expires_at or 0) > self.at
        ]


# -- 1. selection --------------------------------------------------------------------------------------

TARGET_COLUMNS = [
    Lease.id,
    Lease.lease_id,
    Lease.namespace,
    Lease.credential_type,
    Lease.access_key_id,
    Lease.role,
    Lease.mount,
    Lease.role_session_name,
    Lease.expires_at,
    Lease.issued_at,
    Lease.vault_addr,
    Lease.role_arn,
    Lease.profile,
    Lease.state,
]


def _target(row, now: int) -> Target:
    (
        row_id,
        lease_id,
        namespace,
        credential_type,
        access_key_id,
        role,
        mount,
        session_name,
        expires_at,
        issued_at,
        vault_addr,
        role_arn,
        profile,
        state,
    ) = row
    return Target(
        lease_id=lease_id,
        namespace=namespace or "",
        credential_type=credential_type,
        access_key_id=access_key_id,
        role=role,
        mount=mount,
        role_session_name=session_name,
        expires_at=expires_at,
        issued_at=issued_at,
        vault_addr=vault_addr,
        role_arn=role_arn,
        profile=profile,
        row_id=row_id,
        state=audit.derived_state(state, expires_at, now),
    )


def select_targets(app, selector: RevokeSelector, now: int) -> list[Target]:
    """Ledger rows the selector names. Lease ids come back in every state (and as `unknown` when the
    ledger has no row for them); the other selectors return active, unexpired rows only."""
    if selector.lease_ids:
        return _by_lease_ids(app, selector.lease_ids, now)
    where = [Lease.state == "active", Lease.expires_at > now]
    if selector.profile:
        where.append(Lease.profile == selector.profile)
    if selector.role:
        where.append(Lease.role == selector.role)
    if selector.mount:
        where.append(Lease.mount == selector.mount.strip("/"))
    with app.transaction(read_only=True) as session:
        rows = session.execute(select(*TARGET_COLUMNS).where(*where).order_by(Lease.id)).all()
    return [_target(row, now) for row in rows]


def _by_lease_ids(app, lease_ids: Sequence[str], now: int) -> list[Target]:
    wanted = list(dict.fromkeys(lease_ids))
    found: dict[str, list[Target]] = {}
    with app.transaction(read_only=True) as session:
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            for row in session.execute(select(*TARGET_COLUMNS).where(Lease.lease_id.in_(chunk)).order_by(Lease.id)):
                found.setdefault(row[1], []).append(_target(row, now))
    targets = []
    addr, namespace = settings.vault_addr(), settings.vault_namespace()
    for lease_id in wanted:
        rows = found.get(lease_id)
        if rows:
            active = [t for t in rows if t.state == "active"]
            targets.extend(active or rows[-1:])
        else:
            targets.append(Target.unknown(lease_id, namespace, addr))
    return targets


# -- 2. the concurrent engine -----------------------------------------------------------------------------


def run_concurrently(
    items: Sequence[Target],
    action: Callable[[object, Target], Result],
    make_vault: Callable[[str], object],
    concurrency: int,
    on_result: Callable[[list[Result]], None],
) -> None:
    """Run `action(vault, item)` for every item on at most `concurrency` threads, each with its own
    Vault per address (hvac clients are not thread-safe). `on_result` runs in the calling thread
    with each batch of results that arrived together, as they arrive. A BrokerError in `action`
    becomes a failed Result; on KeyboardInterrupt the queued items are dropped, the running ones
    finish, and their results are still handed to `on_result` before the interrupt goes on."""
    if not items:
        return
    local = threading.local()
    results: queue.Queue[Result] = queue.Queue()

    def work(item: Target) -> None:
        vaults = local.__dict__.setdefault("vaults", {})
        try:
            vault = vaults.get(item.vault_addr)
            if vault is None:
                vault = vaults[item.vault_addr] = make_vault(item.vault_addr)
            results.put(action(vault, item))
        except BrokerError as exc:
            results.put(Result(item, False, "failed", _one_line(exc), int(time.time())))
        except Exception as exc:  # noqa: BLE001 - reported per lease, never lost
            results.put(Result(item, False, "failed", f"internal error: {type(exc).__name__}", int(time.time())))

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items))), thread_name_prefix="broker-revoke")
    futures = [pool.submit(work, item) for item in items]
    delivered = 0
    try:
        while delivered < len(items):
            try:
                batch = [results.get(timeout=0.5)]
            except queue.Empty:
                if all(f.done() for f in futures) and results.empty():
                    break  # defensive: every worker ended, nothing more can come
                continue
            while True:
                try:
                    batch.append(results.get_nowait())
                except queue.Empty:
                    break
            delivered += len(batch)
            on_result(batch)
    except BaseException:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        late = []
        while not results.empty():
            late.append(results.get_nowait())
        if late:
            on_result(late)
        raise
    pool.shutdown(wait=True)


def _revoke_one(vault, target: Target) -> Result:
    vault.revoke(target.lease_id, target.namespace)
    return Result(target, True, "revoked" if target.row_id is not None else "not_in_ledger", None, int(time.time()))


def revoke_targets(
    targets: Sequence[Target],
    make_vault: Callable[[str], object],
    concurrency: int,
    on_result: Callable[[list[Result]], None],
) -> None:
    """Revoke each target's lease in Vault (PUT sys/leases/revoke, in the target's namespace, at the
    Vault that issued it) with bounded concurrency; see run_concurrently for `on_result`."""
    run_concurrently(targets, _revoke_one, make_vault, concurrency, on_result)


def vault_factory() -> Callable[[str], object]:
    """make_vault(addr): a broker.vault.Vault with this environment's token and TLS settings, aimed
    at `addr` (a lease is revoked at the Vault that issued it). Settings are read and checked once."""
    from broker.vault import Vault, VaultSettings

    base = VaultSettings.from_env()
    return lambda addr: Vault(dataclasses.replace(base, addr=addr or base.addr))


def concurrency_from_env() -> int:
    raw = os.environ.get("BROKER_REVOKE_CONCURRENCY", "")
    if not raw:
        return DEFAULT_CONCURRENCY
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONCURRENCY:
        raise UsageError(f"BROKER_REVOKE_CONCURRENCY={raw!r} must be a whole number from 1 to {MAX_CONCURRENCY}")
    return int(raw)


# -- 3. marking -------------------------------------------------------------------------------------------

_LEASES = Lease.__table__  # Core table: executemany of UPDATEs by id, no ORM bookkeeping
_MARK_REVOKED = (
    update(_LEASES)
    .where(_LEASES.c.id == bindparam("row"), _LEASES.c.state == "active")
    .values(
        state="revoked",
        revoked_at=bindparam("at"),
        revoked_by=bindparam("by"),
        revoke_error=None,
        secret=None,
    )
)
_MARK_FAILED = (
    update(_LEASES)
    .where(_LEASES.c.id == bindparam("row"), _LEASES.c.state == "active")
    .values(revoke_error=bindparam("error"), secret=None)
)


def wipe_secrets(app, targets: Iterable[Target]) -> None:
    """Stop serving the selected credentials now, before Vault is asked: one short transaction."""
    ids = [t.row_id for t in targets if t.row_id is not None and t.state == "active"]
    if not ids:
        return
    with app.transaction() as session:
        for start in range(0, len(ids), CHUNK):
            session.execute(update(Lease).where(Lease.id.in_(ids[start : start + CHUNK])).values(secret=None))


def mark_results(app, results: Sequence[Result], revoked_by: str) -> None:
    """Commit one batch of outcomes: revoked rows become `revoked` (time, who, error cleared); failed
    rows stay `active` with the error. Rows already revoked meanwhile are left alone."""
    from broker import leases

    done = [
        {"row": r.target.row_id, "at": r.at, "by": revoked_by} for r in results if r.ok and r.target.row_id is not None
    ]
    failed = [
        {"row": r.target.row_id, "error": f"{cache.iso_utc(r.at)} {r.error}"}
        for r in results
        if not r.ok and r.target.row_id is not None
    ]
    if not done and not failed:
        return
    with app.transaction() as session:
        if done:
            session.execute(_MARK_REVOKED, done)
        if failed:
            session.execute(_MARK_FAILED, failed)
        if app.ledger_url:
            for item in done + failed:
                leases.enqueue_for_fleet(app, session, item["row"])


def revoked_by() -> str:
    return f"{settings.os_user()}@{settings.host_name()}"


# -- the whole run ------------------------------------------------------------------------------------------


def revoke_matching(
    app,
    selector: RevokeSelector,
    *,
    dry_run: bool = False,
    confirm: Callable[[str], object] | None = None,
    progress: Callable[[int], object] | None = None,
    concurrency: int | None = None,
) -> RevokeReport:
    """Select, confirm, wipe, revoke, mark: the whole `broker revoke`. `confirm(text)` may raise to
    abort; `progress(total)` returns a context manager whose value has `update(n)`."""
    selector = selector.validated()
    now = int(time.time())
    report = RevokeReport(selector=selector, dry_run=dry_run, at=now)
    targets = select_targets(app, selector, now)
    actionable = [t for t in targets if t.state in ("active", "unknown")]
    for t in targets:
        if t.state in ("revoked", "expired"):
            report.results.append(Result(t, True, "already_revoked" if t.state == "revoked" else "expired", None, now))
    calls = prefix_calls(selector, actionable, app) if selector.prefix else []
    if dry_run:
        report.results += [Result(t, True, "would_revoke", None, now) for t in actionable]
        report.prefix_calls = calls
        return report
    make_vault = vault_factory()  # checks VAULT_ADDR & co. before anything changes
    if confirm is not None and (actionable or calls):
        confirm(describe_plan(selector, actionable, calls))
    wipe_secrets(app, actionable)
    by = revoked_by()

    def on_result(batch: list[Result]) -> None:
        mark_results(app, batch, by)
        report.results.extend(batch)

    if selector.prefix:
        _revoke_by_prefix(report, actionable, calls, make_vault, on_result)
        return _in_order(report, targets)
    in_vault, local_only = [], []
    for t in actionable:
        (in_vault if t.lease_id else local_only).append(t)
    if local_only:
        on_result([_without_lease(t, now) for t in local_only])
    workers = concurrency or concurrency_from_env()
    if progress is not None and len(in_vault) > 1:
        with progress(len(in_vault)) as bar:

            def counted(batch: list[Result]) -> None:
                on_result(batch)
                bar.update(len(batch))

            revoke_targets(in_vault, make_vault, workers, counted)
    else:
        revoke_targets(in_vault, make_vault, workers, on_result)
    return _in_order(report, targets)


def _in_order(report: RevokeReport, targets: Sequence[Target]) -> RevokeReport:
    """Results in selection order (they arrive in completion order)."""
    position = {t: i for i, t in enumerate(targets)}
    report.results.sort(key=lambda r: position.get(r.target, len(position)))
    return report


def _without_lease(target: Target, now: int) -> Result:
    """A row Vault issued without a lease id (Vault 1.13.0/1.13.1 STS): nothing to revoke in Vault."""
    if target.is_sts:
        return Result(target, True, "revoked", None, now)
    return Result(
        target,
        False,
        "failed",
        f"Vault gave no lease id for this {target.credential_type} credential; delete access key "
        f"{target.access_key_id} in AWS by hand",
        now,
    )


def describe_plan(selector: RevokeSelector, targets: Sequence[Target], calls: Sequence[PrefixCall]) -> str:
    kinds = Counter(t.credential_type for t in targets)
    text = f"Revoke {len(targets)} lease{'s' if len(targets) != 1 else ''} ({selector.describe()}"
    if kinds:
        text += ": " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    text += ")"
    if calls:
        text += (
            " and everything Vault holds under "
            + ", ".join(sorted({c.prefix for c in calls}))
            + " (leases issued to anyone)"
        )
    return text + "?"


# -- --prefix ---------------------------------------------------------------------------------------------


def _mount_in_namespace(target: Target) -> str:
    """The mount path inside the lease's namespace, read off the lease id when it has the usual
    `<mount>/<creds|sts>/<role>/<id>` form (a mount written with a namespace prefix loses it)."""
    parts = target.lease_id.split("/")
    if len(parts) >= 4 and parts[-3] in ("creds", "sts") and parts[-2] == target.role:
        return "/".join(parts[:-3])
    return target.mount


def prefix_calls(selector: RevokeSelector, targets: Sequence[Target], app) -> list[PrefixCall]:
    """revoke-prefix calls for <mount>/creds/<role> and <mount>/sts/<role>: in the namespace and at the
    Vault the request would use now, and in every namespace/Vault where a matching ledger row lives."""
    if selector.profile:
        from broker import profiles

        with app.transaction(read_only=True) as session:
            profile = profiles.get(session, selector.profile)
        mount, role, namespace = profile.mount, profile.role, settings.vault_namespace(profile.namespace)
    else:
        mount, role, namespace = selector.mount, selector.role, settings.vault_namespace()
    places = {(settings.vault_addr(), namespace, mount.strip("/"))}
    places |= {(t.vault_addr, t.namespace, _mount_in_namespace(t)) for t in targets if t.lease_id}
    return [
        PrefixCall(addr, ns, f"{m}/{endpoint}/{role}")
        for addr, ns, m in sorted(places)
        for endpoint in ("creds", "sts")
    ]


def _revoke_by_prefix(report, targets, calls, make_vault, on_result) -> None:
    done = []
    for call in calls:
        try:
            make_vault(call.vault_addr).revoke_prefix(call.prefix, call.namespace)
            done.append(dataclasses.replace(call, ok=True))
        except BrokerError as exc:
            done.append(dataclasses.replace(call, ok=False, error=_one_line(exc)))
    report.prefix_calls = done
    failed = {(c.vault_addr, c.namespace): c.error for c in done if not c.ok}
    now = int(time.time())
    results = []
    for t in targets:
        error = failed.get((t.vault_addr, t.namespace))
        if not t.lease_id:  # no prefix call covers a credential Vault issued without a lease
            results.append(_without_lease(t, now))
        elif error:
            results.append(Result(t, False, "failed", error, now))
        else:
            results.append(Result(t, True, "revoked", None, now))
    on_result(results)


# -- 4. STS honesty: deny policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class DenyPolicy:
    """An IAM policy that cuts off STS credentials Vault cannot revoke, and where to attach it."""

    scope: str  # "sessions": exactly the listed sessions; "issued-before": every token issued before `cutoff`
    credential_type: str
    vault_role: str  # <mount>/<role>
    attach_to: str  # "role" or "user"
    principal: str  # the IAM role or user name (or a placeholder to fill in)
    policy_name: str
    policy: dict
    lease_count: int
    note: str

    def command(self) -> str:
        document = json.dumps(self.policy, separators=(",", ":"))
        if self.attach_to == "role":
            return (
                f"aws iam put-role-policy --role-name {self.principal} --policy-name {self.policy_name} "
                f"--policy-document '{document}'"
            )
        return (
            f"aws iam put-user-policy --user-name {self.principal} --policy-name {self.policy_name} "
            f"--policy-document '{document}'"
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "command": self.command()}


ROLE_PLACEHOLDER = "ROLE_NAME"  # the IAM role the Vault role assumes, when the ledger does not know it
VAULT_USER_PLACEHOLDER = "VAULT_IAM_USER"  # the IAM user whose keys the Vault AWS mount uses


def issued_before_policy(cutoff: int) -> dict:
    """AWS's "revoke active sessions": deny everything to tokens issued before `cutoff`."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerDenyTokensIssuedBefore",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"DateLessThan": {"aws:TokenIssueTime": cache.iso_utc(cutoff)}},
            }
        ],
    }


def sessions_policy(session_names: Sequence[str], role_id: str | None = None) -> dict:
    """Deny everything to the named sessions: aws:userid is `ROLE_ID:SESSION_NAME` for an assumed
    role. Without the role's unique id (AROA...), `*:SESSION_NAME` is used, which on the role's own
    inline policy matches only that role's sessions (session names cannot contain * or ?)."""
    if role_id:
        condition = {"StringEquals": {"aws:userid": [f"{role_id}:{name}" for name in session_names]}}
    else:
        condition = {"StringLike": {"aws:userid": [f"*:{name}" for name in session_names]}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerDenySessions",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": condition,
            }
        ],
    }


def _sessions(n: int) -> str:
    return "this session" if n == 1 else f"these {n} sessions"


PRINCIPAL_HINT = {"role": "IAM role that Vault role assumes", "user": "IAM user of aws/config/root"}


def _role_name(role_arn: str | None) -> str | None:
    if role_arn and ":role/" in role_arn:
        return role_arn.rsplit("/", 1)[1]
    return None


def _chunks(names: Sequence[str], role_id: str | None) -> list[list[str]]:
    """Split session names so that each policy stays under IAM's inline policy size limit."""
    chunks: list[list[str]] = [[]]
    size = len(json.dumps(sessions_policy([], role_id), separators=(",", ":")))
    used = size
    for name in names:
        cost = len(name) + len(role_id or "*") + 4
        if chunks[-1] and used + cost > POLICY_CHAR_LIMIT:
            chunks.append([])
            used = size
        chunks[-1].append(name)
        used += cost
    return chunks


def deny_policies(targets: Iterable[Target], cutoff: int, *, role_id: str | None = None) -> list[DenyPolicy]:
    """The IAM deny policies that do kill the given STS credentials, grouped by Vault role.

    assumed_role: per IAM role, one policy denying exactly the recorded session names (when every
    lease has one), and the role-wide alternative denying every session issued before `cutoff`.
    federation_token / session_token: their permissions come from the IAM user whose keys Vault
    uses, so the issued-before deny goes on that user (it cannot work if that is the account root).
    Pure: no I/O; `cutoff` is the revoke time, so credentials issued after the revoke are spared.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(cutoff))
    roles: dict[tuple[str, str, str | None], list[Target]] = {}
    users: dict[str, list[Target]] = {}  # by mount: one Vault IAM user per mount
    for t in targets:
        if t.credential_type == "assumed_role":
            roles.setdefault((t.mount, t.role, t.role_arn), []).append(t)
        elif t.credential_type in STS_TYPES:
            users.setdefault(t.mount, []).append(t)
    policies: list[DenyPolicy] = []
    for (mount, role, arn), members in sorted(roles.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        vault_role = f"{mount}/{role}"
        principal = _role_name(arn) or ROLE_PLACEHOLDER
        names = sorted({t.role_session_name for t in members if t.role_session_name})
        if names and all(t.role_session_name for t in members):
            chunks = _chunks(names, role_id)
            for i, chunk in enumerate(chunks, 1):
                suffix = f"-{i}" if len(chunks) > 1 else ""
                in_chunk = set(chunk)
                policies.append(
                    DenyPolicy(
                        scope="sessions",
                        credential_type="assumed_role",
                        vault_role=vault_role,
                        attach_to="role",
                        principal=principal,
                        policy_name=f"broker-deny-sessions-{stamp}{suffix}",
                        policy=sessions_policy(chunk, role_id),
                        lease_count=sum(1 for t in members if t.role_session_name in in_chunk),
                        note=f"denies exactly {_sessions(len(chunk))} "
                        f"of the IAM role that Vault role {vault_role} assumes",
                    )
                )
        policies.append(
            DenyPolicy(
                scope="issued-before",
                credential_type="assumed_role",
                vault_role=vault_role,
                attach_to="role",
                principal=principal,
                policy_name=f"broker-deny-before-{stamp}",
                policy=issued_before_policy(cutoff),
                lease_count=len(members),
                note=f"or: deny EVERY session of that IAM role issued before {cache.iso_utc(cutoff)}, "
                f"including ones not issued through this broker",
            )
        )
    for mount, members in sorted(users.items()):
        kinds = ", ".join(sorted({t.credential_type for t in members}))
        vault_roles = ", ".join(sorted({f"{t.mount}/{t.role}" for t in members}))
        policies.append(
            DenyPolicy(
                scope="issued-before",
                credential_type=kinds,
                vault_role=vault_roles,
                attach_to="user",
                principal=VAULT_USER_PLACEHOLDER,
                policy_name=f"broker-deny-before-{stamp}",
                policy=issued_before_policy(cutoff),
                lease_count=len(members),
                note=f"{kinds} credentials take their permissions from the IAM user whose keys Vault mount "
                f"{mount} uses: this denies every temporary credential that user issued before "
                f"{cache.iso_utc(cutoff)} (not possible if Vault uses the account root's keys)",
            )
        )
    return policies


def sts_warning(targets: Sequence[Target], *, dry_run: bool) -> str | None:
    if not targets:
        return None
    kinds = Counter(t.credential_type for t in targets)
    last = max(t.expires_at or 0 for t in targets)
    what = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    verb = "would stay" if dry_run else "stay"
    return (
        f"Vault cannot invalidate STS credentials: revoking their leases does not touch AWS. "
        f"{'This credential' if len(targets) == 1 else f'These {len(targets)} credentials'} ({what}) "
        f"{verb} valid until their expires_at "
        f"(the last at {cache.iso_utc(last)}) unless an IAM deny policy cuts them off."
    )


# -- the report ---------------------------------------------------------------------------------------

REPORT_COLUMNS = [
    "lease_id",
    "credential_type",
    "access_key_id",
    "role_session_name",
    "mount",
    "role",
    "namespace",
    "expires_at",
    "result",
    "error",
]
REPORT_HEADERS = {
    "lease_id": "LEASE ID",
    "credential_type": "TYPE",
    "access_key_id": "ACCESS KEY ID",
    "role_session_name": "SESSION NAME",
    "mount": "MOUNT",
    "role": "ROLE",
    "namespace": "NAMESPACE",
    "expires_at": "EXPIRES (UTC)",
    "result": "RESULT",
    "error": "ERROR",
}


def summary_line(report: RevokeReport) -> str:
    counts = report.counts()
    parts = [f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n]
    head = "revoke --dry-run" if report.dry_run else "revoke"
    return f"{head} ({report.selector.describe()}): " + (", ".join(parts) if parts else "nothing to revoke")


def report_dict(report: RevokeReport) -> dict:
    """The machine-readable report of a run (`--format json`)."""
    sts = report.sts_targets()
    return {
        "command": "revoke",
        "dry_run": report.dry_run,
        "at": cache.iso_utc(report.at),
        "selector": report.selector.as_dict(),
        "summary": report.counts(),
        "leases": [{**r.target.public(), "result": r.outcome, "error": r.error} for r in report.results],
        "prefix_calls": [dataclasses.asdict(c) for c in report.prefix_calls],
        "sts": {
            "count": len(sts),
            "warning": sts_warning(sts, dry_run=report.dry_run),
            "deny_policies": [p.as_dict() for p in deny_policies(sts, report.at)],
        },
    }


def render_report(report: RevokeReport, fmt: str, out) -> None:
    """Write the report: a table of every lease and what happened, the prefix calls, the STS warning
    and ready-to-paste deny policies; or (json) the same as one document."""
    from broker import output

    if fmt == "json":
        out.write(json.dumps(report_dict(report), indent=2) + "\n")
        return
    out.write(summary_line(report) + "\n")
    rows = [{**r.target.public(), "result": r.outcome, "error": r.error} for r in report.results]
    if rows:
        out.write("\n")
        output.render(rows, "table", REPORT_COLUMNS, headers=REPORT_HEADERS, out=out)
    for call in report.prefix_calls:
        where = f" in namespace {call.namespace}" if call.namespace else ""
        state = {None: "would call", True: "revoked", False: "FAILED"}[call.ok]
        out.write(
            f"{state}: sys/leases/revoke-prefix/{call.prefix}{where} at {call.vault_addr}"
            f"{' (' + call.error + ')' if call.error else ''}\n"
        )
    if report.prefix_calls:
        out.write(
            "note: revoke-prefix revokes every lease under these prefixes, issued to anyone, "
            "not only the ones in this ledger\n"
        )
    sts = report.sts_targets()
    warning = sts_warning(sts, dry_run=report.dry_run)
    if warning:
        out.write("\nWARNING: " + warning + "\n")
        for policy in deny_policies(sts, report.at):
            out.write(
                f"\n# {policy.vault_role} ({policy.credential_type}, {policy.lease_count} lease"
                f"{'s' if policy.lease_count != 1 else ''}): {policy.note}\n"
            )
            if policy.principal in (ROLE_PLACEHOLDER, VAULT_USER_PLACEHOLDER):
                out.write(f"# replace {policy.principal} with the {PRINCIPAL_HINT[policy.attach_to]}\n")
            out.write(policy.command() + "\n")
    if report.failed:
        out.write(
            f"\n{len(report.failed)} revocation{'s' if len(report.failed) != 1 else ''} failed; "
            f"run the same command again to retry only those\n"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
