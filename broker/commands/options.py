"""Options and parameter types that several commands share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import IO, Any, TypeVar, cast

import click

from broker import durations
from broker.app import App
from broker.output import TableSpec

F = TypeVar("F", bound=Callable[..., Any])

pass_app = click.make_pass_decorator(App)

CREDENTIAL_TYPE = click.Choice(["iam_user", "assumed_role", "federation_token", "session_token", "static"])


class Duration(click.ParamType[int, Any]):
    """A duration such as 900, 900s, 15m, 1h30m, in whole seconds, within a range."""

    name = "duration"

    def __init__(self, minimum: int = 1, maximum: int = 36 * 3600) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return durations.parse_ttl(str(value), minimum=self.minimum, maximum=self.maximum)
        except durations.DurationError as exc:
            self.fail(str(exc), param, ctx)


TTL = Duration()  # a credential lifetime (AWS's 36 h cap)
INCREMENT = Duration(maximum=32 * 86400)  # a renewal: up to Vault's 32-day lease ceiling


def format_option(
    default: str = "table", choices: tuple[str, ...] = ("table", "json", "csv"), help: str = "Output format."
) -> Callable[[F], F]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help=help,
    )


def _apply(fn: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        fn = option(fn)
    return fn


def request_options(fn: F) -> F:
    """Flags that shape a credential request (a profile's defaults, or an ad-hoc request)."""
    return _apply(
        fn,
        [
            click.option(
                "--ttl", type=TTL, help="Credential lifetime for STS types, e.g. 15m, 1h (900s minimum in AWS)."
            ),
            click.option("--role-arn", help="The AWS role to assume (assumed_role roles with several ARNs)."),
            click.option("--role-session-name", help="Fixed session name (default: a unique name per issuance)."),
            click.option(
                "--credential-type",
                type=CREDENTIAL_TYPE,
                help="The Vault role's credential type, when known (default: read from Vault's answer).",
            ),
        ],
    )


def table_options(spec: TableSpec, *, also: tuple[str, ...] = ()) -> Callable[[F], F]:
    """--wide and --columns for a command that renders `spec` (passed on as `wide`, `columns`):
    the default table fits 120 characters; --wide shows every column unshortened; --columns a,b,c
    picks (any of the spec's columns, or of `also`)."""
    known = [*spec.names, *(name for name in also if name not in spec.names)]

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
        if value is None:
            return None
        chosen = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in known]
        if unknown or not chosen:
            raise click.BadParameter(f"unknown column {', '.join(unknown) or '(none)'}; choose from {','.join(known)}")
        return chosen

    def decorate(fn: F) -> F:
        return _apply(
            fn,
            [
                click.option("--wide", is_flag=True, help="Table: every column, values in full (ids, times, errors)."),
                click.option(
                    "--columns",
                    metavar="A,B,...",
                    callback=check,
                    help=f"Show these columns, in this order; one of: {','.join(known)}.",
                ),
            ],
        )

    return decorate


# -- shell completion (Click's shell_complete): names read from the ledger, never an error -------


def _completion_rows(ctx: click.Context, query: str, incomplete: str) -> list[str]:
    """Values for `query` (one column, a LIKE pattern parameter) from the ledger, read-only: completion
    runs without the group's App, creates nothing and migrates nothing; any problem means no candidates."""
    import sqlite3

    from broker import settings

    option = ctx.find_root().params.get("db_option")
    path = settings.db_path(option if isinstance(option, str) else None, settings.load())
    pattern = incomplete.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return []
    try:
        values = [str(row[0]) for row in conn.execute(query, (pattern,)).fetchmany(200) if row[0]]
        return [v for v in values if v.startswith(incomplete)]  # LIKE ignores case
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def complete_profiles(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return _completion_rows(ctx, "SELECT name FROM profiles WHERE name LIKE ? ESCAPE '\\' ORDER BY name", incomplete)


def complete_lease_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Lease ids of active leases, newest first."""
    return _completion_rows(
        ctx,
        "SELECT lease_id FROM leases WHERE state = 'active' AND lease_id != '' AND lease_id LIKE ? ESCAPE '\\' "
        "ORDER BY issued_at DESC",
        incomplete,
    )


def mfa_option(fn: F) -> F:
    return click.option(
        "--mfa-code",
        metavar="CODE",
        help="One-time code of the MFA device a session_token role requires (asked on the terminal when "
        "there is one and it is missing).",
    )(fn)


def fleet_options(what: str) -> Callable[[F], F]:
    """--fleet, with --host and --user that only the fleet ledger can answer."""

    def decorate(fn: F) -> F:
        return _apply(
            fn,
            [
                click.option("--fleet", "fleet_wide", is_flag=True, help=f"{what} (needs --ledger-url)."),
                click.option(
                    "--host", metavar="HOST", help="With --fleet: only leases of this host (its BROKER_HOST)."
                ),
                click.option("--user", metavar="USER", help="With --fleet: only leases of this OS user."),
            ],
        )

    return decorate


def require_fleet_for_host_and_user(fleet_wide: bool, host: str | None, user: str | None, what: str) -> None:
    if (host or user) and not fleet_wide:
        raise click.UsageError(f"--host and --user select fleet {what}: add --fleet")


# -- the responder's selectors (leases, revoke, report) ------------------------------------------------


def _access_key(text: str, where: str) -> str:
    key = text.strip()
    if not (16 <= len(key) <= 128 and key.isascii() and key.isalnum()):
        raise click.BadParameter(f"{where}: {key[:40]!r} is not an AWS access key id (AKIA.../ASIA...)")
    return key


def read_access_keys(handle: IO[str]) -> list[str]:
    """One access key id a line; blank lines and `#` comments are skipped."""
    name = getattr(handle, "name", "-")
    keys = []
    for number, line in enumerate(handle, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            keys.append(_access_key(text, f"line {number} of {name}"))
    return keys


def selector_options(fn: F) -> F:
    """--access-key, --access-keys-from, --issued-after/--issued-before, --namespace, --session-name,
    --entity, --accessor, --display-name and --account, handed to the command as one `selectors`
    dict of broker.selection.Selection fields (every one given must match: AND)."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        access_keys: tuple[str, ...],
        access_keys_from: IO[str] | None,
        issued_after: str | None,
        issued_before: str | None,
        namespace: str | None,
        session_name: str | None,
        entity_id: str | None,
        accessor: str | None,
        display_name: str | None,
        account: str | None,
        **kwargs: Any,
    ) -> Any:
        import time

        from broker.selection import parse_time

        keys = [_access_key(k, "--access-key") for k in access_keys]
        if access_keys_from is not None:
            keys += read_access_keys(access_keys_from)
            if not keys:
                raise click.BadParameter("no access key ids in it", param_hint="--access-keys-from")
        now = time.time()
        kwargs["selectors"] = {
            "access_keys": tuple(keys),
            "issued_after": parse_time(issued_after, now) if issued_after else None,
            "issued_before": parse_time(issued_before, now) if issued_before else None,
            "namespace": namespace,
            "session_name": session_name,
            "entity_id": entity_id,
            "accessor": accessor,
            "display_name": display_name,
            "account": account,
        }
        return fn(*args, **kwargs)

    return _apply(
        cast(F, wrapper),
        [
            click.option(
                "--access-key", "access_keys", multiple=True, metavar="ID", help="Only this access key id (repeatable)."
            ),
            click.option(
                "--access-keys-from",
                type=click.File("r"),
                metavar="FILE",
                help="Access key ids, one a line (- = stdin), e.g. from CloudTrail.",
            ),
            click.option(
                "--issued-after",
                metavar="T",
                help="Issued at or after T: ISO-8601 (2026-11-26T19:00:00Z) or a duration ago (2h, 30m).",
            ),
            click.option("--issued-before", metavar="T", help="Issued before T (ISO-8601 or a duration ago)."),
            click.option("--namespace", metavar="NS", help="Only leases in this Vault namespace ('' = root)."),
            click.option("--session-name", metavar="NAME", help="Only this role session name (assumed_role)."),
            click.option("--entity", "entity_id", metavar="ID", help="Only leases asked for by this Vault entity id."),
            click.option("--accessor", metavar="A", help="Only leases asked for by the token with this accessor."),
            click.option("--display-name", metavar="NAME", help="Only leases asked for by this Vault display name."),
            click.option("--account", metavar="ID", help="Only credentials of this AWS account id."),
        ],
    )
