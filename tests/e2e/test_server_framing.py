"""Bytes on the wire: message bodies byte-identical through RETR (dot-stuffing, odd line ends,
8-bit data, 5 MB), the line-length limit at its exact boundary, and STLS command injection."""

from __future__ import annotations

import poplib
import random
import re
import ssl

import pytest

from .conftest import MasterHandle
from .server_fixtures import UNTRUSTED_SOURCE, Account, Client, MailStore, as_sent, message

pytestmark = pytest.mark.e2e

LINE_LIMIT = 8192  # limits.line_length: octets of a command line, not counting its CR LF


def big_message(size: int = 5_000_000) -> bytes:
    """~``size`` octets of 8-bit lines (under poplib's 2048-octet line limit), some starting
    with a dot, ending in CRLF, LF or CR at random."""
    rng = random.Random(1939)
    lines = [b"From: big@example.org\r\nSubject: five megabytes\r\n\r\n"]
    total = 0
    while total < size:
        line = rng.randbytes(rng.randrange(0, 1500)).replace(b"\r", b"r").replace(b"\n", b"n")
        if rng.random() < 0.05:
            line = b"." + line
        lines.append(line + rng.choice((b"\r\n", b"\n", b"\r")))
        total += len(lines[-1])
    return b"".join(lines)


ODD_MESSAGES = {
    "lone dots": message("lone dots", b"before\r\n.\r\nafter\r\n.\r\n"),
    "double dots": message("double dots", b"..\r\n...\r\n..x\r\n"),
    "leading dots": message("leading dots", b".hidden\r\n. space\r\n.\r\n.end"),
    "no final newline": message("no final newline", b"the last line has no end"),
    "bare LF": b"From: lf@example.org\nSubject: bare LF\n\nline 1\n.\n..\nline 3\n",
    "bare CR": b"From: cr@example.org\rSubject: bare CR\r\rline 1\r.\rline 3\r",
    "mixed ends": message("mixed", b"crlf\r\nlf\ncr\rcr lf split\r\r\n\n"),
    "8-bit": message("8-bit", bytes(range(128, 256)) + b"\r\n\x01\x7f\x00 nul\r\n"),
    "empty body": message("empty body", b""),
    "headers only": b"From: h@example.org\r\nSubject: no blank line\r\n",
}


@pytest.fixture(scope="module")
def master(start_module_server) -> MasterHandle:
    return start_module_server()


@pytest.fixture(scope="module")
def odd_account(mail_store: MailStore) -> Account:
    return mail_store.account(list(ODD_MESSAGES.values()))


@pytest.fixture(scope="module")
def big_account(mail_store: MailStore) -> tuple[Account, bytes]:
    raw = big_message()
    return mail_store.account([raw]), raw


def stuffed(sent: bytes) -> bytes:
    """``sent`` dot-stuffed as RFC 1939 section 3 says: one more dot before a leading dot."""
    return re.sub(rb"(?m)^\.", b"..", sent)


def poplib_session(master: MasterHandle, account: Account) -> poplib.POP3:
    pop = poplib.POP3("127.0.0.1", master.port, timeout=30)
    pop.user(account.address)
    pop.pass_(account.key)
    return pop


def test_odd_messages_arrive_byte_identical_through_poplib(master, odd_account):
    pop = poplib_session(master, odd_account)
    _, listing, _ = pop.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert len(sizes) == len(ODD_MESSAGES)
    for number, (name, raw) in enumerate(ODD_MESSAGES.items(), 1):
        response, lines, _ = pop.retr(number)
        received = b"\r\n".join(lines) + b"\r\n"
        assert received == as_sent(raw), name
        assert sizes[number - 1] == len(received), name
        assert response == f"+OK {len(received)} octets".encode(), name
    pop.quit()


def test_odd_messages_are_dot_stuffed_exactly_on_the_wire(master, odd_account):
    with Client.greeted(master.port) as client:
        client.login(odd_account)
        for number, (name, raw) in enumerate(ODD_MESSAGES.items(), 1):
            sent = as_sent(raw)
            wire = client.command(f"RETR {number}")
            assert wire == f"+OK {len(sent)} octets\r\n".encode(), name
            while not wire.endswith(b"\r\n.\r\n"):
                wire += client.line()
            assert wire == f"+OK {len(sent)} octets\r\n".encode() + stuffed(sent) + b".\r\n"
        assert client.command("QUIT").startswith(b"+OK")


def top_of(sent: bytes, lines: int) -> bytes:
    """What TOP n ``lines`` must send for a message sent as ``sent`` (before dot-stuffing)."""
    end = sent.find(b"\r\n\r\n")
    if end < 0:
        return sent + b"\r\n"
    body = sent[end + 4:].split(b"\r\n")[:-1]
    return sent[:end + 4] + b"".join(line + b"\r\n" for line in body[:lines])


@pytest.mark.parametrize("lines", [0, 1, 2, 100])
def test_top_of_odd_messages_is_exact(master, odd_account, lines):
    with Client.greeted(master.port) as client:
        client.login(odd_account)
        for number, (name, raw) in enumerate(ODD_MESSAGES.items(), 1):
            wire = client.command(f"TOP {number} {lines}")
            assert wire == b"+OK Top of message follows\r\n", name
            while not wire.endswith(b"\r\n.\r\n"):
                wire += client.line()
            expected = stuffed(top_of(as_sent(raw), lines))
            assert wire == b"+OK Top of message follows\r\n" + expected + b".\r\n", name
        assert client.command("QUIT").startswith(b"+OK")


def test_a_five_megabyte_message_arrives_byte_identical(master, big_account):
    account, raw = big_account
    pop = poplib_session(master, account)
    count, size = pop.stat()
    response, lines, _ = pop.retr(1)
    received = b"\r\n".join(lines) + b"\r\n"
    assert received == as_sent(raw)
    assert count == 1
    assert size == len(received)
    assert response == f"+OK {size} octets".encode()
    assert int(pop.list(1).split()[2]) == size
    pop.quit()


# --- the line-length limit -------------------------------------------------------------------


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"], ids=["CRLF", "LF"])
def test_a_line_at_the_limit_is_processed(master, mail_store: MailStore, line_end):
    account = mail_store.account([message("limit")])
    with Client.greeted(master.port) as client:
        user = b"USER " + b"x" * (LINE_LIMIT - len(b"USER "))
        assert len(user) == LINE_LIMIT
        client.send(user + line_end)
        assert client.line() == b"+OK Send PASS\r\n"
        client.login(account)
        noop = b"NOOP" + b" " * (LINE_LIMIT - len(b"NOOP"))
        client.send(noop + line_end)
        assert client.line() == b"+OK\r\n"
        assert client.command("STAT").startswith(b"+OK 1 ")
        assert client.command("QUIT").startswith(b"+OK")


@pytest.mark.parametrize("logged_in", [False, True], ids=["before login", "after login"])
def test_a_line_one_octet_over_the_limit_closes_the_connection(
        master, mail_store: MailStore, logged_in):
    account = mail_store.account([message("over the limit")])
    with Client.greeted(master.port) as client:
        if logged_in:
            client.login(account)
            client.command("DELE 1")
        line = b"NOOP" + b" " * (LINE_LIMIT + 1 - len(b"NOOP"))
        assert len(line) == LINE_LIMIT + 1
        client.send(line + b"\r\nSTAT\r\n")
        assert client.line() == b"-ERR Line too long\r\n"
        assert client.closed_by_server()
    assert mail_store.message_count(account) == 1


def test_an_endless_line_is_refused_without_waiting_for_its_end(master):
    with Client.greeted(master.port) as client:
        client.send(b"USER " + b"y" * (4 * LINE_LIMIT))
        assert client.line() == b"-ERR Line too long\r\n"
        assert client.closed_by_server()


# --- STLS: nothing sent before the handshake counts ------------------------------------------


def handshake(client: Client, context: ssl.SSLContext) -> None:
    """The TLS handshake after an STLS +OK.  The injected bytes reached the server with the
    STLS (one write on loopback), so they sit in its plaintext buffer, not in the TLS stream:
    the handshake must succeed, and what was buffered must be gone."""
    client.sock = context.wrap_socket(client.sock, server_hostname="localhost")


def test_a_command_injected_with_stls_is_never_answered(master, tls_client_context):
    with Client.greeted(master.port) as client:
        client.send(b"STLS\r\nCAPA\r\n")
        assert client.line() == b"+OK Begin TLS negotiation\r\n"
        assert client.nothing_arrives(0.3), "a plaintext reply after the STLS +OK"
        handshake(client, tls_client_context)
        assert client.nothing_arrives(0.5), "the injected CAPA was answered inside TLS"
        client.send(b"CAPA\r\n")
        assert client.line() == b"+OK Capability list follows\r\n"
        assert b"STLS" not in client.multiline()


def test_a_login_injected_with_stls_is_discarded(master, mail_store: MailStore,
                                                 tls_client_context):
    account = mail_store.account([message("injected")])
    with Client.greeted(master.port, source=UNTRUSTED_SOURCE) as client:
        client.send(f"STLS\r\nUSER {account.address}\r\nPASS {account.key}\r\nSTAT\r\n".encode())
        assert client.line() == b"+OK Begin TLS negotiation\r\n"
        assert client.nothing_arrives(0.3), "a plaintext reply after the STLS +OK"
        handshake(client, tls_client_context)
        assert client.nothing_arrives(0.5), "an injected command was answered inside TLS"
        assert client.command("STAT").startswith(b"-ERR STAT is not allowed"), \
            "the injected USER/PASS logged the client in"
        client.login(account)
        assert client.command("QUIT").startswith(b"+OK")
