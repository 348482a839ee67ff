"""Stored raw bytes -> RETR/TOP bytes: CRLF, final CRLF, Bcc removal, TOP limits, any chunking."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.store.normalize import CrlfNormalizer, retr_octets, top_octets


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _retr(data: bytes, cuts: list[int] | None = None) -> bytes:
    return b"".join(retr_octets(_chunked(data, cuts or [])))


def _reference(raw: bytes) -> bytes:
    """The specification, on the whole message at once."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    out, in_header, dropping = [], True, False
    for line in text.split(b"\r\n")[:-1]:
        if in_header and line == b"":
            in_header = False
        elif in_header and line[:1] in (b" ", b"\t"):
            if dropping:
                continue
        elif in_header:
            dropping = re.match(rb"(?i)(resent-)?bcc[ \t]*:", line[:999]) is not None
            if dropping:
                continue
        out.append(line + b"\r\n")
    return b"".join(out)


CASES = [
    (b"", b"\r\n"),
    (b"A: 1\n\nbody\n", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\r\rbody\r", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\r\n\r\nbody", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\n\r\nx\r\r\ny\n\rz", b"A: 1\r\n\r\nx\r\n\r\ny\r\n\r\nz\r\n"),
    (b"A: 1\n\n.\n..\n", b"A: 1\r\n\r\n.\r\n..\r\n"),
    (b"Bcc: a@x\nTo: b@x\n\nb\n", b"To: b@x\r\n\r\nb\r\n"),
    (b"To: b@x\nBCC: a@x,\n\tc@x\n d@x\nX: y\n\nb\n", b"To: b@x\r\nX: y\r\n\r\nb\r\n"),
    (b"Resent-Bcc: r@x\nresent-bcc\t: s@x\nBcc-Info: keep\n\nb\n",
     b"Bcc-Info: keep\r\n\r\nb\r\n"),
    (b"To: b@x\n\nBcc: stays in the body\n", b"To: b@x\r\n\r\nBcc: stays in the body\r\n"),
    (b"Bcc: only headers, no body", b""),
    (b"\nBcc: after an empty header section\n", b"\r\nBcc: after an empty header section\r\n"),
    (b"\x00\xff\x80: binary\n\n\x00\r\n", b"\x00\xff\x80: binary\r\n\r\n\x00\r\n"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_retr_bytes(raw: bytes, expected: bytes) -> None:
    assert _retr(raw) == expected
    assert _reference(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_every_split_point_and_byte_by_byte_give_the_same_bytes(raw: bytes,
                                                                expected: bytes) -> None:
    for cut in range(len(raw) + 1):
        assert _retr(raw, [cut]) == expected, cut
    assert b"".join(retr_octets(raw[i:i + 1] for i in range(len(raw)))) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"Bcc:", b"bcc :", b"Resent-Bcc:",
                                 b" ", b"\t", b"To:", b"x", b".", b"\xff", b"A: b"])),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=6))
def test_chunking_never_changes_the_output(pieces: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(pieces)
    assert _retr(raw, cuts) == _reference(raw)


def test_long_header_line_without_colon_is_not_buffered_forever() -> None:
    raw = b"Bcc" + b" " * 5000 + b": not a bcc field after 998 octets\n\nbody\n"
    assert _retr(raw, [10, 2000, 4000]) == _reference(raw)
    assert b"not a bcc field" in _retr(raw)


def test_normalizer_carries_a_cr_across_chunks() -> None:
    crlf = CrlfNormalizer()
    assert crlf.feed(b"a\r") == b"a"
    assert crlf.feed(b"\nb\r") == b"\r\nb"
    assert crlf.feed(b"c") == b"\r\nc"
    assert crlf.finish() == b"\r\n"
    assert crlf.finish() == b""


MESSAGE = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n"


@pytest.mark.parametrize(("lines", "expected"), [
    (0, b"A: 1\r\nB: 2\r\n\r\n"),
    (1, b"A: 1\r\nB: 2\r\n\r\none\r\n"),
    (3, MESSAGE),
    (10, MESSAGE),
])
def test_top(lines: int, expected: bytes) -> None:
    for cut in range(len(MESSAGE) + 1):
        assert b"".join(top_octets(_chunked(MESSAGE, [cut]), lines)) == expected, cut
    assert b"".join(top_octets((MESSAGE[i:i + 1] for i in range(len(MESSAGE))),
                               lines)) == expected


def test_top_of_message_without_body_adds_the_blank_line() -> None:
    assert b"".join(top_octets([b"A: 1\r\n"], 0)) == b"A: 1\r\n\r\n"
    assert b"".join(top_octets([b"A: 1\r\n"], 5)) == b"A: 1\r\n\r\n"


def test_top_of_empty_header_section() -> None:
    message = b"\r\nbody\r\nmore\r\n"
    for cut in range(len(message) + 1):
        assert b"".join(top_octets(_chunked(message, [cut]), 1)) == b"\r\nbody\r\n", cut


def test_top_stops_pulling_input_once_done() -> None:
    pulled: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield b"A: 1\r\n\r\nline one\r\n"
        pulled.append(2)
        yield b"line two\r\n"
        pulled.append(3)
        yield b"x" * 1000

    assert b"".join(top_octets(chunks(), 1)) == b"A: 1\r\n\r\nline one\r\n"
    assert pulled == []


def _top_reference(retr: bytes, lines: int) -> bytes:
    if retr.startswith(b"\r\n"):
        head, body = b"\r\n", retr[2:]
    elif b"\r\n\r\n" in retr:
        end = retr.index(b"\r\n\r\n") + 4
        head, body = retr[:end], retr[end:]
    else:
        return retr + b"\r\n"
    return head + b"".join(line + b"\r\n" for line in body.split(b"\r\n")[:-1][:lines])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"A: b", b"x", b" ", b"Bcc: c"])),
       st.integers(min_value=0, max_value=6),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=6))
def test_top_under_any_chunking(pieces: list[bytes], lines: int, cuts: list[int]) -> None:
    retr = _retr(b"".join(pieces))
    assert b"".join(top_octets(_chunked(retr, cuts), lines)) == _top_reference(retr, lines)
