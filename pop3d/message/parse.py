"""What ``deliver`` extracts from a message for the columns the rest of the mail system reads.

The raw bytes are stored as received and are what POP3 serves; the columns (sender, subject,
bodies, attachments, threading ids) are a best-effort reading of them for the web UI and search.
So parsing never rejects a message once it has a header section: a header the ``email`` package
cannot make sense of leaves its column empty, and the raw bytes remain authoritative.  Values
come back as the message has them; the store replaces what its text columns cannot hold.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, Message, MIMEPart
from typing import TypeVar

T = TypeVar("T")
# RFC 5322 section 2.2: a field name is printable ASCII except ':'; obsolete syntax allows WSP
# before the colon.
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


class NotAMessage(ValueError):
    """Bytes that cannot be stored as a message: empty, or without a header section."""


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    file_name: str | None
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    message_id: str | None = None
    from_address: str | None = None
    from_name: str | None = None
    subject: str | None = None
    text_body: str | None = None
    html_body: str | None = None
    in_reply_to: str | None = None
    references: str | None = None
    attachments: tuple[ParsedAttachment, ...] = ()
    # lower(address) -> ("to" or "cc", display name) for every address in To and Cc
    listed: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def check_raw(raw: bytes) -> bytes:
    """The message to store: without an mbox ``From`` envelope line; NotAMessage if unusable."""
    if not raw.strip():
        raise NotAMessage("empty message")
    if raw.startswith(b"From "):
        # Postfix pipe(8) with the F flag prepends an mbox envelope line; it is not a header.
        raw = raw[raw.find(b"\n") + 1:] if b"\n" in raw else b""
    if not _FIELD_START.match(raw):
        raise NotAMessage("no header section (the first line is not a header field)")
    return raw


def parse_message(raw: bytes) -> ParsedMessage:
    """Read the columns out of ``raw`` (already accepted by :func:`check_raw`)."""
    msg = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
    nobody: tuple[str | None, str | None] = (None, None)
    sender = _guard(lambda: _first_address(msg, "from"), nobody)
    text_part = _guard(lambda: msg.get_body(preferencelist=("plain",)), None)
    html_part = _guard(lambda: msg.get_body(preferencelist=("html",)), None)
    bodies = [part for part in (text_part, html_part) if part is not None]
    return ParsedMessage(
        message_id=_header(msg, "message-id"),
        from_address=sender[0],
        from_name=sender[1],
        subject=_header(msg, "subject"),
        text_body=_text(text_part),
        html_body=_text(html_part),
        in_reply_to=_header(msg, "in-reply-to"),
        references=_header(msg, "references"),
        attachments=_guard(lambda: _attachments(msg, bodies), ()),
        listed=_guard(lambda: _listed(msg), {}),
    )


def _guard(read: Callable[[], T], default: T) -> T:
    # The email package raises a variety of exceptions on malformed input (and RecursionError
    # on absurd nesting); a column it cannot read stays empty, the raw bytes are still stored.
    try:
        return read()
    except Exception:
        return default


def _header(msg: Message, name: str) -> str | None:
    value = _guard(lambda: msg.get(name), None)
    if value is None:
        return None
    text = " ".join(_guard(lambda: str(value), "").split())
    return text or None


def _first_address(msg: EmailMessage, name: str) -> tuple[str | None, str | None]:
    header = msg.get(name)
    addresses = getattr(header, "addresses", ())
    if not addresses:
        return None, None
    first = addresses[0]
    return first.addr_spec or None, first.display_name or None


def _listed(msg: EmailMessage) -> dict[str, tuple[str, str | None]]:
    listed: dict[str, tuple[str, str | None]] = {}
    for kind in ("cc", "to"):  # an address in both counts as "to"
        for header in msg.get_all(kind, []):
            for address in getattr(header, "addresses", ()):
                if address.addr_spec:
                    name = address.display_name or None
                    listed[address.addr_spec.lower()] = (kind, name)
    return listed


def _text(part: MIMEPart | None) -> str | None:
    if part is None:
        return None
    content = _guard(part.get_content, None)
    if not isinstance(content, str):
        payload = _guard(lambda: part.get_payload(decode=True), None)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content


def _leaves(msg: Message) -> Iterator[Message]:
    stack = [msg]  # explicit stack: nesting depth is attacker-controlled
    while stack:
        part = stack.pop()
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            stack.extend(reversed(part.get_payload()))  # type: ignore[arg-type]
        else:
            yield part


def _attachments(msg: Message, bodies: Sequence[Message]) -> tuple[ParsedAttachment, ...]:
    found = []
    for part in _leaves(msg):
        if any(part is body for body in bodies):
            continue
        found.append(ParsedAttachment(
            file_name=_guard(part.get_filename, None) or None,
            content_type=part.get_content_type(),
            content=_content(part)))
    return tuple(found)


def _content(part: Message) -> bytes:
    payload = _guard(lambda: part.get_payload(decode=True), None)
    if isinstance(payload, bytes):
        return payload
    # message/rfc822 and friends carry a parsed message, not bytes: serialise it back.
    inner = _guard(lambda: part.get_payload(0), None)
    return _guard(inner.as_bytes, b"") if isinstance(inner, Message) else b""
