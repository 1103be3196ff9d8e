"""Which leases a command means: one `Selection` for `leases`, `revoke`, `renew` and their `--fleet`
forms, local ledger or fleet ledger alike. Every given filter must match (AND).

`conditions()` turns it into SQL over any table that names its columns as the ledgers do (the
local `leases` table and the fleet's `fleet_leases`), so a new selector is added here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_
from sqlalchemy.sql.elements import ColumnElement

from broker.errors import UsageError

STATES = ("active", "expired", "revoked", "all")

# The columns `conditions()` reads: selection field -> column name in both ledgers.
FILTER_COLUMNS = {
    "profile": "profile",
    "mount": "mount",
    "role": "role",
    "host": "host",
    "user": "os_user",
    "namespace": "namespace",
    "session_name": "role_session_name",
    "entity_id": "entity_id",
    "accessor": "token_accessor",
    "display_name": "display_name",
    "account": "account_id",
}
# The responder's selectors (`--access-key` & co.): each narrows any other selection (AND).
RESPONDER_FIELDS = (
    "access_keys",
    "issued_after",
    "issued_before",
    "namespace",
    "session_name",
    "entity_id",
    "accessor",
    "display_name",
    "account",
)


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
    access_keys: tuple[str, ...] = ()  # AKIA.../ASIA... ids, e.g. from CloudTrail
    issued_after: int | None = None  # Unix seconds
    issued_before: int | None = None
    namespace: str | None = None  # "" = the root namespace
    session_name: str | None = None
    entity_id: str | None = None  # the Vault identity of the token that asked
    accessor: str | None = None
    display_name: str | None = None
    account: str | None = None  # the AWS account id

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise UsageError(f"invalid state {self.state!r}: one of {', '.join(STATES)}")
        if self.mount is not None:
            object.__setattr__(self, "mount", self.mount.strip("/"))
        if self.namespace is not None:
            object.__setattr__(self, "namespace", self.namespace.strip("/"))
        if any(not key.strip() for key in self.access_keys):
            raise UsageError("--access-key needs a non-empty access key id")
        object.__setattr__(self, "access_keys", tuple(dict.fromkeys(k.strip() for k in self.access_keys)))
        if self.issued_after is not None and self.issued_before is not None and self.issued_after >= self.issued_before:
            raise UsageError("--issued-after must be earlier than --issued-before")

    @property
    def narrowed(self) -> bool:
        """True when a responder's selector (--access-key, --issued-after, --entity, ...) is given."""
        return any(getattr(self, name) not in (None, ()) for name in RESPONDER_FIELDS)

    def replace(self, **changes: Any) -> Selection:
        return dataclasses.replace(self, **changes)

    # -- what each command accepts ---------------------------------------------------------------

    def for_revoke(self) -> Selection:
        """Exactly one kind: lease ids, a role (optionally on one mount), a mount, a profile, or all.
        With `prefix`, Vault revokes server-side under <mount>/creds/<role> and <mount>/sts/<role>.
        The responder's selectors are a selection of their own and narrow a role, mount or profile."""
        kinds = [bool(self.lease_ids), bool(self.role or self.mount), bool(self.profile), self.all]
        if self.narrowed:
            self._narrowing_checked()
            if self.prefix:
                raise UsageError(
                    "--prefix revokes everything under a role: it does not combine with --access-key & co."
                )
            return self
        if sum(kinds) != 1:
            raise UsageError(
                "say which leases: --lease-id ID (repeatable), --role R [--mount M], --profile P, --mount M or --all"
            )
        if self.prefix and not ((self.role and self.mount) or self.profile):
            raise UsageError("--prefix needs --role R with --mount M, or --profile P")
        return self._lease_ids_checked()

    def for_fleet_revoke(self) -> Selection:
        kinds = [bool(self.lease_ids), bool(self.role), bool(self.host), bool(self.user), self.all]
        if self.narrowed:
            return self._narrowing_checked()
        if sum(kinds) != 1 or (self.mount and not self.role):
            raise UsageError(
                "say which fleet leases: --role R [--mount M], --host H, --user U, --lease-id ID (repeatable) or --all"
            )
        return self._lease_ids_checked()

    def for_renew(self) -> Selection:
        if sum([bool(self.lease_ids), bool(self.profile), self.all]) != 1:
            raise UsageError("say which leases: --lease-id ID, --profile P or --all")
        return self._lease_ids_checked()

    def _narrowing_checked(self) -> Selection:
        if self.lease_ids or self.all:
            raise UsageError("--lease-id and --all do not combine with --access-key, --issued-after and the like")
        return self

    def _lease_ids_checked(self) -> Selection:
        if any(not lease_id.strip() for lease_id in self.lease_ids):
            raise UsageError("--lease-id needs a non-empty lease id")
        return self

    # -- SQL ----------------------------------------------------------------------------------------

    def conditions(
        self,
        columns: Mapping[str, ColumnElement[Any]],
        now: Any,
        time_value: Callable[[int], Any] = int,
    ) -> list[ColumnElement[bool]]:
        """The WHERE clauses over `columns` (name -> column) at time `now` (Unix seconds for the
        local ledger, `now()` for the fleet's timestamps); `time_value` turns Unix seconds into
        the ledger's time type (the fleet's: a datetime)."""
        clauses: list[ColumnElement[bool]] = []
        for field, column in FILTER_COLUMNS.items():
            value = getattr(self, field)
            if value is not None:
                clauses.append(columns[column] == value)
        if self.lease_ids:
            clauses.append(columns["lease_id"].in_(list(dict.fromkeys(self.lease_ids))))
        if self.access_keys:
            clauses.append(columns["access_key_id"].in_(list(self.access_keys)))
        if self.issued_after is not None:
            clauses.append(columns["issued_at"] >= time_value(self.issued_after))
        if self.issued_before is not None:
            clauses.append(columns["issued_at"] < time_value(self.issued_before))
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
        if self.access_keys:
            n = len(self.access_keys)
            parts.append(f"{n} access key{'s' if n != 1 else ''}" if n > 1 else f"access key {self.access_keys[0]}")
        if self.issued_after is not None:
            parts.append(f"issued from {_iso(self.issued_after)}")
        if self.issued_before is not None:
            parts.append(f"issued before {_iso(self.issued_before)}")
        for field, words in (
            ("namespace", "namespace"),
            ("session_name", "session name"),
            ("entity_id", "Vault entity"),
            ("accessor", "token accessor"),
            ("display_name", "Vault display name"),
            ("account", "AWS account"),
        ):
            value = getattr(self, field)
            if value is not None:
                parts.append(f"{words} {value or '(root)'}")
        what = ", ".join(parts) or "all active leases"
        return f"{what}, every host of the fleet" if fleet else what

    def as_dict(self, *, fleet: bool = False) -> dict[str, Any]:
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        for name in ("issued_after", "issued_before"):
            epoch = getattr(self, name)
            if epoch is not None:
                fields[name] = _iso(epoch)
        return {"fleet": True, **fields} if fleet else fields


def _iso(epoch: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse_time(text: str, now: float) -> int:
    """An --issued-after/--issued-before value: an ISO-8601 time (UTC unless it says otherwise;
    a date alone is its midnight), or a duration meaning that long ago (`2h`, `30m`, `1d`)."""
    from datetime import UTC, datetime

    from broker import durations

    value = text.strip()
    try:
        return int(now) - durations.parse_duration(value)
    except durations.DurationError:
        pass
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise UsageError(
            f"invalid time {value[:64]!r}: give an ISO-8601 time such as 2026-11-26T19:08:30Z, "
            "or a duration meaning that long ago such as 2h or 30m"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
