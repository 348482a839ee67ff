"""Schema migrations: numbered SQL files applied in order, each in its own transaction.

``migrations/NNNN_name.sql`` files are applied oldest first and recorded in
``schema_migrations``.  Every migration's transaction first takes a transaction-level advisory
lock, then (re)checks whether its version is recorded: two ``pop3d db migrate`` run at once
serialise on the lock, and the second finds the work done.  A file that fails leaves the schema
at the previous version (its transaction rolls back) and stops the run.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from pop3d.errors import StorePermanentError
from pop3d.store.db import Cursor, Database

# Any constant unique to pop3d; other applications' advisory locks use other numbers.
_LOCK_KEY = 0x706F703364  # "pop3d"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def available() -> list[Migration]:
    """The migrations shipped with this version of pop3d, oldest first."""
    folder = resources.files("pop3d.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StorePermanentError("two migration files share a version number")
    return found


def migrate(db: Database) -> list[str]:
    """Apply every migration not yet recorded; return the labels of those applied now."""
    applied = []
    for migration in available():
        if db.run(functools.partial(_apply, migration=migration)):
            applied.append(migration.label)
    return applied


def applied_versions(db: Database) -> list[int]:
    """The versions recorded in ``schema_migrations`` (empty before the first migrate)."""

    def query(cur: Cursor) -> list[int]:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if row is None or not row[0]:
            return []
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [int(version) for (version,) in cur.fetchall()]

    return db.run(query)


def _apply(cur: Cursor, migration: Migration) -> bool:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    cur.execute(_CREATE_TABLE)
    cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,))
    if cur.fetchone() is not None:
        return False
    cur.execute(migration.sql)
    cur.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
        (migration.version, migration.name),
    )
    return True
