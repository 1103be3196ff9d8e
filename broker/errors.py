"""The exceptions a user can act on. Each carries its exit code; cli.py is the one place that turns
them into a line on stderr. Messages never contain a secret, a token or a password."""


def one_line(text: object, limit: int | None = None) -> str:
    """`text` with its white space folded to single spaces, cut at `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 3] + "..."


class BrokerError(Exception):
    """Base class: a failure with a one-line explanation of what to do next."""

    exit_code = 1


class UsageError(BrokerError):
    """Bad input on the command line or in the environment."""

    exit_code = 2


class ProfileNotFound(UsageError):
    exit_code = 3


class VaultError(BrokerError):
    """Vault could not give us what we asked for."""

    exit_code = 4


class VaultUnreachable(VaultError):
    pass


class VaultTimeout(VaultUnreachable):
    """Vault took the request but did not answer in time: it may have acted on it."""


class IssuanceInBackground(VaultTimeout):
    """The caller stopped waiting (BROKER_WAIT); its worker still issues and records the lease."""


class VaultSealed(VaultError):
    pass


class VaultDenied(VaultError):
    pass


class VaultRejected(VaultError):
    """Vault answered 4xx to a well-formed request (unknown role, bad parameter)."""


class VaultBadResponse(VaultError):
    """Vault (or whatever answered) sent something that is not a usable Vault response."""


class DatabaseError(BrokerError):
    exit_code = 5


class DatabaseLocked(DatabaseError):
    pass


class DatabaseCorrupt(DatabaseError):
    pass


class DatabaseTooNew(DatabaseError):
    pass


class PathNotWritable(DatabaseError):
    pass


class UnsafePermissions(DatabaseError):
    pass


class LeaseNotRecorded(BrokerError):
    """Vault issued a lease but the ledger could not record it (the lease was revoked)."""

    exit_code = 6


class LockTimeout(BrokerError):
    exit_code = 7


class PartialFailure(BrokerError):
    """Some of many operations failed; the summary was already printed."""

    exit_code = 8


class FleetError(BrokerError):
    """The fleet ledger (PostgreSQL) could not do what was asked; local work is unaffected."""


class FleetUnreachable(FleetError):
    """PostgreSQL did not answer (down, hung, wrong address, refused the login)."""


class FleetDenied(FleetError):
    """PostgreSQL refused an operation to this role (a GRANT or a row-level security policy)."""


class FleetSchemaMismatch(FleetError):
    """The shared schema is missing, older than this broker (run `ledger init`) or newer (upgrade)."""


class NotFound(BrokerError):
    """An id (access key, lease id, session name) that no ledger knows (`broker whois`)."""

    exit_code = 3
