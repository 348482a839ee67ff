"""Postfix delivers into the installed pop3d through the pipe(8) transport of the package's
examples (/usr/share/doc/pop3d/examples), and clients fetch the mail by POP3.

Postfix runs as an instance of its own (configuration, queue and log in a temporary
directory, no network listener); pop3d's database is a PostgreSQL cluster of its own, so the
test can stop it to see mail deferred, and start it again to see that mail delivered.  pop3d
reaches it as README.Debian sets PostgreSQL up: through the Unix socket, where the OS user
pop3d is the database role pop3d by peer authentication.
"""

from __future__ import annotations

import poplib
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.conftest import free_port, wait_until

from .conftest import (
    CONFIG,
    add_user,
    admin,
    fail2ban_matches,
    installed_package,
    pop3_login,
    retrieve,
    set_options,
)
from .mta import Cluster, Postfix
from .service import Service, Unit

DOMAIN = "pop3d.test"
ALICE, BOB, CAROL = (f"{name}@{DOMAIN}" for name in ("alice", "bob", "carol"))

# As a mail program hands it to sendmail: LF line ends, 8-bit text, lines that POP3 must
# dot-stuff, a lone dot (sendmail -i), and a Bcc recipient nobody may see.
MESSAGE = """\
From: Alice <alice@pop3d.test>
To: Bob <bob@pop3d.test>
Bcc: Carol <carol@pop3d.test>
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= through Postfix
Date: Fri, 04 Dec 2026 03:00:00 +0000
Message-ID: <{message_id}>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Hello Bob,
.
..two dots
From the start of a line
trailing spaces   \n\
Grüße, Alice
"""

# What Postfix puts in front: pipe(8)'s Return-Path and Delivered-To (flags R and D), and the
# Received line of the local submission.
TRACE = re.compile(rb"Return-Path: <alice@pop3d\.test>\r\n"
                   rb"Delivered-To: (?P<recipient>\S+)\r\n"
                   rb"Received: by postfix\.pop3d\.test \(Postfix, from userid 0\)\r\n"
                   rb"\tid [0-9A-F]+; [^\r\n]+\r\n")


def message(message_id: str) -> bytes:
    return MESSAGE.format(message_id=message_id).encode()


def without_bcc_crlf(raw: bytes) -> bytes:
    """The message as POP3 must serve it: CRLF line ends, no Bcc field."""
    lines = raw.decode().split("\n")[:-1]
    return "".join(f"{line}\r\n" for line in lines if not line.startswith("Bcc:")).encode()


@dataclass
class Mail:
    postfix: Postfix
    cluster: Cluster
    port: int
    keys: dict[str, str]
    journal: Path  # the server's log (its standard error, as the journal would get it)

    def mailbox(self, address: str) -> list[bytes]:
        with pop3_login(self.port, address, self.keys[address]) as client:
            return [retrieve(client, n) for n in range(1, client.stat()[0] + 1)]

    def send(self, *recipients: str) -> str:
        """A new copy of MESSAGE from Alice to ``recipients``; its Message-ID."""
        message_id = f"{uuid.uuid4().hex}@{DOMAIN}"
        self.postfix.sendmail(message(message_id), ALICE, *recipients)
        return message_id


@pytest.fixture(scope="module")
def mail(deb: Path, shared_tmp: Path, services: dict[str, str]) -> Iterator[Mail]:
    """The package installed and running on its own cluster, users Alice, Bob and Carol, and a
    Postfix instance routing pop3d.test to the pop3d transport."""
    root = Path(tempfile.mkdtemp(prefix="pop3d-postfix-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "pg").mkdir()
    (root / "postfix").mkdir()
    cluster = Cluster(root / "pg", free_port())
    try:
        with installed_package(deb):
            postfix = Postfix(root / "postfix", DOMAIN)  # from the installed examples
            cluster.start()
            cluster.create_database("mail")
            set_options(CONFIG, {
                "server": {"listen": f'["127.0.0.1:{free_port()}"]', "tls_listen": "[]",
                           "workers": "1", "graceful_timeout": "5"},
                "database": {"dsn": f'"{cluster.socket_dsn("mail")}"',
                             "statement_timeout": "5"},
                "memcached": {"servers": f'["{services["POP3D_TEST_MEMCACHED"]}"]'},
                # Other tests fail logins from 127.0.0.1 on this memcached: no lockout.
                "auth": {"bcrypt_cost": "4", "max_failures": "1000000", "failure_delay": "0.1"},
                "statsd": {"enabled": "false"},
            })
            admin("db", "migrate")
            keys = {address: add_user(address) for address in (ALICE, BOB, CAROL)}
            service = Service(Unit.installed(), shared_tmp)
            service.start()
            postfix.start()
            try:
                port = int(re.findall(r"127\.0\.0\.1:(\d+)", CONFIG.read_text())[0])
                yield Mail(postfix, cluster, port, keys, service.output)
            finally:
                postfix.stop()
                service.close()
    finally:
        if cluster.running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_delivered_mail_is_fetched_byte_exact_without_bcc(mail: Mail) -> None:
    message_id = mail.send(BOB, CAROL)
    for recipient in (BOB, CAROL):
        assert "dsn=2.0.0" in mail.postfix.wait_status(message_id, recipient, "sent")
    expected = without_bcc_crlf(message(message_id))
    for recipient in (BOB, CAROL):
        (fetched,) = mail.mailbox(recipient)
        trace = TRACE.match(fetched)
        assert trace, fetched[:300]
        assert trace.group("recipient").decode() == recipient
        assert fetched[trace.end():] == expected


def test_mail_for_an_unknown_user_bounces_to_the_sender(mail: Mail) -> None:
    message_id = mail.send(f"nobody@{DOMAIN}")
    line = mail.postfix.wait_status(message_id, f"nobody@{DOMAIN}", "bounced")
    assert "dsn=5.1.1" in line
    assert "no such user" in line
    # The bounce comes back to Alice through the same transport.
    bounces = wait_until(lambda: mail.mailbox(ALICE), 30, "the bounce in Alice's mailbox")
    assert bounces[0].startswith(b"Return-Path: <MAILER-DAEMON>\r\n")  # the null sender
    assert b"Final-Recipient: rfc822; nobody@pop3d.test" in bounces[0]
    assert b"Status: 5.1.1" in bounces[0]
    wait_until(lambda: not mail.postfix.queued(), 10, "an empty queue")


def test_mail_is_deferred_while_the_database_is_down_and_delivered_after(mail: Mail) -> None:
    before = len(mail.mailbox(BOB))
    mail.cluster.stop()
    try:
        message_id = mail.send(BOB)
        line = mail.postfix.wait_status(message_id, BOB, "deferred")
        assert "dsn=4.3.0" in line
        assert "database unavailable" in line
        assert mail.postfix.queued() == [BOB]
        # Meanwhile a failed login is pop3d's fault, not the client's: fail2ban ignores it.
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"), \
                pop3_login(mail.port, BOB, "pk_wrong_key"):
            pass
        assert "[SYS/TEMP]" in mail.journal.read_text()
        assert fail2ban_matches(mail.journal) == (0, set())
    finally:
        mail.cluster.start()
    mail.postfix.flush()
    mail.postfix.wait_status(message_id, BOB, "sent")
    fetched = mail.mailbox(BOB)
    assert len(fetched) == before + 1
    assert fetched[-1].endswith(without_bcc_crlf(message(message_id)))


def test_a_broken_configuration_defers_instead_of_bouncing(mail: Mail) -> None:
    good = CONFIG.read_text()
    CONFIG.write_text(good.replace("[server]\n", "[server]\nno_such_option = 1\n", 1))
    try:
        message_id = mail.send(BOB)
        line = mail.postfix.wait_status(message_id, BOB, "deferred")
        assert "no_such_option" in line
        assert "exited with status 78; deferring" in line
    finally:
        CONFIG.write_text(good)
    mail.postfix.flush()
    mail.postfix.wait_status(message_id, BOB, "sent")
