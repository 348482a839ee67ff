"""Control of a running master: stop, reload and status.

These commands find the master through the pidfile named in the configuration and read the status
file it publishes next to it (:mod:`pop3d.pidfile`).  The pidfile's directory belongs to the
service user, so the pid in it is checked before any signal goes out: a process that is not a
pop3d master (:func:`~pop3d.master.pidfile.is_master`) is treated as a stale pidfile.
``stop`` and ``status`` work even from a configuration that no longer validates, so a stopped
server stays stoppable.  ``status`` exits with the LSB init-script codes: 0 running, 1 dead but
the pidfile remains, 3 not running.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from typing import Any

import click

from pop3d import config
from pop3d.cli.base import EXIT_TIMEOUT, WAIT_MARGIN_SECONDS, config_option, fail, load_config, main
from pop3d.config import ConfigError
from pop3d.handoff import EXIT_OK
from pop3d.master import FAST_STOP_SECONDS, KILL_SLACK_SECONDS
from pop3d.master.pidfile import is_master, process_alive, read_pid, read_status, status_path

LSB_DEAD_WITH_PIDFILE = 1  # `status`: the pidfile names a process that is gone
LSB_NOT_RUNNING = 3  # `status`: no pidfile
LSB_INSUFFICIENT_PRIVILEGE = 4
LSB_UNKNOWN = 4  # `status`: the state cannot be determined
LSB_PROGRAM_NOT_RUNNING = 7  # `reload` of a server that is not running
POLL_SECONDS = 0.05


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
    if not is_master(pid):
        return None, (f"not running (stale pidfile {pidfile}: pid {pid} is not a pop3d master; "
                      "not signalling it)"), LSB_DEAD_WITH_PIDFILE
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
