"""Stored raw bytes -> RETR/TOP bytes: CRLF, final CRLF, Bcc removal, TOP limits, any chunking."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.message.normalize import CrlfNormalizer, retr_octets, top_octets


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _retr(data: bytes, cuts: list[int] | None = None) -> bytes:
    return b"".join(retr_octets(_chunked(data, cuts or [])))


def _reference(raw: bytes) -> bytes:
    """The specification, on the whole message at once."""
    text = re.sub(rb"\r*\n|\r", b"\r\n", raw)
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
            dropping = _is_bcc(line)
            if dropping:
                continue
        out.append(line + b"\r\n")
    return b"".join(out) or b"\r\n"


def _is_bcc(line: bytes) -> bool:
    name = re.match(rb"(?i)(resent-)?bcc[ \t]*", line)
    # A field name is looked for in a line's first 999 octets; WSP filling them all counts too.
    return name is not None and (line[name.end():name.end() + 1] == b":" or name.end() >= 999)


CASES = [
    (b"", b"\r\n"),
    (b"A: 1\n\nbody\n", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\r\rbody\r", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\r\n\r\nbody", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\n\r\nx\r\r\ny\n\rz", b"A: 1\r\n\r\nx\r\ny\r\n\r\nz\r\n"),
    # CRs doubled by a second line-end conversion: one line end, so Bcc stays in the header.
    (b"Subject: hi\r\r\nBcc: x\r\n\r\nbody", b"Subject: hi\r\n\r\nbody\r\n"),
    (b"Subject: hi\r\r\r\r\nBcc: x\r\r\n\r\r\nbody\r\r\n", b"Subject: hi\r\n\r\nbody\r\n"),
    (b"X: a\rBcc: b\r\rbody", b"X: a\r\n\r\nbody\r\n"),
    (b"X: a\rBcc: b\rResent-Bcc: c\n\nbody", b"X: a\r\n\r\nbody\r\n"),
    (b"A: 1\r\r\rx\r\r", b"A: 1\r\n\r\n\r\nx\r\n\r\n"),
    (b"A: 1\n\n\r\r\n\n", b"A: 1\r\n\r\n\r\n\r\n"),
    (b"A: 1\n\n.\n..\n", b"A: 1\r\n\r\n.\r\n..\r\n"),
    (b"Bcc: a@x\nTo: b@x\n\nb\n", b"To: b@x\r\n\r\nb\r\n"),
    (b"To: b@x\nBCC: a@x,\n\tc@x\n d@x\nX: y\n\nb\n", b"To: b@x\r\nX: y\r\n\r\nb\r\n"),
    (b"Resent-Bcc: r@x\nresent-bcc\t: s@x\nBcc-Info: keep\n\nb\n",
     b"Bcc-Info: keep\r\n\r\nb\r\n"),
    (b"To: b@x\n\nBcc: stays in the body\n", b"To: b@x\r\n\r\nBcc: stays in the body\r\n"),
    (b"Bcc: only headers, no body", b"\r\n"),
    (b"Bcc: a\r\n\tb\r\nResent-Bcc: c\r\n", b"\r\n"),
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
    raw = b"X-Long" + b"-" * 5000 + b": not a field name within 998 octets\n\nbody\n"
    assert _retr(raw, [10, 2000, 4000]) == _reference(raw)
    assert b"not a field name" in _retr(raw)


def test_bcc_padded_with_more_blanks_than_a_line_holds_is_still_removed() -> None:
    for blanks in (990, 996, 997, 5000):
        raw = b"Bcc" + b" \t" * (blanks // 2) + b": hidden@example.com\nTo: t\n\nbody\n"
        for cuts in ([], [10, 700, 1500], list(range(0, len(raw), 7))):
            assert _retr(raw, cuts) == b"To: t\r\n\r\nbody\r\n", (blanks, cuts)


def test_a_run_of_crs_held_across_many_chunks() -> None:
    for tail, lines in ((b"\nx", 1), (b"x", 5000), (b"", 5000)):
        raw = b"A: 1\n\n" + b"\r" * 5000 + tail
        expected = b"A: 1\r\n\r\n" + b"\r\n" * lines + tail.lstrip(b"\n")
        expected += b"" if expected.endswith(b"\r\n") else b"\r\n"
        assert _retr(raw, list(range(0, len(raw), 64))) == expected
        assert _retr(raw) == expected


def test_a_long_run_of_crs_takes_linear_time() -> None:
    started = time.perf_counter()
    out = _retr(b"A: 1\n\n" + b"\r" * 1_000_000 + b"x")
    assert len(out) == len(b"A: 1\r\n\r\n") + 2 * 1_000_000 + 3
    assert time.perf_counter() - started < 2  # a quadratic scan takes minutes


def test_normalizer_carries_a_cr_run_across_chunks() -> None:
    crlf = CrlfNormalizer()
    assert crlf.feed(b"a\r") == b"a"
    assert crlf.feed(b"\nb\r") == b"\r\nb"
    assert crlf.feed(b"c\r") == b"\r\nc"
    assert crlf.feed(b"\r") == b""
    assert crlf.feed(b"\r\nd\r") == b"\r\nd"
    assert crlf.feed(b"") == b""
    assert crlf.feed(b"\r") == b""
    assert crlf.finish() == b"\r\n\r\n"
    assert crlf.finish() == b""


_LINE_ENDS = [b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r", b"\r\r", b"\r\r\r\n"]
_FIELDS = [b"Bcc:", b"bcc :", b"BCC\t:", b"Resent-Bcc:", b"resent-bcc \t:", b"To:", b"X: a",
           b" ", b"\t", b"x"]
_BCC_LINE = re.compile(rb"(?i)(resent-)?bcc[ \t]*:")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_LINE_ENDS + _FIELDS), st.binary(max_size=12))),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
       st.booleans())
def test_any_line_end_mix_under_any_chunking(pieces: list[bytes], cuts: list[int],
                                             byte_by_byte: bool) -> None:
    raw = b"".join(pieces)
    whole = _retr(raw)
    chunks = [raw[i:i + 1] for i in range(len(raw))] if byte_by_byte else _chunked(raw, cuts)
    assert b"".join(retr_octets(chunks)) == whole
    assert whole.endswith(b"\r\n")
    lines = whole.split(b"\r\n")[:-1]
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    header = lines[:lines.index(b"")] if b"" in lines else lines
    assert not any(_BCC_LINE.match(line) for line in header)


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
