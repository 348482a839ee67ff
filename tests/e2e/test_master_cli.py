"""`pop3d start --daemon`, `stop`, `status` against a real master."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pop3d.master.pidfile import process_alive, read_pid

from .conftest import ECHO_WORKER, MasterHandle, wait_until
from .test_master_lifecycle import hold_session, read_line

pytestmark = pytest.mark.e2e


def test_status_describes_the_running_master(start_master):
    master = start_master(worker=ECHO_WORKER)
    held, _ = hold_session(master)
    wait_until(lambda: master.status()["sessions"] == 1, 5.0, "the session to be counted")
    result = master.cli("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"pop3d is running: master pid {master.pid}, up ")
    assert f"config {master.config_path}, generation 1; last reload: none" in lines[1]
    assert lines[2] == "workers: 2 serving of 2 wanted; sessions: 1"
    for pid in master.worker_pids():
        assert any(line.startswith(f"  pid {pid} ") for line in lines[3:])
    held.close()


def test_stop_waits_for_the_master_to_exit_then_status_says_not_running(start_master):
    master = start_master(worker=ECHO_WORKER)
    workers = master.worker_pids()
    result = master.cli("stop")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pop3d stopped (pid {master.pid})\n"
    assert not master.pidfile.exists()
    assert master.wait_exit(1) == 0
    assert not any(process_alive(pid) for pid in workers)
    status = master.cli("status")
    assert status.returncode == 3
    assert status.stdout == f"pop3d is not running (no pidfile {master.pidfile})\n"
    again = master.cli("stop")
    assert again.returncode == 0
    assert "not running" in again.stderr


def test_stop_now_closes_sessions_at_once(start_master):
    master = start_master({"server": {"graceful_timeout": 30}}, worker=ECHO_WORKER)
    held, pid = hold_session(master)
    result = master.cli("stop", "--now")
    assert result.returncode == 0, result.stderr
    assert read_line(held) == f"-ERR shutting down {pid}\r\n"
    assert "SIGINT/SIGQUIT: fast stop" in master.log_text()
    held.close()


def test_status_of_a_master_that_died_leaving_its_pidfile(start_master):
    master = start_master(worker=ECHO_WORKER)
    os.killpg(master.pid, signal.SIGKILL)
    master.wait_exit()
    result = master.cli("status")
    assert result.returncode == 1
    assert f"stale pidfile {master.pidfile}: pid {master.pid} is gone" in result.stdout
    assert master.cli("stop").returncode == 0


def test_stop_and_status_still_work_when_the_config_no_longer_validates(start_master):
    master = start_master(worker=ECHO_WORKER)
    master.write_config({"server": {"workers": -1}, "tls": {"min_version": "SSLv3"}})
    status = master.cli("status")
    assert status.returncode == 0
    assert "has 2 problem(s)" in status.stderr
    assert master.cli("stop").returncode == 0
    assert master.wait_exit(1) == 0


def test_daemon_returns_once_the_workers_serve(start_master, tmp_path):
    template = start_master(worker=ECHO_WORKER, wait=False)
    template.stop()  # only its configuration and environment are reused
    config = template.config_path
    command = [sys.executable, "-m", "pop3d", "start", "--daemon", "-c", str(config),
               "--test-worker-factory", ECHO_WORKER]
    result = subprocess.run(command, env=template.env, capture_output=True, text=True,
                            timeout=30, check=False)
    daemon = read_pid(str(template.pidfile))
    try:
        assert result.returncode == 0, result.stderr
        assert daemon is not None
        assert result.stdout == f"pop3d started (pid {daemon})\n"
        assert os.getsid(daemon) != os.getsid(0)  # a new session, detached from ours
        assert os.getsid(daemon) != daemon  # but not its leader: it cannot get a terminal
        handle = MasterHandle(template.process, template.directory, config, template.settings,
                              template.env, template.stderr_path)
        assert len(handle.worker_pids()) == 2  # at once: they serve before `start` returns
        with socket.create_connection(("127.0.0.1", template.port), timeout=5) as sock:
            assert read_line(sock).startswith("+OK ")
        second = subprocess.run(command, env=template.env, capture_output=True, text=True,
                                timeout=30, check=False)
        assert second.returncode == 1
        assert f"already running as pid {daemon}" in second.stderr
        stopped = template.cli("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not process_alive(daemon)
    finally:
        if daemon is not None and process_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_start_reports_an_address_it_cannot_bind(start_master, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        master = start_master({"server": {"listen": [taken]}}, worker=ECHO_WORKER, wait=False)
        assert master.wait_exit() == 1
    assert f"pop3d: cannot listen on {taken}: Address already in use" in master.log_text()
    assert not master.pidfile.exists()


def daemon(master: MasterHandle, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pop3d", "start", "--daemon", "-c",
               str(master.config_path), "--test-worker-factory", ECHO_WORKER]
    return subprocess.run(command, env=master.env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_daemon_waits_for_workers_that_boot_slowly(start_master):
    template = start_master({"server": {"name": "echo-slow-boot"}}, worker=ECHO_WORKER,
                            wait=False)
    template.stop()
    started = time.monotonic()
    result = daemon(template)
    try:
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started >= 1.0  # the echo worker's first beat comes after 1 s
        status = template.status()
        assert status is not None
        assert status["state"] == "running"
        assert [w["booted"] for w in status["workers"]] == [True, True]
    finally:
        assert template.cli("stop").returncode == 0


def test_daemon_reports_why_the_master_stopped_before_serving(start_master):
    template = start_master({"server": {"name": "echo-boot-error"}}, worker=ECHO_WORKER,
                            wait=False)
    template.stop()
    result = daemon(template)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("pop3d: worker ")
    assert result.stderr.splitlines()[-1].endswith(
        f"could not boot; stopping instead of fork-looping (see the log: {template.log_path})")
    assert result.stdout == ""
    wait_until(lambda: not template.pidfile.exists(), 5.0, "the daemon to exit")


def test_stop_reload_and_status_never_signal_a_pid_that_is_no_pop3d_master(start_master):
    """The pidfile lives in a directory the service user owns: whoever holds that account can
    write any pid into it.  Nothing is signalled unless the pid is a pop3d master."""
    master = start_master(worker=ECHO_WORKER)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        master.pidfile.write_text(f"{bystander.pid}\n")
        stale = (f"not running (stale pidfile {master.pidfile}: pid {bystander.pid} is not a "
                 "pop3d master; not signalling it)")
        stopped = master.cli("stop")
        assert (stopped.returncode, stopped.stderr) == (0, f"pop3d: {stale}\n")
        assert master.cli("reload").returncode == 7
        status = master.cli("status")
        assert (status.returncode, status.stdout) == (1, f"pop3d is {stale}\n")
        assert bystander.poll() is None  # never signalled
        assert master.process.poll() is None
        master.pidfile.write_text(f"{master.pid}\n")
        assert master.cli("stop").returncode == 0  # the real master is stopped as usual
        assert master.wait_exit(5) == 0
    finally:
        bystander.kill()
        bystander.wait()
