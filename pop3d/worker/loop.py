"""A worker process: one ``selectors`` loop serving many POP3 sessions.

Theory of operation.  The master builds a :class:`Worker` before ``fork()``; the child calls
:meth:`Worker.run`, which sets everything up that must not cross a fork (signal handlers, the
selector, database connections, the TLS context, the authentication thread pool) and then loops:

- ``select`` with a timeout of at most one second;
- accept on the shared listening sockets while under ``worker_connections``;
- hand socket events to each :class:`~pop3d.worker.channel.Channel`, and to the database
  connections of :class:`~pop3d.store.aio.AsyncDatabase`, whose sockets sit in the same
  selector: the sessions' queries (RETR, TOP, QUIT) never make the loop wait;
- collect finished authentications (bcrypt runs on a small thread pool, so one login never stalls
  the other sessions) and held replies whose delay is over (the auth-failure delay is a timer,
  not a sleep);
- once a second: idle/login/handshake/PROXY timeouts, the heartbeat, the process title.

Signals only write their number to a wakeup socket (``signal.set_wakeup_fd``, see
:mod:`pop3d.worker.wakeup`); the loop reads them: TERM drains (stop accepting, let sessions finish
within ``graceful_timeout``), INT and QUIT close every session at once, USR1 reopens the log
file.  A failing session is closed and logged; the loop and the other sessions carry on.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import os
import selectors
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from setproctitle import setproctitle

from pop3d import log as logsetup
from pop3d.adapters.keys import canonical_ip
from pop3d.config import TLS_VERSIONS, Config, in_networks
from pop3d.handoff import EXIT_OK, EXIT_WORKER_BOOT_ERROR, Listener
from pop3d.heartbeat import Heartbeat
from pop3d.ports import Chunks, StoreRequest
from pop3d.session import Authenticate, LoginGrant, Peer, Services, Session, SessionSettings
from pop3d.store.aio import AsyncDatabase
from pop3d.store.jobs import Job
from pop3d.worker.admission import AddressLimits
from pop3d.worker.backends import Backends, build_backends, session_prefix
from pop3d.worker.channel import Channel, ChannelHost, ChannelLimits, ChannelSetup
from pop3d.worker.wakeup import FAST_SIGNALS, Wakeup

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # connections accepted per wakeup, so one busy listener cannot starve the loop
TICK = 1.0  # seconds between timeout scans and heartbeats

LoginJob = tuple[Channel, "Future[LoginGrant]"]


class Worker(ChannelHost):
    """Serves connections from the master's listening sockets until told to stop."""

    def __init__(self, *, age: int, config: Config, listeners: list[Listener],
                 heartbeat: Heartbeat) -> None:
        self.age = age
        self.config = config
        self.listeners = listeners
        self.heartbeat = heartbeat
        self.master_pid = os.getpid()
        self.tls_context: ssl.SSLContext | None = None
        self.channels: set[Channel] = set()
        self._ids = itertools.count(1)
        self._holds: list[tuple[float, int, Channel]] = []
        self._hold_order = itertools.count()  # ties in time never compare two channels
        self._done_jobs: deque[LoginJob] = deque()
        self._accepting = False
        self._draining_until: float | None = None
        self._stopped = False
        self._next_tick = 0.0
        self._housekeeping: Future[None] | None = None
        self._watched: set[int] = set()  # database sockets registered in the selector

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """The child's main: boot, loop, clean up; the return value is the exit code."""
        try:
            self._boot()
        except Exception:
            log.exception("worker %d failed to boot", self.age)
            return EXIT_WORKER_BOOT_ERROR
        try:
            self._loop()
        finally:
            self._shutdown()
        return EXIT_OK

    def _boot(self) -> None:
        setproctitle(f"pop3d: worker {self.age} [booting]")
        self.selector = selectors.DefaultSelector()
        self._wakeup = Wakeup()
        self.selector.register(self._wakeup.reader, selectors.EVENT_READ, self._on_wakeup)
        self._wakeup.install_signals()
        self.tls_context = build_tls_context(self.config)
        self.backends: Backends = build_backends(self.config)
        self.database = AsyncDatabase(self.backends.database.settings,
                                      size=self.config.database.connections,
                                      watch=self._watch_fd, clock=time.monotonic)
        self.pool = ThreadPoolExecutor(self.config.auth.threads, thread_name_prefix="auth")
        self.settings = session_settings(self.config)
        self.channel_setup = ChannelSetup(
            host=self, open_session=self._open_session, tls_context=self.tls_context,
            metrics=self.backends.metrics, clock=time.monotonic,
            limits=channel_limits(self.config), proxy=self.config.server.proxy_protocol,
            admission=address_limits(self.config, self.backends))
        self._set_accepting(True)
        self.heartbeat.beat(0)
        log.info("worker %d serving (pid %d)", self.age, os.getpid())

    def _shutdown(self) -> None:
        for channel in list(self.channels):
            channel.close("worker stopping")
        self.database.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.backends.close()
        log.info("worker %d stopped", self.age)

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped:
            for key, mask in self.selector.select(self._select_timeout()):
                callback: Callable[[int], None] = key.data
                callback(mask)
            self._finish_auth_jobs()
            now = time.monotonic()
            self._release_holds(now)
            if now >= self._next_tick:
                self._next_tick = now + TICK
                self._tick(now)

    def _select_timeout(self) -> float:
        until = self._next_tick
        if self._holds:
            until = min(until, self._holds[0][0])
        return max(0.0, min(TICK, until - time.monotonic()))

    def _tick(self, now: float) -> None:
        self._expire_idle(now)
        self.database.expire(now)
        if self._draining_until is None and \
                len(self.channels) < self.config.server.worker_connections:
            self._set_accepting(True)
        self._start_housekeeping()
        sessions = len(self.channels)
        self.heartbeat.beat(sessions)
        setproctitle(f"pop3d: worker {self.age} [{sessions} sessions]")
        if os.getppid() != self.master_pid and self._draining_until is None:
            log.warning("worker %d: master is gone, draining", self.age)
            self._drain(now)
        if self._draining_until is not None:
            self._check_drained(now)

    def _start_housekeeping(self) -> None:
        """Registry refreshes and last_used_at writes go to the pool, one run at a time."""
        if self._housekeeping is None or self._housekeeping.done():
            self._housekeeping = self.pool.submit(self._housekeep)

    def _housekeep(self) -> None:
        try:
            self.backends.periodic()
        except Exception:
            log.exception("worker %d: housekeeping failed", self.age)

    # --- accepting --------------------------------------------------------------------------

    def _set_accepting(self, accepting: bool) -> None:
        if accepting == self._accepting:
            return
        self._accepting = accepting
        for listener in self.listeners:
            if accepting:
                self.selector.register(listener.sock, selectors.EVENT_READ,
                                       lambda _mask, lst=listener: self._accept(lst))
            else:
                self.selector.unregister(listener.sock)

    def _accept(self, listener: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.channels) >= self.config.server.worker_connections:
                self._set_accepting(False)  # back-pressure: other workers take the load
                return
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS: keep serving who we have
                # The listener stays readable: retrying at once would spin (and flood the log).
                # The next tick accepts again; the connection waits in the backlog meanwhile.
                log.error("accept on %s failed: %s; retrying in %g s", listener.address,
                          exc.strerror, TICK)
                self._set_accepting(False)
                return
            self._adopt(sock, address[0], listener)

    def _adopt(self, sock: socket.socket, client_ip: str, listener: Listener) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError as exc:  # gone between accept() and now: nothing to serve
            log.debug("connection from %s lost at once: %s", client_ip, exc.strerror)
            sock.close()
            return
        client_ip = canonical_ip(client_ip)  # no zone, IPv4-mapped as IPv4: one spelling
        self.backends.metrics.incr("connections")
        if self.config.server.proxy_protocol and \
                not in_networks(client_ip, self.config.server.proxy_networks):
            log.warning("refusing %s: PROXY protocol is only accepted from proxy_networks",
                        client_ip)
            sock.close()
            return
        channel = self._guard(lambda: Channel(
            self.channel_setup, sock, client_ip, implicit_tls=listener.tls), sock)
        if channel is not None:
            self.channels.add(channel)
            self._run(channel, channel.start)

    def _guard(self, make: Callable[[], Channel], sock: socket.socket) -> Channel | None:
        try:
            return make()
        except Exception:
            log.exception("could not set up a connection")
            sock.close()
            return None

    # --- channels ---------------------------------------------------------------------------

    def _watch(self, channel: Channel) -> None:
        """(Re-)register the channel's socket for the events it wants now."""
        if channel not in self.channels:
            return
        events, watched = channel.interest, channel.watched
        if events == watched:
            return  # the common case: no system call
        channel.watched = events
        if not watched:
            self.selector.register(channel.sock, events, self._dispatcher(channel))
        elif not events:
            self.selector.unregister(channel.sock)
        else:
            self.selector.modify(channel.sock, events, self._dispatcher(channel))

    def _dispatcher(self, channel: Channel) -> Callable[[int], None]:
        return lambda mask: self._run(channel, lambda: channel.on_event(mask))

    def _run(self, channel: Channel, action: Callable[[], None]) -> None:
        """Run one channel callback; whatever it raises ends that channel only."""
        try:
            action()
        except Exception:
            log.exception("connection from %s failed", channel.client_ip)
            self._run_close(channel, "internal error")
        self._watch(channel)

    def _run_close(self, channel: Channel, reason: str) -> None:
        try:
            channel.close(reason)
        except Exception:
            log.exception("closing the connection from %s failed", channel.client_ip)
            self.closed(channel, reason)

    def _open_session(self, client_ip: str, *, tls: bool, known_source: bool) -> Session:
        """The channels' session factory: the peer's policy comes from the configuration."""
        trusted = known_source and in_networks(client_ip, self.config.server.plaintext_networks)
        peer = Peer(client_ip=client_ip, tls=tls,
                    plaintext_ok=trusted or self.config.auth.allow_plaintext,
                    stls_available=self.tls_context is not None and not tls)
        session_id = f"{session_prefix(os.getpid())}{next(self._ids)}"
        services = Services(maildrop=self.backends.maildrop, registry=self.backends.registry,
                            metrics=self.backends.metrics, tracer=self.backends.tracer)
        return Session(self.settings, services, peer, session_id=session_id)

    # --- ChannelHost ------------------------------------------------------------------------

    def submit_login(self, channel: Channel, login: Authenticate) -> None:
        # bcrypt and the snapshot query run on the pool, each thread with its own connection.
        future = self.pool.submit(self._login_job, login)
        future.add_done_callback(lambda done: self._job_done(channel, done))

    def _login_job(self, login: Authenticate) -> LoginGrant:
        return login.run(self.backends.authenticator, self.backends.thread_maildrop())

    def _job_done(self, channel: Channel, future: Future[LoginGrant]) -> None:
        # Runs on a pool thread: hand over to the loop and wake it.
        self._done_jobs.append((channel, future))
        self._wakeup.job_done()

    def hold_until(self, channel: Channel, when: float) -> None:
        heapq.heappush(self._holds, (when, next(self._hold_order), channel))

    def submit_store(self, channel: Channel, request: StoreRequest) -> None:
        self.database.submit(_job(request), lambda: self._store_done(channel))

    def _store_done(self, channel: Channel) -> None:
        if channel in self.channels:
            self._run(channel, channel.on_store_done)

    def run_detached(self, steps: Chunks) -> None:
        """Pull ``steps`` request by request on the database connections; nobody waits."""
        try:
            request = next(item for item in steps if isinstance(item, StoreRequest))
        except StopIteration:
            return
        except Exception:
            log.exception("worker %d: detached store work failed", self.age)
            return
        self.database.submit(_job(request), lambda: self.run_detached(steps))

    def _watch_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """The database connections' sockets in the loop's selector (events 0: forget it)."""
        registered = fd in self._watched
        if not events:
            if registered:
                self._watched.discard(fd)
                self.selector.unregister(fd)
            return
        guarded = functools.partial(self._database_event, callback)
        if registered:
            self.selector.modify(fd, events, guarded)
        else:
            self._watched.add(fd)
            self.selector.register(fd, events, guarded)

    def _database_event(self, callback: Callable[[int], None], mask: int) -> None:
        try:
            callback(mask)
        except Exception:
            log.exception("worker %d: database connection failed", self.age)

    def closed(self, channel: Channel, reason: str) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        if channel.watched:
            channel.watched = 0
            with contextlib.suppress(KeyError, ValueError):  # the socket is already closed
                self.selector.unregister(channel.sock)
        log.debug("connection from %s closed: %s", channel.client_ip, reason)
        if self._draining_until is None:
            self._set_accepting(True)

    # --- timers and completions -------------------------------------------------------------

    def _finish_auth_jobs(self) -> None:
        while self._done_jobs:
            channel, future = self._done_jobs.popleft()
            if channel in self.channels:
                self._run(channel, functools.partial(channel.on_login_done, _outcome(future)))

    def _release_holds(self, now: float) -> None:
        while self._holds and self._holds[0][0] <= now:
            _, _, channel = heapq.heappop(self._holds)
            if channel in self.channels:
                self._run(channel, channel.on_hold_expired)

    def _expire_idle(self, now: float) -> None:
        for channel in list(self.channels):
            reason = channel.expired(now)
            if reason:
                log.info("closing connection from %s: %s", channel.client_ip, reason)
                self._run_close(channel, reason)

    # --- signals ----------------------------------------------------------------------------

    def _on_wakeup(self, _mask: int) -> None:
        for signum in self._wakeup.signals():
            self._handle_signal(signum)

    def _handle_signal(self, signum: int) -> None:
        now = time.monotonic()
        if signum == signal.SIGTERM and self._draining_until is None:
            log.info("worker %d draining %d sessions", self.age, len(self.channels))
            self._drain(now)
        elif signum in FAST_SIGNALS:
            log.info("worker %d closing %d sessions now", self.age, len(self.channels))
            self._stopped = True
        elif signum == signal.SIGUSR1:
            logsetup.reopen()

    def _drain(self, now: float) -> None:
        self._draining_until = now + self.config.server.graceful_timeout
        self._set_accepting(False)
        for listener in self.listeners:
            listener.sock.close()  # the master and the other workers keep theirs open
        self._check_drained(now)

    def _check_drained(self, now: float) -> None:
        assert self._draining_until is not None
        if not self.channels:
            self._stopped = True
        elif now >= self._draining_until:
            log.info("worker %d: graceful timeout, closing %d sessions", self.age,
                     len(self.channels))
            self._stopped = True


def _job(request: StoreRequest) -> Job[Any]:
    if not isinstance(request, Job):
        raise TypeError(f"not a store job: {request!r}")
    return request


def _outcome(future: Future[LoginGrant]) -> LoginGrant | Exception:
    """The job's result, or the exception it raised (the session turns it into a reply)."""
    error = future.exception()
    if error is None:
        return future.result()
    return error if isinstance(error, Exception) else Exception(repr(error))


def build_tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context, or None when no certificate is configured."""
    if not config.tls_enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[config.tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.load_cert_chain(config.tls.cert, config.tls.key)
    return context


def channel_limits(config: Config) -> ChannelLimits:
    return ChannelLimits(
        proxy_timeout=config.server.proxy_timeout,
        handshake_timeout=config.tls.handshake_timeout,
        login_timeout=config.limits.login_timeout,
        idle_timeout=config.limits.idle_timeout,
        login_deadline=config.limits.login_deadline,
        max_unparsed=2 * (config.limits.line_length + 2),  # two of the longest lines
    )


def address_limits(config: Config, backends: Backends) -> AddressLimits:
    limits = config.limits
    return AddressLimits(connections=backends.shared.connections,
                         max_connections=limits.max_connections_per_address,
                         max_handshakes=limits.max_tls_handshakes_per_address,
                         metrics=backends.metrics, id_prefix=session_prefix(os.getpid()),
                         ipv6_prefix=limits.ipv6_prefix)


def session_settings(config: Config) -> SessionSettings:
    limits = config.limits
    return SessionSettings(
        server_name=config.server.name,
        line_length=limits.line_length,
        max_messages=limits.max_messages_per_session,
        max_bad_commands=limits.max_bad_commands,
        max_connections_per_user=limits.max_connections_per_user,
        failure_delay=config.auth.failure_delay,
    )
