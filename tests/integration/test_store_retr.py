"""The exact octets RETR and TOP send, from raw rows and from rendered rows, and their sizes."""

from __future__ import annotations

import email
import email.policy
import tracemalloc
from datetime import UTC, datetime

import pytest
from store_drivers import DrivenMaildrop
from store_rows import Attachment, MailWriter

MB = 1024 * 1024


def _retr(maildrop: DrivenMaildrop, user_id: str, email_id: str) -> bytes:
    return b"".join(maildrop.open_message(user_id, email_id))


def _size(maildrop: DrivenMaildrop, user_id: str, email_id: str) -> int:
    [info] = [m for m in maildrop.snapshot(user_id, 100) if m.email_id == email_id]
    return info.size


RAW_CASES = {
    "lf": (b"A: 1\nB: 2\n\nline\n", b"A: 1\r\nB: 2\r\n\r\nline\r\n"),
    "crlf": (b"A: 1\r\n\r\nline\r\n", b"A: 1\r\n\r\nline\r\n"),
    "cr": (b"A: 1\r\rline\r", b"A: 1\r\n\r\nline\r\n"),
    "mixed": (b"A: 1\r\n\nx\ry\n\r\nz", b"A: 1\r\n\r\nx\r\ny\r\n\r\nz\r\n"),
    "eight-bit": (b"Subject: \xc3\xa9t\xe9\n\n\xff\xfe\x00\x01\n",
                  b"Subject: \xc3\xa9t\xe9\r\n\r\n\xff\xfe\x00\x01\r\n"),
    "no-final-newline": (b"A: 1\n\nlast line", b"A: 1\r\n\r\nlast line\r\n"),
    "lone-dot": (b"A: 1\n\n.\nafter\n", b"A: 1\r\n\r\n.\r\nafter\r\n"),
    "double-dot": (b"A: 1\n\n..\n.x\n", b"A: 1\r\n\r\n..\r\n.x\r\n"),
    "bcc": (b"To: a@x\nBcc: secret@x,\n  other@x\nResent-Bcc: r@x\nbcc : s@x\nSubject: s\n\n"
            b"Bcc: in the body stays\n",
            b"To: a@x\r\nSubject: s\r\n\r\nBcc: in the body stays\r\n"),
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_raw_is_sent_normalised_and_size_matches(
        case: str, maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    raw, expected = RAW_CASES[case]
    email_id = mail.email([(users["a"], "a@example.com", "to")], raw=raw)
    assert _retr(maildrop, users["a"], email_id) == expected
    assert _size(maildrop, users["a"], email_id) == len(expected)


def test_top_on_raw_message(maildrop: DrivenMaildrop, mail: MailWriter,
                            users: dict[str, str]) -> None:
    raw = b"A: 1\nBcc: x@y\n\none\ntwo\nthree\n"
    email_id = mail.email([(users["a"], "a@example.com", "to")], raw=raw)
    def top(n: int) -> bytes:
        return b"".join(maildrop.open_top(users["a"], email_id, n))
    assert top(0) == b"A: 1\r\n\r\n"
    assert top(2) == b"A: 1\r\n\r\none\r\ntwo\r\n"
    assert top(99) == _retr(maildrop, users["a"], email_id)


def _peak_while_streaming(maildrop: DrivenMaildrop, user_id: str, email_id: str) -> tuple[int, int]:
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in maildrop.open_message(user_id, email_id))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return total, peak


def test_twenty_megabyte_raw_message_streams_in_bounded_memory(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    line = b"0123456789" * 7 + b"\n"  # LF endings: normalisation grows every line
    body = line * (20 * MB // len(line))
    email_id = mail.email([(users["a"], "a@example.com", "to")],
                          raw=b"Subject: big\n\n" + body)
    del body
    total, peak = _peak_while_streaming(maildrop, users["a"], email_id)
    expected = len(b"Subject: big\r\n\r\n") + (20 * MB // len(line)) * (len(line) + 1)
    assert total == expected
    assert _size(maildrop, users["a"], email_id) == expected
    assert peak < 4 * MB  # a few 256 KiB slices, never a copy of the message


def test_twenty_megabyte_attachment_renders_in_bounded_memory(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    content = bytes(range(256)) * (20 * MB // 256)
    email_id = mail.email([(users["a"], "a@example.com", "to")], text_body="see attached",
                          attachments=[Attachment(content, "big.bin")])
    total, peak = _peak_while_streaming(maildrop, users["a"], email_id)
    assert total == _size(maildrop, users["a"], email_id)
    assert peak < 4 * MB
    message = email.message_from_bytes(_retr(maildrop, users["a"], email_id),
                                       policy=email.policy.default)
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content() == content


def test_rendered_message_has_headers_bodies_and_attachments(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email(
        [(users["a"], "a@example.com", "to"), (users["b"], "b@example.com", "cc"),
         (users["c"], "c@example.com", "bcc")],
        received_at=datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC),
        from_address="sender@example.org", from_name="Zoë Sender", subject="Grüße, 世界",
        text_body="plain text\n", html_body="<p>html</p>", message_id="<m1@example.org>",
        in_reply_to="<m0@example.org>", references_header="<a@x> <m0@example.org>",
        attachments=[Attachment(b"\x00\x01binary\xff", "résumé.pdf", "application/pdf")])
    raw = _retr(maildrop, users["a"], email_id)
    assert b"c@example.com" not in raw
    assert b"\nBcc" not in raw
    assert b"Date: Thu, 29 Feb 2024 23:59:58 +0000\r\n" in raw
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "Grüße, 世界"
    assert message["From"].addresses[0].display_name == "Zoë Sender"
    assert [a.addr_spec for a in message["To"].addresses] == ["a@example.com"]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["b@example.com"]
    assert message["Message-ID"] == "<m1@example.org>"
    assert message["References"] == "<a@x> <m0@example.org>"
    # (the email package keeps the wire's CRLF line ends in decoded text)
    assert message.get_body(("plain",)).get_content() == "plain text\r\n"
    assert message.get_body(("html",)).get_content() == "<p>html</p>\r\n"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "résumé.pdf"
    assert attachment.get_content() == b"\x00\x01binary\xff"
    assert not message.defects


def test_rendering_is_byte_identical_every_time(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([(users["a"], "a@example.com", "to")], subject="ß" * 200,
                          text_body="é\n" * 1000, html_body="<b>x</b>",
                          attachments=[Attachment(b"abc" * 100_000, "a"), Attachment(b"", "b")])
    first = _retr(maildrop, users["a"], email_id)
    assert all(_retr(maildrop, users["a"], email_id) == first for _ in range(3))
    assert _size(maildrop, users["a"], email_id) == len(first)
    assert first.endswith(b"\r\n")
    assert b"\n" not in first.replace(b"\r\n", b"")
    assert max(len(line) for line in first.split(b"\r\n")) <= 76


def test_rendered_row_without_optional_columns(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([(users["a"], "a@example.com", "bcc")])
    raw = _retr(maildrop, users["a"], email_id)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["To"] == "undisclosed-recipients:;"
    assert message["Message-ID"] == f"<{email_id.replace('-', '')}@pop3d.invalid>"
    assert message.get_content_type() == "text/plain"
    assert _size(maildrop, users["a"], email_id) == len(raw)


def test_top_on_rendered_message_stops_early(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([(users["a"], "a@example.com", "to")], subject="s",
                          text_body="one\ntwo\nthree\n")
    full = _retr(maildrop, users["a"], email_id)
    header = full.partition(b"\r\n\r\n")[0]
    top = b"".join(maildrop.open_top(users["a"], email_id, 2))
    assert top == header + b"\r\n\r\none\r\ntwo\r\n"
