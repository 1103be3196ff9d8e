"""`broker profile add|list|remove`: named credential requests."""

from __future__ import annotations

from dataclasses import asdict

import click

from broker import durations, output
from broker.app import App
from broker.commands.options import complete_profiles, format_option, pass_app, request_options

PROFILE_COLUMNS = [
    "name",
    "mount",
    "role",
    "namespace",
    "ttl",
    "role_arn",
    "role_session_name",
    "credential_type",
    "region",
    "account_id",
]


@click.group()
def profile() -> None:
    """Manage named profiles."""


@profile.command(name="add")
@click.argument("name")
@click.option("--mount", required=True, metavar="MOUNT", help="Vault AWS secrets mount, e.g. aws or ns1/aws/dev.")
@click.option("--role", required=True, metavar="ROLE", help="Vault role name.")
@request_options
@click.option("--region", help="AWS region for this profile (used by exec and the AWS config).")
@click.option("--namespace", help="Vault namespace (overrides VAULT_NAMESPACE).")
@click.option(
    "--account-id",
    metavar="ID",
    help="The AWS account (12 digits) the role's credentials belong to, when Vault's answer does not say "
    "(iam_user, federation_token, session_token): recorded with each lease and given to SDKs as AccountId.",
)
@click.option(
    "--write-aws-config",
    is_flag=True,
    help="Also write [profile NAME] with credential_process (and region) to AWS_CONFIG_FILE or ~/.aws/config.",
)
@pass_app
def profile_add(
    app: App,
    name: str,
    mount: str,
    role: str,
    ttl: int | None,
    role_arn: str | None,
    role_session_name: str | None,
    credential_type: str | None,
    region: str | None,
    namespace: str | None,
    account_id: str | None,
    write_aws_config: bool,
) -> None:
    """Add or replace the profile NAME. Re-adding an identical definition changes nothing (the cached
    credential stays); a changed one drops the cached credentials of the old definition."""
    from broker import awsconfig, profiles

    spec = profiles.ProfileSpec(
        name=name,
        mount=mount,
        role=role,
        namespace=namespace,
        ttl=ttl,
        role_arn=role_arn,
        role_session_name=role_session_name,
        credential_type=credential_type,
        region=region,
        account_id=account_id,
    )
    warning = profiles.check_ttl(ttl, credential_type)
    if warning:
        click.echo(f"broker: warning: {warning}", err=True)
    outcome = profiles.add(app, spec)
    change = awsconfig.write_profile(app, name, spec.region) if write_aws_config else None
    click.echo(
        f"{outcome} profile {name}" + (" (kept its cached credential)" if outcome == "unchanged" else ""), err=True
    )
    if change:
        click.echo(change.describe(name), err=True)


@profile.command(name="list")
@format_option()
@pass_app
def profile_list(app: App, fmt: str) -> None:
    """List profiles."""
    from broker import output, profiles

    rows = [asdict(p) for p in profiles.list_all(app)]
    if fmt == "table":
        for row in rows:
            row["ttl"] = durations.format_duration(row["ttl"]) if row["ttl"] else None
    if not output.render(rows, fmt, PROFILE_COLUMNS) and fmt == "table":
        click.echo("no profiles; add one with `broker profile add NAME --mount M --role R`", err=True)


@profile.command(name="remove")
@click.argument("name", shell_complete=complete_profiles)
@pass_app
def profile_remove(app: App, name: str) -> None:
    """Remove the profile NAME (its leases stay in the ledger), and the [profile NAME] section
    `profile add --write-aws-config` wrote, if it is still broker's."""
    from broker import awsconfig, profiles

    profiles.remove(app, name)
    change = awsconfig.remove_profile(app, name)
    click.echo(f"removed profile {name}", err=True)
    if change.action == "removed":
        click.echo(change.describe(name), err=True)


# -- what aws-vault users type: `broker list`, `broker clear` ----------------------------------------

LIST_TABLE = output.TableSpec(
    columns=(
        output.Column("profile", "PROFILE"),
        output.Column("mount", "MOUNT"),
        output.Column("role", "ROLE"),
        output.Column("credential_type", "TYPE"),
        output.Column("access_key_id", "ACCESS KEY ID"),
        output.Column("expires_at", "EXPIRES (UTC)"),
        output.Column("left", "LEFT"),
    ),
    default=("profile", "mount", "role", "credential_type", "access_key_id", "expires_at", "left"),
)


@click.command(name="list")
@format_option()
@pass_app
def list_command(app: App, fmt: str) -> None:
    """Every profile with its live (cached) credential: type, access key id, expiry and time left."""
    import time

    from broker import cache, profiles

    now = time.time()
    rows = profiles.live_credentials(app)
    for row in rows:
        expires = row["expires_at"]
        row["left"] = durations.format_duration(int(expires - now)) if expires else None
        row["expires_at"] = cache.iso_utc(expires) if expires else None
    if fmt == "table":
        if not rows:
            click.echo("no profiles; add one with `broker profile add NAME --mount M --role R`", err=True)
            return
        output.render_table(LIST_TABLE, rows, LIST_TABLE.names, now=now)
    else:
        output.render(rows, fmt, LIST_TABLE.names)


@click.command(name="clear")
@click.argument("profile", required=False, shell_complete=complete_profiles)
@pass_app
def clear(app: App, profile: str | None) -> None:
    """Drop the cached credentials of PROFILE (of every profile and request without one), without
    revoking them: their leases stay in the ledger, and the next request gets a new credential."""
    from broker import profiles

    count = profiles.clear_cached(app, profile)
    what = f"profile {profile}" if profile else "every profile"
    click.echo(
        f"cleared {count} cached credential{'s' if count != 1 else ''} of {what}; the leases stay in the ledger"
        + (f" (revoke them with `broker revoke --profile {profile}`)" if profile and count else ""),
        err=True,
    )
