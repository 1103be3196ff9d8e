"""Lease operations for audit and incident response: leases, prune, revoke, renew."""

from __future__ import annotations

import sys

import click

from broker import durations
from broker.app import App
from broker.cli import cli, format_option, pass_app
from broker.errors import PartialFailure, UsageError


class Increment(click.ParamType):
    """A renewal increment such as 3600, 1h, 7d (up to Vault's 32-day lease ceiling)."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return durations.parse_ttl(value, minimum=1, maximum=32 * 86400)
        except durations.DurationError as exc:
            self.fail(str(exc), param, ctx)


@cli.command(name="leases")
@click.option("--profile", metavar="NAME", help="Only leases issued for this profile.")
@click.option("--mount", metavar="MOUNT", help="Only leases from this Vault mount.")
@click.option("--role", metavar="ROLE", help="Only leases of this Vault role.")
@click.option(
    "--state",
    type=click.Choice(["active", "expired", "revoked", "all"]),
    default="all",
    show_default=True,
    help="Which leases: expired = active past its end.",
)
@format_option()
@click.option(
    "--fleet",
    "fleet_wide",
    is_flag=True,
    help="List the fleet ledger: every host's leases (needs --ledger-url).",
)
@click.option("--host", metavar="HOST", help="With --fleet: only leases of this host (its BROKER_HOST).")
@click.option("--user", metavar="USER", help="With --fleet: only leases of this OS user.")
@pass_app
def leases_command(app: App, profile, mount, role, state, fmt, fleet_wide, host, user) -> None:
    """List the leases in the ledger, newest first. Never shows a secret."""
    from broker import audit, output

    if (host or user) and not fleet_wide:
        raise click.UsageError("--host and --user select fleet rows: add --fleet")
    if fleet_wide:
        from broker import fleet_listing

        selector = fleet_listing.FleetSelector(
            profile=profile, mount=mount, role=role, host=host, user=user, state=state
        )
        if fmt == "json":  # each row's JSON text is kept by PostgreSQL: 100,000 rows in well under a second
            count = output.json_array(fleet_listing.json_rows(app, selector))
        else:
            listing = fleet_listing.listing(app, selector, table=fmt == "table")
            count = output.render(listing.rows, fmt, listing.columns, headers=listing.headers, widths=listing.widths)
    else:
        listing = audit.list_leases(
            app, audit.LeaseFilter(profile=profile, mount=mount, role=role, state=state), table=fmt == "table"
        )
        count = output.render(listing.rows, fmt, listing.columns, headers=listing.headers, widths=listing.widths)
    if not count and fmt == "table":
        click.echo(f"no leases in the {'fleet ' if fleet_wide else ''}ledger match", err=True)


@cli.command(name="prune")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing unless something fails (for cron).")
@pass_app
def prune(app: App, dry_run: bool, quiet: bool) -> None:
    """Delete ledger rows whose credentials have expired (active past expiry, revoked past expiry)."""
    from broker import prune as pruning

    result = pruning.prune_expired(app, dry_run=dry_run)
    if not quiet:
        click.echo(result.summary(), err=result.busy)


@cli.command(name="revoke")
@click.option("--lease-id", "lease_ids", multiple=True, metavar="ID", help="A lease to revoke (repeatable).")
@click.option("--role", metavar="ROLE", help="Every active lease of this Vault role (with --mount: on that mount).")
@click.option("--mount", metavar="MOUNT", help="Every active lease from this mount (or narrows --role).")
@click.option("--profile", metavar="NAME", help="Every active lease issued for this profile.")
@click.option("--all", "all_leases", is_flag=True, help="Every active lease in the ledger.")
@click.option(
    "--prefix",
    is_flag=True,
    help="Revoke server-side under <mount>/creds/<role> and <mount>/sts/<role> (sudo token; "
    "revokes leases issued to anyone).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be revoked; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
@format_option(choices=("table", "json"), help="Report format.")
@click.option(
    "--fleet",
    "fleet_wide",
    is_flag=True,
    help="Revoke in every host's leases, from the fleet ledger (needs --ledger-url).",
)
@click.option("--host", metavar="HOST", help="With --fleet: every active lease of this host.")
@click.option("--user", metavar="USER", help="With --fleet: every active lease of this OS user.")
@pass_app
def revoke(
    app: App, lease_ids, role, mount, profile, all_leases, prefix, dry_run, yes, fmt, fleet_wide, host, user
) -> None:
    """Revoke active leases in Vault, mark them revoked and wipe their cached secrets. With --fleet:
    every matching lease of every host in the fleet ledger, through this machine's Vault token."""
    from broker import revoke as revoking

    if fleet_wide:
        from broker import fleet_revoke

        if profile or prefix:
            raise click.UsageError(
                "--profile and --prefix select local leases; with --fleet use --role, --host, "
                "--user, --lease-id or --all"
            )
        selector = fleet_revoke.FleetRevokeSelector(
            lease_ids=tuple(lease_ids), role=role, mount=mount, host=host, user=user, all=all_leases
        ).validated()
        run = fleet_revoke.revoke_fleet
    else:
        if host or user:
            raise click.UsageError("--host and --user select fleet leases: add --fleet")
        selector = revoking.RevokeSelector(
            lease_ids=tuple(lease_ids), role=role, mount=mount, profile=profile, all=all_leases, prefix=prefix
        ).validated()
        run = revoking.revoke_matching
    interactive = sys.stdin.isatty()
    if not (yes or dry_run or interactive):
        raise UsageError("stdin is not a terminal: add --yes to revoke, or --dry-run to see what would be revoked")
    confirm = None if (yes or dry_run) else (lambda text: click.confirm(text, abort=True, err=True))
    progress = (
        (lambda total: click.progressbar(length=total, label="revoking", file=sys.stderr))
        if sys.stderr.isatty()
        else None
    )
    report = run(app, selector, dry_run=dry_run, confirm=confirm, progress=progress)
    revoking.render_report(report, fmt, sys.stdout)
    if report.failed:
        raise PartialFailure(
            f"{len(report.failed)} of {len(report.results)} revocations failed; "
            f"the rows stay active with the error recorded; run the same command again to retry"
        )


@cli.command(name="renew")
@click.option("--lease-id", "lease_ids", multiple=True, metavar="ID", help="A lease to renew (repeatable).")
@click.option("--profile", metavar="NAME", help="Every active lease issued for this profile.")
@click.option("--all", "all_leases", is_flag=True, help="Every active lease in the ledger.")
@click.option(
    "--increment",
    type=Increment(),
    metavar="DURATION",
    help="Ask for this much more time, e.g. 1h (default: the role's lease TTL).",
)
@pass_app
def renew(app: App, lease_ids, profile, all_leases, increment) -> None:
    """Renew renewable (iam_user) leases and record their new expiry. STS leases are not renewable."""
    from broker import output
    from broker import renew as renewing

    selector = renewing.RenewSelector(lease_ids=tuple(lease_ids), profile=profile, all=all_leases).validated()
    report = renewing.renew_matching(app, selector, increment=increment)
    output.render(renewing.report_rows(report), "table", renewing.REPORT_COLUMNS, headers=renewing.REPORT_HEADERS)
    click.echo(report.summary())
    if report.failed:
        raise PartialFailure(f"{len(report.failed)} of {len(report.results)} renewals failed (see above)")
