"""The interfaces the session and the authenticator depend on, and the values that cross them.

The session (pure POP3 semantics) and ``auth.py`` talk only to these protocols; PostgreSQL,
memcached and statsd implement them in ``store/`` and ``adapters/``, and tests implement them in
memory.  Every method may raise the errors of :mod:`pop3d.errors` and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol


class StoreRequest:
    """Work for the store that a stream cannot do without waiting (a database query).

    Streams of the :class:`Maildrop` yield these between their chunks of bytes.  Whoever pulls
    the stream (the worker's channel) completes the request, by its own means and without
    blocking its loop, before it pulls the next item; the stream then reads the request's
    outcome itself.  Everything between the store and the channel passes requests through
    untouched.  Fakes yield none.
    """

    __slots__ = ()


Chunks = Iterator[bytes | StoreRequest]  # a message body, or store work with no bytes at all


@dataclass(frozen=True, slots=True, weakref_slot=True)
class MessageInfo:
    """One message of a maildrop snapshot, as LIST, UIDL and STAT see it."""

    email_id: str  # emails.id, a UUID in canonical text form
    uidl: str  # 1-70 chars in 0x21-0x7E, stable forever
    size: int  # exact octets RETR sends, before dot-stuffing and without the final ".CRLF"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented at login.  The password never appears in a repr or a log."""

    username: str
    password: str = field(repr=False)
    client_ip: str
    mechanism: str  # "USER", "PLAIN" or "LOGIN"


@dataclass(frozen=True, slots=True)
class Principal:
    """A successfully authenticated user."""

    user_id: str
    key_id: str
    address: str  # the user's primary address, for logs


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user found by primary address or verified alias."""

    user_id: str
    address: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An active (not revoked) API key of a user; the secret is only ever a bcrypt hash."""

    key_id: str
    bcrypt_hash: bytes = field(repr=False)
    scopes: frozenset[str]


class Authenticator(Protocol):
    """Decides who a client is.  Runs off the worker's loop (it may take 50-250 ms)."""

    def authenticate(self, credentials: Credentials) -> Principal:
        """Return the principal, or raise AuthFailed ([AUTH]) or BackendUnavailable ([SYS/TEMP])."""
        ...


class CredentialStore(Protocol):
    """The database side of authentication."""

    def find_user(self, address: str) -> UserRecord | None:
        """The user whose primary address or verified alias is ``address`` (case-insensitive)."""
        ...

    def candidate_keys(self, user_id: str, presented: str) -> list[KeyRecord]:
        """Active keys that could match ``presented``: the one whose public prefix it starts
        with, plus any key stored without a prefix."""
        ...

    def touch_keys(self, key_ids: Sequence[str]) -> None:
        """Set ``last_used_at = now()`` on these keys (called off the request path, coalesced)."""
        ...


class Maildrop(Protocol):
    """A user's mail, as POP3 sees it.  Every call is scoped to ``user_id``: a user never reaches
    an email without a recipient row for them.

    ``snapshot`` blocks (call it off the worker's loop); the others return :data:`Chunks`,
    streams that do their work as they are pulled, yielding a :class:`StoreRequest` whenever
    they must wait for the database, and raising the store's errors where they are pulled.
    """

    def snapshot(self, user_id: str, limit: int) -> list[MessageInfo]:
        """The user's messages, oldest first (received_at, then id), at most ``limit``."""
        ...

    def open_message(self, user_id: str, email_id: str) -> Chunks:
        """The exact RETR bytes (CRLF line ends, ending in CRLF, not dot-stuffed) in chunks.

        Access is checked before the first chunk (raising MessageGone); the rest is fetched
        as the stream is pulled, so a large message is never held whole."""
        ...

    def open_top(self, user_id: str, email_id: str, lines: int) -> Chunks:
        """The headers, the blank line and the first ``lines`` body lines, like open_message."""
        ...

    def update(self, user_id: str, *, delete: Sequence[str], mark_read: Sequence[str]) -> Chunks:
        """Remove the user's recipient rows of the ``delete`` emails in one transaction, and
        the emails (with attachments) that no user references any more: all or nothing.  Then
        mark the user's rows of the ``mark_read`` emails read (RETR does, TOP does not), which
        may be lost without harm.  A stream of requests only: it yields no bytes."""
        ...


class Registry(Protocol):
    """Counts each user's live sessions across workers and hosts."""

    def acquire(self, user_id: str, session_id: str, limit: int) -> bool:
        """Claim a slot; False when the user already has ``limit`` sessions."""
        ...

    def release(self, user_id: str, session_id: str) -> None:
        """Give the slot back; must be safe to call twice."""
        ...


@dataclass(frozen=True, slots=True)
class CachedLogin:
    """What the auth cache holds for one login before it is verified."""

    entry: bytes | None  # the sealed result stored under the credentials' digest, if any
    generation: str  # the login name's credential generation now: an entry is good only for it


class AuthCache(Protocol):
    """Short-lived memory of authentication results, keyed by an HMAC of the credentials.

    Each login name has a credential generation; revoking a key, disabling a user or changing
    scopes bumps the generation of every name of the user, and an entry stored for another
    generation is no longer good.  The entries are opaque: :mod:`pop3d.auth` seals them."""

    def get(self, name: str, digest: str) -> CachedLogin:
        """The entry stored under ``digest`` and the generation of ``name``, in one round trip
        (a name without a generation is given a new one)."""
        ...

    def put(self, digest: str, entry: bytes, ttl: int) -> None:
        """Store ``entry`` under ``digest`` for ``ttl`` seconds."""
        ...


class Verdict(enum.Enum):
    """Whether a login attempt may be verified, decided before the verification."""

    GO = "go"
    LOCKED_OUT = "locked out"  # this address and login name failed too often in the window
    THROTTLED = "throttled"  # this address spent its budget of fresh verifications


class RateLimiter(Protocol):
    """Login attempts per (client address, login name), and fresh verifications per client
    address, counted in windows shared by every worker (IPv6 addresses by prefix)."""

    def begin(self, client_ip: str, name: str, *, verify: bool) -> Verdict:
        """Count an attempt before it is verified (an atomic increment, so parallel attempts
        cannot slip through together) and, when ``verify``, spend one fresh verification."""
        ...

    def end(self, client_ip: str, name: str, *, succeeded: bool) -> None:
        """After a verification that was not a failure: a success forgets the pair's attempts;
        otherwise (the store could not answer) the attempt is taken back."""
        ...


class Metrics(Protocol):
    """statsd-shaped counters, gauges and timers; names are relative to the configured prefix."""

    def incr(self, name: str, count: int = 1) -> None:
        ...

    def gauge(self, name: str, value: float) -> None:
        ...

    def timing(self, name: str, milliseconds: float) -> None:
        ...


class Span(Protocol):
    """One traced operation: what a command or a login step records about itself."""

    def set_attribute(self, key: str, value: str | int) -> None:
        ...

    def record_exception(self, error: BaseException) -> None:
        """Attach the error to the span and mark the span failed."""
        ...


class Tracer(Protocol):
    """Spans around commands and login steps (OpenTelemetry in ``adapters/otel.py``).  An
    exception leaving the ``with`` block is recorded on the span."""

    def span(self, name: str) -> AbstractContextManager[Span]:
        ...


class NullTracer:
    """Traces nothing: the tracer of code that takes one when tracing is off."""

    def span(self, name: str) -> AbstractContextManager[Span]:
        return _NULL_SPAN

    def set_attribute(self, key: str, value: str | int) -> None:
        pass

    def record_exception(self, error: BaseException) -> None:
        pass

    def __enter__(self) -> Span:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


_NULL_SPAN = NullTracer()  # its own span: one shared object, nothing allocated per span
NULL_TRACER = NullTracer()
