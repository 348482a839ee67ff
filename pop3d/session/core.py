"""POP3 semantics over the ports: one :class:`Session` per client connection.

The worker owns the socket, TLS, timers and the thread pool; it feeds bytes in and carries out
the effects that come back (:class:`Send`, :class:`StartTls`, :class:`Authenticate`), as
docs/INTERNALS.md describes.  The session owns the protocol :class:`Connection` and decides
what each command means: login (USER/PASS and SASL share one path to the authenticator), the
per-user registry slot, the maildrop snapshot and its DELE marks, UPDATE on QUIT, and the log
lines and metrics of the session.  Store, registry and authenticator errors become replies
through their ``.reply``; any other exception in a command is logged and answered with
``-ERR Internal server error``.  The state before login (USER, SASL, the attempt, refusals and
budgets) is an :class:`~pop3d.session.authorization.Authorization` the session consults; the
session keeps dispatch, logging in, TRANSACTION and QUIT/UPDATE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple, cast

from pop3d.errors import InUse, Pop3dError
from pop3d.ports import Chunks, MessageInfo, Principal, Span, StoreRequest, Tracer
from pop3d.protocol import Connection, LocalProtocolError, Pending, State
from pop3d.protocol import events as ev
from pop3d.protocol.states import LEGAL, capabilities
from pop3d.session.authorization import Authorization, Outcome, Refusal, loggable_user
from pop3d.session.mailbox import Mailbox
from pop3d.session.tracing import describe, span_name
from pop3d.session.values import (
    Authenticate,
    Await,
    Effect,
    LoginGrant,
    Peer,
    Send,
    Services,
    SessionCounters,
    SessionSettings,
    StartTls,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR = "Internal server error"
_NOOP = ev.Ok()
_PASSED_THROUGH = (Authenticate, Send, Await)  # a tuple: isinstance is faster than on a union

HandlerResult = Outcome | Send | Await  # a reply, an effect for the worker, or a refusal
_Handler = Callable[["Session", Any], HandlerResult]


# statsd names: ``commands.<verb>`` counts every command, with verbs from the command table
# and "unknown" for everything else, a bounded set (ARCHITECTURE §5).  ``command.<verb>``
# times only the commands that wait on the store (RETR and TOP until the first chunk, QUIT
# with its UPDATE): the others take microseconds, and a timer each would double statsd traffic.
_TIMED = frozenset({ev.Retr, ev.Top, ev.Quit})


class Session:
    """One client's POP3 session, driven by the worker through bytes and effects."""

    __slots__ = (
        "_authz", "_box", "_clock", "_conn", "_counters", "_end_reason", "_finished", "_id",
        "_maildrop", "_metrics", "_peer", "_principal", "_read", "_registry", "_settings",
        "_span", "_started", "_streaming", "_timer", "_tracer",
    )

    def __init__(
        self, settings: SessionSettings, services: Services, peer: Peer, session_id: str
    ) -> None:
        self._settings, self._peer, self._id = settings, peer, session_id
        self._maildrop, self._registry = services.maildrop, services.registry
        self._metrics, self._clock = services.metrics, services.clock
        self._tracer = services.tracer
        self._span: Span | None = None  # the span of the command being dispatched
        self._conn = Connection(settings.line_length)
        self._started = self._clock()
        self._authz = Authorization(settings, peer, self._metrics, self._clock)
        self._principal: Principal | None = None
        self._box: Mailbox | None = None
        self._streaming = False  # a RETR/TOP body is being opened or still being pulled
        self._timer: tuple[str, float] | None = None  # a store-bound command's, until answered
        self._read: list[str] = []  # emails retrieved whole, not yet marked read in the store
        self._end_reason: str | None = None
        self._finished = False
        self._counters = SessionCounters()

    # -- the worker's API (docs/INTERNALS.md) --------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self._box is not None

    @property
    def counters(self) -> SessionCounters:
        return replace(self._counters)

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed; the worker stops reading while this is large."""
        return self._conn.buffered

    def greeting(self) -> bytes:
        return self._conn.send(ev.Ok(f"{self._settings.server_name} POP3 server ready"))

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)

    def next_effect(self) -> Effect | None:
        """The next thing to do, or None: more input needed, or an earlier effect is still
        running (including a RETR/TOP body not yet pulled to its end: commands after it wait,
        so a pipelined DELE/QUIT cannot delete a message that is still being sent)."""
        if self._streaming or self._finished:
            return None
        event = self._conn.next_event()
        if isinstance(event, Pending):
            return None
        tracer = self._tracer
        result = self._dispatch(event) if tracer is None else self._traced(tracer, event)
        return self._effect(result)

    def login_done(self, result: LoginGrant | Exception) -> Send:
        """The outcome of the Authenticate effect: what ``Authenticate.run`` returned, or the
        error it raised."""
        attempt = self._authz.finish()
        if self._finished:
            return Send(b"", close=True)
        if isinstance(result, LoginGrant):
            try:
                reply = self._log_in(result, attempt.mechanism)
            except Exception as error:
                reply = ev.Err(self._reply_for(error, "login"))
            return self._send(self._conn.send(reply))
        log.info(
            "login failed user=%s method=%s ip=%s session=%s: %s",
            loggable_user(attempt.username), attempt.mechanism, attempt.client_ip, self._id,
            result.reply if isinstance(result, Pop3dError) else type(result).__name__,
        )  # fmt: skip
        reply = ev.Err(self._reply_for(result, "authentication"))
        return self._refusal(self._authz.refuse(reply))

    def tls_started(self) -> None:
        """The STLS handshake succeeded: drop what was buffered before it, forget USER."""
        self._conn.tls_started()
        self._authz.tls_started()

    def close(self, reason: str = "closed") -> Chunks | None:
        """End the session without UPDATE (EOF, timeout, shutdown); safe to call again.

        Returns the store work left to do (read marks of retrieved messages), for the worker
        to run after the connection is gone; losing it costs nothing but the marks."""
        self._finish(reason)
        return self._leftover()

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self, event: ev.Event) -> HandlerResult:
        handler, counter, timer = _ROUTES[type(event)]
        if timer is not None:
            self._timer = (timer, self._clock())
        try:
            result = handler(self, event)
        except Exception as error:
            result = ev.Err(self._reply_for(error, type(event).__name__))
        self._authz.end_command()
        if counter is None and isinstance(event, ev.BadCommand):
            counter = f"commands.{(event.verb or 'unknown').lower()}"
        if counter is not None:
            self._metrics.incr(counter)
        if not isinstance(result, Await):
            self._stop_timer()
        return result

    def _stop_timer(self) -> None:
        """A timed command has its answer: RETR and TOP their first bytes, QUIT its UPDATE."""
        if self._timer is not None:
            name, started = self._timer
            self._timer = None
            self._metrics.timing(name, (self._clock() - started) * 1000.0)

    def _traced(self, tracer: Tracer, event: ev.Event) -> HandlerResult:
        """``_dispatch`` in a span ``pop3.<verb>`` ([tracing] enabled)."""
        with tracer.span(span_name(event)) as span:
            self._span = span
            try:
                result = self._dispatch(event)
            finally:
                self._span = None
            describe(span, session_id=self._id, principal=self._principal, box=self._box,
                     event=event, result=result)
        return result

    def _reply_for(self, error: Exception, context: str) -> str:
        """The one place where errors become reply text; unexpected ones are logged."""
        if self._span is not None:
            self._span.record_exception(error)
        if isinstance(error, Pop3dError):
            return error.reply
        log.exception("session %s: %s in %s", self._id, type(error).__name__, context)
        return INTERNAL_ERROR

    def _effect(self, result: HandlerResult) -> Effect:
        if isinstance(result, _PASSED_THROUGH):  # an effect already (a login or store job)
            return result
        if isinstance(result, Refusal):
            return self._refusal(result)
        if isinstance(result, ev.Body):
            # The body's items are bytes and the store's requests, passed through by the writer.
            return self._send(cast(Chunks, self._conn.send_stream(result)))
        data = self._conn.send(result)
        state = self._conn.state
        if state is State.TRANSACTION and self._end_reason is None:
            return Send(data)  # the common case, with nothing to tidy up
        if state is State.TLS_HANDSHAKE:
            return StartTls(data)
        return self._send(data)

    def _send(self, data: bytes | Chunks, delay: float = 0.0) -> Send:
        state = self._conn.state
        if state is not State.SASL:
            self._authz.sasl_over()
        if self._end_reason is None and state is not State.CLOSED:
            return Send(data, delay)
        self._finish(self._end_reason or "closed")
        return Send(data, delay, close=True)

    def _refusal(self, refusal: Refusal) -> Send:
        if refusal.closing is not None:
            self._end_reason = refusal.closing
        return self._send(self._conn.send(refusal.reply), refusal.delay)

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._conn.close()
        if self._box is None or self._principal is None:
            log.debug("session %s: closed before login (%s)", self._id, reason)
            return
        self._release(self._box.user_id)
        c = self._counters
        log.info(
            "logout user=%s reason=%s retr=%d/%d top=%d/%d dele=%d/%d duration=%.3f session=%s",
            self._principal.address, reason, c.retr, c.retr_bytes, c.top, c.top_bytes,
            c.dele, c.dele_bytes, self._clock() - self._started, self._id,
        )  # fmt: skip

    def _release(self, user_id: str) -> None:
        try:
            self._registry.release(user_id, self._id)
        except Exception as error:
            log.warning("session %s: registry release failed: %s", self._id, error)

    # -- logging in ----------------------------------------------------------------------------

    def _log_in(self, grant: LoginGrant, mechanism: str) -> ev.Reply:
        principal = grant.principal
        limit = self._settings.max_connections_per_user
        if not self._registry.acquire(principal.user_id, self._id, limit):
            self._metrics.incr("in_use")
            return ev.Err(InUse.reply)
        self._principal, self._box = principal, Mailbox(principal.user_id, grant.messages)
        log.info(
            "login user=%s method=%s ip=%s tls=%s session=%s",
            principal.address, mechanism, self._peer.client_ip,
            "yes" if self._authz.tls else "no", self._id,
        )  # fmt: skip
        count, size = self._box.totals()
        return ev.Ok(f"Logged in, {count} messages ({size} octets)")

    # -- commands in both states ---------------------------------------------------------------

    def _capa(self, event: ev.Capa) -> ev.Reply:
        lines = capabilities(
            logged_in=self._box is not None,
            plaintext_ok=self._authz.plaintext_ok(),
            stls=self._peer.stls_available and not self._authz.tls,
            login_delay=self._settings.login_delay,
            implementation=self._settings.implementation,
        )
        return ev.MultiLine("Capability list follows", lines)

    def _bad_command(self, event: ev.BadCommand) -> ev.Reply | Refusal:
        if self._box is not None:
            return ev.Err(event.reason)  # after login the budget no longer applies
        return self._authz.strike(event.reason)

    def _line_too_long(self, event: ev.LineTooLong) -> ev.Reply:
        self._end_reason = "line too long"
        return ev.Err(event.reason)

    def _quit(self, event: ev.Quit) -> ev.Reply | Await:
        """QUIT: in TRANSACTION, UPDATE (the DELE marks, atomically, and the read marks)
        before the farewell."""
        self._end_reason = "quit"
        box = self._box
        if box is None:
            return ev.Ok(f"{self._settings.server_name} POP3 server signing off")
        doomed = box.marked()
        read, self._read = self._read, []
        if not (doomed or read):
            return self._farewell(doomed, None)
        update = self._maildrop.update(box.user_id, mark_read=read,
                                       delete=[message.email_id for message in doomed])
        return Await(update, partial(self._farewell_effect, doomed))

    def _farewell_effect(self, doomed: list[MessageInfo],
                         outcome: bytes | Exception | None) -> Effect:
        return self._effect(self._farewell(doomed, outcome))

    def _farewell(self, doomed: list[MessageInfo], outcome: bytes | Exception | None) -> ev.Reply:
        self._stop_timer()
        if isinstance(outcome, Exception):
            self._end_reason = "quit, update failed"
            return ev.Err(self._reply_for(outcome, "Quit"))
        if doomed:
            self._metrics.incr("messages.deleted", len(doomed))
        self._counters.dele = len(doomed)
        self._counters.dele_bytes = sum(message.size for message in doomed)
        farewell = f"{self._settings.server_name} POP3 server signing off"
        return ev.Ok(f"{farewell} ({len(doomed)} messages deleted)")

    # -- AUTHORIZATION: the login commands belong to the Authorization -------------------------

    def _user(self, event: ev.User) -> Outcome:
        return self._authz.user(event)

    def _pass(self, event: ev.Pass) -> Outcome:
        return self._authz.pass_(event)

    def _auth(self, event: ev.Auth) -> Outcome:
        return self._authz.auth(event)

    def _sasl_response(self, event: ev.SaslResponse) -> Outcome:
        return self._authz.sasl_response(event)

    def _sasl_cancel(self, event: ev.SaslCancel) -> Outcome:
        return self._authz.sasl_cancel(event)

    def _stls(self, event: ev.Stls) -> ev.Reply:
        if self._authz.tls:
            return ev.Err("Already using TLS")
        if not self._peer.stls_available:
            return ev.Err("STLS is not available on this connection")
        return ev.Ok("Begin TLS negotiation")

    def _utf8(self, event: ev.Utf8) -> ev.Reply:
        return ev.Ok("UTF-8 enabled")  # RFC 6856 §3: we never downgrade, so nothing changes

    # -- TRANSACTION ----------------------------------------------------------------------------

    def _mailbox(self) -> Mailbox:
        if self._box is None:
            raise LocalProtocolError("a TRANSACTION command before login")
        return self._box

    def _stat(self, event: ev.Stat) -> ev.Reply:
        count, size = self._mailbox().totals()
        return ev.Ok(f"{count} {size}")

    def _list(self, event: ev.List) -> ev.Reply:
        box = self._mailbox()
        if event.msg is not None:
            return ev.Ok(f"{event.msg} {box.get(event.msg).size}")
        count, size = box.totals()
        lines = tuple([f"{n} {message.size}" for n, message in box.live()])
        return ev.MultiLine(f"{count} messages ({size} octets)", lines)

    def _uidl(self, event: ev.Uidl) -> ev.Reply:
        box = self._mailbox()
        if event.msg is not None:
            return ev.Ok(f"{event.msg} {box.get(event.msg).uidl}")
        lines = tuple([f"{n} {message.uidl}" for n, message in box.live()])
        return ev.MultiLine("Unique-id listing follows", lines)

    def _retr(self, event: ev.Retr) -> Await:
        box = self._mailbox()
        message = box.get(event.msg)
        chunks = self._maildrop.open_message(box.user_id, message.email_id)
        return self._opening(chunks, f"{message.size} octets", partial(self._retrieved, message))

    def _top(self, event: ev.Top) -> Await:
        box = self._mailbox()
        message = box.get(event.msg)
        chunks = self._maildrop.open_top(box.user_id, message.email_id, event.lines)
        return self._opening(chunks, "Top of message follows", self._topped)

    def _dele(self, event: ev.Dele) -> ev.Reply:
        self._mailbox().mark(event.msg)
        return ev.Ok(f"Message {event.msg} deleted")

    def _noop(self, event: ev.Noop) -> ev.Reply:
        return _NOOP

    def _rset(self, event: ev.Rset) -> ev.Reply:
        box = self._mailbox()
        box.reset()
        count, size = box.totals()
        return ev.Ok(f"Maildrop has {count} messages ({size} octets)")

    # -- message bodies -------------------------------------------------------------------------

    def _opening(self, chunks: Chunks, text: str, done: Callable[[int], None]) -> Await:
        """Answer only once the store has the first bytes, so a message gone meanwhile is
        still a plain -ERR; commands after it wait until the body has been pulled to its end
        (a pipelined DELE/QUIT cannot delete a message that is still being sent)."""
        self._streaming = True
        return Await(chunks, partial(self._opened, chunks, text, done))

    def _opened(self, chunks: Chunks, text: str, done: Callable[[int], None],
                first: bytes | Exception | None) -> Effect:
        self._stop_timer()
        if isinstance(first, Exception):
            self._streaming = False
            return self._effect(ev.Err(self._reply_for(first, "opening a message")))
        return self._effect(ev.Body(text, self._pull(first, chunks, done)))

    def _pull(self, first: bytes | None, chunks: Chunks,
              done: Callable[[int], None]) -> Iterator[bytes | StoreRequest]:
        """The body, and ``done`` called only once it has been pulled to its end (an aborted
        RETR is not read)."""
        try:
            sent = 0
            if first is not None:
                sent = len(first)
                yield first
                for chunk in chunks:
                    if isinstance(chunk, bytes):
                        sent += len(chunk)
                    yield chunk
            done(sent)
        finally:
            self._streaming = False

    def _retrieved(self, message: MessageInfo, sent: int) -> None:
        self._counters.retr += 1
        self._counters.retr_bytes += sent
        self._metrics.incr("messages.retrieved")
        self._metrics.incr("bytes.sent", sent)
        self._read.append(message.email_id)  # marked in the store at QUIT or at the end

    def _leftover(self) -> Chunks | None:
        read, self._read = self._read, []
        if not read or self._box is None:
            return None
        return self._maildrop.update(self._box.user_id, delete=[], mark_read=read)

    def _topped(self, sent: int) -> None:
        self._counters.top += 1
        self._counters.top_bytes += sent
        self._metrics.incr("bytes.sent", sent)


class Route(NamedTuple):
    handler: _Handler
    counter: str | None  # commands.<verb>; SASL lines and errors have no fixed name
    timer: str | None  # command.<verb>, for the commands that wait on the store


def _route(event: type[ev.Event], handler: _Handler) -> Route:
    name = event.__name__.lower()
    counted = event in LEGAL[State.AUTHORIZATION] | LEGAL[State.TRANSACTION]
    return Route(handler, f"commands.{name}" if counted else None,
                 f"command.{name}" if event in _TIMED else None)


_HANDLERS: dict[type[ev.Event], _Handler] = {
    ev.Capa: Session._capa,
    ev.User: Session._user,
    ev.Pass: Session._pass,
    ev.Auth: Session._auth,
    ev.Stls: Session._stls,
    ev.Utf8: Session._utf8,
    ev.Quit: Session._quit,
    ev.Stat: Session._stat,
    ev.List: Session._list,
    ev.Retr: Session._retr,
    ev.Dele: Session._dele,
    ev.Noop: Session._noop,
    ev.Rset: Session._rset,
    ev.Uidl: Session._uidl,
    ev.Top: Session._top,
    ev.SaslResponse: Session._sasl_response,
    ev.SaslCancel: Session._sasl_cancel,
    ev.BadCommand: Session._bad_command,
    ev.LineTooLong: Session._line_too_long,
}
# event type -> how to handle, count and time it; read by Session._dispatch
_ROUTES: dict[type[ev.Event], Route] = {
    event: _route(event, handler) for event, handler in _HANDLERS.items()
}
