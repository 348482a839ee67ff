"""The worker's wakeup socket: how signals and finished logins interrupt its ``select``.

A plain Python handler runs between bytecodes, so it cannot wake a ``select`` already waiting;
``signal.set_wakeup_fd`` writes the signal's number to a socket the loop watches.  The threads of
the authentication pool write :data:`JOB_DONE` to the same socket when a login finishes.  The
loop reads what arrived and acts on the signals itself.
"""

from __future__ import annotations

import contextlib
import signal
import socket

FAST_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
JOB_DONE = b"\0"  # written to the wakeup socket by the auth thread pool; signals write 1..64
_DRAIN_BYTES = 4096  # wakeup bytes read per wakeup; a signal counts once however often it came


class Wakeup:
    """A non-blocking socket pair: the loop selects on :attr:`reader`; signals and
    :meth:`job_done` write to the other end."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        for sock in (self.reader, self._writer):
            sock.setblocking(False)

    def install_signals(self) -> None:
        """TERM, INT, QUIT and USR1 wake the loop; HUP, TTIN and TTOU (the master's) are
        ignored; CHLD gets its default back."""
        # Handlers must be Python callables for set_wakeup_fd to fire; the loop does the work.
        for sig in (signal.SIGTERM, *FAST_SIGNALS, signal.SIGUSR1):
            signal.signal(sig, _record_signal)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def job_done(self) -> None:
        """From a pool thread: wake the loop to collect a finished job."""
        with contextlib.suppress(OSError):  # a full wakeup socket means the loop is awake
            self._writer.send(JOB_DONE)

    def signals(self) -> list[int]:
        """The signals that arrived since the last call, each once, in arrival order."""
        try:
            data = self.reader.recv(_DRAIN_BYTES)
        except (BlockingIOError, InterruptedError):
            return []
        return [signum for signum in dict.fromkeys(data) if signum != JOB_DONE[0]]


def _record_signal(signum: int, frame: object) -> None:
    """Installed so set_wakeup_fd delivers the signal number to the loop."""
