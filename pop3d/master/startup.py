"""What the master does once, as the invoking user (usually root), before any worker runs.

Take the pidfile (creating its directory), bind every ``listen``/``tls_listen`` address, raise
RLIMIT_NOFILE for the workers to inherit, then drop privileges, chowning first what the master
will have to remove as the service user.  Any failure undoes what was done and becomes one
:class:`StartError` line for the operator.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Sequence

from pop3d.config import ServerConfig
from pop3d.pidfile import Pidfile, PidfileError
from pop3d.sockets import BindError, Listener, bind_all, close_all, raise_nofile_limit

log = logging.getLogger("pop3d.master")  # one name for the whole master in the log

PIDFILE_DIRECTORY_MODE = 0o755  # like /run/<daemon>: others may read the pid and status file


class StartError(Exception):
    """The master cannot start; the message is one line for the operator."""


def acquire(server: ServerConfig, pidfile: Pidfile) -> list[Listener]:
    """Take the pidfile, bind, raise the open-files limit, drop privileges (StartError)."""
    listeners: list[Listener] = []
    try:
        created = make_pidfile_directory(pidfile.path)
        pidfile.create()
        listeners, _ = bind_all(server)
        raise_nofile_limit(server.worker_connections)
        drop_privileges(server.user, server.group, chown=[*created, server.pidfile])
    except (PidfileError, BindError, StartError, OSError) as exc:
        close_all(listeners)
        pidfile.remove()
        raise StartError(str(exc)) from None
    for listener in listeners:
        log.info("listening on %s", listener)
    return listeners


def make_pidfile_directory(pidfile: str) -> list[str]:
    """The pidfile's directory, created if missing; returns it when created (to chown)."""
    directory = os.path.dirname(os.path.abspath(pidfile))
    if os.path.isdir(directory):
        return []
    os.makedirs(directory, mode=PIDFILE_DIRECTORY_MODE)
    return [directory]


def drop_privileges(user: str, group: str, chown: Sequence[str] = ()) -> None:
    """Become ``user``:``group`` (group default: the user's), after chowning ``chown``."""
    if not user:
        return
    try:
        account = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    except KeyError:
        raise StartError(f"cannot drop privileges: no such user {user!r} or group {group!r}") \
            from None
    if os.geteuid() == account.pw_uid and os.getegid() == gid:
        return
    if os.geteuid() != 0:
        raise StartError(f"cannot switch to user {user!r}: the master is not running as root")
    for path in chown:
        os.chown(path, account.pw_uid, gid)
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(account.pw_uid)
    log.info("dropped privileges to %s:%s", user, group or account.pw_gid)
