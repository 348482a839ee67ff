"""What runs in the forked child: a worker's outcome becomes the exit code the master reads."""

from __future__ import annotations

import pytest

from pop3d.handoff import EXIT_WORKER_BOOT_ERROR, EXIT_WORKER_CRASHED
from pop3d.heartbeat import Heartbeat
from pop3d.master import run_worker


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
    assert run_worker(_Worker(RuntimeError("bug"), heartbeat), heartbeat) == EXIT_WORKER_CRASHED
