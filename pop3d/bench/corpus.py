"""A deterministic mail corpus for benchmarks: the same seed gives the same bytes everywhere.

Messages run from 1 KiB to 200 KiB (sizes spread so that the default 20 average about 36 KB)
and take turns being plain text, multipart/alternative, multipart/mixed with a base64
attachment, and text full of lines that begin with dots (``.``, ``..``, ``.x``), so
dot-stuffing is exercised.  Every line ends in CRLF and the last line too, and no header a
server would drop (Bcc) appears: a POP3 server sends these bytes exactly as they are, which is
what lets two servers' MB/s be compared and what the smoke tests check.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

SMALLEST = 1200  # a little over 1 KiB: the multipart kinds come out smaller than asked
LARGEST = 200 * 1024
SPREAD = 5.5  # size(i) = SMALLEST + (LARGEST - SMALLEST) * (i / (n-1)) ** SPREAD: mean ~36 KB
LINE = 72  # prose line width, as mail clients wrap
WORDS = (
    "the", "quarterly", "report", "is", "attached", "please", "review", "before", "friday",
    "meeting", "budget", "server", "migration", "postgres", "latency", "throughput", "mailbox",
    "delivery", "queue", "retry", "invoice", "customer", "schedule", "agenda", "notes", "draft",
    "final", "revision", "approved", "pending", "release", "backup", "restore",
)


def sizes(count: int) -> list[int]:
    """Target sizes, smallest to largest; the corpus interleaves them."""
    if count == 1:
        return [SMALLEST]
    return [round(SMALLEST + (LARGEST - SMALLEST) * (i / (count - 1)) ** SPREAD)
            for i in range(count)]


def prose(rng: random.Random, octets: int, dots: bool = False) -> bytes:
    """CRLF lines of words, about ``octets`` long; with ``dots``, one line in three begins
    with a dot."""
    lines: list[bytes] = []
    total = 0
    starts = (".", "..", ". ", ".signature")
    while total < octets:
        words, width = [], 0
        while width < LINE - 10:
            word = rng.choice(WORDS)
            words.append(word)
            width += len(word) + 1
        line = " ".join(words)
        if dots and len(lines) % 3 == 0:
            line = starts[len(lines) // 3 % len(starts)] + (line if len(lines) % 2 else "")
        lines.append(line.encode() + b"\r\n")
        total += len(lines[-1])
    return b"".join(lines)


def headers(number: int, subject: str, content_type: str) -> bytes:
    fields = [
        "From: Bench Sender <sender@example.net>",
        "To: undisclosed-recipients:;",
        f"Subject: {subject} #{number}",
        f"Date: Mon, 01 Jan 2024 {number // 60 % 24:02d}:{number % 60:02d}:00 +0000",
        f"Message-ID: <bench-{number}@example.net>",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
    ]
    return "\r\n".join(fields).encode() + b"\r\n\r\n"


def plain(rng: random.Random, number: int, octets: int) -> bytes:
    head = headers(number, "Plain text", "text/plain; charset=us-ascii")
    return head + prose(rng, octets - len(head))


def dotted(rng: random.Random, number: int, octets: int) -> bytes:
    head = headers(number, "Lines that begin with dots", "text/plain; charset=us-ascii")
    return head + b".\r\n..\r\n" + prose(rng, octets - len(head), dots=True) + b".\r\n"


def alternative(rng: random.Random, number: int, octets: int) -> bytes:
    boundary = f"alt-{number}"
    head = headers(number, "Text and HTML",
                   f'multipart/alternative; boundary="{boundary}"')
    text = prose(rng, (octets - len(head)) // 2)
    html = b"<html><body><p>\r\n" + prose(rng, (octets - len(head)) // 2 - 200) + \
        b"</p></body></html>\r\n"
    return head + _parts(boundary, [(b"text/plain; charset=us-ascii", b"7bit", text),
                                     (b"text/html; charset=us-ascii", b"7bit", html)])


def attachment(rng: random.Random, number: int, octets: int) -> bytes:
    boundary = f"mixed-{number}"
    head = headers(number, "With an attachment", f'multipart/mixed; boundary="{boundary}"')
    text = prose(rng, min(2048, octets // 4))
    room = max(octets - len(head) - len(text) - 400, 60)
    blob = rng.randbytes(room * 3 // 4 * 76 // 78)
    encoded = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    return head + _parts(boundary, [
        (b"text/plain; charset=us-ascii", b"7bit", text),
        (b'application/octet-stream; name="data-%d.bin"' % number, b"base64", encoded)])


def _parts(boundary: str, parts: list[tuple[bytes, bytes, bytes]]) -> bytes:
    mark = boundary.encode()
    out = [b"This is a multi-part message in MIME format.\r\n"]
    for content_type, encoding, body in parts:
        out.append(b"--" + mark + b"\r\nContent-Type: " + content_type +
                   b"\r\nContent-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body)
    out.append(b"--" + mark + b"--\r\n")
    return b"".join(out)


KINDS: tuple[Callable[[random.Random, int, int], bytes], ...] = (
    plain, alternative, attachment, dotted)


def corpus(count: int = 20, seed: int = 1) -> list[bytes]:
    """``count`` messages; message i has kind i mod 4 and the sizes are interleaved so that
    each kind gets small and large ones."""
    rng = random.Random(seed)  # noqa: S311 -- test data, not secrets
    targets = sizes(count)
    order = targets[0::2] + targets[1::2][::-1]
    return [KINDS[i % len(KINDS)](rng, i + 1, size) for i, size in enumerate(order)]
