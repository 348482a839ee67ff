"""What the master does once, as the invoking user (usually root), before any worker runs.

Make sure the service user will be able to open every file it needs later
(:mod:`~pop3d.master.access`), take the pidfile (creating its directory, owned by the service
user), bind every ``listen``/``tls_listen`` address, raise RLIMIT_NOFILE for the workers to
inherit, then drop privileges, having given the service user the pidfile and the log file root
opened (through their descriptors, never by a path it could swap for a symlink), so it can
remove the one and reopen the other.  Any failure undoes what was done and
becomes one :class:`StartError` line for the operator.
"""

from __future__ import annotations

import logging
import os

from pop3d import log as log_module
from pop3d.config import Config
from pop3d.handoff import Listener
from pop3d.master import access
from pop3d.master.listeners import BindError, bind_all, close_all, raise_nofile_limit
from pop3d.master.pidfile import Pidfile, PidfileError

log = logging.getLogger("pop3d.master")  # one name for the whole master in the log

PIDFILE_DIRECTORY_MODE = 0o755  # like /run/<daemon>: others may read the pid and status file


class StartError(Exception):
    """The master cannot start; the message is one line for the operator."""


def acquire(config: Config, pidfile: Pidfile) -> list[Listener]:
    """Check access, take the pidfile, bind, raise the open-files limit, drop privileges
    (StartError)."""
    server = config.server
    listeners: list[Listener] = []
    try:
        account = access.service_account(server.user, server.group)
        make_pidfile_directory(pidfile.path, account)
        check_access(config, account)
        pidfile.create(owner=None if account is None else (account.uid, account.gid))
        listeners, _ = bind_all(server)
        raise_nofile_limit(server.worker_connections)
        drop_privileges(server.user, server.group)
    except (PidfileError, BindError, StartError, access.AccessError, OSError) as exc:
        close_all(listeners)
        pidfile.remove()
        raise StartError(str(exc)) from None
    for listener in listeners:
        log.info("listening on %s", listener)
    warn_unless_reopenable(config.logging.file)
    return listeners


def warn_unless_reopenable(log_file: str) -> None:
    """After the drop: say so now if USR1 and reloads will not be able to reopen the log."""
    reason = access.unappendable(log_file) if log_file else ""
    if reason:
        log.warning("user %s cannot reopen the log file %s (%s): USR1 and reloads will keep "
                    "writing to the file opened at start; make it writable by that user",
                    access.current_account().name, log_file, reason)


def check_access(config: Config, account: access.Account | None) -> None:
    """AccessError unless ``account`` (default: this process) can open what it will need."""
    pidfile = config.server.pidfile
    if account is None:
        access.check(config, access.current_account(), pidfile)
        return
    with access.acting_as(account):
        access.check(config, account, pidfile)


def make_pidfile_directory(pidfile: str, owner: access.Account | None = None) -> list[str]:
    """The pidfile's directory, created if missing and then given to ``owner``; returns it when
    created.  A directory that exists already is never chowned."""
    directory = os.path.dirname(os.path.abspath(pidfile))
    if os.path.isdir(directory):
        return []
    os.makedirs(directory, mode=PIDFILE_DIRECTORY_MODE)
    if owner is not None:  # never through a symlink swapped in meanwhile
        os.chown(directory, owner.uid, owner.gid, follow_symlinks=False)
    return [directory]


def drop_privileges(user: str, group: str) -> None:
    """Become ``user``:``group`` (group default: the user's), after giving it the log file root
    opened (:func:`pop3d.log.hand_over`; the pidfile was given by :meth:`Pidfile.create`)."""
    try:
        account = access.service_account(user, group)
    except access.AccessError as exc:
        raise StartError(str(exc)) from None
    if account is None:
        return
    for path in log_module.hand_over(account.uid, account.gid):
        log.info("log file %s now belongs to %s, so it can be reopened", path, user)
    os.initgroups(account.name, account.gid)
    os.setgid(account.gid)
    os.setuid(account.uid)
    log.info("dropped privileges to %s:%s", account.name, account.group)
