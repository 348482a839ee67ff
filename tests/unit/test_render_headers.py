"""Header fields of rendered messages: cleaning, RFC 2047 words, folding, RFC 2231 parameters."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
from email.header import decode_header, make_header

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.message import headers
from pop3d.message.headers import EmailAddress


def _decode_word(word: str) -> bytes:
    assert word.startswith("=?utf-8?b?")
    assert word.endswith("?=")
    return base64.b64decode(word[len("=?utf-8?b?"):-2])


def _parse_field(raw: bytes) -> str:
    message = email.message_from_bytes(raw + b"\r\n", policy=email.policy.default)
    name = raw.split(b":", 1)[0].decode()
    return str(message[name])


@given(st.text(min_size=1, max_size=300), st.integers(min_value=20, max_value=75))
def test_encoded_words_fit_and_split_between_characters(text: str, width: int) -> None:
    cleaned = headers.clean(text) or "x"
    words = headers.encoded_words(cleaned, first_width=width)
    assert len(words[0]) <= max(width, 20)
    assert all(len(w) <= 75 for w in words)
    # Each word holds whole characters: it decodes on its own.
    assert "".join(_decode_word(w).decode("utf-8") for w in words) == cleaned


def test_clean_makes_one_line() -> None:
    assert headers.clean(" a\r\n\tb  c\x00d\x7fe \ud800 ") == "a b c d e \ufffd"
    assert headers.clean(None) == ""


@pytest.mark.parametrize("subject", [
    "short", "word " * 40, "Grüße " * 30, "=?utf-8?q?not-an-encoded-word?=", "x" * 200, "",
])
def test_unstructured_round_trips_within_the_line_limit(subject: str) -> None:
    raw = headers.unstructured("Subject", subject)
    assert raw.isascii()
    lines = raw.split(b"\r\n")[:-1]
    assert all(len(line) <= 76 for line in lines)
    assert all(line.strip() for line in lines)  # no whitespace-only continuation lines
    assert _parse_field(raw) == headers.clean(subject)


def test_plain_ascii_subject_is_folded_not_encoded() -> None:
    raw = headers.unstructured("Subject", "word " * 20)
    assert b"=?" not in raw
    assert raw.count(b"\r\n ") == 1


@pytest.mark.parametrize(("mailbox", "expected"), [
    (EmailAddress("a@x"), ["a@x"]),
    (EmailAddress("a@x", "Ann Example"), ["Ann", "Example", "<a@x>"]),
    (EmailAddress("a@x", 'Doe, "J" \\ Jr.'), ['"Doe, \\"J\\" \\\\ Jr."', "<a@x>"]),
    (EmailAddress(" <a@x> ", ""), ["a@x"]),
])
def test_mailbox_tokens(mailbox: EmailAddress, expected: list[str]) -> None:
    assert headers.mailbox_tokens(mailbox) == expected


def _decoded_addresses(raw: bytes) -> list[tuple[str, str]]:
    # RFC 2047 section 6.2: whitespace between adjacent encoded words is dropped.  (The
    # email package's default policy keeps it inside address phrases, so decode the
    # RFC way here.)
    value = raw.split(b":", 1)[1].decode("ascii").replace("\r\n", "")
    return email.utils.getaddresses([str(make_header(decode_header(value)))])


@pytest.mark.parametrize("name", ["Doe, \"J\" \\ Jr.", "Zoë", "=?x?", "a" * 100, "日本" * 30])
def test_display_names_round_trip(name: str) -> None:
    listed = [EmailAddress("a@example.com", name), EmailAddress("b@example.com")]
    raw = headers.addresses("To", listed)
    assert raw.isascii()
    assert all(len(line) <= 76 for line in raw.split(b"\r\n"))
    assert _decoded_addresses(raw) == [(name, "a@example.com"), ("", "b@example.com")]


@pytest.mark.parametrize("value", ["a.pdf", 'quote".txt', "x" * 150, "Ünïcödé " * 12])
def test_parameters_round_trip(value: str) -> None:
    tokens = headers.with_parameters("attachment", headers.parameter("filename", value))
    raw = headers.field("Content-Disposition", tokens)
    assert all(len(line) <= 76 for line in raw.split(b"\r\n"))
    message = email.message_from_bytes(raw + b"\r\n", policy=email.policy.default)
    assert message.get_filename() == headers.clean(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("text/plain", ("text/plain", None)),
    ("Text/HTML; Charset=\"ISO-8859-1\"; x=y", ("text/html", "iso-8859-1")),
    ("image/png; charset=bad value", ("image/png", None)),
    ("nonsense", ("application/octet-stream", None)),
    ("a/b/c", ("application/octet-stream", None)),
    (None, ("application/octet-stream", None)),
])
def test_content_type(value: str | None, expected: tuple[str, str | None]) -> None:
    assert headers.content_type(value, "application/octet-stream") == expected


def test_identifiers_are_bracketed_and_never_encoded() -> None:
    assert headers.identifiers("References", "a@x  <b@y>\n<c@z>") == (
        b"References: <a@x> <b@y> <c@z>\r\n")
    assert headers.identifiers("In-Reply-To", "  ") is None
    assert headers.identifiers("In-Reply-To", None) is None
