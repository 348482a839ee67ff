"""The error tree shared by the store, the adapters, the session and the CLI: errors that
become a ``-ERR`` reply (or, in the admin CLI, an exit code).

Every error that can reach a POP3 client carries the text of the ``-ERR`` reply it maps to
(without the ``-ERR `` itself), so the one place that turns errors into replies needs no
``isinstance`` ladder.  Library exceptions (psycopg2, pymemcache, bcrypt) are translated into
these at the adapter edge; nothing above the adapters sees a third-party exception.
"""

from __future__ import annotations


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
