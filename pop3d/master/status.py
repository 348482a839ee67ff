"""What the master tells the world: the status file next to the pidfile, sd_notify STATUS=,
and the session and worker counts for the caller's ``on_status``.

``pop3d status`` and ``pop3d reload`` read the status file (:mod:`pop3d.pidfile`); it is
rewritten when something but the session counts changed, and at a bounded rate otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pop3d.master import plan
from pop3d.master.pidfile import remove_status, status_due, write_status
from pop3d.master.sdnotify import Notifier
from pop3d.master.workers import WorkerProcess

log = logging.getLogger("pop3d.master")  # one name for the whole master in the log


def state_name(*, stopping: bool, reloading: bool, ready: bool) -> str:
    if stopping:
        return "stopping"
    if reloading:
        return "reloading"
    return "running" if ready else "starting"


def worker_entries(workers: Iterable[WorkerProcess]) -> list[dict[str, Any]]:
    """One entry per worker, oldest first, as the status file lists them."""
    return [{"pid": w.pid, "age": w.age, "generation": w.generation,
             "sessions": w.heartbeat.sessions(), "booted": w.heartbeat.booted(),
             "retiring": w.retiring_since is not None}
            for w in sorted(workers, key=lambda w: w.age)]


def summary(snapshot: dict[str, Any]) -> str:
    """The one line systemd shows (STATUS=) and READY=1 carries."""
    return f"{len(snapshot['workers'])} workers, {snapshot['sessions']} sessions"


class StatusFile:
    """Publishes snapshots: to the status file when due, and to systemd as a summary."""

    def __init__(self, path: str, notifier: Notifier) -> None:
        self.path = path
        self._notifier = notifier
        self._published: dict[str, Any] | None = None
        self._published_at = 0.0
        self._warned = False

    def publish(self, snapshot: dict[str, Any]) -> None:
        now = time.monotonic()
        if not status_due(self._published, snapshot, self._published_at, now):
            return
        self._published, self._published_at = snapshot, now
        self._notifier.status(summary(snapshot))
        try:
            write_status(self.path, {**snapshot, "updated": time.time()})
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write the status file %s: %s (`pop3d status` and "
                            "`pop3d reload` cannot see this master)", self.path, exc)
                self._warned = True

    def remove(self) -> None:
        remove_status(self.path)


class CountsReport:
    """Tells ``on_status(sessions, workers)`` (see :class:`~pop3d.master.Master`) the counts when
    :func:`~pop3d.master.plan.report_due` says so, or when forced; its exceptions are logged
    once, until a call succeeds again."""

    def __init__(self, on_status: Callable[[int, int], None] | None) -> None:
        self._on_status = on_status
        self._reported: tuple[int, int] | None = None  # what on_status was last told
        self._reported_at = 0.0
        self._failing = False

    def report(self, sessions: int, workers: int, force: bool = False) -> None:
        if self._on_status is None:
            return
        now = time.monotonic()
        current = (sessions, workers)
        if not force and not plan.report_due(self._reported, current, self._reported_at, now):
            return
        self._reported, self._reported_at = current, now
        try:
            self._on_status(sessions, workers)
        except Exception:
            if not self._failing:
                log.exception("reporting %d sessions and %d workers failed", sessions, workers)
            self._failing = True
        else:
            self._failing = False
