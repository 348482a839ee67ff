"""The master's decisions, as pure functions: no fork, no signals, no sockets."""

from __future__ import annotations

import signal

import pytest

from pop3d.config import Config, ServerConfig
from pop3d.errors import EX_SOFTWARE, EXIT_WORKER_BOOT_ERROR
from pop3d.heartbeat import Heartbeat
from pop3d.master import (
    BACKOFF_MAX_SECONDS,
    EARLY_DEATH_SECONDS,
    MAX_EARLY_DEATHS,
    Backoff,
    Plan,
    WorkerView,
    adjust_target,
    crash_looping,
    describe_exit,
    generation_serving,
    plan_workers,
    record_death,
    record_health,
    respawn_delay,
    restart_only_changes,
    run_worker,
    worker_count,
)


def view(pid: int, generation: int = 1, *, booted: bool = True, retiring: bool = False,
         age: int | None = None) -> WorkerView:
    return WorkerView(pid, pid if age is None else age, generation, booted, retiring)


def exit_status(code: int) -> int:
    return code << 8


def test_worker_count_zero_means_one_per_cpu():
    assert worker_count(4, 16) == 4
    assert worker_count(0, 16) == 16
    assert worker_count(0, None) == 1


def test_ttou_never_goes_below_one_worker():
    assert adjust_target(2, +1) == 3
    assert adjust_target(2, -1) == 1
    assert adjust_target(1, -1) == 1


def test_plan_spawns_the_missing_workers():
    assert plan_workers([], 1, 3) == Plan(spawn=3)
    assert plan_workers([view(10)], 1, 3) == Plan(spawn=2)
    assert plan_workers([view(10), view(11, retiring=True)], 1, 2) == Plan(spawn=1)


def test_plan_retires_the_oldest_surplus_workers():
    workers = [view(12, age=3), view(10, age=1), view(11, age=2)]
    assert plan_workers(workers, 1, 2) == Plan(retire=(10,))
    assert plan_workers(workers, 1, 1) == Plan(retire=(10, 11))


def test_plan_keeps_the_old_generation_until_the_new_one_has_booted():
    old = [view(10, 1), view(11, 1)]
    assert plan_workers(old, 2, 2) == Plan(spawn=2)
    booting = [*old, view(20, 2), view(21, 2, booted=False)]
    assert plan_workers(booting, 2, 2) == Plan()
    serving = [*old, view(20, 2), view(21, 2)]
    assert plan_workers(serving, 2, 2) == Plan(retire=(10, 11))


def test_plan_ignores_workers_already_retiring():
    workers = [view(10, 1, retiring=True), view(20, 2), view(21, 2)]
    assert plan_workers(workers, 2, 2) == Plan()


def test_plan_retires_workers_of_an_abandoned_newer_generation():
    workers = [view(10, 1), view(30, 3, booted=False)]
    assert plan_workers(workers, 1, 1) == Plan(retire=(30,))


def test_generation_serving_needs_every_wanted_worker_booted():
    assert not generation_serving([], 1, 1)
    assert not generation_serving([view(10), view(11, booted=False)], 1, 2)
    assert generation_serving([view(10), view(11)], 1, 2)
    assert not generation_serving([view(10), view(11, retiring=True)], 1, 2)
    assert not generation_serving([view(10, 1), view(11, 1)], 2, 2)


def test_respawn_delay_grows_after_the_first_early_death_and_is_capped():
    delays = [respawn_delay(n) for n in range(1, 9)]
    assert delays[:5] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert max(delays) == BACKOFF_MAX_SECONDS
    assert delays == sorted(delays)


def test_only_early_deaths_count_as_failures():
    backoff = record_death(Backoff(), now=100.0, lifetime=EARLY_DEATH_SECONDS + 1, booted=True)
    assert backoff == Backoff()
    backoff = record_death(backoff, now=100.0, lifetime=0.5, booted=True)
    assert (backoff.failures, backoff.not_before) == (1, 100.0)
    backoff = record_death(backoff, now=101.0, lifetime=0.5, booted=True)
    assert (backoff.failures, backoff.not_before) == (2, 101.5)


def test_a_death_before_booting_counts_however_long_the_boot_took():
    backoff = record_death(Backoff(), now=100.0, lifetime=60.0, booted=False)
    assert backoff.failures == 1


def test_crash_loop_after_max_early_deaths_in_a_row():
    backoff = Backoff()
    for n in range(MAX_EARLY_DEATHS):
        assert not crash_looping(backoff)
        backoff = record_death(backoff, now=float(n), lifetime=0.1, booted=False)
    assert crash_looping(backoff)


def test_failures_are_forgotten_once_a_later_worker_lives_past_the_early_window():
    failed = record_death(Backoff(), now=100.0, lifetime=0.1, booted=True)
    later = 100.0 + EARLY_DEATH_SECONDS + 1
    assert record_health(failed, later, [(101.0, True)]) == Backoff()
    assert record_health(failed, later, [(101.0, False)]) == failed  # never booted
    assert record_health(failed, later, [(99.0, True)]) == failed  # older than the failure
    assert record_health(failed, 103.0, [(101.0, True)]) == failed  # too young yet


def test_describe_exit_codes():
    assert describe_exit(exit_status(0)) == "exited with code 0 (clean exit)"
    assert describe_exit(exit_status(3)) == "exited with code 3 (EXIT_WORKER_BOOT_ERROR)"
    assert describe_exit(exit_status(70)) == "exited with code 70 (crashed)"
    assert describe_exit(exit_status(9)) == "exited with code 9"


def test_describe_exit_signals_and_who_sent_them():
    assert describe_exit(signal.SIGSEGV | 0x80) == \
        "was killed by signal SIGSEGV (core dumped)"
    assert describe_exit(signal.SIGTERM) == "was killed by signal SIGTERM"
    oom = describe_exit(signal.SIGKILL)
    assert oom.startswith("was killed by signal SIGKILL (not sent by the master: out of memory?")
    assert describe_exit(signal.SIGKILL, "no heartbeat for 31.0 s") == \
        "was killed by signal SIGKILL (sent by the master: no heartbeat for 31.0 s)"


def test_restart_only_changes_are_named():
    old = Config(server=ServerConfig(pidfile="/run/a.pid", user="pop3d"))
    assert restart_only_changes(old, old) == []
    new = Config(server=ServerConfig(pidfile="/run/b.pid", user="pop3d", workers=9))
    assert restart_only_changes(old, new) == [
        "server.pidfile changed: it takes effect at the next restart"]


class _Worker:
    def __init__(self, outcome: object, heartbeat: Heartbeat | None = None) -> None:
        self.outcome = outcome
        self.heartbeat = heartbeat

    def run(self) -> int:
        if self.heartbeat is not None:
            self.heartbeat.beat(0)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert isinstance(self.outcome, int)
        return self.outcome


@pytest.fixture
def heartbeat():
    beat = Heartbeat()
    yield beat
    beat.close()


def test_run_worker_returns_the_workers_exit_code(heartbeat):
    assert run_worker(_Worker(7), heartbeat) == 7
    assert run_worker(_Worker(SystemExit(5)), heartbeat) == 5
    assert run_worker(_Worker(SystemExit(None)), heartbeat) == 0
    assert run_worker(_Worker(SystemExit("bye")), heartbeat) == 1


def test_an_exception_before_the_first_beat_is_a_boot_error(heartbeat, caplog):
    assert run_worker(_Worker(ImportError("no module named x")), heartbeat) == \
        EXIT_WORKER_BOOT_ERROR
    assert "no module named x" in caplog.text


def test_an_exception_after_booting_is_a_crash(heartbeat):
    assert run_worker(_Worker(RuntimeError("bug"), heartbeat), heartbeat) == EX_SOFTWARE
