"""Replies -> wire bytes.

Multi-line responses are dot-stuffed (RFC 1939 §3: a line starting with "." gets another "."),
end with CRLF "." CRLF, and message bodies always end with CRLF before that terminator.  Bodies
are streamed: each chunk is stuffed with ``bytes.replace`` plus one carried fact (does the next
chunk start a line?), so a "." that begins a line at a chunk boundary is stuffed too and no
Python code runs per line.  Items of a body that are not bytes pass through untouched, in
their place: they are for whoever pulls the stream (see :class:`~pop3d.protocol.events.Body`).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator

from pop3d.protocol.events import Body, Continue, Err, LocalProtocolError, MultiLine, Ok, Reply

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
STATUS_LINE_LIMIT = 512  # RFC 2449 §4: a status line is at most 512 octets including CRLF
_LONGEST_STATUS = STATUS_LINE_LIMIT - 1 - len(CRLF)  # PROTOCOL.md: stay *under* 512 octets
_DOT = 0x2E


def status_line(marker: bytes, text: str) -> bytes:
    """``+OK text`` or ``-ERR text`` with CRLF, cut to stay under the RFC 2449 limit."""
    if not text:
        return marker + CRLF
    line = marker + b" " + text.encode("utf-8")
    if b"\r" in line or b"\n" in line:
        raise LocalProtocolError(f"reply text contains a line break: {text!r}")
    if len(line) > _LONGEST_STATUS:
        line = line[:_LONGEST_STATUS].decode("utf-8", "ignore").encode("utf-8")
    return line + CRLF


def stuff_lines(lines: tuple[str, ...]) -> bytes:
    """Short lines (CAPA, LIST, UIDL) as a dot-stuffed, terminated block."""
    if not lines:
        return TERMINATOR
    block = "\r\n".join(lines).encode("utf-8")
    separators = len(lines) - 1
    # Each separator holds one CR and one LF; any more means a line carried its own break.
    if block.count(b"\n") != separators or block.count(b"\r") != separators:
        raise LocalProtocolError("a multi-line reply line contains a line break")
    block = block.replace(b"\n.", b"\n..")
    if block[0] == _DOT:
        block = b"." + block
    return block + CRLF + TERMINATOR


def dot_stuff(chunks: Iterable[bytes | object]) -> Iterator[bytes | object]:
    """Stuff a message body given in arbitrary chunks and terminate it.

    Yields the stuffed chunks (unchanged objects when there is nothing to stuff), an extra "."
    before a chunk that starts a line with ".", and finally the terminator, preceded by CRLF
    when the body did not end with one.  Items that are not bytes pass through."""
    tail = CRLF  # the last two octets sent; ending in LF means the next octet starts a line
    for piece in chunks:
        if not isinstance(piece, bytes | bytearray | memoryview):
            yield piece
            continue
        if not piece:
            continue
        # A database driver may hand out memoryviews; the port promises bytes, be lenient.
        chunk = piece if type(piece) is bytes else bytes(piece)
        if chunk[0] == _DOT and tail[-1:] == b"\n":
            yield b"."
        yield chunk.replace(b"\n.", b"\n..")
        tail = chunk[-2:] if len(chunk) > 1 else tail[-1:] + chunk
    yield TERMINATOR if tail == CRLF else CRLF + TERMINATOR


def render_stream(reply: Reply) -> Iterator[bytes | object]:
    """Any reply as a sequence of chunks; only a Body produces more than one."""
    if isinstance(reply, Body):
        yield status_line(b"+OK", reply.text)
        yield from dot_stuff(reply.chunks)
    else:
        yield render(reply)


def render(reply: Reply) -> bytes:
    """A whole reply as bytes (a Body is drained, so stream big ones with render_stream)."""
    if isinstance(reply, Ok):
        return status_line(b"+OK", reply.text)
    if isinstance(reply, Err):
        return status_line(b"-ERR", reply.text)
    if isinstance(reply, MultiLine):
        return status_line(b"+OK", reply.text) + stuff_lines(reply.lines)
    if isinstance(reply, Continue):
        return b"+ " + binascii.b2a_base64(reply.challenge, newline=False) + CRLF
    if isinstance(reply, Body):
        return b"".join(map(_as_bytes, render_stream(reply)))
    raise LocalProtocolError(f"not a reply: {reply!r}")


def _as_bytes(chunk: bytes | object) -> bytes:
    if not isinstance(chunk, bytes):
        raise LocalProtocolError("a body that yields more than bytes must be streamed")
    return chunk
