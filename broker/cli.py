"""The command line: the group, every command added to it in one visible place, and `run`, the one
place where errors become exit codes. The commands themselves live in broker/commands/."""

from __future__ import annotations

import logging
import os
import sys

import click

from broker import __version__, settings
from broker.app import App
from broker.commands import credentials, key, leases, ledger, profile, programs, responder
from broker.errors import BrokerError, one_line


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
    app = ctx.obj = App(db_option, ledger_url)
    ctx.call_on_close(app.close)


# In the order `broker --help` lists them.
for command in (
    credentials.credential_process,
    credentials.issue_worker,
    profile.profile,
    profile.list_command,
    profile.clear,
    programs.exec_,
    programs.serve,
    programs.export,
    programs.login,
    programs.doctor,
    leases.leases_command,
    leases.prune,
    leases.revoke,
    leases.renew,
    leases.reconcile,
    responder.whois_command,
    responder.report_command,
    ledger.ledger,
    key.key,
):
    cli.add_command(command)


VERBOSE_FLAGS = ("-v", "-vv", "-vvv", "--verbose")
GLOBAL_VALUE_FLAGS = ("--db", "--ledger-url")


def hoist_global_options(args: list[str]) -> list[str]:
    """Move the group's options (-v, --db, --ledger-url) given after the command to the front, so that
    `broker credential-process --profile p -v` works like `broker -v credential-process --profile p`.
    Nothing after `--`, and nothing of the program's command line after `exec PROFILE`, is touched."""
    front: list[str] = []
    rest: list[str] = []
    command: str | None = None
    end = len(args)
    i = 0
    while i < end:
        word = args[i]
        if word == "--":
            break
        if command is None and not word.startswith("-"):
            command = word
            if word == "exec":
                start = programs.program_start(args[i + 1 :], (*programs.EXEC_VALUE_OPTIONS, *GLOBAL_VALUE_FLAGS))
                end = len(args) if start is None else i + 1 + start
            rest.append(word)
        elif word in VERBOSE_FLAGS:
            front.append(word)
        elif word in GLOBAL_VALUE_FLAGS and i + 1 < end:
            front.extend(args[i : i + 2])
            i += 1
        elif word.partition("=")[0] in GLOBAL_VALUE_FLAGS:
            front.append(word)
        else:
            rest.append(word)
        i += 1
    return front + rest + args[i:]


def run(args: list[str]) -> int:
    """Run the CLI; every failure becomes one line on stderr and an exit code, never a traceback."""
    os.umask(0o077)
    args = hoist_global_options(args)
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
        click.echo(f"broker: {one_line(exc.format_message())} (see '{where} --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"broker: {one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except BrokerError as exc:
        click.echo(f"broker: {one_line(exc)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("broker: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the last resort: one line, unless asked for the traceback
        if settings.load().debug:
            raise
        click.echo(
            f"broker: internal error: {type(exc).__name__}: {one_line(exc)} (BROKER_DEBUG=1 shows more)", err=True
        )
        return 1
