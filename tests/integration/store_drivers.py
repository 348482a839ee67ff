"""The two ways a job reaches PostgreSQL, for tests that run the same store code through both.

:class:`BlockingDriver` is ``Database.complete`` (the CLI and the login threads);
:class:`LoopDriver` is the worker's :class:`~pop3d.store.aio.AsyncDatabase` on a selector of
its own, turned until the job is done.  :class:`DrivenMaildrop` is the maildrop with its
streams drained through a driver, so a test reads plain bytes.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from pop3d.ports import MessageInfo
from pop3d.store import Database, DbSettings, PgMaildrop
from pop3d.store.aio import AsyncDatabase
from pop3d.store.cache import MB, MessageCache
from pop3d.store.jobs import Job, drain

T = TypeVar("T")
DRIVERS = ("blocking", "async", "cached")  # cached: async, with a worker's message cache
JOB_TIMEOUT = 30.0  # seconds a LoopDriver job may take before the test fails


class Driver(Protocol):
    def complete(self, job: Job[Any]) -> object: ...

    def close(self) -> None: ...


class BlockingDriver:
    def __init__(self, db: Database) -> None:
        self.db = db

    def complete(self, job: Job[Any]) -> object:
        return self.db.complete(job)

    def close(self) -> None:
        """The database belongs to whoever made it."""


class LoopDriver:
    """An AsyncDatabase and the selector loop around it."""

    def __init__(self, settings: DbSettings, size: int = 2) -> None:
        self.selector = selectors.DefaultSelector()
        self.db = AsyncDatabase(settings, size=size, watch=self._watch, clock=time.monotonic)
        self.jobs = 0  # completed so far

    def _watch(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        try:
            key = self.selector.get_key(fd)
        except KeyError:
            key = None
        if not events:
            if key is not None:
                self.selector.unregister(fd)
        elif key is None:
            self.selector.register(fd, events, callback)
        else:
            self.selector.modify(fd, events, callback)

    def complete(self, job: Job[T]) -> Job[T]:
        done: list[bool] = []
        self.db.submit(job, lambda: done.append(True))
        self.turn_until(lambda: bool(done))
        self.jobs += 1
        return job

    def turn_until(self, finished: Callable[[], bool], timeout: float = JOB_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise AssertionError("the asynchronous database did not finish in time")
            for key, events in self.selector.select(0.2):
                key.data(events)
            self.db.expire(time.monotonic())

    def close(self) -> None:
        self.db.close()
        self.selector.close()


def make_driver(kind: str, db: Database) -> Driver:
    """The blocking driver on ``db`` itself, or an asynchronous one to the same database."""
    return BlockingDriver(db) if kind == "blocking" else LoopDriver(db.settings)


def make_maildrop(kind: str, db: Database, driver: Driver) -> DrivenMaildrop:
    cache = MessageCache(8 * MB) if kind == "cached" else None
    return DrivenMaildrop(PgMaildrop(db, cache), driver)


class DrivenMaildrop:
    """A PgMaildrop whose streams are drained through ``driver``: what a test reads."""

    def __init__(self, maildrop: PgMaildrop, driver: Driver) -> None:
        self.inner, self.driver = maildrop, driver

    def snapshot(self, user_id: str, limit: int) -> list[MessageInfo]:
        return self.inner.snapshot(user_id, limit)

    def open_message(self, user_id: str, email_id: str) -> Iterator[bytes]:
        return drain(self.inner.open_message(user_id, email_id), self.driver.complete)

    def open_top(self, user_id: str, email_id: str, lines: int) -> Iterator[bytes]:
        return drain(self.inner.open_top(user_id, email_id, lines), self.driver.complete)

    def retr(self, user_id: str, email_id: str) -> bytes:
        return b"".join(self.open_message(user_id, email_id))

    def delete(self, user_id: str, email_ids: Sequence[str]) -> None:
        self.update(user_id, delete=email_ids, mark_read=())

    def mark_read(self, user_id: str, *email_ids: str) -> None:
        self.update(user_id, delete=(), mark_read=email_ids)

    def update(self, user_id: str, *, delete: Sequence[str], mark_read: Sequence[str]) -> None:
        stream = self.inner.update(user_id, delete=delete, mark_read=mark_read)
        assert list(drain(stream, self.driver.complete)) == []  # an update yields no bytes
