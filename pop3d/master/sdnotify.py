"""systemd's readiness protocol (sd_notify), spoken directly over an AF_UNIX datagram socket.

``$NOTIFY_SOCKET`` names the socket: a filesystem path, or an abstract-namespace name written
with a leading ``@``.  Each notification is one datagram of newline-separated ``KEY=VALUE``
assignments.  pop3d sends ``READY=1`` when its workers serve, ``RELOADING=1`` together with
``MONOTONIC_USEC=`` (what ``Type=notify-reload`` requires) when a reload starts and ``READY=1``
again when it ends, ``STOPPING=1`` when it stops, ``STATUS=`` for ``systemctl status`` and
``MAINPID=`` so systemd follows the master even after ``--daemon``.  Without ``$NOTIFY_SOCKET``
every call does nothing.  A failed send is logged once and never stops the server.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value; None when unusable."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def format_message(fields: Mapping[str, object]) -> bytes:
    """``{"READY": 1, "STATUS": "x"}`` -> ``b"READY=1\\nSTATUS=x\\n"``; newlines in values would
    start a new assignment, so they become spaces."""
    lines = (f"{key}={str(value).replace(chr(10), ' ')}\n" for key, value in fields.items())
    return "".join(lines).encode("utf-8")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd compares it for RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to the service manager named by ``$NOTIFY_SOCKET``, if any."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        value = environ.get(ENVIRONMENT_VARIABLE, "")
        self._address = socket_address(value)
        self._sock: socket.socket | None = None
        self._warned = False
        if value and self._address is None:
            log.warning("%s=%r is not a socket path or @name; not notifying systemd",
                        ENVIRONMENT_VARIABLE, value)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, fields: Mapping[str, object]) -> bool:
        """Send one notification; True when it was handed to the socket."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(format_message(fields), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", ENVIRONMENT_VARIABLE, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send({"READY": 1, "STATUS": status, "MAINPID": os.getpid()})

    def reloading(self, status: str) -> bool:
        return self.send({"RELOADING": 1, "STATUS": status, "MONOTONIC_USEC": monotonic_usec()})

    def stopping(self, status: str) -> bool:
        return self.send({"STOPPING": 1, "STATUS": status})

    def status(self, status: str) -> bool:
        return self.send({"STATUS": status})

    def close(self) -> None:
        """Close the socket (workers do this after fork: only the master notifies)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
