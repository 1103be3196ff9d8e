"""Every environment variable broker reads, read in one place, once per command (`load()`), and
where broker keeps its files. Services get the `Env` from `App.env`; doctor reports from it too.

Standard library only and no module-level work: the cache-hit path imports this on every call.
Values are kept as given; the few that need parsing are parsed where they are used, so a bad
BROKER_VAULT_TIMEOUT fails a command that talks to Vault, not `broker leases`.
"""

import os

TYPE_CHECKING = False  # typing is not imported on the hit path; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_VAULT_ADDR = "https://127.0.0.1:8200"  # the Vault CLI's default (hvac's differs)

# (attribute, variable): everything broker reads from the environment.
VARIABLES = (
    ("db", "BROKER_DB"),
    ("key", "BROKER_KEY"),
    ("key_dir_override", "BROKER_KEY_DIR"),
    ("key_store", "BROKER_KEY_STORE"),
    ("ledger_url", "BROKER_LEDGER_URL"),
    ("host", "BROKER_HOST"),
    ("debug", "BROKER_DEBUG"),
    ("vault_timeout", "BROKER_VAULT_TIMEOUT"),
    ("vault_retry_seconds", "BROKER_VAULT_RETRY_SECONDS"),
    ("wait", "BROKER_WAIT"),
    ("revoke_concurrency", "BROKER_REVOKE_CONCURRENCY"),
    ("agent_addr", "VAULT_AGENT_ADDR"),
    ("plain_addr", "VAULT_ADDR"),
    ("namespace", "VAULT_NAMESPACE"),
    ("token", "VAULT_TOKEN"),
    ("cacert", "VAULT_CACERT"),
    ("capath", "VAULT_CAPATH"),
    ("skip_verify", "VAULT_SKIP_VERIFY"),
    ("client_cert", "VAULT_CLIENT_CERT"),
    ("client_key", "VAULT_CLIENT_KEY"),
    ("pgpassword", "PGPASSWORD"),
    ("aws_config_file", "AWS_CONFIG_FILE"),
    ("xdg_data_home", "XDG_DATA_HOME"),
    ("xdg_config_home", "XDG_CONFIG_HOME"),
    ("xdg_runtime_dir", "XDG_RUNTIME_DIR"),
)


class Env:
    """The environment as broker sees it: one attribute per variable in VARIABLES ("" when unset)."""

    __slots__ = tuple(name for name, _ in VARIABLES)

    db: str
    key: str
    key_dir_override: str
    key_store: str
    ledger_url: str
    host: str
    debug: str
    vault_timeout: str
    vault_retry_seconds: str
    wait: str
    revoke_concurrency: str
    agent_addr: str
    plain_addr: str
    namespace: str
    token: str
    cacert: str
    capath: str
    skip_verify: str
    client_cert: str
    client_key: str
    pgpassword: str
    aws_config_file: str
    xdg_data_home: str
    xdg_config_home: str
    xdg_runtime_dir: str

    def __init__(self, environ: "Mapping[str, str]") -> None:
        for name, variable in VARIABLES:
            setattr(self, name, environ.get(variable, ""))

    @property
    def vault_addr(self) -> str:
        """`VAULT_AGENT_ADDR` wins over `VAULT_ADDR`, as in Vault's own Go client. Any `user:pass@`
        is dropped: Vault takes no userinfo, and it must not be sent, shown or stored."""
        addr = (self.agent_addr or self.plain_addr or DEFAULT_VAULT_ADDR).rstrip("/")
        scheme, sep, rest = addr.partition("://")
        authority, slash, path = rest.partition("/")
        if sep and "@" in authority:
            addr = scheme + sep + authority.rsplit("@", 1)[1] + slash + path
        return addr

    @property
    def vault_addr_source(self) -> str:
        """Which variable `vault_addr` came from, for messages and doctor."""
        if self.agent_addr:
            return "VAULT_AGENT_ADDR"
        return "VAULT_ADDR" if self.plain_addr else "the default (VAULT_ADDR unset)"

    def wait_seconds(self, default: float) -> float:
        """`BROKER_WAIT`: how long a caller waits for an issuance (its own or another process's)
        before it gives up; the issuance itself goes on in its worker. A bad value raises ValueError."""
        if not self.wait:
            return default
        value = float(self.wait)
        if not 0 < value <= 3600:
            raise ValueError(f"BROKER_WAIT={self.wait!r} must be between 0 and 3600 seconds")
        return value

    def vault_namespace(self, profile_namespace: str | None = None) -> str:
        """The namespace sent as `X-Vault-Namespace`: the profile's, else `VAULT_NAMESPACE`, else root."""
        return (profile_namespace or self.namespace or "").strip("/")

    @property
    def key_dir(self) -> str:
        """The directory of the encryption key file: kept apart from the database on purpose."""
        chosen = self.key_dir_override or os.path.join(_xdg(self.xdg_config_home, ".config"), "broker")
        return os.path.abspath(os.path.expanduser(chosen))

    @property
    def aws_config_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.aws_config_file or "~/.aws/config"))

    def host_name(self) -> str:
        """This machine's name in the ledger: `BROKER_HOST`, else the host name."""
        import socket

        return self.host or socket.gethostname()


def load() -> Env:
    """The environment of this process, now."""
    return Env(os.environ)


def _xdg(value: str, fallback: str) -> str:
    return value if os.path.isabs(value) else os.path.join(os.path.expanduser("~"), fallback)


def default_db_path(env: Env) -> str:
    """Where the ledger lives when neither --db nor BROKER_DB says: `$XDG_DATA_HOME/broker/broker.db`."""
    return os.path.join(_xdg(env.xdg_data_home, ".local/share"), "broker", "broker.db")


def db_path(option: str | None, env: Env) -> str:
    """`--db`, else `BROKER_DB`, else the default path."""
    chosen = option or env.db or default_db_path(env)
    return os.path.abspath(os.path.expanduser(chosen))


def permission_problem(path: str, info: os.stat_result, wanted: int) -> str | None:
    """What makes `path` unsafe to trust (another owner, writable by group or others), or None."""
    if info.st_uid != os.getuid():
        return f"{path} is owned by another user (uid {info.st_uid}); use a path of your own"
    if info.st_mode & 0o022:
        return f"{path} is writable by group or others; fix it with: chmod {wanted:o} {path}"
    return None


def os_user() -> str:
    """The OS user; works in cron and CI, where there is no login terminal."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def actor(env: Env) -> str:
    """Who acts: `user@host`, recorded as revoked_by by every revocation, local or fleet."""
    return f"{os_user()}@{env.host_name()}"
