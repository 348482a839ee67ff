"""The POP3 maildrop on PostgreSQL (implements :class:`pop3d.ports.Maildrop`).

Every query names the user: an email is reachable only through a recipient row for that user,
so a session can never read, mark or delete another user's mail, whatever id it passes.

``snapshot`` blocks: the worker calls it on a login thread.  ``open_message``, ``open_top`` and
``update`` return streams that yield :class:`~pop3d.store.jobs.Job` requests between their
chunks (see :mod:`pop3d.store.jobs`); the worker completes each on its asynchronous
connections, so its loop never waits on PostgreSQL.  A message that fits in one slice is checked
and read by one query; a larger one goes on slice by slice, each slice a query of its own, so no
transaction is open while a client reads.  Read marks wait for ``update``: one statement per
session instead of one per RETR.  With a :class:`~pop3d.store.cache.MessageCache`, a message
sent before costs only the check that the user may still read it.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import uuid
import weakref
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from pop3d.errors import MessageGone, Pop3dError
from pop3d.message.normalize import retr_octets, top_octets
from pop3d.message.render import AttachmentMeta, SourceChanged, StoredEmail, render, rendered_size
from pop3d.ports import Chunks, MessageInfo, StoreRequest
from pop3d.store import stored
from pop3d.store.cache import MessageCache
from pop3d.store.db import Cursor, Database, as_uuid
from pop3d.store.jobs import Job, Query, Steps, drain, single, wait

log = logging.getLogger(__name__)

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

# The access check, the length and the first slice in one round trip.
_OPEN = """
SELECT octet_length(e.raw), substring(e.raw FROM 1 FOR %s) FROM emails e WHERE e.id = %s
AND EXISTS (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)
"""

# Whether the user may (still) read the email: all a cached message needs.
_ACCESS = "SELECT 1 FROM email_recipients WHERE user_id = %s AND email_id = %s LIMIT 1"

_SLICE = """
SELECT substring(e.raw FROM %s FOR %s) FROM emails e WHERE e.id = %s
AND EXISTS (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)
"""

_MARK_READ = """
UPDATE email_recipients SET is_read = true
WHERE user_id = %s AND email_id = ANY(%s::uuid[]) AND NOT is_read
"""

Stream = Generator[bytes | StoreRequest, None, None]


class _SharedInfos:
    """One MessageInfo per message in the process, however many sessions hold it in their
    snapshot (the same user twice, a list's recipients): an idle worker holds thousands of
    snapshots.  Thread-safe: snapshots are taken on the login threads."""

    def __init__(self) -> None:
        self._infos: weakref.WeakValueDictionary[str, MessageInfo] = \
            weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def info(self, email_id: str, uidl: str, size: int) -> MessageInfo:
        with self._lock:
            info = self._infos.get(email_id)
            if info is None or info.size != size or info.uidl != uidl:
                info = MessageInfo(sys.intern(email_id), sys.intern(uidl), size)
                self._infos[info.email_id] = info
            return info


_SHARED = _SharedInfos()


@dataclass(frozen=True, slots=True)
class _Raw:
    email_id: str
    length: int  # of the whole raw message
    head: bytes  # its first slice


class PgMaildrop:
    """The maildrop: ``snapshot`` on the blocking ``db``, the rest as streams of jobs; messages
    once sent kept in ``cache`` (if any: the worker's loop has one, login threads none)."""

    def __init__(self, db: Database, cache: MessageCache | None = None) -> None:
        self.db = db
        self.cache = cache

    def snapshot(self, user_id: str, limit: int) -> list[MessageInfo]:
        user = as_uuid(user_id)
        if user is None or limit <= 0:
            return []
        rows = self.db.run(functools.partial(_snapshot_rows, user=user, limit=limit),
                           autocommit=True)  # one statement: no BEGIN and COMMIT round trips
        missing = [email_id for email_id, _, size in rows if size is None]
        computed = self._store_sizes(user, missing) if missing else {}
        return [_SHARED.info(email_id, unique_id, computed[email_id] if size is None else size)
                for email_id, unique_id, size in rows if size is not None or email_id in computed]

    def open_message(self, user_id: str, email_id: str) -> Chunks:
        user, email = as_uuid(user_id), as_uuid(email_id)
        if user is None or email is None:
            return _gone()
        cached = self.cache.get(email) if self.cache is not None else None
        if cached is not None:
            return _cached(user, email, cached)
        return _message(user, email, self.cache)

    def open_top(self, user_id: str, email_id: str, lines: int) -> Chunks:
        return top_octets(self.open_message(user_id, email_id), max(lines, 0))

    def update(self, user_id: str, *, delete: Sequence[str], mark_read: Sequence[str]) -> Chunks:
        user = as_uuid(user_id)
        doomed = sorted({e for e in map(as_uuid, delete) if e is not None})
        read = sorted({e for e in map(as_uuid, mark_read) if e is not None} - set(doomed))
        if user is None:
            return iter(())
        return _update(user, doomed, read)

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
                    octets = drain(retr_octets(_raw_slices(user, raw)), self.db.complete)
                    sizes.update(self._save({raw.email_id: _length(octets)}))
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
                source = self.db.complete(Job(_open(user, email_id))).outcome()
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


def _gone() -> Stream:
    raise MessageGone
    yield b""  # a generator: the error comes where the stream is pulled, like any other


def _cached(user: str, email: str, octets: bytes) -> Stream:
    if not (yield from wait(Job(single(Query(_ACCESS, (user, email)))))):
        raise MessageGone
    yield octets


def _message(user: str, email: str, cache: MessageCache | None) -> Stream:
    opened = yield from wait(Job(_open(user, email)))
    if isinstance(opened, _Raw) and cache is not None and len(opened.head) == opened.length:
        octets = b"".join(chunk for chunk in retr_octets([opened.head])
                          if isinstance(chunk, bytes))
        cache.put(email, octets)
        yield octets
        return
    if isinstance(opened, _Raw):
        yield from retr_octets(_raw_slices(user, opened))
        return
    try:
        yield from render(opened, functools.partial(_attachment_slice, user))
    except SourceChanged as exc:
        raise MessageGone(str(exc)) from None


def _open(user: str, email: str) -> Steps[_Raw | StoredEmail]:
    rows = yield Query(_OPEN, (RAW_SLICE, email, user))
    if not rows:
        raise MessageGone
    length, head = rows[0]
    if length is None:  # stored without raw bytes: rendered from its columns
        return (yield from stored.load_email(email))
    return _Raw(email, int(length), bytes(head))


def _raw_slices(user: str, raw: _Raw) -> Stream:
    yield raw.head
    offset = len(raw.head)
    while offset < raw.length:
        rows = yield from wait(Job(single(Query(_SLICE, (offset + 1, RAW_SLICE, raw.email_id,
                                                          user)))))
        chunk = bytes(rows[0][0]) if rows and rows[0][0] is not None else b""
        if not chunk:
            raise MessageGone("message changed while being sent")
        yield chunk
        offset += len(chunk)


def _attachment_slice(user: str, attachment: AttachmentMeta, offset: int,
                      length: int) -> Generator[StoreRequest, None, bytes]:
    job = Job(stored.attachment_slice(user, attachment.attachment_id, offset, length))
    return (yield from wait(job))


def _update(user: str, doomed: list[str], read: list[str]) -> Stream:
    if doomed:
        yield from wait(Job(_delete(user, doomed), transaction=True))
    if read:
        try:
            yield from wait(Job(single(Query(_MARK_READ, (user, read)))))
        except Pop3dError as exc:  # the mail went out; only its read flags are lost
            log.warning("marking %d messages read failed: %s", len(read), exc)


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


def _delete(user: str, emails: list[str]) -> Steps[None]:
    # Lock the emails first, in id order: of two users deleting the same email at once, the
    # second waits, then sees the first one's rows gone and removes the email.  Without the
    # lock each would see the other's row and both would leave the email behind.
    rows = yield Query(
        "SELECT e.id::text FROM emails e WHERE e.id = ANY(%s::uuid[]) AND EXISTS"
        " (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)"
        " ORDER BY e.id FOR UPDATE OF e", (emails, user))
    mine = [email_id for (email_id,) in rows]
    # To/Cc rows are unlinked rather than deleted: they still name the recipients a rendered
    # message lists, so its bytes (and the size other users' sessions announced) never change.
    yield Query(
        "DELETE FROM email_recipients WHERE user_id = %s AND email_id = ANY(%s::uuid[])"
        " AND kind = 'bcc'", (user, mine))
    yield Query(
        "UPDATE email_recipients SET user_id = NULL WHERE user_id = %s"
        " AND email_id = ANY(%s::uuid[])", (user, mine))
    yield Query(
        "DELETE FROM emails e WHERE e.id = ANY(%s::uuid[]) AND NOT EXISTS (SELECT 1"
        " FROM email_recipients r WHERE r.email_id = e.id AND r.user_id IS NOT NULL)", (mine,))
