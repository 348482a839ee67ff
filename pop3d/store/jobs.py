"""Work for PostgreSQL as data: a job is a generator of queries, and two drivers run jobs.

A job's code yields a :class:`Query` and is sent back its rows; it may yield several, which run
in order on one connection (in one transaction when the job asks for it), and what it returns
is the job's outcome.  The code never touches a connection, so the same job runs on the
blocking driver (:meth:`pop3d.store.db.Database.complete`: the CLI, the login threads, tests)
and on the worker's asynchronous one (:class:`pop3d.store.aio.AsyncDatabase`), which keeps
many sessions' queries in flight without ever blocking the worker's loop.

A :class:`Job` is a :class:`~pop3d.ports.StoreRequest`: the maildrop's streams yield jobs
between their chunks (:func:`wait`), the channel has them completed, and the stream reads the
outcome, which raises the job's error where the stream is pulled.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pop3d.ports import Chunks, StoreRequest

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Query:
    """One SQL statement with its parameters (psycopg2's ``%s`` or ``%(name)s`` style)."""

    sql: str
    params: Sequence[Any] | Mapping[str, Any] = ()


Steps = Generator[Query, Rows, T]  # yields queries, is sent their rows, returns the outcome


class Job(StoreRequest, Generic[T]):
    """Steps to run on one connection, and, once run, their outcome or their error."""

    __slots__ = ("_error", "_finished", "_value", "steps", "transaction")

    def __init__(self, steps: Steps[T], *, transaction: bool = False) -> None:
        self.steps = steps
        self.transaction = transaction  # BEGIN before the first query, COMMIT after the last
        self._value: T | None = None
        self._error: BaseException | None = None
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def succeed(self, value: T) -> None:
        self._value, self._finished = value, True

    def fail(self, error: BaseException) -> None:
        self._error, self._finished = error, True
        self.steps.close()

    def outcome(self) -> T:
        """What the steps returned; raises their error (or the driver's) instead."""
        if not self._finished:
            raise RuntimeError("the job has not been run")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def wait(job: Job[T]) -> Generator[Job[T], None, T]:
    """In a stream: hand ``job`` to whoever pulls the stream, then read its outcome."""
    yield job
    return job.outcome()


def single(query: Query) -> Steps[Rows]:
    """The steps of a job that runs one query and returns its rows."""
    rows = yield query
    return rows


def drain(chunks: Chunks, complete: Callable[[Job[Any]], object]) -> Iterator[bytes]:
    """The bytes of ``chunks``, completing each request on the way with ``complete`` (the
    blocking driver's :meth:`~pop3d.store.db.Database.complete`)."""
    for item in chunks:
        if isinstance(item, bytes):
            yield item
        elif isinstance(item, Job):
            complete(item)
        else:
            raise TypeError(f"not a store job: {item!r}")
