"""`broker ledger init|status|sync|prune`: the fleet ledger on PostgreSQL (broker/fleet/ does the work)."""

from __future__ import annotations

import json

import click

from broker.app import App
from broker.commands.options import Duration, format_option, pass_app

RETENTION = Duration(minimum=86400, maximum=100 * 366 * 86400)  # a day to a century


@click.group()
def ledger() -> None:
    """The fleet ledger: every host's leases in one PostgreSQL database (needs --ledger-url)."""


@ledger.command(name="init")
@pass_app
def ledger_init(app: App) -> None:
    """Create or upgrade the shared schema (run as the database's owner)."""
    from broker.fleet import ledger as fleet_ledger

    result = fleet_ledger.init_schema(app)
    if result.before == result.after:
        click.echo(f"fleet ledger {result.url} is already at schema {result.after}", err=True)
    else:
        click.echo(
            f"fleet ledger {result.url} upgraded from {result.before or 'empty'} to schema {result.after}",
            err=True,
        )


@ledger.command(name="status")
@format_option(choices=("table", "json"))
@pass_app
def ledger_status(app: App, fmt: str) -> None:
    """Show the ledger URL (password masked), its schema revision, rows waiting to be pushed and
    the last push. Exits 1 when PostgreSQL cannot be reached, after printing what is known locally."""
    from broker.fleet import ledger as fleet_ledger

    result = fleet_ledger.status(app)
    fields = result.as_dict()
    if fmt == "json":
        click.echo(json.dumps(fields))
    else:
        for key, value in fields.items():
            click.echo(f"{key:<10} {'-' if value is None else value}")
    if result.error is not None:
        raise result.error


@ledger.command(name="sync")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing unless something fails (for cron).")
@click.option(
    "--background",
    is_flag=True,
    hidden=True,
    help="Run after a miss: skip if another sync runs, at low priority, silently.",
)
@pass_app
def ledger_sync(app: App, quiet: bool, background: bool) -> None:
    """Push the rows waiting in the outbox and pull revocations of this host's leases.
    Exits 1 when PostgreSQL cannot be reached; every pending row stays queued."""
    from broker.fleet import ledger as fleet_ledger

    result = fleet_ledger.sync(app, background=background)
    if quiet or background or not result.ran:
        return
    click.echo(
        f"pushed {result.pushed} lease row(s), pulled {result.pulled} revocation(s); {result.pending} pending",
        err=True,
    )


@ledger.command(name="prune")
@click.option(
    "--older-than",
    "older_than",
    type=RETENTION,
    required=True,
    metavar="DURATION",
    help="Remove rows whose lease expired longer ago than this, e.g. 90d (at least 1d).",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing unless something fails (for cron).")
@format_option(choices=("table", "json"))
@pass_app
def ledger_prune(app: App, older_than: int, dry_run: bool, quiet: bool, fmt: str) -> None:
    """Delete old rows from the fleet ledger (run as the database's owner), in short batches that a
    host's push never waits on for long."""
    from broker.fleet import retention

    result = retention.prune_fleet(app, older_than, dry_run=dry_run)
    if fmt == "json":
        click.echo(json.dumps(result.as_dict()))
    elif not quiet:
        click.echo(result.summary(), err=True)
