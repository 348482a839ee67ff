"""Session behaviour the transcripts cannot show: effects, streaming, logs, metrics, misuse."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pop3d.errors import AuthFailed, StoreUnavailable
from pop3d.ports import Credentials
from pop3d.protocol import LocalProtocolError
from pop3d.session import Authenticate, Await, Effect, Peer, Send, SessionSettings, StartTls

from .fakes import complete
from .transcript import ADDRESS, USER_ID, Harness


def _effect(harness: Harness, line: bytes) -> Send | StartTls | Authenticate:
    harness.session.feed(line)
    return _resolved(harness.session.next_effect())


def _resolved(effect: Effect | None) -> Send | StartTls | Authenticate:
    """An Await carried through to the effect it resumes with, over the fake store, whose
    requests need only be marked complete (the channel's job: test_worker_channel.py)."""
    assert effect is not None
    while isinstance(effect, Await):
        try:
            item = next(effect.steps)
        except StopIteration:
            effect = effect.resume(None)
            continue
        except Exception as error:
            effect = effect.resume(error)
            continue
        if isinstance(item, bytes):
            effect = effect.resume(item)
        else:
            complete(item)
    return effect


def _body(send: object) -> Iterator[bytes]:
    """A streamed body's bytes, its fake store requests completed on the way."""
    assert isinstance(send, Send)
    assert not isinstance(send.data, bytes)
    for item in send.data:
        if isinstance(item, bytes):
            yield item
        else:
            complete(item)


def _send_bytes(effect: object) -> bytes:
    assert isinstance(effect, Send)
    return effect.data if isinstance(effect.data, bytes) else b"".join(_body(effect))


def _logged_in(harness: Harness | None = None) -> Harness:
    harness = harness or Harness()
    harness.feed(b"USER alice@example.com\r\nPASS secret\r\n")
    assert harness.session.authenticated
    return harness


def test_greeting() -> None:
    harness = Harness(SessionSettings(server_name="mx.example.org"))
    assert harness.output() == b"+OK mx.example.org POP3 server ready\r\n"


@pytest.mark.parametrize(
    ("lines", "mechanism"),
    [
        ([b"USER alice@example.com\r\n", b"PASS s e\r\n"], "USER"),
        ([b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMgZQ==\r\n"], "PLAIN"),
        ([b"AUTH LOGIN\r\n", b"YWxpY2VAZXhhbXBsZS5jb20=\r\n", b"cyBl\r\n"], "LOGIN"),
    ],
)
def test_every_login_method_produces_the_same_authenticate(
    lines: list[bytes], mechanism: str
) -> None:
    harness = Harness(peer=Peer("198.51.100.4", plaintext_ok=True))
    effects = [_effect(harness, line) for line in lines]
    assert effects[-1] == Authenticate(
        Credentials("alice@example.com", "s e", "198.51.100.4", mechanism), 10000
    )
    assert harness.session.next_effect() is None  # waiting for login_done
    assert not harness.session.authenticated


def test_failed_login_is_delayed_and_stays_in_authorization() -> None:
    harness = Harness(SessionSettings(server_name="x", failure_delay=0.75))
    _effect(harness, b"USER alice@example.com\r\n")
    attempt = _effect(harness, b"PASS nope\r\n")
    assert isinstance(attempt, Authenticate)
    send = harness.session.login_done(AuthFailed())
    assert send == Send(b"-ERR [AUTH] Authentication failed\r\n", delay=0.75)
    assert not harness.session.authenticated
    assert harness.metrics.counters["auth.failures"] == 1


def test_successful_login_takes_a_slot_and_a_snapshot() -> None:
    harness = Harness(SessionSettings(server_name="x", max_connections_per_user=2))
    _effect(harness, b"USER alice@example.com\r\n")
    _effect(harness, b"PASS secret\r\n")
    send = harness.session.login_done(harness.grant())
    assert send == Send(b"+OK Logged in, 3 messages (198 octets)\r\n")
    assert harness.session.authenticated
    assert harness.registry.sessions[USER_ID] == {"test:1"}


def test_login_done_without_authenticate_is_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        Harness().session.login_done(AuthFailed())


def test_login_done_after_close_takes_no_slot() -> None:
    harness = Harness()
    _effect(harness, b"USER alice@example.com\r\n")
    _effect(harness, b"PASS secret\r\n")
    harness.session.close("timeout")
    assert harness.session.login_done(harness.grant()) == Send(b"", close=True)
    assert not harness.registry.sessions.get(USER_ID)
    assert not harness.session.authenticated


def test_unexpected_authenticator_error_is_internal() -> None:
    harness = Harness()
    _effect(harness, b"USER alice@example.com\r\n")
    _effect(harness, b"PASS secret\r\n")
    send = harness.session.login_done(KeyError("oops"))
    assert _send_bytes(send) == b"-ERR Internal server error\r\n"


def test_close_releases_once_and_is_idempotent() -> None:
    harness = _logged_in()
    harness.session.close("eof")
    harness.session.close("eof again")
    assert harness.registry.released == [(USER_ID, "test:1")]
    assert harness.session.next_effect() is None


def test_quit_releases_without_waiting_for_close() -> None:
    harness = _logged_in()
    harness.feed(b"QUIT\r\n")
    assert harness.registry.released == [(USER_ID, "test:1")]
    harness.session.close()
    assert harness.registry.released == [(USER_ID, "test:1")]


def test_registry_release_failure_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    harness = _logged_in()
    harness.registry.fail("release", StoreUnavailable())
    harness.session.close("eof")
    assert "registry release failed" in caplog.text


def test_retr_counts_as_read_only_when_fully_pulled() -> None:
    harness = _logged_in()
    send = _effect(harness, b"RETR 1\r\nDELE 2\r\nQUIT\r\n")
    chunks = _body(send)
    assert next(chunks) == b"+OK 96 octets\r\n"
    next(chunks)
    assert harness.session.next_effect() is None  # DELE waits for the body
    assert harness.session.counters.retr == 0
    rest = b"".join(chunks)
    assert rest.endswith(b"Bob\r\n.\r\n")
    assert harness.session.counters.retr == 1
    assert _send_bytes(_resolved(harness.session.next_effect())) == b"+OK Message 2 deleted\r\n"
    assert harness.maildrop.read == []  # marks wait for the end of the session
    quit_reply = _send_bytes(_resolved(harness.session.next_effect()))
    assert quit_reply.startswith(b"+OK pop.example.test POP3 server signing off (1 messages")
    assert harness.maildrop.updates == [(["e2"], ["e1"])]  # one update: deletions and marks
    assert harness.maildrop.read == ["e1"]


def test_read_marks_left_at_the_end_of_a_session_are_handed_to_the_worker() -> None:
    harness = _logged_in()
    assert _send_bytes(_effect(harness, b"RETR 3\r\n")).endswith(b"ok\r\n.\r\n")
    assert _send_bytes(_effect(harness, b"RETR 1\r\n")).endswith(b"Bob\r\n.\r\n")
    leftover = harness.session.close("eof")
    assert leftover is not None
    assert harness.maildrop.read == []
    for item in leftover:  # what the worker does, completing each request
        complete(item)
    assert harness.maildrop.read == ["e3", "e1"]
    assert harness.session.close("again") is None


def test_aborted_retr_is_not_marked_read() -> None:
    harness = _logged_in()
    send = _effect(harness, b"RETR 2\r\n")
    chunks = _body(send)
    next(chunks)
    next(chunks)
    assert isinstance(send, Send)
    send.data.close()  # type: ignore[union-attr]  # the client went away
    assert harness.session.counters.retr == 0
    assert harness.session.close("eof") is None  # nothing to mark read


def test_store_failure_mid_stream_escapes_to_the_worker() -> None:
    harness = _logged_in()
    harness.maildrop.break_after_chunks = 2
    send = _effect(harness, b"RETR 1\r\n")
    with pytest.raises(RuntimeError, match="mid-message"):
        _send_bytes(send)
    assert harness.session.close("broken") is None


def test_missing_message_is_an_error_before_any_ok() -> None:
    harness = _logged_in()
    harness.maildrop.mailboxes[USER_ID].pop(0)  # deleted by another session after login
    assert _send_bytes(_effect(harness, b"RETR 1\r\n")) == b"-ERR Message no longer available\r\n"
    assert _send_bytes(_effect(harness, b"NOOP\r\n")) == b"+OK\r\n"


def test_stls_discards_commands_sent_before_the_handshake() -> None:
    harness = Harness(peer=Peer("192.0.2.1", plaintext_ok=False, stls_available=True))
    effect = _effect(harness, b"STLS\r\nUSER alice@example.com\r\nPASS secret\r\n")
    assert effect == StartTls(b"+OK Begin TLS negotiation\r\n")
    assert harness.session.next_effect() is None
    harness.session.tls_started()
    assert harness.session.next_effect() is None
    assert harness.session.buffered == 0
    reply = _send_bytes(_effect(harness, b"PASS secret\r\n"))
    assert reply == b"-ERR Send USER first\r\n"  # the pre-TLS USER is forgotten too


def test_tls_started_without_stls_is_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        Harness().session.tls_started()


def test_counters_and_metrics_of_a_session() -> None:
    harness = _logged_in()
    harness.feed(b"RETR 1\r\nTOP 2 0\r\nDELE 3\r\nDELE 1\r\nFOO\r\nQUIT\r\n")
    counters = harness.session.counters
    assert (counters.retr, counters.retr_bytes) == (1, 96)
    assert (counters.top, counters.top_bytes) == (1, 42)
    assert (counters.dele, counters.dele_bytes) == (2, 118)
    metrics = harness.metrics.counters
    assert metrics["commands.retr"] == metrics["commands.top"] == metrics["commands.quit"] == 1
    assert metrics["commands.dele"] == 2
    assert metrics["commands.unknown"] == 1
    assert metrics["messages.retrieved"] == 1
    assert metrics["bytes.sent"] == 96 + 42
    assert metrics["messages.deleted"] == 2
    assert metrics["auth.attempts"] == 1
    timed = {name for name, _ in harness.metrics.timings}
    assert timed == {"command.retr", "command.top", "command.quit"}


def test_counters_are_a_copy() -> None:
    harness = _logged_in()
    counters = harness.session.counters
    counters.retr = 99
    assert harness.session.counters.retr == 0


def test_login_and_logout_are_logged_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pop3d.session")
    harness = Harness(peer=Peer("203.0.113.5", tls=True))
    harness.feed(b"USER alice@example.com\r\nPASS wrong-key\r\n")
    harness.feed(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==\r\n")
    harness.clock.advance(12.5)
    harness.feed(b"RETR 3\r\nDELE 3\r\nQUIT\r\n")
    messages = [record.getMessage() for record in caplog.records]
    logins = [m for m in messages if m.startswith("login user=")]
    assert logins == [f"login user={ADDRESS} method=PLAIN ip=203.0.113.5 tls=yes session=test:1"]
    logouts = [m for m in messages if m.startswith("logout ")]
    assert logouts == [
        # 2 s waiting out the failed login's delay, then 12.5 s logged in
        f"logout user={ADDRESS} reason=quit retr=1/22 top=0/0 dele=1/22 duration=14.500"
        " session=test:1"
    ]
    assert any("login failed" in m and "'alice@example.com'" in m for m in messages)
    for secret in ("wrong-key", "secret", "AHNlY3JldA"):
        assert secret not in caplog.text


def test_internal_errors_are_logged_with_their_type(caplog: pytest.LogCaptureFixture) -> None:
    harness = _logged_in()
    harness.maildrop.fail("open_top", ZeroDivisionError("boom"))
    assert _send_bytes(_effect(harness, b"TOP 1 1\r\n")) == b"-ERR Internal server error\r\n"
    assert "ZeroDivisionError in Top" in caplog.text
    assert caplog.records[-1].exc_info is not None


def test_buffered_reports_unparsed_input() -> None:
    harness = Harness()
    harness.session.feed(b"CAPA\r\nNOO")
    assert harness.session.buffered == 9
    assert harness.session.next_effect() is not None
    assert harness.session.buffered == 3


def test_bad_command_budget_does_not_apply_after_login() -> None:
    harness = _logged_in(Harness(SessionSettings(server_name="x", max_bad_commands=2)))
    harness.feed(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert harness.output().endswith(b"-ERR Unknown command\r\n+OK\r\n")


def test_snapshot_respects_the_message_limit() -> None:
    harness = _logged_in(Harness(SessionSettings(server_name="x", max_messages=1)))
    harness.feed(b"STAT\r\n")
    assert harness.output().endswith(b"+OK 1 96\r\n")


def test_the_failure_delay_counts_from_the_start_of_the_attempt() -> None:
    harness = Harness(SessionSettings(server_name="x", failure_delay=2.0))
    _effect(harness, b"USER alice@example.com\r\n")
    _effect(harness, b"PASS nope\r\n")
    harness.clock.advance(0.5)  # the authenticator took half a second
    send = harness.session.login_done(AuthFailed())
    assert send.delay == pytest.approx(1.5)
    _effect(harness, b"USER alice@example.com\r\n")
    _effect(harness, b"PASS nope\r\n")
    harness.clock.advance(3.0)  # slower than the delay: answered at once
    assert harness.session.login_done(AuthFailed()).delay == 0.0


def test_a_foreign_authorization_identity_is_a_delayed_failure_without_a_lookup() -> None:
    harness = Harness(SessionSettings(server_name="x", failure_delay=1.0))
    effect = _effect(harness, b"AUTH PLAIN ZXZlAGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==\r\n")
    assert effect == Send(b"-ERR [AUTH] Authorization identity must match the login\r\n",
                          delay=1.0)
    assert harness.metrics.counters["auth.failures"] == 1


@pytest.mark.parametrize(
    ("username", "logged"),
    [
        ("alice@example.com", "user='alice@example.com'"),
        ("pk_abcdefghij_SECRETSECRETSECRET", "user=(not an address)"),
        ("x" * 300 + "@example.com", "user=(not an address)"),
    ],
)
def test_failed_login_lines_show_addresses_only(
    username: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness()
    harness.feed(f"USER {username}\r\n".encode())
    with caplog.at_level(logging.INFO, logger="pop3d.session"):
        harness.feed(b"PASS wrong-key\r\n")
    [line] = [r.getMessage() for r in caplog.records if "login failed" in r.getMessage()]
    assert logged in line
    assert "SECRET" not in line
    assert "wrong-key" not in line
