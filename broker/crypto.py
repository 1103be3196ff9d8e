"""Secrets at rest: AES-256-GCM with a key kept outside the database.

The key comes from `BROKER_KEY` (base64 of 32 bytes), else the key file `<key dir>/key` (0600 in a
0700 directory apart from the database; created on first use). A blob that no longer opens with the
current key (the key was lost or replaced) reads as "no cached secret": the caller issues anew.

Imported on the cache-hit path: standard library at import, the cipher only when used.
"""

import binascii  # not base64: that module imports re, a few ms on every cache hit
import os

from broker import settings

KEY_BYTES = 32
NONCE_BYTES = 12
BLOB_VERSION = b"\x01"


class KeyUnusable(ValueError):
    """The configured key is unusable (bad BROKER_KEY, unreadable key file)."""


def _aesgcm(key: bytes):
    # The public class lives in cryptography.hazmat.primitives.ciphers.aead, whose import costs
    # ~12 ms of pure-Python modules; it is the same object as the Rust binding's class, which
    # imports in ~3 ms (tests/test_crypto.py pins that identity).
    try:
        from cryptography.hazmat.bindings._rust import openssl

        return openssl.aead.AESGCM(key)
    except (ImportError, AttributeError):  # pragma: no cover - other cryptography layouts
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(key)


def key_file() -> str:
    return os.path.join(settings.key_dir(), "key")


def _decode(text: str, where: str) -> bytes:
    try:
        key = binascii.a2b_base64(text.strip().replace("-", "+").replace("_", "/").encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyUnusable(f"{where} must be base64 of {KEY_BYTES} random bytes (make one: broker key generate)")
    return key


def load_key(create: bool = False) -> bytes | None:
    """The current key, or None when there is none yet and `create` is false."""
    env = os.environ.get("BROKER_KEY")
    if env:
        return _decode(env, "BROKER_KEY")
    path = key_file()
    try:
        with open(path, encoding="ascii") as handle:
            return _decode(handle.read(), f"key file {path}")
    except FileNotFoundError:
        if not create:
            return None
    return _create_key_file(path)


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


def write_key_file(text: str) -> None:
    """Replace the key file atomically (key rotation)."""
    path = key_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text.strip() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def seal(key: bytes, secret_key: str, session_token: str | None, aad: str) -> bytes:
    """Encrypt the secret half of a credential; `aad` (the access key id) binds it to its row."""
    nonce = os.urandom(NONCE_BYTES)
    plain = f"{secret_key}\n{session_token or ''}".encode()
    return BLOB_VERSION + nonce + _aesgcm(key).encrypt(nonce, plain, aad.encode())


def unseal(key: bytes, blob: bytes, aad: str) -> tuple[str, str | None] | None:
    """(secret_key, session_token) or None when the blob does not open with this key."""
    if not blob or blob[:1] != BLOB_VERSION:
        return None
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        plain = _aesgcm(key).decrypt(nonce, body, aad.encode())
    except Exception:  # InvalidTag: a different key, or a damaged blob
        return None
    secret_key, _, session_token = plain.decode().partition("\n")
    return secret_key, (session_token or None)
