"""The master's decisions, as pure functions of what it has observed.

Nothing here forks, signals, sleeps or reads a clock: the arbiter passes ``now`` and what it knows
of its workers, and acts on the answer.  How many workers to start and which to retire, how long to
back off after early deaths, when deaths mean a crash loop, how a death is judged, when a worker is
stale or overdue, how long to wait for the next signal: each is tested here without a process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from pop3d.config import Config

TICK_SECONDS = 1.0  # longest wait between checks of heartbeats and deadlines
BOOT_POLL_SECONDS = 0.1  # while a worker boots: notice its first beat (READY, reloads) quickly
EARLY_DEATH_SECONDS = 5.0  # a worker dying sooner than this after spawning counts as failing
MAX_EARLY_DEATHS = 5  # consecutive early deaths that mean "crash loop": stop instead
BACKOFF_BASE_SECONDS = 0.5  # respawn delay after the second early death, doubling after that
BACKOFF_MAX_SECONDS = 10.0
FAST_STOP_SECONDS = 2.0  # INT/QUIT: how long workers get to close their sessions
KILL_SLACK_SECONDS = 1.0  # after graceful_timeout, time for a worker to close what is left
STATUS_REPORT_SECONDS = 1.0  # on_status at most this often, unless the number of workers moved
RESTART_ONLY = ("pidfile", "user", "group")  # server settings the master holds since start-up


# --- how many workers, and which -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the decisions need to know about a worker."""

    pid: int
    age: int
    generation: int
    booted: bool
    retiring: bool


@dataclass(frozen=True, slots=True)
class Plan:
    spawn: int = 0
    retire: tuple[int, ...] = ()


def worker_count(configured: int, cpus: int | None) -> int:
    """``server.workers``, where 0 means one per CPU."""
    return configured if configured > 0 else max(1, cpus or 1)


def adjust_target(target: int, delta: int) -> int:
    """TTIN/TTOU: one worker more or fewer, never fewer than one."""
    return max(1, target + delta)


def plan_workers(workers: Iterable[WorkerView], generation: int, target: int) -> Plan:
    """Spawn up to ``target`` workers of ``generation``; retire the oldest surplus ones; retire
    every other generation once ``target`` workers of this one have booted."""
    active = [w for w in workers if not w.retiring]
    current = sorted((w for w in active if w.generation == generation), key=lambda w: w.age)
    surplus = current[: max(0, len(current) - target)]
    kept = current[len(surplus):]
    retire = [w.pid for w in surplus]
    if len(kept) == target and all(w.booted for w in kept):
        retire += [w.pid for w in active if w.generation != generation]
    return Plan(spawn=max(0, target - len(current)), retire=tuple(retire))


def generation_serving(workers: Iterable[WorkerView], generation: int, target: int) -> bool:
    """Whether ``target`` workers of ``generation`` run and all of them have booted."""
    current = [w for w in workers if not w.retiring and w.generation == generation]
    return len(current) >= target and all(w.booted for w in current)


def booting(workers: Iterable[WorkerView]) -> bool:
    """Whether a worker that is not retiring has yet to beat for the first time."""
    return any(not w.booted for w in workers if not w.retiring)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply (the master holds them since start-up)."""
    return [f"server.{name} changed: it takes effect at the next restart"
            for name in RESTART_ONLY if getattr(old.server, name) != getattr(new.server, name)]


# --- deaths and back-off -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Consecutive early worker deaths and when the next spawn may happen."""

    failures: int = 0
    last_failure: float = float("-inf")
    not_before: float = float("-inf")


def respawn_delay(failures: int) -> float:
    """No delay after one early death; then 0.5 s, 1 s, 2 s ... up to BACKOFF_MAX_SECONDS."""
    if failures <= 1:
        return 0.0
    doublings = min(failures - 2, 32)  # far past the cap already; keeps 2.0 ** n finite
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** doublings)


def record_death(backoff: Backoff, now: float, lifetime: float, booted: bool) -> Backoff:
    """Account for an unexpected death; only early ones (or before booting) count."""
    if booted and lifetime >= EARLY_DEATH_SECONDS:
        return backoff
    failures = backoff.failures + 1
    return Backoff(failures, now, now + respawn_delay(failures))


def record_health(backoff: Backoff, now: float, workers: Iterable[tuple[float, bool]]) -> Backoff:
    """Forget failures once a worker spawned after the last one has lived past the early window.

    ``workers`` are ``(spawn time, booted)`` pairs."""
    if backoff.failures and any(booted and backoff.last_failure < started <= now -
                                EARLY_DEATH_SECONDS for started, booted in workers):
        return Backoff()
    return backoff


def crash_looping(backoff: Backoff) -> bool:
    return backoff.failures >= MAX_EARLY_DEATHS


class Death(Enum):
    """What a worker's death means for the master."""

    EXPECTED = "asked to stop, or the master is stopping"
    ABORTS_RELOAD = "a worker of the reloading generation died before booting"
    CANNOT_BOOT = "the worker exited with EXIT_WORKER_BOOT_ERROR"
    FAILURE = "unexpected: counts towards the back-off if it was early"


def judge_death(worker: WorkerView, *, stopping: bool, reloading: bool, generation: int,
                boot_error: bool) -> Death:
    """How the master takes the death of ``worker`` (as it was just before it was reaped)."""
    if worker.retiring or stopping:
        return Death.EXPECTED
    if reloading and worker.generation == generation and not worker.booted:
        return Death.ABORTS_RELOAD
    if boot_error:
        return Death.CANNOT_BOOT
    return Death.FAILURE


# --- stopping, staleness, waiting ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    graceful: bool  # TERM: sessions finish; INT/QUIT: workers close them now
    deadline: float  # monotonic; then SIGKILL
    exit_code: int


def next_stop(previous: Stop | None, graceful: bool, now: float, graceful_timeout: float,
              exit_code: int) -> Stop | None:
    """The stop to begin, or None when ``previous`` already stops at least this fast.  A fast
    stop during a graceful one keeps the first exit code and the earlier deadline."""
    if previous is not None and (graceful or not previous.graceful):
        return None
    deadline = now + (graceful_timeout + KILL_SLACK_SECONDS if graceful
                      else min(FAST_STOP_SECONDS, graceful_timeout))
    if previous is not None:
        return Stop(graceful, min(previous.deadline, deadline), previous.exit_code)
    return Stop(graceful, deadline, exit_code)


def kill_deadline(retiring_since: float, stop: Stop | None, graceful_timeout: float) -> float:
    """When a worker asked to stop at ``retiring_since`` gets SIGKILL: at the stop's deadline
    while the master stops, else once it has had ``graceful_timeout`` to drain."""
    if stop is not None:
        return stop.deadline
    return retiring_since + (graceful_timeout + KILL_SLACK_SECONDS)


def stale_reason(age_seconds: float, booted: bool, timeout: float) -> str | None:
    """Why a worker silent for ``age_seconds`` must be killed, or None while it is not stale."""
    if age_seconds <= timeout:
        return None
    what = "no heartbeat" if booted else "not booted"
    return f"{what} for {age_seconds:.1f} s (worker_timeout {timeout:g} s)"


def report_due(previous: tuple[int, int] | None, current: tuple[int, int], last: float,
               now: float) -> bool:
    """Call ``on_status`` with ``current`` ``(sessions, workers)`` now?  At once the first time
    and when the number of workers changed; otherwise once per STATUS_REPORT_SECONDS (session
    counts move all the time)."""
    if previous is None or previous[1] != current[1]:
        return True
    return now - last >= STATUS_REPORT_SECONDS


def wait_seconds(now: float, *, booting: bool, signals_pending: bool,
                 deadlines: Iterable[float]) -> float:
    """How long the loop may wait for a signal: until the next tick or deadline, not at all
    while signals are queued, and briefly while a worker boots."""
    if signals_pending:
        return 0.0
    tick = now + (BOOT_POLL_SECONDS if booting else TICK_SECONDS)
    return max(0.0, min(d for d in (tick, *deadlines) if d > now) - now)
