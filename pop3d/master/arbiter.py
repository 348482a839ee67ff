"""The master loop, in the manner of gunicorn's arbiter (see :mod:`pop3d.master`).

This module does the process work (fork, kill, waitpid, sd_notify); every decision it acts on
comes from :mod:`pop3d.master.plan`, and reloads are bookkept by
:mod:`pop3d.master.generations`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from setproctitle import setproctitle

from pop3d import log as log_module
from pop3d.config import Config
from pop3d.handoff import (
    EXIT_OK,
    EXIT_WORKER_BOOT_ERROR,
    EXIT_WORKER_CRASHED,
    Runnable,
    WorkerFactory,
)
from pop3d.heartbeat import Heartbeat
from pop3d.master import plan
from pop3d.master.exits import EXIT_CRASH_LOOP, EXIT_MASTER_FAILED, describe_exit, is_boot_error
from pop3d.master.generations import Generations
from pop3d.master.listeners import close_all
from pop3d.master.pidfile import Pidfile, status_path
from pop3d.master.sdnotify import Notifier
from pop3d.master.signals import SignalQueue
from pop3d.master.startup import acquire
from pop3d.master.status import CountsReport, StatusFile, state_name, summary, worker_entries
from pop3d.master.workers import WorkerProcess, run_worker

log = logging.getLogger("pop3d.master")  # one name for the whole master in the log


class Master:
    """Keeps workers built by ``factory`` running for ``config``; see :mod:`pop3d.master`.

    ``notifier`` defaults to the ``$NOTIFY_SOCKET`` one.  ``on_worker_exit(pid)``, if given, is
    called in the master after each worker is reaped, to release what a worker killed with
    SIGKILL could not (shared per-user registry entries, for one); its exceptions are logged.

    ``on_status(sessions, workers)``, if given, is called from the loop with the sessions open
    in all workers together (from their heartbeats) and the number of worker processes: at once
    when the number of workers changes, else once a second, and a last time with ``(0, 0)`` as
    the master exits.  It is how absolute gauges reach statsd (``sessions.active``, ``workers``):
    counts kept by the workers themselves drift when one is killed.  Its exceptions are logged
    (once, until a call succeeds again).
    """

    def __init__(self, config: Config, factory: WorkerFactory, *,
                 notifier: Notifier | None = None,
                 on_worker_exit: Callable[[int], None] | None = None,
                 on_status: Callable[[int, int], None] | None = None) -> None:
        self._factory = factory
        self._notifier = notifier or Notifier()
        self._on_worker_exit = on_worker_exit
        self._counts = CountsReport(on_status)
        self._pidfile = Pidfile(config.server.pidfile)
        self._status = StatusFile(status_path(config.server.pidfile), self._notifier)
        self._generations = Generations(config)
        self._workers: dict[int, WorkerProcess] = {}
        self._age = 0
        self._backoff = plan.Backoff()
        self._signals = SignalQueue()
        self._stop: plan.Stop | None = None
        self._ready = False
        self._started = time.time()

    @property
    def config(self) -> Config:
        """The configuration being served (during a reload, the one being started)."""
        return self._generations.current.config

    # start-up and shutdown

    def start(self) -> None:
        """Check that the service user can open the files it will need, take the pidfile, bind,
        raise the open-files limit, drop privileges (StartError)."""
        self._generations.listen(acquire(self.config, self._pidfile))

    def run(self) -> int:
        """The master loop, after :meth:`start`; returns the process exit code."""
        setproctitle(f"pop3d: master [{self.config.path}]")
        self._signals.install()
        log.info("master %d starting %d workers", os.getpid(), self._generations.current.target)
        self._notifier.status("starting workers")
        try:
            self._manage_workers()
            while self._turn():
                pass
        except Exception as exc:
            log.exception("the master failed; killing its workers")
            self._notifier.stopping(f"the master failed: {exc!r}")
            self._stop = plan.Stop(graceful=False, deadline=0.0, exit_code=EXIT_MASTER_FAILED)
        finally:
            self._shutdown()
        code = self._stop.exit_code if self._stop else EXIT_MASTER_FAILED
        log.info("master %d exiting with code %d", os.getpid(), code)
        return code

    def _shutdown(self) -> None:
        for worker in self._workers.values():
            worker.send(signal.SIGKILL)
        for worker in list(self._workers.values()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
            self._after_exit(worker)
        self._workers.clear()
        self._counts.report(0, 0, force=True)
        close_all(self._generations.held())
        self._notifier.close()
        self._signals.uninstall()
        try:
            if self._pidfile.owned():
                self._status.remove()
            self._pidfile.remove()
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._pidfile.path, exc.strerror)

    # the loop

    def _turn(self) -> bool:
        self._wait()
        for signum in self._signals.take():
            self._dispatch(signum)
        self._reap()
        self._check_heartbeats()
        if self._stop is None:
            self._manage_workers()
        self._kill_overdue()
        snapshot = self.snapshot()
        self._status.publish(snapshot)
        self._counts.report(snapshot["sessions"], len(snapshot["workers"]))
        return self._stop is None or bool(self._workers)

    def _wait(self) -> None:
        deadlines = [self._backoff.not_before]
        if self._stop is not None:
            deadlines.append(self._stop.deadline)
        timeout = plan.wait_seconds(time.monotonic(), booting=plan.booting(self._views()),
                                    signals_pending=self._signals.pending(), deadlines=deadlines)
        self._signals.wait(timeout)

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

    def _views(self) -> list[plan.WorkerView]:
        return [worker.view() for worker in self._workers.values()]

    def _manage_workers(self) -> None:
        now = time.monotonic()
        spawned = ((w.started, w.heartbeat.booted()) for w in self._workers.values())
        self._backoff = plan.record_health(self._backoff, now, spawned)
        views = self._views()  # one reading of the heartbeats for the plan and the check
        current = self._generations.current
        wanted = plan.plan_workers(views, current.number, current.target)
        for pid in wanted.retire:
            self._retire(self._workers[pid], now)
        if now >= self._backoff.not_before:
            for _ in range(wanted.spawn):
                if not self._spawn():
                    break
        if not wanted.spawn and plan.generation_serving(views, current.number, current.target):
            self._serving()

    def _spawn(self) -> bool:
        self._age += 1
        current = self._generations.current
        heartbeat = Heartbeat()
        try:
            worker = self._factory(self._age, current.config, list(current.listeners), heartbeat)
        except Exception:
            heartbeat.close()
            log.exception("cannot build a worker")
            self._cannot_boot("cannot build a worker (see the traceback above)")
            return False
        pid = os.fork()
        if pid == 0:
            self._become_worker(worker, heartbeat)
        self._workers[pid] = WorkerProcess(pid, self._age, current.number, heartbeat,
                                           time.monotonic())
        log.info("spawned worker %d (age %d, generation %d)", pid, self._age, current.number)
        return True

    def _become_worker(self, worker: Runnable, heartbeat: Heartbeat) -> NoReturn:
        code = EXIT_WORKER_CRASHED
        try:
            self._signals.uninstall()
            self._notifier.close()
            for other in self._workers.values():
                other.heartbeat.close()
            close_all(self._generations.dropped())  # addresses the new configuration lacks
            code = run_worker(worker, heartbeat)
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)

    def _retire(self, worker: WorkerProcess, now: float) -> None:
        log.info("%s: retiring it (TERM); it finishes its sessions", worker)
        worker.stop(signal.SIGTERM, now)

    def _check_heartbeats(self) -> None:
        timeout = self.config.server.worker_timeout
        for worker in self._workers.values():
            if worker.kill_reason is not None:
                continue
            beat = worker.heartbeat
            reason = plan.stale_reason(beat.age_seconds(), beat.booted(), timeout)
            if reason is not None:
                log.error("%s: %s; killing it with SIGKILL", worker, reason)
                worker.kill(reason)

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        timeout = self.config.server.graceful_timeout
        for worker in self._workers.values():
            if worker.kill_reason is not None or worker.retiring_since is None:
                continue
            if now >= plan.kill_deadline(worker.retiring_since, self._stop, timeout):
                log.warning("%s: still running %.1f s after it was asked to stop; killing it",
                            worker, now - worker.retiring_since)
                worker.kill("did not stop within server.graceful_timeout")

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

    def _after_exit(self, worker: WorkerProcess) -> None:
        """Let the caller clean up after the worker (a SIGKILLed one released nothing)."""
        if self._on_worker_exit is None:
            return
        try:
            self._on_worker_exit(worker.pid)
        except Exception:
            log.exception("cleaning up after %s failed", worker)

    def _on_death(self, worker: WorkerProcess, status: int) -> None:
        view = worker.view()  # before its heartbeat closes
        worker.heartbeat.close()
        expected = worker.retiring_since is not None and worker.kill_reason is None
        log.log(logging.INFO if expected else logging.ERROR, "%s %s after %.1f s", worker,
                describe_exit(status, worker.kill_reason), time.monotonic() - worker.started)
        death = plan.judge_death(view, stopping=self._stop is not None,
                                 reloading=self._generations.reload is not None,
                                 generation=self._generations.current.number,
                                 boot_error=is_boot_error(status))
        if death is plan.Death.ABORTS_RELOAD:
            self._abort_reload(f"{worker} {describe_exit(status)} before booting")
        elif death is plan.Death.CANNOT_BOOT:
            self._cannot_boot(f"{worker} could not boot")
        elif death is plan.Death.FAILURE:
            self._count_failure(worker, view.booted)

    def _count_failure(self, worker: WorkerProcess, booted: bool) -> None:
        now = time.monotonic()
        self._backoff = plan.record_death(self._backoff, now, now - worker.started, booted)
        if plan.crash_looping(self._backoff):
            self._halt(f"workers keep dying right after start ({self._backoff.failures} in a "
                       "row); stopping instead of fork-looping", EXIT_CRASH_LOOP)
        elif self._backoff.not_before > now:
            log.warning("%d early worker deaths in a row; next spawn in %.1f s",
                        self._backoff.failures, self._backoff.not_before - now)

    def _cannot_boot(self, reason: str) -> None:
        if self._generations.reload is not None:
            self._abort_reload(reason)
        else:
            self._halt(f"{reason}; stopping instead of fork-looping", EXIT_WORKER_BOOT_ERROR)

    def _serving(self) -> None:
        if self._generations.reload is not None:
            self._complete_reload()
        elif not self._ready:
            log.info("ready: %d workers serving", self._generations.current.target)
            self._notify_ready("")

    # signals

    def _on_term(self) -> None:
        log.info("SIGTERM: graceful stop; sessions have %g s to finish",
                 self.config.server.graceful_timeout)
        self._begin_stop(graceful=True, exit_code=EXIT_OK, reason="stopping (SIGTERM)")

    def _on_int(self) -> None:
        log.info("SIGINT/SIGQUIT: fast stop; workers close their sessions now")
        self._begin_stop(graceful=False, exit_code=EXIT_OK, reason="stopping (SIGINT/SIGQUIT)")

    def _halt(self, message: str, exit_code: int) -> None:
        log.error("%s", message)
        self._begin_stop(graceful=True, exit_code=exit_code, reason=message)

    def _begin_stop(self, graceful: bool, exit_code: int, reason: str) -> None:
        """Stop; ``reason`` is the STATUS systemd shows (and what ``start --daemon`` reports
        when the master stops before it served)."""
        now = time.monotonic()
        stop = plan.next_stop(self._stop, graceful, now, self.config.server.graceful_timeout,
                              exit_code)
        if stop is None:
            return  # already stopping at least this fast
        self._stop = stop
        self._notifier.stopping(reason)
        close_all(self._generations.held())
        signum = signal.SIGTERM if graceful else signal.SIGINT
        for worker in self._workers.values():
            worker.stop(signum, now)

    def _on_usr1(self) -> None:
        if log_module.reopen():
            log.info("SIGUSR1: reopened log files; forwarding to the workers")
        else:
            log.info("SIGUSR1: forwarding to the workers")
        for worker in self._workers.values():
            worker.send(signal.SIGUSR1)

    def _on_ttin(self) -> None:
        self._resize(+1, "SIGTTIN")

    def _on_ttou(self) -> None:
        self._resize(-1, "SIGTTOU")

    def _resize(self, delta: int, name: str) -> None:
        if self._stop is None:
            log.info("%s: %d workers wanted", name, self._generations.resize(delta))

    # reload

    def _on_hup(self) -> None:
        if self._stop is not None:
            return
        serial = self._generations.begin()
        if serial is None:
            return
        if self._ready:  # systemd hears of reloads only once it has heard READY=1
            self._notifier.reloading("reloading the configuration")
        if not self._generations.load(serial):
            self._reload_failed()

    def _complete_reload(self) -> None:
        self._generations.complete()
        self._notify_ready("")
        self._after_reload()

    def _abort_reload(self, reason: str) -> None:
        if self._generations.reload is None:
            return
        now, abandoned = time.monotonic(), self._generations.current.number
        for worker in self._workers.values():
            if worker.generation == abandoned and worker.retiring_since is None:
                self._retire(worker, now)
        self._generations.abort(reason)
        self._reload_failed()

    def _reload_failed(self) -> None:
        if self._ready:
            self._notify_ready("; last reload failed")
        self._after_reload()

    def _after_reload(self) -> None:
        if self._generations.take_again():
            self._signals.push(signal.SIGHUP)

    def _notify_ready(self, note: str) -> None:
        self._ready = True
        snapshot = self.snapshot()
        self._status.publish(snapshot)  # first: whoever hears READY reads the status file next
        self._notifier.ready(summary(snapshot) + note)

    # reporting

    def snapshot(self) -> dict[str, Any]:
        """What the status file says (without its ``updated`` time)."""
        workers = worker_entries(self._workers.values())
        current = self._generations.current
        state = state_name(stopping=self._stop is not None,
                           reloading=self._generations.reload is not None, ready=self._ready)
        return {"pid": os.getpid(), "started": self._started,
                "config": os.path.abspath(current.config.path), "generation": current.number,
                "state": state, "workers_wanted": current.target, "workers": workers,
                "sessions": sum(w["sessions"] for w in workers),
                "reload": self._generations.result}
