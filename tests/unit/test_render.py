"""Messages rendered from columns: structure, encodings, determinism, and no Bcc ever."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Generator
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.message.headers import EmailAddress
from pop3d.message.render import (
    ATTACHMENT_SLICE,
    AttachmentMeta,
    SourceChanged,
    StoredEmail,
    base64_length,
    render,
    rendered_size,
)

EMAIL_ID = "0f0e0d0c-0b0a-0908-0706-050403020100"
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class Contents:
    """Attachment content by id, served in slices like the database does."""

    def __init__(self, **contents: bytes) -> None:
        self.contents = contents
        self.reads: list[tuple[str, int, int]] = []

    def meta(self, attachment_id: str, name: str | None = None,
             content_type: str | None = "application/octet-stream") -> AttachmentMeta:
        return AttachmentMeta(attachment_id, name, content_type,
                              len(self.contents[attachment_id]))

    def __call__(self, attachment: AttachmentMeta, offset: int,
                 length: int) -> Generator[str, None, bytes]:
        """A generator, like the store's: it yields what it would ask of whoever pulls."""
        self.reads.append((attachment.attachment_id, offset, length))
        yield f"slice {attachment.attachment_id} {offset}"
        return self.contents[attachment.attachment_id][offset:offset + length]


def _render(stored: StoredEmail, contents: Contents | None = None) -> bytes:
    contents = contents or Contents()
    items = list(render(stored, contents))
    requests = [item for item in items if isinstance(item, str)]  # passed through, in place
    assert requests == [f"slice {name} {offset}" for name, offset, _ in contents.reads]
    return b"".join(item for item in items if isinstance(item, bytes))


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _email(**fields: object) -> StoredEmail:
    return StoredEmail(email_id=EMAIL_ID, received_at=WHEN, **fields)  # type: ignore[arg-type]


def test_simple_text_message_exact_bytes() -> None:
    to = (EmailAddress("a@example.com"), EmailAddress("b@example.com", "B, Jr."))
    raw = _render(_email(sender=EmailAddress("s@example.org", "Sam Sender"), to=to,
                         subject="Hello", text_body="line 1\n.\n..\nend", message_id="m@x"))
    assert raw == (
        b"From: Sam Sender <s@example.org>\r\n"
        b'To: a@example.com, "B, Jr." <b@example.com>\r\n'
        b"Subject: Hello\r\n"
        b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n"
        b"Message-ID: <m@x>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"\r\n"
        b"line 1\r\n.\r\n..\r\nend\r\n")


def test_empty_row_renders_a_valid_minimal_message() -> None:
    raw = _render(_email())
    message = _parse(raw)
    assert message["To"] == "undisclosed-recipients:;"
    assert message["Message-ID"] == "<0f0e0d0c0b0a09080706050403020100@pop3d.invalid>"
    assert message["From"] is None
    assert message.get_content_type() == "text/plain"
    assert raw.endswith(b"\r\n\r\n")
    assert not message.defects


@pytest.mark.parametrize(("body", "encoding"), [
    ("plain ascii\n", "7bit"),
    ("caf\u00e9\n", "quoted-printable"),
    ("x" * 999, "quoted-printable"),
    ("contains --=_pop3d_mixed_ a boundary-like string", "quoted-printable"),
    ("trailing space \nand tab\t\n", "7bit"),
])
def test_text_encoding_choice_round_trips(body: str, encoding: str) -> None:
    raw = _render(_email(text_body=body))
    message = _parse(raw)
    assert message["Content-Transfer-Encoding"] == encoding
    expected = body if body.endswith("\n") else body + "\n"
    assert message.get_content().replace("\r\n", "\n") == expected
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_alternative_and_mixed_structure_round_trips() -> None:
    contents = Contents(one=bytes(range(256)) * 3000, two=b"")
    raw = _render(_email(text_body="plain", html_body="<b>html</b>",
                         attachments=(contents.meta("one", "data.bin"),
                                      contents.meta("two", "empty.txt", "text/plain"))),
                  contents)
    message = _parse(raw)
    assert message.get_content_type() == "multipart/mixed"
    alternative, first, second = message.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert first.get_content() == bytes(range(256)) * 3000
    assert first.get_filename() == "data.bin"
    assert second.get_content() == ""
    assert not message.defects
    # 768,000 octets arrive in whole-line slices, each encoded as it comes.
    assert [r[1:] for r in contents.reads] == [
        (0, ATTACHMENT_SLICE), (ATTACHMENT_SLICE, ATTACHMENT_SLICE),
        (2 * ATTACHMENT_SLICE, 768000 - 2 * ATTACHMENT_SLICE)]
    base64_lines = [line for line in raw.split(b"\r\n") if len(line) == 76]
    assert len(base64_lines) == 768000 // 57


def test_attachments_without_body() -> None:
    contents = Contents(a=b"abc")
    message = _parse(_render(_email(attachments=(contents.meta("a", "a.txt"),)), contents))
    [part] = message.iter_parts()
    assert part.get_content() == b"abc"


def test_html_only() -> None:
    message = _parse(_render(_email(html_body="<p>x</p>")))
    assert message.get_content_type() == "text/html"


def test_non_ascii_headers_are_encoded_words_and_decode_back() -> None:
    subject = "Grüße aus Köln — " + "ü" * 80
    raw = _render(_email(subject=subject, sender=EmailAddress("z@example.org", "Zoë Ünicode"),
                         cc=(EmailAddress("c@example.com", "日本語の名前"),)))
    assert raw.split(b"\r\n\r\n")[0].isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 76
    message = _parse(raw)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Zoë Ünicode"
    assert message["Cc"].addresses[0].display_name == "日本語の名前"


def test_column_values_cannot_inject_header_fields() -> None:
    raw = _render(_email(subject="hi\r\nBcc: leak@example.com",
                         sender=EmailAddress("s@x\nBcc: a@b", "n\r\nBcc: c@d"),
                         to=(EmailAddress("t@x", "\nBcc: e@f"),), message_id="<m@x>\r\nBcc: g@h",
                         references="<r@x>\nBcc: i@j"))
    header = raw.split(b"\r\n\r\n")[0]
    assert not any(line.lower().startswith(b"bcc") for line in header.split(b"\r\n"))
    assert b"\n" not in header.replace(b"\r\n", b"")
    assert b"\r" not in header.replace(b"\r\n", b"")


def test_long_non_ascii_file_name_uses_rfc2231_continuations() -> None:
    name = "Überweisungsbestätigung für das Geschäftsjahr 2023 (endgültig).pdf"
    contents = Contents(a=b"%PDF")
    raw = _render(_email(attachments=(contents.meta("a", name, "Application/PDF; x=y"),)),
                  contents)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 76
    [part] = _parse(raw).iter_parts()
    assert part.get_filename() == name
    assert part.get_content_type() == "application/pdf"


def test_bad_content_type_falls_back_to_octet_stream() -> None:
    contents = Contents(a=b"x")
    raw = _render(_email(attachments=(contents.meta("a", None, "not a type\r\nX: y"),)),
                  contents)
    [part] = _parse(raw).iter_parts()
    assert part.get_content_type() == "application/octet-stream"
    assert b"X: y" not in raw


@pytest.mark.parametrize("received_at", [
    datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    datetime(2024, 1, 2, 3, 4, 5),
])
def test_date_is_received_at_in_utc(received_at: datetime) -> None:
    raw = _render(StoredEmail(email_id=EMAIL_ID, received_at=received_at))
    assert b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n" in raw


def test_renders_are_byte_identical_and_boundaries_follow_the_id() -> None:
    def build(email_id: str) -> bytes:
        contents = Contents(a=b"\x00" * 1000)
        stored = StoredEmail(email_id=email_id, received_at=WHEN, subject="ß" * 100,
                             text_body="t", html_body="h",
                             attachments=(contents.meta("a", "a"),))
        return _render(stored, contents)

    first = build(EMAIL_ID)
    assert build(EMAIL_ID) == first
    assert b'boundary="=_pop3d_mixed_0f0e0d0c0b0a09080706050403020100"' in first
    other = build("11111111-2222-3333-4444-555555555555")
    assert b"=_pop3d_alt_11111111222233334444555555555555" in other


def test_attachment_changing_underneath_is_noticed() -> None:
    contents = Contents(a=b"0123456789")
    meta = AttachmentMeta("a", "a", None, 20)  # the row grew or shrank after the lookup
    with pytest.raises(SourceChanged):
        _render(_email(attachments=(meta,)), contents)


def test_recipients_are_never_read_from_bcc() -> None:
    # The renderer only ever receives To and Cc; make sure a name in them is all it prints.
    raw = _render(_email(to=(EmailAddress("to@example.com"),),
                         cc=(EmailAddress("cc@example.com"),)))
    assert b"Bcc" not in raw
    assert b"To: to@example.com\r\nCc: cc@example.com\r\n" in raw


SIZES = [0, 1, 2, 3, 56, 57, 58, 113, 114, 115, ATTACHMENT_SLICE - 1, ATTACHMENT_SLICE,
         ATTACHMENT_SLICE + 1, 1024 * 1024 + 1]


@pytest.mark.parametrize("size", SIZES)
def test_base64_length_is_the_length_of_the_streamed_body(size: int) -> None:
    content = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    contents = Contents(a=content)
    raw = _render(_email(text_body="t", attachments=(contents.meta("a", "a.bin"),)), contents)
    after_headers = raw.split(b"Content-Transfer-Encoding: base64\r\n\r\n")[1]
    body = after_headers.rsplit(b"\r\n--=_pop3d_mixed_", 1)[0]
    assert body == base64.encodebytes(content).replace(b"\n", b"\r\n")
    assert len(body) == base64_length(size)


@pytest.mark.parametrize("size", SIZES)
def test_rendered_size_equals_the_streamed_bytes_without_reading_content(size: int) -> None:
    contents = Contents(a=b"\xff" * size, b=b"x" * (size // 2 + 1))
    stored = _email(subject="Grüße", text_body="plain\n", html_body="<p>html</p>",
                    attachments=(contents.meta("a", "a.bin"), contents.meta("b", "ü.txt")))
    expected = len(_render(stored, contents))
    contents.reads.clear()
    assert rendered_size(stored) == expected
    assert contents.reads == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * 57 + 5), max_size=4),
       st.one_of(st.none(), st.text(max_size=200)), st.one_of(st.none(), st.text(max_size=50)))
def test_rendered_size_for_any_structure(sizes: list[int], text: str | None,
                                         html: str | None) -> None:
    contents = Contents(**{f"a{i}": bytes([i]) * size for i, size in enumerate(sizes)})
    stored = _email(text_body=text, html_body=html,
                    attachments=tuple(contents.meta(f"a{i}") for i in range(len(sizes))))
    assert rendered_size(stored) == len(_render(stored, contents))
