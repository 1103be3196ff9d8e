"""STS honesty: Vault's revoke does not touch AWS for assumed_role, federation_token and
session_token credentials, which stay valid until they expire unless an IAM deny policy cuts them
off. These pure functions write those policies (and the warning) for a set of revoked targets.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from broker import cache
from broker.bulk import Target

POLICY_CHAR_LIMIT = 10_000  # IAM inline role/user policies may hold 10,240 characters


@dataclass(frozen=True)
class DenyPolicy:
    """An IAM policy that cuts off STS credentials Vault cannot revoke, and where to attach it."""

    scope: str  # "sessions": exactly the listed sessions; "issued-before": every token issued before `cutoff`
    credential_type: str
    vault_role: str  # <mount>/<role>
    attach_to: str  # "role" or "user"
    principal: str  # the IAM role or user name (or a placeholder to fill in)
    policy_name: str
    policy: dict[str, Any]
    lease_count: int
    note: str

    def command(self) -> str:
        document = json.dumps(self.policy, separators=(",", ":"))
        if self.attach_to == "role":
            return (
                f"aws iam put-role-policy --role-name {self.principal} --policy-name {self.policy_name} "
                f"--policy-document '{document}'"
            )
        return (
            f"aws iam put-user-policy --user-name {self.principal} --policy-name {self.policy_name} "
            f"--policy-document '{document}'"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "command": self.command()}


ROLE_PLACEHOLDER = "ROLE_NAME"  # the IAM role the Vault role assumes, when the ledger does not know it
VAULT_USER_PLACEHOLDER = "VAULT_IAM_USER"  # the IAM user whose keys the Vault AWS mount uses


def issued_before_policy(cutoff: int) -> dict[str, Any]:
    """AWS's "revoke active sessions": deny everything to tokens issued before `cutoff`."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerDenyTokensIssuedBefore",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"DateLessThan": {"aws:TokenIssueTime": cache.iso_utc(cutoff)}},
            }
        ],
    }


def sessions_policy(session_names: Sequence[str], role_id: str | None = None) -> dict[str, Any]:
    """Deny everything to the named sessions: aws:userid is `ROLE_ID:SESSION_NAME` for an assumed
    role. Without the role's unique id (AROA...), `*:SESSION_NAME` is used, which on the role's own
    inline policy matches only that role's sessions (session names cannot contain * or ?)."""
    if role_id:
        condition = {"StringEquals": {"aws:userid": [f"{role_id}:{name}" for name in session_names]}}
    else:
        condition = {"StringLike": {"aws:userid": [f"*:{name}" for name in session_names]}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerDenySessions",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": condition,
            }
        ],
    }


def _sessions(n: int) -> str:
    return "this session" if n == 1 else f"these {n} sessions"


def _role_name(role_arn: str | None) -> str | None:
    if role_arn and ":role/" in role_arn:
        return role_arn.rsplit("/", 1)[1]
    return None


def _chunks(names: Sequence[str], role_id: str | None) -> list[list[str]]:
    """Split session names so that each policy stays under IAM's inline policy size limit."""
    chunks: list[list[str]] = [[]]
    size = len(json.dumps(sessions_policy([], role_id), separators=(",", ":")))
    used = size
    for name in names:
        cost = len(name) + len(role_id or "*") + 4
        if chunks[-1] and used + cost > POLICY_CHAR_LIMIT:
            chunks.append([])
            used = size
        chunks[-1].append(name)
        used += cost
    return chunks


def deny_policies(targets: Iterable[Target], cutoff: int, *, role_id: str | None = None) -> list[DenyPolicy]:
    """The IAM deny policies that do kill the given STS credentials, grouped by Vault role.

    assumed_role: per IAM role, one policy denying exactly the recorded session names (when every
    lease has one), and the role-wide alternative denying every session issued before `cutoff`.
    federation_token / session_token: their permissions come from the IAM user whose keys Vault
    uses, so the issued-before deny goes on that user (it cannot work if that is the account root).
    Pure: no I/O; `cutoff` is the revoke time, so credentials issued after the revoke are spared.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(cutoff))
    roles: dict[tuple[str, str, str | None], list[Target]] = {}
    users: dict[str, list[Target]] = {}  # by mount: one Vault IAM user per mount
    for t in targets:
        if t.credential_type == "assumed_role":
            roles.setdefault((t.mount, t.role, t.role_arn), []).append(t)
        elif t.credential_type in cache.STS_TYPES:
            users.setdefault(t.mount, []).append(t)
    policies: list[DenyPolicy] = []
    for (mount, role, arn), members in sorted(roles.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        vault_role = f"{mount}/{role}"
        principal = _role_name(arn) or ROLE_PLACEHOLDER
        names = sorted({t.role_session_name for t in members if t.role_session_name})
        if names and all(t.role_session_name for t in members):
            chunks = _chunks(names, role_id)
            for i, chunk in enumerate(chunks, 1):
                suffix = f"-{i}" if len(chunks) > 1 else ""
                in_chunk = set(chunk)
                policies.append(
                    DenyPolicy(
                        scope="sessions",
                        credential_type="assumed_role",
                        vault_role=vault_role,
                        attach_to="role",
                        principal=principal,
                        policy_name=f"broker-deny-sessions-{stamp}{suffix}",
                        policy=sessions_policy(chunk, role_id),
                        lease_count=sum(1 for t in members if t.role_session_name in in_chunk),
                        note=f"denies exactly {_sessions(len(chunk))} "
                        f"of the IAM role that Vault role {vault_role} assumes",
                    )
                )
        policies.append(
            DenyPolicy(
                scope="issued-before",
                credential_type="assumed_role",
                vault_role=vault_role,
                attach_to="role",
                principal=principal,
                policy_name=f"broker-deny-before-{stamp}",
                policy=issued_before_policy(cutoff),
                lease_count=len(members),
                note=f"or: deny EVERY session of that IAM role issued before {cache.iso_utc(cutoff)}, "
                f"including ones not issued through this broker",
            )
        )
    for mount, members in sorted(users.items()):
        kinds = ", ".join(sorted({t.credential_type for t in members}))
        vault_roles = ", ".join(sorted({f"{t.mount}/{t.role}" for t in members}))
        policies.append(
            DenyPolicy(
                scope="issued-before",
                credential_type=kinds,
                vault_role=vault_roles,
                attach_to="user",
                principal=VAULT_USER_PLACEHOLDER,
                policy_name=f"broker-deny-before-{stamp}",
                policy=issued_before_policy(cutoff),
                lease_count=len(members),
                note=f"{kinds} credentials take their permissions from the IAM user whose keys Vault mount "
                f"{mount} uses: this denies every temporary credential that user issued before "
                f"{cache.iso_utc(cutoff)} (not possible if Vault uses the account root's keys)",
            )
        )
    return policies


def sts_warning(targets: Sequence[Target], *, dry_run: bool) -> str | None:
    if not targets:
        return None
    kinds = Counter(t.credential_type for t in targets)
    last = max(t.expires_at or 0 for t in targets)
    what = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    if len(targets) == 1:
        subject, verb, until = "This credential", "would stay" if dry_run else "stays", "its expires_at"
        when = f"({cache.iso_utc(last)})"
    else:
        subject, verb, until = (
            f"These {len(targets)} credentials",
            "would stay" if dry_run else "stay",
            "their expires_at",
        )
        when = f"(the last at {cache.iso_utc(last)})"
    return (
        f"Vault cannot invalidate STS credentials: revoking their leases does not touch AWS. "
        f"{subject} ({what}) {verb} valid until {until} {when} unless an IAM deny policy cuts them off."
    )
