"""One client connection inside a worker: socket IO, TLS, buffers and the session's effects.

Theory of operation.  A channel goes through up to three phases: PROXY (read a PROXY-protocol
header, peeking so no byte after it is consumed), HANDSHAKE (a non-blocking TLS handshake, for
implicit TLS at once and for STLS after the ``+OK`` is flushed) and SESSION (bytes in, session
effects out).  The worker's selector tells the channel when its socket is readable or writable;
the channel answers with the events it wants next (:attr:`interest`), and tells the worker when
it has outstayed its welcome (:meth:`expired`).

A channel is built with what it needs (:class:`ChannelSetup`: a session factory, the TLS
context, the metrics port, a clock and the limits); the worker, as its :class:`ChannelHost`,
only runs logins on its thread pool, wakes held replies up on time and forgets closed channels.

Back-pressure: the channel asks the session for the next effect only while nothing is pending
(no authentication running, no held reply, no store request out, no STLS in flight, no body
still streaming) and its output is under :data:`HIGH_WATER`; it reads the socket only under the
same condition, and only while the session holds at most ``limits.max_unparsed`` octets of
input it has not parsed yet, so a client that pipelines without reading (or reads a little)
stalls itself and nobody else, and a channel holds at most that plus one read of input.
Message bodies are pulled from the store's stream only when the output has room.

Per-address limits (:class:`Admission`, :mod:`pop3d.worker.admission`) are asked once the
client address is known (after the PROXY header), before the greeting or the implicit-TLS
handshake, and before each TLS handshake; a channel gives back what it took when it closes.
Before login, a channel also has an absolute deadline (``limits.login_deadline``), counted from
the connection whatever the client sends.

The store's streams yield requests (database jobs) between their bytes.  The channel hands each
to the host, which completes it without blocking the loop, and pulls the stream on only when
:meth:`Channel.on_store_done` says it is done: for an :class:`Await` (RETR and TOP waiting for
their first bytes, QUIT for its UPDATE) as for a body being sent.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import selectors
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pop3d.ports import Chunks, Metrics, StoreRequest
from pop3d.protocol.parser import MAX_LINE_LENGTH
from pop3d.protocol.proxy import ProxyHeaderParser
from pop3d.session import Authenticate, Await, Effect, LoginGrant, Send, Session, StartTls
from pop3d.worker.admission import UNLIMITED, Admission

log = logging.getLogger(__name__)

READ_SIZE = 65536  # one recv; the input a channel can hold unparsed is bounded by this
HIGH_WATER = 512 * 1024  # stop producing output (and reading) above this many queued octets
WRITE_SIZE = 256 * 1024  # at most this much per send(); TLS retries the same prefix
COALESCE_SIZE = 64 * 1024  # small chunks are joined into one send up to this many octets
SMALL_CHUNK = 2048  # shorter output is joined to the short chunk queued before it at once
PROXY_PEEK = 536  # bytes peeked per read: a v1 header (<= 107) or a usual v2 one in one go
TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections from your address, try later\r\n"
TOO_MANY_HANDSHAKES = b"-ERR [SYS/TEMP] Too many TLS handshakes from your address, try later\r\n"


class Phase(enum.Enum):
    PROXY = "proxy"
    HANDSHAKE = "handshake"
    SESSION = "session"
    CLOSED = "closed"


class ChannelHost(Protocol):
    """What only the worker can do for a channel."""

    def submit_login(self, channel: Channel, login: Authenticate) -> None:
        """Run the login job off the loop; call :meth:`Channel.on_login_done` when it is over."""

    def hold_until(self, channel: Channel, when: float) -> None:
        """Call :meth:`Channel.on_hold_expired` once the clock reaches ``when``."""

    def submit_store(self, channel: Channel, request: StoreRequest) -> None:
        """Complete the request without blocking; then call :meth:`Channel.on_store_done`."""

    def run_detached(self, steps: Chunks) -> None:
        """Complete the requests of ``steps`` one by one, for no channel (a closed session's
        read marks)."""

    def closed(self, channel: Channel, reason: str) -> None:
        """The channel is closing: forget it (its socket is still open, for the selector)."""


class SessionFactory(Protocol):
    """A new session for a client; ``known_source`` is False when a PROXY header named no
    client, so ``client_ip`` is the proxy's own address and earns no trust."""

    def __call__(self, client_ip: str, *, tls: bool, known_source: bool) -> Session: ...


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """Seconds a channel may spend in each phase before the worker closes it, and the input it
    may hold unparsed."""

    proxy_timeout: float = 5.0  # for the PROXY header
    handshake_timeout: float = 30.0  # for a TLS handshake
    login_timeout: float = 60.0  # without a command, before login
    idle_timeout: float = 600.0  # without a command, after login (RFC 1939: at least 600)
    login_deadline: float = 180.0  # from connecting to logged in, whatever the client sends
    max_unparsed: int = 2 * (MAX_LINE_LENGTH + 2)  # two longest lines: reading stops above it


@dataclass(frozen=True, slots=True)
class ChannelSetup:
    """What every channel of a worker is built with."""

    host: ChannelHost
    open_session: SessionFactory
    tls_context: ssl.SSLContext | None  # None: no certificate, so no implicit TLS and no STLS
    metrics: Metrics
    clock: Callable[[], float]  # monotonic seconds
    limits: ChannelLimits
    proxy: bool = False  # every connection starts with a PROXY header
    admission: Admission = UNLIMITED


class Channel:
    """A client connection; every method is called from the worker's loop thread only."""

    # Slots: an idle worker holds thousands of channels, sessions and their parts.
    __slots__ = (
        "_await", "_awaiting_auth", "_clock", "_close_after_flush", "_connected",
        "_handshake_wants", "_held",
        "_known_source", "_last_activity", "_out", "_out_bytes", "_parked", "_phase_started",
        "_proxy", "_proxy_seen", "_setup", "_stream", "_tls_after_flush", "client_ip", "host",
        "implicit_tls", "phase", "session", "sock", "watched",
    )

    def __init__(self, setup: ChannelSetup, sock: socket.socket, client_ip: str, *,
                 implicit_tls: bool) -> None:
        self.host = setup.host
        self._setup = setup
        self._clock = setup.clock
        self.sock: socket.socket = sock
        self.client_ip = client_ip
        self.implicit_tls = implicit_tls
        self.session: Session | None = None
        self.watched = 0  # the selector events the host watches for it now: its bookkeeping
        self._phase_started = self._clock()
        self._connected = self._last_activity = self._phase_started
        # Output not yet sent: a few chunks at most (HIGH_WATER), so a list (56 octets empty)
        # rather than a deque (about 600), as every idle session holds one.
        self._out: list[memoryview] = []
        self._out_bytes = 0
        self._stream: Chunks | None = None
        self._held: Send | None = None
        self._awaiting_auth = False
        self._await: Await | None = None  # being pulled to its first bytes
        self._parked = False  # a store request is out: the stream (or await) waits for it
        self._tls_after_flush = False
        self._close_after_flush: str | None = None  # why the channel closes once flushed
        self._handshake_wants = selectors.EVENT_READ
        self._proxy = ProxyHeaderParser() if setup.proxy else None
        self._proxy_seen = b""
        # False when a PROXY header named no client (v1 UNKNOWN, v2 LOCAL): then client_ip is
        # the proxy's own address, which must not earn the trust of trusted_networks.
        self._known_source = True
        self.phase = Phase.PROXY if setup.proxy else Phase.HANDSHAKE

    def start(self) -> None:
        """Greet, or begin the implicit-TLS handshake; with PROXY, wait for its header first.

        Not part of the constructor: this IO may fail and close the channel at once, and the
        host must already know the channel to forget it again."""
        if self._proxy is None:
            self._after_proxy()

    # --- what the worker asks --------------------------------------------------------------

    @property
    def interest(self) -> int:
        """The selector events this channel waits for now (0: none, e.g. while authenticating)."""
        if self.phase is Phase.HANDSHAKE:
            return self._handshake_wants
        if self.phase is Phase.PROXY:
            return selectors.EVENT_READ
        events = selectors.EVENT_WRITE if self._out else 0
        if self._may_read():
            events |= selectors.EVENT_READ
        return events

    @property
    def authenticated(self) -> bool:
        return self.session is not None and self.session.authenticated

    @property
    def waiting(self) -> bool:
        """The server, not the client, owes the next step (a login running, a reply held):
        idle timeouts do not apply."""
        return self._awaiting_auth or self._held is not None or self._parked

    def expired(self, now: float) -> str | None:
        """Why the channel has been in its phase too long and must close, or None."""
        limits = self._setup.limits
        if now - self._connected > limits.login_deadline and not self.authenticated \
                and not self._awaiting_auth:
            return "login deadline"
        waited = now - self._phase_started
        if self.phase is Phase.PROXY and waited > limits.proxy_timeout:
            return "PROXY header timeout"
        if self.phase is Phase.HANDSHAKE and waited > limits.handshake_timeout:
            return "TLS handshake timeout"
        if self.phase is not Phase.SESSION or self.waiting:
            return None
        idle = limits.idle_timeout if self.authenticated else limits.login_timeout
        if now - self._last_activity <= idle:
            return None
        return "idle timeout" if self.authenticated else "login timeout"

    def on_event(self, mask: int) -> None:
        """The socket is readable and/or writable."""
        if self.phase is Phase.PROXY:
            self._read_proxy_header()
        elif self.phase is Phase.HANDSHAKE:
            self._continue_handshake()
        else:
            if mask & selectors.EVENT_READ and self._may_read():
                self._read()
            self._progress()

    def on_login_done(self, outcome: LoginGrant | Exception) -> None:
        """The login finished on the thread pool; back on the loop now."""
        self._awaiting_auth = False
        self._last_activity = self._clock()
        if self.session is not None and self.phase is Phase.SESSION:
            self._apply(self.session.login_done(outcome))
            self._progress()

    def on_store_done(self) -> None:
        """The store request the channel handed out is complete; pull on from where it was."""
        self._parked = False
        if self.phase is not Phase.SESSION:
            return
        if self._await is not None:
            self._advance_await()
        else:
            self._fill_from_stream()
        self._progress()

    def on_hold_expired(self) -> None:
        """A delayed reply (authentication failure) may go out now."""
        held, self._held = self._held, None
        self._last_activity = self._clock()
        if held is not None and self.phase is Phase.SESSION:
            self._queue(held)
            self._progress()

    def close(self, reason: str) -> None:
        """End the connection now: no UPDATE, the session releases what it holds."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self._out.clear()
        self._stream = self._await = None
        self._setup.admission.release(self)
        try:
            if self.session is not None:
                leftover = self.session.close(reason)
                if leftover is not None:
                    self.host.run_detached(leftover)
        finally:
            # The host unregisters the socket first: once closed, its fd can no longer be found
            # in the selector (after STLS the registered object is the pre-TLS socket), and a
            # stale entry would capture the next connection that gets the same fd number.
            try:
                self.host.closed(self, reason)
            finally:
                self.sock.close()

    # --- PROXY header -----------------------------------------------------------------------

    def _read_proxy_header(self) -> None:
        """Peek, parse, and consume only bytes that certainly belong to the header, so the TLS
        handshake or the first command after it stays in the socket untouched."""
        assert self._proxy is not None
        try:
            peeked = self.sock.recv(PROXY_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"read failed: {_reason(exc)}")
            return
        if not peeked:
            self.close("closed before the PROXY header")
            return
        result = self._proxy.parse(self._proxy_seen + peeked)
        if result.error:
            self.close(f"bad PROXY header: {result.error}")
        elif result.need_more:
            self.sock.recv(len(peeked))  # all of it is header: the header is not complete yet
            self._proxy_seen += peeked
        else:
            self.sock.recv(result.consumed - len(self._proxy_seen))
            if result.source_ip:
                self.client_ip = result.source_ip
            else:
                self._known_source = False
            self._after_proxy()

    def _after_proxy(self) -> None:
        self._phase_started = self._clock()
        if not self._setup.admission.admit(self):
            self._refuse(TOO_MANY_CONNECTIONS, "too many connections from this address")
        elif self.implicit_tls:
            self._start_handshake()
        else:
            self._open_session(tls=False)
            self._progress()

    def _refuse(self, reply: bytes, reason: str) -> None:
        """Answer ``reply`` and close at once (in the clear: not on an implicit-TLS port, where
        the client expects a handshake and could not read it)."""
        if not self.implicit_tls:
            with contextlib.suppress(OSError):
                self.sock.send(reply)  # a fresh socket's buffer takes one short line
        self.close(reason)

    # --- TLS --------------------------------------------------------------------------------

    def _start_handshake(self) -> None:
        context = self._setup.tls_context
        if context is None:
            self.close("TLS requested but no certificate is configured")
            return
        if not self._setup.admission.begin_handshake(self):
            self.close("too many TLS handshakes from this address")
            return
        self.phase = Phase.HANDSHAKE
        self._phase_started = self._clock()
        try:
            self.sock = context.wrap_socket(self.sock, server_side=True,
                                            do_handshake_on_connect=False)
        except OSError as exc:  # the client reset the connection already
            self.close(f"TLS handshake failed: {_reason(exc)}")
            return
        self._continue_handshake()

    def _continue_handshake(self) -> None:
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._handshake_wants = selectors.EVENT_READ
            return
        except ssl.SSLWantWriteError:
            self._handshake_wants = selectors.EVENT_WRITE
            return
        except (ssl.SSLError, OSError) as exc:
            self._setup.metrics.incr("tls.failures")
            self.close(f"TLS handshake failed: {_reason(exc)}")
            return
        self._setup.admission.end_handshake(self)
        self._setup.metrics.incr("tls.handshakes")
        if self.session is None:
            self._open_session(tls=True)
        else:
            self.phase = Phase.SESSION
            self.session.tls_started()
        self._progress()

    # --- the session ------------------------------------------------------------------------

    def _open_session(self, *, tls: bool) -> None:
        self.phase = Phase.SESSION
        self._last_activity = self._clock()
        self.session = self._setup.open_session(self.client_ip, tls=tls,
                                                known_source=self._known_source)
        self._append(self.session.greeting())

    def _may_read(self) -> bool:
        """Read the socket?  Only when the session may take input and has parsed what it has."""
        return (self._ready_for_input() and self.session is not None
                and self.session.buffered <= self._setup.limits.max_unparsed)

    def _ready_for_input(self) -> bool:
        return (self.phase is Phase.SESSION and not self._awaiting_auth and self._held is None
                and not self._tls_after_flush and not self._close_after_flush
                and self._stream is None and self._await is None
                and self._out_bytes < HIGH_WATER)

    def _progress(self) -> None:
        """Answer queued commands and write until blocked: on the client (socket full), on an
        effect (authentication, held reply), or on input (nothing left to parse)."""
        while self.phase is Phase.SESSION:
            starved = self._pump()
            self._write()
            if self.phase is not Phase.SESSION or self._out:
                return
            if self._close_after_flush:
                self.close(self._close_after_flush)
                return
            if self._tls_after_flush:
                self._tls_after_flush = False
                self._start_handshake()
                return
            if not self._ready_for_input():
                return
            if self._tls_pending() and self._may_read():
                self._read()
            elif starved:
                return
            # Otherwise the pump stopped at the high-water mark and the output has drained:
            # pipelined commands may be waiting in the session, and no socket event will come
            # for them, so answer them now.

    def _pump(self) -> bool:
        """Apply effects while the channel can take them; True when the session has none left
        (it needs more input), False when the channel stopped taking them."""
        assert self.session is not None
        while self._ready_for_input():
            effect = self.session.next_effect()
            if effect is None:
                return True
            # Idle means "no command": a client dripping bytes that never make a line is idle.
            self._last_activity = self._clock()
            self._apply(effect)
        return False

    def _apply(self, effect: Effect) -> None:
        if isinstance(effect, Send):
            if effect.delay > 0:
                self._held = effect
                self.host.hold_until(self, self._clock() + effect.delay)
            else:
                self._queue(effect)
        elif isinstance(effect, StartTls):
            if self._setup.admission.begin_handshake(self):
                self._append(effect.data)
                self._tls_after_flush = True
            else:  # the +OK would promise a handshake: refuse instead, and close
                self._append(TOO_MANY_HANDSHAKES)
                self._close_after_flush = "too many TLS handshakes from this address"
        elif isinstance(effect, Authenticate):
            self._awaiting_auth = True
            self.host.submit_login(self, effect)
        elif isinstance(effect, Await):
            self._await = effect
            self._advance_await()

    def _advance_await(self) -> None:
        """Pull the awaited steps to their first bytes, their end or their error, handing out
        each store request on the way; then the session says what comes next."""
        awaited = self._await
        assert awaited is not None
        outcome: bytes | Exception | None
        try:
            item = next(awaited.steps)
        except StopIteration:
            outcome = None
        except Exception as exc:  # the store's verdict (MessageGone, [SYS/TEMP]...)
            outcome = exc
        else:
            if isinstance(item, StoreRequest):
                self._park(item)
                return
            outcome = item
        self._await = None
        self._apply(awaited.resume(outcome))

    def _park(self, request: StoreRequest) -> None:
        """Hand ``request`` to the worker; nothing is pulled until :meth:`on_store_done`."""
        self._parked = True
        self.host.submit_store(self, request)

    def _queue(self, send: Send) -> None:
        if isinstance(send.data, bytes | bytearray | memoryview):
            self._append(bytes(send.data))
        else:
            self._stream = iter(send.data)
            self._fill_from_stream()
        if send.close:
            self._close_after_flush = "session ended"

    def _fill_from_stream(self) -> None:
        """Pull body chunks while there is room.  A store failure mid-body ends the connection
        once what is queued has gone out: the client has seen ``+OK`` and part of the body, so
        no ``-ERR`` can follow, and the missing terminator tells it the body is incomplete."""
        while self._stream is not None and self._out_bytes < HIGH_WATER and not self._parked:
            try:
                chunk = next(self._stream)
            except StopIteration:
                self._stream = None
            except Exception as exc:  # any failure of the store, translated or not
                log.warning("closing %s: message body failed mid-stream: %s",
                            self.client_ip, _reason(exc))
                self._stream = None
                self._close_after_flush = "message body failed mid-stream"
            else:
                if isinstance(chunk, StoreRequest):
                    self._park(chunk)
                else:
                    self._append(chunk)

    # --- bytes in and out -------------------------------------------------------------------

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return
        except (ssl.SSLError, OSError) as exc:
            self.close(f"read failed: {_reason(exc)}")
            return
        if not data:
            self.close("client closed the connection")
            return
        assert self.session is not None
        self.session.feed(data)

    def _coalesced(self) -> memoryview:
        """The head of the output, joined with the chunks after it that fit in one send: a
        RETR is a status line, a body and a terminator, one send (and one TLS record) rather
        than three."""
        out = self._out
        if len(out) > 1 and len(out[0]) < COALESCE_SIZE:
            joined = _joined(out)
            if len(joined) > 1:
                out[:len(joined)] = [memoryview(b"".join(joined))]
        return out[0]

    def _tls_pending(self) -> bool:
        """TLS may hold decrypted bytes that the selector cannot see."""
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def _append(self, data: bytes) -> None:
        if not data:
            return
        out = self._out
        if len(data) < SMALL_CHUNK and out and len(out[-1]) < SMALL_CHUNK:
            # Short replies are joined as they come: HIGH_WATER counts octets, and a queue of
            # 20-octet replies would otherwise hold ten times as much in objects.
            out[-1] = memoryview(b"".join((out[-1], data)))
        else:
            out.append(memoryview(data))
        self._out_bytes += len(data)

    def _write(self) -> None:
        """Send queued output until it is gone or the socket is full, refilling from the body
        being streamed as room appears."""
        while self._out:
            head = self._coalesced()
            try:
                sent = self.sock.send(head[:WRITE_SIZE])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError,
                    InterruptedError):
                return
            except (ssl.SSLError, OSError) as exc:
                self.close(f"write failed: {_reason(exc)}")
                return
            self._last_activity = self._clock()
            self._out_bytes -= sent
            if sent == len(head):
                del self._out[0]
            else:
                self._out[0] = head[sent:]
            self._fill_from_stream()


def _joined(chunks: list[memoryview]) -> list[memoryview]:
    """The leading chunks worth joining into one send (at least the first): copying more
    than COALESCE_SIZE costs more than the system call it saves."""
    total, count = 0, 0
    for chunk in chunks:
        if count and total + len(chunk) > COALESCE_SIZE:
            break
        total += len(chunk)
        count += 1
    return chunks[:count]


def _reason(exc: BaseException) -> str:
    """A short, class-name-free description of an IO error for logs."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or "unknown error"
