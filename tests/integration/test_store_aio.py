"""The worker's asynchronous database driver against a real PostgreSQL: many jobs on few
connections, transactions, every kind of failure, and connections that break or never answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from store_drivers import LoopDriver

from pop3d.errors import MessageGone, StorePermanentError, StoreUnavailable
from pop3d.store import Database, DbSettings
from pop3d.store.jobs import Job, Query, Steps, single


def _count(db: Database, sql: str, *params: Any) -> int:
    value = db.run(lambda cur: (cur.execute(sql, params), cur.fetchone())[1])[0]
    assert isinstance(value, int)
    return value


@pytest.fixture
def loop(db: Database) -> Iterator[LoopDriver]:
    driver = LoopDriver(DbSettings(db.settings.dsn, statement_timeout=2.0,
                                   application_name="pop3d-aio-test"), size=2)
    yield driver
    driver.close()


@pytest.fixture
def counter(db: Database) -> Database:
    db.run(lambda cur: cur.execute("CREATE TABLE counter (n int NOT NULL)"))
    db.run(lambda cur: cur.execute("INSERT INTO counter VALUES (0)"))
    return db


def _value(rows: list[tuple[Any, ...]]) -> Any:
    return rows[0][0]


def test_many_jobs_share_the_connections_without_waiting_for_each_other(
        loop: LoopDriver, db: Database) -> None:
    finished: list[int] = []
    jobs = [Job(single(Query("SELECT %s::int, pg_sleep(0.05)", (n,)))) for n in range(12)]
    started = time.monotonic()
    for n, job in enumerate(jobs):
        loop.db.submit(job, lambda n=n: finished.append(n))  # type: ignore[misc]
    assert loop.db.queued == 10  # two connections, each with a job; the rest wait their turn
    loop.turn_until(lambda: len(finished) == len(jobs))
    assert [_value(job.outcome()) for job in jobs] == list(range(12))
    assert time.monotonic() - started < 12 * 0.05  # two at a time, not one after another
    assert _count(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                  "pop3d-aio-test") == 2


def _add(amount: int, then_fail: bool) -> Steps[int]:
    yield Query("UPDATE counter SET n = n + %s", (amount,))
    rows = yield Query("SELECT n FROM counter")
    if then_fail:
        raise MessageGone("changed my mind")
    return int(rows[0][0])


def test_a_transaction_commits_or_rolls_back_as_a_whole(
        loop: LoopDriver, counter: Database) -> None:
    assert loop.complete(Job(_add(5, then_fail=False), transaction=True)).outcome() == 5
    bad = loop.complete(Job(_add(7, then_fail=True), transaction=True))
    with pytest.raises(MessageGone):
        bad.outcome()
    assert _count(counter, "SELECT n FROM counter") == 5
    # The connection that rolled back serves the next job.
    assert _value(loop.complete(Job(single(Query("SELECT 1")))).outcome()) == 1


def test_a_failing_statement_in_a_transaction_rolls_it_back(
        loop: LoopDriver, counter: Database) -> None:
    def steps() -> Steps[None]:
        yield Query("UPDATE counter SET n = 100")
        yield Query("SELECT no_such_column FROM counter")

    job = Job(steps(), transaction=True)
    loop.complete(job)
    with pytest.raises(StorePermanentError, match="no_such_column"):
        job.outcome()
    assert _count(counter, "SELECT n FROM counter") == 0


@pytest.mark.parametrize(
    ("sql", "error", "text"),
    [
        ("SELECT no_such_column", StorePermanentError, "no_such_column"),
        ("SELECT pg_sleep(5)", StoreUnavailable, "statement timeout"),
    ],
)
def test_errors_of_a_healthy_connection_fail_only_their_job(
        loop: LoopDriver, sql: str, error: type[Exception], text: str) -> None:
    job = Job(single(Query(sql)))
    loop.complete(job)
    with pytest.raises(error, match=text):
        job.outcome()
    after = Job(single(Query("SELECT 2")))
    loop.complete(after)
    assert _value(after.outcome()) == 2


def test_the_steps_own_errors_fail_the_job(loop: LoopDriver) -> None:
    def steps() -> Steps[None]:
        yield Query("SELECT 1")
        raise MessageGone

    job = Job(steps())
    loop.complete(job)
    with pytest.raises(MessageGone):
        job.outcome()


def test_a_connection_broken_between_jobs_is_replaced_and_the_job_retried(
        loop: LoopDriver, db: Database) -> None:
    first = Job(single(Query("SELECT pg_backend_pid()")))
    loop.complete(first)
    pid = _value(first.outcome())
    db.run(lambda cur: cur.execute("SELECT pg_terminate_backend(%s)", (pid,)))
    time.sleep(0.2)
    again = Job(single(Query("SELECT pg_backend_pid()")))
    loop.complete(again)
    assert _value(again.outcome()) != pid


def test_a_connection_the_server_closes_while_idle_is_dropped_without_spinning(
        loop: LoopDriver, db: Database) -> None:
    first = Job(single(Query("SELECT pg_backend_pid()")))
    loop.complete(first)
    db.run(lambda cur: cur.execute("SELECT pg_terminate_backend(%s)", (_value(first.outcome()),)))
    events = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # no job: only the server's goodbye to read
        for key, mask in loop.selector.select(0.1):
            key.data(mask)
            events += 1
    assert events <= 3  # the close is read once and the socket forgotten, not reported forever
    assert not loop.selector.get_map()
    again = Job(single(Query("SELECT 1")))
    loop.complete(again)
    assert _value(again.outcome()) == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_database_fails_every_job_at_once() -> None:
    driver = LoopDriver(DbSettings(f"host=127.0.0.1 port={_closed_port()} dbname=x"), size=2)
    finished: list[Job[Any]] = []
    jobs = [Job(single(Query("SELECT 1"))) for _ in range(50)]
    try:
        for job in jobs:
            driver.db.submit(job, lambda job=job: finished.append(job))  # type: ignore[misc]
        driver.turn_until(lambda: len(finished) == len(jobs), timeout=10)
    finally:
        driver.close()
    for job in jobs:
        with pytest.raises(StoreUnavailable):
            job.outcome()


def test_a_server_that_never_answers_is_given_up_on() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    driver = LoopDriver(DbSettings(f"host=127.0.0.1 port={port} dbname=x", connect_timeout=1),
                        size=1)
    job = Job(single(Query("SELECT 1")))
    started = time.monotonic()
    try:
        driver.complete(job)
    finally:
        driver.close()
        silent.close()
    with pytest.raises(StoreUnavailable, match="no answer"):
        job.outcome()
    assert time.monotonic() - started < 5
