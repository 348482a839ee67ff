"""One hostile client against a real server (real workers, PostgreSQL, memcached): unparsed
input stays bounded, one address cannot take every connection or TLS handshake, a login has an
absolute deadline, PROXY addresses are canonical and logs escaped, and the two kinds of trust
(PROXY, plaintext login) are separate.

Each test uses loopback or PROXY source addresses of its own: the counters live in the shared
memcached, and other tests (and earlier runs) connect from 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import time

import pytest

from .conftest import MasterHandle, spare_loopback, statsd_lines, wait_until
from .server_fixtures import Client, MailStore, message, rss_kib, socket_owner, tls_port

pytestmark = pytest.mark.e2e

MAX_CONNECTIONS, MAX_HANDSHAKES, LOGIN_DEADLINE = 3, 2, 3
REFUSED = b"-ERR [SYS/TEMP] Too many connections from your address, try later\r\n"
HANDSHAKES_REFUSED = b"-ERR [SYS/TEMP] Too many TLS handshakes from your address, try later\r\n"
TLS_REQUIRED = b"-ERR [AUTH] Plaintext login refused: TLS required\r\n"
GROWTH_BOUND_KIB = 4 * 1024  # "a few megabytes": what a worker may grow under the flood


def ipv6_prefix() -> str:
    """A /64 of the documentation range no other test uses, as ``2001:db8:x:y:``."""
    return f"2001:db8:{random.randint(1, 0xffff):x}:{random.randint(1, 0xffff):x}:"


@pytest.fixture(scope="module")
def guarded(start_module_server, module_statsd: socket.socket) -> MasterHandle:
    return start_module_server({
        "server": {"workers": 2, "plaintext_networks": ["127.0.0.0/8"]},
        "limits": {"max_connections_per_address": MAX_CONNECTIONS,
                   "login_deadline": LOGIN_DEADLINE, "idle_timeout": 30},
        "statsd": {"enabled": True, "host": "127.0.0.1", "port": module_statsd.getsockname()[1]},
    })


@pytest.fixture(scope="module")
def proxied(start_module_server) -> MasterHandle:
    """One worker behind a PROXY-speaking proxy at 127.0.0.1, which may send headers but whose
    own address may not log in without TLS."""
    return start_module_server({
        "server": {"workers": 1, "proxy_protocol": True, "proxy_networks": ["127.0.0.1/32"],
                   "plaintext_networks": ["192.0.2.0/24", "2001:db8::/32"]},
        "limits": {"max_connections_per_address": MAX_CONNECTIONS,
                   "max_tls_handshakes_per_address": MAX_HANDSHAKES},
        "tls": {"handshake_timeout": 20},
        "logging": {"level": "debug"},  # the reasons connections close
    })


# --- 1. bounded input ------------------------------------------------------------------------


def flood(client: Client, rounds: int, chunk: bytes, read: int) -> int:
    """Pipeline ``chunk`` as fast as the socket takes it, reading ``read`` octets a round;
    returns the octets the server accepted."""
    client.sock.setblocking(False)
    sent = 0
    for _ in range(rounds):
        with contextlib.suppress(BlockingIOError):
            sent += client.sock.send(chunk)
        with contextlib.suppress(BlockingIOError):
            client.sock.recv(read)
        time.sleep(0.002)
    return sent


def flooded_worker(master: MasterHandle, client: Client, chunk: bytes) -> tuple[int, int]:
    """Flood through ``client``: (octets the server accepted, growth of its worker's RSS)."""
    worker = socket_owner(client, master.worker_pids())
    baseline = peak = rss_kib(worker)
    sent = 0
    for _ in range(40):
        sent += flood(client, 20, chunk, 16384)
        peak = max(peak, rss_kib(worker))
    print(f"\nflood: client sent {sent / 1e6:.1f} MB, worker RSS {baseline} KiB -> peak "
          f"{peak} KiB (+{peak - baseline} KiB)")
    client.close()
    assert worker in master.worker_pids()
    return sent, peak - baseline


def test_a_pipelining_client_that_reads_little_cannot_grow_its_worker(
        guarded: MasterHandle, mail_store: MailStore) -> None:
    """The attack of issue 9, over a real socket: 64 KiB of CAPA at a time while reading 16 KB
    of the replies, through a small receive window, so the server's writes drain its output a
    little at a time (the worker grew by 6-8 MB before reading stopped at the unparsed bound)."""
    account = mail_store.account([message("flood")])
    # The worker's first login, before measuring it:
    with Client.greeted(guarded.port, source=spare_loopback()) as warm_up:
        warm_up.login(account)
        warm_up.command("QUIT")
    client = Client.greeted(guarded.port, source=spare_loopback(), receive_buffer=4096)
    client.login(account)
    sent, growth = flooded_worker(guarded, client, b"CAPA\r\n" * 10922)
    assert sent > 4 * 1024 * 1024  # the kernel's buffers took a few MB: the worker did not
    assert growth < GROWTH_BOUND_KIB


def test_sasl_exchanges_are_bounded_the_same_way(proxied: MasterHandle) -> None:
    """The same flood made of AUTH LOGIN exchanges, each cancelled at its second step: tiny
    replies, which grew the worker by 6-9 MB in queued reply objects before the channel joined
    short replies as they are queued."""
    client = Client.connect(proxied.port, receive_buffer=4096)
    client.send(proxy_v1(f"192.0.2.{random.randint(1, 250)}", "TCP4"))
    assert client.line().endswith(b"POP3 server ready\r\n")
    exchange = b"AUTH LOGIN\r\n" + base64.b64encode(b"u" * 200) + b"\r\n*\r\n"
    sent, growth = flooded_worker(proxied, client, exchange * 230)
    assert sent > 4 * 1024 * 1024
    assert growth < GROWTH_BOUND_KIB


# --- 2. per-address limits -------------------------------------------------------------------


def test_one_address_cannot_take_more_than_its_connections(guarded: MasterHandle,
                                                           module_statsd: socket.socket) -> None:
    source = spare_loopback()
    statsd_lines(module_statsd)  # what earlier tests sent
    held = [Client.greeted(guarded.port, source=source) for _ in range(MAX_CONNECTIONS)]
    with Client.connect(guarded.port, source=source) as refused:
        assert refused.line() == REFUSED
        assert refused.closed_by_server()
    assert "pop3.connections.refused:1|c" in statsd_lines(module_statsd)
    with Client.greeted(guarded.port, source=spare_loopback()):  # everyone else is served
        pass
    held.pop().close()

    def admitted() -> bool:
        with Client.connect(guarded.port, source=source) as again:
            return again.line().endswith(b"POP3 server ready\r\n")

    wait_until(admitted, 3.0, "the closed connection's place to be free again")
    for client in held:
        client.close()


def test_a_killed_worker_gives_its_connections_back(guarded: MasterHandle) -> None:
    source = spare_loopback()
    held = [Client.greeted(guarded.port, source=source) for _ in range(MAX_CONNECTIONS)]
    owners = [socket_owner(c, guarded.worker_pids()) for c in held]
    victim = owners[0]
    freed = owners.count(victim)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"released {freed} connection slots of worker {victim}"
               in guarded.log_text(), 5.0, "the master to free the killed worker's slots")
    wait_until(lambda: len(guarded.worker_pids()) == 2, 5.0, "the replacement worker")
    new = [Client.greeted(guarded.port, source=source) for _ in range(freed)]
    with Client.connect(guarded.port, source=source) as refused:  # the survivors still count
        assert refused.line() == REFUSED
    for client in held + new:
        client.close()


def proxy_v1(source: str, family: str = "TCP6") -> bytes:
    destination = "2001:db8::ffff" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {destination} 40000 110\r\n".encode()


def behind_proxy(master: MasterHandle, source: str, *, port: int | None = None) -> Client:
    client = Client.connect(port or master.port)
    client.send(proxy_v1(source, "TCP6" if ":" in source else "TCP4"))
    return client


def test_ipv6_clients_are_counted_by_their_prefix(proxied: MasterHandle) -> None:
    prefix = ipv6_prefix()
    held = [behind_proxy(proxied, f"{prefix}:{n}") for n in range(1, MAX_CONNECTIONS + 1)]
    for client in held:
        assert client.line().endswith(b"POP3 server ready\r\n")
    with behind_proxy(proxied, f"{prefix}abcd:1234:5678:9abc") as refused:  # same /64
        assert refused.line() == REFUSED
    with behind_proxy(proxied, f"{ipv6_prefix()}:1") as other:  # another /64
        assert other.line().endswith(b"POP3 server ready\r\n")
    for client in held:
        client.close()


def handshake(raw: socket.socket, context: ssl.SSLContext) -> bool:
    """Whether a TLS handshake on ``raw`` completes (False: the server closed instead)."""
    try:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.recv(100).endswith(b"POP3 server ready\r\n")
    except (ssl.SSLError, ConnectionResetError):
        return False


def test_tls_handshakes_in_progress_are_bounded_per_address(
        proxied: MasterHandle, tls_client_context: ssl.SSLContext) -> None:
    source = f"192.0.2.{random.randint(1, 250)}"
    stalled = [behind_proxy(proxied, source, port=tls_port(proxied)) for _ in range(2)]
    for client in stalled:  # a ClientHello begun and never finished holds its handshake
        client.send(b"\x16\x03\x01\x02\x00\x01")
    with behind_proxy(proxied, source, port=tls_port(proxied)) as refused:
        assert refused.closed_by_server()  # before any handshake: no reply it could read
    with behind_proxy(proxied, source) as plain:
        assert plain.line().endswith(b"POP3 server ready\r\n")
        assert plain.command("STLS") == HANDSHAKES_REFUSED
        assert plain.closed_by_server()
    with behind_proxy(proxied, f"192.0.2.{random.randint(1, 250)}", port=tls_port(proxied)) \
            as other:
        assert handshake(other.sock, tls_client_context)
    for client in stalled:
        client.close()

    def served() -> bool:
        return handshake(behind_proxy(proxied, source, port=tls_port(proxied)).sock,
                         tls_client_context)

    wait_until(served, 3.0, "the stalled handshakes' places to be free again")


def test_a_login_has_a_deadline_whatever_the_client_sends(guarded: MasterHandle) -> None:
    with Client.greeted(guarded.port, source=spare_loopback()) as client:
        started = time.monotonic()
        answered = 0
        with contextlib.suppress(OSError):
            while time.monotonic() - started < LOGIN_DEADLINE + 3:
                if not client.command("CAPA").startswith(b"+OK"):
                    break
                client.multiline()
                answered += 1
                time.sleep(0.3)
        waited = time.monotonic() - started
    assert answered >= LOGIN_DEADLINE / 0.5  # busy all along, never idle
    assert LOGIN_DEADLINE <= waited < LOGIN_DEADLINE + 3
    wait_until(lambda: "login deadline" in guarded.log_text(), 3.0, "the reason in the log")


# --- 6. canonical addresses and escaped logs --------------------------------------------------


@pytest.mark.parametrize("header", [
    b"PROXY TCP6 fe80::1%\x1b[31m\r 2001:db8::2 1 2\r\n",  # a zone id carrying escapes
    b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
    b"PROXY TCP6 2001:DB8::1 2001:db8::2 1 2\r\n",  # upper case: not how proxies spell it
    b"PROXY TCP4 192.0.2.010 127.0.0.1 1 2\r\n",
], ids=["escapes in a zone", "zone", "upper case", "leading zero"])
def test_a_proxy_header_with_a_non_canonical_address_is_refused(proxied: MasterHandle,
                                                                header: bytes) -> None:
    with Client.connect(proxied.port) as client:
        client.send(header)
        assert client.closed_by_server()
    wait_until(lambda: "bad PROXY header: v1 header has a malformed address" in
               proxied.log_text(), 3.0, "the refusal in the log")
    assert "\x1b" not in proxied.log_text()


def test_no_control_character_a_client_sends_reaches_the_log(proxied: MasterHandle) -> None:
    """The log (at debug level here) after names, credentials and headers full of CR, LF and
    terminal escapes: every line is printable text."""
    forged = "x\r\n2026-01-01 00:00:00,000 [1] INFO pop3d: forged\x1b[2J\u2028"
    token = base64.b64encode(f"\0{forged}\0wrong".encode()).decode()
    with behind_proxy(proxied, f"192.0.2.{random.randint(1, 250)}") as client:
        assert client.line().endswith(b"POP3 server ready\r\n")
        assert client.command(f"AUTH PLAIN {token}").startswith(b"-ERR [AUTH]")
        assert client.command("USER \x1b]0;owned\x07@example.com").startswith(b"+OK")
        assert client.command("PASS \x1b[31mred").startswith(b"-ERR [AUTH]")
    with Client.connect(proxied.port) as client:
        client.send(b"PROXY TCP6 fe80::1%\x1b[2J\x85 2001:db8::2 1 2\r\n")
        assert client.closed_by_server()
    wait_until(lambda: proxied.log_text().count("login failed") >= 2, 3.0, "the failed logins")
    for line in proxied.log_text().splitlines():
        assert line.isprintable(), line
    assert "INFO pop3d: forged" not in proxied.log_text()


# --- 8. who may send PROXY headers, who may log in without TLS --------------------------------


def test_the_proxy_may_send_headers_but_not_log_in_in_the_clear(proxied: MasterHandle,
                                                                mail_store: MailStore) -> None:
    account = mail_store.account([message("split trust")])
    with behind_proxy(proxied, "127.0.0.1") as client:  # the proxy's own address
        assert client.line().endswith(b"POP3 server ready\r\n")
        assert client.command(f"USER {account.address}") == TLS_REQUIRED
    with behind_proxy(proxied, f"192.0.2.{random.randint(1, 250)}") as client:
        assert client.line().endswith(b"POP3 server ready\r\n")
        client.login(account)  # plaintext_networks: allowed in the clear
        assert client.command("QUIT").startswith(b"+OK")


def test_trusted_networks_still_works_with_a_deprecation_warning(proxied: MasterHandle,
                                                                 tmp_path) -> None:
    text = proxied.config_path.read_text()
    old = text.replace('proxy_networks = ["127.0.0.1/32"]', 'trusted_networks = ["127.0.0.1/32"]')
    old = old.replace('plaintext_networks = ["192.0.2.0/24", "2001:db8::/32"]\n', "")
    path = tmp_path / "old.toml"
    path.write_text(old)
    result = proxied.cli("check-config")  # the running configuration: no warning
    assert result.stdout == "ok\n"
    assert "deprecated" not in result.stderr
    command = [*result.args[:-1], str(path)]
    checked = subprocess.run(command, env=proxied.env, capture_output=True, text=True,
                             check=False)
    assert checked.stdout == "ok\n"
    assert "server.trusted_networks: deprecated: use proxy_networks and plaintext_networks " \
           "instead (read as both)" in checked.stderr
