"""The POP3 maildrop on PostgreSQL (implements :class:`pop3d.ports.Maildrop`).

Every query names the user: an email is reachable only through a recipient row for that user,
so a session can never read, mark or delete another user's mail, whatever id it passes.

Messages are streamed.  ``open_message`` checks access (raising MessageGone) before it returns;
the iterator it returns then fetches ~256 KiB slices, each in its own short transaction, so no
transaction is open while the worker waits for a client to read, and other sessions' queries
can use the same connection between chunks.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pop3d.errors import MessageGone
from pop3d.message.normalize import retr_octets, top_octets
from pop3d.message.render import (
    AttachmentMeta,
    SliceReader,
    SourceChanged,
    StoredEmail,
    render,
    rendered_size,
)
from pop3d.ports import MessageInfo
from pop3d.store import stored
from pop3d.store.db import Cursor, Database, as_uuid

RAW_SLICE = 256 * 1024  # octets of raw per query: large enough to amortise the round trip
# Messages measured (and their sizes saved) together when sizes are missing: a first login to
# thousands of rows written without a size costs seconds, not a query per row.
SIZE_BATCH = 32

_SNAPSHOT = """
SELECT e.id::text, replace(e.id::text, '-', ''), e.size
FROM emails e
WHERE EXISTS (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)
ORDER BY e.received_at, e.id
LIMIT %s
"""


@dataclass(frozen=True, slots=True)
class _Raw:
    email_id: str
    length: int


class PgMaildrop:
    """Maildrop over one :class:`Database`; for the worker's loop thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def snapshot(self, user_id: str, limit: int) -> list[MessageInfo]:
        user = as_uuid(user_id)
        if user is None or limit <= 0:
            return []
        rows = self.db.run(functools.partial(_snapshot_rows, user=user, limit=limit))
        missing = [email_id for email_id, _, size in rows if size is None]
        computed = self._store_sizes(user, missing) if missing else {}
        return [MessageInfo(email_id, unique_id, computed[email_id] if size is None else size)
                for email_id, unique_id, size in rows if size is not None or email_id in computed]

    def open_message(self, user_id: str, email_id: str) -> Iterator[bytes]:
        user, email = as_uuid(user_id), as_uuid(email_id)
        if user is None or email is None:
            raise MessageGone
        source = self.db.run(functools.partial(_open, user=user, email=email))
        if isinstance(source, _Raw):
            return retr_octets(self._raw_chunks(user, source))
        return _rendered(source, functools.partial(self._attachment_slice, user))

    def open_top(self, user_id: str, email_id: str, lines: int) -> Iterator[bytes]:
        return top_octets(self.open_message(user_id, email_id), max(lines, 0))

    def mark_read(self, user_id: str, email_id: str) -> None:
        user, email = as_uuid(user_id), as_uuid(email_id)
        if user is not None and email is not None:
            self.db.run(lambda cur: cur.execute(
                "UPDATE email_recipients SET is_read = true"
                " WHERE user_id = %s AND email_id = %s AND NOT is_read", (user, email)))

    def delete(self, user_id: str, email_ids: Sequence[str]) -> None:
        user = as_uuid(user_id)
        emails = sorted({e for e in map(as_uuid, email_ids) if e is not None})
        if user is not None and emails:
            self.db.run(functools.partial(_delete, user=user, emails=emails))

    def _store_sizes(self, user: str, email_ids: list[str]) -> dict[str, int]:
        """Compute and save the sizes of rows written without one (each row once, ever).

        Each size is saved as soon as it is known, so the work done survives an interrupted
        login: small raw messages (one query per batch, measured with the RETR code path) and
        rendered ones (arithmetic, no attachment content read) a batch at a time, larger raw
        messages one by one as they are streamed.  Emails that vanish meanwhile are left out.
        ``size IS NULL`` in the UPDATE makes a concurrent computation (same bytes, same number)
        harmless.
        """
        sizes: dict[str, int] = {}
        for start in range(0, len(email_ids), SIZE_BATCH):
            cheap, large = self._measure_batch(user, email_ids[start:start + SIZE_BATCH])
            sizes.update(self._save(cheap))
            for raw in large:
                try:
                    sizes.update(self._save(
                        {raw.email_id: _length(retr_octets(self._raw_chunks(user, raw)))}))
                except MessageGone:
                    continue
        return sizes

    def _measure_batch(self, user: str, batch: list[str]) -> tuple[dict[str, int], list[_Raw]]:
        """The sizes that are cheap to know, and the raw messages that must be streamed."""
        sizes = {email_id: _length(retr_octets([raw])) for email_id, raw in self.db.run(
            functools.partial(stored.small_raws, user=user, emails=batch, limit=RAW_SLICE))}
        large: list[_Raw] = []
        for email_id in batch:
            if email_id in sizes:
                continue
            try:
                source = self.db.run(functools.partial(_open, user=user, email=email_id))
            except MessageGone:
                continue
            if isinstance(source, _Raw):
                large.append(source)
            else:
                sizes[email_id] = rendered_size(source)
        return sizes, large

    def _save(self, sizes: dict[str, int]) -> dict[str, int]:
        if sizes:
            self.db.run(functools.partial(stored.save_sizes, sizes=sizes))
        return sizes

    def _raw_chunks(self, user: str, raw: _Raw) -> Iterator[bytes]:
        offset = 0
        while offset < raw.length:
            chunk = self.db.run(functools.partial(
                _raw_slice, user=user, email=raw.email_id, offset=offset, length=RAW_SLICE))
            if not chunk:
                raise MessageGone("message changed while being sent")
            yield chunk
            offset += len(chunk)

    def _attachment_slice(self, user: str, attachment: AttachmentMeta, offset: int,
                          length: int) -> bytes:
        return self.db.run(functools.partial(
            stored.attachment_slice, user=user, attachment=attachment.attachment_id,
            offset=offset, length=length))


def _rendered(source: StoredEmail, read_slice: SliceReader) -> Iterator[bytes]:
    try:
        yield from render(source, read_slice)
    except SourceChanged as exc:
        raise MessageGone(str(exc)) from None


def uidl(email_id: str) -> str:
    """The UIDL of an email: its id as 32 lowercase hex digits, stable forever."""
    return uuid.UUID(email_id).hex


def _length(chunks: Iterable[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)


def _snapshot_rows(cur: Cursor, *, user: str,
                   limit: int) -> list[tuple[str, str, int | None]]:
    cur.execute(_SNAPSHOT, (user, limit))
    return [(email_id, unique_id, None if size is None else int(size))
            for email_id, unique_id, size in cur]


def _open(cur: Cursor, *, user: str, email: str) -> _Raw | StoredEmail:
    cur.execute(
        "SELECT octet_length(e.raw) FROM emails e WHERE e.id = %s AND EXISTS"
        " (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)",
        (email, user))
    row = cur.fetchone()
    if row is None:
        raise MessageGone
    if row[0] is not None:
        return _Raw(email, int(row[0]))
    return stored.load_email(cur, email)


def _raw_slice(cur: Cursor, *, user: str, email: str, offset: int, length: int) -> bytes:
    cur.execute(
        "SELECT substring(e.raw FROM %s FOR %s) FROM emails e WHERE e.id = %s AND EXISTS"
        " (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)",
        (offset + 1, length, email, user))
    row = cur.fetchone()
    if row is None or row[0] is None:
        raise MessageGone
    return bytes(row[0])


def _delete(cur: Cursor, *, user: str, emails: list[str]) -> None:
    # Lock the emails first, in id order: of two users deleting the same email at once, the
    # second waits, then sees the first one's rows gone and removes the email.  Without the
    # lock each would see the other's row and both would leave the email behind.
    cur.execute(
        "SELECT e.id FROM emails e WHERE e.id = ANY(%s::uuid[]) AND EXISTS"
        " (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)"
        " ORDER BY e.id FOR UPDATE OF e", (emails, user))
    mine = [str(email_id) for (email_id,) in cur.fetchall()]
    # To/Cc rows are unlinked rather than deleted: they still name the recipients a rendered
    # message lists, so its bytes (and the size other users' sessions announced) never change.
    cur.execute(
        "DELETE FROM email_recipients WHERE user_id = %s AND email_id = ANY(%s::uuid[])"
        " AND kind = 'bcc'", (user, mine))
    cur.execute(
        "UPDATE email_recipients SET user_id = NULL WHERE user_id = %s"
        " AND email_id = ANY(%s::uuid[])", (user, mine))
    cur.execute(
        "DELETE FROM emails e WHERE e.id = ANY(%s::uuid[]) AND NOT EXISTS (SELECT 1"
        " FROM email_recipients r WHERE r.email_id = e.id AND r.user_id IS NOT NULL)", (mine,))
