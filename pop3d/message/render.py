"""Render a message stored without raw bytes from its columns, as a stream of RFC 5322 bytes.

The output is a pure function of the stored values: boundaries and the synthesised Message-ID
derive from the email id, the Date from ``received_at`` (in UTC), and no clock, randomness or
locale is involved.  So every render of a row is byte-identical and its length can be stored as
the size LIST reports.  Attachment content is read through ``read_slice`` in slices that are a
multiple of 57 octets (one 76-character base64 line), so each slice encodes to whole lines and
a large attachment is never held whole.  ``read_slice`` is a generator function: whatever it
yields while it fetches a slice (the store's requests) passes through the rendered stream.

:func:`rendered_size` is that length without reading any attachment content: it renders the
message with empty attachment bodies and adds each body's length, which base64's fixed line
layout makes a function of the attachment's size alone.

Structure: one text part, or multipart/alternative (plain, then html) when there are both;
wrapped with the attachments in multipart/mixed when there are any.  Bcc recipients are never
part of the input, so they cannot be rendered.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TypeVar

from pop3d.message import headers
from pop3d.message.headers import EmailAddress

CRLF = b"\r\n"
BASE64_LINE = 57  # octets per line: RFC 2045 section 6.8 limits lines to 76 characters
ATTACHMENT_SLICE = BASE64_LINE * 4600  # 262,200 octets: whole lines, about 256 KiB per query
MAX_7BIT_LINE = 998  # RFC 5322 section 2.1.1 and RFC 2045 section 2.7
_LINE_BREAK = re.compile(r"\r\n|\r")
_BOUNDARY_MARK = "=_pop3d_"  # QP escapes "=", so only 7bit text could contain a boundary


@dataclass(frozen=True, slots=True)
class AttachmentMeta:
    attachment_id: str
    file_name: str | None
    content_type: str | None
    size: int  # octets of content


@dataclass(frozen=True, slots=True)
class StoredEmail:
    """The columns of an email row (and its To/Cc recipients and attachments) to render."""

    email_id: str
    received_at: datetime
    message_id: str | None = None
    sender: EmailAddress | None = None
    to: tuple[EmailAddress, ...] = ()
    cc: tuple[EmailAddress, ...] = ()
    subject: str | None = None
    in_reply_to: str | None = None
    references: str | None = None
    text_body: str | None = None
    html_body: str | None = None
    attachments: tuple[AttachmentMeta, ...] = ()


P = TypeVar("P")  # what a slice reader yields while it fetches: passed through
# (attachment, offset, length) -> exactly that many octets of the attachment's content
SliceReader = Callable[[AttachmentMeta, int, int], Generator[P, None, bytes]]


class SourceChanged(Exception):
    """What was read while rendering no longer matches what the render started from."""


# attachment -> its encoded body, the lines between its part headers and the next delimiter
_BodyWriter = Callable[[AttachmentMeta], Iterable[bytes | P]]


@dataclass(frozen=True, slots=True)
class _Text:
    subtype: str
    encoding: str  # Content-Transfer-Encoding
    body: bytes  # encoded, CRLF line ends


@dataclass(frozen=True, slots=True)
class _Multipart:
    subtype: str
    boundary: str
    parts: tuple[_Text | AttachmentMeta | _Multipart, ...]


_Part = _Text | AttachmentMeta | _Multipart


def render(email: StoredEmail, read_slice: SliceReader[P]) -> Iterator[bytes | P]:
    """The message's RETR bytes, in chunks: header block first, then the body parts."""
    return _render(email, functools.partial(_base64_body, read_slice=read_slice))


def rendered_size(email: StoredEmail) -> int:
    """``len(b"".join(render(email, ...)))``, computed without reading attachment content."""
    skeleton = sum(len(chunk) for chunk in _render(email, _no_body))
    return skeleton + sum(base64_length(attachment.size) for attachment in email.attachments)


def base64_length(octets: int) -> int:
    """The length of the base64 body :func:`render` writes for ``octets`` of content."""
    lines, rest = divmod(octets, BASE64_LINE)
    last = 4 * -(-rest // 3) + len(CRLF) if rest else 0
    return lines * (4 * BASE64_LINE // 3 + len(CRLF)) + last


def _render(email: StoredEmail, attachment_body: _BodyWriter[P]) -> Iterator[bytes | P]:
    root = _structure(email)
    yield _message_headers(email) + b"MIME-Version: 1.0\r\n" + _part_headers(root) + CRLF
    yield from _part_body(root, attachment_body)


def _no_body(attachment: AttachmentMeta) -> Iterable[bytes]:
    return ()


def _structure(email: StoredEmail) -> _Part:
    texts = [_Text(subtype, *_encode_text(body)) for subtype, body
             in (("plain", email.text_body), ("html", email.html_body)) if body is not None]
    hex_id = email.email_id.replace("-", "")
    body: _Part | None = texts[0] if len(texts) == 1 else None
    if len(texts) == 2:
        body = _Multipart("alternative", f"{_BOUNDARY_MARK}alt_{hex_id}", tuple(texts))
    if not email.attachments:
        return body or _Text("plain", *_encode_text(""))
    parts = (body,) if body else ()
    return _Multipart("mixed", f"{_BOUNDARY_MARK}mixed_{hex_id}", parts + email.attachments)


def _message_headers(email: StoredEmail) -> bytes:
    fields = []
    if email.sender and headers.clean(email.sender.address):
        fields.append(headers.addresses("From", [email.sender]))
    if email.to or not email.cc:
        # RFC 5322 section 3.6.3 "undisclosed recipients" group when no one is listed.
        fields.append(headers.addresses("To", email.to) if email.to
                      else b"To: undisclosed-recipients:;\r\n")
    if email.cc:
        fields.append(headers.addresses("Cc", email.cc))
    fields.append(headers.unstructured("Subject", email.subject))
    fields.append(b"Date: " + _date(email.received_at).encode("ascii") + CRLF)
    fields.append(headers.identifiers("Message-ID", email.message_id)
                  or headers.field("Message-ID", [synthetic_message_id(email.email_id)]))
    for name, value in (("In-Reply-To", email.in_reply_to), ("References", email.references)):
        identifier = headers.identifiers(name, value)
        if identifier:
            fields.append(identifier)
    return b"".join(fields)


def synthetic_message_id(email_id: str) -> str:
    """A Message-ID for rows stored without one: stable, and unique because the id is."""
    return f"<{email_id.replace('-', '')}@pop3d.invalid>"


def _date(received_at: datetime) -> str:
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    return format_datetime(received_at.astimezone(UTC))


def _part_headers(part: _Part) -> bytes:
    if isinstance(part, _Multipart):
        return headers.field("Content-Type", headers.with_parameters(
            f"multipart/{part.subtype}", [f'boundary="{part.boundary}"']))
    if isinstance(part, _Text):
        return (headers.field("Content-Type", headers.with_parameters(
            f"text/{part.subtype}", ['charset="utf-8"']))
            + f"Content-Transfer-Encoding: {part.encoding}\r\n".encode("ascii"))
    return _attachment_headers(part)


def _attachment_headers(attachment: AttachmentMeta) -> bytes:
    kind, charset = headers.content_type(attachment.content_type, "application/octet-stream")
    type_params = [f'charset="{charset}"'] if charset else []
    disposition_params: list[str] = []
    name = headers.clean(attachment.file_name)
    if name:
        type_params += headers.parameter("name", name)
        disposition_params = headers.parameter("filename", name)
    return (headers.field("Content-Type", headers.with_parameters(kind, type_params))
            + headers.field("Content-Disposition",
                            headers.with_parameters("attachment", disposition_params))
            + b"Content-Transfer-Encoding: base64\r\n")


def _part_body(part: _Part, attachment_body: _BodyWriter[P]) -> Iterator[bytes | P]:
    if isinstance(part, _Multipart):
        yield from _multipart_body(part, attachment_body)
    elif isinstance(part, _Text):
        yield part.body
    else:
        yield from attachment_body(part)


def _multipart_body(part: _Multipart, attachment_body: _BodyWriter[P]) -> Iterator[bytes | P]:
    delimiter = b"--" + part.boundary.encode("ascii")
    for child in part.parts:
        yield delimiter + CRLF + _part_headers(child) + CRLF
        yield from _part_body(child, attachment_body)
        # RFC 2046 5.1.1: the CRLF before a delimiter belongs to the delimiter, so the body
        # keeps its own final line break.
        yield CRLF
    yield delimiter + b"--" + CRLF


def _encode_text(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF line ends, ending in CRLF or empty)."""
    lines = _LINE_BREAK.sub("\n", text).split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        return "7bit", b""
    if _fits_7bit(text, lines):
        return "7bit", ("\r\n".join(lines) + "\r\n").encode("ascii")
    encoded = binascii.b2a_qp(("\n".join(lines) + "\n").encode("utf-8"), istext=True)
    return "quoted-printable", encoded.replace(b"\n", CRLF)


def _fits_7bit(text: str, lines: list[str]) -> bool:
    return (text.isascii() and "\0" not in text and _BOUNDARY_MARK not in text
            and all(len(line) <= MAX_7BIT_LINE for line in lines))


def _base64_body(attachment: AttachmentMeta, read_slice: SliceReader[P]) -> Iterator[bytes | P]:
    offset = 0
    while offset < attachment.size:
        want = min(ATTACHMENT_SLICE, attachment.size - offset)
        data = yield from read_slice(attachment, offset, want)
        if len(data) != want:
            raise SourceChanged("attachment changed while being sent")
        yield base64.encodebytes(data).replace(b"\n", CRLF)
        offset += want
