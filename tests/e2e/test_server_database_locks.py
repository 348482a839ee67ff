"""A database that holds a lock: logins wait on the pool, not in the worker's loop; queries that
must run on the loop give up within the lock timeout with [SYS/TEMP]; no worker is killed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest

from .conftest import MasterHandle
from .server_fixtures import Client, MailStore, message

pytestmark = pytest.mark.e2e

STATEMENT_TIMEOUT = 2  # also the lock timeout; below worker_timeout (5), as config requires
SYS_TEMP = b"-ERR [SYS/TEMP]"


@pytest.fixture(scope="module")
def master(start_module_server) -> MasterHandle:
    return start_module_server({"server": {"workers": 1},
                                "database": {"statement_timeout": STATEMENT_TIMEOUT}})


@pytest.fixture
def recipients_locked(mail_store: MailStore) -> Iterator[None]:
    """Another client holds an exclusive lock on email_recipients for the test's duration."""
    conn = psycopg2.connect(mail_store.dsn)
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE email_recipients IN ACCESS EXCLUSIVE MODE")
    yield
    conn.rollback()
    conn.close()


def timed(action) -> tuple[bytes, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


def test_a_login_waiting_on_a_lock_stalls_nobody_else(master, mail_store: MailStore,
                                                      request: pytest.FixtureRequest):
    waiting, busy = (mail_store.account([message("waits")]), mail_store.account([message("b")]))
    worker = next(iter(master.worker_pids()))
    with Client.greeted(master.port) as other:
        other.login(busy)
        request.getfixturevalue("recipients_locked")
        with Client.greeted(master.port) as client:
            client.command(f"USER {waiting.address}")
            client.send(f"PASS {waiting.key}\r\n".encode())
            replies: list[tuple[bytes, float]] = []
            login = threading.Thread(target=lambda: replies.append(timed(client.line)))
            login.start()
            time.sleep(0.3)  # the login is now waiting on the lock, on the pool
            for _ in range(5):
                reply, took = timed(lambda: other.command("NOOP"))
                assert reply == b"+OK\r\n"
                assert took < 0.5, f"the worker's loop stalled for {took:.2f} s"
            login.join(timeout=STATEMENT_TIMEOUT + 5)
        [(reply, took)] = replies
        assert reply.startswith(SYS_TEMP), reply
        assert STATEMENT_TIMEOUT - 0.5 <= took < STATEMENT_TIMEOUT + 3
        reply, took = timed(lambda: other.command("RETR 1"))  # on the loop: bounded
        assert reply.startswith(SYS_TEMP), reply
        assert took < STATEMENT_TIMEOUT + 2
    assert master.worker_pids() == {worker}, "a worker was killed while waiting on the lock"
    assert "no heartbeat" not in master.log_text()


def test_after_the_lock_everything_works_again(master, mail_store: MailStore):
    account = mail_store.account([message("after")])
    with Client.greeted(master.port) as client:
        client.login(account)
        assert client.command("RETR 1").startswith(b"+OK")
        assert client.multiline()[-1] == b"Hello."
