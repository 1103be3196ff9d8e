"""`broker whois ID...`: the whole story of an access key id, lease id or role session name, as a
responder holding one from CloudTrail or GuardDuty needs it: the local ledger first, then the fleet
ledger when a URL is set. For an STS credential that AWS still honours, the deny policy that kills
it (Vault's revoke does not). Public fields only (listing.PUBLIC_COLUMNS plus host, user and Vault).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import distinct, or_, select
from sqlalchemy.sql.elements import ColumnElement

from broker import bulk, listing, policies
from broker.errors import FleetError, one_line
from broker.models import Lease
from broker.selection import Selection

if TYPE_CHECKING:
    from broker.app import App

# What whois shows of each lease, in order.
FIELDS = [
    "id",
    "source",
    "lease_id",
    "host",
    "user",
    "profile",
    "mount",
    "role",
    "namespace",
    "credential_type",
    "access_key_id",
    "role_session_name",
    *bulk.IDENTITY_FIELDS,
    "vault_addr",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
    "revoke_error",
    "end_reason",
]
_LOCAL_NAMES = {"user": "os_user"}
ROW_FIELDS = [n for n in FIELDS if n not in ("id", "source")]


@dataclass
class Answer:
    """What the ledgers know of one id: its leases (local first), and where it was looked for."""

    id: str
    looked_in: list[str]
    leases: list[dict[str, Any]] = field(default_factory=list)
    deny_policies: list[policies.DenyPolicy] = field(default_factory=list)
    fleet_error: str | None = None  # the fleet ledger could not be read (the local answer stands)

    @property
    def found(self) -> bool:
        return bool(self.leases)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "found": self.found,
            "looked_in": self.looked_in,
            "leases": [_iso(row) for row in self.leases],
            "deny_policies": [p.as_dict() for p in self.deny_policies],
        }


def whois(app: App, ids: Sequence[str]) -> list[Answer]:
    """Each id's leases from the local ledger (when it exists) and the fleet ledger (when a URL is
    set); the same lease in both is shown once, from the local ledger."""
    import os

    now = int(time.time())
    wanted = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    local = _local(app, wanted) if os.path.exists(app.db_path) else {}
    looked = ["local ledger " + app.db_path]
    fleet: dict[str, list[dict[str, Any]]] = {}
    fleet_error = None
    if app.ledger_url:
        try:
            fleet = _fleet(app, wanted)
            looked.append("fleet ledger " + app.fleet.masked)
        except FleetError as exc:  # the local story still counts when PostgreSQL is down
            fleet_error = one_line(exc)
            looked.append(f"fleet ledger, which failed: {fleet_error}")
    answers = []
    for key in wanted:
        rows = local.get(key, [])
        seen = {(r["lease_id"], r["access_key_id"]) for r in rows}
        rows += [r for r in fleet.get(key, []) if (r["lease_id"], r["access_key_id"]) not in seen]
        for row in rows:
            row["state"] = listing.derived_state(row["state"], row["expires_at"], now)
        answers.append(Answer(key, list(looked), rows, live_sts_policies(app, rows, now), fleet_error))
    return answers


def _local(app: App, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(ids), bulk.CHUNK):
        chunk = ids[start : start + bulk.CHUNK]
        where = or_(Lease.access_key_id.in_(chunk), Lease.lease_id.in_(chunk), Lease.role_session_name.in_(chunk))
        _group(local_rows(app, [where]), chunk, found)
    return found


def _fleet(app: App, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    from broker.fleet.listing import FLEET

    t = FLEET
    found: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(ids), bulk.CHUNK):
        chunk = ids[start : start + bulk.CHUNK]
        # three index-backed lookups (access key, primary key, session name), OR-ed: a BitmapOr
        where = or_(t.c.access_key_id.in_(chunk), t.c.lease_id.in_(chunk), t.c.role_session_name.in_(chunk))
        _group(fleet_rows(app, [where]), chunk, found)
    return found


def _group(rows: Iterable[dict[str, Any]], ids: Sequence[str], found: dict[str, list[dict[str, Any]]]) -> None:
    for row in rows:
        for key in ids:
            if key in (row["access_key_id"], row["lease_id"], row["role_session_name"]):
                found.setdefault(key, []).append(dict(row))


def local_rows(app: App, where: Sequence[ColumnElement[bool]], newest: int | None = None) -> list[dict[str, Any]]:
    """Local ledger rows matching `where` (at most the `newest`), oldest first, as dicts of
    ROW_FIELDS (times in Unix seconds)."""
    columns = [getattr(Lease, _LOCAL_NAMES.get(n, n)) for n in ROW_FIELDS]
    query = select(Lease.role_arn, *columns).where(*where).order_by(Lease.issued_at.desc(), Lease.id.desc())
    with app.transaction(read_only=True) as session:
        rows = [
            {"source": "local", **dict(zip(ROW_FIELDS, values, strict=True)), "role_arn": role_arn}
            for role_arn, *values in session.execute(query.limit(newest))
        ]
    return rows[::-1]


def fleet_rows(app: App, where: Sequence[ColumnElement[bool]], newest: int | None = None) -> list[dict[str, Any]]:
    """Fleet ledger rows matching `where` (at most the `newest`), oldest first, as dicts of
    ROW_FIELDS (times in Unix seconds)."""
    from broker.fleet.listing import FLEET, epoch_of

    t = FLEET
    columns = [
        (epoch_of(t.c[n]) if n in listing.TIME_COLUMNS else t.c[_LOCAL_NAMES.get(n, n)]).label(n) for n in ROW_FIELDS
    ]
    query = select(*columns).where(*where).order_by(t.c.issued_at.desc(), t.c.lease_id.desc()).limit(newest)
    with app.fleet.begin("looking up leases") as conn:
        rows = [
            {"source": "fleet", **dict(zip(ROW_FIELDS, values, strict=True)), "role_arn": None}
            for values in conn.execute(query)
        ]
    return rows[::-1]


def live_sts_policies(app: App, rows: Iterable[dict[str, Any]], now: int) -> list[policies.DenyPolicy]:
    """The deny policies that kill the STS credentials among `rows` that AWS still honours
    (revoked in Vault or not: Vault's revoke does not reach AWS for them)."""
    live = [t for t in (_target(r, app) for r in rows) if t.is_sts and (t.expires_at or 0) > now]
    return policies.deny_policies(live, now) if live else []


def _role_arn(row: dict[str, Any]) -> str | None:
    """The IAM role behind an assumed_role lease: recorded, else read off the principal ARN
    (arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION)."""
    if row.get("role_arn"):
        return str(row["role_arn"])
    arn = row.get("principal_arn") or ""
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[5].startswith("assumed-role/") and parts[5].count("/") >= 2:
        return f"arn:{parts[1]}:iam::{parts[4]}:role/{parts[5].split('/')[1]}"
    return None


def _target(row: dict[str, Any], app: App) -> bulk.Target:
    return bulk.Target(
        lease_id=row["lease_id"],
        namespace=row["namespace"] or "",
        credential_type=row["credential_type"],
        access_key_id=row["access_key_id"],
        role=row["role"],
        mount=row["mount"],
        role_session_name=row["role_session_name"],
        expires_at=row["expires_at"],
        issued_at=row["issued_at"],
        vault_addr=row["vault_addr"] or app.env.vault_addr,
        role_arn=_role_arn(row),
        profile=row["profile"],
    )


def _iso(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in FIELDS if name != "id"}
    for name in listing.TIME_COLUMNS:
        out[name] = listing.iso_or_none(row.get(name))
    return out


def table_rows(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """One table row per (id, lease): times readable."""
    rows = []
    for answer in answers:
        for lease in answer.leases:
            row = {"id": answer.id, **_iso(lease)}
            for name in listing.TIME_COLUMNS:
                row[name] = listing.readable_time(lease[name])
            rows.append(row)
    return rows


# -- which access keys a selection finds nothing for (`leases --access-key`) ----------------------------


def unmatched_access_keys(app: App, selection: Selection, *, fleet: bool) -> list[str]:
    """The selection's access key ids that no row it names carries (one index-backed query)."""
    if fleet:
        from broker.fleet.listing import FLEET, where

        with app.fleet.begin("listing leases") as conn:
            seen = set(conn.execute(select(distinct(FLEET.c.access_key_id)).where(*where(selection))).scalars())
    else:
        now = int(time.time())
        with app.transaction(read_only=True) as session:
            seen = set(
                session.execute(
                    select(distinct(Lease.access_key_id)).where(*selection.conditions(listing.LEDGER_COLUMNS, now))
                ).scalars()
            )
    return [key for key in selection.access_keys if key not in seen]


def render_text(answers: Sequence[Answer]) -> str:
    """Each id, each of its leases as `field  value` lines, then the deny policies."""
    lines: list[str] = []
    width = max(len(n) for n in FIELDS)
    for answer in answers:
        if not answer.found:
            continue  # said on stderr, with where it looked
        if lines:
            lines.append("")
        count = len(answer.leases)
        lines.append(f"{answer.id}: {count} lease{'s' if count != 1 else ''}")
        for row in table_rows([answer]):
            lines.append("")
            for name in FIELDS[1:]:
                value = row.get(name)
                if value not in (None, ""):
                    lines.append(f"  {name.ljust(width)}  {_printable(value)}")
        for policy in answer.deny_policies:
            lines.append("")
            lines.append(f"  # STS credential still live in AWS: {policy.note}")
            lines.append(f"  {policy.command()}")
    return "\n".join(lines) + "\n" if lines else ""


def _printable(value: object) -> str:
    text = str(value)
    return text if text.isprintable() else repr(text)
