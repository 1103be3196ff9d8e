"""`broker credential-process`: one credential for an AWS SDK; and the hidden issuing worker."""

from __future__ import annotations

import json
import sys

import click

from broker.app import App
from broker.commands.options import complete_profiles, mfa_option, pass_app, request_options


@click.command(name="credential-process")
@click.option(
    "--profile", metavar="NAME", shell_complete=complete_profiles, help="A profile added with `broker profile add`."
)
@click.option("--mount", metavar="MOUNT", help="Vault AWS secrets mount, e.g. aws or ns1/aws/dev.")
@click.option("--role", metavar="ROLE", help="Vault role name.")
@request_options
@mfa_option
@click.option("--no-cache", is_flag=True, help="Always issue anew; store no secret (the lease is still recorded).")
@pass_app
def credential_process(
    app: App,
    profile: str | None,
    mount: str | None,
    role: str | None,
    ttl: int | None,
    role_arn: str | None,
    role_session_name: str | None,
    credential_type: str | None,
    mfa_code: str | None,
    no_cache: bool,
) -> None:
    """Print one credential_process JSON object for the AWS SDKs."""
    from broker import issuance

    if profile and (mount or role):
        raise click.UsageError("give either --profile or --mount/--role, not both")
    flags = dict(
        mount=mount,
        role=role,
        ttl=ttl,
        role_arn=role_arn,
        role_session_name=role_session_name,
        credential_type=credential_type,
        mfa_code=mfa_code,
    )
    request = issuance.build_request(app, profile, flags)
    credential = issuance.obtain(app, request, use_cache=not no_cache)
    click.echo(credential.process_json())
    if app.ledger_url:  # push the new lease row in a detached process; never wait for PostgreSQL
        from broker.fleet import ledger

        ledger.spawn_background_sync(app)


@click.command(name="_issue", hidden=True)
@pass_app
def issue_worker(app: App) -> None:
    """Internal: issue and record one credential described as JSON on stdin (see issuance.issue_detached)."""
    from broker import issuance

    job = json.loads(sys.stdin.read())
    request = issuance.IssueRequest(**job["request"])
    click.echo(issuance.worker_answer(app, request, bool(job["store_secret"])))
