"""`broker revoke --fleet`: claim the fleet's matching rows, revoke them through broker.bulk's
engine (with broker.revoke's confirmation and report), and mark them revoked in the shared ledger."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, select, text, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from broker import bulk, cache, settings
from broker import revoke as revoking
from broker.bulk import Result, Target, VaultPool
from broker.errors import FleetError
from broker.fleet.ledger import PULL_BATCH, TIME_COLUMNS, FleetLedger, pull, utc
from broker.fleet.listing import FLEET, epoch_of, where
from broker.selection import Selection

if TYPE_CHECKING:
    from sqlalchemy import Table

    from broker.app import App

CLAIM_PER_WORKER = 16  # rows claimed per batch = this many per concurrent Vault worker
OTHERS_WAIT_SECONDS = 120  # how long to wait for rows another responder holds
CLAIM_HOLD_SECONDS = 600  # a claim's transaction may sit this long while Vault answers

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
    *bulk.IDENTITY_FIELDS,
    "db_user",
    "revoked_by",
)


def _target_query(
    t: Table,
    conditions: Sequence[ColumnElement[bool]],
    *,
    lock: str | None = None,
    limit: int | None = None,
    after: tuple[str, str] | None = None,
) -> Select[Any]:
    query = select(*[(epoch_of(t.c[n]).label(n) if n in TIME_COLUMNS else t.c[n]) for n in _TARGET_FIELDS]).where(
        *conditions
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


def _to_target(row: Row[Any], vault_addr: str, now: float) -> Target:
    fields = dict(zip(_TARGET_FIELDS, row, strict=True))
    state = "expired" if fields["state"] == "active" and fields["expires_at"] <= now else fields["state"]
    return Target(
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
        identity=tuple((name, fields[name]) for name in bulk.IDENTITY_FIELDS),
        db_user=fields["db_user"] or "",
    )


def lease_id_problem(target: Target, selection: Selection) -> str | None:
    """Why a fleet row's lease id must not be sent to Vault with the responder's token, or None.
    A host login writes every field of its rows, so the id must be what the AWS engine issues for
    the row's own mount and role (`<mount>/creds/<role>/<id>` or `<mount>/sts/<role>/<id>`; the
    `.<namespace id>` suffix exactly when the row has a namespace, vault-api.md 1.5), and that mount
    and role must be the ones the selection names. Lease ids the responder typed are theirs."""
    if selection.lease_ids:
        return None
    parts = target.lease_id.split("/")
    mount = target.mount.strip("/")
    problem = ""
    if len(parts) < 4 or parts[-3] not in ("creds", "sts") or not parts[-1]:
        problem = "is not an AWS secrets engine lease id"
    elif parts[-2] != target.role or (selection.role and target.role != selection.role):
        problem = f"is not for role {selection.role or target.role}"
    else:
        lease_mount = "/".join(parts[:-3])
        if not (mount == lease_mount or mount.endswith("/" + lease_mount)) or (
            selection.mount and mount != selection.mount
        ):
            problem = f"is not under mount {selection.mount or mount}"
        elif ("." in parts[-1]) != bool(target.namespace or mount != lease_mount):
            problem = "does not match the row's namespace"
        elif target.credential_type not in cache.CREDENTIAL_TYPES:
            problem = f"has credential type {target.credential_type!r}"
    if not problem:
        return None
    return (
        f"refused: lease id {target.lease_id!r} {problem} (expected {mount}/creds/{target.role}/... or "
        f"{mount}/sts/{target.role}/...); not sent to Vault; the row was pushed by {target.db_user or 'unknown'}"
    )


def _mark(conn: Connection, results: Sequence[Result], revoked_by: str) -> None:
    """Commit a batch's outcomes to the claimed rows: revoked rows get state/time/who; failed rows
    keep `active` with the error (a rerun retries them)."""
    t = FLEET
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
    app: App,
    selection: Selection,
    *,
    dry_run: bool = False,
    confirm: revoking.Confirm | None = None,
    progress: revoking.Progress | None = None,
    concurrency: int | None = None,
) -> revoking.RevokeReport:
    """`broker revoke --fleet`: revoke every matching active lease of every host in Vault, through
    this machine's Vault address and token and in each row's namespace, and mark the shared rows
    revoked by user@host. Selection, the concurrent engine, the report and the deny policies are
    shared with `broker revoke`; this adds row claims, so two responders at once revoke each lease
    once: rows are claimed in batches (SELECT ... FOR UPDATE SKIP LOCKED), revoked, marked and
    committed; rows another responder holds are waited for and reported as it left them."""
    selection = selection.for_fleet_revoke()
    now = int(time.time())
    report = revoking.RevokeReport(selection=selection, dry_run=dry_run, at=now, fleet=True)
    addr = app.env.vault_addr
    ledger = app.fleet
    t = FLEET
    active_where = where(selection.replace(state="active"))
    with ledger.begin("reading leases") as conn:
        planned = [_to_target(row, addr, now) for row in conn.execute(_target_query(t, active_where))]
        listed_rows = []
        if selection.lease_ids or selection.access_keys:
            listed_rows = [
                _to_target(row, addr, now)
                for row in conn.execute(_target_query(t, where(selection.replace(state="all"))))
            ]
    unknown: list[Target] = []
    if selection.lease_ids or selection.access_keys:
        planned_ids = {(p.lease_id, p.access_key_id) for p in planned}
        planned_keys = {p.access_key_id for p in planned}
        for target in listed_rows:
            if target.state not in ("revoked", "expired") or (target.lease_id, target.access_key_id) in planned_ids:
                continue
            if selection.access_keys and target.access_key_id in planned_keys:
                continue  # the key has an active row too: that one is revoked
            outcome = "already_revoked" if target.state == "revoked" else "expired"
            report.results.append(Result(target, True, outcome, None, now))
    if selection.access_keys:  # a key id is not a lease id: an unknown key is reported, sent nowhere
        known_keys = {target.access_key_id for target in listed_rows}
        report.results += [
            Result(revoking.unknown_key(key, addr), True, "unknown", revoking.UNKNOWN_KEY, now)
            for key in selection.access_keys
            if key not in known_keys
        ]
    if selection.lease_ids:
        known = {target.lease_id for target in listed_rows}
        unknown = [
            Target.unknown(lease_id, app.env.vault_namespace(), addr)
            for lease_id in dict.fromkeys(selection.lease_ids)
            if lease_id not in known
        ]
    if dry_run:
        for x in planned + unknown:
            why = lease_id_problem(x, selection) if x.lease_id and x.state != "unknown" else None
            report.results.append(Result(x, not why, "failed" if why else "would_revoke", why, now))
        return report
    vaults = VaultPool.from_env(app.env)  # checks VAULT_ADDR & co. before anything changes
    if confirm is not None and (planned or unknown):
        confirm(revoking.describe_plan(report.describe(), planned + unknown, []))
    workers = concurrency or bulk.concurrency(app.env)
    by = settings.actor(app.env)
    if progress is not None and len(planned) + len(unknown) > 1:
        with progress(len(planned) + len(unknown)) as bar:
            _revoke_claimed(ledger, selection, active_where, report, vaults, workers, by, addr, bar.update)
            _revoke_unknown(unknown, report, vaults, workers, bar.update)
    else:
        _revoke_claimed(ledger, selection, active_where, report, vaults, workers, by, addr, None)
        _revoke_unknown(unknown, report, vaults, workers, None)
    _report_others(ledger, planned, report, addr, now)
    report.results.sort(key=lambda r: (r.target.host, r.target.lease_id))
    if os.path.exists(app.db_path):
        with contextlib.suppress(FleetError):
            pull(app)  # this machine's own leases among them stop being served at once
    return report


def _fleet_outcome(result: Result) -> Result:
    """The engine says `not_in_ledger` for a target without a local row; a fleet row is a ledger row."""
    if result.outcome == "not_in_ledger" and result.target.state != "unknown":
        return dataclasses.replace(result, outcome="revoked")
    return result


def _revoke_claimed(
    ledger: FleetLedger,
    selection: Selection,
    active_where: Sequence[ColumnElement[bool]],
    report: revoking.RevokeReport,
    vaults: VaultPool,
    workers: int,
    by: str,
    addr: str,
    tick: Callable[[int], None] | None,
) -> None:
    t = FLEET
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
                        where.append(_not_attempted(t, attempted))
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
                results = [_fleet_outcome(bulk.without_lease(x, int(now))) for x in claimed if not x.lease_id]
                refused = {x: lease_id_problem(x, selection) for x in claimed if x.lease_id}
                results += [Result(x, False, "failed", why, int(now)) for x, why in refused.items() if why]

                def on_result(batch: list[Result], results: list[Result] = results) -> None:
                    results.extend(_fleet_outcome(r) for r in batch)
                    if tick is not None:
                        tick(len(batch))

                try:
                    bulk.revoke_targets([x for x, why in refused.items() if not why], vaults, workers, on_result)
                finally:  # even when interrupted: what Vault revoked is marked and committed
                    _mark(conn, results, by)
                    transaction.commit()
                    report.results.extend(results)
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise


def _not_attempted(t: Any, attempted: set[tuple[str, str]]) -> ColumnElement[bool]:
    """(lease_id, access_key_id) not among `attempted`, as two array parameters unnested: a literal
    NOT IN list of 10,000 pairs overflows PostgreSQL's parser stack ("stack depth limit exceeded")."""
    from sqlalchemy import Text, func
    from sqlalchemy.dialects.postgresql import ARRAY

    pairs = sorted(attempted)
    ids = bindparam("attempted_ids", [p[0] for p in pairs], type_=ARRAY(Text))
    keys = bindparam("attempted_keys", [p[1] for p in pairs], type_=ARRAY(Text))
    done = func.unnest(ids, keys).table_valued("lease_id", "access_key_id").render_derived(name="attempted")
    return tuple_(t.c.lease_id, t.c.access_key_id).notin_(select(done.c.lease_id, done.c.access_key_id))


def _revoke_unknown(
    unknown: Sequence[Target],
    report: revoking.RevokeReport,
    vaults: VaultPool,
    workers: int,
    tick: Callable[[int], None] | None,
) -> None:
    """Lease ids the fleet ledger does not know are still revoked in Vault (as the local revoke does)."""

    def on_result(batch: list[Result]) -> None:
        report.results.extend(batch)
        if tick is not None:
            tick(len(batch))

    bulk.revoke_targets(unknown, vaults, workers, on_result)


def _report_others(
    ledger: FleetLedger, planned: Sequence[Target], report: revoking.RevokeReport, addr: str, now: int
) -> None:
    """Rows that were active when this run planned, that another responder revoked meanwhile."""
    t = FLEET
    ours = {(r.target.lease_id, r.target.access_key_id) for r in report.results}
    theirs = [(x.lease_id, x.access_key_id) for x in planned if (x.lease_id, x.access_key_id) not in ours]
    for start in range(0, len(theirs), PULL_BATCH):
        keys = theirs[start : start + PULL_BATCH]
        where = [t.c.state == "revoked", tuple_(t.c.lease_id, t.c.access_key_id).in_(keys)]
        with ledger.begin("reading leases") as conn:
            for row in conn.execute(_target_query(t, where)):
                report.results.append(
                    Result(
                        _to_target(row, addr, now),
                        True,
                        "already_revoked",
                        f"revoked by {row[-1]} meanwhile",
                        now,
                    )
                )


def active_targets(ledger: FleetLedger, conditions: Sequence[ColumnElement[bool]], vault_addr: str) -> list[Target]:
    """The fleet rows matching `conditions` as Targets for `vault_addr` (used by `reconcile --fleet`)."""
    now = time.time()
    with ledger.begin("reading leases") as conn:
        return [_to_target(row, vault_addr, now) for row in conn.execute(_target_query(FLEET, conditions))]


def known_places(ledger: FleetLedger) -> tuple[set[str], set[tuple[str, str, str, str]]]:
    """Every lease id the fleet ledger records, and every (namespace, mount, role, lease id) it has seen."""
    t = FLEET
    with ledger.begin("reading leases") as conn:
        rows = conn.execute(select(t.c.namespace, t.c.mount, t.c.role, t.c.lease_id)).all()
    return {str(r[3]) for r in rows if r[3]}, {(r[0] or "", r[1], r[2], r[3] or "") for r in rows}


def mark_ended(ledger: FleetLedger, results: Sequence[Result], by: str) -> None:
    """Rows Vault no longer knows: state revoked, by `reconcile by user@host`, with the end_reason."""
    t = FLEET
    ended = [
        {"k_lease": r.target.lease_id, "k_akid": r.target.access_key_id, "at": utc(r.at), "reason": r.error}
        for r in results
        if r.outcome == "ended"
    ]
    if not ended:
        return
    with ledger.begin("marking leases") as conn:
        conn.execute(
            update(t)
            .where(
                t.c.lease_id == bindparam("k_lease"), t.c.access_key_id == bindparam("k_akid"), t.c.state == "active"
            )
            .values(state="revoked", revoked_at=bindparam("at"), revoked_by=by, end_reason=bindparam("reason")),
            ended,
        )
