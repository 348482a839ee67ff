"""Exit codes: the master's own, and how the log tells a worker's death."""

from __future__ import annotations

import os
import signal

from pop3d.handoff import EXIT_OK, EXIT_WORKER_BOOT_ERROR, EXIT_WORKER_CRASHED

EXIT_STARTUP_FAILED = 1  # pidfile, bind or privilege problem: no worker ever ran
EXIT_CRASH_LOOP = 4  # workers kept dying right after start (gunicorn: APP_LOAD_ERROR)
EXIT_MASTER_FAILED = 70  # an exception in the master itself (sysexits EX_SOFTWARE)

_EXIT_NAMES = {EXIT_OK: "clean exit", EXIT_WORKER_BOOT_ERROR: "EXIT_WORKER_BOOT_ERROR",
               EXIT_WORKER_CRASHED: "crashed"}


def signal_name(signum: int) -> str:
    """``SIGTERM``; real-time signals (``SIGRTMIN+3``) are not in :class:`signal.Signals`."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return str(signum)


def describe_exit(status: int, kill_reason: str | None = None) -> str:
    """A worker's death as the log tells it: exit code or signal, and who sent a SIGKILL."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        name = _EXIT_NAMES.get(code)
        return f"exited with code {code}" + (f" ({name})" if name else "")
    text = f"was killed by signal {signal_name(-code)}"
    if os.WIFSIGNALED(status) and os.WCOREDUMP(status):
        text += " (core dumped)"
    if kill_reason:
        return f"{text} (sent by the master: {kill_reason})"
    if -code == signal.SIGKILL:
        return f"{text} (not sent by the master: out of memory? see the kernel log for the " \
               "OOM killer)"
    return text


def is_boot_error(status: int) -> bool:
    """Whether the worker exited saying it cannot boot (then respawning it cannot help)."""
    return os.waitstatus_to_exitcode(status) == EXIT_WORKER_BOOT_ERROR
