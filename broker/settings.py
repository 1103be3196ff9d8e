"""Where broker keeps its files and which Vault it talks to, read from the environment when asked.

Standard library only and no module-level work: the cache-hit path imports this on every call.
"""

import os

DEFAULT_VAULT_ADDR = "https://127.0.0.1:8200"  # the Vault CLI's default (hvac's differs)


def _xdg(var: str, fallback: str) -> str:
    value = os.environ.get(var, "")
    return value if os.path.isabs(value) else os.path.join(os.path.expanduser("~"), fallback)


def db_path(option: str | None = None) -> str:
    """`--db`, else `BROKER_DB`, else `$XDG_DATA_HOME/broker/broker.db`."""
    chosen = (
        option
        or os.environ.get("BROKER_DB")
        or os.path.join(_xdg("XDG_DATA_HOME", ".local/share"), "broker", "broker.db")
    )
    return os.path.abspath(os.path.expanduser(chosen))


def key_dir() -> str:
    """The directory of the encryption key file: kept apart from the database on purpose."""
    chosen = os.environ.get("BROKER_KEY_DIR") or os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), "broker")
    return os.path.abspath(os.path.expanduser(chosen))


def vault_addr() -> str:
    """`VAULT_AGENT_ADDR` wins over `VAULT_ADDR`, as in Vault's own Go client."""
    addr = os.environ.get("VAULT_AGENT_ADDR") or os.environ.get("VAULT_ADDR") or DEFAULT_VAULT_ADDR
    return addr.rstrip("/")


def vault_namespace(profile_namespace: str | None = None) -> str:
    """The namespace sent as `X-Vault-Namespace`: the profile's, else `VAULT_NAMESPACE`, else root."""
    return (profile_namespace or os.environ.get("VAULT_NAMESPACE") or "").strip("/")


def permission_problem(path: str, info: os.stat_result, wanted: int) -> str | None:
    """What makes `path` unsafe to trust (another owner, writable by group or others), or None."""
    if info.st_uid != os.getuid():
        return f"{path} is owned by another user (uid {info.st_uid}); use a path of your own"
    if info.st_mode & 0o022:
        return f"{path} is writable by group or others; fix it with: chmod {wanted:o} {path}"
    return None


def host_name() -> str:
    """This machine's name in the ledger: `BROKER_HOST`, else the host name."""
    import socket

    return os.environ.get("BROKER_HOST") or socket.gethostname()


def os_user() -> str:
    """The OS user; works in cron and CI, where there is no login terminal."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"
