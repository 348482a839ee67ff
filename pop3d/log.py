"""Logging: stderr (journald) or a file that USR1 reopens; secrets masked before any output.

Every process (master and workers) calls :func:`setup` once; :func:`reopen` reopens the log file
after logrotate has moved it.  A filter on the handler masks anything that looks like an API key or
a POP3/SASL credential, so a careless ``log.info("%s", line)`` cannot leak one, and escapes every
control character of the message (:func:`escape`): a client string with CR, LF or a terminal
escape in it can neither forge a log line nor reach an operator's terminal.

Neither a reload nor a reopen may lose the log: :func:`setup` opens the new file before it lets go
of the old handler, and :func:`reopen` keeps writing to the file it has when the path cannot be
opened (the service user cannot create it, say), logging why instead of raising.  The master runs
as root until it drops privileges; :func:`hand_over` then gives a log file it opened as root to the
service user, so that user can reopen it later.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from typing import TextIO

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
ROOT_LOGGER = "pop3d"

log = logging.getLogger("pop3d.log")

# pop3d keys look like pk_<prefix>_<secret>: keep the public prefix, hide the secret.
_KEY = re.compile(r"\b(pk_[a-z0-9]+_)[A-Za-z0-9_\-]+")
# A credential-bearing command echoed into a message: PASS <anything>, AUTH <mech> <response>.
_COMMAND = re.compile(r"(?i)\b(PASS|AUTH\s+\S+)\s+\S.*")
# C0 controls (CR, LF, ESC...), DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def mask(text: str) -> str:
    """``text`` with key secrets and PASS/AUTH arguments replaced by ``***``."""
    return _COMMAND.sub(r"\1 ***", _KEY.sub(r"\1***", text))


def escape(text: str) -> str:
    """``text`` with each control character written as its Python escape (``\\r``, ``\\n``,
    ``\\x1b``, ``\\u2028``): one log record stays one line of printable text."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"),
                        text)


class MaskingFilter(logging.Filter):
    """Masks and escapes the rendered message (arguments included) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = escape(mask(message))
        if masked != message:
            record.msg, record.args = masked, None
        return True


class ReopenableFileHandler(logging.StreamHandler[TextIO]):
    """Appends to a file; :meth:`reopen` starts a new file descriptor on the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        """Switch to a new descriptor on :attr:`path`; OSError leaves the old one in use."""
        new = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, new
        finally:
            self.release()
        old.close()

    def close(self) -> None:
        """Close the file too (a plain StreamHandler leaves its stream open)."""
        self.acquire()
        try:
            if not self.stream.closed:
                self.flush()
                self.stream.close()
        finally:
            self.release()
        super().close()


def _handler(file: str) -> logging.Handler:
    handler: logging.Handler = ReopenableFileHandler(file) if file \
        else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(MaskingFilter())
    return handler


def setup(level: str = "info", file: str = "") -> None:
    """Route the ``pop3d`` loggers to stderr or ``file`` at ``level``; safe to call again.

    The new handler is opened before the old one is removed: when ``file`` cannot be opened the
    OSError leaves logging exactly as it was."""
    logger = logging.getLogger(ROOT_LOGGER)
    handler = _handler(file)
    old = list(logger.handlers)
    logger.addHandler(handler)
    for previous in old:
        logger.removeHandler(previous)
        previous.close()
    set_level(level)
    logger.propagate = False


def set_level(level: str) -> None:
    """Change the level of the ``pop3d`` loggers (a reload keeping the same log file)."""
    logging.getLogger(ROOT_LOGGER).setLevel(level.upper())


def _file_handlers() -> list[ReopenableFileHandler]:
    return [handler for handler in logging.getLogger(ROOT_LOGGER).handlers
            if isinstance(handler, ReopenableFileHandler)]


def reopen() -> bool:
    """Reopen the log file (USR1 after logrotate); stderr needs nothing.  Never raises: a file
    that cannot be opened is logged as an error to the old file, which stays in use; False
    then."""
    reopened = True
    for handler in _file_handlers():
        try:
            handler.reopen()
        except OSError as exc:
            reopened = False
            log.error("cannot reopen the log file %s: %s; still logging to the file opened "
                      "before", handler.path, exc.strerror or exc)
    return reopened


def hand_over(uid: int, gid: int) -> list[str]:
    """Give the open log files that root owns to ``uid``:``gid`` (mode kept), so the service
    user can reopen them after the privilege drop; the paths changed.

    Only a regular file with one link that the path still names is changed, through the
    descriptor logging writes to: never a symlink's target, another link to some file, or a file
    someone else owns."""
    changed = []
    for handler in _file_handlers():
        if os.geteuid() == 0 and _owned_by_root(handler):
            os.fchown(handler.stream.fileno(), uid, gid)
            changed.append(handler.path)
    return changed


def _owned_by_root(handler: ReopenableFileHandler) -> bool:
    try:
        named = os.lstat(handler.path)
    except OSError:
        return False
    opened = os.fstat(handler.stream.fileno())
    return (stat.S_ISREG(named.st_mode) and named.st_nlink == 1 and named.st_uid == 0
            and (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino))

