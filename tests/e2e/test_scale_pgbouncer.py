"""pop3d through a real PgBouncer in transaction pooling mode, with fewer server connections
than pop3d opens, on a database whose TimeZone is not UTC: logins, sizes and rendered bytes
are as direct, and every transaction gets pop3d's timeouts whatever a server connection was
left with by another client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
import pytest

from pop3d.store import Database, DbSettings, migrate
from pop3d.store.db import Cursor

from .conftest import MasterHandle
from .scale_fixtures import PgBouncer
from .server_fixtures import Account, Client, MailStore, message

pytestmark = pytest.mark.e2e

POOL_SIZE = 2  # server connections; pop3d's 2 workers open up to 2 x (4 + 2 x 4 threads)
SERVER_TIMEZONE = "Pacific/Chatham"  # UTC+12:45 or +13:45: any leak shows in a Date header
SESSIONS = 8


@dataclass
class Pooled:
    direct_dsn: str
    bouncer: PgBouncer
    store: MailStore  # writes directly to PostgreSQL, as the rest of the mail system would


@pytest.fixture(scope="module")
def pooled(make_database: Callable[[], str], services: dict[str, str]) -> Iterator[Pooled]:
    dsn = make_database()
    admin = psycopg2.connect(psycopg2.extensions.make_dsn(dsn, dbname="postgres"))
    admin.autocommit = True
    name = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    with admin.cursor() as cur:
        cur.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = '{SERVER_TIMEZONE}'")
    admin.close()
    bouncer = PgBouncer(services["POP3D_TEST_PGBOUNCER"], psycopg2.extensions.parse_dsn(dsn),
                        POOL_SIZE)
    migrating = Database(DbSettings(bouncer.dsn, statement_timeout=0))
    migrate(migrating)  # transaction-level advisory locks: fine behind the pooler
    migrating.close()
    store = MailStore(dsn)
    yield Pooled(dsn, bouncer, store)
    store.close()
    bouncer.close()


def rendered_email(store: MailStore, account: Account) -> None:
    """A row without raw bytes (as a web UI writes it): pop3d renders it, Date from received_at."""
    def insert(cur: Cursor) -> None:
        cur.execute("INSERT INTO emails (subject, from_address, text_body, received_at)"
                    " VALUES ('rendered', 'web@example.com', 'typed in a browser',"
                    " '2024-03-01 23:30:00+00') RETURNING id")
        row = cur.fetchone()
        assert row is not None
        cur.execute("INSERT INTO email_recipients (email_id, user_id, address, kind)"
                    " VALUES (%s, %s, %s, 'to')", (row[0], account.user_id, account.address))

    store.db.run(insert)


def session(port: int, account: Account) -> tuple[int, bytes]:
    """Log in, LIST 2, RETR 2, DELE 1, QUIT: the listed size and the retrieved bytes."""
    with Client.greeted(port) as client:
        client.login(account)
        listed = client.command("LIST 2")
        assert client.command("RETR 2").startswith(b"+OK")
        body = b"".join(line + b"\r\n" for line in client.multiline())
        assert client.command("DELE 1").startswith(b"+OK")
        assert client.command("QUIT").endswith(b"(1 messages deleted)\r\n")
    return int(listed.split()[2]), body


def server_connections(pooled: Pooled) -> int:
    """Connections PostgreSQL holds for the database, other than this test's own."""
    def count(cur: Cursor) -> int:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND application_name <> 'pop3d-e2e'")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    return pooled.store.db.run(count)


def bouncer_clients(pooled: Pooled) -> int:
    conn = psycopg2.connect(pooled.bouncer.dsn.replace(f"dbname={pooled.bouncer.database}",
                                                       "dbname=pgbouncer"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SHOW CLIENTS")
        columns = [c.name for c in cur.description or ()]
        rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    conn.close()
    return sum(1 for row in rows if row["database"] == pooled.bouncer.database)


def test_pop3d_serves_through_a_transaction_pooler(start_server, pooled: Pooled):
    master: MasterHandle = start_server(
        {"server": {"workers": 2}, "limits": {"max_connections_per_user": 2}},
        dsn=pooled.bouncer.dsn)
    accounts = [pooled.store.account([message(f"delivered {n}")]) for n in range(SESSIONS)]
    for account in accounts:
        rendered_email(pooled.store, account)
    with ThreadPoolExecutor(SESSIONS) as pool:
        results = list(pool.map(lambda a: session(master.port, a), accounts))
    for size, body in results:
        assert size == len(body)  # LIST and RETR agree
        assert re.search(rb"^Date: Fri, 01 Mar 2024 23:30:00 \+0000\r$", body, re.MULTILINE)
    assert all(pooled.store.message_count(a) == 1 for a in accounts)
    assert bouncer_clients(pooled) > POOL_SIZE  # more pop3d connections than server ones
    assert server_connections(pooled) <= POOL_SIZE


def test_settings_left_on_a_server_connection_do_not_reach_pop3d(
        make_database: Callable[[], str], services: dict[str, str]):
    """One server connection, used in turn by a client that SETs for its session (what pop3d
    did once per connection) and by pop3d's Database: each transaction has pop3d's values."""
    dsn = make_database()
    bouncer = PgBouncer(services["POP3D_TEST_PGBOUNCER"], psycopg2.extensions.parse_dsn(dsn), 1)
    try:
        db = Database(DbSettings(bouncer.dsn, statement_timeout=3))
        assert db.run(shown) == ("3s", "3s", "UTC")
        other = psycopg2.connect(bouncer.dsn)
        other.autocommit = True
        with other.cursor() as cur:
            cur.execute("SET statement_timeout = '1min'")
            cur.execute("SET lock_timeout = '2min'")
            cur.execute("SHOW statement_timeout")  # still set, in a later transaction
            assert cur.fetchone() == ("1min",)
        assert db.run(shown) == ("3s", "3s", "UTC")
        db.close()
        other.close()
    finally:
        bouncer.close()


def shown(cur: Cursor) -> tuple[str, ...]:
    cur.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('TimeZone')")
    row = cur.fetchone()
    assert row is not None
    return tuple(row)
