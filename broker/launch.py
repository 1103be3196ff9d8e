"""Running programs with broker credentials: `exec` (env or server mode), `serve`, `export`.

Env mode replaces broker with the command (os.execvpe), as aws-vault does first: the exit status and
every signal are the command's own, with nothing in between. Server mode has to stay alive to serve
the endpoint, so it runs the command as a child in the same process group (so a terminal's Ctrl-C,
Ctrl-\\ and job control reach it directly), forwards the signals a terminal does not send to the
group, waits, and then exits the way the child did (the same status, or the same signal).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from broker import cache, execenv, output
from broker.errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from broker.app import App
    from broker.issuance import Credential, IssueRequest

    # What signal.signal takes and returns (typeshed's private signal._HANDLER).
    Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

log = logging.getLogger(__name__)

# Sent by `kill`, init systems and CI runners to broker alone: always forwarded to the child.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Sent by a terminal to the whole foreground process group, child included: forwarding them too
# would deliver each twice (a second Ctrl-C makes Terraform abandon its run). Forwarded only when
# broker is not in the terminal's foreground group (e.g. `kill -INT` from a script).
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


class CommandNotFound(BrokerError):
    exit_code = 127  # as a shell says


class CommandNotExecutable(BrokerError):
    exit_code = 126


# `flags`: request fields given on the command line for this call (--duration is the ttl), over the profile's.
Flags = dict[str, Any]


def prepare(app: App, profile: str, *, force: bool, flags: Flags | None = None) -> tuple[IssueRequest, Credential]:
    """Check nesting, then the request and a first credential (so errors come before any child runs)."""
    from broker import issuance

    execenv.check_not_nested(os.environ, force)
    request = issuance.build_request(app, profile, flags or {})
    credential = issuance.obtain(app, request)
    return request, credential


def exec_with_keys(
    app: App,
    profile: str,
    command: list[str],
    *,
    force: bool,
    keep_vault_token: bool = False,
    flags: Flags | None = None,
) -> int:
    """Env mode: put the keys in the environment and become the command."""
    request, credential = prepare(app, profile, force=force, flags=flags)
    env = execenv.child_env(
        os.environ, profile, region=request.region, keys=credential, keep_vault_token=keep_vault_token
    )
    log.info(
        "running %s with key %s until %s",
        command[0],
        output.mask_key(credential.access_key_id),
        cache.iso_utc(credential.expires_at),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 - running the user's command is the point
    except OSError as exc:
        raise _exec_error(command[0], exc) from None
    return 0  # not reached


def exec_with_server(
    app: App,
    profile: str,
    command: list[str],
    *,
    force: bool,
    keep_vault_token: bool = False,
    flags: Flags | None = None,
) -> int:
    """Server mode: serve fresh credentials on loopback to a child, for as long as it runs."""
    from broker.credserver import CredentialServer

    request, _first = prepare(app, profile, force=force, flags=flags)
    with CredentialServer(app, request) as server:
        env = execenv.child_env(
            os.environ, profile, region=request.region, endpoint=server.endpoint, keep_vault_token=keep_vault_token
        )
        with _Forwarding() as forwarding:  # before the child exists: no signal slips through
            try:
                child = subprocess.Popen(command, env=env)
            except OSError as exc:
                raise _exec_error(command[0], exc) from None
            forwarding.attach(child)
            returncode = child.wait()
        log.info("%s exited with %s after %d credential requests", command[0], returncode, server.served)
    return exit_like(returncode)


def serve(app: App, profile: str, port: int, out: TextIO, *, flags: Flags | None = None) -> int:
    """`broker serve`: the endpoint in the foreground until SIGINT or SIGTERM."""
    from broker import issuance
    from broker.credserver import CredentialServer

    request = issuance.build_request(app, profile, flags or {})
    issuance.obtain(app, request)  # fail now, not at the SDK's first request
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with CredentialServer(app, request, port=port) as server:
            out.write(execenv.render_endpoint_exports(server.endpoint))
            out.flush()
            print(
                f"broker: serving credentials for profile {profile} at {server.url}; stop with Ctrl-C or SIGTERM",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(1.0):
                pass
        print(
            f"broker: stopped serving profile {profile} after {server.served} credential requests",
            file=sys.stderr,
            flush=True,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def export(app: App, profile: str, fmt: str, *, flags: Flags | None = None, unset: bool = False) -> str:
    """`broker export`: the credentials in `fmt`; with `unset`, the shell lines that remove them again."""
    from broker import issuance

    if unset:
        return execenv.render_unset(region=bool(issuance.build_request(app, profile, {}).region))
    request = issuance.build_request(app, profile, flags or {})
    credential = issuance.obtain(app, request)
    return execenv.render_export(credential, fmt, profile=profile, region=request.region)


# -- the child ------------------------------------------------------------------------------------


def _exec_error(name: str, exc: OSError) -> BrokerError:
    if isinstance(exc, FileNotFoundError):
        return CommandNotFound(f"command not found: {name}")
    if isinstance(exc, PermissionError):
        return CommandNotExecutable(f"cannot run {name}: permission denied")
    return BrokerError(f"cannot run {name}: {exc.strerror or exc}")


def terminal_delivers_to_child() -> bool:
    """True when broker is in the foreground process group of its terminal, so that a key such as
    Ctrl-C already signals the child (same group) without our help."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except OSError:
            continue
    return False


class _Forwarding:
    """While active, signals to broker go to the child (see FORWARDED_SIGNALS / TERMINAL_SIGNALS).
    Handlers are Python functions, never SIG_IGN, because an ignored signal stays ignored in a child
    across exec; one that arrives before the child exists is delivered as soon as it does."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self.previous: dict[int, Handler] = {}

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is None:
            self.pending.append(signum)
        elif self.child.poll() is None:
            try:
                self.child.send_signal(signum)
            except ProcessLookupError:
                pass

    def _ignore(self, signum: int, _frame: FrameType | None) -> None:
        """The terminal signals the child itself (same foreground group); only before the child
        exists does broker pass it on."""
        if self.child is None:
            self.pending.append(signum)

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        while self.pending:
            self._forward(self.pending.pop(0), None)

    def __enter__(self) -> _Forwarding:
        terminal = terminal_delivers_to_child()
        for sig in FORWARDED_SIGNALS + TERMINAL_SIGNALS:
            handler = self._ignore if (sig in TERMINAL_SIGNALS and terminal) else self._forward
            self.previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def exit_like(returncode: int) -> int:
    """The child's exit status; if a signal killed it, die of the same signal so that the parent
    shell sees what it would have seen without broker (falls back to 128 + N)."""
    if returncode >= 0:
        return returncode
    signum = -returncode
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    return 128 + signum
