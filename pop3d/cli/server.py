"""The ``start`` command: the master in the foreground, or detached as a daemon.

``start`` runs the master (:mod:`pop3d.master`) in the foreground, or detached with ``--daemon``
(then it returns once the workers serve).  It imports the worker module before the master drops
privileges (the service user may not be able to read the Python installation), and reports the
master's session and worker counts to statsd as absolute gauges.  Control of a running master
(``stop``, ``reload``, ``status``) is in :mod:`pop3d.cli.control`.
"""

from __future__ import annotations

import contextlib

# socket.getaddrinfo() loads the idna codec the first time it resolves a name; workers resolve the
# statsd and memcached hosts after the privilege drop, when the service user may not be able to
# read the standard library: import it now, like the worker module.
import encodings.idna  # noqa: F401
import importlib
import logging
import os
import select
import sys
import time
from collections.abc import Mapping, Sequence
from typing import NoReturn, cast

import click

from pop3d import config
from pop3d import log as log_module
from pop3d.cli.base import EXIT_TIMEOUT, WAIT_MARGIN_SECONDS, config_option, fail, load_config, main
from pop3d.handoff import EXIT_OK, Listener, Runnable, WorkerFactory
from pop3d.heartbeat import Heartbeat
from pop3d.master import EXIT_STARTUP_FAILED, Master, StartError
from pop3d.master.pidfile import read_pid
from pop3d.master.sdnotify import Notifier
from pop3d.worker.backends import metrics_for, release_worker_slots

log = logging.getLogger(__name__)

DEFAULT_WORKER = "pop3d.worker:Worker"
DAEMON_READY = "ok"  # what a daemonized master reports once its workers serve


def load_factory(spec: str) -> WorkerFactory:
    """A factory building ``MODULE:CALLABLE`` workers.  The module (with everything it imports)
    is imported now, by `start`, before the master drops privileges: the service user may not
    be able to read the Python installation.  Whatever the import raises propagates."""
    module_name, _, attribute = spec.partition(":")
    worker_class = getattr(importlib.import_module(module_name), attribute)

    def factory(age: int, cfg: config.Config, listeners: Sequence[Listener],
                heartbeat: Heartbeat) -> Runnable:
        worker = worker_class(age=age, config=cfg, listeners=list(listeners), heartbeat=heartbeat)
        return cast(Runnable, worker)

    return factory


class StatusGauges:
    """The master's ``on_status``: ``sessions.active`` and ``workers`` as absolute statsd gauges,
    sent where the configuration being served says (a reload changing ``[statsd]`` rebuilds the
    client; if that fails, the master logs it and the next report tries again)."""

    def __init__(self, settings: config.StatsdConfig) -> None:
        self._settings = settings
        self._metrics = metrics_for(settings)

    def report(self, settings: config.StatsdConfig, sessions: int, workers: int) -> None:
        if settings != self._settings:
            metrics = metrics_for(settings)
            self._metrics.close()
            self._metrics, self._settings = metrics, settings
        self._metrics.gauge("sessions.active", sessions)
        self._metrics.gauge("workers", workers)


def build_master(cfg: config.Config, factory: WorkerFactory,
                 notifier: Notifier | None = None) -> Master:
    gauges = StatusGauges(cfg.statsd)
    master = Master(cfg, factory, notifier=notifier,
                    on_status=lambda sessions, workers: gauges.report(master.config.statsd,
                                                                      sessions, workers),
                    on_worker_exit=lambda pid: release_worker_slots(master.config, pid))
    return master


# --- start ---------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--daemon", is_flag=True, help="Detach and run in the background once started.")
@click.option("--test-worker-factory", "worker_spec", default=DEFAULT_WORKER, hidden=True,
              help="Test-only: MODULE:CALLABLE that builds workers (tests/e2e/echo_worker.py).")
def start(config_path: str | None, daemon: bool, worker_spec: str) -> None:
    """Run the server: bind, fork workers, serve until TERM (graceful) or INT (fast)."""
    cfg = load_config(config_path)
    try:
        log_module.setup(cfg.logging.level, cfg.logging.file)
    except OSError as exc:
        fail(f"cannot open the log file {cfg.logging.file}: {exc.strerror}", EXIT_STARTUP_FAILED)
    factory = _load_worker(worker_spec, cfg)
    if daemon:
        if not cfg.logging.file:
            click.echo("warning: --daemon without logging.file: the log is discarded", err=True)
        _start_daemon(cfg, factory)
    master = build_master(cfg, factory)
    try:
        master.start()
    except StartError as exc:
        _cannot_start(cfg, str(exc))
    sys.exit(master.run())


def _load_worker(spec: str, cfg: config.Config) -> WorkerFactory:
    try:
        return load_factory(spec)
    except Exception as exc:
        _cannot_start(cfg, f"cannot load the worker {spec}: {exc.__class__.__name__}: {exc}")


def _cannot_start(cfg: config.Config, message: str) -> NoReturn:
    """``message`` on stderr, and in the log file too when there is one (else the log is
    stderr, which would show it twice)."""
    if cfg.logging.file:
        log.error("cannot start: %s", message)
    fail(message, EXIT_STARTUP_FAILED)


class StartupReport(Notifier):
    """systemd's notifier that also tells a waiting `pop3d start --daemon` how start-up ended:
    :data:`DAEMON_READY` once the workers serve, or why the master stops before that (followed
    by ``hint``).  Workers close it right after fork (as they close any notifier), so only the
    master holds the pipe."""

    def __init__(self, fd: int, hint: str = "", environ: Mapping[str, str] = os.environ,
                 ) -> None:
        super().__init__(environ)
        self._fd = fd
        self._hint = hint

    def report(self, message: str) -> None:
        """Send ``message`` (the first one only) and close the pipe."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):  # the waiting process is gone: nobody to tell
            os.write(self._fd, message.replace("\n", " ").encode("utf-8") + b"\n")
        self._close_pipe()

    def ready(self, status: str) -> bool:
        self.report(DAEMON_READY)
        return super().ready(status)

    def stopping(self, status: str) -> bool:
        self.report(status + self._hint)
        return super().stopping(status)

    def close(self) -> None:
        self._close_pipe()
        super().close()

    def _close_pipe(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _start_daemon(cfg: config.Config, factory: WorkerFactory) -> NoReturn:
    """Double fork; the original process exits once the master's workers serve, or with the
    reason the master gave up."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)
        _await_daemon(read_end, cfg)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(EXIT_OK)
    _detach_stdio()
    report = StartupReport(write_end, _see_the_log(cfg))
    master = build_master(cfg, factory, notifier=report)
    try:
        master.start()
    except StartError as exc:
        log.error("cannot start: %s", exc)
        report.report(str(exc))
        os._exit(EXIT_STARTUP_FAILED)
    sys.exit(master.run())


def _see_the_log(cfg: config.Config) -> str:
    return f" (see the log: {cfg.logging.file})" if cfg.logging.file else ""


def _await_daemon(read_end: int, cfg: config.Config) -> NoReturn:
    timeout = cfg.server.worker_timeout + WAIT_MARGIN_SECONDS
    report = read_report(read_end, timeout)
    pid = read_pid(cfg.server.pidfile)
    if report is None:
        fail(f"the server (pid {pid}) has no workers serving after {timeout:g} s; it may still "
             f"be starting{_see_the_log(cfg)}", EXIT_TIMEOUT)
    if not report:
        fail(f"the server exited during start-up{_see_the_log(cfg)}", EXIT_STARTUP_FAILED)
    if report != DAEMON_READY:
        fail(report, EXIT_STARTUP_FAILED)
    click.echo(f"pop3d started (pid {pid})")
    sys.exit(EXIT_OK)


def read_report(fd: int, timeout: float) -> str | None:
    """The first line written to the pipe ``fd`` (what was written, maybe "", when every writer
    closed it before a whole line), or None after ``timeout`` seconds; closes ``fd``."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.partition(b"\n")[0].decode("utf-8", "replace")


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
