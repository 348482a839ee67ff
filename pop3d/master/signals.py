"""The master's signals: handlers only enqueue; the loop takes them in order and acts.

A plain Python handler runs between bytecodes, so it cannot wake a ``select`` already waiting;
``signal.set_wakeup_fd`` writes the signal number to a pipe the loop waits on, so a signal ends the
wait at once.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
_DRAIN_BYTES = 4096  # wakeup bytes read per wait; the queue, not the pipe, counts signals


class SignalQueue:
    """Signals received and not yet acted on, and the wakeup pipe that ends :meth:`wait`."""

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._wakeup = (-1, -1)

    def install(self) -> None:
        """Handle :data:`HANDLED_SIGNALS` by enqueueing them."""
        self._wakeup = os.pipe()
        for fd in self._wakeup:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wakeup[1], warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Default dispositions again, and the pipe closed (in the master, and in a new worker,
        which must not keep the master's handlers or descriptors)."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for fd in self._wakeup:
            if fd >= 0:
                os.close(fd)
        self._wakeup = (-1, -1)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.push(signum)

    def push(self, signum: int) -> None:
        """Queue ``signum`` as if it had been received (a deferred HUP, for one)."""
        self._pending.append(signum)

    def pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[int]:
        """The queued signals, oldest first; the queue is empty afterwards."""
        taken, self._pending = self._pending, []
        return taken

    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or as soon as a signal arrives."""
        readable, _, _ = select.select([self._wakeup[0]], [], [], timeout)
        if readable:
            os.read(self._wakeup[0], _DRAIN_BYTES)
