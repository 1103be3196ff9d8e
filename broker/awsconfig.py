"""`[profile NAME]` sections in the AWS config file that run broker as their credential_process.

The file is edited line by line, not through configparser (which drops comments and reorders): only
the keys broker owns in that one section change (credential_process, and region when the profile
has one); every other byte stays. Writes go to a temporary file in the same directory and replace
the original atomically, after a copy of the old file is kept as `<config>.broker-backup`. The mode
of an existing file is kept; a new one is 0600. Running the same change twice changes nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker import locks, settings
from broker.errors import BrokerError, UsageError

if TYPE_CHECKING:
    from broker.app import App

OWNED_KEYS = ("credential_process", "region")
BACKUP_SUFFIX = ".broker-backup"
LOCK_WAIT_SECONDS = 10.0

_HEADER = re.compile(r"^\s*\[([^\]]*)\]\s*(?:[#;].*)?$")
_KEY = re.compile(r"^([A-Za-z0-9_.-]+)\s*[=:]")
_PLAIN_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


@dataclass(frozen=True)
class Change:
    path: str
    action: str  # added | updated | unchanged | removed | absent | kept
    backup: str | None = None

    def describe(self, profile: str) -> str:
        where = f"[{section_name(profile)}] in {self.path}"
        if self.action == "unchanged":
            return f"{where} is already up to date"
        if self.action == "absent":
            return f"no {where}; nothing to undo"
        if self.action == "kept":
            return f"kept {where}: its credential_process is not broker's for this profile"
        backup = f" (previous version in {self.backup})" if self.backup else ""
        return f"{self.action} {where}{backup}"


def section_name(profile: str) -> str:
    return "default" if profile == "default" else f"profile {profile}"


# -- the credential_process command ----------------------------------------------------------------


def broker_argv() -> list[str]:
    """How to run this broker again: the script it was started as, else `broker` on PATH, else
    this interpreter with `-m broker` (also when it was started that way)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if (
        os.path.basename(argv0) == "__main__.py"
        and os.path.basename(os.path.dirname(os.path.abspath(argv0))) == "broker"
    ):
        return [sys.executable, "-m", "broker"]
    if os.path.basename(argv0).startswith("broker") and os.path.isfile(argv0) and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    found = shutil.which("broker")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "broker"]


def quote_arg(arg: str) -> str:
    """Quote for both ways SDKs run credential_process: split like shlex (botocore) and handed to
    `sh -c` (JS v3, Go v2, Java, .NET, Rust). POSIX single quotes mean the same to both, and
    nothing inside them is expanded (`$()`, backticks, `$VAR`). A word with a single quote or a
    control character cannot be written that way and is refused."""
    if _PLAIN_ARG.fullmatch(arg):
        return arg
    if "'" in arg or any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
        raise UsageError(
            f"cannot write {arg!r} into credential_process safely (a single quote or control character would "
            "run differently under a shell); use a path without them"
        )
    return "'" + arg + "'"


def credential_process_value(profile: str, db_path: str | None = None, default_db: str | None = None) -> str:
    """`<broker> credential-process --profile NAME`, with `--db PATH` first when the ledger is not
    in its default place (an SDK may run without the BROKER_DB of the shell that added the profile)."""
    words = broker_argv()
    if db_path and os.path.abspath(db_path) != default_db:
        words += ["--db", os.path.abspath(db_path)]
    words += ["credential-process", "--profile", profile]
    return " ".join(quote_arg(w) for w in words)


def is_ours(value: str, profile: str) -> bool:
    """Whether a credential_process value runs broker for `profile`."""
    try:
        words = shlex.split(value)
    except ValueError:
        return False
    return words[-3:] == ["credential-process", "--profile", profile]


# -- line-wise editing (pure) ----------------------------------------------------------------------


@dataclass
class _Section:
    name: str
    start: int  # index of the header line
    end: int  # index after the section's last line


def _sections(lines: list[str]) -> list[_Section]:
    found: list[_Section] = []
    for i, line in enumerate(lines):
        match = _HEADER.match(line.rstrip("\r\n"))
        if match:
            if found:
                found[-1].end = i
            found.append(_Section(" ".join(match.group(1).split()), i, len(lines)))
    return found


def _find(lines: list[str], profile: str) -> _Section | None:
    names = {section_name(profile)} | ({"profile default"} if profile == "default" else set())
    matches = [s for s in _sections(lines) if s.name in names]
    if len(matches) > 1:
        raise UsageError(
            f"the AWS config has {len(matches)} [{section_name(profile)}] sections, which the SDKs reject; "
            f"merge them by hand first"
        )
    return matches[0] if matches else None


def _entries(lines: list[str], section: _Section) -> list[tuple[str, int, int]]:
    """(key, first line, end line) of each key in the section; end covers continuation lines."""
    entries: list[tuple[str, int, int]] = []
    i = section.start + 1
    while i < section.end:
        text = lines[i].rstrip("\r\n")
        match = _KEY.match(text)
        if match:
            j = i + 1
            while (
                j < section.end
                and lines[j][:1] in (" ", "\t")
                and lines[j].strip()
                and not lines[j].lstrip().startswith(("#", ";"))
            ):
                j += 1
            entries.append((match.group(1).lower(), i, j))
            i = j
        else:
            i += 1
    return entries


def _newline(lines: list[str]) -> str:
    return "\r\n" if lines and lines[0].endswith("\r\n") else "\n"


def set_keys(text: str, profile: str, values: dict[str, str]) -> str:
    """`text` with `values` (keys from OWNED_KEYS) set in the profile's section, which is appended
    if missing. Other keys, comments, blank lines and sections are left exactly as they were."""
    lines = text.splitlines(keepends=True)
    nl = _newline(lines)
    section = _find(lines, profile)
    if section is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += nl
        if lines and lines[-1].strip():
            lines.append(nl)
        lines.append(f"[{section_name(profile)}]{nl}")
        lines.extend(f"{key} = {value}{nl}" for key, value in values.items())
        return "".join(lines)
    entries = _entries(lines, section)
    edits: list[tuple[int, int, list[str]]] = []  # replace lines[first:end] with the list
    done: set[str] = set()
    for key, first, end in entries:
        if key not in values:
            continue
        new = [] if key in done else [f"{key} = {values[key]}"]
        done.add(key)
        if new and lines[first:end] == [new[0] + lines[first][len(lines[first].rstrip("\r\n")) :]]:
            continue  # already exactly this
        edits.append((first, end, new))
    missing = [key for key in values if key not in done]
    if missing:
        anchor = entries[-1][2] if entries else section.start + 1
        edits.append((anchor, anchor, [f"{key} = {values[key]}" for key in missing]))
    if not edits:
        return text
    if not lines[-1].endswith("\n"):
        lines[-1] += nl
    for first, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        ending = lines[first][len(lines[first].rstrip("\r\n")) :] if first < len(lines) else nl
        lines[first:end] = [line + (ending or nl) for line in new]
    return "".join(lines)


def unset_broker(text: str, profile: str) -> tuple[str, str]:
    """(new text, action): drop broker's credential_process from the profile's section, and the
    whole section when nothing but a region is left in it. A section whose credential_process is
    not broker's for this profile is kept as it is."""
    lines = text.splitlines(keepends=True)
    section = _find(lines, profile)
    if section is None:
        return text, "absent"
    entries = _entries(lines, section)
    ours = [
        (first, end)
        for key, first, end in entries
        if key == "credential_process" and is_ours(_value(lines[first:end]), profile)
    ]
    theirs = [e for e in entries if e[0] == "credential_process" and (e[1], e[2]) not in ours]
    if not ours or theirs:
        return text, "kept"
    drop: set[int] = set()
    others = [e for e in entries if e[0] not in OWNED_KEYS]
    if others:
        for first, end in ours:
            drop.update(range(first, end))
    else:  # only broker's keys (and maybe a region) in it: the section goes, its comments stay
        drop.add(section.start)
        for _key, first, end in entries:
            drop.update(range(first, end))
        drop.update(i for i in range(section.start + 1, section.end) if not lines[i].strip())
        before = section.start - 1
        if section.end == len(lines) and before >= 1 and not lines[before].strip() and lines[before - 1].strip():
            drop.add(before)  # the blank line set_keys put before an appended section
    return "".join(line for i, line in enumerate(lines) if i not in drop), "removed"


def _value(entry_lines: list[str]) -> str:
    first = entry_lines[0].rstrip("\r\n")
    value = re.split(r"[=:]", first, maxsplit=1)[1] if re.search(r"[=:]", first) else ""
    return " ".join([value.strip(), *(line.strip() for line in entry_lines[1:])]).strip()


# -- the file --------------------------------------------------------------------------------------


def write_profile(app: App, profile: str, region: str | None) -> Change:
    """Add or update the `[profile NAME]` section for a broker profile."""
    values = {"credential_process": credential_process_value(profile, app.db_path, settings.default_db_path(app.env))}
    if region:
        values["region"] = region
    try:
        return _edit(app, profile, lambda text: (set_keys(text, profile, values), None))
    except BrokerError as exc:
        raise type(exc)(f"{exc} (profile {profile} itself is saved; run the same command again once fixed)") from None


def remove_profile(app: App, profile: str) -> Change:
    """Undo write_profile: remove broker's credential_process (and the section if only that and a
    region were in it). Leaves a section that runs something else alone."""
    try:
        return _edit(app, profile, lambda text: unset_broker(text, profile), create=False)
    except BrokerError as exc:
        raise type(exc)(
            f"{exc} (profile {profile} itself is removed; delete [{section_name(profile)}] by hand)"
        ) from None


def _edit(app: App, profile: str, change: Callable[[str], tuple[str, str | None]], *, create: bool = True) -> Change:
    path = os.path.realpath(app.env.aws_config_path)  # a symlinked config (dotfiles) is edited in place
    lock = locks.lock_path(app.db_path, f"awsconfig:{path}")
    with locks.hold(lock, LOCK_WAIT_SECONDS, f"lock on {path}"):
        old = _read(path)
        if old is None and not create:
            return Change(path, "absent")
        new, action = change(old or "")
        if new == (old or ""):
            return Change(path, action or ("unchanged" if old is not None else "absent"))
        if action is None:
            section_before = old is not None and _find(old.splitlines(keepends=True), profile) is not None
            action = "updated" if section_before else "added"
        backup = _write(path, old, new)
        return Change(path, action, backup)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BrokerError(f"cannot read the AWS config {path}: {exc.strerror}") from None


def _write(path: str, old: str | None, new: str) -> str | None:
    """Back up `old`, then replace the file with `new` atomically. Returns the backup's path."""
    directory = os.path.dirname(path)
    backup = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        mode = stat.S_IMODE(os.stat(path).st_mode) if old is not None else 0o600
        if old is not None:
            backup = path + BACKUP_SUFFIX
            _write_file(backup, old, mode)
        _write_file(path, new, mode)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise BrokerError(f"cannot write the AWS config {path}: {exc.strerror}; it was not changed") from None
    return backup


def _write_file(path: str, text: str, mode: int) -> None:
    temp = f"{path}.broker-tmp-{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
