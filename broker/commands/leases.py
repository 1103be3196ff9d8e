"""Lease operations for audit and incident response: leases, prune, revoke, renew."""

from __future__ import annotations

import sys
from typing import Any

import click

from broker.app import App
from broker.commands.options import (
    INCREMENT,
    complete_lease_ids,
    complete_profiles,
    fleet_options,
    format_option,
    pass_app,
    require_fleet_for_host_and_user,
    selector_options,
    table_options,
)
from broker.errors import PartialFailure, UsageError
from broker.listing import LEASES_TABLE, PUBLIC_COLUMNS
from broker.output import RECONCILE_TABLE, RENEW_TABLE, REVOKE_TABLE
from broker.selection import STATES, Selection


@click.command(name="leases")
@click.option(
    "--profile", metavar="NAME", shell_complete=complete_profiles, help="Only leases issued for this profile."
)
@click.option("--mount", metavar="MOUNT", help="Only leases from this Vault mount.")
@click.option("--role", metavar="ROLE", help="Only leases of this Vault role.")
@click.option(
    "--state",
    type=click.Choice(list(STATES)),
    default="all",
    show_default=True,
    help="Which leases: expired = active past its end.",
)
@selector_options
@format_option()
@table_options(LEASES_TABLE, also=(*PUBLIC_COLUMNS, "host", "user", "db_user"))
@fleet_options("List the fleet ledger: every host's leases")
@pass_app
def leases_command(
    app: App,
    profile: str | None,
    mount: str | None,
    role: str | None,
    state: str,
    selectors: dict[str, Any],
    fmt: str,
    wide: bool,
    columns: list[str] | None,
    fleet_wide: bool,
    host: str | None,
    user: str | None,
) -> None:
    """List the leases in the ledger, newest first. Never shows a secret. The table fits 120
    characters (short lease ids, relative times); --wide or json/csv show everything."""
    from broker import listing, output

    require_fleet_for_host_and_user(fleet_wide, host, user, "rows")
    if fleet_wide and fmt == "json" and columns:
        raise click.UsageError("--columns with --fleet: use --format csv or table (json is the whole row)")
    selection = Selection(profile=profile, mount=mount, role=role, host=host, user=user, state=state, **selectors)
    if fleet_wide:
        from broker.fleet import listing as fleet_listing

        if fmt == "json":  # each row's JSON text is kept by PostgreSQL: 100,000 rows in well under a second
            count = output.json_array(fleet_listing.json_rows(app, selection))
        else:
            found = fleet_listing.fleet_listing(app, selection, table=fmt == "table", wide=wide, columns=columns)
            count = found.render(fmt)
    else:
        count = listing.list_leases(app, selection, table=fmt == "table", wide=wide, columns=columns).render(fmt)
    if not count and fmt == "table":
        click.echo(f"no leases in the {'fleet ' if fleet_wide else ''}ledger match", err=True)
    if selection.access_keys:
        from broker import whois

        unmatched = whois.unmatched_access_keys(app, selection, fleet=fleet_wide)
        if unmatched:
            where = "the fleet ledger" if fleet_wide else "the local ledger"
            click.echo(f"no lease in {where} matches access key {', '.join(unmatched)}", err=True)


@click.command(name="prune")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing unless something fails (for cron).")
@pass_app
def prune(app: App, dry_run: bool, quiet: bool) -> None:
    """Delete ledger rows whose credentials have expired (active past expiry, revoked past expiry)."""
    from broker import prune as pruning

    result = pruning.prune_expired(app, dry_run=dry_run)
    if not quiet:
        click.echo(result.summary(), err=result.busy)


@click.command(name="revoke")
@click.option(
    "--lease-id",
    "lease_ids",
    multiple=True,
    metavar="ID",
    shell_complete=complete_lease_ids,
    help="A lease to revoke (repeatable).",
)
@click.option("--role", metavar="ROLE", help="Every active lease of this Vault role (with --mount: on that mount).")
@click.option("--mount", metavar="MOUNT", help="Every active lease from this mount (or narrows --role).")
@click.option(
    "--profile", metavar="NAME", shell_complete=complete_profiles, help="Every active lease issued for this profile."
)
@click.option("--all", "all_leases", is_flag=True, help="Every active lease in the ledger.")
@click.option(
    "--prefix",
    is_flag=True,
    help="Revoke server-side under <mount>/creds/<role> and <mount>/sts/<role> (sudo token; "
    "revokes leases issued to anyone).",
)
@selector_options
@click.option("--dry-run", is_flag=True, help="Say what would be revoked; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
@format_option(choices=("table", "json"), help="Report format.")
@table_options(REVOKE_TABLE)
@fleet_options("Revoke in every host's leases, from the fleet ledger")
@pass_app
def revoke(
    app: App,
    lease_ids: tuple[str, ...],
    role: str | None,
    mount: str | None,
    profile: str | None,
    all_leases: bool,
    prefix: bool,
    selectors: dict[str, Any],
    dry_run: bool,
    yes: bool,
    fmt: str,
    wide: bool,
    columns: list[str] | None,
    fleet_wide: bool,
    host: str | None,
    user: str | None,
) -> None:
    """Revoke active leases in Vault, mark them revoked and wipe their cached secrets. With --fleet:
    every matching lease of every host in the fleet ledger, through this machine's Vault token."""
    from broker import output
    from broker import revoke as revoking

    require_fleet_for_host_and_user(fleet_wide, host, user, "leases")
    if fleet_wide and (profile or prefix):
        raise click.UsageError(
            "--profile and --prefix select local leases; with --fleet use --role, --host, --user, --lease-id or --all"
        )
    selection = Selection(
        lease_ids=lease_ids,
        role=role,
        mount=mount,
        profile=profile,
        host=host,
        user=user,
        all=all_leases,
        prefix=prefix,
        **selectors,
    )
    if fleet_wide:
        from broker.fleet.revoke import revoke_fleet

        run = revoke_fleet
        selection = selection.for_fleet_revoke()
    else:
        run = revoking.revoke_matching
        selection = selection.for_revoke()
    interactive = sys.stdin.isatty()
    if not (yes or dry_run or interactive):
        raise UsageError("stdin is not a terminal: add --yes to revoke, or --dry-run to see what would be revoked")
    confirm = None if (yes or dry_run) else (lambda text: click.confirm(text, abort=True, err=True))
    progress = (
        (lambda total: click.progressbar(length=total, label="revoking", file=sys.stderr))
        if sys.stderr.isatty()
        else None
    )
    report = run(app, selection, dry_run=dry_run, confirm=confirm, progress=progress)
    output.render_report(report, fmt, wide=wide, columns=columns)
    if report.failed:
        raise PartialFailure(
            f"{len(report.failed)} of {len(report.results)} revocations failed: {_reason(report.failed[0].error)}; "
            "the rows stay active with the error recorded; run the same command again to retry"
        )


def _reason(error: str | None) -> str:
    """The cause of a failed revocation, without the address and advice that follow it."""
    return (error or "unknown error").split(" at Vault ", 1)[0]


@click.command(name="renew")
@click.option(
    "--lease-id",
    "lease_ids",
    multiple=True,
    metavar="ID",
    shell_complete=complete_lease_ids,
    help="A lease to renew (repeatable).",
)
@click.option(
    "--profile", metavar="NAME", shell_complete=complete_profiles, help="Every active lease issued for this profile."
)
@click.option("--all", "all_leases", is_flag=True, help="Every active lease in the ledger.")
@click.option(
    "--increment",
    type=INCREMENT,
    metavar="DURATION",
    help="Ask for this much more time, e.g. 1h (default: the role's lease TTL).",
)
@table_options(RENEW_TABLE)
@pass_app
def renew(
    app: App,
    lease_ids: tuple[str, ...],
    profile: str | None,
    all_leases: bool,
    increment: int | None,
    wide: bool,
    columns: list[str] | None,
) -> None:
    """Renew renewable (iam_user) leases and record their new expiry. STS leases are not renewable."""
    from broker import output
    from broker import renew as renewing

    selection = Selection(lease_ids=lease_ids, profile=profile, all=all_leases).for_renew()
    report = renewing.renew_matching(app, selection, increment=increment)
    output.render_report(report, "table", wide=wide, columns=columns)
    if report.failed:
        raise PartialFailure(f"{len(report.failed)} of {len(report.results)} renewals failed (see above)")


@click.command(name="reconcile")
@click.option(
    "--vault-list",
    is_flag=True,
    help="Also list Vault's live leases under every mount/role the ledger has seen (a sudo path) and "
    "report those no ledger row explains.",
)
@click.option("--revoke-unknown", is_flag=True, help="Revoke the leases --vault-list finds (implies --vault-list).")
@click.option("--dry-run", is_flag=True, help="Report only: mark nothing, revoke nothing.")
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask before --revoke-unknown (required when stdin is not a terminal)."
)
@format_option(choices=("table", "json"), help="Report format.")
@table_options(RECONCILE_TABLE)
@click.option(
    "--fleet", "fleet_wide", is_flag=True, help="Check every host's rows in the fleet ledger (a responder login)."
)
@pass_app
def reconcile(
    app: App,
    vault_list: bool,
    revoke_unknown: bool,
    dry_run: bool,
    yes: bool,
    fmt: str,
    wide: bool,
    columns: list[str] | None,
    fleet_wide: bool,
) -> None:
    """Check the ledger against Vault: mark rows Vault no longer knows as ended (with the reason),
    and with --vault-list find leases Vault holds that the ledger lacks (killed issuances, by hand)."""
    from broker import output
    from broker import reconcile as reconciling

    if revoke_unknown and not (yes or dry_run or sys.stdin.isatty()):
        raise UsageError("stdin is not a terminal: add --yes to revoke, or --dry-run to see what would be revoked")
    confirm = None if (yes or dry_run) else (lambda text: click.confirm(text, abort=True, err=True))
    report = reconciling.reconcile(
        app, vault_list=vault_list, revoke=revoke_unknown, dry_run=dry_run, confirm=confirm, fleet=fleet_wide
    )
    output.render_report(report, fmt, wide=wide, columns=columns)
    if report.failed:
        raise PartialFailure(
            f"{len(report.failed)} reconcile operation(s) failed, first: {report.failed[0]}; "
            "run the same command again to resume"
        )
