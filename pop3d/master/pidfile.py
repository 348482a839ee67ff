"""The pidfile and, next to it, the status file: how the CLI finds and inspects a running master.

The pidfile appears complete or not at all: the pid is written to a private temporary file
(opened with O_EXCL) that is then hard-linked into place, and the link fails if a pidfile exists.
An existing pidfile whose process is a live pop3d master stops a second master; one whose process
is gone or is something else (a crash, a reboot without tmpfs, the pid reused) is replaced.  On
exit the master removes the pidfile only if it still names the master, so a master that lost a
race never deletes the winner's pidfile.

The directory usually belongs to the service user, who could swap any name in it for a symlink:
root never changes an owner by path here.  The pidfile is given to the service user through the
descriptor of the temporary file root just created (O_EXCL, which never follows a symlink),
before it is linked into place.  Likewise :func:`is_master` lets ``stop`` and ``reload`` check
that the pid the file names is a pop3d master (its process title, or its command line before
the title is set) before they signal it.

The status file (``<pidfile>.status``, JSON) is what ``pop3d status`` and ``pop3d reload`` read;
the master replaces it atomically with ``rename``, so a reader never sees half of it, and rewrites
it at once when workers or state change but at most once a second for session counts alone.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

STATUS_MIN_INTERVAL = 1.0  # seconds between rewrites when only session counts changed


class PidfileError(Exception):
    """The pidfile cannot be taken; the message is one line for the operator."""


def parse_pid(text: str) -> int | None:
    """The pid in a pidfile's text, or None if it holds no positive integer."""
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit():
        return None
    pid = int(stripped)
    return pid if pid > 0 else None


def read_pid(path: str) -> int | None:
    """The pid recorded in ``path``; None when the file is missing or holds garbage.  Other
    errors (permissions) raise OSError: "not running" would be a guess."""
    try:
        return parse_pid(Path(path).read_text(encoding="ascii", errors="replace"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def looks_like_master(cmdline: bytes) -> bool:
    """Whether a /proc/<pid>/cmdline is a pop3d master's: its process title ``pop3d: master
    [...]``, or, in the moment before it sets one, ``... pop3d start ...``."""
    if cmdline.startswith(b"pop3d: master"):
        return True
    argv = [arg for arg in cmdline.split(b"\0") if arg]
    if b"start" not in argv:
        return False
    before = argv[:argv.index(b"start")]
    return any(os.path.basename(arg) == b"pop3d" for arg in before)


def is_master(pid: int) -> bool:
    """Whether the live process ``pid`` is a pop3d master; True when that cannot be checked (no
    procfs, or one that hides other users' processes): then kill(0) is all there is to go by."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return looks_like_master(cmdline)


def status_path(pidfile: str) -> str:
    """Where the master publishes its status: next to the pidfile."""
    return pidfile + ".status"


class Pidfile:
    """The master's pidfile at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid: int | None = None

    def create(self, pid: int | None = None, owner: tuple[int, int] | None = None) -> None:
        """Record ``pid`` (default: this process) in a file owned by ``owner`` (uid, gid; None:
        whoever runs this); PidfileError if a live pop3d master owns it."""
        pid = os.getpid() if pid is None else pid
        temporary = self._write_temporary(pid, owner)
        try:
            self._install(temporary, pid)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        self.pid = pid

    def _write_temporary(self, pid: int, owner: tuple[int, int] | None) -> str:
        temporary = f"{self.path}.{pid}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise PidfileError(f"cannot write pidfile {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)  # this very file, whatever the path names now
            f.write(f"{pid}\n")
        return temporary

    def _install(self, temporary: str, pid: int) -> None:
        try:
            os.link(temporary, self.path)
            return
        except FileExistsError:
            pass
        except OSError as exc:
            raise PidfileError(f"cannot create pidfile {self.path}: {exc.strerror}") from None
        owner = read_pid(self.path)
        if owner is not None and owner != pid and process_alive(owner) and is_master(owner):
            raise PidfileError(f"already running as pid {owner} (pidfile {self.path})")
        os.replace(temporary, self.path)  # stale: the process it names is gone (or not ours)
        if read_pid(self.path) != pid:
            raise PidfileError(f"another pop3d took pidfile {self.path} at the same time")

    def owned(self) -> bool:
        """Whether the file still names the pid this object recorded."""
        return self.pid is not None and read_pid(self.path) == self.pid

    def remove(self) -> bool:
        """Delete the pidfile if it is still ours; True when deleted."""
        if not self.owned():
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True


def write_status(path: str, data: dict[str, Any]) -> None:
    """Replace the status file atomically (write a temporary file, then rename over it)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


def read_status(path: str) -> dict[str, Any] | None:
    """The published status, or None if there is none (or it is not a JSON object)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_status(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def status_due(previous: dict[str, Any] | None, current: dict[str, Any], last_write: float,
               now: float) -> bool:
    """Rewrite the status file now?  At once for a change in workers or state; at most once
    per STATUS_MIN_INTERVAL when only session counts moved."""
    if previous is None:
        return True
    if _without_sessions(previous) != _without_sessions(current):
        return True
    return previous != current and now - last_write >= STATUS_MIN_INTERVAL


def _without_sessions(status: dict[str, Any]) -> dict[str, Any]:
    workers = [{k: v for k, v in w.items() if k != "sessions"} for w in status["workers"]]
    return {**status, "sessions": None, "workers": workers}
