"""Extending renewable leases on request (`broker renew`).

Only iam_user leases are renewable in Vault. STS leases (assumed_role, federation_token,
session_token) cannot be extended: they are reported as not renewable, which is not a failure.
Vault may cap a renewal at the lease's max TTL; the ledger records the end Vault granted.
credential-process renews on its own (broker.issuance.renew_cached); this is the manual form.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select, update

from broker import bulk, crypto, durations, issuance, listing
from broker.bulk import Result, Target, VaultPool
from broker.errors import UsageError
from broker.models import LEASES
from broker.selection import Selection

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from broker.app import App
    from broker.vault import Vault

MAX_INCREMENT = 32 * 86400  # Vault's own ceiling on any lease (32 days)
OUTCOMES = ("renewed", "capped", "not_renewable", "failed", "other_vault", "expired", "revoked")


@dataclass
class RenewReport:
    selection: Selection
    increment: int | None
    results: list[Result] = field(default_factory=list)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome in ("failed", bulk.OTHER_VAULT)]

    def summary(self) -> str:
        counts = Counter(r.outcome for r in self.results)
        parts = [f"{counts[name]} {name.replace('_', ' ')}" for name in OUTCOMES if counts[name]]
        return f"renew ({self.selection.describe()}): " + (", ".join(parts) if parts else "no active leases")


def _select(app: App, selection: Selection, now: int) -> list[Target]:
    if not selection.lease_ids:
        return bulk.local_targets(app, selection.replace(state="active").conditions(listing.LEDGER_COLUMNS, now), now)
    found = bulk.local_targets_by_lease_id(app, selection.lease_ids, now)
    missing = [lease_id for lease_id in dict.fromkeys(selection.lease_ids) if lease_id not in found]
    if missing:
        raise UsageError(f"no lease {sorted(missing)[0]} in the ledger; `broker leases` lists them")
    return sorted((t for rows in found.values() for t in rows), key=lambda t: t.row_id or 0)


def renew_matching(app: App, selection: Selection, *, increment: int | None = None) -> RenewReport:
    """Renew every selected renewable active lease in Vault and record the new expiry."""
    selection = selection.for_renew()
    if increment is not None and not 0 < increment <= MAX_INCREMENT:
        raise UsageError(f"--increment must be between 1s and {durations.format_duration(MAX_INCREMENT)}")
    now = int(time.time())
    report = RenewReport(selection, increment)
    targets = _select(app, selection, now)
    to_renew = []
    for t in targets:
        if t.state != "active":
            report.results.append(Result(t, True, t.state, None, now))
        elif not (t.renewable and t.lease_id):
            reason = (
                "STS credentials cannot be extended; request a new one when this ends"
                if t.is_sts
                else "Vault issued this lease as not renewable"
            )
            report.results.append(Result(t, True, "not_renewable", reason, now))
        else:
            to_renew.append(t)

    def renew_one(vault: Vault, target: Target) -> Result:
        started = int(time.time())
        duration = vault.renew(target.lease_id, target.namespace, increment)
        capped = increment is not None and duration < increment
        note = f"capped by the lease's max TTL at {durations.format_duration(duration)}" if capped else None
        return Result(target, True, "capped" if capped else "renewed", note, started, started + duration)

    def on_result(batch: list[Result]) -> None:
        _record(app, [r for r in batch if r.ok])
        report.results.extend(batch)

    if to_renew:
        bulk.run_concurrently(to_renew, renew_one, VaultPool.from_env(app.env), bulk.concurrency(app.env), on_result)
    bulk.in_order(report.results, targets)
    return report


# A capped renewal keeps renewed_at: the cache rule must not count a few capped minutes as a fresh
# lifetime (issuance.renew_cached does the same).
_RECORD = (
    update(LEASES)
    .where(LEASES.c.id == bindparam("row"))
    .values(expires_at=bindparam("until"), renewed_at=func.coalesce(bindparam("at"), LEASES.c.renewed_at))
)


_RESEAL = (
    update(LEASES).where(LEASES.c.id == bindparam("row")).values(secret=bindparam("s"), sealed_token=bindparam("t"))
)


def _record(app: App, results: Sequence[Result]) -> None:
    rows: list[dict[str, Any]] = [
        {"row": r.target.row_id, "until": r.expires_at, "at": None if r.outcome == "capped" else r.at} for r in results
    ]
    if not rows:
        return
    try:
        key = app.key(create=False)
    except UsageError:  # an unusable key opens nothing: the secrets are wiped below
        key = None
    with app.transaction() as session:
        resealed = _reseal(session, key, {row["row"]: row["until"] for row in rows})
        session.execute(_RECORD, rows)
        if resealed:
            session.execute(_RESEAL, resealed)
        for row in rows:
            issuance.enqueue_for_fleet(app, session, row["row"])


def _reseal(session: Session, key: bytes | None, until: dict[int, int]) -> list[dict[str, Any]]:
    """A cached secret is sealed for its row's expiry (crypto.row_aad): open each selected row's
    secret with the old expires_at and seal it with the new one, in the caller's transaction. A
    secret that does not open (another key, a damaged or moved blob) is wiped."""
    c = LEASES.c
    found: list[Any] = []
    ids = list(until)
    for start in range(0, len(ids), bulk.CHUNK):
        found += session.execute(
            select(c.id, c.lease_id, c.cache_key, c.access_key_id, c.expires_at, c.secret, c.sealed_token).where(
                c.id.in_(ids[start : start + bulk.CHUNK]), c.secret.is_not(None)
            )
        ).all()
    params: list[dict[str, Any]] = []
    for row_id, lease_id, cache_key, access_key_id, expires_at, blob, token_blob in found:
        opened = None
        if key is not None:
            opened = crypto.open_credential(key, lease_id, cache_key, access_key_id, expires_at, blob, token_blob)
        if key is None or opened is None:
            params.append({"row": row_id, "s": None, "t": None})
            continue
        secret, token = crypto.seal_credential(key, lease_id, cache_key, access_key_id, until[row_id], *opened)
        params.append({"row": row_id, "s": secret, "t": token})
    return params
