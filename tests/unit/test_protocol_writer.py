"""Replies to bytes: status lines, multi-line blocks, streamed dot-stuffing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.protocol.events import Body, Continue, Err, LocalProtocolError, MultiLine, Ok
from pop3d.protocol.writer import (
    STATUS_LINE_LIMIT,
    dot_stuff,
    render,
    render_stream,
    status_line,
    stuff_lines,
)

PROPERTIES = settings(database=None, deadline=None, max_examples=300)


def unstuff(wire: bytes) -> bytes:
    """Read a multi-line body the way poplib does: lines up to LF, ".." -> ".", stop at "."."""
    lines = iter(wire.split(b"\n"))
    body = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line == b".":
            rest = b"\n".join(lines)
            assert rest == b"", f"data after the terminator: {rest!r}"
            return b"".join(body)
        if line.startswith(b".."):
            line = line[1:]
        body.append(line + b"\r\n")
    raise AssertionError("no terminator")


def test_status_lines() -> None:
    assert render(Ok()) == b"+OK\r\n"
    assert render(Ok("fine")) == b"+OK fine\r\n"
    assert render(Err("[SYS/TEMP] later")) == b"-ERR [SYS/TEMP] later\r\n"
    assert render(Ok("grüß")) == "+OK grüß\r\n".encode()


@pytest.mark.parametrize("text", ["a\r\nb", "a\nb", "a\rb"])
def test_status_text_with_line_breaks_is_misuse(text: str) -> None:
    with pytest.raises(LocalProtocolError):
        render(Err(text))


@pytest.mark.parametrize(("length", "expected"), [(504, 511), (505, 511), (506, 511), (100, 107)])
def test_status_line_boundary(length: int, expected: int) -> None:
    line = status_line(b"-ERR", "x" * length)  # "-ERR " + text + CRLF
    assert len(line) == expected
    assert line.endswith(b"\r\n")


def test_long_status_lines_are_cut_below_512() -> None:
    line = status_line(b"-ERR", "x" * 2000)
    assert len(line) == STATUS_LINE_LIMIT - 1
    assert line.endswith(b"x\r\n")
    cut = status_line(b"+OK", "é" * 600)  # never in the middle of a UTF-8 sequence
    assert len(cut) < STATUS_LINE_LIMIT
    cut.decode("utf-8")


def test_continuation() -> None:
    assert render(Continue()) == b"+ \r\n"
    assert render(Continue(b"Username:")) == b"+ VXNlcm5hbWU6\r\n"


def test_multiline_is_stuffed_and_terminated() -> None:
    assert render(MultiLine("list", ())) == b"+OK list\r\n.\r\n"
    assert render(MultiLine("x", (".a", "b", ".", ""))) == b"+OK x\r\n..a\r\nb\r\n..\r\n\r\n.\r\n"


@pytest.mark.parametrize("lines", [("a\r\nb",), ("a", "b\n"), ("a\r",)])
def test_multiline_lines_cannot_carry_breaks(lines: tuple[str, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        stuff_lines(lines)


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([], b".\r\n"),
        ([b""], b".\r\n"),
        ([b"a\r\n"], b"a\r\n.\r\n"),
        ([b".a\r\n"], b"..a\r\n.\r\n"),
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),  # "." opening a chunk and a line
        ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a", b".b\r\n"], b"a.b\r\n.\r\n"),  # "." opening a chunk mid-line
        ([b"a\r\n", b"", b".", b"\r\n"], b"a\r\n..\r\n.\r\n"),
        ([b"no end"], b"no end\r\n.\r\n"),
        ([b"half\r"], b"half\r\r\n.\r\n"),
        ([b"x\r\n\r", b"\n"], b"x\r\n\r\n.\r\n"),
        ([memoryview(b".m\r\n")], b"..m\r\n.\r\n"),
    ],
)
def test_dot_stuff(chunks: list[bytes], wire: bytes) -> None:
    assert b"".join(dot_stuff(chunks)) == wire


def test_unchanged_chunks_are_not_copied() -> None:
    chunk = b"x" * 65536 + b"\r\n"
    assert next(dot_stuff([chunk])) is chunk


def test_render_stream_yields_the_status_line_first() -> None:
    pieces = list(render_stream(Body("2 octets", iter([b"a\r\n"]))))
    assert pieces[0] == b"+OK 2 octets\r\n"
    assert b"".join(pieces) == b"+OK 2 octets\r\na\r\n.\r\n"
    assert list(render_stream(Ok("x"))) == [b"+OK x\r\n"]


def test_rendering_a_non_reply_is_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        render("+OK")  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------------

_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_dotty_line = st.one_of(_line, _line.map(lambda b: b"." + b), st.sampled_from([b".", b".."]))
crlf_bodies = st.lists(_dotty_line, max_size=30).map(lambda ls: b"".join(x + b"\r\n" for x in ls))


@st.composite
def chunked(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    body = draw(bodies)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    bounds = [0, *cuts, len(body)]
    return body, [body[a:b] for a, b in itertools.pairwise(bounds)]


@PROPERTIES
@given(chunked(crlf_bodies))
def test_unstuffing_gives_back_the_body(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    wire = b"".join(dot_stuff(chunks))
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    assert unstuff(wire) == body


def _stuff_whole(body: bytes) -> bytes:
    """The same stuffing done on the whole body at once, as a reference."""
    stuffed = (b"." if body.startswith(b".") else b"") + body.replace(b"\n.", b"\n..")
    ending = b"" if not body or body.endswith(b"\r\n") else b"\r\n"
    return stuffed + ending + b".\r\n"


@PROPERTIES
@given(chunked(st.binary(max_size=300)))
def test_chunking_never_changes_the_wire_bytes(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    assert b"".join(dot_stuff(chunks)) == _stuff_whole(body)
