"""A minimal honest worker for the master's end-to-end tests.  Test-only.

The master loads it through the hidden, test-only option
``pop3d start --test-worker-factory echo_worker:EchoWorker`` (with ``tests/e2e`` on PYTHONPATH);
production always builds ``pop3d.worker.Worker``.

It keeps the worker side of the master <-> worker contract (docs/INTERNALS.md) and nothing else:

- accepts on every listener it is given and greets each connection with ``+OK <pid>``; a client
  that then sends ``HOLD`` keeps its session open (``+OK holding <pid>``) until it sends ``QUIT``
  (``+OK bye <pid>``); any other line or EOF closes the connection;
- beats its heartbeat every 0.2 s with its number of open connections;
- TERM: closes its listeners and drains, closing what is left after ``graceful_timeout``
  (``-ERR shutting down <pid>``); INT/QUIT: closes every session now; USR1: reopens its log;
  exits when its master is gone.

Test hooks: ``server.name = "echo-boot-error"`` makes it exit with EXIT_WORKER_BOOT_ERROR,
``"echo-crash"`` makes it exit 1 at once, ``"echo-slow-boot"`` delays its first beat by 1 s; SIGUSR2
makes it hang without beating (a stuck worker).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from typing import Any, cast

from setproctitle import setproctitle

from pop3d import log as log_module
from pop3d.handoff import EXIT_OK, EXIT_WORKER_BOOT_ERROR

log = logging.getLogger("pop3d.echo_worker")

BEAT_SECONDS = 0.2


class EchoWorker:
    def __init__(self, *, age: int, config: Any, listeners: list[Any], heartbeat: Any) -> None:
        self.age = age
        self.config = config
        self.listeners = listeners
        self.heartbeat = heartbeat
        self.master_pid = os.getpid()
        self.sessions: dict[socket.socket, bytes] = {}
        self.signals: list[int] = []
        self.drain_until: float | None = None
        self.stopped = False

    def run(self) -> int:
        name = self.config.server.name
        if name == "echo-boot-error":
            log.error("echo worker %d: boot error requested", os.getpid())
            return EXIT_WORKER_BOOT_ERROR
        if name == "echo-crash":
            return 1
        if name == "echo-slow-boot":
            time.sleep(1)
        setproctitle(f"pop3d: echo worker {self.age}")
        self.selector = selectors.DefaultSelector()
        self._install_signals()
        for listener in self.listeners:
            self.selector.register(listener.sock, selectors.EVENT_READ, "accept")
        log.info("echo worker %d (age %d) serving", os.getpid(), self.age)
        while not self.stopped:
            self.heartbeat.beat(len(self.sessions))
            for key, _ in self.selector.select(BEAT_SECONDS):
                self._ready(key)
            self._handle_signals()
            self._check_stop()
        for sock in list(self.sessions):
            self._close(sock, b"-ERR shutting down %d\r\n" % os.getpid())
        return EXIT_OK

    def _install_signals(self) -> None:
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                       signal.SIGUSR2):
            signal.signal(signum, lambda signum, _frame: self.signals.append(signum))

    def _ready(self, key: selectors.SelectorKey) -> None:
        if key.data == "wake":
            os.read(self.wake_r, 512)
        elif key.data == "accept":
            self._accept(cast(socket.socket, key.fileobj))
        else:
            self._read(cast(socket.socket, key.fileobj))

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        sock.setblocking(False)
        sock.send(b"+OK %d\r\n" % os.getpid())
        self.sessions[sock] = b""
        self.selector.register(sock, selectors.EVENT_READ, "session")

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock, b"")
            return
        buffered = self.sessions[sock] + data
        line, newline, rest = buffered.partition(b"\n")
        self.sessions[sock] = buffered if not newline else rest
        if newline:
            self._command(sock, line.strip().upper())

    def _command(self, sock: socket.socket, command: bytes) -> None:
        pid = os.getpid()
        if command == b"HOLD":
            sock.send(b"+OK holding %d\r\n" % pid)
        elif command == b"QUIT":
            self._close(sock, b"+OK bye %d\r\n" % pid)
        else:
            self._close(sock, b"-ERR unknown command\r\n")

    def _close(self, sock: socket.socket, farewell: bytes) -> None:
        self.selector.unregister(sock)
        del self.sessions[sock]
        try:
            if farewell:
                sock.send(farewell)
        except OSError:
            pass
        sock.close()

    def _handle_signals(self) -> None:
        taken, self.signals = self.signals, []
        for signum in taken:
            if signum == signal.SIGTERM and self.drain_until is None:
                self.drain_until = time.monotonic() + self.config.server.graceful_timeout
                for listener in self.listeners:
                    self.selector.unregister(listener.sock)
                    listener.sock.close()
                log.info("echo worker %d draining %d sessions", os.getpid(), len(self.sessions))
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self.stopped = True
            elif signum == signal.SIGUSR1:
                log_module.reopen()
                log.info("echo worker %d reopened its log", os.getpid())
            elif signum == signal.SIGUSR2:
                log.info("echo worker %d hanging without heartbeat", os.getpid())
                while True:
                    time.sleep(1)

    def _check_stop(self) -> None:
        if os.getppid() != self.master_pid:
            self.stopped = True
        elif self.drain_until is not None:
            self.stopped = not self.sessions or time.monotonic() >= self.drain_until
