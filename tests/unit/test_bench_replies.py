"""pop3bench's reply framing: the body scanner against bodies cut at every place, status lines,
STAT and listings, and undoing dot-stuffing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.bench.loop import unstuff
from pop3d.bench.replies import BodyScanner, error_key, parse_listing, parse_stat, status_ok


def stuffed(message: bytes) -> bytes:
    """What a server sends after its status line for ``message`` (CRLF lines), written the
    slow obvious way: a line-by-line loop, independent of the scanner's approach."""
    lines = message.split(b"\r\n")[:-1] if message else []
    out = [(b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines]
    return b"".join(out) + b".\r\n"


def scan(wire: bytes, cuts: list[int]) -> tuple[int, int]:
    """Feed ``wire`` in pieces ending at ``cuts``; (octets, index just past the terminator)."""
    cuts = [cut for cut in cuts if cut < len(wire)]
    scanner = BodyScanner()
    start = 0
    for end in [*sorted(set(cuts)), len(wire)]:
        if end <= start:
            continue
        stop = scanner.feed(wire, start, end)
        if stop >= 0:
            return scanner.octets, stop
        start = end
    raise AssertionError("no terminator found")


BODIES = [
    b"",
    b"\r\n",
    b".\r\n",
    b"..\r\n",
    b".\r\n.\r\n",
    b"Subject: x\r\n\r\n.hidden\r\nplain\r\n. \r\n",
    b"a\r\n.\r\nb\r\n",
    b"x" * 70_000 + b"\r\n.\r\n",
]


@pytest.mark.parametrize("body", BODIES)
def test_whole_and_one_byte_at_a_time(body: bytes) -> None:
    wire = stuffed(body)
    end = len(wire)
    assert scan(wire, []) == (len(body), end)
    assert scan(wire, list(range(1, len(wire)))) == (len(body), end)


line = st.one_of(st.sampled_from([b"", b".", b"..", b". x", b".\r", b"\r\n.", b"a.b"]),
                 st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))


@given(st.lists(line, max_size=30), st.lists(st.integers(0, 2000), max_size=8))
def test_any_body_cut_anywhere(lines: list[bytes], cuts: list[int]) -> None:
    body = b"".join(part + b"\r\n" for part in lines)
    wire = stuffed(body)
    assert scan(wire, cuts) == (len(body), len(wire))


def test_the_end_is_only_looked_for_at_the_end_of_what_arrived() -> None:
    # One command at a time: nothing follows a body, so a piece that goes on after a
    # terminator is not a finished body (a server that did this would time the session out).
    scanner = BodyScanner()
    assert scanner.feed(b"a\r\n.\r\n+OK", 0, 11) == -1


def test_the_scanner_keeps_only_a_tail() -> None:
    scanner = BodyScanner()
    assert scanner.feed(b"x" * 100_000, 0, 100_000) == -1
    assert len(scanner.tail) == 4
    assert scanner.feed(b"\r\n.\r\n", 0, 5) == 5
    assert scanner.octets == 100_002


def test_scanning_starts_where_it_is_told() -> None:
    buf = b"+OK 3 octets\r\nab\r\n.\r\n"
    scanner = BodyScanner()
    assert scanner.feed(buf, 14, len(buf)) == len(buf)
    assert scanner.octets == 4


def test_status_lines_and_error_keys() -> None:
    assert status_ok(b"+OK ready")
    assert not status_ok(b"-ERR [AUTH] no")
    assert error_key(b"-ERR [IN-USE] too many\x00sessions") == "-ERR [IN-USE] too many?sessions"
    assert len(error_key(b"-ERR " + b"x" * 500)) == 80
    assert error_key(b"") == "(empty line)"


def test_stat_and_listings() -> None:
    assert parse_stat(b"+OK 20 726173") == (20, 726173)
    with pytest.raises(ValueError, match="not a STAT reply"):
        parse_stat(b"+OK maildrop locked")
    assert parse_listing(b"1 120\r\n2 4001\r\n") == {1: b"120", 2: b"4001"}
    assert parse_listing(b"") == {}


def test_unstuff_undoes_what_stuffed_did() -> None:
    body = b".first\r\nmid\r\n..\r\n.\r\n"
    assert unstuff(stuffed(body)[:-3]) == body
