"""The channel on its own: a real Channel over a socket pair, a fake host, a real Session over
fakes (channel_rig.py).  What the transcripts cannot show: input in any cut, back-pressure,
the STLS barrier, bodies that fail or clients that vanish mid-stream, PROXY headers, expiry."""

from __future__ import annotations

import re
import selectors
from dataclasses import dataclass, field

import pytest

from pop3d.session import Authenticate, LoginGrant, Peer, Services, Session, SessionSettings
from pop3d.worker.channel import HIGH_WATER, ChannelLimits, Phase

from .channel_rig import Rig
from .fakes import (
    FakeAuthenticator,
    FakeClock,
    FakeMaildrop,
    FakeMetrics,
    FakeRegistry,
    StoredMessage,
)

USER_ID = "u-alice"
LOGIN = b"USER alice@example.com\r\nPASS secret\r\n"
SMALL = StoredMessage("e1", "uid-1", b"Subject: one\r\n\r\n.dot\r\nbody\r\n")
LIMITS = ChannelLimits(proxy_timeout=5, handshake_timeout=10, login_timeout=60, idle_timeout=600)


def big_message(email_id: str, octets: int) -> StoredMessage:
    line = b"x" * 78 + b"\r\n"
    content = b"Subject: big\r\n\r\n" + line * (octets // len(line))
    return StoredMessage(email_id, f"uid-{email_id}", content)


@dataclass
class World:
    """The session's side: fakes behind real sessions, and what the factory was asked."""

    messages: list[StoredMessage] = field(default_factory=lambda: [SMALL])
    clock: FakeClock = field(default_factory=FakeClock)
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    opened: list[tuple[str, bool, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.maildrop = FakeMaildrop({USER_ID: list(self.messages)})
        self.maildrop.chunk_size = 64 * 1024
        self.authenticator = FakeAuthenticator()
        self.authenticator.add_user("alice@example.com", "secret", USER_ID)

    def open_session(self, client_ip: str, *, tls: bool, known_source: bool) -> Session:
        self.opened.append((client_ip, tls, known_source))
        peer = Peer(client_ip, tls=tls, plaintext_ok=True, stls_available=not tls)
        services = Services(self.maildrop, self.registry, FakeMetrics(), clock=self.clock)
        return Session(SessionSettings(server_name="test"), services, peer, session_id="t:1")

    def login(self, job: Authenticate) -> LoginGrant | Exception:
        try:
            return job.run(self.authenticator, self.maildrop)
        except Exception as error:
            return error

    def rig(self, *, login: bool = True, **options: object) -> Rig:
        return Rig(self.open_session, login=self.login if login else None, clock=self.clock,
                   limits=LIMITS, **options)  # type: ignore[arg-type]


def everything(rig: Rig) -> bytes:
    """Serve and read until the exchange is over."""
    rig.converse()
    return bytes(rig.received)


# -- input in any cut -------------------------------------------------------------------------

SCRIPT = LOGIN + b"CAPA\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 1 0\r\nDELE 1\r\nUIDL\r\nQUIT\r\n"


def test_input_byte_by_byte_gives_the_bytes_of_one_burst() -> None:
    burst = World().rig()
    burst.send(SCRIPT)
    whole = everything(burst)
    drip = World().rig()
    for byte in SCRIPT:
        drip.send(bytes([byte]))
        drip.converse()
    assert bytes(drip.received) == whole
    assert b"+OK 28 octets\r\nSubject: one\r\n\r\n..dot\r\nbody\r\n.\r\n" in whole
    assert whole.endswith(b"+OK test POP3 server signing off (1 messages deleted)\r\n")
    assert burst.eof
    assert drip.eof
    assert burst.host.closed_with == drip.host.closed_with == ["session ended"]


def test_a_partial_line_waits_for_the_rest() -> None:
    rig = World().rig()
    rig.converse()
    rig.send(b"UT")
    assert rig.converse() == b""
    rig.send(b"F8\r\n")
    assert rig.converse() == b"+OK UTF-8 enabled\r\n"


# -- back-pressure ----------------------------------------------------------------------------


def test_output_above_the_high_water_mark_stops_reading_until_the_client_reads() -> None:
    world = World(messages=[big_message("e1", 3 * HIGH_WATER)])
    rig = world.rig()
    rig.send(LOGIN)
    rig.converse()
    rig.received.clear()
    rig.send(b"RETR 1\r\nRETR 1\r\nNOOP\r\n")  # pipelined, and the client reads nothing
    rig.run()
    session = rig.session
    assert session is not None
    assert not rig.channel.interest & selectors.EVENT_READ  # stalled: no reading
    assert rig.channel.interest & selectors.EVENT_WRITE  # waiting for the client to read
    assert session.buffered > 0  # the second RETR and the NOOP wait, unparsed
    answered = everything(rig)  # the client reads: everything is served, in order
    statuses = re.findall(rb"(?:^|\r\n)(\+OK[^\r]*)\r\n", answered)
    size = len(world.maildrop.mailboxes[USER_ID][0].content)
    assert statuses[:2] == [b"+OK %d octets" % size] * 2
    assert answered.endswith(b"\r\n.\r\n+OK\r\n")
    assert session.buffered == 0


# -- STLS -------------------------------------------------------------------------------------


def test_nothing_sent_with_stls_is_processed_after_the_handshake() -> None:
    rig = World().rig()
    rig.converse()
    rig.send(b"STLS\r\nCAPA\r\n")  # an attacker's CAPA injected behind the STLS
    assert rig.converse() == b"+OK Begin TLS negotiation\r\n"
    assert rig.channel.phase is Phase.HANDSHAKE
    rig.start_client_tls()
    assert rig.channel.phase is Phase.SESSION
    rig.send(b"UTF8\r\n")
    assert rig.converse() == b"+OK UTF-8 enabled\r\n"  # no capability list: CAPA was dropped
    assert rig.metrics.counters["tls.handshakes"] == 1


def test_implicit_tls_greets_after_the_handshake() -> None:
    world = World()
    rig = world.rig(implicit_tls=True)
    assert rig.converse() == b""  # nothing in the clear
    rig.start_client_tls()
    assert rig.converse() == b"+OK test POP3 server ready\r\n"
    assert world.opened == [("192.0.2.7", True, True)]


def test_a_failed_handshake_closes_and_is_counted() -> None:
    rig = World().rig(implicit_tls=True)
    rig.client.send(b"GET / HTTP/1.0\r\n\r\n")
    rig.run()
    assert rig.channel.phase is Phase.CLOSED
    assert rig.metrics.counters["tls.failures"] == 1
    assert rig.host.closed_with[0].startswith("TLS handshake failed")


def test_stls_without_a_certificate_closes() -> None:
    rig = World().rig(tls=False)
    rig.converse()
    rig.send(b"STLS\r\n")
    rig.converse()
    assert rig.host.closed_with == ["TLS requested but no certificate is configured"]


# -- bodies that fail, clients that vanish ----------------------------------------------------


def test_a_body_failing_mid_stream_closes_the_connection() -> None:
    world = World(messages=[big_message("e1", 256 * 1024)])
    world.maildrop.chunk_size = 1024
    world.maildrop.break_after_chunks = 3
    rig = world.rig()
    rig.send(LOGIN + b"RETR 1\r\n")
    received = everything(rig)
    status = b"+OK %d octets\r\n" % len(world.maildrop.mailboxes[USER_ID][0].content)
    assert status in received
    assert received.index(status) + len(status) + 3 * 1024 == len(received)  # 3 chunks, no end
    assert rig.eof
    assert rig.host.closed_with == ["message body failed mid-stream"]
    assert world.registry.released == [(USER_ID, "t:1")]


def test_a_client_vanishing_mid_body_ends_the_session_without_update() -> None:
    world = World(messages=[big_message("e1", 4 * HIGH_WATER), SMALL])
    rig = world.rig()
    rig.send(LOGIN + b"DELE 2\r\n")
    rig.converse()
    rig.send(b"RETR 1\r\n")
    rig.run()  # the socket fills; the client has read none of it
    rig.reset()
    rig.run()
    assert rig.channel.phase is Phase.CLOSED
    assert rig.host.closed_with[0].startswith(("write failed", "read failed"))
    assert world.maildrop.deleted == []  # no QUIT, no UPDATE
    assert world.maildrop.read == []  # the RETR never finished
    assert world.registry.released == [(USER_ID, "t:1")]


def test_the_client_closing_ends_the_session() -> None:
    rig = World().rig()
    rig.converse()
    rig.client.close()
    rig.run()
    assert rig.host.closed_with == ["client closed the connection"]


# -- PROXY headers ----------------------------------------------------------------------------


def test_a_proxy_header_names_the_client() -> None:
    world = World()
    rig = world.rig(proxy=True)
    rig.send(b"PROXY TCP4 203.0.113.9 192.0.2.1 5555 110\r\nUTF8\r\n")
    assert rig.converse() == b"+OK test POP3 server ready\r\n+OK UTF-8 enabled\r\n"
    assert world.opened == [("203.0.113.9", False, True)]


def test_a_proxy_header_without_a_client_earns_no_trust() -> None:
    world = World()
    rig = world.rig(proxy=True)
    rig.send(b"PROXY UNKNOWN\r\n")
    rig.converse()
    assert world.opened == [("192.0.2.7", False, False)]


def test_a_bad_proxy_header_closes() -> None:
    rig = World().rig(proxy=True)
    rig.send(b"HELO there\r\n")
    rig.converse()
    assert rig.host.closed_with[0].startswith("bad PROXY header")


# -- expiry -----------------------------------------------------------------------------------


def test_login_and_idle_timeouts_count_from_the_last_command() -> None:
    world = World()
    rig = world.rig()
    rig.converse()
    now = world.clock.now
    assert rig.channel.expired(now + LIMITS.login_timeout) is None
    world.clock.advance(50)
    rig.send(b"NO")  # bytes that make no command are no activity
    rig.converse()
    assert rig.channel.expired(now + LIMITS.login_timeout + 1) == "login timeout"
    rig.send(b"OP\r\n" + LOGIN)
    rig.converse()
    later = world.clock.now
    assert rig.channel.expired(later + LIMITS.login_timeout + 1) is None  # logged in now
    assert rig.channel.expired(later + LIMITS.idle_timeout + 1) == "idle timeout"


def test_no_idle_timeout_while_the_server_owes_the_answer() -> None:
    world = World()
    rig = world.rig(login=False)  # the login job never comes back
    rig.send(LOGIN)
    rig.converse()
    assert rig.host.logins
    assert rig.channel.expired(world.clock.now + 10 * LIMITS.idle_timeout) is None


@pytest.mark.parametrize(
    ("options", "limit", "reason"),
    [
        ({"proxy": True}, LIMITS.proxy_timeout, "PROXY header timeout"),
        ({"implicit_tls": True}, LIMITS.handshake_timeout, "TLS handshake timeout"),
    ],
)
def test_phases_before_the_session_have_their_own_timeouts(
    options: dict[str, bool], limit: float, reason: str
) -> None:
    world = World()
    rig = world.rig(**options)
    rig.run()
    assert rig.channel.expired(world.clock.now + limit) is None
    assert rig.channel.expired(world.clock.now + limit + 0.1) == reason


# -- store requests ---------------------------------------------------------------------------


def test_a_store_request_parks_the_channel_until_it_is_complete() -> None:
    world = World()
    rig = world.rig()
    rig.send(LOGIN)
    rig.converse()
    rig.complete_stores = False
    rig.send(b"RETR 1\r\nSTAT\r\n")
    assert rig.converse() == b""  # the access check is out: nothing to answer yet
    assert len(rig.host.stores) == 1
    assert rig.channel.interest == 0  # neither reading nor writing meanwhile
    assert rig.channel.expired(world.clock.now + 10 * LIMITS.idle_timeout) is None
    rig.complete_stores = True
    answered = rig.converse()
    assert answered.startswith(b"+OK 28 octets\r\nSubject: one\r\n")
    assert answered.endswith(b"body\r\n.\r\n+OK 1 28\r\n")


def test_read_marks_of_a_dropped_session_are_run_detached() -> None:
    world = World()
    rig = world.rig()
    rig.send(LOGIN + b"RETR 1\r\n")
    rig.converse()
    rig.client.close()
    rig.run()
    assert rig.host.detached == 1
    assert world.maildrop.read == ["e1"]
