"""`broker reconcile`: check the ledger against Vault.

1. Every active, unexpired row with a lease id is looked up in Vault (PUT sys/leases/lookup, in the
   lease's namespace). A row Vault no longer knows is marked ended: state `revoked` (the one
   terminal state `leases`, `prune` and the fleet know), `revoked_by` "reconcile by user@host",
   `end_reason` "revoked outside broker" (Vault forgot it before its recorded end) or "expired"
   (Vault's end came first), and its cached secret wiped.
2. With --vault-list: Vault's live leases under every `<mount>/creds/<role>/` and `<mount>/sts/<role>/`
   the ledger has seen (lease rows, intents, profiles; each namespace) are listed (a sudo path), and
   those no ledger row explains are reported with their issue and expiry time, each matched to an
   open intent row (an interrupted issuance) by role and time when one fits.
3. With --revoke-unknown: those are revoked (revoke's confirmation rules); an intent whose lease was
   revoked is resolved and deleted.

Lookups and revocations run through broker.bulk; each batch is committed as it arrives, so a run
that fails part-way (exit 8) is resumed by running it again.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, select, update

from broker import bulk, cache, issuance, listing, settings
from broker.app import App
from broker.bulk import Result, Target, VaultPool
from broker.errors import BrokerError, one_line
from broker.models import LEASES, Intent, Lease, Profile
from broker.vault import Vault

Confirm = Callable[[str], object]

INTENT_SLACK = 5  # seconds: Vault's issue_time may precede the intent's started_at by clock rounding
ENDED_REASONS = ("revoked outside broker", "expired")


@dataclass(frozen=True)
class Unknown:
    """A live Vault lease no ledger row explains."""

    target: Target
    issue_time: str | None
    expire_time: str | None
    intent_id: int | None = None
    intent: str | None = None  # "profile p, pid 123 at <time>" of the matching interrupted issuance


@dataclass
class ReconcileReport:
    at: int
    dry_run: bool
    vault_list: bool
    fleet: bool = False
    checked: list[Result] = field(default_factory=list)  # outcome: live | ended | failed
    unknown: list[Unknown] = field(default_factory=list)
    unknown_results: list[Result] = field(default_factory=list)  # outcome: revoked | would_revoke | failed
    list_errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return (
            [f"lookup of {r.target.lease_id}: {r.error}" for r in self.checked if r.outcome == "failed"]
            + [f"revocation of {r.target.lease_id}: {r.error}" for r in self.unknown_results if not r.ok]
            + self.list_errors
        )

    def summary(self) -> dict[str, int]:
        return {
            "checked": len(self.checked),
            "live": sum(r.outcome == "live" for r in self.checked),
            "ended": sum(r.outcome == "ended" for r in self.checked),
            "lookup_failed": sum(r.outcome == "failed" for r in self.checked),
            "unknown": len(self.unknown),
            "unknown_revoked": sum(r.outcome == "revoked" for r in self.unknown_results),
            "unknown_failed": sum(not r.ok for r in self.unknown_results),
        }


# -- 1. the ledger's active rows against Vault -------------------------------------------------------


def _lookup_action(now: int) -> Callable[[Vault, Target], Result]:
    def action(vault: Vault, target: Target) -> Result:
        found = vault.lookup(target.lease_id, target.namespace)
        if found is not None:
            return Result(target, True, "live", None, int(time.time()))
        reason = ENDED_REASONS[1] if (target.expires_at or 0) <= int(time.time()) else ENDED_REASONS[0]
        return Result(target, True, "ended", reason, int(time.time()))

    return action


_MARK_ENDED = (
    update(LEASES)
    .where(LEASES.c.id == bindparam("row"), LEASES.c.state == "active")
    .values(state="revoked", revoked_at=bindparam("at"), revoked_by=bindparam("by"), end_reason=bindparam("reason"))
    .values(secret=None)
)


def _mark_ended(app: App, results: Sequence[Result], by: str) -> None:
    ended: list[dict[str, Any]] = [
        {"row": r.target.row_id, "at": r.at, "by": by, "reason": r.error}
        for r in results
        if r.outcome == "ended" and r.target.row_id is not None
    ]
    if not ended:
        return
    with app.transaction() as session:
        session.execute(_MARK_ENDED, ended)
        if app.ledger_url:
            for item in ended:
                issuance.enqueue_for_fleet(app, session, int(item["row"]))


def check_rows(app: App, report: ReconcileReport, vaults: VaultPool, workers: int) -> None:
    now = report.at
    by = f"reconcile by {settings.actor(app.env)}"
    if report.fleet:
        from sqlalchemy import func

        from broker.fleet import revoke as fleet_revoke
        from broker.fleet.listing import FLEET

        conditions = [FLEET.c.state == "active", FLEET.c.lease_id != "", FLEET.c.expires_at > func.now()]
        targets = fleet_revoke.active_targets(app.fleet, conditions, app.env.vault_addr)

        def mark(batch: list[Result]) -> None:
            fleet_revoke.mark_ended(app.fleet, batch, by)
    else:
        targets = bulk.local_targets(app, [Lease.state == "active", Lease.lease_id != "", Lease.expires_at > now], now)

        def mark(batch: list[Result]) -> None:
            _mark_ended(app, batch, by)

    def on_result(batch: list[Result]) -> None:
        if not report.dry_run:
            mark(batch)
        report.checked.extend(batch)

    bulk.run_concurrently(targets, _lookup_action(now), vaults, workers, on_result)
    bulk.in_order(report.checked, targets)


# -- 2. Vault's live leases that no row explains -------------------------------------------------------


@dataclass(frozen=True)
class Place:
    vault_addr: str
    namespace: str
    mount: str  # inside the namespace
    role: str


def _mount_of(lease_id: str, role: str, mount: str) -> str:
    parts = lease_id.split("/")
    if len(parts) >= 4 and parts[-3] in ("creds", "sts") and parts[-2] == role:
        return "/".join(parts[:-3])
    return mount.strip("/")


def places_seen(app: App, fleet: bool = False) -> tuple[list[Place], set[str], list[Any]]:
    """Every (Vault, namespace, mount, role) the ledger has seen; every lease id it records; open
    intents. With `fleet`: the fleet ledger's too, at the configured Vault (as `revoke --fleet`)."""
    places: set[Place] = set()
    known: set[str] = set()
    if fleet:
        from broker.fleet import revoke as fleet_revoke

        known, seen = fleet_revoke.known_places(app.fleet)
        for ns, mount, role, lease_id in seen:
            places.add(Place(app.env.vault_addr, ns, _mount_of(lease_id, role, mount), role))
        if not os.path.exists(app.db_path):
            return sorted(places, key=lambda p: (p.vault_addr, p.namespace, p.mount, p.role)), known, []
    with app.transaction(read_only=True) as session:
        known |= {str(x) for x in session.scalars(select(Lease.lease_id).where(Lease.lease_id != ""))}
        for addr, ns, mount, role, lease_id in session.execute(
            select(Lease.vault_addr, Lease.namespace, Lease.mount, Lease.role, Lease.lease_id).distinct()
        ):
            places.add(Place(addr, ns or "", _mount_of(lease_id or "", role, mount), role))
        intents = list(session.scalars(select(Intent).order_by(Intent.started_at)))
        for intent in intents:
            places.add(Place(intent.vault_addr, intent.namespace or "", intent.mount.strip("/"), intent.role))
        for profile in session.scalars(select(Profile)):
            places.add(
                Place(
                    app.env.vault_addr,
                    app.env.vault_namespace(profile.namespace),
                    profile.mount.strip("/"),
                    profile.role,
                )
            )
        session.expunge_all()
    return sorted(places, key=lambda p: (p.vault_addr, p.namespace, p.mount, p.role)), known, intents


def _epoch(rfc3339: object) -> int | None:
    if not isinstance(rfc3339, str) or not rfc3339:
        return None
    try:
        return int(datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _match_intent(intents: list[Any], used: set[int], place: Place, endpoint: str, issued: int | None) -> Any:
    """The open intent of this role whose start is the latest before the lease's issue time."""
    if issued is None:
        return None
    fitting = [
        i
        for i in intents
        if i.id not in used
        and i.role == place.role
        and i.endpoint == endpoint
        and (i.namespace or "") == place.namespace
        and i.started_at <= issued + INTENT_SLACK
    ]
    return max(fitting, key=lambda i: i.started_at, default=None)


def find_unknown(app: App, report: ReconcileReport, vaults: VaultPool) -> None:
    places, known, intents = places_seen(app, report.fleet)
    used: set[int] = set()
    for place in places:
        vault = vaults.get(place.vault_addr)
        for endpoint in ("creds", "sts"):
            prefix = f"{place.mount}/{endpoint}/{place.role}"
            try:
                listed = vault.list_leases(prefix, place.namespace)
            except BrokerError as exc:
                report.list_errors.append(f"listing {prefix}: {one_line(exc)}")
                continue
            for lease_id in listed:
                if lease_id in known:
                    continue
                try:
                    found = vault.lookup(lease_id, place.namespace) or {}
                except BrokerError:
                    found = {}
                issued, expires = _epoch(found.get("issue_time")), _epoch(found.get("expire_time"))
                intent = _match_intent(intents, used, place, endpoint, issued)
                if intent is not None:
                    used.add(intent.id)
                target = Target(
                    lease_id=lease_id,
                    namespace=place.namespace,
                    credential_type="unknown",
                    access_key_id="",
                    role=place.role,
                    mount=place.mount,
                    role_session_name=intent.role_session_name if intent is not None else None,
                    expires_at=expires,
                    issued_at=issued,
                    vault_addr=place.vault_addr,
                    profile=intent.profile if intent is not None else None,
                    state="unknown",
                )
                report.unknown.append(
                    Unknown(
                        target,
                        listing.iso_or_none(issued),
                        listing.iso_or_none(expires),
                        intent.id if intent is not None else None,
                        _describe_intent(intent) if intent is not None else None,
                    )
                )


def _describe_intent(intent: Any) -> str:
    return (
        f"interrupted issuance (profile {intent.profile or '-'}, pid {intent.pid} on {intent.host}, "
        f"{cache.iso_utc(intent.started_at)})"
    )


# -- 3. revoking them ----------------------------------------------------------------------------------


def revoke_unknown(app: App, report: ReconcileReport, vaults: VaultPool, workers: int) -> None:
    intent_of = {u.target: u.intent_id for u in report.unknown}

    def on_result(batch: list[Result]) -> None:
        report.unknown_results.extend(batch)
        resolved = [intent_of[r.target] for r in batch if r.ok and intent_of.get(r.target) is not None]
        if resolved:
            with app.transaction() as session:
                session.execute(delete(Intent).where(Intent.id.in_(resolved)))

    if report.dry_run:
        report.unknown_results = [Result(u.target, True, "would_revoke", None, report.at) for u in report.unknown]
        return
    bulk.run_concurrently(
        [u.target for u in report.unknown],
        lambda vault, t: Result(t, *_revoked(vault, t)),
        vaults,
        workers,
        on_result,
    )
    bulk.in_order(report.unknown_results, [u.target for u in report.unknown])


def _revoked(vault: Vault, target: Target) -> tuple[bool, str, None, int]:
    vault.revoke(target.lease_id, target.namespace)
    return True, "revoked", None, int(time.time())


# -- the whole run ---------------------------------------------------------------------------------------


def reconcile(
    app: App,
    *,
    vault_list: bool = False,
    revoke: bool = False,
    dry_run: bool = False,
    confirm: Confirm | None = None,
    fleet: bool = False,
) -> ReconcileReport:
    report = ReconcileReport(at=int(time.time()), dry_run=dry_run, vault_list=vault_list or revoke, fleet=fleet)
    vaults = VaultPool.from_env(app.env)  # checks VAULT_ADDR & co. before anything changes
    workers = bulk.concurrency(app.env)
    check_rows(app, report, vaults, workers)
    if report.vault_list:
        find_unknown(app, report, vaults)
    if revoke and report.unknown:
        if confirm is not None and not dry_run:
            n = len(report.unknown)
            confirm(f"Revoke {n} lease{'s' if n != 1 else ''} that no ledger row explains (issued to anyone)?")
        revoke_unknown(app, report, vaults, workers)
    return report


# -- rendering ---------------------------------------------------------------------------------------------


def _row(result: Result, fleet: bool) -> dict[str, Any]:
    t = result.target
    return {**t.public(fleet=fleet), "result": result.outcome, "reason": result.error}


def report_dict(report: ReconcileReport) -> dict[str, Any]:
    outcome = {r.target: r for r in report.unknown_results}
    return {
        "command": "reconcile",
        "fleet": report.fleet,
        "dry_run": report.dry_run,
        "at": cache.iso_utc(report.at),
        "summary": report.summary(),
        "checked": [_row(r, report.fleet) for r in report.checked],
        "unknown": [
            {
                "lease_id": u.target.lease_id,
                "namespace": u.target.namespace,
                "mount": u.target.mount,
                "role": u.target.role,
                "issue_time": u.issue_time,
                "expire_time": u.expire_time,
                "intent": u.intent,
                "result": outcome[u.target].outcome if u.target in outcome else "unknown",
                "error": outcome[u.target].error if u.target in outcome else None,
            }
            for u in report.unknown
        ],
        "errors": report.failed,
    }
