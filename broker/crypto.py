"""Secrets at rest: AES-256-GCM with a key kept outside the database.

Where the key lives, first match wins:
1. `BROKER_KEY` (base64 of 32 bytes), for CI and containers;
2. the key file `<key dir>/key` (0600, in a 0700 directory apart from the database);
3. the OS keyring (`keyring` package, a real backend such as Secret Service or the macOS
   Keychain), with a per-login copy in `$XDG_RUNTIME_DIR/broker/key` (tmpfs, 0600) so that a cache
   hit never waits for the keyring;
4. nothing yet: the first issuance creates the key, in the keyring when one is usable
   (`BROKER_KEY_STORE=keyring|file` forces the choice), else in the key file.
A blob that no longer opens with the current key (the key was lost or replaced) reads as "no cached
secret": the caller issues anew.

Imported on the cache-hit path: standard library at import, the cipher only when used.
"""

import binascii  # not base64: that module imports re, a few ms on every cache hit
import os

from broker import settings

TYPE_CHECKING = False  # typing is not imported on the cache-hit path; mypy treats this name as True
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
BLOB_VERSION = b"\x02"  # 1: secret and token joined, bound to the access key id only (not opened)


class KeyUnusable(ValueError):
    """The configured key is unusable (bad BROKER_KEY, unreadable key file)."""


def _aesgcm(key: bytes) -> "AESGCM":
    # The public class lives in cryptography.hazmat.primitives.ciphers.aead, whose import costs
    # ~12 ms of pure-Python modules; it is the same object as the Rust binding's class, which
    # imports in ~3 ms (tests/test_cache_rule.py pins that identity).
    try:
        from cryptography.hazmat.bindings._rust import openssl

        return openssl.aead.AESGCM(key)
    except (ImportError, AttributeError):  # pragma: no cover - other cryptography layouts
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(key)


def key_file(env: settings.Env) -> str:
    return os.path.join(env.key_dir, "key")


def _decode(text: str, where: str) -> bytes:
    try:
        key = binascii.a2b_base64(text.strip().replace("-", "+").replace("_", "/").encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyUnusable(f"{where} must be base64 of {KEY_BYTES} random bytes (make one: broker key generate)")
    return key


KEYRING_SERVICE = "broker"
KEYRING_ACCOUNT = "cache-key"


def runtime_copy(env: settings.Env) -> str | None:
    """`$XDG_RUNTIME_DIR/broker/key`, when there is a private runtime directory (tmpfs, per login)."""
    base = env.xdg_runtime_dir
    if not base or not os.path.isdir(base):
        return None
    info = os.stat(base)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return os.path.join(base, "broker", "key")


def _check_private(path: str, what: str) -> None:
    """Refuse a key file or directory another user owns or group/others may write: whoever can
    replace the key can read every secret sealed with it afterwards (and plant blobs)."""
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise KeyUnusable(f"{what} {path} is owned by uid {info.st_uid}, not you; refusing to use it")
    if info.st_mode & 0o022:
        raise KeyUnusable(f"{what} {path} is writable by group or others; chmod go-w it (0700/0600)")


def _read(path: str | None, where: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            _check_private(os.path.dirname(path) or ".", "key directory")
            _check_private(path, "key file")
            return _decode(handle.read(), where)
    except FileNotFoundError:
        return None


def load_key(env: settings.Env, *, create: bool = False, allow_keyring: bool = True) -> bytes | None:
    """The current key, or None when there is none (yet) and `create` is false. The cache-hit path
    passes allow_keyring=False: it reads only the environment and files."""
    if env.key:
        return _decode(env.key, "BROKER_KEY")
    path = key_file(env)
    found = _read(path, f"key file {path}") or _read(runtime_copy(env), "the runtime key copy")
    if found or not allow_keyring:
        return found
    if key_store(env) == "keyring":
        text = _keyring_get()
        if text is None and create:
            text = new_key_text()
            _keyring_set(text)
        if text is None:
            return None
        _write_private(runtime_copy(env), text)
        return _decode(text, "the keyring's broker key")
    return _create_key_file(path) if create else None


def key_store(env: settings.Env) -> str:
    """Where a new key goes: 'keyring' when a real OS keyring backend is usable, else 'file'."""
    chosen = env.key_store.strip().lower()
    if chosen in ("keyring", "file"):
        return chosen
    try:
        import keyring
        from keyring.backends import chainer
    except ImportError:
        return "file"
    backend = keyring.get_keyring()
    backends = backend.backends if isinstance(backend, chainer.ChainerBackend) else [backend]
    # priority >= 1: Secret Service, macOS Keychain, Windows; not the fail, null or plaintext ones
    return "keyring" if any(getattr(b, "priority", 0) >= 1 for b in backends) else "file"


def _keyring_get() -> str | None:
    import keyring

    try:
        return keyring.get_password(KEYRING_SERVICE, KEYRING_ACCOUNT)
    except Exception as exc:  # any backend failure: say which, never crash
        raise KeyUnusable(f"the OS keyring failed ({type(exc).__name__}); set BROKER_KEY_STORE=file") from None


def _keyring_set(text: str) -> None:
    import keyring

    try:
        keyring.set_password(KEYRING_SERVICE, KEYRING_ACCOUNT, text)
    except Exception as exc:
        raise KeyUnusable(f"the OS keyring failed ({type(exc).__name__}); set BROKER_KEY_STORE=file") from None


def _write_private(path: str | None, text: str) -> None:
    """Write `text` to `path` (0600, parent 0700) atomically; no-op for no path."""
    if not path:
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text.strip() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def key_source(env: settings.Env) -> tuple[str, str | None]:
    """(kind, where) of the key in use or to be created: BROKER_KEY, file, or keyring."""
    if env.key:
        return "BROKER_KEY", None
    if os.path.exists(key_file(env)):
        return "file", key_file(env)
    if key_store(env) == "keyring":
        return "keyring", f"service {KEYRING_SERVICE!r}, account {KEYRING_ACCOUNT!r}"
    return "file", key_file(env)


def store_key(env: settings.Env, text: str) -> None:
    """Make `text` the key, wherever the current one lives (key rotation)."""
    kind, _where = key_source(env)
    if kind == "BROKER_KEY":
        raise KeyUnusable("the key comes from BROKER_KEY; set a new value there instead (cached secrets are discarded)")
    if kind == "keyring":
        _keyring_set(text)
        _write_private(runtime_copy(env), text)
    else:
        _write_private(key_file(env), text)


def new_key_text() -> str:
    return binascii.b2a_base64(os.urandom(KEY_BYTES), newline=False).decode("ascii")


def _create_key_file(path: str) -> bytes:
    """Write a fresh key atomically; when another process wins the race, use its key."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(new_key_text() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temp)
    with open(path, encoding="ascii") as handle:
        return _decode(handle.read(), f"key file {path}")


def row_aad(part: str, lease_id: str, cache_key: str | None, access_key_id: str, expires_at: int) -> bytes:
    """The associated data of one sealed field: which field, and the row's identity (lease id,
    request key, access key id and expiry), so a blob copied into another row or field, or left in
    a row whose expires_at was changed without resealing, does not open. Every part is read from
    the row itself, so the hit path computes it from what HIT_QUERY returns; whatever changes
    leases.expires_at of a row with a sealed secret reseals it in the same transaction."""
    return "\0".join(("broker/3", part, lease_id, cache_key or "", access_key_id, str(int(expires_at)))).encode()


def seal(key: bytes, value: str, aad: bytes) -> bytes:
    """Encrypt one secret field (a secret key, or a session token on its own)."""
    nonce = os.urandom(NONCE_BYTES)
    return BLOB_VERSION + nonce + _aesgcm(key).encrypt(nonce, value.encode(), aad)


def unseal(key: bytes, blob: bytes | None, aad: bytes) -> str | None:
    """The sealed value, or None when the blob does not open with this key and row."""
    if not blob or blob[:1] != BLOB_VERSION:
        return None
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return _aesgcm(key).decrypt(nonce, body, aad).decode()
    except Exception:  # InvalidTag: a different key, another row's blob, or a damaged one
        return None


def seal_credential(
    key: bytes,
    lease_id: str,
    cache_key: str | None,
    access_key_id: str,
    expires_at: int,
    secret_key: str,
    session_token: str | None,
) -> tuple[bytes, bytes | None]:
    """(leases.secret, leases.sealed_token): the secret key and the session token sealed apart."""
    row = (lease_id, cache_key, access_key_id, expires_at)
    secret = seal(key, secret_key, row_aad("secret", *row))
    token = seal(key, session_token, row_aad("token", *row)) if session_token else None
    return secret, token


def open_credential(
    key: bytes,
    lease_id: str,
    cache_key: str | None,
    access_key_id: str,
    expires_at: int,
    secret_blob: bytes | None,
    token_blob: bytes | None,
) -> tuple[str, str | None] | None:
    """(secret_key, session_token) of a row, or None when either field does not open."""
    row = (lease_id, cache_key, access_key_id, expires_at)
    secret = unseal(key, secret_blob, row_aad("secret", *row))
    if secret is None:
        return None
    if token_blob is None:
        return secret, None
    token = unseal(key, token_blob, row_aad("token", *row))
    return None if token is None else (secret, token)
