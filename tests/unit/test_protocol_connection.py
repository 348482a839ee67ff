"""The Connection: ordering, the state table in action, the TLS barrier, API misuse."""

from __future__ import annotations

import pytest

from pop3d.protocol import (
    NEED_DATA,
    PAUSED,
    Auth,
    BadCommand,
    Body,
    Capa,
    Connection,
    Continue,
    Err,
    LineTooLong,
    LocalProtocolError,
    MultiLine,
    Ok,
    Pass,
    Quit,
    Retr,
    SaslCancel,
    SaslResponse,
    Stat,
    State,
    Stls,
    User,
)


def _greeted(**kwargs: int) -> Connection:
    conn = Connection(**kwargs)
    assert conn.send(Ok("ready")) == b"+OK ready\r\n"
    return conn


def _logged_in() -> Connection:
    conn = _greeted()
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    assert conn.next_event() == User("a")
    conn.send(Ok())
    assert conn.next_event() == Pass("b")
    conn.send(Ok("in"))
    assert conn.state is State.TRANSACTION
    return conn


def test_no_events_before_the_greeting() -> None:
    conn = Connection()
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() is PAUSED
    conn.send(Ok("hi"))
    assert conn.next_event() == Capa()


def test_greeting_must_be_ok() -> None:
    with pytest.raises(LocalProtocolError):
        Connection().send(Err("go away"))


def test_one_event_at_a_time_until_it_is_answered() -> None:
    conn = _greeted()
    conn.receive_data(b"CAPA\r\nQUIT\r\n")
    assert conn.next_event() == Capa()
    assert conn.next_event() is PAUSED
    conn.send(MultiLine("caps", ("TOP",)))
    assert conn.next_event() == Quit()
    assert conn.next_event() is PAUSED


def test_need_data_for_a_partial_line() -> None:
    conn = _greeted()
    conn.receive_data(b"ST")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"AT\r\n")
    assert isinstance(conn.next_event(), BadCommand)  # STAT before login
    assert conn.buffered == 0


def test_sending_without_a_pending_event_is_misuse() -> None:
    conn = _greeted()
    with pytest.raises(LocalProtocolError, match="no client event"):
        conn.send(Ok())


def test_sending_a_non_reply_is_misuse() -> None:
    conn = _greeted()
    conn.receive_data(b"CAPA\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError, match="not a reply"):
        conn.send(Capa())  # type: ignore[arg-type]
    assert conn.send(Ok()) == b"+OK\r\n"  # the failed send changed nothing


def test_continuation_only_answers_auth() -> None:
    conn = _greeted()
    conn.receive_data(b"USER a\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError, match="continuation"):
        conn.send(Continue())


def test_login_by_pass_enters_transaction_and_failure_does_not() -> None:
    conn = _greeted()
    conn.receive_data(b"PASS x\r\nPASS y\r\nSTAT\r\n")
    conn.next_event()
    conn.send(Err("[AUTH] no"))
    assert conn.state is State.AUTHORIZATION
    conn.next_event()
    conn.send(Ok("in"))
    assert conn.state is State.TRANSACTION
    assert conn.next_event() == Stat()


def test_sasl_exchange_reads_responses_not_commands() -> None:
    conn = _greeted()
    conn.receive_data(b"AUTH PLAIN\r\nQUIT\r\nAUTH PLAIN\r\nQUIT NOW\r\n*\r\nQUIT\r\n")
    assert conn.next_event() == Auth("PLAIN")
    assert conn.send(Continue()) == b"+ \r\n"
    assert conn.state is State.SASL
    assert conn.next_event() == SaslResponse(b"AB\x13")  # "QUIT" is valid base64
    conn.send(Err("Malformed"))
    assert conn.state is State.AUTHORIZATION
    assert conn.next_event() == Auth("PLAIN")
    conn.send(Continue())
    assert conn.next_event() == BadCommand("Invalid base64 in authentication exchange")
    conn.send(Err("bad"))
    assert conn.state is State.AUTHORIZATION
    assert conn.next_event() == BadCommand("Unknown command")  # "*" outside an exchange
    conn.send(Err("?"))
    assert conn.next_event() == Quit()


def test_sasl_exchange_to_login() -> None:
    conn = _greeted()
    conn.receive_data(b"AUTH LOGIN\r\nYm9i\r\ncHc=\r\n*\r\n")
    conn.next_event()
    assert conn.send(Continue(b"Username:")) == b"+ VXNlcm5hbWU6\r\n"
    assert conn.next_event() == SaslResponse(b"bob")
    conn.send(Continue(b"Password:"))
    assert conn.next_event() == SaslResponse(b"pw")
    conn.send(Ok("in"))
    assert conn.state is State.TRANSACTION
    assert isinstance(conn.next_event(), BadCommand)


def test_sasl_cancel() -> None:
    conn = _greeted()
    conn.receive_data(b"AUTH PLAIN\r\n*\r\n")
    conn.next_event()
    conn.send(Continue())
    assert conn.next_event() == SaslCancel()
    conn.send(Err("cancelled"))
    assert conn.state is State.AUTHORIZATION


def test_bare_auth_listing_does_not_log_in() -> None:
    conn = _greeted()
    conn.receive_data(b"AUTH\r\n")
    conn.next_event()
    conn.send(MultiLine("mechanisms", ("PLAIN",)))
    assert conn.state is State.AUTHORIZATION


def test_stls_discards_everything_sent_before_the_handshake() -> None:
    conn = _greeted()
    conn.receive_data(b"STLS\r\nUSER injected\r\nPASS x\r\n")
    assert conn.next_event() == Stls()
    conn.send(Ok("Begin TLS"))
    assert conn.state is State.TLS_HANDSHAKE
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() is PAUSED
    conn.tls_started()
    assert conn.buffered == 0
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() == Capa()


def test_refused_stls_keeps_reading() -> None:
    conn = _greeted()
    conn.receive_data(b"STLS\r\nCAPA\r\n")
    conn.next_event()
    conn.send(Err("no"))
    assert conn.next_event() == Capa()


def test_tls_started_outside_a_handshake_is_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        _greeted().tls_started()


def test_quit_in_transaction_enters_update_then_closes() -> None:
    conn = _logged_in()
    conn.receive_data(b"QUIT\r\nNOOP\r\n")
    assert conn.next_event() == Quit()
    assert conn.state is State.UPDATE
    conn.send(Err("[SYS/TEMP] later"))
    assert conn.state is State.CLOSED
    assert conn.next_event() is PAUSED
    assert conn.buffered == 0


def test_quit_in_authorization_closes() -> None:
    conn = _greeted()
    conn.receive_data(b"QUIT\r\n")
    conn.next_event()
    conn.send(Ok("bye"))
    assert conn.state is State.CLOSED
    conn.receive_data(b"more junk\r\n")
    assert conn.buffered == 0


def test_line_too_long_closes_after_the_reply() -> None:
    conn = _greeted(max_line_length=8)
    conn.receive_data(b"USER 123456789\r\nQUIT\r\n")
    assert conn.next_event() == LineTooLong()
    conn.send(Err("Line too long"))
    assert conn.state is State.CLOSED
    assert conn.next_event() is PAUSED


def test_send_stream_changes_state_before_the_body_is_pulled() -> None:
    conn = _logged_in()
    conn.receive_data(b"RETR 1\r\nNOOP\r\n")
    assert conn.next_event() == Retr(1)
    chunks = conn.send_stream(Body("3 octets", iter([b"a\r\n"])))
    assert conn.next_event() is not PAUSED
    assert b"".join(chunks) == b"+OK 3 octets\r\na\r\n.\r\n"


def test_send_drains_a_body() -> None:
    conn = _logged_in()
    conn.receive_data(b"RETR 1\r\n")
    conn.next_event()
    assert conn.send(Body("x", iter([b".a\r\n"]))) == b"+OK x\r\n..a\r\n.\r\n"


def test_close_stops_everything() -> None:
    conn = _logged_in()
    conn.receive_data(b"STAT\r\n")
    conn.close()
    assert conn.state is State.CLOSED
    assert conn.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        conn.send(Ok())
