"""PostgreSQL connections: lazy, self-healing, with every psycopg2 error translated here.

A :class:`Database` owns at most one psycopg2 connection, opened on first use.  All work goes
through :meth:`Database.run`, one short transaction per call that is committed before it
returns, so no transaction stays open between calls: the worker can interleave many sessions'
queries (and the chunks of a long RETR) on one connection.

When the server drops a connection (restart, failover, idle reaping), the next ``run`` finds
it broken, opens a new one and retries once, but only if nothing could have been committed;
the caller sees :class:`StoreUnavailable` only when the database really is unreachable.

A Database is safe to share between threads (calls are serialised by a lock), but threads
that query in parallel, like the authenticator's pool, should each have their own.

:func:`is_storable`, :func:`make_storable` and :func:`as_uuid` say what PostgreSQL's text and
uuid types accept, for input that must be checked or cleaned before it reaches a query.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg2
import psycopg2.extensions

from pop3d.errors import StorePermanentError, StoreUnavailable

T = TypeVar("T")
Cursor = psycopg2.extensions.cursor
Connection = psycopg2.extensions.connection

_TEMPORARY = (psycopg2.OperationalError, psycopg2.InterfaceError)
# PostgreSQL's text type refuses NUL, and UTF-8 has no encoding for a lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class DbSettings:
    """How to reach the database; built by the CLI or worker from ``[database]``."""

    dsn: str
    connect_timeout: int = 5  # seconds to establish a connection
    statement_timeout: float = 30.0  # seconds per statement; 0 = no limit
    # Seconds a statement may wait for a lock another client holds; None = statement_timeout.
    lock_timeout: float | None = None
    application_name: str = "pop3d"  # shown in pg_stat_activity, unless the DSN names one


def is_storable(text: str) -> bool:
    """Whether PostgreSQL takes ``text`` as a text value unchanged."""
    return _UNSTORABLE.search(text) is None


def as_uuid(text: str) -> str | None:
    """The canonical form of a UUID, or None for anything else (never a query error)."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        return None


def make_storable(text: str | None) -> str | None:
    """``text`` with every character PostgreSQL's text type refuses replaced by U+FFFD."""
    return None if text is None else _UNSTORABLE.sub("\ufffd", text)


class _Broken(Exception):
    """The connection died under a transaction; ``committing`` says whether it was at COMMIT."""

    def __init__(self, message: str, committing: bool) -> None:
        super().__init__(message)
        self.message = message
        self.committing = committing


def first_line(exc: BaseException) -> str:
    """psycopg2 messages run over several lines (hints, the SQL); logs and stderr want one."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


class Database:
    """One lazily opened, automatically replaced connection."""

    def __init__(self, settings: DbSettings) -> None:
        self.settings = settings
        self._preamble = transaction_preamble(settings)
        self._conn: Connection | None = None
        self._lock = threading.RLock()

    def run(self, work: Callable[[Cursor], T], *, retry: bool = True) -> T:
        """Run ``work(cursor)`` in one transaction and commit; roll back if it raises.

        Raises StoreUnavailable (unreachable, broken, timed out, deadlocked) or
        StorePermanentError (any other database error); ``work``'s own errors pass through.
        """
        with self._lock:
            reused = self._conn is not None and not self._conn.closed
            try:
                return self._transaction(work)
            except _Broken as broken:
                if not (retry and reused and not broken.committing):
                    raise StoreUnavailable(broken.message) from None
            try:
                return self._transaction(work)
            except _Broken as broken:
                raise StoreUnavailable(broken.message) from None

    def close(self) -> None:
        """Close the connection; the next ``run`` opens a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.closed:
                conn.close()

    def _transaction(self, work: Callable[[Cursor], T]) -> T:
        conn = self._connection()
        committing = False
        try:
            with conn.cursor() as cur:
                cur.execute(self._preamble)
                result = work(cur)
            committing = True
            conn.commit()
        except _TEMPORARY as exc:
            if conn.closed:
                self._conn = None
                raise _Broken(first_line(exc), committing) from None
            _rollback(conn)
            raise StoreUnavailable(first_line(exc)) from None
        except psycopg2.Error as exc:
            _rollback(conn)
            raise StorePermanentError(first_line(exc)) from None
        except BaseException:
            _rollback(conn)
            raise
        return result

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = None
            self._conn = _connect(self.settings)
        return self._conn


def _connect(settings: DbSettings) -> Connection:
    try:
        options: dict[str, int | str] = {"connect_timeout": settings.connect_timeout}
        if "application_name" not in psycopg2.extensions.parse_dsn(settings.dsn):
            options["application_name"] = settings.application_name
        conn = psycopg2.connect(psycopg2.extensions.make_dsn(settings.dsn, **options))
    except _TEMPORARY as exc:
        raise StoreUnavailable(first_line(exc)) from None
    except psycopg2.Error as exc:
        raise StorePermanentError(f"cannot connect: {first_line(exc)}") from None
    return conn


def transaction_preamble(settings: DbSettings) -> str:
    """The statements that open every transaction, as one SQL string without parameters.

    Behind a transaction pooler (PgBouncer with ``pool_mode = transaction``) consecutive
    transactions of one client connection run on different server connections, so a
    per-connection ``SET`` would reach one of them and leak into other clients' transactions.
    ``SET LOCAL`` lasts exactly one transaction, wherever it runs.  Two ways to send it:

    * in a transaction psycopg2 began (``autocommit`` off): execute it first, as
      :meth:`Database.run` does;
    * on an autocommit connection: ``BEGIN; <preamble>`` before a multi-statement transaction,
      or ``<preamble>; <statement>`` as one query string for a single statement (the statements
      of one query string run as one implicit transaction, and the result is the last one's).

    A lock wait ends in "lock timeout", temporary like any timeout: a table locked by another
    client (a long migration, a manual LOCK) costs a login [SYS/TEMP], not a hung session.
    UTC keeps timestamps PostgreSQL formats as text independent of the server's TimeZone (the
    renderer converts ``received_at`` to UTC itself)."""
    lock_timeout = settings.lock_timeout
    if lock_timeout is None:
        lock_timeout = settings.statement_timeout
    return (f"SET LOCAL statement_timeout = {_milliseconds(settings.statement_timeout)}; "
            f"SET LOCAL lock_timeout = {_milliseconds(lock_timeout)}; "
            "SET LOCAL TimeZone = 'UTC'")


def _milliseconds(seconds: float) -> int:
    # 0 is PostgreSQL's "no limit"; a positive timeout never rounds down to it.
    return max(round(seconds * 1000), 1) if seconds > 0 else 0


def _rollback(conn: Connection) -> None:
    if conn.closed:
        return
    try:
        conn.rollback()
    except _TEMPORARY:
        conn.close()
