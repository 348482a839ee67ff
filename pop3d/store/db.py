"""PostgreSQL connections: lazy, self-healing, with every psycopg2 error translated here.

A :class:`Database` owns at most one psycopg2 connection, opened on first use.  All work goes
through :meth:`Database.run`, one short transaction per call that is committed before it
returns, so no transaction stays open between calls: the worker can interleave many sessions'
queries (and the chunks of a long RETR) on one connection.

Nothing is set per connection: every statement carries :func:`transaction_preamble` (its
timeouts and time zone as ``SET LOCAL``), so a transaction pooler (PgBouncer in transaction
mode) may hand each transaction to a different server connection.

When the server drops a connection (restart, failover, idle reaping), the next ``run`` finds
it broken, opens a new one and retries once, but only if nothing could have been committed;
the caller sees :class:`StoreUnavailable` only when the database really is unreachable.

A Database is safe to share between threads (calls are serialised by a lock), but threads
that query in parallel, like the authenticator's pool, should each have their own.  It is the
blocking driver of :mod:`pop3d.store.jobs`: :meth:`Database.complete` runs a job in one
transaction; the worker's loop uses the asynchronous driver, :mod:`pop3d.store.aio`, instead.

:func:`is_storable`, :func:`make_storable` and :func:`as_uuid` say what PostgreSQL's text and
uuid types accept, for input that must be checked or cleaned before it reaches a query.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.sql

from pop3d.errors import StorePermanentError, StoreUnavailable
from pop3d.store.jobs import Job, Query, Steps

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

    def run(self, work: Callable[[Cursor], T], *, retry: bool = True,
            autocommit: bool = False) -> T:
        """Run ``work(cursor)`` in one transaction and commit; roll back if it raises.  With
        ``autocommit`` each statement is its own transaction: no BEGIN and COMMIT round trips,
        for work of one statement or that needs no atomicity.

        Raises StoreUnavailable (unreachable, broken, timed out, deadlocked) or
        StorePermanentError (any other database error); ``work``'s own errors pass through.
        """
        with self._lock:
            reused = self._conn is not None and not self._conn.closed
            try:
                return self._transaction(work, autocommit)
            except _Broken as broken:
                if not (retry and reused and not broken.committing):
                    raise StoreUnavailable(broken.message) from None
            try:
                return self._transaction(work, autocommit)
            except _Broken as broken:
                raise StoreUnavailable(broken.message) from None

    def complete(self, job: Job[T]) -> Job[T]:
        """Run ``job``'s steps in one transaction and record their outcome (or error) in it.

        A broken connection is replaced and the job retried only while its first query has
        not been answered: the steps cannot be rewound past that."""
        try:
            job.succeed(self.run(_Stepper(job.steps)))
        except Exception as error:
            job.fail(error)
        return job

    def close(self) -> None:
        """Close the connection; the next ``run`` opens a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.closed:
                conn.close()

    def _transaction(self, work: Callable[[Cursor], T], autocommit: bool) -> T:
        conn = self._connection()
        committing = False
        try:
            conn.autocommit = autocommit
            with conn.cursor() as cur:
                if isinstance(cur, _PreambleCursor):
                    cur.preamble = self._preamble
                result = work(cur)
            committing = not autocommit
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


class _Stepper(Generic[T]):
    """A job's steps as ``Database.run`` work: each query's rows sent back to the steps."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self._first: Query | None = None
        self._answered = False

    def __call__(self, cur: Cursor) -> T:
        if self._answered:  # a retry after the steps moved on: they cannot start again
            raise _Broken("the connection broke in the middle of a job", committing=True)
        try:
            query = self._first = self._first or next(self._steps)
            while True:
                rows = _execute(cur, query)
                self._answered = True
                query = self._steps.send(rows)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def _execute(cur: Cursor, query: Query) -> list[tuple[Any, ...]]:
    cur.execute(query.sql, query.params)
    return cur.fetchall() if cur.description is not None else []


def connection_dsn(settings: DbSettings) -> str:
    """The DSN with the connect timeout and, unless it names one, the application name."""
    options: dict[str, int | str] = {"connect_timeout": settings.connect_timeout}
    if "application_name" not in psycopg2.extensions.parse_dsn(settings.dsn):
        options["application_name"] = settings.application_name
    return psycopg2.extensions.make_dsn(settings.dsn, **options)


def transaction_preamble(settings: DbSettings) -> str:
    """What opens every transaction: pop3d's timeouts and time zone as ``SET LOCAL``, one SQL
    string without parameters, sent in the same round trip as the statement it precedes.

    Behind a transaction pooler consecutive transactions of one client connection run on
    different server connections, so a per-connection ``SET`` would reach one of them and
    leak into other clients' transactions there; ``SET LOCAL`` lasts exactly one transaction,
    wherever it runs.  Both drivers send it without a round trip of its own: a single statement
    (autocommit) as ``<preamble>; <statement>`` (:func:`with_preamble`: the statements of one
    query string run as one transaction, and its result is the last one's), a multi-statement
    transaction as ``BEGIN; <preamble>`` (:func:`begin`).  The blocking driver prefixes every
    statement, in a transaction too (repeating ``SET LOCAL`` changes nothing).

    A lock wait ends in "lock timeout", temporary like any timeout: a table locked by another
    client (a long migration, a manual LOCK) costs a login [SYS/TEMP], not a hung session.
    UTC keeps timestamps PostgreSQL formats as text independent of the server's TimeZone; the
    renderer converts ``received_at`` to UTC itself."""
    lock_timeout = settings.lock_timeout
    if lock_timeout is None:
        lock_timeout = settings.statement_timeout
    return (f"SET LOCAL statement_timeout = {_milliseconds(settings.statement_timeout)}; "
            f"SET LOCAL lock_timeout = {_milliseconds(lock_timeout)}; "
            "SET LOCAL TimeZone = 'UTC'")


def with_preamble(preamble: str, query: Query) -> Query:
    """``query`` as one transaction of its own with the preamble's settings (autocommit)."""
    return Query(f"{preamble}; {query.sql}", query.params)


def begin(preamble: str) -> Query:
    """BEGIN of a multi-statement transaction, with the preamble's settings."""
    return Query(f"BEGIN; {preamble}")


class _PreambleCursor(psycopg2.extensions.cursor):
    """A cursor sending :func:`transaction_preamble` in front of every statement."""

    preamble = ""

    def execute(self, query: str | bytes | psycopg2.sql.Composable,
                vars: Any = None) -> None:
        if not isinstance(query, str):
            raise TypeError("pop3d's statements are plain strings")
        super().execute(f"{self.preamble}; {query}", vars)


def _connect(settings: DbSettings) -> Connection:
    try:
        conn = psycopg2.connect(connection_dsn(settings))
    except _TEMPORARY as exc:
        raise StoreUnavailable(first_line(exc)) from None
    except psycopg2.Error as exc:
        raise StorePermanentError(f"cannot connect: {first_line(exc)}") from None
    conn.cursor_factory = _PreambleCursor  # the default of conn.cursor()
    return conn


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
