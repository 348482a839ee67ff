"""The master process: listening sockets, worker processes, signals; it never speaks POP3.

Theory of operation
-------------------
:meth:`Master.start` does what happens once, as the invoking user (usually root): take the
pidfile, bind every ``listen``/``tls_listen`` address, raise RLIMIT_NOFILE, drop privileges.
:meth:`Master.run` is then a loop in the manner of gunicorn's arbiter.  Each turn it

1. waits up to a second for a signal (handlers only append to a queue; ``signal.set_wakeup_fd``
   makes the wait return at once);
2. acts on the queued signals (``_on_hup``, ``_on_term``, ...);
3. reaps dead workers, logging each death with its cause;
4. SIGKILLs workers whose heartbeat is older than ``worker_timeout``, and workers still
   running after their stop deadline;
5. asks :func:`plan_workers` how many workers to spawn and which to retire, and does it,
   respecting the respawn back-off;
6. tells systemd and the status file what changed.

Every worker belongs to a configuration *generation*.  HUP loads the configuration as a new
generation; the plan spawns workers for it and, once all of them have beaten their heartbeat,
retires (TERM) the previous generation, whose workers drain.  The listening sockets belong to the
master and outlive generations, so a reload refuses no connection.  A worker that cannot boot
makes the master stop (or abandon the reload) instead of fork-looping.  The decisions -- how many
workers, which to retire, how long to back off, when deaths mean a crash loop -- are pure
functions at the top of this module, tested without forking.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn, Protocol

from setproctitle import setproctitle

from pop3d import config as config_module
from pop3d import log as log_module
from pop3d.config import Config
from pop3d.errors import EX_SOFTWARE, EXIT_OK, EXIT_WORKER_BOOT_ERROR, ConfigError
from pop3d.heartbeat import Heartbeat, is_stale
from pop3d.pidfile import (
    Pidfile,
    PidfileError,
    remove_status,
    status_due,
    status_path,
    write_status,
)
from pop3d.sdnotify import Notifier
from pop3d.sockets import BindError, Listener, bind_all, close_all, raise_nofile_limit, unused

log = logging.getLogger(__name__)

EXIT_STARTUP_FAILED = 1  # pidfile, bind or privilege problem: no worker ever ran
EXIT_CRASH_LOOP = 4  # workers kept dying right after start (gunicorn: APP_LOAD_ERROR)

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
TICK_SECONDS = 1.0  # longest wait between checks of heartbeats and deadlines
BOOT_POLL_SECONDS = 0.1  # while a worker boots: notice its first beat (READY, reloads) quickly
EARLY_DEATH_SECONDS = 5.0  # a worker dying sooner than this after spawning counts as failing
MAX_EARLY_DEATHS = 5  # consecutive early deaths that mean "crash loop": stop instead
BACKOFF_BASE_SECONDS = 0.5  # respawn delay after the second early death, doubling after that
BACKOFF_MAX_SECONDS = 10.0
FAST_STOP_SECONDS = 2.0  # INT/QUIT: how long workers get to close their sessions
KILL_SLACK_SECONDS = 1.0  # after graceful_timeout, time for a worker to close what is left


class Runnable(Protocol):
    """What a worker factory returns: built in the master, run in the forked child."""

    def run(self) -> int: ...


WorkerFactory = Callable[[int, Config, Sequence[Listener], Heartbeat], Runnable]


class StartError(Exception):
    """The master cannot start; the message is one line for the operator."""


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the decisions need to know about a worker."""

    pid: int
    age: int
    generation: int
    booted: bool
    retiring: bool


@dataclass(frozen=True, slots=True)
class Plan:
    spawn: int = 0
    retire: tuple[int, ...] = ()


def worker_count(configured: int, cpus: int | None) -> int:
    """``server.workers``, where 0 means one per CPU."""
    return configured if configured > 0 else max(1, cpus or 1)


def adjust_target(target: int, delta: int) -> int:
    """TTIN/TTOU: one worker more or fewer, never fewer than one."""
    return max(1, target + delta)


def plan_workers(workers: Iterable[WorkerView], generation: int, target: int) -> Plan:
    """Spawn up to ``target`` workers of ``generation``; retire the oldest surplus ones; retire
    every other generation once ``target`` workers of this one have booted."""
    active = [w for w in workers if not w.retiring]
    current = sorted((w for w in active if w.generation == generation), key=lambda w: w.age)
    surplus = current[: max(0, len(current) - target)]
    kept = current[len(surplus):]
    retire = [w.pid for w in surplus]
    if len(kept) == target and all(w.booted for w in kept):
        retire += [w.pid for w in active if w.generation != generation]
    return Plan(spawn=max(0, target - len(current)), retire=tuple(retire))


def generation_serving(workers: Iterable[WorkerView], generation: int, target: int) -> bool:
    """Whether ``target`` workers of ``generation`` run and all of them have booted."""
    current = [w for w in workers if not w.retiring and w.generation == generation]
    return len(current) >= target and all(w.booted for w in current)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Consecutive early worker deaths and when the next spawn may happen."""

    failures: int = 0
    last_failure: float = float("-inf")
    not_before: float = float("-inf")


def respawn_delay(failures: int) -> float:
    """No delay after one early death; then 0.5 s, 1 s, 2 s ... up to BACKOFF_MAX_SECONDS."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (failures - 2))


def record_death(backoff: Backoff, now: float, lifetime: float, booted: bool) -> Backoff:
    """Account for an unexpected death; only early ones (or before booting) count."""
    if booted and lifetime >= EARLY_DEATH_SECONDS:
        return backoff
    failures = backoff.failures + 1
    return Backoff(failures, now, now + respawn_delay(failures))


def record_health(backoff: Backoff, now: float, workers: Iterable[tuple[float, bool]]) -> Backoff:
    """Forget failures once a worker spawned after the last one has lived past the early window.

    ``workers`` are ``(spawn time, booted)`` pairs."""
    if backoff.failures and any(booted and backoff.last_failure < started <= now -
                                EARLY_DEATH_SECONDS for started, booted in workers):
        return Backoff()
    return backoff


def crash_looping(backoff: Backoff) -> bool:
    return backoff.failures >= MAX_EARLY_DEATHS


_EXIT_NAMES = {EXIT_OK: "clean exit", EXIT_WORKER_BOOT_ERROR: "EXIT_WORKER_BOOT_ERROR",
               EX_SOFTWARE: "crashed"}


def describe_exit(status: int, kill_reason: str | None = None) -> str:
    """A worker's death as the log tells it: exit code or signal, and who sent a SIGKILL."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        name = _EXIT_NAMES.get(code)
        return f"exited with code {code}" + (f" ({name})" if name else "")
    text = f"was killed by signal {signal.Signals(-code).name}"
    if os.WIFSIGNALED(status) and os.WCOREDUMP(status):
        text += " (core dumped)"
    if kill_reason:
        return f"{text} (sent by the master: {kill_reason})"
    if -code == signal.SIGKILL:
        return f"{text} (not sent by the master: out of memory? see the kernel log for the " \
               "OOM killer)"
    return text


def drop_privileges(user: str, group: str, chown: Sequence[str] = ()) -> None:
    """Become ``user``:``group`` (group default: the user's), after chowning ``chown``."""
    if not user:
        return
    try:
        account = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    except KeyError:
        raise StartError(f"cannot drop privileges: no such user {user!r} or group {group!r}") \
            from None
    if os.geteuid() == account.pw_uid and os.getegid() == gid:
        return
    if os.geteuid() != 0:
        raise StartError(f"cannot switch to user {user!r}: the master is not running as root")
    for path in chown:
        os.chown(path, account.pw_uid, gid)
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(account.pw_uid)
    log.info("dropped privileges to %s:%s", user, group or account.pw_gid)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply (the master holds them since start-up)."""
    names = ("pidfile", "user", "group")
    return [f"server.{name} changed: it takes effect at the next restart"
            for name in names if getattr(old.server, name) != getattr(new.server, name)]


def run_worker(worker: Runnable, heartbeat: Heartbeat) -> int:
    """The worker's exit code; an exception escaping ``run`` is logged and becomes a code (a
    failure before the first heartbeat is a boot error, so the master does not respawn it)."""
    try:
        return int(worker.run())
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return EX_SOFTWARE if heartbeat.booted() else EXIT_WORKER_BOOT_ERROR


# --- the master ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    pid: int
    age: int
    generation: int
    heartbeat: Heartbeat
    started: float  # monotonic
    retiring_since: float | None = None  # when TERM (or INT) was sent
    kill_reason: str | None = None  # why the master sent SIGKILL

    def view(self) -> WorkerView:
        return WorkerView(self.pid, self.age, self.generation, self.heartbeat.booted(),
                          self.retiring_since is not None)

    def __str__(self) -> str:
        return f"worker {self.pid} (age {self.age}, generation {self.generation})"


@dataclass(frozen=True, slots=True)
class _Reload:
    """A reload whose workers have not all booted yet, and what to go back to if they fail."""

    serial: int
    config: Config
    generation: int
    target: int
    listeners: list[Listener]
    added: list[Listener]


@dataclass(frozen=True, slots=True)
class _Stop:
    signal: int  # SIGTERM: graceful; SIGINT: fast
    deadline: float  # monotonic; then SIGKILL
    exit_code: int


class Master:
    """Keeps workers built by ``factory`` running for ``config``; see the module docstring.

    ``notifier`` defaults to the ``$NOTIFY_SOCKET`` one.  ``on_worker_exit(pid)``, if given, is
    called in the master after each worker is reaped, to release what a worker killed with
    SIGKILL could not (shared per-user registry entries, for one); its exceptions are logged.
    """

    def __init__(self, config: Config, factory: WorkerFactory, *,
                 notifier: Notifier | None = None,
                 on_worker_exit: Callable[[int], None] | None = None) -> None:
        self.config = config
        self._factory = factory
        self._notifier = notifier or Notifier()
        self._on_worker_exit = on_worker_exit
        self._pidfile = Pidfile(config.server.pidfile)
        self._status_path = status_path(config.server.pidfile)
        self._listeners: list[Listener] = []
        self._workers: dict[int, _Worker] = {}
        self._generation = self._last_generation = 1
        self._target = worker_count(config.server.workers, os.cpu_count())
        self._age = 0
        self._backoff = Backoff()
        self._signals: list[int] = []
        self._wakeup = (-1, -1)
        self._stop: _Stop | None = None
        self._reload: _Reload | None = None
        self._reload_again = False
        self._last_reload: dict[str, Any] = {"serial": 0, "result": None, "error": None}
        self._ready = False
        self._started = time.time()
        self._published: dict[str, Any] | None = None
        self._published_at = 0.0
        self._status_warned = False

    # start-up and shutdown

    def start(self) -> None:
        """Take the pidfile, bind, raise the open-files limit, drop privileges (StartError)."""
        server = self.config.server
        try:
            created = self._make_pidfile_directory()
            self._pidfile.create()
            self._listeners, _ = bind_all(server)
            raise_nofile_limit(server.worker_connections)
            drop_privileges(server.user, server.group, chown=[*created, server.pidfile])
        except (PidfileError, BindError, StartError, OSError) as exc:
            close_all(self._listeners)
            self._pidfile.remove()
            raise StartError(str(exc)) from None
        for listener in self._listeners:
            log.info("listening on %s", listener)

    def _make_pidfile_directory(self) -> list[str]:
        directory = os.path.dirname(os.path.abspath(self._pidfile.path))
        if os.path.isdir(directory):
            return []
        os.makedirs(directory, mode=0o755)
        return [directory]

    def run(self) -> int:
        """The master loop, after :meth:`start`; returns the process exit code."""
        setproctitle(f"pop3d: master [{self.config.path}]")
        self._install_signals()
        log.info("master %d starting %d workers", os.getpid(), self._target)
        self._notifier.status("starting workers")
        try:
            self._manage_workers()
            while self._turn():
                pass
        except Exception:
            log.exception("the master failed; killing its workers")
            self._stop = _Stop(signal.SIGKILL, 0.0, EX_SOFTWARE)
        finally:
            self._shutdown()
        code = self._stop.exit_code if self._stop else EX_SOFTWARE
        log.info("master %d exiting with code %d", os.getpid(), code)
        return code

    def _shutdown(self) -> None:
        for worker in self._workers.values():
            self._signal(worker, signal.SIGKILL)
        for pid in list(self._workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        close_all(self._listeners)
        self._notifier.close()
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for fd in self._wakeup:
            os.close(fd)
        try:
            if self._pidfile.owned():
                remove_status(self._status_path)
            self._pidfile.remove()
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._pidfile.path, exc.strerror)

    # the loop

    def _turn(self) -> bool:
        self._wait()
        for signum in self._take_signals():
            self._dispatch(signum)
        self._reap()
        self._check_heartbeats()
        if self._stop is None:
            self._manage_workers()
        self._kill_overdue()
        self._publish()
        return self._stop is None or bool(self._workers)

    def _install_signals(self) -> None:
        self._wakeup = os.pipe()
        for fd in self._wakeup:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wakeup[1], warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._enqueue)

    def _enqueue(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _wait(self) -> None:
        now = time.monotonic()
        booting = any(not w.booted for w in self._views() if not w.retiring)
        deadlines = [now + (BOOT_POLL_SECONDS if booting else TICK_SECONDS),
                     self._backoff.not_before]
        if self._stop is not None:
            deadlines.append(self._stop.deadline)
        timeout = 0.0 if self._signals else min(d for d in deadlines if d > now) - now
        readable, _, _ = select.select([self._wakeup[0]], [], [], max(0.0, timeout))
        if readable:
            os.read(self._wakeup[0], 4096)

    def _dispatch(self, signum: int) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGHUP: self._on_hup, signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_int, signal.SIGQUIT: self._on_int,
            signal.SIGUSR1: self._on_usr1, signal.SIGTTIN: self._on_ttin,
            signal.SIGTTOU: self._on_ttou,
        }
        handler = handlers.get(signum)  # SIGCHLD only wakes the loop: every turn reaps
        if handler is not None:
            handler()

    # workers

    def _views(self) -> list[WorkerView]:
        return [worker.view() for worker in self._workers.values()]

    def _manage_workers(self) -> None:
        now = time.monotonic()
        spawned = ((w.started, w.heartbeat.booted()) for w in self._workers.values())
        self._backoff = record_health(self._backoff, now, spawned)
        views = self._views()  # one reading of the heartbeats for the plan and the check
        plan = plan_workers(views, self._generation, self._target)
        for pid in plan.retire:
            self._retire(self._workers[pid], now)
        if now >= self._backoff.not_before:
            for _ in range(plan.spawn):
                if not self._spawn():
                    break
        if not plan.spawn and generation_serving(views, self._generation, self._target):
            self._serving()

    def _spawn(self) -> bool:
        self._age += 1
        heartbeat = Heartbeat()
        try:
            worker = self._factory(self._age, self.config, list(self._listeners), heartbeat)
        except Exception:
            heartbeat.close()
            log.exception("cannot build a worker")
            self._cannot_boot("cannot build a worker (see the traceback above)")
            return False
        pid = os.fork()
        if pid == 0:
            self._become_worker(worker, heartbeat)
        self._workers[pid] = _Worker(pid, self._age, self._generation, heartbeat, time.monotonic())
        log.info("spawned worker %d (age %d, generation %d)", pid, self._age, self._generation)
        return True

    def _become_worker(self, worker: Runnable, heartbeat: Heartbeat) -> NoReturn:
        code = EX_SOFTWARE
        try:
            signal.set_wakeup_fd(-1)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            for fd in self._wakeup:
                os.close(fd)
            self._notifier.close()
            for other in self._workers.values():
                other.heartbeat.close()
            if self._reload is not None:  # addresses the new configuration no longer has
                close_all(unused(self._reload.listeners, self._listeners))
            code = run_worker(worker, heartbeat)
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)

    def _retire(self, worker: _Worker, now: float) -> None:
        log.info("%s: retiring it (TERM); it finishes its sessions", worker)
        worker.retiring_since = now
        self._signal(worker, signal.SIGTERM)

    def _signal(self, worker: _Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # dead already: reaped soon
            os.kill(worker.pid, signum)

    def _kill(self, worker: _Worker, reason: str) -> None:
        worker.kill_reason = reason
        self._signal(worker, signal.SIGKILL)

    def _check_heartbeats(self) -> None:
        timeout = self.config.server.worker_timeout
        for worker in self._workers.values():
            age = worker.heartbeat.age_seconds()
            if worker.kill_reason is None and is_stale(age, timeout):
                what = "no heartbeat" if worker.heartbeat.booted() else "not booted"
                reason = f"{what} for {age:.1f} s (worker_timeout {timeout:g} s)"
                log.error("%s: %s; killing it with SIGKILL", worker, reason)
                self._kill(worker, reason)

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        drain = self.config.server.graceful_timeout + KILL_SLACK_SECONDS
        for worker in self._workers.values():
            if worker.kill_reason is not None or worker.retiring_since is None:
                continue
            deadline = self._stop.deadline if self._stop else worker.retiring_since + drain
            if now >= deadline:
                log.warning("%s: still running %.1f s after it was asked to stop; killing it",
                            worker, now - worker.retiring_since)
                self._kill(worker, "did not stop within server.graceful_timeout")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._on_death(worker, status)
                self._after_exit(worker)

    def _after_exit(self, worker: _Worker) -> None:
        """Let the caller clean up after the worker (a SIGKILLed one released nothing)."""
        if self._on_worker_exit is None:
            return
        try:
            self._on_worker_exit(worker.pid)
        except Exception:
            log.exception("cleaning up after %s failed", worker)

    def _on_death(self, worker: _Worker, status: int) -> None:
        booted = worker.heartbeat.booted()
        worker.heartbeat.close()
        expected = worker.retiring_since is not None and worker.kill_reason is None
        level = logging.INFO if expected else logging.ERROR
        log.log(level, "%s %s after %.1f s", worker, describe_exit(status, worker.kill_reason),
                time.monotonic() - worker.started)
        if worker.retiring_since is not None or self._stop is not None:
            return
        if self._reload is not None and worker.generation == self._generation and not booted:
            self._abort_reload(f"{worker} {describe_exit(status)} before booting")
        elif os.waitstatus_to_exitcode(status) == EXIT_WORKER_BOOT_ERROR:
            self._cannot_boot(f"{worker} could not boot")
        else:
            self._count_failure(worker, booted)

    def _count_failure(self, worker: _Worker, booted: bool) -> None:
        now = time.monotonic()
        self._backoff = record_death(self._backoff, now, now - worker.started, booted)
        if crash_looping(self._backoff):
            self._halt(f"workers keep dying right after start ({self._backoff.failures} in a "
                       "row); stopping instead of fork-looping", EXIT_CRASH_LOOP)
        elif self._backoff.not_before > now:
            log.warning("%d early worker deaths in a row; next spawn in %.1f s",
                        self._backoff.failures, self._backoff.not_before - now)

    def _cannot_boot(self, reason: str) -> None:
        if self._reload is not None:
            self._abort_reload(reason)
        else:
            self._halt(f"{reason}; stopping instead of fork-looping", EXIT_WORKER_BOOT_ERROR)

    def _serving(self) -> None:
        if self._reload is not None:
            self._complete_reload(self._reload)
        elif not self._ready:
            log.info("ready: %d workers serving", self._target)
            self._notify_ready("")

    # signals

    def _on_term(self) -> None:
        log.info("SIGTERM: graceful stop; sessions have %g s to finish",
                 self.config.server.graceful_timeout)
        self._begin_stop(graceful=True, exit_code=EXIT_OK)

    def _on_int(self) -> None:
        log.info("SIGINT/SIGQUIT: fast stop; workers close their sessions now")
        self._begin_stop(graceful=False, exit_code=EXIT_OK)

    def _halt(self, message: str, exit_code: int) -> None:
        log.error("%s", message)
        self._begin_stop(graceful=True, exit_code=exit_code)

    def _begin_stop(self, graceful: bool, exit_code: int) -> None:
        previous = self._stop
        if previous is not None and (graceful or previous.signal == signal.SIGINT):
            return  # already stopping at least this fast
        now = time.monotonic()
        timeout = self.config.server.graceful_timeout
        deadline = now + (timeout + KILL_SLACK_SECONDS if graceful
                          else min(FAST_STOP_SECONDS, timeout))
        if previous is not None:
            exit_code, deadline = previous.exit_code, min(previous.deadline, deadline)
        signum = signal.SIGTERM if graceful else signal.SIGINT
        self._stop = _Stop(signum, deadline, exit_code)
        self._notifier.stopping("stopping")
        close_all(self._listeners)
        for worker in self._workers.values():
            worker.retiring_since = worker.retiring_since or now
            self._signal(worker, signum)

    def _on_usr1(self) -> None:
        try:
            log_module.reopen()
        except OSError as exc:
            log.error("SIGUSR1: cannot reopen the log file: %s", exc)
        log.info("SIGUSR1: reopened log files; forwarding to the workers")
        for worker in self._workers.values():
            self._signal(worker, signal.SIGUSR1)

    def _on_ttin(self) -> None:
        self._resize(+1, "SIGTTIN")

    def _on_ttou(self) -> None:
        self._resize(-1, "SIGTTOU")

    def _resize(self, delta: int, name: str) -> None:
        if self._stop is None:
            self._target = adjust_target(self._target, delta)
            log.info("%s: %d workers wanted", name, self._target)

    # reload

    def _on_hup(self) -> None:
        if self._stop is not None:
            return
        if self._reload is not None:
            log.info("SIGHUP: a reload is in progress; reloading again when it ends")
            self._reload_again = True
            return
        serial = self._last_reload["serial"] + 1
        self._set_reload(serial, "pending", None)
        if self._ready:  # systemd hears of reloads only once it has heard READY=1
            self._notifier.reloading("reloading the configuration")
        log.info("SIGHUP: reloading %s", self.config.path)
        try:
            new, warnings = config_module.load(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            self._reload_failed(serial, "; ".join(str(p) for p in exc.problems))
            return
        for warning in [*warnings, *restart_only_changes(self.config, new)]:
            log.warning("reload: %s", warning)
        self._apply(serial, new)

    def _apply(self, serial: int, new: Config) -> None:
        try:
            listeners, added = bind_all(new.server, self._listeners)
        except BindError as exc:
            log.error("reload: %s", exc)
            self._reload_failed(serial, str(exc))
            return
        try:
            log_module.setup(new.logging.level, new.logging.file)
        except OSError as exc:
            self._restore_logging()
            close_all(added)
            log.error("reload: cannot open the log file: %s", exc)
            self._reload_failed(serial, f"cannot open the log file: {exc}")
            return
        self._reload = _Reload(serial, self.config, self._generation, self._target,
                               self._listeners, added)
        self.config, self._listeners = new, listeners
        self._last_generation += 1
        self._generation = self._last_generation
        self._target = worker_count(new.server.workers, os.cpu_count())
        for listener in added:
            log.info("reload: listening on %s", listener)
        log.info("reload: generation %d starts %d workers; the others retire once they serve",
                 self._generation, self._target)

    def _complete_reload(self, reload: _Reload) -> None:
        self._reload = None
        close_all(unused(reload.listeners, self._listeners))
        self._set_reload(reload.serial, "ok", None)
        log.info("reload complete: generation %d serving with %d workers",
                 self._generation, self._target)
        self._notify_ready("")
        self._after_reload()

    def _abort_reload(self, reason: str) -> None:
        reload, self._reload = self._reload, None
        if reload is None:
            return
        now = time.monotonic()
        for worker in self._workers.values():
            if worker.generation == self._generation and worker.retiring_since is None:
                self._retire(worker, now)
        close_all(reload.added)
        abandoned = self._generation
        self.config, self._generation = reload.config, reload.generation
        self._target, self._listeners = reload.target, reload.listeners
        self._restore_logging()
        message = f"generation {abandoned} abandoned, generation {self._generation} keeps " \
                  f"serving: {reason}"
        log.error("reload: %s", message)
        self._reload_failed(reload.serial, message)

    def _restore_logging(self) -> None:
        log_module.setup(self.config.logging.level, self.config.logging.file)

    def _reload_failed(self, serial: int, error: str) -> None:
        self._set_reload(serial, "failed", error)
        if self._ready:
            self._notify_ready("; last reload failed")
        self._after_reload()

    def _notify_ready(self, note: str) -> None:
        self._ready = True
        self._notifier.ready(self._summary() + note)

    def _after_reload(self) -> None:
        if self._reload_again:
            self._reload_again = False
            self._signals.append(signal.SIGHUP)

    def _set_reload(self, serial: int, result: str, error: str | None) -> None:
        self._last_reload = {"serial": serial, "result": result, "error": error,
                             "time": time.time()}

    # reporting

    def _summary(self) -> str:
        sessions = sum(w.heartbeat.sessions() for w in self._workers.values())
        return f"{len(self._workers)} workers, {sessions} sessions"

    def _state(self) -> str:
        if self._stop is not None:
            return "stopping"
        if self._reload is not None:
            return "reloading"
        return "running" if self._ready else "starting"

    def snapshot(self) -> dict[str, Any]:
        """What the status file says (without its ``updated`` time)."""
        workers = [{"pid": w.pid, "age": w.age, "generation": w.generation,
                    "sessions": w.heartbeat.sessions(), "booted": w.heartbeat.booted(),
                    "retiring": w.retiring_since is not None}
                   for w in sorted(self._workers.values(), key=lambda w: w.age)]
        return {"pid": os.getpid(), "started": self._started,
                "config": os.path.abspath(self.config.path), "generation": self._generation,
                "state": self._state(), "workers_wanted": self._target, "workers": workers,
                "sessions": sum(w["sessions"] for w in workers), "reload": self._last_reload}

    def _publish(self) -> None:
        snapshot, now = self.snapshot(), time.monotonic()
        if not status_due(self._published, snapshot, self._published_at, now):
            return
        self._published, self._published_at = snapshot, now
        self._notifier.status(self._summary())
        try:
            write_status(self._status_path, {**snapshot, "updated": time.time()})
        except OSError as exc:
            if not self._status_warned:
                log.warning("cannot write the status file %s: %s (`pop3d status` and "
                            "`pop3d reload` cannot see this master)", self._status_path, exc)
                self._status_warned = True
