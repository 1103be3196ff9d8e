"""`broker report`: an incident report a person can read and file, of the leases a selection names
(local ledger, or the fleet's with --fleet), as self-contained HTML (inline CSS and SVG, no network,
no JavaScript), Markdown or JSON.

The HTML holds: the selection, the counts, a timeline (one bar per lease from issue to expiry or
revocation, grouped by host, each revocation marked), the table of leases with their Vault
identities, and the deny policies that kill the STS credentials AWS still honours. Every value
comes from a ledger and is escaped; only public fields (broker.whois.ROW_FIELDS) are read.
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import __version__, cache, listing, policies, whois
from broker.selection import Selection

if TYPE_CHECKING:
    from broker.app import App

MAX_LEASES = 5_000  # a report is read by a person; a larger selection says so and shows the newest
TABLE_FIELDS = [
    "host",
    "user",
    "profile",
    "mount",
    "role",
    "credential_type",
    "access_key_id",
    "role_session_name",
    "display_name",
    "entity_id",
    "token_accessor",
    "token_policies",
    "account_id",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_by",
    "revoke_error",
]


@dataclass
class Report:
    title: str
    at: int
    selection: Selection
    fleet: bool
    leases: list[dict[str, Any]]
    truncated: bool
    deny_policies: list[policies.DenyPolicy]

    def counts(self) -> dict[str, Any]:
        return {
            "leases": len(self.leases),
            "hosts": len({r["host"] for r in self.leases}),
            "by_state": dict(sorted(Counter(r["state"] for r in self.leases).items())),
            "by_credential_type": dict(sorted(Counter(r["credential_type"] for r in self.leases).items())),
            "vault_identities": len({r["entity_id"] or r["display_name"] for r in self.leases} - {None}),
            "live_sts": sum(
                1 for r in self.leases if r["credential_type"] in cache.STS_TYPES and r["expires_at"] > self.at
            ),
        }


def build(app: App, selection: Selection, *, fleet: bool, title: str) -> Report:
    """Read the selected leases (at most MAX_LEASES, the newest) and the deny policies."""
    now = int(time.time())
    if fleet:
        from broker.fleet.listing import where

        rows = whois.fleet_rows(app, where(selection), newest=MAX_LEASES + 1)
    else:
        rows = whois.local_rows(app, selection.conditions(listing.LEDGER_COLUMNS, now), newest=MAX_LEASES + 1)
    truncated = len(rows) > MAX_LEASES
    rows = rows[-MAX_LEASES:]
    for row in rows:
        row["state"] = listing.derived_state(row["state"], row["expires_at"], now)
    return Report(title, now, selection, fleet, rows, truncated, whois.live_sts_policies(app, rows, now))


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(as_dict(report), indent=2) + "\n"
    if fmt == "md":
        return markdown(report)
    return page(report)


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "title": report.title,
        "generated_at": cache.iso_utc(report.at),
        "broker_version": __version__,
        "selection": report.selection.as_dict(fleet=report.fleet),
        "selection_text": report.selection.describe(fleet=report.fleet),
        "truncated_to": MAX_LEASES if report.truncated else None,
        "counts": report.counts(),
        "leases": [{k: v for k, v in _iso_row(r).items() if k != "role_arn"} for r in report.leases],
        "deny_policies": [p.as_dict() for p in report.deny_policies],
    }


def _iso_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in listing.TIME_COLUMNS:
        out[name] = listing.iso_or_none(row.get(name))
    return out


def _cell(value: object) -> str:
    return "" if value is None else str(value)


# -- Markdown ---------------------------------------------------------------------------------------


def _md(value: object) -> str:
    text = _cell(value).replace("\\", "\\\\").replace("|", "\\|")
    return "".join(c if c.isprintable() else " " for c in text)


def markdown(report: Report) -> str:
    counts = report.counts()
    lines = [
        f"# {_md(report.title)}",
        "",
        f"Generated {cache.iso_utc(report.at)} by broker {__version__} from the "
        f"{'fleet' if report.fleet else 'local'} ledger.",
        "",
        f"**Selection:** {_md(report.selection.describe(fleet=report.fleet))}",
        "",
        "## Counts",
        "",
        f"- leases: {counts['leases']}" + (f" (the newest {MAX_LEASES} shown)" if report.truncated else ""),
        f"- hosts: {counts['hosts']}",
        f"- Vault identities: {counts['vault_identities']}",
        f"- STS credentials still live in AWS: {counts['live_sts']}",
        *[f"- {_md(state)}: {n}" for state, n in counts["by_state"].items()],
        "",
        "## Leases",
        "",
        "| " + " | ".join(TABLE_FIELDS) + " |",
        "|" + "---|" * len(TABLE_FIELDS),
    ]
    for row in report.leases:
        iso = _iso_row(row)
        lines.append("| " + " | ".join(_md(iso.get(name)) for name in TABLE_FIELDS) + " |")
    lines += ["", "## Deny policies for STS credentials still live", ""]
    if not report.deny_policies:
        lines.append("None: no selected STS credential is still valid in AWS.")
    for policy in report.deny_policies:
        lines += [f"- {_md(policy.vault_role)}: {_md(policy.note)}", "", "```", policy.command(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# -- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1a1a1a}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f0f0f0}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{font-weight:600}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;word-break:break-all;font-size:12px}
.timeline text{font:11px system-ui,sans-serif}.lease.active{fill:#2e7d32}.lease.expired{fill:#9e9e9e}
.lease.revoked{fill:#c62828}.revocation{stroke:#000;stroke-width:2}.host{font-weight:600}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
"""
_LEFT, _WIDTH, _BAR, _GAP = 180, 900, 10, 4


def _e(value: object) -> str:
    return html.escape(_cell(value), quote=True)


def _end(row: dict[str, Any]) -> int:
    end = int(row["expires_at"])
    if row.get("revoked_at") is not None:
        end = min(end, int(row["revoked_at"]))
    return max(end, int(row["issued_at"]) + 1)


def timeline_svg(leases: Sequence[dict[str, Any]], now: int) -> str:
    """One bar per lease from issue to expiry or revocation, grouped by host; revocations marked."""
    if not leases:
        return '<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="400" height="20"></svg>'
    start = min(int(r["issued_at"]) for r in leases)
    end = max(max(_end(r) for r in leases), start + 60)
    span = end - start

    def x(epoch: float) -> float:
        return round(_LEFT + (epoch - start) * _WIDTH / span, 1)

    parts: list[str] = []
    y = 30
    by_host: dict[str, list[dict[str, Any]]] = {}
    for row in leases:
        by_host.setdefault(_cell(row["host"]), []).append(row)
    for host, rows in sorted(by_host.items()):
        parts.append(f'<text class="host" x="4" y="{y + _BAR}">{_e(host or "(no host)")}</text>')
        y += _BAR + _GAP + 4
        for row in rows:
            left, right = x(row["issued_at"]), x(_end(row))
            label = (
                f"{row['access_key_id']} {row['credential_type']} {row['mount']}/{row['role']} "
                f"{listing.iso_or_none(row['issued_at'])} to {listing.iso_or_none(_end(row))} ({row['state']})"
            )
            parts.append(
                f'<rect class="lease {_e(row["state"])}" data-access-key="{_e(row["access_key_id"])}" '
                f'x="{left}" y="{y}" width="{max(right - left, 1.5)}" height="{_BAR}"><title>{_e(label)}</title></rect>'
            )
            parts.append(
                f'<text x="{_LEFT - 4}" y="{y + _BAR - 1}" text-anchor="end">{_e(row["access_key_id"])}</text>'
            )
            if row.get("revoked_at") is not None:
                mark = x(row["revoked_at"])
                what = f"revoked {listing.iso_or_none(row['revoked_at'])} by {row['revoked_by']}"
                parts.append(
                    f'<line class="revocation" x1="{mark}" x2="{mark}" y1="{y - 2}" y2="{y + _BAR + 2}">'
                    f"<title>{_e(what)}</title></line>"
                )
            y += _BAR + _GAP
        y += 6
    axis = [f'<line x1="{_LEFT}" x2="{_LEFT + _WIDTH}" y1="18" y2="18" stroke="#444"/>']
    for i in range(5):
        at = start + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        axis.append(f'<text x="{x(at)}" y="12" text-anchor="{anchor}">{_e(cache.iso_utc(at))}</text>')
    if start <= now <= end:
        axis.append(f'<line x1="{x(now)}" x2="{x(now)}" y1="18" y2="{y}" stroke="#1565c0" stroke-dasharray="3,3"/>')
    height = y + 10
    return (
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" role="img" width="{_LEFT + _WIDTH + 20}" '
        f'height="{height}" viewBox="0 0 {_LEFT + _WIDTH + 20} {height}">' + "".join(axis + parts) + "</svg>"
    )


def page(report: Report) -> str:
    counts = report.counts()
    source = "fleet ledger" if report.fleet else "local ledger"
    facts = [
        ("Generated", f"{cache.iso_utc(report.at)} by broker {__version__}"),
        ("Ledger", source),
        ("Selection", report.selection.describe(fleet=report.fleet)),
        ("Leases", f"{counts['leases']}" + (f" (the newest {MAX_LEASES} shown)" if report.truncated else "")),
        ("Hosts", counts["hosts"]),
        ("Vault identities", counts["vault_identities"]),
        ("By state", ", ".join(f"{k}: {v}" for k, v in counts["by_state"].items()) or "none"),
        ("By type", ", ".join(f"{k}: {v}" for k, v in counts["by_credential_type"].items()) or "none"),
        ("STS still live in AWS", counts["live_sts"]),
    ]
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(_iso_row(r).get(name))}</td>" for name in TABLE_FIELDS) + "</tr>"
        for r in reversed(report.leases)
    )
    deny = (
        "".join(
            f"<h3>{_e(p.vault_role)} ({_e(p.credential_type)})</h3><p>{_e(p.note)}</p><pre>{_e(p.command())}</pre>"
            for p in report.deny_policies
        )
        or "<p>None: no selected STS credential is still valid in AWS.</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(report.title)}</h1>"
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>"
        "<h2>Timeline</h2>"
        '<p class="legend">one bar per lease, issue to expiry or revocation, grouped by host:'
        '<span style="background:#2e7d32"></span>active<span style="background:#9e9e9e"></span>expired'
        '<span style="background:#c62828"></span>revoked<span style="background:#000;width:2px"></span>'
        "revocation</p>"
        + timeline_svg(report.leases, report.at)
        + "<h2>Leases</h2><table><thead><tr>"
        + "".join(f"<th>{_e(name)}</th>" for name in TABLE_FIELDS)
        + f"</tr></thead><tbody>{rows}</tbody></table>"
        + f"<h2>Deny policies for STS credentials still live</h2>{deny}"
        + "</body></html>\n"
    )
