"""The machinery every operation on many leases shares: revoke, renew, the fleet revoke and
reconciliation.

- `Target`: one lease to act on, public fields only, from whichever ledger knows it;
- `Result`: what happened to it;
- `VaultPool`: one broker.vault.Vault per worker thread and address (hvac clients are not
  thread-safe), kept for a whole run;
- `run_concurrently`: bounded concurrency, results handed back in batches as they arrive, so the
  caller commits each batch at once and a run killed half-way loses nothing already done.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from broker import cache, listing
from broker.errors import BrokerError, UsageError, one_line
from broker.models import Lease
from broker.vault import Vault, VaultSettings, strip_userinfo, vault_origin

if TYPE_CHECKING:
    from broker.app import App
    from broker.settings import Env

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 64
CHUNK = 500  # ids per IN (...) list
# Who asked for a lease and the AWS principal: shown with each target in reports.
IDENTITY_FIELDS = ("display_name", "entity_id", "token_accessor", "token_policies", "account_id", "principal_arn")


@dataclass(frozen=True)
class Target:
    """One lease to act on, from whatever ledger knows it. Public fields only: never a secret."""

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
    row_id: int | None = None  # the local ledger row; None when no local row is known
    state: str = "active"  # at selection time: active, expired, revoked, or unknown (in no ledger)
    renewable: bool = False
    host: str = ""  # fleet rows: the host and OS user that pushed them
    os_user: str = ""
    recorded_vault_addr: str = ""  # fleet rows: the host's Vault address, for audit only
    identity: tuple[tuple[str, str | None], ...] = ()  # IDENTITY_FIELDS -> value, as the ledger has them
    db_user: str = ""  # fleet rows: the database login that pushed the row (the host chose the rest)

    @classmethod
    def unknown(cls, lease_id: str, namespace: str, vault_addr: str) -> Target:
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
        return self.credential_type in cache.STS_TYPES

    def public(self, *, fleet: bool = False) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "lease_id": self.lease_id,
            "profile": self.profile,
            "mount": self.mount,
            "role": self.role,
            "namespace": self.namespace,
            "credential_type": self.credential_type,
            "access_key_id": self.access_key_id,
            "role_session_name": self.role_session_name,
            "issued_at": listing.iso_or_none(self.issued_at),
            "expires_at": listing.iso_or_none(self.expires_at),
        }
        fields.update(dict.fromkeys(IDENTITY_FIELDS))
        fields.update(self.identity)
        if fleet:
            fields.update(host=self.host, user=self.os_user, db_user=self.db_user)
        return fields


@dataclass(frozen=True)
class Result:
    """What happened to one target. `outcome` is what a report shows."""

    target: Target
    ok: bool
    # revoke: revoked | failed | other_vault | already_revoked | expired | not_in_ledger | would_revoke
    # renew: renewed | capped | not_renewable | failed | other_vault | expired | revoked
    outcome: str
    error: str | None = None
    at: int = 0
    expires_at: int | None = None  # a renewal's new end


OTHER_VAULT = "other_vault"


def same_vault(recorded: str, configured: str) -> bool:
    """Whether a lease recorded at `recorded` lives in the Vault at `configured` (scheme, host,
    port and path compared; userinfo, case of scheme/host and a trailing slash ignored). An empty
    record (a lease id given by hand) means the configured Vault."""
    return not recorded or vault_origin(recorded) == vault_origin(configured)


def other_vault(target: Target, configured: str, now: int) -> Result:
    """A lease another Vault issued: its lease id means nothing to the configured one, and the
    configured token must not be sent to the recorded address. Reported; its row is left as is."""
    return Result(
        target,
        False,
        OTHER_VAULT,
        f"issued by the Vault at {strip_userinfo(target.vault_addr)}, not the configured "
        f"{strip_userinfo(configured)}; run this with VAULT_ADDR (and its token) set to that Vault",
        now,
    )


STATIC_NOTE = "static role: no lease, nothing to revoke in Vault; the key lives until Vault rotates it"


def without_lease(target: Target, now: int) -> Result:
    """A row Vault issued without a lease id (a static role's key, or Vault 1.13.0/1.13.1 STS): nothing
    to revoke in Vault. The row is marked revoked all the same, so broker stops serving it."""
    if target.credential_type == "static":
        return Result(target, True, "not_revocable", STATIC_NOTE, now)
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


# -- targets from the local ledger -------------------------------------------------------------------

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
    Lease.renewable,
    *[getattr(Lease, name) for name in IDENTITY_FIELDS],
]


def local_target(row: Any, now: int) -> Target:
    """A Target from a row of TARGET_COLUMNS."""
    m = row._mapping
    return Target(
        lease_id=m[Lease.lease_id],
        namespace=m[Lease.namespace] or "",
        credential_type=m[Lease.credential_type],
        access_key_id=m[Lease.access_key_id],
        role=m[Lease.role],
        mount=m[Lease.mount],
        role_session_name=m[Lease.role_session_name],
        expires_at=m[Lease.expires_at],
        issued_at=m[Lease.issued_at],
        vault_addr=m[Lease.vault_addr],
        role_arn=m[Lease.role_arn],
        profile=m[Lease.profile],
        row_id=m[Lease.id],
        state=listing.derived_state(m[Lease.state], m[Lease.expires_at], now),
        renewable=bool(m[Lease.renewable]),
        identity=tuple((name, m[getattr(Lease, name)]) for name in IDENTITY_FIELDS),
    )


def local_targets(app: App, where: Sequence[Any], now: int) -> list[Target]:
    """Local ledger rows matching `where`, in row order."""
    with app.transaction(read_only=True) as session:
        rows = session.execute(select(*TARGET_COLUMNS).where(*where).order_by(Lease.id)).all()
    return [local_target(row, now) for row in rows]


def local_targets_by_lease_id(app: App, lease_ids: Sequence[str], now: int) -> dict[str, list[Target]]:
    """Every local row of each given lease id (a lease may have several rows), in row order."""
    wanted = list(dict.fromkeys(lease_ids))
    found: dict[str, list[Target]] = {}
    with app.transaction(read_only=True) as session:
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            for row in session.execute(select(*TARGET_COLUMNS).where(Lease.lease_id.in_(chunk)).order_by(Lease.id)):
                found.setdefault(str(row[1]), []).append(local_target(row, now))
    return found


# -- Vault clients per worker --------------------------------------------------------------------------


class VaultPool:
    """One Vault per worker thread, kept for the whole run, always at the configured address: the
    token goes nowhere else, whatever address a row recorded (see `serves`). A pool's threads
    replace the last pool's, so a thread id is never shared by two live threads, and one
    connection per worker serves every batch. Settings are read and checked once, before anything
    changes."""

    def __init__(self, base: VaultSettings):
        self.base = base
        self._made: dict[tuple[int, str], Vault] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Env) -> VaultPool:
        return cls(VaultSettings.from_env(env))

    @property
    def addr(self) -> str:
        return self.base.addr

    def serves(self, recorded_addr: str) -> bool:
        """Whether a lease recorded at `recorded_addr` may be acted on with this pool's Vault."""
        return same_vault(recorded_addr, self.base.addr)

    def get(self, addr: str = "") -> Vault:
        """The calling thread's Vault at the configured address. `addr` (a row's recorded address)
        must be that Vault: anything else is refused, never connected to."""
        if not self.serves(addr):
            raise UsageError(f"refusing to send the Vault token to {strip_userinfo(addr)}: not the configured Vault")
        key = (threading.get_ident(), self.base.addr)
        with self._lock:
            vault = self._made.get(key)
            if vault is None:
                vault = self._made[key] = Vault(dataclasses.replace(self.base))
        return vault


def concurrency(env: Env) -> int:
    """BROKER_REVOKE_CONCURRENCY, else DEFAULT_CONCURRENCY: Vault requests in flight at once."""
    raw = env.revoke_concurrency
    if not raw:
        return DEFAULT_CONCURRENCY
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONCURRENCY:
        raise UsageError(f"BROKER_REVOKE_CONCURRENCY={raw!r} must be a whole number from 1 to {MAX_CONCURRENCY}")
    return int(raw)


# -- the concurrent runner -------------------------------------------------------------------------------


def run_concurrently(
    items: Sequence[Target],
    action: Callable[[Vault, Target], Result],
    vaults: VaultPool,
    workers: int,
    on_result: Callable[[list[Result]], None],
) -> None:
    """Run `action(vault, item)` for every item on at most `workers` threads, each with its own
    Vault from `vaults` for the item's address. `on_result` runs in the calling thread with each
    batch of results that arrived together, as they arrive. A BrokerError in `action` becomes a
    failed Result; on KeyboardInterrupt the queued items are dropped, the running ones finish, and
    their results are still handed to `on_result` before the interrupt goes on."""
    if not items:
        return
    results: queue.Queue[Result] = queue.Queue()

    def work(item: Target) -> None:
        if not vaults.serves(item.vault_addr):
            results.put(other_vault(item, vaults.addr, int(time.time())))
            return
        try:
            results.put(action(vaults.get(item.vault_addr), item))
        except BrokerError as exc:
            results.put(Result(item, False, "failed", one_line(exc), int(time.time())))
        except Exception as exc:  # noqa: BLE001 - reported per lease, never lost
            results.put(Result(item, False, "failed", f"internal error: {type(exc).__name__}", int(time.time())))

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="broker-bulk")
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
            log.debug("a batch of %d results", len(batch))
            for result in batch:
                log.info(
                    "%s %s (%s)%s",
                    result.outcome,
                    result.target.lease_id or "(no lease id)",
                    result.target.access_key_id or "?",
                    f": {result.error}" if result.error else "",
                )
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


def revoke_one(vault: Vault, target: Target) -> Result:
    vault.revoke(target.lease_id, target.namespace)
    return Result(target, True, "revoked" if target.row_id is not None else "not_in_ledger", None, int(time.time()))


def revoke_targets(
    targets: Sequence[Target], vaults: VaultPool, workers: int, on_result: Callable[[list[Result]], None]
) -> None:
    """Revoke each target's lease in Vault (PUT sys/leases/revoke, in the target's namespace) with
    bounded concurrency; see run_concurrently for `on_result`."""
    run_concurrently(targets, revoke_one, vaults, workers, on_result)


def in_order(results: list[Result], targets: Sequence[Target]) -> None:
    """Sort results into selection order (they arrive in completion order)."""
    position = {t: i for i, t in enumerate(targets)}
    results.sort(key=lambda r: position.get(r.target, len(position)))
