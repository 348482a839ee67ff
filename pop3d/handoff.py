"""What crosses ``fork()``: the listening sockets, the worker factory and the worker exit codes.

The master binds the listeners and builds each worker with a factory before it forks; the child
runs the worker and exits with one of the codes below, which the master reads after reaping it.
Both sides import this module and nothing of each other (ARCHITECTURE §2).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pop3d.config import Address, Config
from pop3d.heartbeat import Heartbeat

# A worker that cannot boot exits with a code the master recognises and stops instead of
# fork-looping (gunicorn's convention).
EXIT_OK = 0
EXIT_WORKER_BOOT_ERROR = 3
EXIT_WORKER_CRASHED = 70  # an exception escaped the worker after it booted (sysexits EX_SOFTWARE)


@dataclass(frozen=True, slots=True)
class Listener:
    """A bound, listening, non-blocking socket and what it is for."""

    sock: socket.socket
    address: Address
    tls: bool  # implicit TLS (tls_listen); False: plain with STLS offered (listen)

    def __str__(self) -> str:
        return f"{self.address} ({'implicit TLS' if self.tls else 'plain/STLS'})"


class Runnable(Protocol):
    """What a worker factory returns: built in the master, run in the forked child."""

    def run(self) -> int: ...


WorkerFactory = Callable[[int, Config, Sequence[Listener], Heartbeat], Runnable]
