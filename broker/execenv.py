"""The environment `broker exec` gives its child, and the text `broker export` prints: pure functions.

The child sees exactly one credential source. Every inherited variable that could point an SDK at
another one is removed first (the list aws-vault's createEnv uses, plus the container-endpoint
variables, so that a leftover token file from another server cannot shadow ours); then either the
keys themselves (env mode) or the address and token of broker's loopback endpoint (server mode).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker import cache
from broker.errors import UsageError

if TYPE_CHECKING:
    from broker.issuance import Credential

# What `broker exec` sets to mark its children; its presence in our own environment means nesting.
PROFILE_VAR = "BROKER_PROFILE"

CONTAINER_URI_VAR = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
CONTAINER_TOKEN_VAR = "AWS_CONTAINER_AUTHORIZATION_TOKEN"  # noqa: S105 - a variable name, not a secret

REMOVED_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CREDENTIAL_FILE",
    "AWS_CREDENTIAL_EXPIRATION",
    # another endpoint's settings; botocore prefers a token *file* over our token variable
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    # web identity comes before the container endpoint in botocore's chain (and in the other SDKs')
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    # broker's own secrets: the child gets credentials, not what broker needs to make them
    "BROKER_KEY",
    "BROKER_LEDGER_URL",
    "PGPASSWORD",
)
VAULT_TOKEN_VAR = "VAULT_TOKEN"  # noqa: S105 - a variable name; kept only with --keep-vault-token


@dataclass(frozen=True)
class Keys:
    """The parts of a credential a child or an export needs (duck-compatible with issuance.Credential)."""

    access_key_id: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    expires_at: int
    account_id: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where the loopback credential server listens, and the token it wants."""

    url: str
    token: str = field(repr=False)


def check_not_nested(environ: Mapping[str, str], force: bool) -> None:
    """Refuse to run inside another `broker exec` unless forced: the inner profile would silently
    replace the outer one's credentials for everything below it."""
    outer = environ.get(PROFILE_VAR)
    if outer and not force:
        raise UsageError(
            f"already inside `broker exec` for profile {outer!r} ({PROFILE_VAR} is set); "
            f"exit that shell first, or pass --force to nest anyway"
        )


def child_env(
    environ: Mapping[str, str],
    profile: str,
    *,
    region: str | None = None,
    keys: Keys | Credential | None = None,
    endpoint: Endpoint | None = None,
    keep_vault_token: bool = False,
) -> dict[str, str]:
    """The child's environment: `environ` without inherited credentials, web identity settings
    and broker's secrets (VAULT_TOKEN too unless `keep_vault_token`), plus exactly one of `keys`
    (env mode) or `endpoint` (server mode), the region when known, and BROKER_PROFILE."""
    if (keys is None) == (endpoint is None):
        raise ValueError("give exactly one of keys or endpoint")
    removed = set(REMOVED_VARS) if keep_vault_token else {*REMOVED_VARS, VAULT_TOKEN_VAR}
    env = {name: value for name, value in environ.items() if name not in removed}
    if keys is not None:
        env.update(credential_vars(keys))
    elif endpoint is not None:  # always, after the check above
        env[CONTAINER_URI_VAR] = endpoint.url
        env[CONTAINER_TOKEN_VAR] = endpoint.token
    if region:
        env["AWS_REGION"] = region
        env["AWS_DEFAULT_REGION"] = region
    env[PROFILE_VAR] = profile
    return env


def credential_vars(keys: Keys | Credential) -> dict[str, str]:
    """AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (when there is one) and
    AWS_CREDENTIAL_EXPIRATION, in the order `export` prints them."""
    env = {"AWS_ACCESS_KEY_ID": keys.access_key_id, "AWS_SECRET_ACCESS_KEY": keys.secret_key}
    if keys.session_token:
        env["AWS_SESSION_TOKEN"] = keys.session_token
    env["AWS_CREDENTIAL_EXPIRATION"] = cache.iso_utc(keys.expires_at)
    return env


# -- `broker export` ------------------------------------------------------------------------------


def render_export(keys: Keys | Credential, fmt: str, *, profile: str, region: str | None = None) -> str:
    """The text `broker export` prints (ending in a newline)."""
    if fmt == "json":
        return (
            cache.render_process_json(
                keys.access_key_id, keys.secret_key, keys.session_token, keys.expires_at, keys.account_id
            )
            + "\n"
        )
    if fmt == "ini":
        lines = [
            f"[{profile}]",
            f"aws_access_key_id = {keys.access_key_id}",
            f"aws_secret_access_key = {keys.secret_key}",
        ]
        if keys.session_token:
            lines.append(f"aws_session_token = {keys.session_token}")
        return "\n".join(lines) + "\n"
    if fmt == "env":
        variables = credential_vars(keys)
        if region:
            variables.update(AWS_REGION=region, AWS_DEFAULT_REGION=region)
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())
    raise ValueError(f"unknown export format {fmt!r}")


CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION")


def render_unset(*, region: bool) -> str:
    """The lines that undo `eval "$(broker export PROFILE)"` (every variable it may set)."""
    names = [*CREDENTIAL_VARS, *(("AWS_REGION", "AWS_DEFAULT_REGION") if region else ())]
    return "".join(f"unset {name}\n" for name in names)


def render_endpoint_exports(endpoint: Endpoint) -> str:
    """The two lines `broker serve` prints for `eval`."""
    return (
        f"export {CONTAINER_URI_VAR}={shlex.quote(endpoint.url)}\n"
        f"export {CONTAINER_TOKEN_VAR}={shlex.quote(endpoint.token)}\n"
    )
