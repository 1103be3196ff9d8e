"""The command line: Click declarations only. Each command validates its flags, calls one function
of a service module and renders the result; `run` is the one place errors become exit codes."""

from __future__ import annotations

import logging
import os
import sys

import click

from broker import __version__, durations
from broker.app import App
from broker.errors import BrokerError

pass_app = click.make_pass_decorator(App)


class Duration(click.ParamType):
    """A duration such as 900, 900s, 15m, 1h30m, in whole seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return durations.parse_ttl(value)
        except durations.DurationError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
CREDENTIAL_TYPE = click.Choice(["iam_user", "assumed_role", "federation_token", "session_token"])


def format_option(default: str = "table", choices: tuple[str, ...] = ("table", "json", "csv"), help="Output format."):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help=help,
    )


def request_options(fn):
    """Flags that shape a credential request (a profile's defaults, or an ad-hoc request)."""
    for option in reversed(
        [
            click.option(
                "--ttl", type=DURATION, help="Credential lifetime for STS types, e.g. 15m, 1h (900s minimum in AWS)."
            ),
            click.option("--role-arn", help="The AWS role to assume (assumed_role roles with several ARNs)."),
            click.option("--role-session-name", help="Fixed session name (default: a unique name per issuance)."),
            click.option(
                "--credential-type",
                type=CREDENTIAL_TYPE,
                help="The Vault role's credential type, when known (default: read from Vault's answer).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _configure_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("broker: %(levelname)s: %(message)s"))
    root = logging.getLogger("broker")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    root.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="broker")
@click.option(
    "--db",
    "db_option",
    metavar="PATH",
    help="Ledger database (env BROKER_DB; default ~/.local/share/broker/broker.db).",
)
@click.option("--ledger-url", metavar="URL", help="Fleet ledger, a PostgreSQL URL (env BROKER_LEDGER_URL).")
@click.option("-v", "--verbose", count=True, help="Log to stderr (-vv for debug). Never logs a secret.")
@click.pass_context
def cli(ctx: click.Context, db_option: str | None, ledger_url: str | None, verbose: int) -> None:
    """Short-lived AWS credentials from HashiCorp Vault, cached and recorded in a lease ledger."""
    _configure_logging(verbose)
    ctx.obj = App(db_option, ledger_url)


@cli.command(name="credential-process")
@click.option("--profile", metavar="NAME", help="A profile added with `broker profile add`.")
@click.option("--mount", metavar="MOUNT", help="Vault AWS secrets mount, e.g. aws or ns1/aws/dev.")
@click.option("--role", metavar="ROLE", help="Vault role name.")
@request_options
@click.option("--no-cache", is_flag=True, help="Always issue anew; store no secret (the lease is still recorded).")
@pass_app
def credential_process(app: App, profile, mount, role, ttl, role_arn, role_session_name, credential_type, no_cache):
    """Print one credential_process JSON object for the AWS SDKs."""
    from broker import leases

    if profile and (mount or role):
        raise click.UsageError("give either --profile or --mount/--role, not both")
    flags = dict(
        mount=mount,
        role=role,
        ttl=ttl,
        role_arn=role_arn,
        role_session_name=role_session_name,
        credential_type=credential_type,
    )
    request = leases.build_request(app, profile, flags)
    credential = leases.obtain(app, request, use_cache=not no_cache)
    click.echo(credential.process_json())
    if app.ledger_url:  # push the new lease row in a detached process; never wait for PostgreSQL
        from broker import fleet

        fleet.spawn_background_sync(app)


@cli.command(name="_issue", hidden=True)
@pass_app
def issue_worker(app: App) -> None:
    """Internal: issue and record one credential described as JSON on stdin (see leases.issue_detached)."""
    import json

    from broker import leases

    job = json.loads(sys.stdin.read())
    request = leases.IssueRequest(**job["request"])
    click.echo(leases.worker_answer(app, request, bool(job["store_secret"])))


@cli.group()
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
    "--write-aws-config",
    is_flag=True,
    help="Also write [profile NAME] with credential_process (and region) to AWS_CONFIG_FILE or ~/.aws/config.",
)
@pass_app
def profile_add(
    app: App, name, mount, role, ttl, role_arn, role_session_name, credential_type, region, namespace, write_aws_config
):
    """Add or replace the profile NAME."""
    from broker import profiles

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
    )
    with app.transaction() as session:
        created = profiles.add(session, spec)
    change = None
    if write_aws_config:
        from broker import awsconfig

        change = awsconfig.write_profile(name, spec.region, app.db_path)
    click.echo(f"{'added' if created else 'updated'} profile {name}", err=True)
    if change:
        click.echo(change.describe(name), err=True)


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
]


@profile.command(name="list")
@format_option()
@pass_app
def profile_list(app: App, fmt: str) -> None:
    """List profiles."""
    from dataclasses import asdict

    from broker import output, profiles

    with app.transaction(read_only=True) as session:
        rows = [asdict(p) for p in profiles.list_all(session)]
    if fmt == "table":
        for row in rows:
            row["ttl"] = durations.format_duration(row["ttl"]) if row["ttl"] else None
    if not output.render(rows, fmt, PROFILE_COLUMNS) and fmt == "table":
        click.echo("no profiles; add one with `broker profile add NAME --mount M --role R`", err=True)


@profile.command(name="remove")
@click.argument("name")
@pass_app
def profile_remove(app: App, name: str) -> None:
    """Remove the profile NAME (its leases stay in the ledger), and the [profile NAME] section
    `profile add --write-aws-config` wrote, if it is still broker's."""
    from broker import awsconfig, profiles

    with app.transaction() as session:
        profiles.remove(session, name)
    change = awsconfig.remove_profile(name, app.db_path)
    click.echo(f"removed profile {name}", err=True)
    if change.action == "removed":
        click.echo(change.describe(name), err=True)


# Commands of the other areas register themselves on `cli` when imported.
from broker.commands import COMMAND_MODULES  # noqa: E402

for _module in COMMAND_MODULES:
    __import__(f"broker.commands.{_module}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run(args: list[str]) -> int:
    """Run the CLI; every failure becomes one line on stderr and an exit code, never a traceback."""
    os.umask(0o077)
    try:
        result = cli.main(args=args, prog_name="broker", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("broker: aborted", err=True)
        return 1
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "broker"
        click.echo(f"broker: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"broker: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except BrokerError as exc:
        click.echo(f"broker: {_one_line(exc)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("broker: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the last resort: one line, unless asked for the traceback
        if os.environ.get("BROKER_DEBUG"):
            raise
        click.echo(
            f"broker: internal error: {type(exc).__name__}: {_one_line(exc)} (BROKER_DEBUG=1 shows more)", err=True
        )
        return 1
