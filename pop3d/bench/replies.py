"""POP3 replies as the client sees them: pure functions and values, no sockets.

A multi-line reply ends at the first ``CRLF . CRLF`` after its status line (RFC 1939 §3); a
body line that begins with ``.`` arrives with one more ``.`` (dot-stuffing).  The
:class:`BodyScanner` finds the end and counts the message octets of a body that arrives in
pieces, looking only at each piece's last octets and calling ``count`` over the rest, so a
200 KiB message costs a few C calls and no copy.
"""

from __future__ import annotations

from dataclasses import dataclass

CRLF = b"\r\n"
TERMINATOR = b"\r\n.\r\n"  # the CRLF ending the last line, then the lone dot
STUFFED = b"\r\n.."  # a line start carrying the extra dot of dot-stuffing
ERROR_KEY_LENGTH = 80  # long enough to tell replies apart, short enough to group them


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a session and how to read its reply.

    ``line`` is None for the greeting.  ``multi``: a ``+OK`` opens a multi-line body.  ``keep``:
    keep that body (UIDL, LIST) instead of only counting it (RETR).  ``joined``: its latency is
    measured from the previous step's command (USER then PASS is one "login").  ``starttls``:
    after ``+OK`` the client starts TLS."""

    kind: str
    line: bytes | None = None
    multi: bool = False
    keep: bool = False
    joined: bool = False
    starttls: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole reply: the status line (without CRLF); for a multi-line one, the message octets
    (after removing dot-stuffing, without the terminator) and, when kept, the body bytes."""

    ok: bool
    line: bytes
    octets: int = 0
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Yielded by a session: wait this many seconds, then go on (receives None)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Opened:
    """Yielded by an idle session once logged in: resume (with None) when every session of
    the process has been opened, which is when the hold begins."""


OPENED = Opened()


def status_ok(line: bytes | bytearray) -> bool:
    return line[:3] == b"+OK"


def error_key(line: bytes | bytearray) -> str:
    """How an unexpected reply is counted: its text, cut short, printable."""
    text = bytes(line[:ERROR_KEY_LENGTH]).decode("ascii", "replace")
    return "".join(c if c.isprintable() else "?" for c in text) or "(empty line)"


def parse_stat(line: bytes) -> tuple[int, int]:
    """``+OK count octets`` -> (count, octets); ValueError if it is not that."""
    parts = line.split()
    if len(parts) < 3 or parts[0] != b"+OK" or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"not a STAT reply: {line[:60]!r}")
    return int(parts[1]), int(parts[2])


def parse_listing(body: bytes) -> dict[int, bytes]:
    """A LIST or UIDL body (``n value`` lines, dot-stuffing not needed) -> {n: value}."""
    listing = {}
    for row in body.split(CRLF):
        number, _, value = row.partition(b" ")
        if number:
            listing[int(number)] = value.strip()
    return listing


class BodyScanner:
    """Counts a multi-line body fed in pieces and finds where it ends.

    Only the last 4 octets of what was fed are kept (``tail``) so that a terminator or a
    stuffed dot split across two pieces is still seen.  The tail starts as the status line's
    CRLF, which is where the first body line begins."""

    __slots__ = ("octets", "stuffed", "tail", "wire")

    def __init__(self) -> None:
        self.tail = CRLF
        self.wire = 0  # body octets on the wire so far (dot-stuffed)
        self.stuffed = 0  # extra dots seen so far
        self.octets = -1  # the message octets, once the terminator has been seen

    def feed(self, buf: bytes | bytearray, start: int, end: int) -> int:
        """Scan ``buf[start:end]``; return ``end`` if the body ends there, else -1.

        The client sends one command at a time, so nothing follows a body until the next
        command: the terminator can only be the last five octets received, and only those are
        looked at.  Stuffed dots are counted with ``count`` over the piece (C speed, no copy)."""
        head = bytes(buf[start:min(start + 4, end)])
        self.stuffed += (self.tail[-3:] + head[:3]).count(STUFFED)  # split across the seam
        self.stuffed += buf.count(STUFFED, start, end)
        last = bytes(buf[max(start, end - 5):end])
        if len(last) < 5:
            last = (self.tail + last)[-5:]
        if last == TERMINATOR:
            # the body ends with the CRLF before the final ".CRLF" (that CRLF may lie in an
            # earlier piece, which makes this piece's share of the body negative)
            self.octets = self.wire + (end - 3 - start) - self.stuffed
            return end
        self.wire += end - start
        self.tail = (self.tail + bytes(buf[max(start, end - 4):end]))[-4:]
        return -1
