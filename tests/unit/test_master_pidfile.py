"""Pidfile and status file: parsing, refusal, takeover, removal, atomic status."""

from __future__ import annotations

import os
import subprocess

import pytest

from pop3d.master.pidfile import (
    STATUS_MIN_INTERVAL,
    Pidfile,
    PidfileError,
    parse_pid,
    process_alive,
    read_pid,
    read_status,
    status_due,
    status_path,
    write_status,
)


@pytest.fixture
def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(("text", "pid"), [
    ("123\n", 123), ("  42  ", 42), ("0\n", None), ("-5", None), ("", None),
    ("12ab", None), ("1 2", None), ("\u0663", None),
])
def test_parse_pid(text, pid):
    assert parse_pid(text) == pid


def test_create_writes_the_pid_and_remove_deletes_it(tmp_path):
    path = tmp_path / "pop3d.pid"
    pidfile = Pidfile(str(path))
    pidfile.create()
    assert path.read_text() == f"{os.getpid()}\n"
    assert pidfile.owned()
    assert pidfile.remove()
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_a_live_owner_is_refused(tmp_path):
    path = tmp_path / "pop3d.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(PidfileError, match=f"already running as pid {os.getppid()}"):
        Pidfile(str(path)).create()
    assert path.read_text() == f"{os.getppid()}\n"
    assert os.listdir(tmp_path) == ["pop3d.pid"]


@pytest.mark.parametrize("content", ["{dead}\n", "garbage", ""])
def test_a_stale_pidfile_is_taken_over(tmp_path, dead_pid, content):
    path = tmp_path / "pop3d.pid"
    path.write_text(content.format(dead=dead_pid))
    Pidfile(str(path)).create()
    assert read_pid(str(path)) == os.getpid()


def test_remove_leaves_a_pidfile_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "pop3d.pid"
    pidfile = Pidfile(str(path))
    pidfile.create()
    path.write_text("999999\n")
    assert not pidfile.remove()
    assert path.read_text() == "999999\n"


def test_an_unwritable_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PidfileError, match=r"cannot write pidfile .*/missing/pop3d\.pid: No such"):
        Pidfile(str(tmp_path / "missing" / "pop3d.pid")).create()


def test_process_alive(dead_pid):
    assert process_alive(os.getpid())
    assert not process_alive(dead_pid)


def test_a_zombie_is_not_alive():
    process = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        assert not process_alive(process.pid)
    finally:
        process.wait()



def test_status_round_trip_and_garbage(tmp_path):
    path = status_path(str(tmp_path / "pop3d.pid"))
    assert path.endswith("pop3d.pid.status")
    assert read_status(path) is None
    write_status(path, {"pid": 1, "workers": []})
    assert read_status(path) == {"pid": 1, "workers": []}
    assert sorted(os.listdir(tmp_path)) == ["pop3d.pid.status"]
    (tmp_path / "pop3d.pid.status").write_text("[1, 2")
    assert read_status(path) is None
    (tmp_path / "pop3d.pid.status").write_text("[1, 2]")
    assert read_status(path) is None


def status(sessions: int = 0, *, booted: bool = True, state: str = "running") -> dict:
    return {"state": state, "sessions": sessions,
            "workers": [{"pid": 10, "booted": booted, "sessions": sessions}]}


def test_status_is_written_first_and_at_once_on_structural_changes():
    assert status_due(None, status(), 0.0, 0.0)
    assert status_due(status(), status(booted=False), 10.0, 10.1)
    assert status_due(status(), status(state="stopping"), 10.0, 10.1)


def test_session_counts_alone_are_written_at_most_once_a_second():
    assert not status_due(status(1), status(2), 10.0, 10.5)
    assert status_due(status(1), status(2), 10.0, 10.0 + STATUS_MIN_INTERVAL)
    assert not status_due(status(1), status(1), 10.0, 99.0)
