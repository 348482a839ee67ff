"""The sans-IO POP3 server connection: bytes in, events out, replies back to bytes.

Usage, by whoever owns the socket::

    conn = Connection()
    out = conn.send(Ok("mail.example.com POP3 server ready"))   # the greeting
    conn.receive_data(data)
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        out = conn.send(reply_to(event))        # exactly one final reply per event

The connection enforces the order (no new event before the last one is answered), the state
table of :mod:`pop3d.protocol.states`, and the TLS barrier: after ``+OK`` to STLS it yields no
events until :meth:`tls_started`, which discards every byte received before the handshake.
Client mistakes come out as :class:`~pop3d.protocol.events.BadCommand` events; misuse of this
API raises :class:`~pop3d.protocol.events.LocalProtocolError`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pop3d.protocol.events import (
    NEED_DATA,
    PAUSED,
    Body,
    Continue,
    Err,
    Event,
    LineTooLong,
    LocalProtocolError,
    MultiLine,
    Ok,
    Pending,
    Reply,
)
from pop3d.protocol.parser import (
    MAX_LINE_LENGTH,
    LineReader,
    parse_command,
    parse_sasl_response,
)
from pop3d.protocol.states import QUIET, TRANSITIONS, Outcome, State
from pop3d.protocol.writer import render, render_stream, status_line

_OUTCOMES: dict[type, Outcome] = {
    Ok: Outcome.OK,
    Err: Outcome.ERR,
    Continue: Outcome.CONTINUE,
    MultiLine: Outcome.DATA,
    Body: Outcome.DATA,
}


# Events whose mere arrival changes the state (QUIT in TRANSACTION enters UPDATE).
_ON_RECEIVE = frozenset(event for _, event, outcome in TRANSITIONS if outcome is Outcome.RECEIVED)


class Connection:
    """One client connection's protocol state, with no IO of its own."""

    __slots__ = ("_greeted", "_pending", "_reader", "_state")

    def __init__(self, max_line_length: int = MAX_LINE_LENGTH) -> None:
        self._reader = LineReader(max_line_length)
        self._state = State.AUTHORIZATION
        self._greeted = False
        self._pending: type[Event] | None = None  # the event awaiting its reply

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Octets received and not yet consumed as lines."""
        return len(self._reader)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client, in any slicing; after the connection closed they are dropped."""
        if self._state is not State.CLOSED:
            self._reader.feed(data)

    def next_event(self) -> Event | Pending:
        """The next client event, NEED_DATA, or PAUSED (a reply or the TLS handshake is due)."""
        if self._pending is not None or not self._greeted or self._state in QUIET:
            return PAUSED
        line = self._reader.read_line()
        if line is None:
            return NEED_DATA
        if isinstance(line, LineTooLong):
            event: Event = line
        elif self._state is State.SASL:
            event = parse_sasl_response(line)
        else:
            event = parse_command(line, self._state)
        self._pending = type(event)
        if self._pending in _ON_RECEIVE:
            state = TRANSITIONS.get((self._state, self._pending, Outcome.RECEIVED))
            if state is not None:
                self._enter(state)
        return event

    def send(self, reply: Reply) -> bytes:
        """The wire bytes of ``reply``, which answers the pending event (or is the greeting)."""
        if isinstance(reply, Ok):  # the common replies skip the general renderer
            data = status_line(b"+OK", reply.text)
        elif isinstance(reply, Err):
            data = status_line(b"-ERR", reply.text)
        else:
            data = render(reply)
        self._answer(reply)
        return data

    def send_stream(self, reply: Reply) -> Iterator[bytes | object]:
        """Like :meth:`send` but as chunks, so a Body is pulled only as fast as it is written."""
        self._answer(reply)
        return render_stream(reply)

    def tls_started(self) -> None:
        """The TLS handshake after STLS succeeded: forget the plaintext, read commands again."""
        if self._state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError(f"tls_started() in state {self._state.value}")
        self._reader.clear()
        self._state = State.AUTHORIZATION

    def close(self) -> None:
        """Stop producing events for good (the session ended, whatever the reason)."""
        self._state = State.CLOSED
        self._pending = None
        self._reader.clear()

    def _answer(self, reply: Reply) -> None:
        outcome = _OUTCOMES.get(type(reply))
        if outcome is None:
            raise LocalProtocolError(f"not a reply: {reply!r}")
        if not self._greeted:
            if outcome is not Outcome.OK:
                raise LocalProtocolError("the first reply must be the +OK greeting")
            self._greeted = True
            return
        answered = self._pending
        if answered is None:
            raise LocalProtocolError(f"no client event is waiting for {reply!r}")
        if outcome is Outcome.CONTINUE and (self._state, answered, outcome) not in TRANSITIONS:
            raise LocalProtocolError(f"a continuation cannot answer {answered.__name__}")
        self._pending = None
        state = TRANSITIONS.get((self._state, answered, outcome))
        if state is not None:
            self._enter(state)

    def _enter(self, state: State) -> None:
        self._state = state
        if state is State.CLOSED:
            self._reader.clear()
