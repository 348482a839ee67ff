"""Reading an email stored without raw bytes: its columns, To/Cc recipients and attachments.

Ordering is part of the rendered bytes, so every list is sorted on something stable, compared
with the "C" collation: the bytes (and the stored size) must not change if the database is
restored under another locale.
"""

from __future__ import annotations

from datetime import datetime

from pop3d.errors import MessageGone
from pop3d.message.headers import EmailAddress
from pop3d.message.render import AttachmentMeta, StoredEmail
from pop3d.store.db import Cursor
from pop3d.store.jobs import Query, Rows, Steps

_EMAIL = """
SELECT id::text, received_at, message_id, from_address, from_name, subject, in_reply_to,
       references_header, text_body, html_body
FROM emails WHERE id = %s
"""

# Bcc rows are never read for rendering, so they cannot leak into a header.
_RECIPIENTS = """
SELECT kind, address, display_name FROM email_recipients
WHERE email_id = %s AND kind IN ('to', 'cc')
ORDER BY lower(address) COLLATE "C", address COLLATE "C", id
"""

_ATTACHMENTS = """
SELECT id::text, file_name, content_type, octet_length(content) FROM email_attachments
WHERE email_id = %s ORDER BY position, id
"""

_SLICE = """
SELECT substring(a.content FROM %s FOR %s) FROM email_attachments a
WHERE a.id = %s AND EXISTS
    (SELECT 1 FROM email_recipients r WHERE r.email_id = a.email_id AND r.user_id = %s)
"""


def load_email(email_id: str) -> Steps[StoredEmail]:
    """Everything needed to render the email except attachment content."""
    rows = yield Query(_EMAIL, (email_id,))
    if not rows:
        raise MessageGone
    (email, received_at, message_id, from_address, from_name, subject, in_reply_to,
     references, text_body, html_body) = rows[0]
    to, cc = _recipients((yield Query(_RECIPIENTS, (email_id,))))
    attachments = tuple(AttachmentMeta(att_id, name, ctype, int(size))
                        for att_id, name, ctype, size in (yield Query(_ATTACHMENTS, (email_id,))))
    return StoredEmail(
        email_id=email, received_at=_as_datetime(received_at), message_id=message_id,
        sender=EmailAddress(from_address, from_name) if from_address else None,
        to=to, cc=cc, subject=subject, in_reply_to=in_reply_to, references=references,
        text_body=text_body, html_body=html_body, attachments=attachments)


Addresses = tuple[EmailAddress, ...]


def _recipients(rows: Rows) -> tuple[Addresses, Addresses]:
    lists: dict[str, list[EmailAddress]] = {"to": [], "cc": []}
    seen: set[tuple[str, str]] = set()
    for kind, address, name in rows:
        if not address.strip():
            continue
        if (kind, address.lower()) not in seen:  # one user reached twice is listed once
            seen.add((kind, address.lower()))
            lists[kind].append(EmailAddress(address, name))
    return tuple(lists["to"]), tuple(lists["cc"])


def attachment_slice(user: str, attachment: str, offset: int, length: int) -> Steps[bytes]:
    """``length`` octets of an attachment from ``offset`` (0-based), if the user may read it."""
    rows = yield Query(_SLICE, (offset + 1, length, attachment, user))
    if not rows or rows[0][0] is None:
        raise MessageGone("message changed while being sent")
    return bytes(rows[0][0])


def small_raws(cur: Cursor, *, user: str, emails: list[str],
               limit: int) -> list[tuple[str, bytes]]:
    """The raw bytes of those of ``emails`` the user may read that are at most ``limit``."""
    cur.execute(
        "SELECT e.id::text, e.raw FROM emails e WHERE e.id = ANY(%s::uuid[])"
        " AND octet_length(e.raw) <= %s AND EXISTS (SELECT 1 FROM email_recipients r"
        " WHERE r.email_id = e.id AND r.user_id = %s)", (emails, limit, user))
    return [(email_id, bytes(raw)) for email_id, raw in cur]


def save_sizes(cur: Cursor, *, sizes: dict[str, int]) -> None:
    """Record computed sizes where none is stored yet."""
    if sizes:
        cur.execute(
            "UPDATE emails e SET size = v.size FROM unnest(%s::uuid[], %s::bigint[])"
            " AS v(id, size) WHERE e.id = v.id AND e.size IS NULL",
            (list(sizes), list(sizes.values())))


def _as_datetime(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise MessageGone("email row without a usable received_at")
    return value
