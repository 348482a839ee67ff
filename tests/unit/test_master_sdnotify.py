"""sd_notify: addresses, message format, and real datagrams on a local socket."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from pop3d.master.sdnotify import Notifier, format_message, monotonic_usec, socket_address


def test_socket_address():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@pop3d") == "\0pop3d"
    assert socket_address("@") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None


def test_format_message():
    assert format_message({"READY": 1, "STATUS": "2 workers"}) == b"READY=1\nSTATUS=2 workers\n"
    assert format_message({"STATUS": "a\nRELOADING=1"}) == b"STATUS=a RELOADING=1\n"
    assert format_message({}) == b""


def test_monotonic_usec_is_clock_monotonic_in_microseconds():
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= value <= after


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")


def test_an_unusable_notify_socket_is_logged_and_ignored(caplog):
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1"})
    assert not notifier.enabled
    assert "not a socket path or @name" in caplog.text


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        sock.bind(str(tmp_path / "notify"))
        value = str(tmp_path / "notify")
    else:
        name = f"pop3d-unit-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        value = "@" + name
    sock.settimeout(5)
    yield sock, value
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_notifications_reach_the_socket(listener):
    sock, value = listener
    notifier = Notifier({"NOTIFY_SOCKET": value})
    try:
        assert notifier.ready("2 workers, 0 sessions")
        assert received(sock) == {"READY": "1", "STATUS": "2 workers, 0 sessions",
                                  "MAINPID": str(os.getpid())}
        assert notifier.reloading("reloading")
        reloading = received(sock)
        assert reloading["RELOADING"] == "1"
        assert abs(monotonic_usec() - int(reloading["MONOTONIC_USEC"])) < 5_000_000
        assert notifier.stopping("stopping")
        assert received(sock) == {"STOPPING": "1", "STATUS": "stopping"}
        assert notifier.status("1 workers, 3 sessions")
        assert received(sock) == {"STATUS": "1 workers, 3 sessions"}
    finally:
        notifier.close()


def test_a_vanished_socket_is_reported_once(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert not notifier.ready("x")
        assert not notifier.stopping("x")
        assert caplog.text.count("cannot notify systemd") == 1
    finally:
        notifier.close()
