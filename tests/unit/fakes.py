"""In-memory fakes of the ports in pop3d.ports, for pure tests of the session and its users.

Each fake records what it was asked and can be told to fail: ``fake.fail("snapshot",
StoreUnavailable())`` makes the next and every later ``snapshot`` call raise that error, until
``fake.heal("snapshot")``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pop3d.errors import AuthFailed, MessageGone
from pop3d.ports import Chunks, Credentials, MessageInfo, Principal, StoreRequest


class _Failing:
    """Mixin: named methods (and the steps in FAILURE_POINTS) can be made to raise an error."""

    FAILURE_POINTS: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.failures: dict[str, BaseException] = {}

    def can_fail(self, method: str) -> bool:
        return method in self.FAILURE_POINTS or hasattr(self, method)

    def fail(self, method: str, error: BaseException) -> None:
        if not self.can_fail(method):
            raise AttributeError(f"{type(self).__name__} has no method {method!r}")
        self.failures[method] = error

    def heal(self, method: str) -> None:
        self.failures.pop(method, None)

    def _check(self, method: str) -> None:
        error = self.failures.get(method)
        if error is not None:
            raise error


class FakeRequest(StoreRequest):
    """A database round trip as the fake maildrop's streams ask for one: the stream checks,
    when it is pulled again, that its consumer completed it first."""

    __slots__ = ("completed",)

    def __init__(self) -> None:
        self.completed = False

    def complete(self) -> None:
        self.completed = True


def round_trip() -> Iterator[StoreRequest]:
    request = FakeRequest()
    yield request
    if not request.completed:
        raise AssertionError("the stream was pulled on before its request was completed")


def complete(request: object) -> None:
    """Complete a fake store request, as the worker's database would a real one."""
    if not isinstance(request, FakeRequest):
        raise AssertionError(f"not a fake store request: {request!r}")
    request.complete()


@dataclass
class StoredMessage:
    email_id: str
    uidl: str
    content: bytes  # the exact RETR octets: CRLF line ends, ending in CRLF

    def info(self) -> MessageInfo:
        return MessageInfo(self.email_id, self.uidl, len(self.content))


def top_of(content: bytes, lines: int) -> bytes:
    """Headers, the blank line and the first ``lines`` body lines, as a store would cut them."""
    head, blank, body = content.partition(b"\r\n\r\n")
    if not blank:
        return content
    kept = body.split(b"\r\n")[:-1][:lines]
    return head + blank + b"".join(line + b"\r\n" for line in kept)


class FakeMaildrop(_Failing):
    FAILURE_POINTS = frozenset({"delete"})  # the deletions of an update

    def __init__(self, mailboxes: dict[str, list[StoredMessage]] | None = None) -> None:
        super().__init__()
        self.mailboxes: dict[str, list[StoredMessage]] = mailboxes or {}
        self.chunk_size = 7  # small, so dot-stuffing meets many chunk boundaries
        self.round_trips = True  # streams ask for a FakeRequest before their data, like the store
        self.break_after_chunks: int | None = None  # raise mid-stream after this many chunks
        self.read: list[str] = []
        self.deleted: list[str] = []
        self.updates: list[tuple[list[str], list[str]]] = []  # (delete, mark_read) per update
        self.opened: list[str] = []

    def snapshot(self, user_id: str, limit: int) -> list[MessageInfo]:
        self._check("snapshot")
        return [message.info() for message in self.mailboxes.get(user_id, [])[:limit]]

    def open_message(self, user_id: str, email_id: str) -> Chunks:
        """Like the store's streams, it fails where it is pulled, never when it is made."""
        self._check("open_message")
        return self._stream(lambda: self._find(user_id, email_id).content)

    def open_top(self, user_id: str, email_id: str, lines: int) -> Chunks:
        self._check("open_top")
        return self._stream(lambda: top_of(self._find(user_id, email_id).content, lines))

    def update(self, user_id: str, *, delete: Sequence[str], mark_read: Sequence[str]) -> Chunks:
        return self._update(user_id, list(delete), list(mark_read))

    def _update(self, user_id: str, delete: list[str], mark_read: list[str]) -> Chunks:
        if self.round_trips:
            yield from round_trip()
        self.updates.append((delete, mark_read))
        if delete:
            self._check("delete")  # "@fail delete": the UPDATE transaction fails
            doomed = set(delete)
            box = self.mailboxes.get(user_id, [])
            self.mailboxes[user_id] = [m for m in box if m.email_id not in doomed]
            self.deleted.extend(delete)
        self.read.extend(email_id for email_id in mark_read if email_id not in delete)
        yield from ()

    def _find(self, user_id: str, email_id: str) -> StoredMessage:
        for message in self.mailboxes.get(user_id, []):
            if message.email_id == email_id:
                self.opened.append(email_id)
                return message
        raise MessageGone(email_id)

    def _stream(self, content: Callable[[], bytes]) -> Chunks:
        if self.round_trips:  # the access check
            yield from round_trip()
        yield from self._chunks(content())

    def _chunks(self, content: bytes) -> Chunks:
        for count, start in enumerate(range(0, len(content), self.chunk_size)):
            if self.break_after_chunks is not None and count >= self.break_after_chunks:
                raise RuntimeError("the store went away mid-message")
            if self.round_trips and count and count % 4 == 0:  # a slice now and then
                yield from round_trip()
            yield content[start : start + self.chunk_size]


class FakeRegistry(_Failing):
    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, set[str]] = {}
        self.released: list[tuple[str, str]] = []

    def acquire(self, user_id: str, session_id: str, limit: int) -> bool:
        self._check("acquire")
        held = self.sessions.setdefault(user_id, set())
        if session_id not in held and len(held) >= limit:
            return False
        held.add(session_id)
        return True

    def release(self, user_id: str, session_id: str) -> None:
        self.released.append((user_id, session_id))
        self._check("release")
        self.sessions.get(user_id, set()).discard(session_id)

    def fill(self, user_id: str, count: int) -> None:
        """Pretend ``count`` other sessions of this user are live."""
        self.sessions.setdefault(user_id, set()).update(f"other:{n}" for n in range(count))


@dataclass
class FakeMetrics:
    counters: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, float] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def incr(self, name: str, count: int = 1) -> None:
        self.counters[name] += count

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def timing(self, name: str, milliseconds: float) -> None:
        self.timings.append((name, milliseconds))


class FakeAuthenticator(_Failing):
    """Knows users by lower-cased address; every failure is AuthFailed, like the real one."""

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, tuple[str, Principal]] = {}
        self.calls: list[Credentials] = []

    def add_user(self, address: str, password: str, user_id: str) -> Principal:
        principal = Principal(user_id=user_id, key_id=f"key-{user_id}", address=address)
        self.users[address.lower()] = (password, principal)
        return principal

    def authenticate(self, credentials: Credentials) -> Principal:
        self.calls.append(credentials)
        self._check("authenticate")
        known = self.users.get(credentials.username.lower())
        if known is None or known[0] != credentials.password:
            raise AuthFailed(f"bad credentials for {credentials.username!r}")
        return known[1]


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
