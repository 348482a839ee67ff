"""Whole POP3 sessions with poplib and a raw client: plain, STLS and implicit TLS; USER/PASS and
AUTH PLAIN; the failure delay as a timer; plaintext login refused outside trusted networks."""

from __future__ import annotations

import poplib
import re
import ssl
import time

import pytest

from .conftest import MasterHandle
from .server_fixtures import (
    UNTRUSTED_SOURCE,
    Client,
    MailStore,
    SourcePOP3,
    as_sent,
    message,
    plain_token,
    tls_port,
)

pytestmark = pytest.mark.e2e

FAILURE_DELAY = 0.5
TLS_REQUIRED = b"-ERR [AUTH] Plaintext login refused: TLS required\r\n"


@pytest.fixture(scope="module")
def master(start_module_server) -> MasterHandle:
    """One worker, so every connection of a test shares it."""
    return start_module_server({"server": {"workers": 1},
                                "auth": {"failure_delay": FAILURE_DELAY}})


def open_pop(master: MasterHandle, transport: str, context: ssl.SSLContext) -> poplib.POP3:
    if transport == "implicit":
        return poplib.POP3_SSL("127.0.0.1", tls_port(master), context=context, timeout=10)
    client = poplib.POP3("127.0.0.1", master.port, timeout=10)
    if transport == "stls":
        assert client.stls(context).startswith(b"+OK")
    return client


def header_of(sent: bytes) -> bytes:
    """The header section and the blank line: what TOP n 0 returns."""
    return sent[:sent.index(b"\r\n\r\n") + 4]


@pytest.mark.parametrize("transport", ["plain", "stls", "implicit"])
def test_a_full_poplib_session_then_the_deleted_message_is_gone(
        master, mail_store: MailStore, tls_client_context, transport):
    raws = [message("one", b"first body\r\nsecond line\r\n"),
            message("two", b"to be deleted\n"),
            message("three", b"third\r\n.dot line\r\n" + b"x" * 500 + b"\r\n")]
    account = mail_store.account(raws)
    sent = [as_sent(raw) for raw in raws]

    pop = open_pop(master, transport, tls_client_context)
    assert pop.getwelcome() == b"+OK pop3d.test POP3 server ready"
    caps = pop.capa()
    assert {"TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} <= caps.keys()
    assert caps["SASL"] == ["PLAIN", "LOGIN"]
    assert ("STLS" in caps) is (transport == "plain")
    assert pop.user(account.address) == b"+OK Send PASS"
    total = sum(map(len, sent))
    assert pop.pass_(account.key) == f"+OK Logged in, 3 messages ({total} octets)".encode()
    assert pop.stat() == (3, total)
    _, listing, _ = pop.list()
    assert listing == [f"{n} {len(s)}".encode() for n, s in enumerate(sent, 1)]
    _, uidl_lines, _ = pop.uidl()
    uids = [line.split()[1] for line in uidl_lines]
    assert [line.split()[0] for line in uidl_lines] == [b"1", b"2", b"3"]
    assert len(set(uids)) == 3
    assert all(re.fullmatch(rb"[0-9a-f]{32}", uid) for uid in uids)
    _, top_lines, _ = pop.top(3, 1)
    assert b"\r\n".join(top_lines) + b"\r\n" == header_of(sent[2]) + b"third\r\n"
    response, lines, _ = pop.retr(1)
    assert response == f"+OK {len(sent[0])} octets".encode()
    assert b"\r\n".join(lines) + b"\r\n" == sent[0]
    assert pop.dele(1) == b"+OK Message 1 deleted"
    assert pop.rset() == f"+OK Maildrop has 3 messages ({total} octets)".encode()
    assert pop.dele(2) == b"+OK Message 2 deleted"
    assert pop.stat() == (2, total - len(sent[1]))
    with pytest.raises(poplib.error_proto, match="Message 2 is marked deleted"):
        pop.retr(2)
    assert pop.quit() == b"+OK pop3d.test POP3 server signing off (1 messages deleted)"

    pop = open_pop(master, transport, tls_client_context)
    pop.user(account.address)
    pop.pass_(account.key)
    assert pop.stat() == (2, len(sent[0]) + len(sent[2]))
    _, uidl_lines, _ = pop.uidl()
    assert [line.split()[1] for line in uidl_lines] == [uids[0], uids[2]]
    _, lines, _ = pop.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == sent[2]
    assert pop.quit().endswith(b"(0 messages deleted)")
    assert mail_store.message_count(account) == 2


@pytest.mark.parametrize("initial_response", [True, False], ids=["initial", "continuation"])
def test_auth_plain(master, mail_store: MailStore, initial_response):
    account = mail_store.account([message("sasl")])
    with Client.greeted(master.port) as client:
        reply = client.auth_plain(account, initial=initial_response)
        assert reply.startswith(b"+OK Logged in, 1 messages ("), reply
        assert client.command("STAT").startswith(b"+OK 1 ")
        assert client.command("QUIT").startswith(b"+OK")


def test_auth_plain_through_poplib_shortcmd(master, mail_store: MailStore):
    account = mail_store.account([message("sasl"), message("sasl 2")])
    pop = poplib.POP3("127.0.0.1", master.port, timeout=10)
    token = plain_token(account.address, account.key).decode()
    assert pop._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK Logged in, 2 messages")
    assert pop.stat()[0] == 2
    pop.quit()


def test_a_wrong_key_is_answered_after_the_delay_while_others_are_served(
        master, mail_store: MailStore):
    account = mail_store.account([message("delay")])
    with Client.greeted(master.port) as failing:
        assert failing.command(f"USER {account.address}") == b"+OK Send PASS\r\n"
        sent_at = time.monotonic()
        failing.send(f"PASS {account.key}x\r\n".encode())
        with Client.greeted(master.port) as other:  # the same (only) worker
            other.login(account)
            assert other.command("STAT").startswith(b"+OK 1 ")
            assert other.command("QUIT").startswith(b"+OK")
        other_done = time.monotonic() - sent_at
        reply = failing.line()
        answered = time.monotonic() - sent_at
    assert reply.startswith(b"-ERR [AUTH] "), reply
    assert answered >= FAILURE_DELAY
    assert other_done < FAILURE_DELAY, "the other session waited for the failure delay"


def test_a_key_without_the_pop3_scope_is_refused(master, mail_store: MailStore):
    account = mail_store.account([message("scoped")], scopes=("smtp", "imap"))
    with Client.greeted(master.port) as client:
        assert client.command(f"USER {account.address}") == b"+OK Send PASS\r\n"
        assert client.command(f"PASS {account.key}").startswith(b"-ERR [AUTH] ")
        assert client.command("STAT").startswith(b"-ERR STAT is not allowed")


def test_auth_plain_with_a_wrong_key_is_delayed_too(master, mail_store: MailStore):
    account = mail_store.account()
    with Client.greeted(master.port) as client:
        started = time.monotonic()
        reply = client.command(b"AUTH PLAIN " + plain_token(account.address, "pk_wrong_key"))
        assert time.monotonic() - started >= FAILURE_DELAY
        assert reply.startswith(b"-ERR [AUTH] "), reply
        assert client.command("QUIT").startswith(b"+OK")


@pytest.mark.parametrize("ending", ["quit", "drop"])
def test_stls_sessions_one_after_another_on_one_worker(master, mail_store: MailStore,
                                                       tls_client_context, ending):
    """Each new connection may get the file descriptor of the STLS connection just closed."""
    account = mail_store.account([message("again and again")])
    for attempt in range(4):
        with Client.greeted(master.port) as client:
            client.starttls(tls_client_context)
            assert client.command("NOOP").startswith(b"-ERR NOOP is not allowed")
            if attempt == 3:
                client.login(account)
                assert client.command("STAT").startswith(b"+OK 1 ")
            if ending == "quit":
                assert client.command("QUIT").startswith(b"+OK")
                assert client.closed_by_server()


# --- plaintext login outside plaintext_networks ----------------------------------------------


def test_untrusted_plaintext_connection_is_not_offered_login(master, mail_store: MailStore):
    account = mail_store.account([message("untrusted")])
    with Client.greeted(master.port, source=UNTRUSTED_SOURCE) as client:
        client.send(b"CAPA\r\n")
        assert client.line() == b"+OK Capability list follows\r\n"
        caps = client.multiline()
        assert b"STLS" in caps
        assert b"USER" not in caps
        assert not [line for line in caps if line.startswith(b"SASL")]
        assert b"UTF8" in caps
        assert client.command("AUTH") == b"+OK Supported mechanisms follow\r\n"
        assert client.multiline() == []
        assert client.command(f"USER {account.address}") == TLS_REQUIRED
        assert client.command(f"PASS {account.key}") == TLS_REQUIRED
        assert client.command(b"AUTH PLAIN " + plain_token(account.address, account.key)) \
            == TLS_REQUIRED
        assert client.command(b"AUTH PLAIN") == TLS_REQUIRED
        assert client.command(b"AUTH LOGIN") == TLS_REQUIRED
        assert client.command("STAT").startswith(b"-ERR STAT is not allowed")


def test_untrusted_connection_logs_in_after_stls(master, mail_store: MailStore,
                                                 tls_client_context):
    account = mail_store.account([message("after stls")])
    with Client.greeted(master.port, source=UNTRUSTED_SOURCE) as client:
        client.starttls(tls_client_context)
        client.send(b"CAPA\r\n")
        assert client.line() == b"+OK Capability list follows\r\n"
        caps = client.multiline()
        assert b"USER" in caps
        assert b"SASL PLAIN LOGIN" in caps
        assert b"STLS" not in caps
        assert client.auth_plain(account).startswith(b"+OK Logged in, 1 messages")
        assert client.command("QUIT").startswith(b"+OK")


def test_untrusted_poplib_user_pass_refused_then_accepted_after_stls(
        master, mail_store: MailStore, tls_client_context):
    account = mail_store.account([message("poplib untrusted")])
    pop = SourcePOP3("127.0.0.1", master.port, source=UNTRUSTED_SOURCE)
    with pytest.raises(poplib.error_proto) as refused:
        pop.user(account.address)
    assert refused.value.args[0] == TLS_REQUIRED.rstrip(b"\r\n")
    pop.stls(tls_client_context)
    assert pop.user(account.address) == b"+OK Send PASS"
    assert pop.pass_(account.key).startswith(b"+OK Logged in, 1 messages")
    assert pop.stat()[0] == 1
    pop.quit()


def test_untrusted_implicit_tls_logs_in(master, mail_store: MailStore, tls_client_context):
    account = mail_store.account([message("implicit untrusted")])
    client = Client.connect(tls_port(master), source=UNTRUSTED_SOURCE)
    client.sock = tls_client_context.wrap_socket(client.sock, server_hostname="localhost")
    with client:
        assert client.line() == b"+OK pop3d.test POP3 server ready\r\n"
        client.login(account)
        assert client.command("QUIT").startswith(b"+OK")
