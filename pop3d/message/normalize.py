"""Streaming transforms from stored bytes to the exact octets RETR and TOP send.

Stored raw messages may end lines in LF, CR or CRLF, or in CRs doubled by a line-end conversion
applied twice (``\r\r\n``), and may still carry the ``Bcc:`` field an MTA should have removed.
The line-end rule: a run of CRs followed by LF is one line end; a run of CRs followed by
anything else (or by the end of the message) is one line end per CR; every line end becomes
CRLF, and the output always ends with one.

These filters work on chunks of any size and carry their state across chunk boundaries (a run
of CRs at the end of one chunk, a field name split between two), so a message is never held
whole, and the output does not depend on where the chunks were cut.  The same functions compute
the stored size and produce the bytes sent, so the two cannot disagree.  An item of the input
that is not bytes (a request the store's stream makes of its consumer) passes through in its
place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

CRLF = b"\r\n"
P = TypeVar("P")  # whatever else the stream carries, passed through
# RFC 5322 section 2.1.1: a line is at most 998 characters; a "field name" without a colon
# within that many bytes is no header field at all.
MAX_LINE = 998
# Bcc and Resent-Bcc (RFC 5322 sections 3.6.3 and 3.6.6); obsolete syntax allows WSP before ':'.
# A name followed by more WSP than a line may hold counts too (\Z: the line's first MAX_LINE + 1
# octets end inside the WSP): no amount of padding slips a Bcc field past the check, and a line
# of nothing but a field name and blanks is no loss.
_BCC_FIELD = re.compile(rb"(?:resent-)?bcc[ \t]*(?::|\Z)", re.IGNORECASE)
# A line end: LF, or a CR with the rest of its CR run and the LF ending it.  The lookbehind
# makes a CR inside a run (reached only when the run does not end in LF) a line end of its own
# without rescanning the run, so a long run of CRs costs linear time.
_LINE_END = re.compile(rb"\n|\r(?:(?<!\r\r)\r*\n)?")
_CR_RUN_THEN_LF = re.compile(rb"\r*\n")


class CrlfNormalizer:
    """Applies the line-end rule above, and makes the stream end with CRLF.

    Even an empty message becomes one empty line: RETR's bytes always end in CRLF.
    """

    def __init__(self) -> None:
        self._held_crs = 0  # the CR run ending the input so far: its LF may start the next chunk
        self._ends_with_crlf = False  # the output so far ends with CRLF

    def feed(self, data: bytes) -> bytes:
        kept = data.rstrip(b"\r")
        if not kept:
            self._held_crs += len(data)
            return b""
        out = _line_ends_to_crlf(self._after_held_run(kept))
        self._held_crs = len(data) - len(kept)
        self._ends_with_crlf = out.endswith(CRLF)
        return out

    def finish(self) -> bytes:
        held, self._held_crs = self._held_crs, 0
        out = CRLF * held if held else b"" if self._ends_with_crlf else CRLF
        self._ends_with_crlf = True
        return out

    def _after_held_run(self, data: bytes) -> bytes:
        """``data`` preceded by the held CR run, in a form ``_LINE_END`` turns into its line ends.

        One CR stands for the run, so the regex sees whether the run (continued by ``data``'s
        leading CRs) ends in LF; when it does not, every other held CR is a line end of its own.
        """
        if not self._held_crs:
            return data
        joined = b"\r" + data
        if _CR_RUN_THEN_LF.match(joined):
            return joined
        return CRLF * (self._held_crs - 1) + joined


def _line_ends_to_crlf(data: bytes) -> bytes:
    if b"\r\r" in data:
        return _LINE_END.sub(CRLF, data)
    # Without CR runs every CR is its own line end (or the start of a CRLF): three C-speed
    # passes instead of the regex, about ten times faster on ordinary mail.
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


class BccRemover:
    """Drops Bcc and Resent-Bcc fields, with their continuation lines, from the header section.

    Input must already be CRLF-normalised.  A line's fate is decided as soon as its field name
    (up to the colon) has arrived; only that much is ever buffered.
    """

    def __init__(self) -> None:
        self._in_header = True
        self._mid_line = False  # inside a line whose fate (_dropping) is decided
        self._dropping = False
        self._head = b""  # the start of a line not yet classified

    def feed(self, data: bytes) -> bytes:
        if not self._in_header:
            return data
        data, self._head = self._head + data, b""
        out: list[bytes] = []
        pos = 0
        while pos < len(data) and self._in_header:
            if self._mid_line:
                pos = self._copy_line(data, pos, out)
            elif not self._classify(data[pos:pos + MAX_LINE + 1]):
                self._head = data[pos:]
                return b"".join(out)
        if pos < len(data):
            out.append(data[pos:])
        return b"".join(out)

    def finish(self) -> bytes:
        head, self._head = self._head, b""
        return b"" if self._dropping or _BCC_FIELD.match(head) else head

    def _copy_line(self, data: bytes, pos: int, out: list[bytes]) -> int:
        end = data.find(b"\n", pos)
        stop = len(data) if end < 0 else end + 1
        if not self._dropping:
            out.append(data[pos:stop])
        self._mid_line = end < 0
        return stop

    def _classify(self, head: bytes) -> bool:
        """Decide the fate of the line starting ``head``; False when more bytes are needed."""
        if head.startswith(CRLF):
            self._in_header = False
            self._dropping = False
            return True
        if head[:1] in (b" ", b"\t"):
            self._mid_line = True  # a continuation line shares its field's fate
            return True
        if b":" not in head and b"\n" not in head and len(head) <= MAX_LINE:
            return False
        self._dropping = _BCC_FIELD.match(head) is not None
        self._mid_line = True
        return True


class TopLimiter:
    """Passes the header section, the blank line and the first ``lines`` body lines.

    Input must be CRLF-normalised.  ``done`` tells the caller to stop pulling input.  A message
    without a blank line is all header: ``finish`` then adds the blank line TOP promises.
    """

    def __init__(self, lines: int) -> None:
        self._remaining = lines
        self._in_header = True
        self._tail = b""  # last bytes of the header seen so far, to find a split CRLFCRLF
        self._seen = 0  # octets of header seen so far
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return b""
        if self._in_header:
            return self._feed_header(data)
        return self._feed_body(data)

    def finish(self) -> bytes:
        if self._in_header and not self.done:
            self.done = True
            return CRLF
        return b""

    def _feed_header(self, data: bytes) -> bytes:
        buffer = self._tail + data  # the tail is everything seen while _seen < 3
        if self._seen < 2 and buffer.startswith(CRLF):
            end = 2  # an empty header section
        else:
            found = buffer.find(b"\r\n\r\n")
            end = -1 if found < 0 else found + 4
        self._seen += len(data)
        if end < 0:
            self._tail = buffer[-3:]
            return data
        self._in_header = False
        split = end - (len(buffer) - len(data))
        return data[:split] + self._feed_body(data[split:])

    def _feed_body(self, data: bytes) -> bytes:
        pos = 0
        while self._remaining > 0:
            end = data.find(b"\n", pos)
            if end < 0:
                return data
            pos = end + 1
            self._remaining -= 1
        self.done = True
        return data[:pos]


def retr_octets(raw_chunks: Iterable[bytes | P]) -> Iterator[bytes | P]:
    """Stored raw bytes -> RETR bytes: CRLF line ends, a final CRLF, no Bcc fields.

    A message of nothing but Bcc fields becomes what an empty one does: one empty line.
    """
    crlf = CrlfNormalizer()
    bcc = BccRemover()
    sent = False
    for chunk in raw_chunks:
        if not isinstance(chunk, bytes):
            yield chunk
            continue
        out = bcc.feed(crlf.feed(chunk))
        if out:
            sent = True
            yield out
    out = bcc.feed(crlf.finish()) + bcc.finish()
    if out or not sent:
        yield out or CRLF


def top_octets(retr_chunks: Iterable[bytes | P], lines: int) -> Iterator[bytes | P]:
    """RETR bytes -> TOP bytes; stops pulling ``retr_chunks`` once enough lines have passed."""
    top = TopLimiter(lines)
    for chunk in retr_chunks:
        if not isinstance(chunk, bytes):
            yield chunk
            continue
        out = top.feed(chunk)
        if out:
            yield out
        if top.done:
            return
    out = top.finish()
    if out:
        yield out
