"""The database side of authentication (implements :class:`pop3d.ports.CredentialStore`).

The authenticator runs on a small thread pool, and a psycopg2 connection must not be used by
two threads at once, so each thread gets its own :class:`Database` (opened on its first login).
Lookups are short and indexed: users by ``lower(address)``, keys by user among the active ones;
each is one statement, sent without BEGIN and COMMIT.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

from pop3d.ports import KeyRecord, UserRecord
from pop3d.store.db import Cursor, Database, DbSettings, as_uuid, is_storable

_FIND_USER = """
SELECT id::text, address, disabled_at IS NOT NULL, 0 AS preference FROM users
WHERE lower(address) = lower(%(address)s)
UNION ALL
SELECT u.id::text, u.address, u.disabled_at IS NOT NULL, 1 FROM user_addresses a
JOIN users u ON u.id = a.user_id
WHERE lower(a.address) = lower(%(address)s) AND a.verified
ORDER BY preference LIMIT 1
"""

# Keys with a public prefix are candidates only for a password starting with that prefix;
# keys without one (written by other parts of the mail system) are always candidates.
_CANDIDATES = """
SELECT id::text, key_hash, scopes FROM api_keys
WHERE user_id = %s AND revoked_at IS NULL AND (prefix IS NULL OR starts_with(%s, prefix))
ORDER BY prefix IS NULL, created_at, id
"""


def find_user(cur: Cursor, address: str) -> UserRecord | None:
    """The user whose primary address or verified alias this is (case-insensitive)."""
    cur.execute(_FIND_USER, {"address": address})
    row = cur.fetchone()
    return None if row is None else UserRecord(row[0], row[1], bool(row[2]))


class PgCredentialStore:
    """Credential lookups with one connection per calling thread."""

    def __init__(self, settings: DbSettings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._opened: weakref.WeakSet[Database] = weakref.WeakSet()
        self._lock = threading.Lock()

    def find_user(self, address: str) -> UserRecord | None:
        if not is_storable(address):
            return None  # no stored address contains NUL or invalid UTF-8
        return self._db().run(lambda cur: find_user(cur, address.strip()), autocommit=True)

    def candidate_keys(self, user_id: str, presented: str) -> list[KeyRecord]:
        user = as_uuid(user_id)
        if user is None:
            return []
        if not is_storable(presented):
            presented = ""  # matches no prefix; keys without one are still candidates
        return self._db().run(lambda cur: _candidates(cur, user, presented), autocommit=True)

    def touch_keys(self, key_ids: Sequence[str]) -> None:
        ids = sorted({k for k in map(as_uuid, key_ids) if k is not None})
        if ids:
            self._db().run(autocommit=True, work=lambda cur: cur.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE id = ANY(%s::uuid[])", (ids,)))

    def close(self) -> None:
        """Close every thread's connection (they reopen on next use)."""
        with self._lock:
            databases = list(self._opened)
        for db in databases:
            db.close()

    def _db(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = Database(self.settings)
            self._local.db = db
            with self._lock:
                self._opened.add(db)
        return db


def _candidates(cur: Cursor, user_id: str, presented: str) -> list[KeyRecord]:
    cur.execute(_CANDIDATES, (user_id, presented))
    return [KeyRecord(key_id, key_hash.encode("utf-8"), frozenset(scopes or ()))
            for key_id, key_hash, scopes in cur]
