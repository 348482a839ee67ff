"""A worker process as the master knows it, and what runs in the child after ``fork``.

A factory builds the worker object in the master (so a broken factory stops the master instead
of fork-looping); the forked child only calls :func:`run_worker` on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from pop3d.handoff import EXIT_WORKER_BOOT_ERROR, EXIT_WORKER_CRASHED, Runnable
from pop3d.heartbeat import Heartbeat
from pop3d.master.plan import WorkerView

log = logging.getLogger("pop3d.master")  # one name for the whole master in the log


@dataclass(slots=True)
class WorkerProcess:
    """A forked worker: its identity, heartbeat, and whether the master asked it to stop."""

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

    def send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # dead already: reaped soon
            os.kill(self.pid, signum)

    def stop(self, signum: int, now: float) -> None:
        """Ask it to stop (TERM: drain; INT: close sessions now), remembering since when."""
        if self.retiring_since is None:
            self.retiring_since = now
        self.send(signum)

    def kill(self, reason: str) -> None:
        self.kill_reason = reason
        self.send(signal.SIGKILL)

    def __str__(self) -> str:
        return f"worker {self.pid} (age {self.age}, generation {self.generation})"


def run_worker(worker: Runnable, heartbeat: Heartbeat) -> int:
    """The worker's exit code; an exception escaping ``run`` is logged and becomes a code (a
    failure before the first heartbeat is a boot error, so the master does not respawn it)."""
    try:
        return int(worker.run())
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return EXIT_WORKER_CRASHED if heartbeat.booted() else EXIT_WORKER_BOOT_ERROR
