"""`broker login`: an AWS console sign-in URL from a profile's STS credentials.

The federation endpoint (peers.md §1.6) trades temporary credentials for a sign-in token:
GET <federation>?Action=getSigninToken&Session={"sessionId","sessionKey","sessionToken"} answers
{"SigninToken": ...}; the browser then opens <federation>?Action=login&Issuer=...&Destination=...
&SigninToken=.... Only credentials from AssumeRole and GetFederationToken can sign in, so the
iam_user and session_token types are refused before anything is sent.

The sign-in URL is a bearer token for the console: it goes to stdout or to the browser, never to
a log line or an error message (nor do the credentials in the first request).
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import profiles
from broker.errors import BrokerError, UsageError

if TYPE_CHECKING:
    from broker.app import App
    from broker.issuance import Credential

log = logging.getLogger(__name__)

SIGNIN_TYPES = ("assumed_role", "federation_token")
ISSUER = "broker"
TIMEOUT_SECONDS = 10.0
MIN_SESSION_SECONDS = 900  # the endpoint's SessionDuration range
MAX_SESSION_SECONDS = 43200
_PATH = re.compile(r"[A-Za-z0-9_./~%#?&=+:@!$,;*()-]*")


class SignInRefused(BrokerError):
    """The federation endpoint would not trade these credentials for a sign-in token."""


@dataclass(frozen=True)
class Partition:
    signin_host: str
    console_host: str


def partition(region: str | None) -> Partition:
    if region and region.startswith("cn-"):
        return Partition("signin.amazonaws.cn", "console.amazonaws.cn")
    if region and region.startswith("us-gov-"):
        return Partition("signin.amazonaws-us-gov.com", "console.amazonaws-us-gov.com")
    return Partition("signin.aws.amazon.com", "console.aws.amazon.com")


def default_federation_url(region: str | None) -> str:
    return f"https://{partition(region).signin_host}/federation"


def check_federation_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"invalid federation URL {url[:80]!r}: expected e.g. https://signin.aws.amazon.com/federation")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError("the federation URL must use https (plain http is allowed only on loopback, for tests)")
    return url


def check_path(path: str) -> str:
    """A console page such as `s3/home` or `ec2/home#Instances:`: a path, never another site."""
    cleaned = path.lstrip("/")
    if "://" in cleaned or cleaned.startswith("/") or not _PATH.fullmatch(cleaned):
        raise UsageError(f"invalid --path {path[:80]!r}: give a console page such as s3/home or ec2/home")
    return cleaned


def destination(region: str | None, path: str | None) -> str:
    """The console page to land on: `https://<region>.console.../<path>?region=<region>`."""
    host = partition(region).console_host
    page = path or "console/home"
    if not region:
        return f"https://{host}/{page}"
    page, hash_mark, fragment = page.partition("#")
    separator = "&" if "?" in page else "?"
    return f"https://{region}.{host}/{page}{separator}region={region}{hash_mark}{fragment}"


def session_duration(credential_type: str, expires_at: int, now: float) -> int | None:
    """SessionDuration for the console session: only AssumeRole credentials accept it (a federation
    token's console session lasts as long as the token). Tied to the credential's remaining life,
    within the endpoint's 15 min to 12 h."""
    if credential_type != "assumed_role":
        return None
    return max(MIN_SESSION_SECONDS, min(MAX_SESSION_SECONDS, int(expires_at - now)))


def signin_url(
    credential: Credential, credential_type: str, *, federation_url: str, region: str | None, path: str | None
) -> str:
    """Ask the federation endpoint for a sign-in token and build the login URL."""
    session = json.dumps(
        {
            "sessionId": credential.access_key_id,
            "sessionKey": credential.secret_key,
            "sessionToken": credential.session_token or "",
        }
    )
    query = {"Action": "getSigninToken", "Session": session}
    duration = session_duration(credential_type, credential.expires_at, time.time())
    if duration:
        query["SessionDuration"] = str(duration)
    token = _get_signin_token(federation_url, urllib.parse.urlencode(query))
    login = {"Action": "login", "Issuer": ISSUER, "Destination": destination(region, path), "SigninToken": token}
    return f"{federation_url}?{urllib.parse.urlencode(login)}"


def _get_signin_token(federation_url: str, query: str) -> str:
    where = urllib.parse.urlsplit(federation_url).netloc
    # the URL is https by default; --federation-url is the user's own choice (tests use loopback)
    request = urllib.request.Request(f"{federation_url}?{query}", headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - checked scheme
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        hint = (
            " (the credentials were refused: expired, or not from AssumeRole/GetFederationToken)"
            if exc.code in (400, 401, 403)
            else ""
        )
        raise SignInRefused(f"the federation endpoint {where} answered {exc.code} to getSigninToken{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SignInRefused(f"cannot reach the federation endpoint {where}: {reason}") from None
    try:
        token = json.loads(body).get("SigninToken")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise SignInRefused(f"the federation endpoint {where} sent no SigninToken")
    return token


def login_url(
    app: App,
    profile: str,
    *,
    region: str | None,
    path: str | None,
    federation_url: str | None,
    flags: dict[str, Any] | None = None,
) -> str:
    """The console sign-in URL for a profile (issuing or reusing its credential); `flags` are request
    fields for this call (--duration: the ttl)."""
    from broker import issuance

    path = check_path(path) if path else None
    request = issuance.build_request(app, profile, flags or {})
    region = profiles.check_region(region) if region else request.region
    federation_url = check_federation_url(federation_url) if federation_url else default_federation_url(region)
    if request.credential_type and request.credential_type not in SIGNIN_TYPES:
        raise _cannot_sign_in(profile, request.credential_type)
    credential = issuance.obtain(app, request)
    credential_type = request.credential_type or _recorded_type(app, credential)
    if credential_type not in SIGNIN_TYPES:
        raise _cannot_sign_in(profile, credential_type)
    url = signin_url(credential, credential_type, federation_url=federation_url, region=region, path=path)
    log.info("built a console sign-in URL for profile %s (%s)", profile, credential_type)
    return url


def _recorded_type(app: App, credential: Credential) -> str | None:
    from broker.models import Lease

    if credential.lease_row is None:
        return None
    with app.transaction(read_only=True) as session:
        row = session.get(Lease, credential.lease_row)
        return row.credential_type if row else None


def _cannot_sign_in(profile: str, credential_type: str | None) -> UsageError:
    return UsageError(
        f"profile {profile!r} gets {credential_type or 'unknown'} credentials, "
        "which cannot sign in to the AWS console; "
        f"console sign-in needs {' or '.join(SIGNIN_TYPES)} credentials (a Vault role of one of those types)"
    )
