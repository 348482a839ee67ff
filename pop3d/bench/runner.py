"""Several load processes, started together, their tallies merged.

Each process runs one :class:`~.loop.Loop`.  Looping workloads (login, poll, download, bulk)
give each process a share of the client slots; a slot runs one session after another until the
deadline.  The idle workload gives each process a share of the sessions to open and hold.  The
processes start at one shared monotonic instant, so their measured windows line up.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import resource
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from .loop import Loop, Session, Target
from .stats import Tally
from .workloads import WORKLOADS, Plan, User

START_DELAY = 0.3  # seconds for the processes to fork and get ready before the shared start
STOP_GRACE = 5.0  # seconds past the last deadline (and reply timeout) before giving up
RETRY_PAUSE = 0.05  # seconds a slot waits after a failed session, so errors cannot spin
SPARE_FILES = 64  # descriptors beyond one per session: the loop, the pipe, the interpreter


@dataclass(frozen=True)
class RunConfig:
    workload: str
    host: str
    port: int
    tls: str = "plain"
    cafile: str | None = None
    insecure: bool = False
    server_name: str | None = None
    users: tuple[User, ...] = ()
    concurrency: int = 8
    sessions: int = 0  # idle: sessions to open and hold
    processes: int = 1
    duration: float = 10.0
    warmup: float = 0.0
    noop_interval: float = 1.0
    verify: bool = False
    auth: str = "user"
    timeout: float = 30.0
    recv_size: int = 256 * 1024
    on_open: str | None = None  # idle: a shell command run once every session is open
    grouped: bool = False  # idle: a user's sessions open one after another, not users apart


@dataclass
class Outcome:
    """The merged result of a run."""

    config: RunConfig
    tally: Tally
    cpu_seconds: float = 0.0
    opened: int = 0
    open_seconds: float = 0.0
    on_open_output: str = ""
    per_process: list[dict[str, Any]] = field(default_factory=list)


def tls_context(config: RunConfig) -> ssl.SSLContext | None:
    if config.tls == "plain":
        return None
    context = ssl.create_default_context(cafile=config.cafile)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to ``wanted`` if allowed (the hard limit too, as root); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def share(total: int, index: int, parts: int) -> list[int]:
    """The global numbers (0..total-1) that part ``index`` of ``parts`` takes, round robin."""
    return list(range(index, total, parts))


class Slots:
    """Looping workloads: each slot starts a new session when its last one ends."""

    def __init__(self, loop: Loop, config: RunConfig, numbers: list[int]) -> None:
        self.loop = loop
        self.config = config
        self.runs: dict[Session, tuple[int, int]] = {}  # session -> (slot, sessions so far)
        for slot in numbers:
            self._start(slot, 0)

    def _start(self, slot: int, count: int) -> None:
        config = self.config
        user = config.users[(slot + count * config.concurrency) % len(config.users)]
        script = WORKLOADS[config.workload](user, self.loop.plan)
        session = self.loop.spawn(script, self)
        if not session.closed:
            self.runs[session] = (slot, count)

    def ended(self, session: Session, ok: bool) -> None:
        slot, count = self.runs.pop(session, (None, 0))
        if slot is None or self.loop.clock() >= self.loop.plan.deadline:
            return
        if ok:
            self._start(slot, count + 1)
        else:
            self.loop.later(RETRY_PAUSE, lambda: self._start(slot, count + 1))

    def opened(self, session: Session) -> None:
        raise AssertionError("only idle sessions report being opened")

    def done(self) -> bool:
        return not self.loop.sessions and self.loop.clock() >= self.loop.plan.deadline


def idle_user(number: int, config: RunConfig) -> int:
    """The user of idle session ``number``: spread (k mod users: a user's sessions are as far
    apart as they can be, so each login may find the auth cache expired) or grouped (sessions
    k, k+1, ... of one user open together, as a user's devices reconnecting after a restart)."""
    users = len(config.users)
    if config.grouped:
        return number // -(-config.sessions // users) % users
    return number % users


class Holder:
    """The idle workload: open this process's sessions, at most ``width`` at a time, then hold
    them all for the duration while they NOOP."""

    def __init__(self, loop: Loop, config: RunConfig, numbers: list[int], width: int,
                 notify: multiprocessing.connection.Connection) -> None:
        self.loop = loop
        self.config = config
        self.waiting = list(reversed(numbers))
        self.wanted = len(numbers)
        self.parked: list[Session] = []
        self.failed = 0
        self.opened_at = 0.0
        self.notify = notify
        for _ in range(min(width, len(numbers))):
            self._next()
        self._check()

    def _next(self) -> None:
        if self.waiting:
            number = self.waiting.pop()
            user = self.config.users[idle_user(number, self.config)]
            self.loop.spawn(WORKLOADS["idle"](user, self.loop.plan), self)

    def opened(self, session: Session) -> None:
        self.parked.append(session)
        self._next()
        self._check()

    def ended(self, session: Session, ok: bool) -> None:
        if not self.opened_at:
            if session in self.parked:  # closed by the server while the others opened
                self.parked.remove(session)
            self.failed += 1
            self._next()
            self._check()

    def _check(self) -> None:
        if self.opened_at or len(self.parked) + self.failed < self.wanted:
            return
        self.opened_at = self.loop.clock()
        self.loop.plan.hold_until = self.opened_at + self.config.duration
        self.loop.plan.deadline = self.loop.plan.hold_until
        self.notify.send(("opened", self.opened_at))
        for session in self.parked:
            if not session.closed:
                session.advance(None)

    def done(self) -> bool:
        return bool(self.opened_at) and not self.loop.sessions


def _child(config: RunConfig, index: int, start_at: float,
           pipe: multiprocessing.connection.Connection) -> None:
    """One load process: wait for the shared start, run, send the tally back."""
    width = max(1, -(-config.concurrency // config.processes))
    numbers = share(config.sessions if config.workload == "idle" else config.concurrency,
                    index, config.processes)
    raise_file_limit(len(numbers) + SPARE_FILES if config.workload == "idle"
                     else width + SPARE_FILES)
    target = Target(config.host, config.port, config.tls, tls_context(config),
                    config.server_name, config.timeout)
    plan = Plan(clock=time.monotonic, starttls=config.tls == "starttls", auth=config.auth,
                verify=config.verify, noop_interval=config.noop_interval)
    plan.rng.seed(index)
    loop = Loop(target, plan, time.monotonic, config.recv_size)
    time.sleep(max(0.0, start_at - time.monotonic()))
    loop.measure_from = start_at + config.warmup
    loop.tally.first = loop.measure_from
    cpu = os.times()
    feeder: Slots | Holder
    if config.workload == "idle":
        plan.deadline = plan.hold_until = float("inf")
        feeder = Holder(loop, config, numbers, width, pipe)
    else:
        plan.deadline = loop.measure_from + config.duration
        feeder = Slots(loop, config, numbers)
    hard_stop = _hard_stop(config, start_at)
    loop.run(lambda: feeder.done() or time.monotonic() > hard_stop(plan))
    loop.abandon("still running at the end")
    used = os.times()
    opened = len(feeder.parked) if isinstance(feeder, Holder) else 0
    pipe.send(("result", {
        "tally": loop.tally.to_wire(), "cpu": used.user + used.system - cpu.user - cpu.system,
        "opened": opened, "opened_at": getattr(feeder, "opened_at", 0.0), "started": start_at}))


def _hard_stop(config: RunConfig, start_at: float) -> Any:
    def at(plan: Plan) -> float:
        last = plan.deadline if plan.deadline != float("inf") else start_at + 3600.0
        return last + config.timeout + STOP_GRACE

    return at


def run(config: RunConfig) -> Outcome:
    """Fork ``config.processes`` load processes, wait for them, merge what they measured."""
    context = multiprocessing.get_context("fork")
    start_at = time.monotonic() + START_DELAY + 0.05 * config.processes
    pipes, children = [], []
    for index in range(config.processes):
        ours, theirs = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(config, index, start_at, theirs),
                                daemon=True)
        child.start()
        theirs.close()
        pipes.append(ours)
        children.append(child)
    outcome = Outcome(config, Tally())
    results = _collect(config, pipes, outcome)
    for child in children:
        child.join()
    for result in results:
        outcome.tally.merge(Tally.from_wire(result["tally"]))
        outcome.cpu_seconds += result["cpu"]
        outcome.opened += result["opened"]
        outcome.open_seconds = max(outcome.open_seconds, result["opened_at"] - result["started"])
        outcome.per_process.append({"cpu_s": round(result["cpu"], 3), "opened": result["opened"]})
    return outcome


def _collect(config: RunConfig, pipes: list[multiprocessing.connection.Connection],
             outcome: Outcome) -> list[dict[str, Any]]:
    """Every process's result; once all have opened their sessions, the on-open command."""
    results: list[dict[str, Any]] = []
    opened = 0
    pending = list(pipes)
    while pending:
        for pipe in multiprocessing.connection.wait(pending):
            assert isinstance(pipe, multiprocessing.connection.Connection)
            try:
                kind, value = pipe.recv()
            except EOFError:
                pending.remove(pipe)
                outcome.tally.error("a load process died without a result")
                continue
            if kind == "opened":
                opened += 1
                if opened == len(pipes) and config.on_open:
                    outcome.on_open_output = _run_on_open(config.on_open)
            else:
                results.append(value)
                pending.remove(pipe)
    return results


def _run_on_open(command: str) -> str:
    # The operator's own command line, from the operator's own arguments: a shell is the point.
    done = subprocess.run(command, shell=True, capture_output=True, text=True,  # noqa: S602
                          check=False)
    return done.stdout + done.stderr
