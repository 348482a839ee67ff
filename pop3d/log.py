"""Logging: stderr (journald) or a file that USR1 reopens; secrets masked before any output.

Every process (master and workers) calls :func:`setup` once; :func:`reopen` reopens the log file
after logrotate has moved it.  A filter on the handler masks anything that looks like an API key or
a POP3/SASL credential, so a careless ``log.info("%s", line)`` cannot leak one.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
ROOT_LOGGER = "pop3d"

# pop3d keys look like pk_<prefix>_<secret>: keep the public prefix, hide the secret.
_KEY = re.compile(r"\b(pk_[a-z0-9]+_)[A-Za-z0-9_\-]+")
# A credential-bearing command echoed into a message: PASS <anything>, AUTH <mech> <response>.
_COMMAND = re.compile(r"(?i)\b(PASS|AUTH\s+\S+)\s+\S.*")


def mask(text: str) -> str:
    """``text`` with key secrets and PASS/AUTH arguments replaced by ``***``."""
    return _COMMAND.sub(r"\1 ***", _KEY.sub(r"\1***", text))


class MaskingFilter(logging.Filter):
    """Masks the rendered message (arguments included) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
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
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            old.close()
        finally:
            self.release()


def setup(level: str = "info", file: str = "") -> None:
    """Route the ``pop3d`` loggers to stderr or ``file`` at ``level``; safe to call again."""
    logger = logging.getLogger(ROOT_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler = (
        ReopenableFileHandler(file) if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(MaskingFilter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def reopen() -> None:
    """Reopen file handlers (USR1 after logrotate); stderr needs nothing."""
    for handler in logging.getLogger(ROOT_LOGGER).handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()

