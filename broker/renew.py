"""Extending renewable leases on request (`broker renew`).

Only iam_user leases are renewable in Vault. STS leases (assumed_role, federation_token,
session_token) cannot be extended: they are reported as not renewable, which is not a failure.
Vault may cap a renewal at the lease's max TTL; the ledger records the end Vault granted.
credential-process renews on its own (broker.leases.renew_cached); this is the manual form.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, select, update

from broker import audit, cache, durations
from broker.errors import UsageError
from broker.models import Lease
from broker.revoke import (
    CHUNK,
    TARGET_COLUMNS,
    Result,
    Target,
    concurrency_from_env,
    run_concurrently,
    vault_factory,
)

MAX_INCREMENT = 32 * 86400  # Vault's own ceiling on any lease (32 days)


@dataclass(frozen=True)
class RenewSelector:
    lease_ids: tuple[str, ...] = ()
    profile: str | None = None
    all: bool = False

    def validated(self) -> RenewSelector:
        if sum([bool(self.lease_ids), bool(self.profile), self.all]) != 1:
            raise UsageError("say which leases: --lease-id ID, --profile P or --all")
        return self

    def describe(self) -> str:
        if self.lease_ids:
            return f"{len(self.lease_ids)} lease id{'s' if len(self.lease_ids) != 1 else ''}"
        return f"profile {self.profile}" if self.profile else "all active leases"


@dataclass
class RenewReport:
    selector: RenewSelector
    increment: int | None
    results: list[Result] = field(default_factory=list)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome == "failed"]

    def summary(self) -> str:
        counts = Counter(r.outcome for r in self.results)
        parts = [
            f"{counts[name]} {name.replace('_', ' ')}"
            for name in ("renewed", "capped", "not_renewable", "failed", "expired", "revoked")
            if counts[name]
        ]
        return f"renew ({self.selector.describe()}): " + (", ".join(parts) if parts else "no active leases")


_COLUMNS = [*TARGET_COLUMNS, Lease.renewable]


def _select(app, selector: RenewSelector, now: int) -> tuple[list[Target], set[int]]:
    renewable: set[int] = set()
    targets: list[Target] = []
    with app.transaction(read_only=True) as session:
        if selector.lease_ids:
            wanted = list(dict.fromkeys(selector.lease_ids))
            rows = []
            for start in range(0, len(wanted), CHUNK):
                rows += session.execute(
                    select(*_COLUMNS).where(Lease.lease_id.in_(wanted[start : start + CHUNK])).order_by(Lease.id)
                ).all()
            missing = set(wanted) - {row[1] for row in rows}
            if missing:
                raise UsageError(f"no lease {sorted(missing)[0]} in the ledger; `broker leases` lists them")
        else:
            where = [Lease.state == "active", Lease.expires_at > now]
            if selector.profile:
                where.append(Lease.profile == selector.profile)
            rows = session.execute(select(*_COLUMNS).where(*where).order_by(Lease.id)).all()
    for row in rows:
        *fields, is_renewable = row
        target = Target(
            lease_id=fields[1],
            namespace=fields[2] or "",
            credential_type=fields[3],
            access_key_id=fields[4],
            role=fields[5],
            mount=fields[6],
            role_session_name=fields[7],
            expires_at=fields[8],
            issued_at=fields[9],
            vault_addr=fields[10],
            role_arn=fields[11],
            profile=fields[12],
            row_id=fields[0],
            state=audit.derived_state(fields[13], fields[8], now),
        )
        targets.append(target)
        if is_renewable and target.lease_id:
            renewable.add(target.row_id)
    return targets, renewable


def renew_matching(app, selector: RenewSelector, *, increment: int | None = None) -> RenewReport:
    """Renew every selected renewable active lease in Vault and record the new expiry."""
    selector = selector.validated()
    if increment is not None and not 0 < increment <= MAX_INCREMENT:
        raise UsageError(f"--increment must be between 1s and {durations.format_duration(MAX_INCREMENT)}")
    now = int(time.time())
    report = RenewReport(selector, increment)
    targets, renewable = _select(app, selector, now)
    to_renew = []
    for t in targets:
        if t.state != "active":
            report.results.append(Result(t, True, t.state, None, now))
        elif t.row_id not in renewable:
            reason = (
                "STS credentials cannot be extended; request a new one when this ends"
                if t.is_sts
                else "Vault issued this lease as not renewable"
            )
            report.results.append(Result(t, True, "not_renewable", reason, now))
        else:
            to_renew.append(t)

    def renew_one(vault, target: Target) -> Result:
        started = int(time.time())
        duration = vault.renew(target.lease_id, target.namespace, increment)
        capped = increment is not None and duration < increment
        note = f"capped by the lease's max TTL at {durations.format_duration(duration)}" if capped else None
        return Result(target, True, "capped" if capped else "renewed", note, started, started + duration)

    def on_result(batch: list[Result]) -> None:
        _record(app, [r for r in batch if r.ok])
        report.results.extend(batch)

    if to_renew:
        run_concurrently(to_renew, renew_one, vault_factory(), concurrency_from_env(), on_result)
    position = {t: i for i, t in enumerate(targets)}
    report.results.sort(key=lambda r: position.get(r.target, len(position)))
    return report


# A capped renewal keeps renewed_at: the cache rule must not count a few capped minutes as a fresh
# lifetime (leases.renew_cached does the same).
_RECORD = (
    update(Lease.__table__)
    .where(Lease.__table__.c.id == bindparam("row"))
    .values(expires_at=bindparam("until"), renewed_at=func.coalesce(bindparam("at"), Lease.__table__.c.renewed_at))
)


def _record(app, results: Sequence[Result]) -> None:
    from broker import leases

    rows = [
        {"row": r.target.row_id, "until": r.expires_at, "at": None if r.outcome == "capped" else r.at} for r in results
    ]
    if not rows:
        return
    with app.transaction() as session:
        session.execute(_RECORD, rows)
        for row in rows:
            leases.enqueue_for_fleet(app, session, row["row"])


REPORT_COLUMNS = ["lease_id", "credential_type", "access_key_id", "result", "expires_at", "detail"]
REPORT_HEADERS = {
    "lease_id": "LEASE ID",
    "credential_type": "TYPE",
    "access_key_id": "ACCESS KEY ID",
    "result": "RESULT",
    "expires_at": "EXPIRES (UTC)",
    "detail": "DETAIL",
}


def report_rows(report: RenewReport) -> list[dict]:
    return [
        {
            "lease_id": r.target.lease_id,
            "credential_type": r.target.credential_type,
            "access_key_id": r.target.access_key_id,
            "result": r.outcome,
            "expires_at": cache.iso_utc(r.expires_at or r.target.expires_at or 0),
            "detail": r.error,
        }
        for r in report.results
    ]
