"""The master's decisions (ARCHITECTURE §1), as tables and properties over pure functions."""

from __future__ import annotations

import itertools
import signal
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.config import Config, ServerConfig
from pop3d.master.exits import describe_exit, is_boot_error, signal_name
from pop3d.master.plan import (
    BACKOFF_MAX_SECONDS,
    BOOT_POLL_SECONDS,
    EARLY_DEATH_SECONDS,
    FAST_STOP_SECONDS,
    KILL_SLACK_SECONDS,
    MAX_EARLY_DEATHS,
    STATUS_REPORT_SECONDS,
    TICK_SECONDS,
    Backoff,
    Death,
    Plan,
    Stop,
    WorkerView,
    adjust_target,
    booting,
    crash_looping,
    generation_serving,
    judge_death,
    kill_deadline,
    next_stop,
    plan_workers,
    record_death,
    record_health,
    report_due,
    respawn_delay,
    restart_only_changes,
    stale_reason,
    wait_seconds,
    worker_count,
)


def view(pid: int, generation: int = 1, *, booted: bool = True, retiring: bool = False,
         age: int | None = None) -> WorkerView:
    return WorkerView(pid, pid if age is None else age, generation, booted, retiring)


def exited(code: int) -> int:
    """A wait status for ``exit(code)``."""
    return code << 8


def killed(signum: int, *, core: bool = False) -> int:
    """A wait status for death by ``signum``."""
    return signum | (0x80 if core else 0)


def test_the_constants_are_the_documented_ones():
    assert (TICK_SECONDS, BOOT_POLL_SECONDS, EARLY_DEATH_SECONDS) == (1.0, 0.1, 5.0)
    assert (MAX_EARLY_DEATHS, BACKOFF_MAX_SECONDS) == (5, 10.0)
    assert (FAST_STOP_SECONDS, KILL_SLACK_SECONDS) == (2.0, 1.0)


# --- how many workers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "cpus", "count"),
    [
        (4, 16, 4),
        (1, 16, 1),
        (0, 16, 16),
        (0, 1, 1),
        (0, None, 1),  # os.cpu_count() could not tell
        (0, 0, 1),
        (3, None, 3),
    ],
)
def test_worker_count(configured, cpus, count):
    assert worker_count(configured, cpus) == count


@pytest.mark.parametrize(
    ("target", "delta", "result"),
    [(2, +1, 3), (1, +1, 2), (3, -1, 2), (2, -1, 1), (1, -1, 1), (1, -3, 1)],
)
def test_ttin_ttou_adjust_the_target_but_never_below_one(target, delta, result):
    assert adjust_target(target, delta) == result


# --- which workers to spawn and retire -----------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "generation", "target", "plan"),
    [
        pytest.param([], 1, 3, Plan(spawn=3), id="start-up"),
        pytest.param([view(10)], 1, 1, Plan(), id="steady"),
        pytest.param([view(10, retiring=True)], 1, 1, Plan(spawn=1), id="retiring-not-counted"),
        pytest.param([view(10, booted=False)], 1, 1, Plan(), id="booting-counts"),
        pytest.param([view(10), view(11)], 1, 3, Plan(spawn=1), id="ttin"),
        pytest.param([view(10, age=7), view(11, age=2), view(12, age=5)], 1, 1,
                     Plan(retire=(11, 12)), id="ttou-retires-oldest-by-age-not-pid"),
        pytest.param([view(10, age=1), view(11, age=2, booted=False)], 1, 1,
                     Plan(retire=(10,)), id="ttou-retires-oldest-even-if-booted"),
        pytest.param([view(10, 1), view(11, 1)], 2, 2, Plan(spawn=2), id="reload-begins"),
        pytest.param([view(10, 1), view(11, 1), view(20, 2)], 2, 2, Plan(spawn=1),
                     id="reload-new-generation-short"),
        pytest.param([view(10, 1), view(11, 1), view(20, 2), view(21, 2, booted=False)], 2, 2,
                     Plan(), id="reload-new-generation-booting"),
        pytest.param([view(10, 1), view(11, 1), view(20, 2), view(21, 2)], 2, 2,
                     Plan(retire=(10, 11)), id="reload-new-generation-serving"),
        pytest.param([view(10, 1), view(11, 1, retiring=True), view(20, 2), view(21, 2)], 2, 2,
                     Plan(retire=(10,)), id="reload-old-retiring-not-retired-again"),
        pytest.param([view(10, 1), view(20, 2), view(30, 3), view(31, 3)], 3, 2,
                     Plan(retire=(10, 20)), id="two-older-generations"),
        pytest.param([view(10, 1), view(20, 2), view(21, 2), view(22, 2)], 2, 2,
                     Plan(retire=(20, 10)), id="surplus-then-old-generation"),
        pytest.param([view(10, 1), view(20, 2), view(21, 2), view(22, 2, booted=False)], 2, 2,
                     Plan(retire=(20,)), id="surplus-but-kept-one-booting"),
        pytest.param([view(10, 1), view(30, 3, booted=False)], 1, 1, Plan(retire=(30,)),
                     id="abandoned-newer-generation"),
        pytest.param([view(30, 3, booted=False)], 1, 1, Plan(spawn=1),
                     id="abandoned-kept-until-replaced"),
    ],
)
def test_plan_workers(workers, generation, target, plan):
    assert plan_workers(workers, generation, target) == plan


def test_plan_accepts_any_iterable_once():
    workers = [view(10, 1), view(20, 2), view(21, 2)]
    assert plan_workers(iter(workers), 2, 2) == Plan(retire=(10,))


@st.composite
def fleets(draw: st.DrawFn) -> list[WorkerView]:
    """Workers as the master may hold them: unique pids, unique ages (a spawn counter)."""
    n = draw(st.integers(0, 10))
    ages = draw(st.lists(st.integers(1, 100), min_size=n, max_size=n, unique=True))
    return [
        WorkerView(pid=1000 + i, age=age, generation=draw(st.integers(1, 4)),
                   booted=draw(st.booleans()), retiring=draw(st.booleans()))
        for i, age in enumerate(ages)
    ]


@settings(max_examples=300)
@given(workers=fleets(), generation=st.integers(1, 4), target=st.integers(1, 6))
def test_plan_properties(workers, generation, target):
    plan = plan_workers(workers, generation, target)
    active = {w.pid: w for w in workers if not w.retiring}
    current = [w for w in active.values() if w.generation == generation]
    retired = set(plan.retire)
    kept = [w for w in current if w.pid not in retired]

    assert len(plan.retire) == len(retired), "a worker is retired twice"
    assert retired <= set(active), "only running, not yet retiring workers are retired"
    assert plan.spawn >= 0
    assert plan.spawn + len(kept) == target
    if len(current) <= target:
        assert not retired & {w.pid for w in current}
    else:
        assert plan.spawn == 0
        assert max(active[pid].age for pid in retired if active[pid].generation == generation) \
            < min(w.age for w in kept)
    if any(active[pid].generation != generation for pid in retired):
        assert len(kept) == target
        assert all(w.booted for w in kept)
        assert {w.pid for w in active.values() if w.generation != generation} <= retired


@settings(max_examples=300)
@given(workers=fleets(), target=st.integers(1, 6))
def test_a_reload_never_retires_the_new_generation_while_an_older_one_runs(workers, target):
    newest = max((w.generation for w in workers), default=1)
    current = [w for w in workers if not w.retiring and w.generation == newest]
    if len(current) > target:
        current = current[:target]
        workers = [w for w in workers if w.generation != newest or w in current]
    plan = plan_workers(workers, newest, target)
    assert not set(plan.retire) & {w.pid for w in current}


@settings(max_examples=300)
@given(workers=fleets(), generation=st.integers(1, 4), target=st.integers(1, 6))
def test_following_the_plan_until_workers_boot_reaches_the_target(workers, generation, target):
    next_pid = 5000
    for _ in range(3):
        plan = plan_workers(workers, generation, target)
        workers = [replace(w, retiring=w.retiring or w.pid in plan.retire, booted=True)
                   for w in workers]
        workers += [view(next_pid + i, generation, age=next_pid + i) for i in range(plan.spawn)]
        next_pid += plan.spawn
    assert plan_workers(workers, generation, target) == Plan()
    running = [w for w in workers if not w.retiring]
    assert len(running) == target
    assert {w.generation for w in running} == {generation}
    assert generation_serving(workers, generation, target)


@pytest.mark.parametrize(
    ("workers", "generation", "target", "serving"),
    [
        ([], 1, 1, False),
        ([view(10)], 1, 1, True),
        ([view(10, booted=False)], 1, 1, False),
        ([view(10), view(11)], 1, 1, True),  # surplus still serves
        ([view(10), view(11, booted=False)], 1, 1, False),  # every one must have booted
        ([view(10), view(11, retiring=True)], 1, 2, False),
        ([view(10), view(11, retiring=True, booted=False)], 1, 1, True),
        ([view(10, 1), view(11, 1)], 2, 2, False),
        ([view(10, 1), view(20, 2), view(21, 2)], 2, 2, True),
        ([view(10, 1, booted=False), view(20, 2)], 2, 1, True),
    ],
)
def test_generation_serving(workers, generation, target, serving):
    assert generation_serving(workers, generation, target) is serving


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ([], False),
        ([view(10)], False),
        ([view(10), view(11, booted=False)], True),
        ([view(10, booted=False, retiring=True)], False),  # a retiring worker is not awaited
        ([view(10, 1, booted=False), view(20, 2)], True),
    ],
)
def test_booting(workers, expected):
    assert booting(workers) is expected


def server(**settings: object) -> Config:
    return Config(server=ServerConfig(**settings))


@pytest.mark.parametrize(
    ("old", "new", "changes"),
    [
        (server(), server(), []),
        (server(workers=2, graceful_timeout=5.0), server(workers=8, graceful_timeout=60.0), []),
        (server(pidfile="/run/a.pid"), server(pidfile="/run/b.pid"), ["pidfile"]),
        (server(user="pop3d"), server(user="mail"), ["user"]),
        (server(group="pop3d"), server(group="mail"), ["group"]),
        (server(pidfile="/a", user="a", group="a"), server(pidfile="/b", user="b", group="b"),
         ["pidfile", "user", "group"]),
    ],
)
def test_restart_only_changes(old, new, changes):
    assert restart_only_changes(old, new) == [
        f"server.{name} changed: it takes effect at the next restart" for name in changes]


# --- deaths and back-off -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.0), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (6, 8.0), (7, 10.0),
     (8, 10.0), (60, 10.0), (1025, 10.0), (1026, 10.0), (5000, 10.0)],
)
def test_respawn_delay(failures, delay):
    assert respawn_delay(failures) == delay


@pytest.mark.parametrize(
    ("lifetime", "booted", "counts"),
    [
        (0.0, True, True),
        (EARLY_DEATH_SECONDS - 0.001, True, True),
        (EARLY_DEATH_SECONDS, True, False),  # "sooner than" the window: the boundary is late
        (3600.0, True, False),
        (EARLY_DEATH_SECONDS, False, True),  # never booted: early however long it lived
        (3600.0, False, True),
    ],
)
def test_which_deaths_count(lifetime, booted, counts):
    before = Backoff(failures=2, last_failure=90.0, not_before=90.5)
    after = record_death(before, now=100.0, lifetime=lifetime, booted=booted)
    assert after == (Backoff(3, 100.0, 101.0) if counts else before)


def test_a_late_death_does_not_forget_earlier_failures():
    failing = Backoff(failures=3, last_failure=50.0, not_before=51.0)
    assert record_death(failing, now=200.0, lifetime=60.0, booted=True) == failing


@settings(max_examples=200)
@given(gaps=st.lists(st.floats(0.0, 30.0), min_size=1, max_size=40),
       lifetimes=st.lists(st.floats(0.0, EARLY_DEATH_SECONDS, exclude_max=True), min_size=40,
                          max_size=40))
def test_backoff_grows_to_its_cap_while_early_deaths_continue(gaps, lifetimes):
    backoff, now, previous_delay = Backoff(), 0.0, 0.0
    for n, (gap, lifetime) in enumerate(zip(gaps, lifetimes, strict=False), start=1):
        now += gap
        backoff = record_death(backoff, now, lifetime, booted=True)
        delay = respawn_delay(n)
        assert backoff == Backoff(n, now, now + delay)
        assert previous_delay <= delay <= BACKOFF_MAX_SECONDS
        assert crash_looping(backoff) is (n >= MAX_EARLY_DEATHS)
        previous_delay = delay


@pytest.mark.parametrize(
    ("failures", "looping"),
    [(0, False), (MAX_EARLY_DEATHS - 1, False), (MAX_EARLY_DEATHS, True),
     (MAX_EARLY_DEATHS + 3, True)],
)
def test_crash_looping(failures, looping):
    assert crash_looping(Backoff(failures=failures)) is looping


FAILED_AT_100 = Backoff(failures=2, last_failure=100.0, not_before=100.5)


@pytest.mark.parametrize(
    ("backoff", "now", "workers", "healthy"),
    [
        (FAILED_AT_100, 110.0, [(101.0, True)], True),
        (FAILED_AT_100, 110.0, [(99.0, True), (101.0, True)], True),
        (FAILED_AT_100, 105.0, [(100.0 + 1e-9, True)], False),  # not yet past the window
        (FAILED_AT_100, 106.0, [(101.0, True)], True),  # exactly the window: past it
        (FAILED_AT_100, 110.0, [(101.0, False)], False),  # alive but never booted
        (FAILED_AT_100, 110.0, [(100.0, True)], False),  # spawned at the failure, not after
        (FAILED_AT_100, 110.0, [(50.0, True)], False),  # a survivor from before the failures
        (FAILED_AT_100, 110.0, [], False),
        (Backoff(), 110.0, [(101.0, True)], False),  # nothing to forget
    ],
)
def test_record_health(backoff, now, workers, healthy):
    assert record_health(backoff, now, iter(workers)) == (Backoff() if healthy else backoff)


def test_failures_restart_from_zero_after_health():
    backoff = Backoff()
    for now in (1.0, 2.0, 3.0):
        backoff = record_death(backoff, now, lifetime=0.5, booted=True)
    backoff = record_health(backoff, 20.0, [(4.0, True)])
    backoff = record_death(backoff, 21.0, lifetime=0.5, booted=True)
    assert backoff == Backoff(1, 21.0, 21.0)


@pytest.mark.parametrize(
    ("worker", "stopping", "reloading", "generation", "boot_error", "death"),
    [
        pytest.param(view(1, 2, retiring=True), False, False, 2, False, Death.EXPECTED,
                     id="retired"),
        pytest.param(view(1, 2, retiring=True, booted=False), False, True, 2, True,
                     Death.EXPECTED, id="retired-wins-over-everything"),
        pytest.param(view(1, 2), True, False, 2, False, Death.EXPECTED, id="master-stopping"),
        pytest.param(view(1, 2, booted=False), True, True, 2, True, Death.EXPECTED,
                     id="stopping-wins-over-everything"),
        pytest.param(view(1, 2, booted=False), False, True, 2, False, Death.ABORTS_RELOAD,
                     id="new-generation-dies-booting"),
        pytest.param(view(1, 2, booted=False), False, True, 2, True, Death.ABORTS_RELOAD,
                     id="new-generation-cannot-boot"),
        pytest.param(view(1, 2), False, True, 2, False, Death.FAILURE,
                     id="new-generation-dies-after-booting"),
        pytest.param(view(1, 1), False, True, 2, False, Death.FAILURE,
                     id="old-generation-dies-during-reload"),
        pytest.param(view(1, 1, booted=False), False, True, 2, False, Death.FAILURE,
                     id="old-generation-unbooted-during-reload"),
        pytest.param(view(1, 2, booted=False), False, False, 2, True, Death.CANNOT_BOOT,
                     id="cannot-boot"),
        pytest.param(view(1, 2, booted=False), False, False, 2, False, Death.FAILURE,
                     id="dies-booting-without-saying-why"),
        pytest.param(view(1, 2), False, False, 2, False, Death.FAILURE, id="crash"),
    ],
)
def test_judge_death(worker, stopping, reloading, generation, boot_error, death):
    assert judge_death(worker, stopping=stopping, reloading=reloading, generation=generation,
                       boot_error=boot_error) is death


# --- stopping ------------------------------------------------------------------------------

GRACEFUL = Stop(graceful=True, deadline=131.0, exit_code=4)
FAST = Stop(graceful=False, deadline=102.0, exit_code=0)


@pytest.mark.parametrize(
    ("previous", "graceful", "now", "timeout", "code", "stop"),
    [
        pytest.param(None, True, 100.0, 30.0, 0, Stop(True, 131.0, 0), id="term"),
        pytest.param(None, True, 100.0, 0.0, 0, Stop(True, 101.0, 0), id="term-no-grace"),
        pytest.param(None, True, 100.0, 30.0, 4, Stop(True, 131.0, 4), id="halt"),
        pytest.param(None, False, 100.0, 30.0, 0, Stop(False, 102.0, 0), id="int"),
        pytest.param(None, False, 100.0, 0.5, 0, Stop(False, 100.5, 0), id="int-short-grace"),
        pytest.param(None, False, 100.0, 0.0, 0, Stop(False, 100.0, 0), id="int-no-grace"),
        pytest.param(GRACEFUL, False, 110.0, 30.0, 0, Stop(False, 112.0, 4),
                     id="int-during-term-keeps-code"),
        pytest.param(GRACEFUL, False, 130.5, 30.0, 0, Stop(False, 131.0, 4),
                     id="int-during-term-keeps-earlier-deadline"),
        pytest.param(GRACEFUL, True, 110.0, 30.0, 0, None, id="term-during-term"),
        pytest.param(FAST, True, 101.0, 30.0, 4, None, id="term-during-int"),
        pytest.param(FAST, False, 101.0, 30.0, 0, None, id="int-during-int"),
    ],
)
def test_next_stop(previous, graceful, now, timeout, code, stop):
    assert next_stop(previous, graceful, now, timeout, code) == stop


@given(first=st.booleans(), second=st.booleans(), start=st.floats(0.0, 1e6),
       delay=st.floats(0.0, 1e3), timeout=st.floats(0.0, 600.0), code=st.integers(0, 255))
def test_a_second_stop_never_slows_the_first(first, second, start, delay, timeout, code):
    previous = next_stop(None, first, start, timeout, 4)
    assert previous is not None
    stop = next_stop(previous, second, start + delay, timeout, code)
    if first and not second:
        assert stop is not None
        assert (stop.graceful, stop.exit_code) == (False, 4)
        assert stop.deadline <= previous.deadline
        assert stop.deadline <= start + delay + FAST_STOP_SECONDS
    else:
        assert stop is None


@pytest.mark.parametrize(
    ("retiring_since", "stop", "timeout", "deadline"),
    [
        (100.0, None, 30.0, 131.0),
        (100.0, None, 0.0, 101.0),
        (100.0, Stop(True, 131.0, 0), 30.0, 131.0),
        (100.0, Stop(False, 102.0, 0), 30.0, 102.0),
        (50.0, Stop(False, 102.0, 0), 30.0, 102.0),  # retired by a reload, then INT
        (90.0, Stop(True, 131.0, 0), 30.0, 131.0),  # retired by a reload, then TERM
    ],
)
def test_kill_deadline(retiring_since, stop, timeout, deadline):
    assert kill_deadline(retiring_since, stop, timeout) == deadline


# --- staleness and waiting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "booted", "timeout", "reason"),
    [
        (0.0, True, 30.0, None),
        (29.9, True, 30.0, None),
        (30.0, True, 30.0, None),  # at the timeout: not yet
        (31.0, True, 30.0, "no heartbeat for 31.0 s (worker_timeout 30 s)"),
        (45.0, False, 30.0, "not booted for 45.0 s (worker_timeout 30 s)"),
        (3.0, True, 2.5, "no heartbeat for 3.0 s (worker_timeout 2.5 s)"),
        (2.0, False, 2.5, None),
    ],
)
def test_stale_reason(age, booted, timeout, reason):
    assert stale_reason(age, booted, timeout) == reason


@pytest.mark.parametrize(
    ("booting_", "pending", "deadlines", "seconds"),
    [
        pytest.param(False, False, [], TICK_SECONDS, id="idle"),
        pytest.param(True, False, [], BOOT_POLL_SECONDS, id="booting"),
        pytest.param(False, True, [], 0.0, id="signals-queued"),
        pytest.param(True, True, [100.05], 0.0, id="signals-queued-win"),
        pytest.param(False, False, [100.25], 0.25, id="deadline-first"),
        pytest.param(True, False, [100.5], BOOT_POLL_SECONDS, id="boot-poll-first"),
        pytest.param(False, False, [150.0], TICK_SECONDS, id="deadline-later"),
        pytest.param(False, False, [float("-inf")], TICK_SECONDS, id="no-backoff"),
        pytest.param(False, False, [99.0], TICK_SECONDS, id="deadline-passed"),
        pytest.param(False, False, [100.0], TICK_SECONDS, id="deadline-now-acted-on"),
        pytest.param(False, False, [100.7, 99.0, 100.3], 0.3, id="nearest-future-deadline"),
    ],
)
def test_wait_seconds(booting_, pending, deadlines, seconds):
    waited = wait_seconds(100.0, booting=booting_, signals_pending=pending,
                          deadlines=iter(deadlines))
    assert waited == pytest.approx(seconds)


@given(now=st.floats(0.0, 1e6), booting_=st.booleans(), pending=st.booleans(),
       deadlines=st.lists(st.floats(-1e6, 2e6), max_size=4))
def test_wait_seconds_is_bounded_by_the_tick(now, booting_, pending, deadlines):
    waited = wait_seconds(now, booting=booting_, signals_pending=pending, deadlines=deadlines)
    tick = BOOT_POLL_SECONDS if booting_ else TICK_SECONDS
    assert 0.0 <= waited <= tick + 1e-6
    if pending:
        assert waited == 0.0


# --- reporting the counts (on_status) ------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "last", "now", "due"),
    [
        pytest.param(None, (0, 2), 0.0, 0.0, True, id="first"),
        pytest.param((0, 2), (0, 2), 10.0, 10.5, False, id="unchanged-within-the-second"),
        pytest.param((0, 2), (0, 2), 10.0, 11.0, True, id="unchanged-after-a-second"),
        pytest.param((3, 2), (9, 2), 10.0, 10.5, False, id="sessions-wait-for-the-second"),
        pytest.param((3, 2), (9, 2), 10.0, 11.2, True, id="sessions-after-a-second"),
        pytest.param((3, 2), (3, 1), 10.0, 10.1, True, id="workers-changed-at-once"),
    ],
)
def test_report_due(previous, current, last, now, due):
    assert STATUS_REPORT_SECONDS == 1.0
    assert report_due(previous, current, last, now) is due


@given(turns=st.lists(st.tuples(st.floats(0.0, 0.5), st.integers(0, 5)), max_size=50))
def test_reports_of_unchanged_workers_come_at_most_once_a_second(turns):
    now, last, previous, reports = 0.0, float("-inf"), None, []
    for step, sessions in turns:
        now += step
        current = (sessions, 2)
        if report_due(previous, current, last, now):
            reports.append(now)
            previous, last = current, now
    assert all(b - a >= STATUS_REPORT_SECONDS for a, b in itertools.pairwise(reports))


# --- how a death is logged -----------------------------------------------------------------

OOM_HINT = "(not sent by the master: out of memory? see the kernel log for the OOM killer)"


@pytest.mark.parametrize(
    ("status", "reason", "text"),
    [
        (exited(0), None, "exited with code 0 (clean exit)"),
        (exited(1), None, "exited with code 1"),
        (exited(3), None, "exited with code 3 (EXIT_WORKER_BOOT_ERROR)"),
        (exited(70), None, "exited with code 70 (crashed)"),
        (exited(78), None, "exited with code 78"),
        (exited(255), None, "exited with code 255"),
        (exited(0), "no heartbeat", "exited with code 0 (clean exit)"),
        (killed(signal.SIGTERM), None, "was killed by signal SIGTERM"),
        (killed(signal.SIGINT), None, "was killed by signal SIGINT"),
        (killed(signal.SIGSEGV, core=True), None, "was killed by signal SIGSEGV (core dumped)"),
        (killed(signal.SIGABRT, core=True), None, "was killed by signal SIGABRT (core dumped)"),
        (killed(signal.SIGKILL), None, f"was killed by signal SIGKILL {OOM_HINT}"),
        (killed(signal.SIGKILL), "no heartbeat for 31.0 s (worker_timeout 30 s)",
         "was killed by signal SIGKILL (sent by the master: no heartbeat for 31.0 s "
         "(worker_timeout 30 s))"),
        (killed(signal.SIGKILL), "did not stop within server.graceful_timeout",
         "was killed by signal SIGKILL (sent by the master: did not stop within "
         "server.graceful_timeout)"),
        (killed(signal.SIGTERM), "retired", "was killed by signal SIGTERM (sent by the master: "
         "retired)"),
        (killed(signal.SIGSEGV, core=True), "x",
         "was killed by signal SIGSEGV (core dumped) (sent by the master: x)"),
        (killed(signal.SIGRTMIN), None, "was killed by signal SIGRTMIN"),
        (killed(signal.SIGRTMAX), None, "was killed by signal SIGRTMAX"),
        (killed(signal.SIGRTMIN + 3), None, "was killed by signal SIGRTMIN+3"),
    ],
)
def test_describe_exit(status, reason, text):
    assert describe_exit(status, reason) == text


@pytest.mark.parametrize(
    ("signum", "name"),
    [
        (signal.SIGTERM, "SIGTERM"),
        (signal.SIGKILL, "SIGKILL"),
        (signal.SIGRTMIN, "SIGRTMIN"),
        (signal.SIGRTMIN + 1, "SIGRTMIN+1"),
        (signal.SIGRTMIN + 3, "SIGRTMIN+3"),
    ],
)
def test_signal_name(signum, name):
    assert signal_name(signum) == name


@pytest.mark.parametrize(
    ("status", "boot_error"),
    [
        (exited(3), True),
        (exited(0), False),
        (exited(70), False),
        (killed(3), False),  # SIGQUIT is signal 3, not exit code 3
        (killed(signal.SIGKILL), False),
    ],
)
def test_is_boot_error(status, boot_error):
    assert is_boot_error(status) is boot_error
