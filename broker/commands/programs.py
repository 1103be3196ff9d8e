"""Running programs with broker credentials: exec, serve, export, login; and doctor."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from broker.app import App
from broker.commands.options import TTL, F, complete_profiles, mfa_option, pass_app

EXEC_VALUE_OPTIONS = ("--duration", "--mfa-code")


def program_start(args: list[str], value_options: tuple[str, ...] = EXEC_VALUE_OPTIONS) -> int | None:
    """Where the program's command line starts in exec's arguments: after PROFILE and the options
    around it, or after a `--`; None if there is none. Options (words starting with "-") up to the
    first other word are broker's, so `exec --server dev aws ...` and `exec dev --server aws ...` agree."""
    seen_profile = False
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return i + 1
        if word in value_options:
            i += 2
            continue
        if not word.startswith("-"):
            if seen_profile:
                return i
            seen_profile = True
        i += 1
    return None


class _CommandAfterProfile(click.Command):
    """Keeps the program's command line (everything after PROFILE, or after `--`) untouched by Click:
    `broker exec PROFILE aws s3 ls` as aws-vault users type it, and `broker exec PROFILE -- CMD`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        start = program_start(args)
        ctx.meta["broker.command"] = None if start is None else args[start:]
        if start is not None:
            args = args[: start - 1] if args[start - 1] == "--" else args[:start]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[--] CMD [ARGS]..."]


def duration_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--duration",
        type=TTL,
        metavar="DURATION",
        help=f"Credential lifetime for {what}, e.g. 1h (the request's --ttl; 900s minimum for STS types).",
    )


def request_flags(duration: int | None, mfa_code: str | None = None) -> dict[str, Any]:
    """This call's request fields over the profile's (and the MFA code, which is no request field)."""
    return {"ttl": duration, "mfa_code": mfa_code}


@click.command(name="exec", cls=_CommandAfterProfile, short_help="Run a command with PROFILE's credentials.")
@click.argument("profile", shell_complete=complete_profiles)
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
@duration_option("this run")
@mfa_option
@click.pass_context
def exec_(
    ctx: click.Context,
    profile: str,
    server: bool,
    force: bool,
    keep_vault_token: bool,
    duration: int | None,
    mfa_code: str | None,
) -> int:
    """Run CMD with the credentials of PROFILE: everything after PROFILE is the command
    (`broker exec dev aws s3 ls`; a `--` after PROFILE is allowed). Options go before PROFILE.

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
            "no command to run: give it after PROFILE, e.g. broker exec PROFILE aws sts get-caller-identity"
        )
    app = ctx.find_object(App)
    assert app is not None  # the group made it
    flags = request_flags(duration, mfa_code)
    if server:
        return launch.exec_with_server(
            app, profile, command, force=force, keep_vault_token=keep_vault_token, flags=flags
        )
    return launch.exec_with_keys(app, profile, command, force=force, keep_vault_token=keep_vault_token, flags=flags)


@click.command()
@click.argument("profile", shell_complete=complete_profiles)
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 (default: a random free port).")
@duration_option("each credential served")
@pass_app
def serve(app: App, profile: str, port: int | None, duration: int | None) -> int:
    """Serve PROFILE's credentials on a loopback endpoint until Ctrl-C or SIGTERM.

    Prints the two variables to export on stdout (AWS_CONTAINER_CREDENTIALS_FULL_URI and
    AWS_CONTAINER_AUTHORIZATION_TOKEN) and keeps running; logs go to stderr. --port in use is an error.
    """
    from broker import launch

    return launch.serve(app, profile, port or 0, sys.stdout, flags=request_flags(duration))


@click.command()
@click.argument("profile", shell_complete=complete_profiles)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["env", "json", "ini"]),
    default="env",
    show_default=True,
    help="env: `export AWS_...=...` lines; json: the credential_process object; ini: a credentials-file section.",
)
@duration_option("this credential")
@mfa_option
@click.option("--unset", is_flag=True, help="With --format env: print the `unset` lines that undo the export.")
@pass_app
def export(app: App, profile: str, fmt: str, duration: int | None, mfa_code: str | None, unset: bool) -> None:
    """Print PROFILE's credentials, e.g. eval "$(broker export PROFILE)"; undo with
    eval "$(broker export PROFILE --unset)"."""
    from broker import launch

    if unset and fmt != "env":
        raise click.UsageError("--unset goes with --format env")
    click.echo(launch.export(app, profile, fmt, flags=request_flags(duration, mfa_code), unset=unset), nl=False)


@click.command()
@click.argument("profile", shell_complete=complete_profiles)
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@click.option("--path", metavar="PAGE", help="Console page to open, e.g. s3/home or ec2/home.")
@click.option("--region", help="Console region (default: the profile's region).")
@click.option(
    "--federation-url",
    envvar="BROKER_FEDERATION_URL",
    metavar="URL",
    help="Federation endpoint (env BROKER_FEDERATION_URL; default https://signin.aws.amazon.com/federation).",
)
@duration_option("the console session's credential")
@mfa_option
@pass_app
def login(
    app: App,
    profile: str,
    to_stdout: bool,
    path: str | None,
    region: str | None,
    federation_url: str | None,
    duration: int | None,
    mfa_code: str | None,
) -> None:
    """Open the AWS console signed in with PROFILE's credentials (assumed_role or federation_token).

    The URL signs anyone in who has it, until it is used or expires: it is printed only to stdout.
    """
    import webbrowser

    from broker import signin

    url = signin.login_url(
        app, profile, region=region, path=path, federation_url=federation_url, flags=request_flags(duration, mfa_code)
    )
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
