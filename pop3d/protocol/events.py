"""The nouns of the protocol: what a client says (events) and what the server answers (replies).

Events are produced by :class:`~pop3d.protocol.connection.Connection` from the client's bytes;
replies are handed back to it by the session and turned into wire bytes.  Commands without
arguments are immutable singletons, so the hot path allocates nothing for them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass


class LocalProtocolError(Exception):
    """Our own code misused the protocol API (a bug here, never the peer's fault)."""


class Pending(enum.Enum):
    """Why ``next_event()`` has no event to give."""

    NEED_DATA = "need more bytes from the client"
    PAUSED = "waiting for a reply, a TLS handshake, or the end of the connection"


NEED_DATA = Pending.NEED_DATA
PAUSED = Pending.PAUSED


# -- commands (RFC 1939, RFC 2449, RFC 2595, RFC 5034, RFC 6856) --------------------------------


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    password: str

    def __repr__(self) -> str:
        return "Pass(password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Auth:
    """``AUTH`` (mechanism None: list mechanisms) or ``AUTH mech [initial-response]``."""

    mechanism: str | None
    initial_response: bytes | None = None  # base64-decoded; b"" for "="

    def __repr__(self) -> str:
        hidden = "None" if self.initial_response is None else "<hidden>"
        return f"Auth(mechanism={self.mechanism!r}, initial_response={hidden})"


@dataclass(frozen=True, slots=True)
class Stls:
    pass


@dataclass(frozen=True, slots=True)
class Utf8:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    msg: int | None = None  # None: the whole scan listing


@dataclass(frozen=True, slots=True)
class Retr:
    msg: int


@dataclass(frozen=True, slots=True)
class Dele:
    msg: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Uidl:
    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Top:
    msg: int
    lines: int


# -- the SASL exchange after a "+ " continuation (RFC 5034 §4) --------------------------------


@dataclass(frozen=True, slots=True)
class SaslResponse:
    data: bytes  # base64-decoded

    def __repr__(self) -> str:
        return "SaslResponse(data=<hidden>)"


@dataclass(frozen=True, slots=True)
class SaslCancel:
    pass


# -- the peer misbehaved: each carries the -ERR text to answer with ----------------------------


@dataclass(frozen=True, slots=True)
class BadCommand:
    """An unknown keyword, a command in the wrong state, or malformed arguments."""

    reason: str
    verb: str | None = None  # the recognised keyword (upper case), None when unknown


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line over the configured limit; the reply to it closes the connection."""

    reason: str = "Line too long"


_SessionCommand = Capa | User | Pass | Auth | Stls | Utf8 | Quit
_MaildropCommand = Stat | List | Retr | Dele | Noop | Rset | Uidl | Top
Command = _SessionCommand | _MaildropCommand
Event = Command | SaslResponse | SaslCancel | BadCommand | LineTooLong


# -- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    text: str = ""


@dataclass(frozen=True, slots=True)
class Err:
    text: str


@dataclass(frozen=True, slots=True)
class Continue:
    """A SASL server challenge: ``+ <base64>`` (RFC 5034 §4)."""

    challenge: bytes = b""


@dataclass(frozen=True, slots=True)
class MultiLine:
    """``+OK text`` followed by short lines (CAPA, LIST, UIDL), dot-stuffed and terminated."""

    text: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Body:
    """``+OK text`` followed by a message streamed in chunks (RETR, TOP).

    The chunks are the exact message octets (CRLF line ends, not dot-stuffed).  A chunk that
    is not bytes is something the caller streaming the reply must deal with (the store's
    requests, for the worker): the writer passes it through where it stands."""

    text: str
    chunks: Iterator[bytes | object]


Reply = Ok | Err | Continue | MultiLine | Body
