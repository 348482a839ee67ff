"""Properties: no input makes the core raise, every reply is well-formed, sizes are exact."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pop3d.protocol import NEED_DATA, PAUSED, BadCommand, Connection, Err, Ok
from pop3d.session import Peer, Send, SessionSettings, StartTls

from .fakes import StoredMessage
from .test_protocol_writer import chunked, crlf_bodies, unstuff
from .transcript import Harness

PROPERTIES = settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)

WORDS = [
    b"USER alice@example.com", b"PASS secret", b"PASS", b"USER", b"AUTH PLAIN", b"AUTH LOGIN",
    b"AUTH", b"AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==", b"YWxpY2VAZXhhbXBsZS5jb20=", b"c2VjcmV0",
    b"*", b"=", b"CAPA", b"STLS", b"UTF8", b"STAT", b"LIST", b"LIST 2", b"UIDL", b"UIDL 9",
    b"RETR 1", b"RETR 2", b"RETR 0", b"TOP 2 1", b"TOP 1 -1", b"DELE 1", b"DELE 2", b"RSET",
    b"NOOP", b"QUIT", b"", b"\xff\xfe", b".", b"LIST 99999999999",
]  # fmt: skip

_line = st.one_of(st.sampled_from(WORDS), st.binary(max_size=30))
_ending = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
client_streams = st.lists(st.tuples(_line, _ending), max_size=25).map(
    lambda parts: b"".join(line + end for line, end in parts)
)


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _check_reply(data: bytes, multiline_allowed: bool) -> None:
    assert data.endswith(b"\r\n")
    status, _, rest = data.partition(b"\r\n")
    assert status in (b"+OK", b"-ERR") or status.startswith((b"+OK ", b"-ERR ", b"+ "))
    assert len(status) + 2 < 512
    assert b"\r" not in status
    assert b"\n" not in status
    if rest:
        assert multiline_allowed
        assert status.startswith(b"+OK")
        assert rest.endswith(b".\r\n")
        assert rest == b".\r\n" or rest.endswith(b"\r\n.\r\n")


def _replies(harness: Harness) -> list[Send | StartTls]:
    return [effect for effect in harness.effects if isinstance(effect, Send | StartTls)]


@PROPERTIES
@given(
    client_streams,
    st.lists(st.integers(min_value=0), max_size=8),
    st.booleans(),
    st.sampled_from([8, 30, 8192]),
)
def test_session_survives_any_input(
    data: bytes, cuts: list[int], plaintext_ok: bool, line_length: int
) -> None:
    limits = SessionSettings(server_name="p.example", line_length=line_length, max_bad_commands=4)
    harness = Harness(limits, Peer("192.0.2.9", plaintext_ok=plaintext_ok, stls_available=True))
    for piece in _splits(data, cuts):
        harness.feed(piece)
    harness.session.close("end")
    for effect, payload in zip(_replies(harness), harness.payloads, strict=True):
        if payload:
            _check_reply(payload, multiline_allowed=not isinstance(effect, StartTls))
    assert harness.output().startswith(b"+OK p.example POP3 server ready\r\n")


@PROPERTIES
@given(client_streams, st.lists(st.integers(min_value=0), max_size=8))
def test_connection_never_raises_on_peer_input(data: bytes, cuts: list[int]) -> None:
    conn = Connection(max_line_length=64)
    conn.send(Ok("ready"))
    for piece in _splits(data, cuts):
        conn.receive_data(piece)
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            reply = Err("no") if isinstance(event, BadCommand) else Ok()
            _check_reply(conn.send(reply), multiline_allowed=False)
        if event is PAUSED and conn.state.value == "TLS_HANDSHAKE":
            conn.tls_started()


mailboxes = st.lists(crlf_bodies, max_size=6)


@PROPERTIES
@given(mailboxes, st.integers(min_value=1, max_value=64))
def test_list_sizes_equal_unstuffed_retr_lengths(bodies: list[bytes], chunk_size: int) -> None:
    messages = [StoredMessage(f"e{n}", f"uid{n}", body) for n, body in enumerate(bodies, 1)]
    harness = Harness(mailbox=messages)
    harness.maildrop.chunk_size = chunk_size
    harness.feed(b"USER alice@example.com\r\nPASS secret\r\nLIST\r\n")
    listing = harness.output().split(b"+OK " + str(len(bodies)).encode() + b" messages")[1]
    sizes = [int(line.split()[1]) for line in listing.split(b"\r\n")[1:-2]]
    assert len(sizes) == len(bodies)
    for number, (size, body) in enumerate(zip(sizes, bodies, strict=True), 1):
        before = len(harness.output())
        harness.feed(b"RETR %d\r\n" % number)
        wire = harness.output()[before:]
        status, _, rest = wire.partition(b"\r\n")
        assert status == b"+OK %d octets" % size
        assert unstuff(rest) == body
        assert len(unstuff(rest)) == size


@PROPERTIES
@given(chunked(crlf_bodies), st.integers(min_value=0, max_value=5))
def test_top_output_unstuffs_to_what_the_store_gave(
    case: tuple[bytes, list[bytes]], lines: int
) -> None:
    body, _ = case
    content = b"Subject: t\r\n\r\n" + body
    harness = Harness(mailbox=[StoredMessage("e1", "u1", content)])
    harness.feed(b"USER alice@example.com\r\nPASS secret\r\n")
    before = len(harness.output())
    harness.feed(b"TOP 1 %d\r\n" % lines)
    status, _, rest = harness.output()[before:].partition(b"\r\n")
    assert status == b"+OK Top of message follows"
    kept = body.split(b"\r\n")[:-1][:lines]
    assert unstuff(rest) == b"Subject: t\r\n\r\n" + b"".join(line + b"\r\n" for line in kept)
