"""The PROXY protocol (v1 and v2, before plain and implicit-TLS sessions) and the statsd counters
a real worker sends to a real UDP listener."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import time

import pytest

from .conftest import MasterHandle, statsd_lines, wait_until
from .server_fixtures import Client, MailStore, message, plain_token, tls_port

pytestmark = pytest.mark.e2e

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TLS_REQUIRED = b"-ERR [AUTH] Plaintext login refused: TLS required\r\n"


def proxy_v1(source: str, destination: str = "127.0.0.1") -> bytes:
    return f"PROXY TCP4 {source} {destination} 40000 110\r\n".encode()


def proxy_v2(source: str, destination: str = "127.0.0.1") -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton(destination)
    addresses += struct.pack("!HH", 40000, 995)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


@pytest.fixture(scope="module")
def proxied(start_module_server) -> MasterHandle:
    """Every listener expects a PROXY header; only 127.0.0.1 is trusted."""
    return start_module_server({"server": {"workers": 1, "proxy_protocol": True,
                                           "proxy_timeout": 1}})


def greeted_after(port: int, header: bytes) -> Client:
    client = Client.connect(port)
    client.send(header)
    assert client.line().endswith(b"POP3 server ready\r\n")
    return client


def test_a_v1_header_makes_its_source_the_client_address(proxied, mail_store: MailStore):
    account = mail_store.account([message("proxied")])
    with greeted_after(proxied.port, proxy_v1("203.0.113.7")) as client:
        # 203.0.113.7 is not trusted: plaintext login is refused as for a direct client there.
        assert client.command(f"USER {account.address}") == TLS_REQUIRED
    with greeted_after(proxied.port, proxy_v1("127.0.0.1")) as client:
        client.login(account)
        assert client.command("STAT").startswith(b"+OK 1 ")
        client.command("QUIT")
    wait_until(lambda: "ip=127.0.0.1" in proxied.log_text(), 5, "the login line")


def test_a_v2_header_before_implicit_tls_leaves_the_handshake_intact(
        proxied, mail_store: MailStore, tls_client_context: ssl.SSLContext):
    account = mail_store.account([message("over TLS")])
    raw = socket.create_connection(("127.0.0.1", tls_port(proxied)), timeout=10)
    raw.sendall(proxy_v2("198.51.100.9"))
    client = Client(tls_client_context.wrap_socket(raw, server_hostname="localhost"))
    with client:
        assert client.line().endswith(b"POP3 server ready\r\n")
        token = plain_token(account.address, account.key).decode()
        assert client.command(f"AUTH PLAIN {token}").startswith(b"+OK Logged in")
        client.command("QUIT")
    wait_until(lambda: f"user={account.address} method=PLAIN ip=198.51.100.9 tls=yes"
               in proxied.log_text(), 5, "the proxied login line")


def test_a_header_without_a_client_address_earns_no_trust(proxied, mail_store: MailStore):
    account = mail_store.account([message("unknown source")])
    for header in (b"PROXY UNKNOWN\r\n", V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])):
        # From the trusted proxy at 127.0.0.1, but naming no client (a health check, say).
        with greeted_after(proxied.port, header) as client:
            assert client.command(f"USER {account.address}") == TLS_REQUIRED


def test_a_connection_without_a_header_is_closed(proxied):
    with Client.connect(proxied.port) as client:
        client.send(b"CAPA\r\n")
        assert client.closed_by_server()
    with Client.connect(proxied.port) as client:  # silent: closed after proxy_timeout
        started = time.monotonic()
        assert client.closed_by_server()
        assert 0.9 <= time.monotonic() - started < 4


def test_headers_from_untrusted_addresses_are_refused(proxied):
    with Client.connect(proxied.port, source="127.0.0.2") as client:
        client.send(proxy_v1("127.0.0.1"))
        assert client.closed_by_server()
    assert "refusing 127.0.0.2: PROXY protocol is only accepted from proxy_networks" \
        in proxied.log_text()


# --- statsd ----------------------------------------------------------------------------------


def test_sessions_report_their_counters_to_statsd(start_server, mail_store: MailStore,
                                                   statsd_listener, tls_client_context):
    port = statsd_listener.getsockname()[1]
    master = start_server({"server": {"workers": 1},
                           "statsd": {"enabled": True, "host": "127.0.0.1", "port": port,
                                      "prefix": "mail.pop3"}})
    body = b"counted\r\n" * 10
    account = mail_store.account([message("metrics", body)])
    with Client.greeted(master.port) as client:
        client.login(account)
        size = int(client.command("LIST 1").split()[2])
        assert client.command("RETR 1").startswith(b"+OK")
        client.multiline()
        assert client.command("FROB").startswith(b"-ERR")
        client.command("QUIT")
    with Client.greeted(master.port) as client:
        assert client.command(f"USER {account.address}").startswith(b"+OK")
        assert client.command("PASS wrong").startswith(b"-ERR [AUTH]")
    raw = socket.create_connection(("127.0.0.1", tls_port(master)), timeout=10)
    with Client(tls_client_context.wrap_socket(raw, server_hostname="localhost")) as client:
        assert client.line().endswith(b"POP3 server ready\r\n")

    lines: list[str] = []

    def all_arrived() -> bool:
        lines.extend(statsd_lines(statsd_listener))
        return "mail.pop3.tls.handshakes:1|c" in lines and "mail.pop3.auth.failures:1|c" in lines

    wait_until(all_arrived, 5, "the statsd datagrams")
    for expected in ("mail.pop3.connections:1|c",
                     "mail.pop3.commands.user:1|c", "mail.pop3.commands.retr:1|c",
                     "mail.pop3.commands.unknown:1|c", "mail.pop3.auth.attempts:1|c",
                     "mail.pop3.messages.retrieved:1|c", f"mail.pop3.bytes.sent:{size}|c"):
        assert expected in lines, (expected, lines)
    assert any(re.fullmatch(r"mail\.pop3\.command\.retr:[0-9.]+\|ms", line) for line in lines)
