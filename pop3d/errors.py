"""The error tree shared by the store, the adapters, the session and the CLI.

Every error that can reach a POP3 client carries the text of the ``-ERR`` reply it maps to
(without the ``-ERR `` itself), so the one place that turns errors into replies needs no
``isinstance`` ladder.  Library exceptions (psycopg2, pymemcache, bcrypt) are translated into
these at the adapter edge; nothing above the adapters sees a third-party exception.
"""

from __future__ import annotations

from dataclasses import dataclass

# Process exit codes shared by the master and its workers (gunicorn's convention: a worker that
# cannot boot exits with a code the master recognises and stops instead of fork-looping).
EXIT_OK = 0
EXIT_WORKER_BOOT_ERROR = 3

# sysexits(3) codes used by `pop3d deliver`, so an MTA can call it as a delivery command.
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78


class Pop3dError(Exception):
    """Base of every error pop3d raises on purpose.

    ``reply`` is the text after ``-ERR `` that a client would see; it never names Python
    classes or carries a traceback.
    """

    reply = "Internal server error"

    def __init__(self, message: str = "", *, reply: str | None = None) -> None:
        super().__init__(message or reply or self.reply)
        if reply is not None:
            self.reply = reply


class BackendUnavailable(Pop3dError):
    """PostgreSQL or memcached could not be reached or timed out: the user should retry later."""

    reply = "[SYS/TEMP] Mail store temporarily unavailable, try again later"


class StoreUnavailable(BackendUnavailable):
    """The mail store (PostgreSQL) is down, overloaded or timed out."""


class StorePermanentError(Pop3dError):
    """The store is reachable but cannot serve the request (corrupt row, schema mismatch)."""

    reply = "[SYS/PERM] Mail store error"


class AuthFailed(Pop3dError):
    """Bad credentials, disabled user, revoked key or missing scope: all look the same."""

    reply = "[AUTH] Authentication failed"


class InUse(Pop3dError):
    """The per-user connection limit is reached, or the maildrop is locked."""

    reply = "[IN-USE] Too many sessions for this user, try again later"


class MessageGone(Pop3dError):
    """A message in the session's snapshot no longer exists (another session deleted it)."""

    reply = "Message no longer available"


class NoSuchUser(Pop3dError):
    """An address matches no user (admin CLI and delivery; login turns this into AuthFailed)."""

    reply = "[AUTH] Authentication failed"


class BadMessage(Pop3dError):
    """Input to `deliver` that is not a storable RFC 5322 message."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration file: where and what."""

    file: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.problem}"


class ConfigError(Pop3dError):
    """A configuration file that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
