"""`broker revoke --fleet`: claim the fleet's matching rows, revoke them through broker.revoke's
engine, confirmation and report, and mark them revoked in the shared ledger."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

from sqlalchemy import func, select, update

from broker import cache, settings
from broker import revoke as revoking
from broker.errors import (
    FleetError,
    UsageError,
)
from broker.fleet import PULL_BATCH, TIME_COLUMNS, FleetLedger, pull, require_url, utc
from broker.fleet_listing import FleetSelector, epoch_of, responder, selector_where

log = logging.getLogger(__name__)

# -- `broker revoke --fleet`: claims, the shared revoke engine, marks ----------------------------------------

CLAIM_PER_WORKER = 16  # rows claimed per batch = this many per concurrent Vault worker
OTHERS_WAIT_SECONDS = 120  # how long to wait for rows another responder holds
CLAIM_HOLD_SECONDS = 600  # a claim's transaction may sit this long while Vault answers


@dataclass(frozen=True)
class FleetRevokeSelector:
    """Which fleet leases `broker revoke --fleet` revokes: exactly one kind of selection."""

    lease_ids: tuple[str, ...] = ()
    role: str | None = None
    mount: str | None = None
    host: str | None = None
    user: str | None = None
    all: bool = False

    def validated(self) -> FleetRevokeSelector:
        kinds = [bool(self.lease_ids), bool(self.role), bool(self.host), bool(self.user), self.all]
        if sum(kinds) != 1 or (self.mount and not self.role):
            raise UsageError(
                "say which fleet leases: --role R [--mount M], --host H, --user U, --lease-id ID (repeatable) or --all"
            )
        if any(not lease_id.strip() for lease_id in self.lease_ids):
            raise UsageError("--lease-id needs a non-empty lease id")
        return self

    def describe(self) -> str:
        if self.lease_ids:
            what = f"{len(self.lease_ids)} lease id{'s' if len(self.lease_ids) != 1 else ''}"
        elif self.role:
            what = f"role {self.role}" + (f" on mount {self.mount}" if self.mount else " on any mount")
        elif self.host:
            what = f"host {self.host}"
        elif self.user:
            what = f"user {self.user}"
        else:
            what = "all active leases"
        return f"{what}, every host of the fleet"

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "fleet": True,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()},
        }

    def rows(self, state: str = "active") -> FleetSelector:
        return FleetSelector(
            mount=self.mount,
            role=self.role,
            host=self.host,
            user=self.user,
            lease_ids=self.lease_ids,
            state=state,
        )


@dataclass(frozen=True)
class FleetTarget(revoking.Target):
    """revoke.Target plus the host and OS user a fleet row names (in the json report)."""

    host: str = ""
    os_user: str = ""
    recorded_vault_addr: str = ""  # the host's Vault address, for audit only

    def public(self) -> dict:
        return {**super().public(), "host": self.host, "user": self.os_user}


_TARGET_FIELDS = (
    "lease_id",
    "access_key_id",
    "namespace",
    "credential_type",
    "role",
    "mount",
    "role_session_name",
    "profile",
    "host",
    "os_user",
    "vault_addr",
    "issued_at",
    "expires_at",
    "state",
    "revoked_by",
)


def _target_query(t, where, *, lock: str | None = None, limit: int | None = None, after=None):
    from sqlalchemy import tuple_

    query = select(*[(epoch_of(t.c[n]).label(n) if n in TIME_COLUMNS else t.c[n]) for n in _TARGET_FIELDS]).where(
        *where
    )
    if after is not None:
        query = query.where(tuple_(t.c.lease_id, t.c.access_key_id) > tuple_(*after))
    query = query.order_by(t.c.lease_id, t.c.access_key_id)
    if limit:
        query = query.limit(limit)
    if lock == "skip":
        query = query.with_for_update(skip_locked=True)
    elif lock == "wait":
        query = query.with_for_update()
    return query


def _to_target(row, vault_addr: str, now: float):
    fields = dict(zip(_TARGET_FIELDS, row, strict=True))
    state = "expired" if fields["state"] == "active" and fields["expires_at"] <= now else fields["state"]
    return FleetTarget(
        lease_id=fields["lease_id"],
        namespace=fields["namespace"] or "",
        credential_type=fields["credential_type"],
        access_key_id=fields["access_key_id"],
        role=fields["role"],
        mount=fields["mount"],
        role_session_name=fields["role_session_name"],
        expires_at=fields["expires_at"],
        issued_at=fields["issued_at"],
        vault_addr=vault_addr,
        profile=fields["profile"],
        state=state,
        host=fields["host"],
        os_user=fields["os_user"],
        recorded_vault_addr=fields["vault_addr"],
    )


def _mark(conn, results, revoked_by: str) -> None:
    """Commit a batch's outcomes to the claimed rows: revoked rows get state/time/who; failed rows
    keep `active` with the error (a rerun retries them)."""
    from sqlalchemy import bindparam

    from broker.fleet_models import FleetLease

    t = FleetLease.__table__
    key = (t.c.lease_id == bindparam("k_lease"), t.c.access_key_id == bindparam("k_akid"))
    done = [{"k_lease": r.target.lease_id, "k_akid": r.target.access_key_id, "at": utc(r.at)} for r in results if r.ok]
    failed = [
        {
            "k_lease": r.target.lease_id,
            "k_akid": r.target.access_key_id,
            "error": f"{cache.iso_utc(r.at)} {r.error}",
        }
        for r in results
        if not r.ok
    ]
    if done:
        conn.execute(
            update(t)
            .where(*key, t.c.state == "active")
            .values(state="revoked", revoked_at=bindparam("at"), revoked_by=revoked_by, revoke_error=None),
            done,
        )
    if failed:
        conn.execute(update(t).where(*key, t.c.state == "active").values(revoke_error=bindparam("error")), failed)


def revoke_fleet(
    app,
    selector: FleetRevokeSelector,
    *,
    dry_run: bool = False,
    confirm=None,
    progress=None,
    concurrency: int | None = None,
):
    """`broker revoke --fleet`: revoke every matching active lease of every host in Vault, through
    this machine's Vault address and token and in each row's namespace, and mark the shared rows
    revoked by user@host. Selection, the concurrent engine, the report and the deny policies are
    broker.revoke's; this adds row claims, so two responders at once revoke each lease once:
    rows are claimed in batches (SELECT ... FOR UPDATE SKIP LOCKED), revoked, marked and committed;
    rows another responder holds are waited for and reported as it left them."""
    selector = selector.validated()
    now = int(time.time())
    report = revoking.RevokeReport(selector=selector, dry_run=dry_run, at=now)
    addr = settings.vault_addr()
    ledger = FleetLedger(require_url(app))
    from broker.fleet_models import FleetLease

    t = FleetLease.__table__
    active_where = selector_where(t, selector.rows("active"), func.now())
    try:
        with ledger.begin("reading leases") as conn:
            planned = [_to_target(row, addr, now) for row in conn.execute(_target_query(t, active_where))]
            if selector.lease_ids:
                listed_rows = [
                    _to_target(row, addr, now)
                    for row in conn.execute(_target_query(t, selector_where(t, selector.rows("all"), func.now())))
                ]
        unknown: list = []
        if selector.lease_ids:
            known = {target.lease_id for target in listed_rows}
            for target in listed_rows:
                if target.state in ("revoked", "expired") and target.lease_id not in {p.lease_id for p in planned}:
                    outcome = "already_revoked" if target.state == "revoked" else "expired"
                    report.results.append(revoking.Result(target, True, outcome, None, now))
            unknown = [
                FleetTarget.unknown(lease_id, settings.vault_namespace(), addr)
                for lease_id in dict.fromkeys(selector.lease_ids)
                if lease_id not in known
            ]
        if dry_run:
            report.results += [revoking.Result(x, True, "would_revoke", None, now) for x in planned + unknown]
            return report
        make_vault = _per_thread(revoking.vault_factory())  # checks VAULT_ADDR & co. before anything changes
        if confirm is not None and (planned or unknown):
            confirm(revoking.describe_plan(selector, planned + unknown, []))
        workers = concurrency or revoking.concurrency_from_env()
        by = responder()
        if progress is not None and len(planned) + len(unknown) > 1:
            with progress(len(planned) + len(unknown)) as bar:
                _revoke_claimed(ledger, t, active_where, report, make_vault, workers, by, addr, bar.update)
                _revoke_unknown(unknown, report, make_vault, workers, bar.update)
        else:
            _revoke_claimed(ledger, t, active_where, report, make_vault, workers, by, addr, None)
            _revoke_unknown(unknown, report, make_vault, workers, None)
        _report_others(ledger, t, planned, report, addr, now)
    finally:
        ledger.dispose()
    report.results.sort(key=lambda r: (r.target.host, r.target.lease_id))
    if os.path.exists(app.db_path) and app.ledger_url:
        with contextlib.suppress(FleetError):
            _pull_now(app)  # this machine's own leases among them stop being served at once
    return report


def _per_thread(make_vault):
    """make_vault, remembering each worker thread's Vault across the claimed batches: every batch
    runs on a new pool whose threads replace the last one's, so a thread id is never shared by
    two live threads, and one connection per worker serves the whole run."""
    import threading

    made: dict[tuple[int, str], object] = {}

    def cached(addr: str):
        key = (threading.get_ident(), addr)
        if key not in made:
            made[key] = make_vault(addr)
        return made[key]

    return cached


def _fleet_outcome(result):
    """The engine says `not_in_ledger` for a target without a local row; a fleet row is a ledger row."""
    import dataclasses

    if result.outcome == "not_in_ledger" and result.target.state != "unknown":
        return dataclasses.replace(result, outcome="revoked")
    return result


def _revoke_claimed(ledger, t, active_where, report, make_vault, workers, by, addr, tick) -> None:
    from sqlalchemy import text, tuple_

    attempted: set[tuple[str, str]] = set()
    batch_size = max(1, workers * CLAIM_PER_WORKER)
    after = ("", "")
    deadline = time.monotonic() + OTHERS_WAIT_SECONDS
    phase = "skip"  # first every row nobody holds, in key order; then wait for the rest
    while True:
        with ledger.translated("claiming leases"), ledger.engine.connect() as conn:
            transaction = conn.begin()
            try:
                conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{CLAIM_HOLD_SECONDS}s'"))
                if phase == "skip":
                    query = _target_query(t, active_where, lock="skip", limit=batch_size, after=after)
                else:
                    conn.execute(text(f"SET LOCAL lock_timeout = '{OTHERS_WAIT_SECONDS}s'"))
                    where = list(active_where)
                    if attempted:
                        where.append(tuple_(t.c.lease_id, t.c.access_key_id).notin_(sorted(attempted)))
                    query = _target_query(t, where, lock="wait", limit=batch_size)
                now = time.time()
                claimed = [_to_target(row, addr, now) for row in conn.execute(query)]
                if not claimed:
                    transaction.rollback()
                    if phase == "wait" or time.monotonic() > deadline:
                        return
                    phase = "wait"
                    continue
                if phase == "skip":
                    after = (claimed[-1].lease_id, claimed[-1].access_key_id)
                attempted.update((x.lease_id, x.access_key_id) for x in claimed)
                results = [_fleet_outcome(revoking._without_lease(x, int(now))) for x in claimed if not x.lease_id]

                def on_result(batch: list, results: list = results) -> None:
                    results.extend(_fleet_outcome(r) for r in batch)
                    if tick is not None:
                        tick(len(batch))

                try:
                    revoking.revoke_targets([x for x in claimed if x.lease_id], make_vault, workers, on_result)
                finally:  # even when interrupted: what Vault revoked is marked and committed
                    _mark(conn, results, by)
                    transaction.commit()
                    report.results.extend(results)
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise


def _revoke_unknown(unknown, report, make_vault, workers, tick) -> None:
    """Lease ids the fleet ledger does not know are still revoked in Vault (as the local revoke does)."""

    def on_result(batch: list) -> None:
        report.results.extend(batch)
        if tick is not None:
            tick(len(batch))

    revoking.revoke_targets(unknown, make_vault, workers, on_result)


def _report_others(ledger, t, planned, report, addr, now) -> None:
    """Rows that were active when this run planned, that another responder revoked meanwhile."""
    from sqlalchemy import tuple_

    ours = {(r.target.lease_id, r.target.access_key_id) for r in report.results}
    theirs = [(x.lease_id, x.access_key_id) for x in planned if (x.lease_id, x.access_key_id) not in ours]
    for start in range(0, len(theirs), PULL_BATCH):
        keys = theirs[start : start + PULL_BATCH]
        where = [t.c.state == "revoked", tuple_(t.c.lease_id, t.c.access_key_id).in_(keys)]
        with ledger.begin("reading leases") as conn:
            for row in conn.execute(_target_query(t, where)):
                report.results.append(
                    revoking.Result(
                        _to_target(row, addr, now),
                        True,
                        "already_revoked",
                        f"revoked by {row[-1]} meanwhile",
                        now,
                    )
                )


def _pull_now(app) -> None:
    ledger = FleetLedger(require_url(app))
    try:
        pull(app, ledger)
    finally:
        ledger.dispose()
