"""Storing one incoming message for its envelope recipients (``pop3d deliver``).

All or nothing: the email row, its attachments and one recipient row per envelope recipient
are written in one transaction, and only after every recipient has been resolved to a user, so
an MTA that is told "no such user" or "try again" can be sure nothing was stored.  The size
column is computed here by the same code that produces RETR's bytes, and the columns read out
of the message are cleaned of what PostgreSQL's text type refuses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg2

from pop3d.errors import BadMessage, NoSuchUser, StorePermanentError
from pop3d.message.normalize import retr_octets
from pop3d.message.parse import (
    NotAMessage,
    ParsedMessage,
    check_raw,
    parse_message,
)
from pop3d.ports import UserRecord
from pop3d.store.accounts import InvalidAddress, check_address
from pop3d.store.credentials import find_user
from pop3d.store.db import Cursor, Database, make_storable
from pop3d.store.maildrop import RAW_SLICE

_INSERT_EMAIL = """
INSERT INTO emails (message_id, from_address, from_name, subject, text_body, html_body,
                    in_reply_to, references_header, raw, size)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id::text
"""


@dataclass(frozen=True, slots=True)
class _Recipient:
    address: str
    user_id: str
    kind: str  # "to", "cc" or "bcc"
    display_name: str | None


def deliver(db: Database, raw: bytes, recipients: Sequence[str]) -> str:
    """Store ``raw`` for the envelope ``recipients``; return the new email's id.

    Raises BadMessage (empty, no header section), NoSuchUser (naming every unknown recipient;
    nothing stored), StoreUnavailable or StorePermanentError.
    """
    envelope = _envelope(recipients)
    try:
        raw = check_raw(raw)
    except NotAMessage as exc:
        raise BadMessage(str(exc)) from None
    parsed = _storable(parse_message(raw))
    size = sum(len(chunk) for chunk in retr_octets(_slices(raw)))
    return db.run(functools.partial(
        _store, raw=raw, size=size, parsed=parsed, envelope=envelope))


def _envelope(recipients: Sequence[str]) -> list[str]:
    unique: dict[str, str] = {}
    bad = []
    for text in recipients:
        try:
            address = check_address(text)
        except InvalidAddress:
            bad.append(text)
            continue
        unique.setdefault(address.lower(), address)
    if bad:
        raise NoSuchUser("no such user: " + ", ".join(bad))
    if not unique:
        raise NoSuchUser("no envelope recipient")
    return list(unique.values())


def _storable(parsed: ParsedMessage) -> ParsedMessage:
    """The columns with every character PostgreSQL's text type refuses replaced."""
    text = make_storable
    attachments = tuple(dataclasses.replace(a, file_name=text(a.file_name))
                        for a in parsed.attachments)
    listed = {address: (kind, text(name)) for address, (kind, name) in parsed.listed.items()}
    return dataclasses.replace(
        parsed, message_id=text(parsed.message_id), from_address=text(parsed.from_address),
        from_name=text(parsed.from_name), subject=text(parsed.subject),
        text_body=text(parsed.text_body), html_body=text(parsed.html_body),
        in_reply_to=text(parsed.in_reply_to), references=text(parsed.references),
        attachments=attachments, listed=listed)


def _slices(raw: bytes) -> Iterator[bytes]:
    # The slices RETR reads from the database, so the size is computed exactly as sent.
    view = memoryview(raw)
    for start in range(0, len(raw), RAW_SLICE):
        yield bytes(view[start:start + RAW_SLICE])


def _store(cur: Cursor, *, raw: bytes, size: int, parsed: ParsedMessage,
           envelope: list[str]) -> str:
    recipients = _resolve(cur, envelope, parsed)
    p = parsed
    cur.execute(_INSERT_EMAIL, (
        p.message_id, p.from_address, p.from_name, p.subject, p.text_body, p.html_body,
        p.in_reply_to, p.references, psycopg2.Binary(raw), size))
    row = cur.fetchone()
    if row is None:
        raise StorePermanentError("INSERT returned no row")
    email_id = str(row[0])
    for position, attachment in enumerate(parsed.attachments):
        cur.execute(
            "INSERT INTO email_attachments (email_id, position, file_name, content_type,"
            " content, size) VALUES (%s, %s, %s, %s, %s, %s)",
            (email_id, position, attachment.file_name, attachment.content_type,
             psycopg2.Binary(attachment.content), len(attachment.content)))
    for r in recipients:
        cur.execute(
            "INSERT INTO email_recipients (email_id, user_id, address, display_name, kind)"
            " VALUES (%s, %s, %s, %s, %s)",
            (email_id, r.user_id, r.address, r.display_name, r.kind))
    return email_id


def _resolve(cur: Cursor, envelope: list[str], parsed: ParsedMessage) -> list[_Recipient]:
    resolved, unknown = [], []
    for address in envelope:
        user = find_user(cur, address)
        if user is None:
            unknown.append(address)
            continue
        kind, name = _listing(cur, parsed, address, user)
        resolved.append(_Recipient(address, user.user_id, kind, name))
    if unknown:
        raise NoSuchUser("no such user: " + ", ".join(unknown))
    return resolved


def _listing(cur: Cursor, parsed: ParsedMessage, address: str,
             user: UserRecord) -> tuple[str, str | None]:
    """How To/Cc name this recipient: by the envelope address, or (after an MTA's alias
    expansion) by another address of the same user; "bcc" when not at all."""
    for candidate in (address, user.address):
        if candidate.lower() in parsed.listed:
            return parsed.listed[candidate.lower()]
    if parsed.listed:
        cur.execute("SELECT address FROM user_addresses WHERE user_id = %s AND verified"
                    " ORDER BY lower(address) COLLATE \"C\"", (user.user_id,))
        for (alias,) in cur.fetchall():
            if alias.lower() in parsed.listed:
                return parsed.listed[alias.lower()]
    return "bcc", None
