"""A real :class:`~pop3d.worker.channel.Channel` on one end of a ``socket.socketpair()``, driven
the way the worker's loop drives it, with a fake host and a client on the other end.

The rig is single-threaded and deterministic: :meth:`Rig.run` hands the channel the socket events
it asks for (``select`` with a zero timeout) until it has nothing left to do, and completes login
jobs and store requests only when the channel would otherwise wait (as the worker's pool and
database would, later).  Held replies
wait until the test releases them (:meth:`Rig.release_hold`), with the fake clock moved on.  The
client speaks plaintext or, after :meth:`Rig.start_client_tls`, real TLS with the certificate in
``tests/tls/``.
"""

from __future__ import annotations

import select
import selectors
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pop3d.ports import Chunks, StoreRequest
from pop3d.session import Authenticate, LoginGrant, Session
from pop3d.worker.channel import Channel, ChannelLimits, ChannelSetup, Phase, SessionFactory

from .fakes import FakeClock, FakeMetrics, complete

TLS_DIR = Path(__file__).resolve().parent.parent / "tls"
CERT, KEY = TLS_DIR / "cert.pem", TLS_DIR / "key.pem"
CLIENT_IP = "192.0.2.7"
_RECV = 1 << 20

LoginRunner = Callable[[Authenticate], LoginGrant | Exception]
_OPEN: list[Rig] = []  # closed after each test by close_rigs(), run from conftest.py


def server_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    return context


def client_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(CERT)
    return context


@dataclass
class FakeHost:
    """The worker's side of the seam: records what the channel asks of it."""

    logins: list[tuple[Channel, Authenticate]] = field(default_factory=list)
    holds: list[tuple[Channel, float]] = field(default_factory=list)
    stores: list[tuple[Channel, StoreRequest]] = field(default_factory=list)
    closed_with: list[str] = field(default_factory=list)
    detached: int = 0  # store requests completed for no channel

    def submit_login(self, channel: Channel, login: Authenticate) -> None:
        self.logins.append((channel, login))

    def hold_until(self, channel: Channel, when: float) -> None:
        self.holds.append((channel, when))

    def submit_store(self, channel: Channel, request: StoreRequest) -> None:
        self.stores.append((channel, request))

    def run_detached(self, steps: Chunks) -> None:
        for item in steps:  # a fake maildrop's work is done by the time its stream ends
            if isinstance(item, StoreRequest):
                complete(item)
                self.detached += 1

    def closed(self, channel: Channel, reason: str) -> None:
        self.closed_with.append(reason)


class Rig:
    """One channel, its fake host and the client socket talking to it."""

    def __init__(self, open_session: SessionFactory, *, login: LoginRunner | None = None,
                 clock: FakeClock | None = None, limits: ChannelLimits | None = None,
                 implicit_tls: bool = False, proxy: bool = False, tls: bool = True) -> None:
        self.clock = clock or FakeClock()
        self.metrics = FakeMetrics()
        self.host = FakeHost()
        self._login = login
        self.complete_stores = True  # False: store requests stay out until a test says
        self.client, server = socket.socketpair()
        for sock in (self.client, server):
            sock.setblocking(False)
        self.setup = ChannelSetup(
            host=self.host, open_session=open_session,
            tls_context=server_tls_context() if tls else None, metrics=self.metrics,
            clock=self.clock, limits=limits or ChannelLimits(), proxy=proxy)
        self.channel = Channel(self.setup, server, CLIENT_IP, implicit_tls=implicit_tls)
        self.received = bytearray()
        self.eof = False
        _OPEN.append(self)
        self.channel.start()

    @property
    def session(self) -> Session | None:
        return self.channel.session

    # -- the server side ----------------------------------------------------------------------

    def run(self) -> None:
        """Serve socket events (and login jobs) until the channel waits on the client."""
        while self.channel.phase is not Phase.CLOSED:
            mask = self._ready()
            if mask:
                self.channel.on_event(mask)
            elif not (self._finish_a_store_request() or self._finish_a_login()):
                return

    def _ready(self) -> int:
        interest = self.channel.interest
        sock = self.channel.sock
        readers = [sock] if interest & selectors.EVENT_READ else []
        writers = [sock] if interest & selectors.EVENT_WRITE else []
        if not (readers or writers):
            return 0
        readable, writable, _ = select.select(readers, writers, [], 0)
        return (selectors.EVENT_READ if readable else 0) | \
            (selectors.EVENT_WRITE if writable else 0)

    def _finish_a_store_request(self) -> bool:
        """Complete the oldest store request, as the worker's database would, later."""
        if not self.host.stores or not self.complete_stores:
            return False
        channel, request = self.host.stores.pop(0)
        complete(request)
        channel.on_store_done()
        return True

    def _finish_a_login(self) -> bool:
        if not self.host.logins or self._login is None:
            return False
        channel, job = self.host.logins.pop(0)
        channel.on_login_done(self._login(job))
        return True

    def release_hold(self) -> float:
        """Let the oldest held reply go, the clock moved on to its time; return the delay."""
        channel, when = self.host.holds.pop(0)
        delay = when - self.clock.now
        self.clock.now = max(self.clock.now, when)
        channel.on_hold_expired()
        return delay

    # -- the client side ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send all of ``data``, serving the channel whenever the socket is full."""
        view = memoryview(data)
        while view:
            try:
                sent = self.client.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except (BrokenPipeError, ConnectionResetError):
                return  # the server closed: the rest can never be read
            view = view[sent:]
            if view:
                self.run()
                self.read()

    def read(self) -> bytes:
        """What the server sent since the last read (without serving the channel)."""
        new = bytearray()
        while not self.eof:
            try:
                data = self.client.recv(_RECV)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
                break
            new += data
        self.received += new
        return bytes(new)

    def converse(self) -> bytes:
        """Serve and read until neither side can move: what the server sent meanwhile."""
        new = bytearray()
        while True:
            self.run()
            data = self.read()
            new += data
            if not data:
                return bytes(new)

    def start_client_tls(self) -> None:
        """The client's side of an STLS or implicit-TLS handshake, served to the end."""
        self.client = client_tls_context().wrap_socket(
            self.client, server_hostname="localhost", do_handshake_on_connect=False)
        while True:
            try:
                self.client.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self.run()
                continue
            self.run()
            return

    def reset(self) -> None:
        """The client vanishes, unread data and all: on a Unix socket pair, as on TCP with
        unread data, the server's next send fails with a reset (EPIPE/ECONNRESET)."""
        self.client.close()

    def close(self) -> None:
        self.channel.close("test over")
        self.client.close()


def close_rigs() -> None:
    """Close every rig the test opened (the sockets of both ends)."""
    while _OPEN:
        _OPEN.pop().close()
