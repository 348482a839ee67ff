"""Connection handling: lazy connect, reconnect, timeouts and error translation."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg2
import pytest

from pop3d.errors import StorePermanentError, StoreUnavailable
from pop3d.store import Database, DbSettings, PgMaildrop
from pop3d.store.db import Cursor


def _one(db: Database, sql: str) -> object:
    def work(cur: Cursor) -> object:
        cur.execute(sql)
        row = cur.fetchone()
        return None if row is None else row[0]

    return db.run(work)


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    yield conn
    conn.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sessions(admin: psycopg2.extensions.connection, name: str) -> int:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,))
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_connects_lazily_and_sets_session(
        dsn: str, admin: psycopg2.extensions.connection) -> None:
    db = Database(DbSettings(dsn, statement_timeout=7.5, application_name="pop3d-lazy"))
    assert _sessions(admin, "pop3d-lazy") == 0  # nothing happens before the first query
    assert _one(db, "SHOW statement_timeout") == "7500ms"
    assert _one(db, "SHOW lock_timeout") == "7500ms"  # defaults to the statement timeout
    assert _sessions(admin, "pop3d-lazy") == 1
    assert _one(db, "SELECT current_setting('application_name')") == "pop3d-lazy"
    assert _one(db, "SHOW TimeZone") == "UTC"
    db.close()


def test_application_name_in_dsn_wins(dsn: str) -> None:
    db = Database(DbSettings(f"{dsn} application_name=operator-choice"))
    assert _one(db, "SELECT current_setting('application_name')") == "operator-choice"
    db.close()


def test_reconnects_after_the_server_dropped_the_connection(
        db: Database, admin: psycopg2.extensions.connection) -> None:
    pid = _one(db, "SELECT pg_backend_pid()")
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert _one(db, "SELECT 42") == 42
    assert _one(db, "SELECT pg_backend_pid()") != pid


def test_no_transaction_stays_open_between_runs(
        db: Database, admin: psycopg2.extensions.connection) -> None:
    pid = _one(db, "SELECT pg_backend_pid()")
    with admin.cursor() as cur:
        cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        assert cur.fetchone() == ("idle",)


def test_unreachable_server_is_temporary(dsn: str) -> None:
    db = Database(DbSettings(f"{dsn} host=127.0.0.1 port={_closed_port()}", connect_timeout=2))
    with pytest.raises(StoreUnavailable, match="Connection refused"):
        _one(db, "SELECT 1")


def test_statement_timeout_is_temporary_and_keeps_the_connection(dsn: str) -> None:
    db = Database(DbSettings(dsn, statement_timeout=0.1))
    pid = _one(db, "SELECT pg_backend_pid()")
    with pytest.raises(StoreUnavailable, match="statement timeout"):
        _one(db, "SELECT pg_sleep(2)")
    assert _one(db, "SELECT pg_backend_pid()") == pid  # not retried, not reconnected
    db.close()


@pytest.mark.parametrize(("statement", "lock", "shown"), [
    (0, None, ("0", "0")),  # the CLI's migrations: no limit at all
    (30, 2.5, ("30s", "2500ms")),
    (0.0001, None, ("1ms", "1ms")),  # a tiny timeout is not rounded down to "no limit"
])
def test_timeouts_in_milliseconds_and_zero_is_no_limit(
        dsn: str, statement: float, lock: float | None, shown: tuple[str, str]) -> None:
    db = Database(DbSettings(dsn, statement_timeout=statement, lock_timeout=lock))
    assert (_one(db, "SHOW statement_timeout"), _one(db, "SHOW lock_timeout")) == shown
    db.close()


@pytest.fixture
def locked_recipients(dsn: str) -> Iterator[None]:
    """Another client holding the recipients table in ACCESS EXCLUSIVE mode."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE email_recipients IN ACCESS EXCLUSIVE MODE")
    yield
    conn.rollback()
    conn.close()


# With equal timeouts the statement's timer, started first, is the one that fires.
@pytest.mark.parametrize(("statement", "lock", "message"), [
    (30, 1, "lock timeout"),
    (1, None, "statement timeout"),
])
def test_a_lock_held_by_another_client_is_temporary_within_the_lock_timeout(
        dsn: str, users: dict[str, str], locked_recipients: None, statement: float,
        lock: float | None, message: str) -> None:
    db = Database(DbSettings(dsn, statement_timeout=statement, lock_timeout=lock))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=message):
        PgMaildrop(db).snapshot(users["a"], 10)
    assert 0.9 < time.monotonic() - started < 2.5
    assert _one(db, "SELECT 1") == 1  # the connection is still usable
    db.close()


def test_sql_errors_are_permanent_and_roll_back(db: Database) -> None:
    def half_done(cur: Cursor) -> None:
        cur.execute("INSERT INTO users (address) VALUES ('x@example.com')")
        cur.execute("SELECT * FROM no_such_table")

    with pytest.raises(StorePermanentError, match="no_such_table") as caught:
        db.run(half_done)
    assert "\n" not in str(caught.value)
    assert _one(db, "SELECT count(*) FROM users") == 0


def test_own_exceptions_pass_through_and_roll_back(db: Database) -> None:
    def refuse(cur: Cursor) -> None:
        cur.execute("INSERT INTO users (address) VALUES ('x@example.com')")
        raise LookupError("mine")

    with pytest.raises(LookupError, match="mine"):
        db.run(refuse)
    assert _one(db, "SELECT count(*) FROM users") == 0


def test_invalid_dsn_is_a_store_error(dsn: str) -> None:
    db = Database(DbSettings("nonsense_option=1"))
    with pytest.raises(StorePermanentError, match="invalid dsn"):
        _one(db, "SELECT 1")
