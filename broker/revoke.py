"""Revoking leases for incident response (`broker revoke`), in four steps:

1. selection: ledger rows become `bulk.Target`s;
2. broker.bulk's concurrent engine revokes each target's lease in Vault;
3. marking: each batch is committed to the ledger at once (revoked rows: state, time, who; failed
   rows: the error), so a run killed half-way loses nothing it already revoked;
4. the report (rendered by broker.output), with the honest part about STS from broker.policies.

Secrets go first: before any Vault call, the sealed secret of every selected row is wiped, so
credential-process cannot serve a credential that is being revoked, even if revoking it fails.
Failed rows stay `active` with `revoke_error` set; running the same command again retries exactly
those. Vault answers 204 for unknown and already-revoked leases, so a retry is always safe.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, update

from broker import bulk, cache, issuance, listing, profiles, settings
from broker.bulk import Result, Target, VaultPool
from broker.errors import BrokerError, one_line
from broker.models import LEASES, Lease
from broker.selection import Selection

if TYPE_CHECKING:
    from broker.app import App


class ProgressBar(Protocol):
    def update(self, n_steps: int) -> None: ...


Confirm = Callable[[str], object]
Progress = Callable[[int], AbstractContextManager[ProgressBar]]

OUTCOMES = (
    "revoked",
    "would_revoke",
    "not_in_ledger",
    "not_revocable",
    "failed",
    "other_vault",
    "already_revoked",
    "expired",
    "unknown",
)
UNKNOWN_KEY = "no lease the selection names has this access key; nothing was sent to Vault"


@dataclass(frozen=True)
class PrefixCall:
    vault_addr: str
    namespace: str
    prefix: str
    ok: bool | None = None
    error: str | None = None


@dataclass
class RevokeReport:
    selection: Selection
    dry_run: bool
    at: int
    fleet: bool = False
    results: list[Result] = field(default_factory=list)
    prefix_calls: list[PrefixCall] = field(default_factory=list)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome in ("failed", bulk.OTHER_VAULT)]

    def counts(self) -> dict[str, int]:
        counted = Counter(r.outcome for r in self.results)
        return {name: counted.get(name, 0) for name in OUTCOMES}

    def describe(self) -> str:
        return self.selection.describe(fleet=self.fleet)

    def sts_targets(self) -> list[Target]:
        """STS credentials that this run revoked (or would) in Vault but that AWS still honours."""
        return [
            r.target
            for r in self.results
            if r.target.is_sts
            and r.outcome in ("revoked", "would_revoke", "failed")
            and (r.target.expires_at or 0) > self.at
        ]


# -- 1. selection ---------------------------------------------------------------------------------------


def select_targets(app: App, selection: Selection, now: int) -> list[Target]:
    """Ledger rows the selection names. Lease ids come back in every state (and as `unknown` when
    the ledger has no row for them); the other selections return active, unexpired rows only."""
    if selection.lease_ids:
        return _by_lease_ids(app, selection.lease_ids, now)
    if selection.access_keys:
        return _by_access_keys(app, selection, now)
    return bulk.local_targets(app, selection.replace(state="active").conditions(listing.LEDGER_COLUMNS, now), now)


def _by_lease_ids(app: App, lease_ids: Sequence[str], now: int) -> list[Target]:
    found = bulk.local_targets_by_lease_id(app, lease_ids, now)
    targets = []
    for lease_id in dict.fromkeys(lease_ids):
        rows = found.get(lease_id)
        if rows:
            active = [t for t in rows if t.state == "active"]
            targets.extend(active or rows[-1:])
        else:
            targets.append(Target.unknown(lease_id, app.env.vault_namespace(), app.env.vault_addr))
    return targets


def _by_access_keys(app: App, selection: Selection, now: int) -> list[Target]:
    """Per access key: its active rows, else its last row (revoked or expired), else an `unknown_key`
    target: a key id is not a lease id, so an unknown one is reported and sent nowhere."""
    rows = bulk.local_targets(app, selection.replace(state="all").conditions(listing.LEDGER_COLUMNS, now), now)
    by_key: dict[str, list[Target]] = {}
    for target in rows:
        by_key.setdefault(target.access_key_id, []).append(target)
    targets = []
    for key in selection.access_keys:
        found = by_key.get(key)
        if found:
            active = [t for t in found if t.state == "active"]
            targets.extend(active or found[-1:])
        else:
            targets.append(unknown_key(key, app.env.vault_addr))
    return targets


def unknown_key(access_key_id: str, vault_addr: str) -> Target:
    return dataclasses.replace(Target.unknown("", "", vault_addr), access_key_id=access_key_id, state="unknown_key")


# -- 3. marking -----------------------------------------------------------------------------------------

_LEASES = LEASES  # Core table: executemany of UPDATEs by id, no ORM bookkeeping
_MARK_REVOKED = (
    update(_LEASES)
    .where(_LEASES.c.id == bindparam("row"), _LEASES.c.state == "active")
    .values(
        state="revoked",
        revoked_at=bindparam("at"),
        revoked_by=bindparam("by"),
        revoke_error=None,
        secret=None,
        sealed_token=None,
    )
)
_MARK_FAILED = (
    update(_LEASES)
    .where(_LEASES.c.id == bindparam("row"), _LEASES.c.state == "active")
    .values(revoke_error=bindparam("error"), secret=None, sealed_token=None)
)


def wipe_secrets(app: App, targets: Iterable[Target]) -> None:
    """Stop serving the selected credentials now, before Vault is asked: one short transaction."""
    ids = [t.row_id for t in targets if t.row_id is not None and t.state == "active"]
    if not ids:
        return
    with app.transaction() as session:
        for start in range(0, len(ids), bulk.CHUNK):
            session.execute(
                update(Lease)
                .where(Lease.id.in_(ids[start : start + bulk.CHUNK]))
                .values(secret=None, sealed_token=None)
            )


def mark_results(app: App, results: Sequence[Result], revoked_by: str) -> None:
    """Commit one batch of outcomes: revoked rows become `revoked` (time, who, error cleared); failed
    rows stay `active` with the error. Rows already revoked meanwhile are left alone."""
    done: list[dict[str, Any]] = [
        {"row": r.target.row_id, "at": r.at, "by": revoked_by} for r in results if r.ok and r.target.row_id is not None
    ]
    failed: list[dict[str, Any]] = [
        {"row": r.target.row_id, "error": f"{cache.iso_utc(r.at)} {r.error}"}
        for r in results
        if not r.ok and r.target.row_id is not None and r.outcome != bulk.OTHER_VAULT  # those rows stay as they are
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
                issuance.enqueue_for_fleet(app, session, int(item["row"]))


# -- the whole run -----------------------------------------------------------------------------------------


def revoke_matching(
    app: App,
    selection: Selection,
    *,
    dry_run: bool = False,
    confirm: Confirm | None = None,
    progress: Progress | None = None,
    concurrency: int | None = None,
) -> RevokeReport:
    """Select, confirm, wipe, revoke, mark: the whole `broker revoke`. `confirm(text)` may raise to
    abort; `progress(total)` returns a context manager whose value has `update(n)`."""
    selection = selection.for_revoke()
    now = int(time.time())
    report = RevokeReport(selection=selection, dry_run=dry_run, at=now)
    targets = select_targets(app, selection, now)
    actionable = [t for t in targets if t.state in ("active", "unknown")]
    for t in targets:
        if t.state in ("revoked", "expired"):
            report.results.append(Result(t, True, "already_revoked" if t.state == "revoked" else "expired", None, now))
        elif t.state == "unknown_key":
            report.results.append(Result(t, True, "unknown", UNKNOWN_KEY, now))
    elsewhere = [t for t in actionable if not bulk.same_vault(t.vault_addr, app.env.vault_addr)]
    report.results += [bulk.other_vault(t, app.env.vault_addr, now) for t in elsewhere]  # their rows stay as is
    actionable = [t for t in actionable if t not in elsewhere]
    calls = prefix_calls(app, selection, actionable) if selection.prefix else []
    if dry_run:
        report.results += [Result(t, True, "would_revoke", None, now) for t in actionable]
        report.prefix_calls = calls
        return report
    vaults = VaultPool.from_env(app.env)  # checks VAULT_ADDR & co. before anything changes
    if confirm is not None and (actionable or calls):
        confirm(describe_plan(report.describe(), actionable, calls))
    wipe_secrets(app, actionable)
    by = settings.actor(app.env)

    def on_result(batch: list[Result]) -> None:
        mark_results(app, batch, by)
        report.results.extend(batch)

    if selection.prefix:
        _revoke_by_prefix(report, actionable, calls, vaults, on_result)
    else:
        in_vault = [t for t in actionable if t.lease_id]
        local_only = [t for t in actionable if not t.lease_id]
        if local_only:
            on_result([bulk.without_lease(t, now) for t in local_only])
        with_progress(in_vault, vaults, concurrency or bulk.concurrency(app.env), on_result, progress)
    bulk.in_order(report.results, targets)
    return report


def with_progress(
    targets: Sequence[Target],
    vaults: VaultPool,
    workers: int,
    on_result: Callable[[list[Result]], None],
    progress: Progress | None,
) -> None:
    """bulk.revoke_targets, with a progress bar when there is more than one target and a terminal."""
    if progress is None or len(targets) <= 1:
        bulk.revoke_targets(targets, vaults, workers, on_result)
        return
    with progress(len(targets)) as bar:

        def counted(batch: list[Result]) -> None:
            on_result(batch)
            bar.update(len(batch))

        bulk.revoke_targets(targets, vaults, workers, counted)


def describe_plan(what: str, targets: Sequence[Target], calls: Sequence[PrefixCall]) -> str:
    kinds = Counter(t.credential_type for t in targets)
    text = f"Revoke {len(targets)} lease{'s' if len(targets) != 1 else ''} ({what}"
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


def prefix_calls(app: App, selection: Selection, targets: Sequence[Target]) -> list[PrefixCall]:
    """revoke-prefix calls for <mount>/creds/<role> and <mount>/sts/<role>, at the configured Vault
    only: in the namespace the request would use now, and in every namespace where a matching
    ledger row of that Vault lives (`targets` holds no other Vault's rows)."""
    if selection.profile:
        profile = profiles.get(app, selection.profile)
        mount, role, namespace = profile.mount, profile.role, app.env.vault_namespace(profile.namespace)
    else:
        assert selection.mount is not None and selection.role is not None  # for_revoke() checked
        mount, role, namespace = selection.mount, selection.role, app.env.vault_namespace()
    places = {(app.env.vault_addr, namespace, mount.strip("/"))}
    places |= {(app.env.vault_addr, t.namespace, _mount_in_namespace(t)) for t in targets if t.lease_id}
    return [
        PrefixCall(addr, ns, f"{m}/{endpoint}/{role}")
        for addr, ns, m in sorted(places)
        for endpoint in ("creds", "sts")
    ]


def _revoke_by_prefix(
    report: RevokeReport,
    targets: Sequence[Target],
    calls: Sequence[PrefixCall],
    vaults: VaultPool,
    on_result: Callable[[list[Result]], None],
) -> None:
    done = []
    for call in calls:
        try:
            vaults.get(call.vault_addr).revoke_prefix(call.prefix, call.namespace)
            done.append(dataclasses.replace(call, ok=True))
        except BrokerError as exc:
            done.append(dataclasses.replace(call, ok=False, error=one_line(exc)))
    report.prefix_calls = done
    failed = {c.namespace: c.error for c in done if not c.ok}
    now = int(time.time())
    results = []
    for t in targets:
        error = failed.get(t.namespace)
        if not t.lease_id:  # no prefix call covers a credential Vault issued without a lease
            results.append(bulk.without_lease(t, now))
        elif error:
            results.append(Result(t, False, "failed", error, now))
        else:
            results.append(Result(t, True, "revoked", None, now))
    on_result(results)


def report_dict(report: RevokeReport) -> dict[str, Any]:
    """The machine-readable report of a run (`--format json`)."""
    from broker import policies

    sts = report.sts_targets()
    return {
        "command": "revoke",
        "dry_run": report.dry_run,
        "at": cache.iso_utc(report.at),
        "selector": report.selection.as_dict(fleet=report.fleet),
        "summary": report.counts(),
        "leases": [
            {**r.target.public(fleet=report.fleet), "result": r.outcome, "error": r.error} for r in report.results
        ],
        "prefix_calls": [dataclasses.asdict(c) for c in report.prefix_calls],
        "sts": {
            "count": len(sts),
            "warning": policies.sts_warning(sts, dry_run=report.dry_run),
            "deny_policies": [p.as_dict() for p in policies.deny_policies(sts, report.at)],
        },
    }
