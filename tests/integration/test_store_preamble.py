"""The per-transaction preamble: timeouts and the time zone hold in every transaction, whatever
the server connection's own settings (as behind a transaction pooler), and never leak out."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import pytest

from pop3d.store import Database, DbSettings
from pop3d.store.db import Cursor, transaction_preamble


def _shown(cur: Cursor) -> tuple[str, str, str]:
    values = []
    for name in ("statement_timeout", "lock_timeout", "TimeZone"):
        cur.execute(f"SHOW {name}")
        row = cur.fetchone()
        assert row is not None
        values.append(str(row[0]))
    return values[0], values[1], values[2]


@pytest.fixture
def foreign_dsn(dsn: str) -> Iterator[str]:
    """The test database with server-side defaults unlike pop3d's, as a pooled server
    connection left by another client (or a DBA's ALTER DATABASE) would have them."""
    admin = psycopg2.connect(psycopg2.extensions.make_dsn(dsn, dbname="postgres"))
    admin.autocommit = True
    name = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    with admin.cursor() as cur:
        cur.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Pacific/Chatham'")
        cur.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '1min'")
    yield dsn
    admin.close()


def test_every_transaction_gets_the_settings(foreign_dsn: str) -> None:
    db = Database(DbSettings(foreign_dsn, statement_timeout=7.5, lock_timeout=2))
    assert db.run(_shown) == ("7500ms", "2s", "UTC")
    assert db.run(_shown) == ("7500ms", "2s", "UTC")  # the second as the first
    db.close()


def test_the_settings_end_with_the_transaction(foreign_dsn: str) -> None:
    """Nothing stays on the server connection for whoever uses it next."""
    conn = psycopg2.connect(foreign_dsn)
    preamble = transaction_preamble(DbSettings(foreign_dsn, statement_timeout=3))
    with conn.cursor() as cur:
        cur.execute(preamble)
        assert _shown(cur) == ("3s", "3s", "UTC")
        conn.commit()
        assert _shown(cur) == ("1min", "0", "Pacific/Chatham")
    conn.close()


def test_one_query_string_carries_it_on_an_autocommit_connection(foreign_dsn: str) -> None:
    """The asynchronous driver's way: preamble and statement in one round trip."""
    conn = psycopg2.connect(foreign_dsn)
    conn.autocommit = True
    preamble = transaction_preamble(DbSettings(foreign_dsn, statement_timeout=4))
    with conn.cursor() as cur:
        cur.execute(f"{preamble}; SELECT current_setting('statement_timeout'), %s", ("x",))
        assert cur.fetchone() == ("4s", "x")
        cur.execute(f"BEGIN; {preamble}")
        assert _shown(cur) == ("4s", "4s", "UTC")
        cur.execute("COMMIT")
        assert _shown(cur) == ("1min", "0", "Pacific/Chatham")
    conn.close()


def test_zero_means_no_limit_and_a_positive_timeout_never_rounds_to_it() -> None:
    assert "statement_timeout = 0;" in transaction_preamble(DbSettings("", statement_timeout=0))
    assert "statement_timeout = 1;" in transaction_preamble(
        DbSettings("", statement_timeout=0.0001))
