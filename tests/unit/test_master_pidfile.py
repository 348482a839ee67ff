"""Pidfile and status file: parsing, refusal, takeover, removal, atomic status."""

from __future__ import annotations

import os
import subprocess

import pytest

from pop3d.master.pidfile import (
    STATUS_MIN_INTERVAL,
    Pidfile,
    PidfileError,
    is_master,
    looks_like_master,
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


def test_a_live_master_is_refused(tmp_path, fake_master):
    path = tmp_path / "pop3d.pid"
    path.write_text(f"{fake_master}\n")
    with pytest.raises(PidfileError, match=f"already running as pid {fake_master}"):
        Pidfile(str(path)).create()
    assert path.read_text() == f"{fake_master}\n"
    assert os.listdir(tmp_path) == ["pop3d.pid"]


def test_a_live_process_that_is_no_master_is_a_stale_pidfile(tmp_path):
    path = tmp_path / "pop3d.pid"
    path.write_text(f"{os.getppid()}\n")  # alive (pytest's parent), but no pop3d master
    Pidfile(str(path)).create()
    assert read_pid(str(path)) == os.getpid()


@pytest.mark.parametrize(("cmdline", "master"), [
    (b"pop3d: master [/etc/pop3d.toml]\0\0\0", True),
    (b"/usr/bin/python3\0/usr/bin/pop3d\0start\0-c\0/etc/pop3d.toml\0", True),
    (b"/usr/bin/python3\0-m\0pop3d\0start\0--daemon\0", True),
    (b"pop3d: worker 3 [12 sessions]\0", False),
    (b"/usr/bin/python3\0/usr/bin/pop3d\0stop\0", False),
    (b"/bin/sleep\0start\0", False),
    (b"/usr/sbin/sshd\0-D\0", False),
    (b"", False),
])
def test_what_looks_like_a_master(cmdline, master):
    assert looks_like_master(cmdline) is master


def test_is_master_reads_the_process_title(fake_master):
    assert is_master(fake_master)
    assert not is_master(os.getpid())


def test_the_pidfile_is_given_away_through_its_descriptor_not_a_path(tmp_path, monkeypatch):
    """The service user owns the directory and may swap the pidfile for a symlink at any
    moment: only the file root created itself is ever chowned."""
    path, victim = tmp_path / "pop3d.pid", tmp_path / "victim"
    victim.write_text("root's\n")
    path.symlink_to(victim)  # what a hostile service user left behind
    calls = []
    monkeypatch.setattr(os, "chown", lambda *args, **kwargs: calls.append(("chown", args)))
    monkeypatch.setattr(os, "fchown", lambda fd, uid, gid: calls.append(
        ("fchown", (os.readlink(f"/proc/self/fd/{fd}"), uid, gid))))
    Pidfile(str(path)).create(owner=(4242, 4343))
    assert calls == [("fchown", (str(tmp_path / f"pop3d.pid.{os.getpid()}.tmp"), 4242, 4343))]
    assert victim.read_text() == "root's\n"
    assert not path.is_symlink()
    assert read_pid(str(path)) == os.getpid()


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
