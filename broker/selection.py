"""Which leases a command means: one `Selection` for `leases`, `revoke`, `renew` and their `--fleet`
forms, local ledger or fleet ledger alike. Every given filter must match (AND).

`conditions()` turns it into SQL over any table that names its columns as the ledgers do (the
local `leases` table and the fleet's `fleet_leases`), so a new selector is added here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_
from sqlalchemy.sql.elements import ColumnElement

from broker.errors import UsageError

STATES = ("active", "expired", "revoked", "all")

# The columns `conditions()` reads: selection field -> column name in both ledgers.
FILTER_COLUMNS = {"profile": "profile", "mount": "mount", "role": "role", "host": "host", "user": "os_user"}


@dataclass(frozen=True)
class Selection:
    lease_ids: tuple[str, ...] = ()
    profile: str | None = None
    mount: str | None = None
    role: str | None = None
    host: str | None = None  # a fleet row's host (its BROKER_HOST)
    user: str | None = None  # a fleet row's OS user
    state: str = "all"  # active | expired (active past its end) | revoked | all
    all: bool = False  # revoke/renew: every active lease, said explicitly
    prefix: bool = False  # revoke: server-side revoke-prefix as well

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise UsageError(f"invalid state {self.state!r}: one of {', '.join(STATES)}")
        if self.mount is not None:
            object.__setattr__(self, "mount", self.mount.strip("/"))

    def replace(self, **changes: Any) -> Selection:
        return dataclasses.replace(self, **changes)

    # -- what each command accepts ---------------------------------------------------------------

    def for_revoke(self) -> Selection:
        """Exactly one kind: lease ids, a role (optionally on one mount), a mount, a profile, or all.
        With `prefix`, Vault revokes server-side under <mount>/creds/<role> and <mount>/sts/<role>."""
        kinds = [bool(self.lease_ids), bool(self.role or self.mount), bool(self.profile), self.all]
        if sum(kinds) != 1:
            raise UsageError(
                "say which leases: --lease-id ID (repeatable), --role R [--mount M], --profile P, --mount M or --all"
            )
        if self.prefix and not ((self.role and self.mount) or self.profile):
            raise UsageError("--prefix needs --role R with --mount M, or --profile P")
        return self._lease_ids_checked()

    def for_fleet_revoke(self) -> Selection:
        kinds = [bool(self.lease_ids), bool(self.role), bool(self.host), bool(self.user), self.all]
        if sum(kinds) != 1 or (self.mount and not self.role):
            raise UsageError(
                "say which fleet leases: --role R [--mount M], --host H, --user U, --lease-id ID (repeatable) or --all"
            )
        return self._lease_ids_checked()

    def for_renew(self) -> Selection:
        if sum([bool(self.lease_ids), bool(self.profile), self.all]) != 1:
            raise UsageError("say which leases: --lease-id ID, --profile P or --all")
        return self._lease_ids_checked()

    def _lease_ids_checked(self) -> Selection:
        if any(not lease_id.strip() for lease_id in self.lease_ids):
            raise UsageError("--lease-id needs a non-empty lease id")
        return self

    # -- SQL ----------------------------------------------------------------------------------------

    def conditions(self, columns: Mapping[str, ColumnElement[Any]], now: Any) -> list[ColumnElement[bool]]:
        """The WHERE clauses over `columns` (name -> column) at time `now` (Unix seconds for the
        local ledger, `now()` for the fleet's timestamps)."""
        clauses: list[ColumnElement[bool]] = []
        for field, column in FILTER_COLUMNS.items():
            value = getattr(self, field)
            if value is not None:
                clauses.append(columns[column] == value)
        if self.lease_ids:
            clauses.append(columns["lease_id"].in_(list(dict.fromkeys(self.lease_ids))))
        state, expires_at = columns["state"], columns["expires_at"]
        if self.state == "active":
            clauses.append(and_(state == "active", expires_at > now))
        elif self.state == "expired":
            clauses.append(and_(state == "active", expires_at <= now))
        elif self.state == "revoked":
            clauses.append(state == "revoked")
        return clauses

    # -- words ---------------------------------------------------------------------------------------

    def describe(self, *, fleet: bool = False) -> str:
        parts = []
        if self.lease_ids:
            parts.append(f"{len(self.lease_ids)} lease id{'s' if len(self.lease_ids) != 1 else ''}")
        if self.profile:
            parts.append(f"profile {self.profile}")
        if self.role:
            parts.append(f"role {self.role}" + (f" on mount {self.mount}" if self.mount else " on any mount"))
        elif self.mount:
            parts.append(f"mount {self.mount}")
        if self.host:
            parts.append(f"host {self.host}")
        if self.user:
            parts.append(f"user {self.user}")
        what = ", ".join(parts) or "all active leases"
        return f"{what}, every host of the fleet" if fleet else what

    def as_dict(self, *, fleet: bool = False) -> dict[str, Any]:
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        return {"fleet": True, **fields} if fleet else fields
