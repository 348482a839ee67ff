"""Worker liveness: a 20-byte anonymous file the worker rewrites and the master reads.

The master creates one :class:`Heartbeat` per worker before ``fork()``; both processes then hold
the same file.  The worker calls :meth:`Heartbeat.beat` about once a second with its session
count: one ``pwrite`` of a fixed record (the beat's ``CLOCK_MONOTONIC`` time, the session count
and a CRC).  The master reads the record with one ``pread``.  A monotonic timestamp in the record,
rather than the file's mtime, makes the age immune to wall-clock steps (NTP, manual changes), and
the CRC lets the master ignore a record it happened to read while the worker was rewriting it.
The file lives in memory (``memfd_create``) where available, else it is an unlinked temp file.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable

# Last beat (monotonic seconds), sessions (NOT_BOOTED until the first beat), CRC32 of the two.
_RECORD = struct.Struct("=dqI")
_PAYLOAD = struct.Struct("=dq")
NOT_BOOTED = -1
_READ_ATTEMPTS = 3  # a torn read needs a concurrent write; three in a row means a broken file


def encode(beat_time: float, sessions: int) -> bytes:
    """The on-file record for a beat at ``beat_time`` with ``sessions`` open sessions."""
    payload = _PAYLOAD.pack(beat_time, sessions)
    return payload + struct.pack("=I", zlib.crc32(payload))


def decode(record: bytes) -> tuple[float, int] | None:
    """``(beat_time, sessions)``, or None for a short or torn record."""
    if len(record) != _RECORD.size:
        return None
    beat_time, sessions, crc = _RECORD.unpack(record)
    if zlib.crc32(record[: _PAYLOAD.size]) != crc:
        return None
    return beat_time, sessions


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("pop3d-heartbeat", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile(prefix="pop3d-heartbeat-") as f:
        return os.dup(f.fileno())


class Heartbeat:
    """One worker's heartbeat; :meth:`beat` in the worker, the rest in the master."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._fd = _anonymous_file()
        self._last: tuple[float, int] = (clock(), NOT_BOOTED)
        os.pwrite(self._fd, encode(*self._last), 0)

    def beat(self, sessions: int) -> None:
        """Worker side: "alive, accepting, serving ``sessions``".  One syscall."""
        os.pwrite(self._fd, encode(self._clock(), max(0, sessions)), 0)

    def _read(self) -> tuple[float, int]:
        for _ in range(_READ_ATTEMPTS):
            record = decode(os.pread(self._fd, _RECORD.size, 0))
            if record is not None:
                self._last = record
                break
        return self._last

    def age_seconds(self) -> float:
        """Seconds since the last beat (since creation while the worker has not booted)."""
        beat_time, _ = self._read()
        return max(0.0, self._clock() - beat_time)

    def sessions(self) -> int:
        """The session count the worker last reported (0 before it booted)."""
        return max(0, self._read()[1])

    def booted(self) -> bool:
        """Whether the worker has beaten at least once."""
        return self._read()[1] != NOT_BOOTED

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Release the file; idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

