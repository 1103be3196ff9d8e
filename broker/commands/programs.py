"""Running programs with broker credentials: exec, serve, export, login; and doctor."""

from __future__ import annotations

import sys

import click

from broker.app import App
from broker.commands.options import pass_app


class _CommandAfterDashes(click.Command):
    """Keeps everything after the first `--` for the command to run, untouched by Click."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["broker.command"] = args[cut + 1 :]
            args = args[:cut]
        else:
            ctx.meta["broker.command"] = None
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "-- CMD [ARGS]..."]


@click.command(name="exec", cls=_CommandAfterDashes, short_help="Run a command with PROFILE's credentials.")
@click.argument("profile")
@click.option(
    "--server",
    is_flag=True,
    help="Serve fresh credentials to the command on a loopback endpoint instead of putting keys in its "
    "environment (for runs longer than one credential lives).",
)
@click.option("--force", is_flag=True, help="Run even inside another `broker exec` (BROKER_PROFILE set).")
@click.option(
    "--keep-vault-token",
    is_flag=True,
    help="Pass VAULT_TOKEN on to the command (by default the child gets AWS credentials only, no Vault token).",
)
@click.pass_context
def exec_(ctx: click.Context, profile: str, server: bool, force: bool, keep_vault_token: bool) -> int:
    """Run CMD with the credentials of PROFILE.

    Without --server the command gets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
    AWS_CREDENTIAL_EXPIRATION and replaces broker. With --server it gets
    AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN, and its SDK asks for fresh
    credentials whenever it needs them. Both set AWS_REGION/AWS_DEFAULT_REGION (when the profile has a
    region) and BROKER_PROFILE, and exit with the command's status. The command never gets
    BROKER_KEY, BROKER_LEDGER_URL, PGPASSWORD, AWS_ROLE_ARN or AWS_WEB_IDENTITY_TOKEN_FILE, nor
    VAULT_TOKEN unless --keep-vault-token.
    """
    from broker import launch

    command = ctx.meta.get("broker.command")
    if not command:
        raise click.UsageError(
            "no command to run: give it after --, e.g. broker exec PROFILE -- aws sts get-caller-identity"
        )
    app = ctx.find_object(App)
    assert app is not None  # the group made it
    if server:
        return launch.exec_with_server(app, profile, command, force=force, keep_vault_token=keep_vault_token)
    return launch.exec_with_keys(app, profile, command, force=force, keep_vault_token=keep_vault_token)


@click.command()
@click.argument("profile")
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 (default: a random free port).")
@pass_app
def serve(app: App, profile: str, port: int | None) -> int:
    """Serve PROFILE's credentials on a loopback endpoint until Ctrl-C or SIGTERM.

    Prints the two variables to export on stdout (AWS_CONTAINER_CREDENTIALS_FULL_URI and
    AWS_CONTAINER_AUTHORIZATION_TOKEN) and keeps running; logs go to stderr. --port in use is an error.
    """
    from broker import launch

    return launch.serve(app, profile, port or 0, sys.stdout)


@click.command()
@click.argument("profile")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["env", "json", "ini"]),
    default="env",
    show_default=True,
    help="env: `export AWS_...=...` lines; json: the credential_process object; ini: a credentials-file section.",
)
@pass_app
def export(app: App, profile: str, fmt: str) -> None:
    """Print PROFILE's credentials, e.g. eval "$(broker export PROFILE)"."""
    from broker import launch

    click.echo(launch.export(app, profile, fmt), nl=False)


@click.command()
@click.argument("profile")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@click.option("--path", metavar="PAGE", help="Console page to open, e.g. s3/home or ec2/home.")
@click.option("--region", help="Console region (default: the profile's region).")
@click.option(
    "--federation-url",
    envvar="BROKER_FEDERATION_URL",
    metavar="URL",
    help="Federation endpoint (env BROKER_FEDERATION_URL; default https://signin.aws.amazon.com/federation).",
)
@pass_app
def login(
    app: App, profile: str, to_stdout: bool, path: str | None, region: str | None, federation_url: str | None
) -> None:
    """Open the AWS console signed in with PROFILE's credentials (assumed_role or federation_token).

    The URL signs anyone in who has it, until it is used or expires: it is printed only to stdout.
    """
    import webbrowser

    from broker import signin

    url = signin.login_url(app, profile, region=region, path=path, federation_url=federation_url)
    opened = False
    if not to_stdout:
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if not opened:
            click.echo("broker: could not open a browser; open this URL yourself:", err=True)
    if not opened:
        click.echo(url)


@click.command()
@pass_app
def doctor(app: App) -> int:
    """Check Vault, the token, the database, the key and each profile's role; one line per check."""
    from broker import doctor as checks

    results = checks.run_checks(app)
    for check in results:
        click.echo(check.line())
    return 1 if any(c.status == checks.FAIL for c in results) else 0
