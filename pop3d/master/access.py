"""What the service user must be able to open, checked before anything depends on it.

Once the master has dropped privileges, it and every worker it forks open files as
``server.user``: the configuration file (HUP), the TLS certificate and key and
``auth.secret_file`` (each worker, as it boots), and new files in the pidfile's directory (the
status file; removing the pidfile at exit).  A file that user cannot open would only surface later,
as workers that cannot boot or a reload that fails, so :func:`check` tries them all first and
fails with one line naming the file, the user and what to do.  Start-up runs it under the service
user's identity (:func:`acting_as`) before binding, so a failure still leaves root able to undo
what it did; a reload runs it on the new configuration as the user the master already is.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass

from pop3d.config import Config

SUGGESTED_PIDFILE_DIRECTORY = "/run/pop3d"  # what systemd's RuntimeDirectory=pop3d creates


class AccessError(Exception):
    """The service user cannot open a file it will need; one line for the operator."""


@dataclass(frozen=True, slots=True)
class Account:
    """The user (and group) the master drops privileges to."""

    name: str
    group: str
    uid: int
    gid: int


def service_account(user: str, group: str) -> Account | None:
    """``user``:``group`` (group default: the user's), or None when there is nothing to switch
    to: no ``user``, or this process runs as that account already.  AccessError when the account
    does not exist or switching to it needs root."""
    if not user:
        return None
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise AccessError(f"cannot drop privileges: no such user {user!r} or group {group!r}") \
            from None
    if os.geteuid() == entry.pw_uid and os.getegid() == gid:
        return None
    if os.geteuid() != 0:
        raise AccessError(f"cannot switch to user {user!r}: the master is not running as root")
    return Account(user, group or _group_name(gid), entry.pw_uid, gid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def current_account() -> Account:
    """This process's effective user and group."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Account(name, _group_name(gid), uid, gid)


@contextlib.contextmanager
def acting_as(account: Account) -> Iterator[None]:
    """Open files as ``account`` (effective ids and its supplementary groups), then be root
    again.  Only root can do this; the real ids stay root throughout."""
    groups, egid = os.getgroups(), os.getegid()
    try:
        os.setgroups(os.getgrouplist(account.name, account.gid))
        os.setegid(account.gid)
        os.seteuid(account.uid)
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def needed_files(config: Config) -> list[tuple[str, str]]:
    """``(what, path)`` of every file read after the privilege drop."""
    files = [("the configuration file", config.path)]
    if config.tls.cert:
        files += [("tls.cert", config.tls.cert), ("tls.key", config.tls.key)]
    if config.auth.secret_file:
        files.append(("auth.secret_file", config.auth.secret_file))
    return files


def check(config: Config, account: Account, pidfile: str) -> None:
    """AccessError unless this process (acting as ``account``) can read every file in
    :func:`needed_files` and create files next to ``pidfile``."""
    for what, path in needed_files(config):
        reason = _unreadable(path)
        if reason:
            raise AccessError(f"user {account.name} cannot read {what} {path} ({reason}): "
                              f"{_read_advice(what, path, account)}")
    directory = os.path.dirname(os.path.abspath(pidfile))
    reason = _unwritable(directory, os.path.basename(pidfile))
    if reason:
        raise AccessError(f"pidfile directory {directory} is not writable by {account.name} "
                          f"({reason}): use a directory of its own such as "
                          f"{SUGGESTED_PIDFILE_DIRECTORY} (systemd RuntimeDirectory=pop3d)")


def _read_advice(what: str, path: str, account: Account) -> str:
    if what.startswith("tls."):
        return (f"make it readable by {account.name}, e.g. group ssl-cert (chgrp ssl-cert "
                f"{path}; chmod 0640 {path}; adduser {account.name} ssl-cert)")
    return (f"make it readable by {account.name}, e.g. chgrp {account.group} {path}; "
            f"chmod 0640 {path}")


def _unreadable(path: str) -> str:
    """Why ``path`` cannot be opened for reading; "" when it can."""
    try:
        with open(path, "rb"):
            return ""
    except OSError as exc:
        return _reason(exc)


def unappendable(path: str) -> str:
    """Why ``path`` cannot be opened for appending (as a log file is reopened); "" when it can."""
    try:
        with open(path, "ab"):
            return ""
    except OSError as exc:
        return _reason(exc)


def _unwritable(directory: str, name: str) -> str:
    """Why no new file can be created in ``directory``; "" when one can (it is tried)."""
    probe = os.path.join(directory, f".{name}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # left behind by a process with this pid: creating files works
    except OSError as exc:
        return _reason(exc)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return ""


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
