"""The master with real forked echo workers: serving, the pidfile, deaths, stops and signals."""

from __future__ import annotations

import os
import pwd
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pop3d.handoff import EXIT_WORKER_BOOT_ERROR
from pop3d.master import EXIT_CRASH_LOOP, EXIT_STARTUP_FAILED, MAX_EARLY_DEATHS

from .conftest import ECHO_WORKER, MasterHandle, free_port, statsd_lines, wait_until

pytestmark = pytest.mark.e2e


def read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def hold_session(master: MasterHandle, port: int | None = None) -> tuple[socket.socket, int]:
    """A connection whose echo worker keeps the session open; and that worker's pid."""
    sock = master.connect(port)
    pid = int(read_line(sock).split()[1])
    sock.sendall(b"HOLD\r\n")
    assert read_line(sock).startswith("+OK holding")
    return sock, pid


def test_serves_on_ipv4_and_ipv6_loopback(start_master):
    port = free_port()
    master = start_master({"server": {"listen": [f"127.0.0.1:{port}", f"[::1]:{port}"]}},
                          worker=ECHO_WORKER)
    workers = master.worker_pids()
    assert len(workers) == 2
    assert master.greet(port, "127.0.0.1") in workers
    assert master.greet(port, "::1") in workers
    title = Path(f"/proc/{master.pid}/cmdline").read_bytes().decode()
    assert title.startswith(f"pop3d: master [{master.config_path}]")
    assert master.pidfile.read_text() == f"{master.pid}\n"


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


def test_the_open_files_limit_is_raised_for_master_and_workers(start_master):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the master inherits it
    try:
        master = start_master(worker=ECHO_WORKER)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for pid in [master.pid, *master.worker_pids()]:
        assert open_files_limit(pid) == (hard, hard)


def test_a_second_master_is_refused_while_the_first_lives(start_master):
    first = start_master(worker=ECHO_WORKER)
    second = start_master({"server": first.settings["server"]}, worker=ECHO_WORKER, wait=False)
    assert second.wait_exit() == EXIT_STARTUP_FAILED
    assert f"already running as pid {first.pid}" in second.log_text()
    assert first.pidfile.read_text() == f"{first.pid}\n"
    assert first.greet() in first.worker_pids()


def test_a_stale_pidfile_is_taken_over(start_master, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = tmp_path / "stale" / "pop3d.pid"
    pidfile.parent.mkdir()
    pidfile.write_text(f"{gone.pid}\n")
    master = start_master({"server": {"pidfile": str(pidfile)}}, worker=ECHO_WORKER)
    assert pidfile.read_text() == f"{master.pid}\n"
    master.send_signal(signal.SIGTERM)
    assert master.wait_exit() == 0
    assert not pidfile.exists()


def test_a_worker_killed_with_sigkill_is_replaced_and_its_death_logged(start_master):
    master = start_master(worker=ECHO_WORKER)
    before = master.worker_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    def replaced() -> set[int] | None:
        pids = master.worker_pids()
        return pids if len(pids) == 2 and victim not in pids else None

    after = wait_until(replaced, 2.0, "a replacement worker")
    assert time.monotonic() - killed_at < 2.0
    assert master.greet() in after
    log = master.log_text()
    assert f"worker {victim} " in log
    assert "was killed by signal SIGKILL (not sent by the master: out of memory?" in log


def test_a_stuck_worker_is_killed_after_worker_timeout(start_master):
    master = start_master(worker=ECHO_WORKER)
    stuck = min(master.worker_pids())
    os.kill(stuck, signal.SIGUSR2)  # the echo worker hangs without beating
    wait_until(lambda: stuck not in master.worker_pids() and len(master.worker_pids()) == 2,
               3 + 3.0, "the stuck worker to be replaced")
    log = master.log_text()
    assert "no heartbeat for" in log
    assert "(worker_timeout 3 s); killing it with SIGKILL" in log
    assert f"worker {stuck} " in log
    assert "was killed by signal SIGKILL (sent by the master: no heartbeat" in log


def test_a_worker_boot_error_stops_the_master_without_fork_looping(start_master):
    master = start_master({"server": {"name": "echo-boot-error"}}, worker=ECHO_WORKER,
                          wait=False)
    assert master.wait_exit(10) == EXIT_WORKER_BOOT_ERROR
    log = master.log_text()
    assert "could not boot; stopping instead of fork-looping" in log
    assert "exited with code 3 (EXIT_WORKER_BOOT_ERROR)" in log
    assert log.count("spawned worker") <= 2
    assert not master.pidfile.exists()


def test_workers_dying_right_after_start_stop_the_master(start_master):
    master = start_master({"server": {"name": "echo-crash"}}, worker=ECHO_WORKER, wait=False)
    assert master.wait_exit(20) == EXIT_CRASH_LOOP
    log = master.log_text()
    assert "workers keep dying right after start" in log
    assert log.count("spawned worker") < MAX_EARLY_DEATHS + 2
    assert "next spawn in" in log  # backed off between attempts


def test_term_lets_open_sessions_finish_then_exits_zero(start_master):
    master = start_master(worker=ECHO_WORKER)
    sock, pid = hold_session(master)
    master.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", master.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, 2.0, "the listening socket to close")
    assert master.process.poll() is None  # still waiting for the held session
    sock.sendall(b"QUIT\r\n")
    assert read_line(sock) == f"+OK bye {pid}\r\n"
    sock.close()
    assert master.wait_exit(5) == 0
    assert "SIGTERM: graceful stop" in master.log_text()
    assert not master.pidfile.exists()


def test_term_kills_a_worker_still_running_after_graceful_timeout(start_master):
    master = start_master({"server": {"worker_timeout": 30}}, worker=ECHO_WORKER)
    stuck = min(master.worker_pids())
    os.kill(stuck, signal.SIGUSR2)
    started = time.monotonic()
    master.send_signal(signal.SIGTERM)
    assert master.wait_exit(10) == 0
    assert 2.0 <= time.monotonic() - started < 6.0  # graceful_timeout 2, plus the slack
    assert (f"worker {stuck} (age 1, generation 1) was killed by signal SIGKILL (sent by the "
            "master: did not stop within server.graceful_timeout)") in master.log_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_close_sessions_now(start_master, signum):
    master = start_master({"server": {"graceful_timeout": 30}}, worker=ECHO_WORKER)
    sock, pid = hold_session(master)
    started = time.monotonic()
    master.send_signal(signum)
    assert read_line(sock) == f"-ERR shutting down {pid}\r\n"
    assert master.wait_exit(5) == 0
    assert time.monotonic() - started < 3.0
    sock.close()


def test_ttin_and_ttou_add_and_retire_one_worker(start_master):
    master = start_master(worker=ECHO_WORKER)
    master.send_signal(signal.SIGTTIN)
    status = master.wait_ready(3)
    assert status["workers_wanted"] == 3
    oldest = min(status["workers"], key=lambda w: w["age"])["pid"]
    master.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(master.workers(serving=False)) == 2, 5.0, "one worker fewer")
    assert oldest not in master.worker_pids()
    assert "SIGTTOU: 2 workers wanted" in master.log_text()


def test_usr1_reopens_the_log_file(start_master):
    master = start_master(worker=ECHO_WORKER)
    rotated = master.log_path.with_suffix(".log.1")
    master.log_path.rename(rotated)
    master.send_signal(signal.SIGUSR1)
    wait_until(lambda: master.log_path.exists() and
               master.log_path.read_text().count("reopened its log") == 2, 3.0,
               "every process to write to the new log file")
    assert "SIGUSR1: reopened log files" in master.log_path.read_text()
    assert "reopened" not in rotated.read_text()
    assert "ready: 2 workers serving" in rotated.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_privileges_are_dropped_after_binding(start_master, world_readable_dir):
    nobody = pwd.getpwnam("nobody")
    master = start_master({"server": {"user": "nobody", "group": ""}}, worker=ECHO_WORKER,
                          directory=world_readable_dir)
    for pid in [master.pid, *master.worker_pids()]:
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:3]
        assert uids == [str(nobody.pw_uid)] * 3, (pid, uids)
    assert master.pidfile.parent.stat().st_uid == nobody.pw_uid  # created for the master
    assert master.pidfile.stat().st_uid == nobody.pw_uid
    assert master.greet() in master.worker_pids()
    master.send_signal(signal.SIGTERM)
    assert master.wait_exit() == 0
    assert not master.pidfile.exists()


def wait_for_gauge(sock: socket.socket, line: str, what: str) -> None:
    seen: list[str] = []

    def arrived() -> bool:
        seen.extend(statsd_lines(sock))
        return line in seen

    wait_until(arrived, 5.0, what)


def test_the_master_sends_absolute_session_and_worker_gauges(start_master, statsd_listener):
    port = statsd_listener.getsockname()[1]
    master = start_master({"statsd": {"enabled": True, "host": "127.0.0.1", "port": port}},
                          worker=ECHO_WORKER)
    wait_for_gauge(statsd_listener, "pop3.workers:2|g", "the workers gauge")
    sock, holder = hold_session(master)
    wait_for_gauge(statsd_listener, "pop3.sessions.active:1|g", "one session")
    os.kill(holder, signal.SIGKILL)  # it never says its session ended: the master counts
    wait_for_gauge(statsd_listener, "pop3.sessions.active:0|g", "no session after the kill")
    sock.close()
    master.send_signal(signal.SIGTERM)
    assert master.wait_exit() == 0
    final = statsd_lines(statsd_listener)
    assert final[-2:] == ["pop3.sessions.active:0|g", "pop3.workers:0|g"], final
