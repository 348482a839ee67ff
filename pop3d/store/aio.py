"""PostgreSQL without waiting: jobs run on psycopg2 asynchronous connections whose sockets sit
in the worker's selector, so its loop serves every other session while a query is out.

Theory of operation.  :class:`AsyncDatabase` keeps up to ``size`` connections, opened when
first needed.  A submitted :class:`~pop3d.store.jobs.Job` waits in a queue for a free
connection, then owns it until its steps are done: each query is sent, the connection's socket
is watched for what psycopg2 asks (``poll()``: read or write), and the rows go back to the
steps, which answer with the next query or their outcome.  A job that wants a transaction is
sent ``BEGIN`` first and ``COMMIT`` last; if anything fails in between, ``ROLLBACK``.  Then the
job's ``done`` callback runs, on the loop, and the connection takes the next job.

Asynchronous connections are in autocommit mode: a job of single statements holds no
transaction.  Nothing is set per connection: each single statement carries
:func:`~pop3d.store.db.transaction_preamble` (timeouts, time zone) in its own query string, and
a transaction's ``BEGIN`` carries it, so a transaction pooler may put every transaction on a
different server connection.  Errors become the store's: a connection that breaks fails its job with
StoreUnavailable (a job whose first query was never answered is retried once on a new
connection, as the blocking driver does), a query that fails on a healthy connection fails its
job with StoreUnavailable (timeouts, deadlocks) or StorePermanentError, and whatever the steps
raise fails the job with that.  :meth:`AsyncDatabase.expire` fails jobs that wait longer than
the statement timeout (plus a margin) for an answer that never comes, as when the server's
host vanishes without a reset.
"""

from __future__ import annotations

import logging
import selectors
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

from pop3d.errors import StorePermanentError, StoreUnavailable
from pop3d.store.db import (
    DbSettings,
    begin,
    connection_dsn,
    first_line,
    transaction_preamble,
    with_preamble,
)
from pop3d.store.jobs import Job, Query

log = logging.getLogger(__name__)

# (fd, selector events or 0 to stop watching, callback taking the ready events)
Watch = Callable[[int, int, Callable[[int], None]], None]
Done = Callable[[], None]

DEADLINE_MARGIN = 5.0  # seconds beyond the statement timeout before an answer is given up on
_TEMPORARY = (psycopg2.OperationalError, psycopg2.InterfaceError)
_COMMIT, _ROLLBACK = Query("COMMIT"), Query("ROLLBACK")


class AsyncDatabase:
    """Up to ``size`` asynchronous connections and the jobs waiting for one."""

    def __init__(self, settings: DbSettings, *, size: int, watch: Watch,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.preamble = transaction_preamble(settings)  # in front of every transaction
        self.size = size
        self._watch = watch
        self._clock = clock
        self._queue: deque[_Work] = deque()
        self._idle: list[_Connection] = []
        self._connections: list[_Connection] = []
        self._dispatching = False  # connections failing at once would otherwise recurse

    def submit(self, job: Job[Any], done: Done) -> None:
        """Run ``job``; ``done()`` is called on the loop once it has an outcome or an error."""
        self._queue.append(_Work(job, done))
        self._dispatch()

    def expire(self, now: float) -> None:
        """Fail the jobs (and drop the connections) that waited too long for the server."""
        for connection in list(self._connections):
            if connection.deadline is not None and now > connection.deadline:
                connection.abandon("no answer from the database in time")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Drop every connection; running and queued jobs fail with StoreUnavailable."""
        for connection in list(self._connections):
            connection.abandon("the worker is stopping")
        while self._queue:
            self._queue.popleft().fail(StoreUnavailable("the worker is stopping"))

    # -- for the connections ----------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._dispatching:
            return  # the loop below, further up the stack, carries on
        self._dispatching = True
        try:
            while self._queue:
                connection = self._idle.pop() if self._idle else self._open()
                if connection is None:
                    return
                connection.start(self._queue.popleft())
        finally:
            self._dispatching = False

    def _open(self) -> _Connection | None:
        if len(self._connections) >= self.size:
            return None
        connection = _Connection(self)
        self._connections.append(connection)
        return connection

    def _released(self, connection: _Connection) -> None:
        self._idle.append(connection)
        self._dispatch()

    def _retry(self, work: _Work) -> None:
        self._queue.appendleft(work)
        self._dispatch()

    def _closed(self, connection: _Connection) -> None:
        self._connections.remove(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        self._dispatch()


class _Work:
    """A job, its callback, and where its steps stand."""

    __slots__ = ("answered", "done", "job", "query")

    def __init__(self, job: Job[Any], done: Done) -> None:
        self.job, self.done = job, done
        self.query: Query | None = None  # the query out now, or next to send
        self.answered = False  # a query of the job has been answered: no retry past that

    def first_query(self) -> Query | None:
        """The query to start with; None when the steps are over before any (outcome set)."""
        if self.query is None:
            try:
                self.query = next(self.job.steps)
            except StopIteration as stop:
                self.job.succeed(stop.value)
            except Exception as error:
                self.job.fail(error)
        return self.query

    def fail(self, error: BaseException) -> None:
        self.job.fail(error)  # even after the steps succeeded: a COMMIT that failed undoes them
        self.finish()

    def finish(self) -> None:
        try:
            self.done()
        except Exception:
            log.exception("a database job's callback failed")


class _Connection:
    """One asynchronous connection and the work it does now."""

    def __init__(self, pool: AsyncDatabase) -> None:
        self._pool = pool
        self._pg: psycopg2.extensions.connection | None = None
        self._cursor: psycopg2.extensions.cursor | None = None
        self._fd = -1
        self._watching = 0  # the selector events registered for _fd
        self._work: _Work | None = None
        # new, connecting, setting up, idle, beginning, running, committing, rolling back, closed
        self._phase = "new"
        self._used = False  # has served a job: a break on it may be the server's restart
        self.deadline: float | None = None

    # -- the pool's calls ---------------------------------------------------------------------

    def start(self, work: _Work) -> None:
        self._work = work
        if self._phase == "new":
            self._connect()
        elif self._phase == "idle":
            self._begin()

    def abandon(self, reason: str) -> None:
        """Close now; the job in hand fails with StoreUnavailable."""
        self._close()
        work, self._work = self._work, None
        if work is not None:
            work.fail(StoreUnavailable(reason))

    # -- the phases ---------------------------------------------------------------------------

    def _connect(self) -> None:
        self._phase = "connecting"
        try:
            self._pg = psycopg2.connect(connection_dsn(self._pool.settings), async_=True)
        except _TEMPORARY as exc:
            self._broken(first_line(exc))
            return
        except psycopg2.Error as exc:
            self._broken(f"cannot connect: {first_line(exc)}")
            return
        self._fd = self._pg.fileno()
        self._arm(self._pool.settings.connect_timeout)
        self._poll()

    def _begin(self) -> None:
        work = self._work
        assert work is not None
        query = work.first_query()
        if query is None:
            self._finish()
        elif work.job.transaction:
            self._send(begin(self._pool.preamble), "beginning")
        else:
            self._send(with_preamble(self._pool.preamble, query), "running")

    def _answered(self) -> None:
        """The query out has been answered (``poll()`` said OK)."""
        phase = self._phase
        if phase in ("connecting", "rolling back"):
            self._idle()
        elif phase == "beginning":
            self._send(self._current_query(), "running")
        elif phase == "running":
            self._next_step()
        elif phase == "committing":
            self._finish()

    def _next_step(self) -> None:
        work = self._work
        assert work is not None
        assert self._cursor is not None
        rows = self._cursor.fetchall() if self._cursor.description is not None else []
        work.answered = True
        try:
            work.query = work.job.steps.send(rows)
        except StopIteration as stop:
            work.job.succeed(stop.value)
            self._after_steps()
        except Exception as error:  # the steps' own verdict (MessageGone...)
            work.job.fail(error)
            self._after_steps()
        else:
            query = work.query
            if not work.job.transaction:
                query = with_preamble(self._pool.preamble, query)
            self._send(query, "running")

    def _after_steps(self) -> None:
        work = self._work
        assert work is not None
        if not work.job.transaction:
            self._finish()
        elif self._succeeded(work):
            self._send(_COMMIT, "committing")
        else:
            self._send(_ROLLBACK, "rolling back", finish_first=True)

    def _finish(self) -> None:
        """The job is over: the connection is free before its callback runs, so the next job
        the callback submits (the session's next step) can have it at once."""
        work, self._work = self._work, None
        self._used = True
        self._phase = "idle"
        self.deadline = None
        self._watch(selectors.EVENT_READ)  # kept while idle: no system call per query
        self._pool._idle.append(self)
        if work is not None:
            work.finish()
        self._pool._dispatch()

    def _idle(self) -> None:
        self._phase = "idle"
        self.deadline = None
        self._watch(selectors.EVENT_READ)  # an idle connection reads only a close or a notice
        if self._work is not None:
            self._begin()
        else:
            self._pool._released(self)

    # -- IO -----------------------------------------------------------------------------------

    def _send(self, query: Query, phase: str, *, finish_first: bool = False) -> None:
        assert self._pg is not None
        if finish_first:  # a failed transaction: the job's callback need not wait for ROLLBACK
            work, self._work = self._work, None
            if work is not None:
                work.finish()
        self._phase = phase
        try:
            self._cursor = self._pg.cursor()
            self._cursor.execute(query.sql, query.params or None)
        except psycopg2.Error as exc:
            self._failed(exc)
            return
        self._arm(self._pool.settings.statement_timeout + DEADLINE_MARGIN)
        self._poll()

    def _on_io(self, _events: int) -> None:
        self._poll()

    def _poll(self) -> None:
        assert self._pg is not None
        try:
            state = self._pg.poll()
        except psycopg2.Error as exc:
            self._failed(exc)
            return
        if state == psycopg2.extensions.POLL_OK:
            self._answered()
        elif state == psycopg2.extensions.POLL_READ:
            self._watch(selectors.EVENT_READ)
        else:
            self._watch(selectors.EVENT_WRITE)

    def _watch(self, events: int) -> None:
        if events != self._watching:
            self._watching = events
            self._pool._watch(self._fd, events, self._on_io)

    def _arm(self, seconds: float) -> None:
        self.deadline = self._pool._clock() + seconds if seconds > 0 else None

    # -- failures -----------------------------------------------------------------------------

    def _failed(self, exc: psycopg2.Error) -> None:
        if self._pg is None or self._pg.closed or self._phase == "connecting":
            self._broken(first_line(exc))
            return
        error: Exception = StoreUnavailable(first_line(exc)) if isinstance(exc, _TEMPORARY) \
            else StorePermanentError(first_line(exc))
        work = self._work
        if work is None or self._phase == "rolling back":
            self._idle()
        elif work.job.transaction and self._phase != "beginning":
            work.job.fail(error)
            self._send(_ROLLBACK, "rolling back", finish_first=True)
        else:
            self._work = None
            work.fail(error)
            self._idle()

    def _broken(self, message: str) -> None:
        """The connection is gone: retry the job once elsewhere if that cannot repeat work."""
        reused = self._used
        self._close()
        work, self._work = self._work, None
        if work is None:
            return
        if reused and not work.answered and not work.job.finished:
            log.info("database connection lost (%s); retrying on a new one", message)
            self._pool._retry(work)
        else:
            work.fail(StoreUnavailable(message))

    def _close(self) -> None:
        if self._phase == "closed":
            return
        self._phase = "closed"
        self.deadline = None
        if self._fd >= 0:
            self._watch(0)
        if self._pg is not None and not self._pg.closed:
            self._pg.close()
        self._pool._closed(self)

    def _current_query(self) -> Query:
        assert self._work is not None
        assert self._work.query is not None
        return self._work.query

    @staticmethod
    def _succeeded(work: _Work) -> bool:
        try:
            work.job.outcome()
        except Exception:
            return False
        return True
