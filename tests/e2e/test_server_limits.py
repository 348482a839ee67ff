"""Abuse limits of the real worker: back-pressure against a client that pipelines without
reading, and the login and idle timeouts."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import struct
import time
from pathlib import Path

import pytest

from .conftest import MasterHandle, wait_until
from .server_fixtures import (
    Account,
    Client,
    MailStore,
    as_sent,
    message,
    rss_kib,
    sized_message,
    tls_port,
)

pytestmark = pytest.mark.e2e

PIPELINED = 1000
MEMORY_BOUND_KIB = 64 * 1024  # growth of the worker's RSS we tolerate while a client stalls
SERVED_WITHIN = 2.0  # seconds for a whole other session while the worker is under pressure
LOGIN_TIMEOUT, IDLE_TIMEOUT, HANDSHAKE_TIMEOUT = 1, 2, 1


@pytest.fixture(scope="module")
def master(start_module_server) -> MasterHandle:
    """One worker: the stalled client and the others share it."""
    return start_module_server({"server": {"workers": 1}})


@pytest.fixture(scope="module")
def idle_master(start_module_server) -> MasterHandle:
    return start_module_server({"limits": {"login_timeout": LOGIN_TIMEOUT,
                                           "idle_timeout": IDLE_TIMEOUT},
                                "tls": {"handshake_timeout": HANDSHAKE_TIMEOUT}})


def quick_session(port: int, account: Account) -> float:
    """Seconds for a whole login, STAT, QUIT."""
    started = time.monotonic()
    with Client.greeted(port) as client:
        client.login(account)
        assert client.command("STAT").startswith(b"+OK 1 ")
        assert client.command("QUIT").startswith(b"+OK")
    return time.monotonic() - started


def worker_sessions(master: MasterHandle, pid: int) -> int | None:
    for worker in master.workers(serving=False):
        if worker["pid"] == pid:
            return int(worker["sessions"])
    return None


def test_a_client_pipelining_without_reading_stalls_only_itself(master, mail_store: MailStore):
    stalled = mail_store.account([sized_message(1_000_000)])
    other = mail_store.account([message("other")])
    (worker,) = master.worker_pids()
    quick_session(master.port, other)
    with Client.greeted(master.port) as warm_up:  # the worker's first RETR of a big message
        warm_up.login(stalled)
        assert warm_up.command("RETR 1").startswith(b"+OK ")
        warm_up.multiline()
    baseline = rss_kib(worker)

    client = Client.greeted(master.port)
    client.login(stalled)
    client.send(b"RETR 1\r\n" * PIPELINED)
    peak = baseline
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert quick_session(master.port, other) < SERVED_WITHIN
        peak = max(peak, rss_kib(worker))
    assert peak - baseline < MEMORY_BOUND_KIB

    client.close()
    wait_until(lambda: worker_sessions(master, worker) == 0, 3.0, "the session to be freed")
    assert quick_session(master.port, other) < SERVED_WITHIN
    assert rss_kib(worker) - baseline < MEMORY_BOUND_KIB
    assert master.worker_pids() == {worker}


@pytest.mark.parametrize(("size", "count"), [(20_000, PIPELINED), (1_000_000, 5)],
                         ids=["many small", "a few over the high-water mark"])
def test_pipelined_retrs_all_arrive_complete_once_read(master, mail_store: MailStore, size,
                                                       count):
    raw = sized_message(size)
    account = mail_store.account([raw])
    sent = as_sent(raw)
    one_reply = (f"+OK {len(sent)} octets\r\n".encode() + re.sub(rb"(?m)^\.", b"..", sent)
                 + b".\r\n")
    with Client.greeted(master.port) as client:
        client.login(account)
        client.send(b"RETR 1\r\n" * count + b"QUIT\r\n")
        replies = client.read_exactly(len(one_reply) * count)
        assert replies.count(one_reply) == count
        assert client.line() == b"+OK pop3d.test POP3 server signing off (0 messages deleted)\r\n"
        assert client.closed_by_server()


def reset_at_once(port: int, tls: bool = False) -> None:
    """Connect and abort with a RST before the server has even greeted."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if tls:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello, then nothing
    sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit TLS"])
def test_connections_reset_before_the_greeting_leave_no_sessions_behind(master, mail_store,
                                                                        tls):
    (worker,) = master.worker_pids()
    port = tls_port(master) if tls else master.port
    wait_until(lambda: worker_sessions(master, worker) == 0, 3.0, "no sessions")
    for _ in range(20):
        reset_at_once(port, tls)
    wait_until(lambda: worker_sessions(master, worker) == 0, 3.0,
               "the reset connections to be forgotten")
    assert quick_session(master.port, mail_store.account([message("after resets")])) \
        < SERVED_WITHIN
    assert master.worker_pids() == {worker}
    assert "Traceback" not in master.log_text()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_running_out_of_file_descriptors_neither_spins_nor_drops_waiting_clients(master):
    (worker,) = master.worker_pids()
    limits = resource.prlimit(worker, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{worker}/fd"))
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (in_use + 2, limits[1]))
    clients = []
    try:
        clients = [Client.connect(master.port) for _ in range(5)]
        wait_until(lambda: "Too many open files" in master.log_text(), 3.0, "accept to fail")
        before = cpu_seconds(worker)
        time.sleep(1.0)  # the window in which CPU use is measured
        assert cpu_seconds(worker) - before < 0.3, "the worker spins on the failing accept"
    finally:
        resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)
    for client in clients:
        with client:
            assert client.line() == b"+OK pop3d.test POP3 server ready\r\n"
    assert master.log_text().count("Too many open files") <= 5


# --- timeouts ----------------------------------------------------------------------------------


def test_check_config_warns_about_the_short_idle_timeout_but_accepts_it(idle_master):
    result = idle_master.cli("check-config")
    assert result.returncode == 0
    assert result.stdout == "ok\n"
    assert f"limits.idle_timeout: {IDLE_TIMEOUT} s is below RFC 1939's 600 s minimum" \
        in result.stderr


def test_the_login_timeout_closes_an_idle_connection(idle_master):
    with Client.greeted(idle_master.port) as client:
        started = time.monotonic()
        assert client.closed_by_server()
        waited = time.monotonic() - started
    assert LOGIN_TIMEOUT <= waited < LOGIN_TIMEOUT + 2.5


def test_bytes_that_never_make_a_command_do_not_keep_a_login_alive(idle_master):
    with Client.greeted(idle_master.port) as client:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close between two drips
            for byte in b"CAPABILITIES-NEVER-ENDING":
                client.send(bytes([byte]))
                time.sleep(0.2)
        assert client.closed_by_server()
        waited = time.monotonic() - started
    assert LOGIN_TIMEOUT <= waited < LOGIN_TIMEOUT + 2.5


def test_the_idle_timeout_closes_a_session_without_update(idle_master, mail_store: MailStore):
    account = mail_store.account([message("marked"), message("kept")])
    with Client.greeted(idle_master.port) as client:
        client.login(account)
        assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
        for _ in range(5):  # 2.5 s of activity: longer than both timeouts, and never closed
            time.sleep(0.5)
            assert client.command("NOOP") == b"+OK\r\n"
        last = time.monotonic()
        assert client.closed_by_server()
        waited = time.monotonic() - last
    assert IDLE_TIMEOUT <= waited < IDLE_TIMEOUT + 2.5
    assert mail_store.message_count(account) == 2


@pytest.mark.parametrize("how", ["implicit", "stls"])
def test_a_silent_tls_handshake_times_out(idle_master, how):
    if how == "implicit":
        client = Client.connect(tls_port(idle_master))
    else:
        client = Client.greeted(idle_master.port)
        assert client.command("STLS") == b"+OK Begin TLS negotiation\r\n"
    with client:
        started = time.monotonic()
        assert client.closed_by_server()
        waited = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT <= waited < HANDSHAKE_TIMEOUT + 2.5


def test_a_full_worker_stops_accepting_and_resumes_below_its_limit(start_server):
    master = start_server({"server": {"workers": 1, "worker_connections": 2}})
    first, second = Client.greeted(master.port), Client.greeted(master.port)
    with first, second:
        waiting = Client.connect(master.port)  # queued by the kernel, not accepted
        with waiting:
            assert waiting.nothing_arrives(1.0), "a third connection was served"
            second.command("QUIT")
            waiting.sock.settimeout(3)
            assert waiting.line().endswith(b"POP3 server ready\r\n")
