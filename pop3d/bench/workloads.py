"""What one session says, per workload: generators that yield the next action and receive the
reply to it (a :class:`~.replies.Reply`, or None after a Sleep or Opened).

The loop answers ``-ERR`` and transport failures itself (the session ends and is counted as an
error), so a script sees only ``+OK`` replies; it raises :class:`SessionFailed` for a reply that
is ``+OK`` but wrong (a RETR whose size disagrees with LIST).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from .replies import OPENED, Opened, Reply, Sleep, Step, parse_listing, parse_stat

Action = Step | Sleep | Opened
Script = Generator[Action, Reply | None, None]


class SessionFailed(Exception):
    """A reply that is ``+OK`` but not what the server promised; the text is the error key."""


@dataclass(frozen=True, slots=True)
class User:
    address: str
    password: str


@dataclass
class Plan:
    """What every session of one process shares: the clock, the phases and the options."""

    clock: Callable[[], float]
    deadline: float = 0.0  # no new session (bulk: no new RETR) from then on
    starttls: bool = False
    auth: str = "user"  # "user" (USER/PASS) or "plain" (AUTH PLAIN, RFC 5034)
    verify: bool = False  # LIST before RETR, and every RETR must have the listed size
    noop_interval: float = 1.0  # idle: seconds between two NOOPs of one session
    hold_until: float = 0.0  # idle: set when every session of the process is open
    # spreads the NOOPs of idle sessions over the interval; nothing secret
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311


def login(user: User, plan: Plan) -> Script:
    yield Step("connect")  # the greeting: timed from the start of the TCP connect
    if plan.starttls:
        yield Step("STLS", b"STLS", starttls=True)
    if plan.auth == "plain":
        token = base64.b64encode(f"\0{user.address}\0{user.password}".encode())
        yield Step("login", b"AUTH PLAIN " + token)
    else:
        yield Step("", b"USER " + user.address.encode())
        yield Step("login", b"PASS " + user.password.encode(), joined=True)


def sizes(plan: Plan) -> Generator[Action, Reply | None, dict[int, int]]:
    """STAT, or LIST when verifying: message number -> listed size (0 when not listed)."""
    if plan.verify:
        reply = yield Step("LIST", b"LIST", multi=True, keep=True)
        assert reply is not None
        return {n: int(size) for n, size in parse_listing(reply.body).items()}
    reply = yield Step("STAT", b"STAT")
    assert reply is not None
    count, _ = parse_stat(reply.line)
    return dict.fromkeys(range(1, count + 1), 0)


def retr(number: int, listed: int, plan: Plan) -> Script:
    reply = yield Step("RETR", b"RETR %d" % number, multi=True)
    assert reply is not None
    if plan.verify and reply.octets != listed:
        raise SessionFailed(f"RETR {number}: {reply.octets} octets, LIST said {listed}")


def quit_() -> Script:
    yield Step("QUIT", b"QUIT")


def login_only(user: User, plan: Plan) -> Script:
    yield from login(user, plan)
    yield from quit_()


def poll(user: User, plan: Plan) -> Script:
    yield from login(user, plan)
    yield Step("STAT", b"STAT")
    yield Step("UIDL", b"UIDL", multi=True, keep=True)
    yield from quit_()


def download(user: User, plan: Plan) -> Script:
    yield from login(user, plan)
    listing = yield from sizes(plan)
    for number, listed in listing.items():
        yield from retr(number, listed, plan)
    yield from quit_()


def bulk(user: User, plan: Plan) -> Script:
    yield from login(user, plan)
    listing = yield from sizes(plan)
    if not listing:
        raise SessionFailed("bulk: the maildrop is empty")
    while True:
        for number, listed in listing.items():
            if plan.clock() >= plan.deadline:
                yield from quit_()
                return
            yield from retr(number, listed, plan)


def idle(user: User, plan: Plan) -> Script:
    yield from login(user, plan)
    yield OPENED
    yield Sleep(plan.rng.uniform(0, plan.noop_interval))  # spread the NOOPs evenly
    while plan.clock() < plan.hold_until:
        yield Step("NOOP", b"NOOP")
        yield Sleep(plan.noop_interval)
    yield from quit_()


WORKLOADS: dict[str, Callable[[User, Plan], Script]] = {
    "login": login_only,
    "poll": poll,
    "download": download,
    "bulk": bulk,
    "idle": idle,
}
