"""Incident response: `broker whois ID...` and `broker report`."""

from __future__ import annotations

from typing import Any

import click

from broker.app import App
from broker.commands.options import (
    fleet_options,
    format_option,
    pass_app,
    require_fleet_for_host_and_user,
    selector_options,
)
from broker.errors import NotFound
from broker.selection import STATES, Selection


@click.command(name="whois")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@format_option(choices=("table", "json"))
@pass_app
def whois_command(app: App, ids: tuple[str, ...], fmt: str) -> None:
    """Whose credential is ID (an access key id, lease id or role session name): host, OS user,
    profile, Vault identity, account, times, state, revocation, and for a live STS credential the
    deny policy that kills it. Local ledger first, then the fleet ledger when a URL is set."""
    from broker import output, whois

    answers = whois.whois(app, ids)
    if fmt == "json":
        output.write_json([a.as_dict() for a in answers])
    else:
        output.write_text(whois.render_text(answers))
    unknown = [a for a in answers if not a.found]
    if answers and answers[0].fleet_error and not unknown:  # with unknown ids, the error says it
        click.echo(f"broker: warning: {answers[0].fleet_error}; answered from the local ledger only", err=True)
    if unknown:
        names = ", ".join(a.id for a in unknown)
        raise NotFound(f"not found: {names} (looked in the {' and the '.join(unknown[0].looked_in)})")


@click.command(name="report")
@click.option("--profile", metavar="NAME", help="Only leases issued for this profile.")
@click.option("--mount", metavar="MOUNT", help="Only leases from this Vault mount.")
@click.option("--role", metavar="ROLE", help="Only leases of this Vault role.")
@click.option("--state", type=click.Choice(list(STATES)), default="all", show_default=True, help="Which leases.")
@selector_options
@format_option(default="html", choices=("html", "md", "json"), help="Report format.")
@fleet_options("Report on the fleet ledger: every host's leases")
@click.option("--title", metavar="TEXT", default="Credential incident report", show_default=True)
@pass_app
def report_command(
    app: App,
    profile: str | None,
    mount: str | None,
    role: str | None,
    state: str,
    selectors: dict[str, Any],
    fmt: str,
    fleet_wide: bool,
    host: str | None,
    user: str | None,
    title: str,
) -> None:
    """An incident report of the selected leases to read and file: the selection, counts, a
    timeline (inline SVG, one bar per lease, grouped by host), the leases with their Vault
    identities, and the deny policies for STS credentials still live. Self-contained: no network,
    no JavaScript."""
    from broker import output
    from broker import report as reporting

    require_fleet_for_host_and_user(fleet_wide, host, user, "leases")
    selection = Selection(profile=profile, mount=mount, role=role, host=host, user=user, state=state, **selectors)
    report = reporting.build(app, selection, fleet=fleet_wide, title=title)
    output.write_text(reporting.render(report, fmt))
