"""Line framing, keyword and argument rules, base64 and SASL messages."""

from __future__ import annotations

import pytest

from pop3d.protocol.events import (
    Auth,
    BadCommand,
    Capa,
    Continue,
    Dele,
    Err,
    LineTooLong,
    List,
    LocalProtocolError,
    Pass,
    Retr,
    SaslCancel,
    SaslResponse,
    Top,
    Uidl,
    User,
)
from pop3d.protocol.parser import (
    COMMANDS,
    LineReader,
    SaslExchange,
    SaslLogin,
    decode_base64,
    parse_command,
    parse_message_number,
    parse_plain,
    parse_sasl_response,
)
from pop3d.protocol.states import LEGAL, State

AUTHZ, TRANS = State.AUTHORIZATION, State.TRANSACTION


def _lines(reader: LineReader) -> list[bytes | LineTooLong]:
    lines: list[bytes | LineTooLong] = []
    while (line := reader.read_line()) is not None:
        lines.append(line)
    return lines


# -- framing ------------------------------------------------------------------------------------


def test_crlf_and_bare_lf_both_end_lines() -> None:
    reader = LineReader()
    reader.feed(b"STAT\r\nLIST\nNOOP\r")
    assert _lines(reader) == [b"STAT", b"LIST"]
    reader.feed(b"\n")
    assert _lines(reader) == [b"NOOP"]
    assert len(reader) == 0


def test_only_one_cr_is_stripped() -> None:
    reader = LineReader()
    reader.feed(b"PASS a\r\r\n")
    assert _lines(reader) == [b"PASS a\r"]


def test_line_of_exactly_the_limit_passes_with_either_line_end() -> None:
    reader = LineReader(max_length=10)
    reader.feed(b"x" * 10 + b"\r\n" + b"y" * 10 + b"\n")
    assert _lines(reader) == [b"x" * 10, b"y" * 10]


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b""])
def test_line_one_over_the_limit_is_too_long(ending: bytes) -> None:
    reader = LineReader(max_length=10)
    reader.feed(b"x" * 11 + ending + (b"" if ending else b"z"))
    assert _lines(reader) == [LineTooLong()]
    assert len(reader) == 0  # the buffer is dropped at once


def test_incomplete_line_at_the_limit_waits_for_more() -> None:
    reader = LineReader(max_length=10)
    reader.feed(b"x" * 10 + b"\r")
    assert reader.read_line() is None
    reader.feed(b"\n")
    assert reader.read_line() == b"x" * 10


def test_bytewise_feeding_finds_the_line_end() -> None:
    reader = LineReader()
    for byte in b"UIDL 1\r\n":
        assert reader.read_line() is None
        reader.feed(bytes([byte]))
    assert reader.read_line() == b"UIDL 1"


def test_clear_forgets_everything() -> None:
    reader = LineReader()
    reader.feed(b"USER evil\r\nPASS")
    reader.clear()
    reader.feed(b"STAT\r\n")
    assert _lines(reader) == [b"STAT"]


def test_max_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineReader(0)


# -- commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "state", "event"),
    [
        (b"capa", AUTHZ, Capa()),
        (b"USER alice@example.com", AUTHZ, User("alice@example.com")),
        (b"user  alice ", AUTHZ, User("alice")),
        (b"PASS a b  c ", AUTHZ, Pass("a b  c ")),
        (b"PASS  lead", AUTHZ, Pass(" lead")),
        (b"AUTH", AUTHZ, Auth(None)),
        (b"auth plain", AUTHZ, Auth("PLAIN")),
        (b"AUTH PLAIN =", AUTHZ, Auth("PLAIN", b"")),
        (b"AUTH LOGIN YWxpY2U=", AUTHZ, Auth("LOGIN", b"alice")),
        (b"LIST", TRANS, List()),
        (b"LIST 7", TRANS, List(7)),
        (b"list 007", TRANS, List(7)),
        (b"RETR 1", TRANS, Retr(1)),
        (b"DELE 9999999999", TRANS, Dele(9999999999)),
        (b"UIDL", TRANS, Uidl()),
        (b"TOP 2 0", TRANS, Top(2, 0)),
        (b"TOP 2\t10", TRANS, Top(2, 10)),
    ],
)
def test_commands(line: bytes, state: State, event: object) -> None:
    assert parse_command(line, state) == event


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"FOO", "Unknown command"),
        (b"", "Empty command line"),
        (b"   ", "Empty command line"),
        (b" STAT", "Unknown command"),  # the keyword comes first
        (b"STATUS", "Unknown command"),
        (b"RETR", "Syntax: RETR msg"),
        (b"RETR 1 2", "Syntax: RETR msg"),
        (b"TOP 1", "Syntax: TOP msg lines"),
        (b"TOP 1 2 3", "Syntax: TOP msg lines"),
        (b"LIST 1 2", "Syntax: LIST [msg]"),
        (b"STAT x", "Syntax: STAT"),
        (b"RETR 0", "No message 0: message numbers start at 1"),
        (b"RETR -3", "Message number must not be negative"),
        (b"RETR 1.5", "Message number must be a decimal number"),
        (b"RETR \xd9\xa1", "Message number must be a decimal number"),  # Arabic-Indic one
        (b"RETR 12345678901", "Message number too large"),
        (b"TOP 1 -1", "Line count must not be negative"),
        (b"TOP 1 12345678901", "Line count too large"),
    ],
)
def test_bad_commands(line: bytes, reason: str) -> None:
    event = parse_command(line, TRANS)
    assert isinstance(event, BadCommand)
    assert event.reason == reason


def test_bad_arguments_name_the_verb_for_metrics() -> None:
    assert parse_command(b"retr x", TRANS) == BadCommand(
        "Message number must be a decimal number", "RETR"
    )
    assert parse_command(b"FOO", TRANS).verb is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("state", "hint"), [(AUTHZ, "log in first"), (TRANS, "already logged in")])
def test_wrong_state_names_the_problem(state: State, hint: str) -> None:
    for keyword, rule in COMMANDS.items():
        event = parse_command(keyword.lower() + b" 1", state)
        if rule.event in LEGAL[state]:
            continue
        verb = keyword.decode()
        reason = f"{verb} is not allowed in the {state.value} state ({hint})"
        assert event == BadCommand(reason, verb)


def test_user_and_pass_must_be_utf8() -> None:
    assert parse_command(b"USER \xff", AUTHZ) == BadCommand("User name is not valid UTF-8", "USER")
    assert parse_command(b"PASS \xff", AUTHZ) == BadCommand("Password is not valid UTF-8", "PASS")
    assert parse_command("USER jörg".encode(), AUTHZ) == User("jörg")


def test_auth_initial_response_must_be_base64() -> None:
    assert parse_command(b"AUTH PLAIN !!!", AUTHZ) == BadCommand(
        "Invalid base64 in initial response", "AUTH"
    )


def test_pass_never_shows_the_password() -> None:
    assert "hunter2" not in repr(parse_command(b"PASS hunter2", AUTHZ))
    assert "YWxpY2U" not in repr(parse_command(b"AUTH PLAIN YWxpY2U=", AUTHZ))
    assert "alice" not in repr(parse_command(b"AUTH PLAIN YWxpY2U=", AUTHZ))


@pytest.mark.parametrize(
    ("arg", "expected"),
    [(b"1", 1), (b"0", BadCommand("No message 0: message numbers start at 1")), (b"42", 42)],
)
def test_message_numbers(arg: bytes, expected: object) -> None:
    assert parse_message_number(arg) == expected


# -- base64 and SASL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decoded"),
    [(b"=", b""), (b"", b""), (b"YQ==", b"a"), (b"YQ", None), (b"Y Q==", None), (b"*", None)],
)
def test_decode_base64(text: bytes, decoded: bytes | None) -> None:
    assert decode_base64(text) == decoded


def test_sasl_responses() -> None:
    assert parse_sasl_response(b"*") == SaslCancel()
    assert parse_sasl_response(b"") == SaslResponse(b"")
    assert parse_sasl_response(b"=") == SaslResponse(b"")
    assert parse_sasl_response(b"YWI=") == SaslResponse(b"ab")
    assert isinstance(parse_sasl_response(b"!!"), BadCommand)


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        (b"\0alice\0pw", ("", "alice", "pw")),
        (b"alice\0alice\0p w", ("alice", "alice", "p w")),
        (b"\0alice\0", None),  # RFC 4616: the password is not empty
        (b"\0\0pw", None),  # nor the authentication identity
        (b"alice\0pw", None),
        (b"\0a\0b\0c", None),
        (b"\0\xff\0pw", None),
    ],
)
def test_parse_plain(message: bytes, parsed: tuple[str, str, str] | None) -> None:
    assert parse_plain(message) == parsed


def test_plain_exchange() -> None:
    assert SaslExchange("PLAIN").start(None) == Continue(b"")
    assert SaslExchange("PLAIN").start(b"\0bob\0pw") == SaslLogin("bob", "pw", "PLAIN")
    assert SaslExchange("PLAIN").step(b"Bob\0bob\0pw") == SaslLogin("bob", "pw", "PLAIN", "Bob")
    assert SaslExchange("PLAIN").step(b"eve\0bob\0pw") == SaslLogin("bob", "pw", "PLAIN", "eve")
    assert SaslExchange("PLAIN").step(b"junk") == Err("Malformed PLAIN credentials")


def test_login_exchange() -> None:
    exchange = SaslExchange("LOGIN")
    assert exchange.start(None) == Continue(b"Username:")
    assert exchange.step(b"bob") == Continue(b"Password:")
    assert exchange.step(b"p w") == SaslLogin("bob", "p w", "LOGIN")
    assert SaslExchange("LOGIN").start(b"bob") == Continue(b"Password:")
    assert SaslExchange("LOGIN").step(b"\xff") == Err("Credentials are not valid UTF-8")
    assert "p w" not in repr(SaslLogin("bob", "p w", "LOGIN"))


def test_unknown_mechanism_is_our_mistake() -> None:
    with pytest.raises(LocalProtocolError):
        SaslExchange("GSSAPI")
