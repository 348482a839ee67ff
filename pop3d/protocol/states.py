"""The POP3 state machine as data.

Theory of operation
-------------------
RFC 1939 has three states: AUTHORIZATION (after the greeting), TRANSACTION (after a successful
login) and UPDATE (after QUIT in TRANSACTION, while the deletions are applied).  We add the
moments in which a line from the client is *not* a command:

* ``SASL``: the server sent a ``+ `` continuation, so the next line is a base64 SASL response
  or ``*`` (RFC 5034 §4);
* ``TLS_HANDSHAKE``: the server accepted STLS; nothing the client sent before the handshake may
  be read (RFC 2595 §4, plaintext command injection), so no events are produced at all;
* ``CLOSED``: the server said its last word; further input is ignored.

Every client event must be answered by exactly one final reply before the next event is
produced, which is what keeps pipelined commands strictly in order.  A state changes only in
two ways, both listed in :data:`TRANSITIONS`: when an event is received (QUIT in TRANSACTION
enters UPDATE at once) and when the reply to it is sent, keyed by the reply's :class:`Outcome`
(``+OK`` to PASS enters TRANSACTION, ``-ERR`` leaves AUTHORIZATION unchanged).  Which commands
are legal where is :data:`LEGAL`; everything else is answered with ``-ERR`` naming the state.
"""

from __future__ import annotations

import enum

from pop3d.protocol.events import (
    Auth,
    BadCommand,
    Capa,
    Dele,
    Event,
    LineTooLong,
    List,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    SaslCancel,
    SaslResponse,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
    Utf8,
)


class State(enum.Enum):
    # Members are singletons compared by identity; hashing them the same way keeps the table
    # lookups on the per-command path in C (Enum.__hash__ is Python code in 3.11).
    __hash__ = object.__hash__

    AUTHORIZATION = "AUTHORIZATION"
    SASL = "SASL"
    TLS_HANDSHAKE = "TLS_HANDSHAKE"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class Outcome(enum.Enum):
    """What happened to an event: it arrived, or which kind of reply answered it."""

    __hash__ = object.__hash__  # see State

    RECEIVED = "received"
    OK = "+OK"  # a single-line +OK (only this kind completes a login)
    ERR = "-ERR"
    CONTINUE = "+ "
    DATA = "+OK multi-line"


LEGAL: dict[State, frozenset[type[Event]]] = {
    State.AUTHORIZATION: frozenset({Capa, User, Pass, Auth, Stls, Utf8, Quit}),
    State.TRANSACTION: frozenset({Capa, Stat, List, Retr, Dele, Noop, Rset, Uidl, Top, Quit}),
}

# The states in which lines are commands, and a hint for commands that are not legal there.
WRONG_STATE_HINT: dict[State, str] = {
    State.AUTHORIZATION: "log in first",
    State.TRANSACTION: "already logged in",
}

# States that produce no events: the client's bytes wait (or are dropped) until they end.
QUIET: frozenset[State] = frozenset({State.TLS_HANDSHAKE, State.UPDATE, State.CLOSED})

_A, _S, _T, _U = State.AUTHORIZATION, State.SASL, State.TRANSACTION, State.UPDATE

TRANSITIONS: dict[tuple[State, type[Event], Outcome], State] = {
    (_A, Pass, Outcome.OK): _T,
    (_A, Auth, Outcome.OK): _T,
    (_A, Auth, Outcome.CONTINUE): _S,
    (_S, SaslResponse, Outcome.CONTINUE): _S,
    (_S, SaslResponse, Outcome.OK): _T,
    (_S, SaslResponse, Outcome.ERR): _A,
    (_S, SaslCancel, Outcome.ERR): _A,
    (_S, BadCommand, Outcome.ERR): _A,
    (_A, Stls, Outcome.OK): State.TLS_HANDSHAKE,
    (_A, Quit, Outcome.OK): State.CLOSED,
    (_A, Quit, Outcome.ERR): State.CLOSED,
    (_T, Quit, Outcome.RECEIVED): _U,
    (_U, Quit, Outcome.OK): State.CLOSED,
    (_U, Quit, Outcome.ERR): State.CLOSED,
    (_A, LineTooLong, Outcome.ERR): State.CLOSED,
    (_S, LineTooLong, Outcome.ERR): State.CLOSED,
    (_T, LineTooLong, Outcome.ERR): State.CLOSED,
}

SASL_MECHANISMS = ("PLAIN", "LOGIN")  # RFC 4616 PLAIN; LOGIN for old clients (Outlook)


def capabilities(
    *, logged_in: bool, plaintext_ok: bool, stls: bool, login_delay: int, implementation: str
) -> tuple[str, ...]:
    """The CAPA lines (RFC 2449 §5) for a connection in this situation.

    Login mechanisms are advertised only where they may be used (RFC 2595 §2.1: no plaintext
    login offered without TLS), STLS only before TLS and login, IMPLEMENTATION only after login
    so anonymous probes learn less."""
    offer_login = plaintext_ok and not logged_in
    lines = ["TOP", "UIDL"]
    if offer_login:
        lines += ["USER", "SASL " + " ".join(SASL_MECHANISMS)]
    if stls and not logged_in:
        lines.append("STLS")
    lines += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
    lines.append(f"LOGIN-DELAY {login_delay}")
    lines.append("UTF8 USER" if offer_login else "UTF8")
    if logged_in:
        lines.append(f"IMPLEMENTATION {implementation}")
    return tuple(lines)
