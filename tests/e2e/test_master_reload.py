"""HUP: new generations, drained old workers, failed reloads, and the systemd notifications."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from pop3d.cli.sysexits import EX_CONFIG

from .conftest import ECHO_WORKER, free_port, wait_until
from .test_master_lifecycle import hold_session, read_line, wait_for_gauge

pytestmark = pytest.mark.e2e


class ConnectLoop(threading.Thread):
    """Connects over and over, counting greetings and every failure (refusals above all)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.greeted = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    line = read_line(sock)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if line.startswith("+OK "):
                self.greeted += 1
            else:
                self.failures.append(repr(line))

    def __enter__(self) -> ConnectLoop:
        self.start()
        wait_until(lambda: self.greeted > 0 or self.failures, 5.0, "the first connection")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.join(10)


def test_reload_starts_a_new_generation_and_drains_the_old_one(start_master):
    master = start_master(worker=ECHO_WORKER)
    old_workers = master.worker_pids()
    held, held_by = hold_session(master)
    added_port = free_port()
    listen = [*master.settings["server"]["listen"], f"127.0.0.1:{added_port}"]
    master.write_config({"server": {"workers": 3, "listen": listen}})
    with ConnectLoop(master.port) as clients:
        result = master.cli("reload")
        greeted_during_reload = clients.greeted
        time.sleep(0.2)  # keep connecting after the old generation has been told to stop
    assert result.returncode == 0, result.stderr
    assert "reloaded: generation 2, 3 workers serving" in result.stdout
    assert clients.failures == []
    assert greeted_during_reload > 0
    status = master.status()
    assert status["generation"] == 2
    assert status["reload"]["result"] == "ok"
    new_workers = master.worker_pids()
    assert len(new_workers) == 3
    assert not new_workers & old_workers
    assert master.greet(added_port) in new_workers
    assert held_by in {w["pid"] for w in master.workers(serving=False) if w["retiring"]}
    held.sendall(b"QUIT\r\n")
    assert read_line(held) == f"+OK bye {held_by}\r\n"
    held.close()
    wait_until(lambda: {w["pid"] for w in master.workers(serving=False)} == new_workers, 5.0,
               "the old generation to exit")
    assert f"worker {held_by} (age" in master.log_text()


def test_reload_stops_listening_on_removed_addresses(start_master):
    kept, removed = free_port(), free_port()
    master = start_master({"server": {"listen": [f"127.0.0.1:{kept}", f"127.0.0.1:{removed}"]}},
                          worker=ECHO_WORKER)
    old_workers = master.worker_pids()
    master.write_config({"server": {"listen": [f"127.0.0.1:{kept}"]}})
    result = master.cli("reload")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: not {w["pid"] for w in master.workers(serving=False)} & old_workers,
               5.0, "the old generation to exit")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", removed), timeout=2)
    assert master.greet(kept) in master.worker_pids()


def test_reload_with_an_invalid_config_keeps_the_old_one(start_master):
    master = start_master(worker=ECHO_WORKER)
    workers = master.worker_pids()
    master.write_config({"server": {"workers": "many"}})
    result = master.cli("reload")
    assert result.returncode == EX_CONFIG
    assert "server.workers: expected an integer, got a string" in result.stderr
    assert master.status()["reload"]["serial"] == 0  # validated first, not signalled
    master.send_signal(signal.SIGHUP)
    wait_until(lambda: master.status()["reload"]["result"] == "failed", 5.0,
               "the master to reject the reload")
    status = master.status()
    assert "server.workers: expected an integer" in status["reload"]["error"]
    assert status["generation"] == 1
    assert "reload: " in master.log_text()
    assert "server.workers: expected an integer" in master.log_text()
    assert master.worker_pids() == workers
    assert master.greet() in workers


def test_reload_that_cannot_bind_a_new_address_reports_why(start_master):
    master = start_master(worker=ECHO_WORKER)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        master.write_config({"server": {"listen": [*master.settings["server"]["listen"], taken]}})
        result = master.cli("reload")
    assert result.returncode == 1
    assert f"reload failed: cannot listen on {taken}: Address already in use" in result.stderr
    assert master.status()["generation"] == 1
    assert master.greet() in master.worker_pids()


def test_reload_whose_workers_cannot_boot_is_abandoned(start_master):
    master = start_master(worker=ECHO_WORKER)
    workers = master.worker_pids()
    master.write_config({"server": {"name": "echo-boot-error"}})
    result = master.cli("reload")
    assert result.returncode == 1
    assert "generation 2 abandoned, generation 1 keeps serving" in result.stderr
    assert "could not boot" in result.stderr or "before booting" in result.stderr
    assert master.process.poll() is None
    assert master.worker_pids() == workers
    assert master.status()["generation"] == 1
    assert master.greet() in workers


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, standing in for systemd."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0pop3d-test-{uuid.uuid4().hex}")
    sock.settimeout(10)
    yield sock
    sock.close()


def receive_until(sock: socket.socket, key: str) -> dict[str, str]:
    """Notifications until one that sets ``key``; that one, parsed."""
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        if key in fields:
            return fields


def test_systemd_is_told_ready_reloading_and_stopping(start_master, notify_socket):
    address = "@" + notify_socket.getsockname()[1:].decode()
    master = start_master(worker=ECHO_WORKER, env={"NOTIFY_SOCKET": address})
    ready = receive_until(notify_socket, "READY")
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(master.pid)
    assert ready["STATUS"] == "2 workers, 0 sessions"
    master.send_signal(signal.SIGHUP)
    reloading = receive_until(notify_socket, "RELOADING")
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_usec - int(reloading["MONOTONIC_USEC"]) < 10_000_000
    assert receive_until(notify_socket, "READY")["READY"] == "1"
    master.send_signal(signal.SIGTERM)
    assert receive_until(notify_socket, "STOPPING")["STOPPING"] == "1"
    assert master.wait_exit() == 0


def test_reload_again_while_one_is_in_progress(start_master):
    master = start_master({"server": {"name": "echo-slow-boot"}}, worker=ECHO_WORKER)
    master.send_signal(signal.SIGHUP)
    wait_until(lambda: master.status()["state"] == "reloading", 5.0, "the first reload")
    os.kill(master.pid, signal.SIGHUP)

    def second_reload_done() -> bool:
        reload = master.status()["reload"]
        return reload["serial"] == 2 and reload["result"] == "ok"

    wait_until(second_reload_done, 15.0, "the second reload")
    assert master.status()["generation"] == 3
    assert "reloading again when it ends" in master.log_text()


def test_a_reload_moves_the_masters_gauges_to_the_new_statsd(start_master, statsd_listener):
    old_port = statsd_listener.getsockname()[1]
    master = start_master({"statsd": {"enabled": True, "host": "127.0.0.1", "port": old_port}},
                          worker=ECHO_WORKER)
    wait_for_gauge(statsd_listener, "pop3.workers:2|g", "gauges at the first statsd")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as moved:
        moved.bind(("127.0.0.1", 0))
        moved.settimeout(0.2)
        master.write_config({"statsd": {"port": moved.getsockname()[1], "prefix": "moved"}})
        result = master.cli("reload")
        assert result.returncode == 0, result.stderr
        wait_for_gauge(moved, "moved.workers:2|g", "gauges at the new statsd")


def test_a_weak_or_exposed_secret_file_is_refused_at_start_and_at_reload(start_master, tmp_path):
    exposed = tmp_path / "secret"
    exposed.write_text("0123456789abcdef" * 4 + "\n")
    exposed.chmod(0o644)
    refused = start_master({"auth": {"secret_file": str(exposed)}}, worker=ECHO_WORKER,
                           wait=False)
    assert refused.wait_exit() == EX_CONFIG
    problem = f"auth.secret_file: {exposed} is readable or writable by every user (mode 0644)"
    assert problem in refused.stderr_path.read_text()

    master = start_master(worker=ECHO_WORKER)
    workers = master.worker_pids()
    master.write_config({"auth": {"secret_file": str(exposed)}})
    master.send_signal(signal.SIGHUP)
    wait_until(lambda: master.status()["reload"]["result"] == "failed", 5.0,
               "the master to reject the reload")
    assert problem in master.status()["reload"]["error"]
    exposed.chmod(0o640)
    exposed.write_text("too short\n")
    result = master.cli("reload")
    assert result.returncode == EX_CONFIG
    assert f"{exposed} holds 9 octets, fewer than 32" in result.stderr
    assert master.worker_pids() == workers
