"""One process's event loop: many POP3 sessions over non-blocking sockets and ``selectors``.

Theory of operation: a :class:`Session` owns one socket and one script (see
:mod:`.workloads`).  It connects, optionally runs a TLS handshake (implicit TLS, or after
``STLS``), sends the script's commands one at a time and reads each reply straight from the
loop's one receive buffer: a status line is looked for with ``find``, and a multi-line body is
handed to a :class:`~.replies.BodyScanner`, so bodies are never copied or split into lines.
The :class:`Loop` owns the selector, the timers, the timeouts and the :class:`~.stats.Tally`;
what happens when a session ends (start another one, or count it as opened) is the business of
the ``Feeder`` that created it.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import selectors
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .replies import CRLF, STUFFED, BodyScanner, Opened, Reply, Sleep, Step, error_key
from .stats import Tally
from .workloads import Plan, Script, SessionFailed

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
MAX_LINE = 65536  # a status line longer than this is a broken server, not a slow one
TIMEOUT_SCAN = 0.5  # seconds between two scans for sessions that waited too long


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    tls: str  # "plain", "starttls" or "tls" (implicit)
    context: ssl.SSLContext | None = None
    server_name: str | None = None
    timeout: float = 30.0  # seconds to wait for any one reply, connect or handshake


class Feeder(Protocol):
    """Decides what happens when a session ends or has opened."""

    def ended(self, session: Session, ok: bool) -> None: ...

    def opened(self, session: Session) -> None: ...


class Session:
    """One connection running one script."""

    def __init__(self, loop: Loop, script: Script, feeder: Feeder) -> None:
        self.loop = loop
        self.script = script
        self.feeder = feeder
        self.sock: socket.socket = socket.socket(socket.AF_INET6 if ":" in loop.target.host
                                                 else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.mask = 0
        self.started = loop.clock()
        first = next(script)  # the greeting's step, timed from the start of the connect
        assert isinstance(first, Step)
        self.step: Step | None = first
        self.sent_at = self.started
        self.group_at = self.started
        self.expires = self.started + loop.target.timeout
        self.scanner: BodyScanner | None = None
        self.kept = bytearray()
        self.status = b""
        self.inbuf = bytearray()
        self.outbuf = b""
        self.handshake: Callable[[], None] | None = None
        self.handshake_at = 0.0
        self.closed = False
        self.connecting = True

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        target = self.loop.target
        code = self.sock.connect_ex((target.host, target.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail(f"connect: {errno.errorcode.get(code, code)}")
            return
        self._want(WRITE)

    def _connected(self) -> None:
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(f"connect: {errno.errorcode.get(code, code)}")
            return
        self.connecting = False
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.loop.target.tls == "tls":
            self._start_tls(after=self._greeted_over_tls)
        else:
            self._want(READ)

    def _greeted_over_tls(self) -> None:
        self._want(READ)  # the greeting comes after the handshake; its timer kept running

    def fail(self, key: str) -> None:
        if not self.closed:
            self.loop.tally.error(key)
            self.close()
            self.feeder.ended(self, False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.mask:
                self.loop.selector.unregister(self.sock)
                self.mask = 0
            self.sock.close()
            self.loop.sessions.discard(self)

    def _want(self, mask: int) -> None:
        if mask == self.mask:
            return
        if not self.mask:
            self.loop.selector.register(self.sock, mask, self)
        elif not mask:
            self.loop.selector.unregister(self.sock)
        else:
            self.loop.selector.modify(self.sock, mask, self)
        self.mask = mask

    # --- the script --------------------------------------------------------------------------

    def advance(self, reply: Reply | None) -> None:
        try:
            action = self.script.send(reply)
        except StopIteration:
            self._finished()
            return
        except SessionFailed as exc:
            self.fail(str(exc))
            return
        if isinstance(action, Step):
            self._send_step(action)
        elif isinstance(action, Sleep):
            self.step = None
            self.expires = float("inf")
            self.loop.later(action.seconds, self._wake)
        elif isinstance(action, Opened):
            self.step = None
            self.expires = float("inf")
            self.feeder.opened(self)

    def _wake(self) -> None:
        if not self.closed:
            self.advance(None)

    def _send_step(self, step: Step) -> None:
        now = self.loop.clock()
        self.step = step
        if not step.joined:
            self.group_at = now
        self.sent_at = now
        self.expires = now + self.loop.target.timeout
        assert step.line is not None
        self.outbuf = step.line + CRLF
        self._flush()

    def _finished(self) -> None:
        tally = self.loop.tally
        if self.started >= self.loop.measure_from:
            tally.sessions += 1
            tally.record("session", self.started, self.loop.clock())
        self.close()
        self.feeder.ended(self, True)

    # --- events ------------------------------------------------------------------------------

    def on_event(self, mask: int) -> None:
        if self.connecting:
            self._connected()
        elif self.handshake is not None:
            self.handshake()
        elif mask & WRITE and self.outbuf:
            self._flush()
        elif mask & READ:
            self._read()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError as exc:
            self.fail(f"send: {type(exc).__name__}")
            return
        self.outbuf = self.outbuf[sent:]
        self._want(WRITE if self.outbuf else READ)

    def _read(self) -> None:
        buf = self.loop.buffer
        size = len(buf)
        tls = isinstance(self.sock, ssl.SSLSocket)
        while not self.closed:
            try:
                count = self.sock.recv_into(buf, size)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as exc:
                self.fail(f"recv: {type(exc).__name__}")
                return
            if count == 0:
                self.fail("closed by the server" + (f" ({self.step.kind})" if self.step else ""))
                return
            self._consume(buf, count)
            if not tls and count < size:
                return  # the socket is drained; TLS must read until it says so

    # --- replies -----------------------------------------------------------------------------

    def _consume(self, buf: bytearray, count: int) -> None:
        if self.inbuf:  # a status line began in an earlier read
            self.inbuf += memoryview(buf)[:count]
            data = bytes(self.inbuf)
            self.inbuf.clear()
            self._scan(data, len(data))
        else:
            self._scan(buf, count)

    def _scan(self, buf: bytes | bytearray, count: int) -> None:
        pos = 0
        while pos < count and self.step is not None and not self.closed:
            if self.scanner is not None:
                stop = self.scanner.feed(buf, pos, count)
                if self.step.keep:
                    self.kept += memoryview(buf)[pos:count if stop < 0 else stop]
                if stop < 0:
                    return
                pos = stop
                self._body_done()
                continue
            end = buf.find(CRLF, pos, count)
            if end < 0:
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            self._status(line)
        if pos < count and not self.closed:
            if self.step is None or self.handshake is not None:
                self.fail("unsolicited: " + error_key(bytes(buf[pos:pos + 80]).split(CRLF)[0]))
            elif count - pos + len(self.inbuf) > MAX_LINE:
                self.fail("status line too long")
            else:
                self.inbuf += memoryview(buf)[pos:count]

    def _status(self, line: bytes) -> None:
        step = self.step
        assert step is not None
        if line[:3] != b"+OK":
            self.fail(error_key(line))
        elif step.multi:
            self.status = line
            self.scanner = BodyScanner()
            self.kept.clear()
        else:
            self._complete(Reply(True, line))

    def _body_done(self) -> None:
        scanner = self.scanner
        assert scanner is not None
        assert self.step is not None
        self.scanner = None
        # what was kept is the body on the wire and the terminator's ".CRLF"
        body = unstuff(bytes(self.kept[:-3])) if self.step.keep else b""
        self._complete(Reply(True, self.status, scanner.octets, body))

    def _complete(self, reply: Reply) -> None:
        step = self.step
        assert step is not None
        now = self.loop.clock()
        self.loop.account(step, reply, self.group_at if step.joined else self.sent_at, now)
        if step.starttls:
            self.step = None
            self._start_tls(after=lambda: self.advance(reply))
        else:
            self.advance(reply)

    # --- TLS ---------------------------------------------------------------------------------

    def _start_tls(self, after: Callable[[], None]) -> None:
        target = self.loop.target
        assert target.context is not None
        self._want(0)
        self.sock = target.context.wrap_socket(
            self.sock, server_hostname=target.server_name or target.host,
            do_handshake_on_connect=False)
        self.handshake_at = self.loop.clock()
        self.expires = self.handshake_at + target.timeout

        def step() -> None:
            try:
                self.sock.do_handshake()  # type: ignore[attr-defined]
            except ssl.SSLWantReadError:
                self._want(READ)
                return
            except ssl.SSLWantWriteError:
                self._want(WRITE)
                return
            except (ssl.SSLError, OSError) as exc:
                self.fail(f"tls: {getattr(exc, 'reason', None) or type(exc).__name__}")
                return
            self.handshake = None
            self.loop.account(Step("tls"), None, self.handshake_at, self.loop.clock())
            after()

        self.handshake = step
        step()


def unstuff(body: bytes) -> bytes:
    """A body as received, without the terminator, with dot-stuffing undone."""
    body = body.replace(STUFFED, b"\r\n.")
    return body[1:] if body[:2] == b".." else body


class Loop:
    """The selector, the timers and the tally of one process."""

    def __init__(self, target: Target, plan: Plan, clock: Callable[[], float],
                 recv_size: int) -> None:
        self.target = target
        self.plan = plan
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.buffer = bytearray(recv_size)
        self.tally = Tally()
        self.measure_from = 0.0
        self.sessions: set[Session] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def spawn(self, script: Script, feeder: Feeder) -> Session:
        session = Session(self, script, feeder)
        self.sessions.add(session)
        session.start()
        return session

    def later(self, seconds: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.clock() + seconds, next(self._order), action))

    def account(self, step: Step, reply: Reply | None, started: float, now: float) -> None:
        if not step.kind or started < self.measure_from:
            return
        self.tally.record(step.kind, started, now)
        if step.kind == "login":
            self.tally.logins += 1
        if reply is not None and reply.octets:
            self.tally.octets[step.kind] += reply.octets

    def run(self, until: Callable[[], bool]) -> None:
        """Serve events and timers until ``until()`` is true."""
        next_scan = self.clock() + TIMEOUT_SCAN
        while not until():
            wait = TIMEOUT_SCAN
            if self._timers:
                wait = min(wait, max(0.0, self._timers[0][0] - self.clock()))
            for key, mask in self.selector.select(wait):
                key.data.on_event(mask)
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                heapq.heappop(self._timers)[2]()
            if now >= next_scan:
                self._expire(now)
                next_scan = now + TIMEOUT_SCAN

    def abandon(self, why: str) -> None:
        """Count every session still open as failed (the run is over)."""
        for session in list(self.sessions):
            session.fail(why)

    def _expire(self, now: float) -> None:
        for session in [s for s in self.sessions if s.expires < now]:
            what = "handshake" if session.handshake else (session.step.kind if session.step
                                                          else "reply")
            session.fail(f"timeout ({what or 'login'})")
