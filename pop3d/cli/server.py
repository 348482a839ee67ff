"""Server control commands: start, stop, reload and status.

``start`` runs the master (:mod:`pop3d.master`) in the foreground, or detached with ``--daemon``
(then it returns once the workers serve).  It imports the worker module before the master drops
privileges (the service user may not be able to read the Python installation), and reports the
master's session and worker counts to statsd as absolute gauges.  The other commands find the
master through the pidfile named in the configuration and read the status file it publishes next
to it (:mod:`pop3d.pidfile`).  ``status`` exits with the LSB init-script codes: 0 running, 1 dead
but the pidfile remains, 3 not running.
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
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, cast

import click

from pop3d import config
from pop3d import log as log_module
from pop3d.adapters.statsd import NullMetrics, StatsdMetrics
from pop3d.cli.base import config_option, fail, load_config, main
from pop3d.errors import EXIT_OK, ConfigError
from pop3d.heartbeat import Heartbeat
from pop3d.master import (
    EXIT_STARTUP_FAILED,
    FAST_STOP_SECONDS,
    KILL_SLACK_SECONDS,
    Master,
    Runnable,
    StartError,
    WorkerFactory,
)
from pop3d.pidfile import process_alive, read_pid, read_status, status_path
from pop3d.sdnotify import Notifier
from pop3d.services import release_worker_slots
from pop3d.sockets import Listener

log = logging.getLogger(__name__)

DEFAULT_WORKER = "pop3d.worker:Worker"
LSB_DEAD_WITH_PIDFILE = 1  # `status`: the pidfile names a process that is gone
LSB_NOT_RUNNING = 3  # `status`: no pidfile
LSB_INSUFFICIENT_PRIVILEGE = 4
LSB_UNKNOWN = 4  # `status`: the state cannot be determined
LSB_PROGRAM_NOT_RUNNING = 7  # `reload` of a server that is not running
EXIT_TIMEOUT = 1
WAIT_MARGIN_SECONDS = 10.0  # beyond the server's own timeouts, for `stop`, `reload`, `--daemon`
POLL_SECONDS = 0.05
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


def metrics_for(settings: config.StatsdConfig) -> StatsdMetrics | NullMetrics:
    if not settings.enabled:
        return NullMetrics()
    return StatsdMetrics(settings.host, settings.port, settings.prefix)


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
        if cfg.logging.file:
            log.error("cannot start: %s", exc)
        fail(str(exc), EXIT_STARTUP_FAILED)
    sys.exit(master.run())


def _load_worker(spec: str, cfg: config.Config) -> WorkerFactory:
    try:
        return load_factory(spec)
    except Exception as exc:
        message = f"cannot load the worker {spec}: {exc.__class__.__name__}: {exc}"
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


# --- finding the master --------------------------------------------------------------------


def control_settings(config_path: str | None) -> config.ServerConfig:
    """The server settings `stop` and `status` need, even from a configuration that no longer
    validates (a stopped server must stay stoppable)."""
    path = config.resolve_path(config_path)
    try:
        return config.load(path)[0].server
    except ConfigError as exc:
        server = _raw_server_settings(path)
        click.echo(f"warning: {path} has {len(exc.problems)} problem(s) (see `pop3d "
                   f"check-config`); using server.pidfile = {server.pidfile}", err=True)
        return server


def _raw_server_settings(path: str) -> config.ServerConfig:
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("server", {})
    except (OSError, tomllib.TOMLDecodeError):
        table = {}
    defaults = config.ServerConfig()
    values: dict[str, Any] = {}
    for key, kind in (("pidfile", str), ("graceful_timeout", (int, float)),
                      ("worker_timeout", (int, float))):
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, kind) and not isinstance(value, bool):
            values[key] = value
    return config.ServerConfig(**{**{"pidfile": defaults.pidfile}, **values})


def find_master(pidfile: str) -> tuple[int | None, str, int]:
    """The running master's pid (or None), what that means, and the LSB status code."""
    try:
        pid = read_pid(pidfile)
    except OSError as exc:
        fail(f"cannot read the pidfile {pidfile}: {exc.strerror}", LSB_UNKNOWN)
    if pid is None:
        return None, f"not running (no pidfile {pidfile})", LSB_NOT_RUNNING
    if not process_alive(pid):
        return None, f"not running (stale pidfile {pidfile}: pid {pid} is gone)", \
            LSB_DEAD_WITH_PIDFILE
    return pid, f"running as pid {pid}", EXIT_OK


def _send(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # exited meanwhile: the waits below see that
    except PermissionError:
        fail(f"cannot send {signum.name} to pid {pid}: permission denied",
             LSB_INSUFFICIENT_PRIVILEGE)


def _poll(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


# --- stop, reload, status ------------------------------------------------------------------


@main.command()
@config_option
@click.option("--now", is_flag=True,
              help="Fast stop (INT): close sessions at once instead of letting them finish.")
def stop(config_path: str | None, now: bool) -> None:
    """Stop the server (TERM, or INT with --now) and wait until it has exited."""
    server = control_settings(config_path)
    pid, why, _ = find_master(server.pidfile)
    if pid is None:
        click.echo(f"pop3d: {why}", err=True)
        return  # LSB: stopping a stopped service succeeds
    _send(pid, signal.SIGINT if now else signal.SIGTERM)
    grace = (min(FAST_STOP_SECONDS, server.graceful_timeout) if now
             else server.graceful_timeout + KILL_SLACK_SECONDS)
    timeout = grace + WAIT_MARGIN_SECONDS

    def gone() -> bool:
        # The master removes its pidfile shortly before it exits: wait for the process itself,
        # unless another master has taken the pidfile over meanwhile.
        if not process_alive(pid):
            return True
        current = read_pid(server.pidfile)
        return current is not None and current != pid

    if not _poll(gone, timeout):
        fail(f"pid {pid} is still running {timeout:g} s after {'INT' if now else 'TERM'}",
             EXIT_TIMEOUT)
    click.echo(f"pop3d stopped (pid {pid})")


@main.command()
@config_option
def reload(config_path: str | None) -> None:
    """Validate the configuration, then HUP the server and wait until the new workers serve."""
    cfg = load_config(config_path)
    pid, why, _ = find_master(cfg.server.pidfile)
    if pid is None:
        fail(why, LSB_PROGRAM_NOT_RUNNING)
    status_file = status_path(cfg.server.pidfile)
    before = _reload_serial(read_status(status_file), pid)
    _send(pid, signal.SIGHUP)
    timeout = cfg.server.worker_timeout + WAIT_MARGIN_SECONDS
    result: dict[str, Any] = {}

    def finished() -> bool:
        current = read_status(status_file)
        if _reload_serial(current, pid) > before and current is not None:
            result.update(current)
            return current["reload"].get("result") in ("ok", "failed")
        return not process_alive(pid)

    if not _poll(finished, timeout) or not result:
        fail(f"sent HUP to pid {pid} but {status_file} showed no reload result within "
             f"{timeout:g} s", EXIT_TIMEOUT)
    if result["reload"]["result"] != "ok":
        fail(f"reload failed: {result['reload'].get('error')}", EXIT_TIMEOUT)
    serving = sum(1 for w in result["workers"] if w["booted"] and not w["retiring"])
    click.echo(f"reloaded: generation {result['generation']}, {serving} workers serving")


def _reload_serial(status: dict[str, Any] | None, pid: int) -> int:
    if status is None or status.get("pid") != pid:
        return 0
    return int(status.get("reload", {}).get("serial", 0))


@main.command()
@config_option
def status(config_path: str | None) -> None:
    """Show the master, its workers and sessions; exit 3 when not running."""
    server = control_settings(config_path)
    pid, why, code = find_master(server.pidfile)
    if pid is None:
        click.echo(f"pop3d is {why}")
        sys.exit(code)
    data = read_status(status_path(server.pidfile))
    if data is None or data.get("pid") != pid:
        click.echo(f"pop3d is running as pid {pid} (no status in "
                   f"{status_path(server.pidfile)} yet)")
        return
    click.echo(format_status(data, time.time()))


def format_status(data: dict[str, Any], now: float) -> str:
    """The human-readable ``pop3d status`` report for a status file's contents."""
    workers = data["workers"]
    serving = [w for w in workers if w["booted"] and not w["retiring"]]
    lines = [
        f"pop3d is running: master pid {data['pid']}, up "
        f"{format_duration(now - data['started'])}, {data['state']}",
        f"config {data['config']}, generation {data['generation']}; last reload: "
        f"{_describe_reload(data['reload'])}",
        f"workers: {len(serving)} serving of {data['workers_wanted']} wanted; "
        f"sessions: {data['sessions']}",
    ]
    for w in workers:
        notes = ("" if w["booted"] else "  booting") + ("  retiring" if w["retiring"] else "")
        lines.append(f"  pid {w['pid']:<8} age {w['age']:<4} generation {w['generation']:<3} "
                     f"sessions {w['sessions']}{notes}")
    return "\n".join(lines)


def _describe_reload(reload: dict[str, Any]) -> str:
    result = reload.get("result")
    if result is None:
        return "none"
    if result == "failed":
        return f"failed: {reload.get('error')}"
    return "in progress" if result == "pending" else str(result)


def format_duration(seconds: float) -> str:
    """``93784`` -> ``1d 02h 03m 04s``; leading zero units are left out."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
