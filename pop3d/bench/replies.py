"""POP3 replies as the client sees them: pure functions and values, no sockets.

A multi-line reply ends at the first ``CRLF . CRLF`` after its status line (RFC 1939 §3); a
body line that begins with ``.`` arrives with one more ``.`` (dot-stuffing).  The
:class:`BodyScanner` finds the end and counts the message octets of a body that arrives in
pieces, looking only at each piece's ends and calling ``find``/``count`` over the rest, so a
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
        """Scan ``buf[start:end]``; return the index just past the terminator, or -1."""
        head = bytes(buf[start:min(start + 4, end)])
        seam_tail = self.tail[-3:]
        self.stuffed += (seam_tail + head[:3]).count(STUFFED)
        cut = (self.tail + head).find(TERMINATOR)
        if 0 <= cut < len(self.tail):  # the terminator begins in the tail
            body_end = start + cut + 2 - len(self.tail)
            stop = body_end + 3
        else:
            found = buf.find(TERMINATOR, start, end)
            if found < 0:
                self.stuffed += buf.count(STUFFED, start, end)
                self.wire += end - start
                self.tail = (self.tail + bytes(buf[max(start, end - 4):end]))[-4:]
                return -1
            body_end = found + 2
            stop = found + 5
        self.stuffed += buf.count(STUFFED, start, max(start, body_end))
        self.octets = self.wire + body_end - start - self.stuffed
        return stop
