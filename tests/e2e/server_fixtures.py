"""Fixtures and clients for end-to-end tests of the whole server: a real master forking the real
worker, on a migrated PostgreSQL database, with TLS.

* ``mail_store`` (session): one migrated database shared by every module; each test makes its
  own accounts (``mail_store.account(messages)``), so tests never see each other's mail.
* ``server_settings(dsn, services, overrides)``: the configuration a real worker needs (database,
  certificate, an implicit-TLS listener, cheap bcrypt, short timeouts), to pass to
  ``start_master`` for a master per test, or to ``start_module_server`` for one per module.
* :class:`Client`: a raw line-level POP3 client (pipelining, partial reads, STLS by hand);
  :class:`SourcePOP3`: ``poplib.POP3`` connecting from a chosen loopback source address.

The tests register these through ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import poplib
import re
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest

from pop3d.auth import generate_key
from pop3d.config import parse_address
from pop3d.store import Accounts, Database, DbSettings, deliver, migrate

from .conftest import MasterHandle, Settings, default_settings, free_port, launch, merge

TEST_BCRYPT_COST = 4  # bcrypt's minimum: logins in a load test cost ~1 ms, not ~100 ms
CLIENT_TIMEOUT = 10.0  # seconds any test client waits for a reply before failing
UNTRUSTED_SOURCE = "127.0.0.2"  # a loopback address outside the test plaintext_networks


# --- the mail store ------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    address: str
    key: str
    user_id: str


class MailStore:
    """A migrated database: accounts with keys, delivered mail, and a look at what is left."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.db = Database(DbSettings(dsn, application_name="pop3d-e2e"))
        self._clock = datetime(2024, 1, 1, tzinfo=UTC)

    def account(self, messages: Sequence[bytes] = (), *, scopes: Sequence[str] = ("pop3",),
                ) -> Account:
        """A new user with one API key; ``messages`` delivered to it in this order."""
        address = f"u{uuid.uuid4().hex[:12]}@example.com"
        accounts = Accounts(self.db)
        user_id = accounts.add_user(address)
        new = generate_key(TEST_BCRYPT_COST)
        accounts.add_key(user_id, "e2e", new.prefix, new.bcrypt_hash, list(scopes))
        account = Account(address, new.key, user_id)
        for raw in messages:
            self.deliver(account, raw)
        return account

    def deliver(self, account: Account, raw: bytes) -> str:
        """Store ``raw`` for the account, received one minute after the previous delivery, so
        maildrop order is delivery order."""
        email_id = deliver(self.db, raw, [account.address])
        self._clock += timedelta(minutes=1)
        self.db.run(lambda cur: cur.execute(
            "UPDATE emails SET received_at = %s WHERE id = %s", (self._clock, email_id)))
        return email_id

    def message_count(self, account: Account) -> int:
        """The account's messages in the database right now."""

        def count(cur: psycopg2.extensions.cursor) -> int:
            cur.execute("SELECT count(*) FROM email_recipients WHERE user_id = %s",
                        (account.user_id,))
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

        return self.db.run(count)

    def close(self) -> None:
        self.db.close()


def migrated_store(make_database: Callable[[], str]) -> MailStore:
    dsn = make_database()
    db = Database(DbSettings(dsn, statement_timeout=0))
    migrate(db)
    db.close()
    return MailStore(dsn)


@pytest.fixture(scope="session")
def mail_store(make_database: Callable[[], str]) -> Iterator[MailStore]:
    store = migrated_store(make_database)
    yield store
    store.close()


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    """A small, valid RFC 5322 message."""
    return (f"From: alice@example.org\r\nTo: someone@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n").encode() + body


def sized_message(size: int) -> bytes:
    """A message of about ``size`` octets in 100-octet lines, one in seven starting with a dot."""
    lines = [(b"." if n % 7 == 0 else b"") + b"%07d " % n + b"z" * 90 + b"\r\n"
             for n in range(size // 100)]
    return message(f"{size} octets", b"".join(lines))


def as_sent(raw: bytes) -> bytes:
    """What RETR must send for ``raw`` (before dot-stuffing): every line end CRLF, and a final
    CRLF.  Written independently of the server's normaliser on purpose."""
    text = re.sub(rb"\r+\n|\r|\n", b"\r\n", raw)  # a CR run before LF is one line end
    return text if text.endswith(b"\r\n") else text + b"\r\n"


# --- masters with the real worker ----------------------------------------------------------


def server_settings(dsn: str, services: dict[str, str], overrides: Settings | None = None,
                    ) -> Settings:
    """What a real worker needs on top of the e2e defaults; ``overrides`` merged last."""
    base: Settings = {
        "server": {"tls_listen": [f"127.0.0.1:{free_port()}"], "workers": 2,
                   "proxy_networks": ["127.0.0.1/32"], "plaintext_networks": ["127.0.0.1/32"],
                   "worker_timeout": 5},
        "tls": {"cert": services["POP3D_TEST_CERT"], "key": services["POP3D_TEST_KEY"],
                "handshake_timeout": 3},
        # Load tests open hundreds of connections from 127.0.0.1: the per-address limits are
        # tested on their own addresses (test_server_hardening.py).
        "limits": {"login_timeout": 20, "idle_timeout": 30,
                   "max_connections_per_address": 100_000,
                   "max_tls_handshakes_per_address": 100_000},
        "database": {"dsn": dsn, "connect_timeout": 2, "statement_timeout": 4},
        "memcached": {"servers": [services["POP3D_TEST_MEMCACHED"]]},
        # Many tests fail logins on purpose from 127.0.0.1: the shared memcached must not lock
        # that address out for the tests after them (the lockout test uses its own address).
        "auth": {"bcrypt_cost": TEST_BCRYPT_COST, "failure_delay": 0.1,
                 "max_failures": 1_000_000, "verify_budget": 1_000_000},
    }
    return merge(base, overrides)


def tls_port(master: MasterHandle) -> int:
    return parse_address(master.settings["server"]["tls_listen"][0]).port


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory, services: dict[str, str],
                        mail_store: MailStore) -> Iterator[Callable[..., MasterHandle]]:
    """Starts real-worker masters that live for the whole module (stopped at its end)."""
    handles: list[MasterHandle] = []

    def start(overrides: Settings | None = None, *, dsn: str | None = None) -> MasterHandle:
        directory = tmp_path_factory.mktemp("server")
        settings = merge(default_settings(directory),
                         server_settings(dsn or mail_store.dsn, services, overrides))
        handle = launch(directory, settings, worker=None, env=None, args=[])
        handles.append(handle)
        handle.wait_ready()
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def start_server(start_master: Callable[..., MasterHandle], services: dict[str, str],
                 mail_store: MailStore) -> Callable[..., MasterHandle]:
    """Starts real-worker masters for one test (``start_master`` stops them at its end)."""

    def start(overrides: Settings | None = None, *, dsn: str | None = None) -> MasterHandle:
        return start_master(server_settings(dsn or mail_store.dsn, services, overrides))

    return start


@pytest.fixture(scope="session")
def tls_client_context(services: dict[str, str]) -> ssl.SSLContext:
    """A client context that trusts exactly the test certificate."""
    return ssl.create_default_context(cafile=services["POP3D_TEST_CERT"])


# --- clients -------------------------------------------------------------------------------


class SourcePOP3(poplib.POP3):
    """poplib.POP3 connecting from ``source`` (another loopback address, say)."""

    def __init__(self, host: str, port: int, *, source: str, timeout: float = CLIENT_TIMEOUT,
                 ) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


class Client:
    """A line-level POP3 client: whatever bytes a test wants out, exact bytes back."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()  # received, not yet consumed (deleting a prefix is cheap)

    @classmethod
    def connect(cls, port: int, *, source: str | None = None, timeout: float = CLIENT_TIMEOUT,
                receive_buffer: int | None = None) -> Client:
        """``receive_buffer`` (SO_RCVBUF, set before connecting) keeps the TCP window small, so
        a server's writes block early when the client does not read."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            sock.bind((source or "127.0.0.1", 0))
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def greeted(cls, port: int, **kwargs: Any) -> Client:
        """Connected, with the greeting read and checked."""
        client = cls.connect(port, **kwargs)
        greeting = client.line()
        assert re.fullmatch(rb"\+OK [^\r\n]* POP3 server ready\r\n", greeting), greeting
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    @property
    def pending(self) -> bytes:
        """Received and not yet consumed."""
        return bytes(self._buffer)

    def _receive(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def line(self) -> bytes:
        """One reply line with its CRLF; what is left (maybe b"") if the server closed first."""
        start = 0
        while (end := self._buffer.find(b"\n", start)) < 0:
            start = len(self._buffer)
            if not self._receive():
                return self._take(len(self._buffer))
        return self._take(end + 1)

    def read_exactly(self, size: int) -> bytes:
        """``size`` octets; fewer only if the server closed first."""
        while len(self._buffer) < size and self._receive():
            pass
        return self._take(size)

    def command(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        """The lines of a multi-line response after its status line, un-dot-stuffed, without
        line ends; fails on a response cut short."""
        lines = []
        while True:
            line = self.line()
            assert line.endswith(b"\r\n"), f"cut short after {len(lines)} lines: {line!r}"
            line = line[:-2]
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b".") else line)

    def login(self, account: Account) -> bytes:
        assert self.command(f"USER {account.address}").startswith(b"+OK")
        reply = self.command(f"PASS {account.key}")
        assert reply.startswith(b"+OK Logged in"), reply
        return reply

    def auth_plain(self, account: Account, *, initial: bool = True) -> bytes:
        token = plain_token(account.address, account.key)
        if initial:
            return self.command(b"AUTH PLAIN " + token)
        challenge = self.command(b"AUTH PLAIN")
        if challenge != b"+ \r\n":
            return challenge
        return self.command(token)

    def starttls(self, context: ssl.SSLContext) -> None:
        """STLS, then the handshake; the plaintext buffer must be empty by then."""
        reply = self.command("STLS")
        assert reply.startswith(b"+OK"), reply
        assert self.pending == b"", self.pending
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def closed_by_server(self) -> bool:
        """Whether the server closed: EOF (or a reset) before any further byte."""
        try:
            return self.pending == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def nothing_arrives(self, seconds: float) -> bool:
        """True when no byte arrives within ``seconds`` (and the connection stays open)."""
        if self.pending:
            return False
        previous = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        try:
            self._receive()
        except (TimeoutError, ssl.SSLWantReadError):
            return True
        finally:
            self.sock.settimeout(previous)
        return False


def plain_token(username: str, password: str, authzid: str = "") -> bytes:
    """A SASL PLAIN initial response, base64-encoded."""
    return base64.b64encode(f"{authzid}\0{username}\0{password}".encode())


def socket_owner(client: Client, pids: set[int]) -> int:
    """Which of ``pids`` holds the server side of ``client``'s TCP connection (IPv4)."""
    server_port = client.sock.getpeername()[1]
    client_port = client.sock.getsockname()[1]
    inode = None
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        if (local, remote) == (server_port, client_port) and fields[9] != "0":
            inode = fields[9]  # (TIME_WAIT leftovers of the same ports have inode 0)
    assert inode is not None, f"no server socket for client port {client_port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    raise AssertionError(f"none of {sorted(pids)} holds socket inode {inode}")


def rss_kib(pid: int) -> int:
    """A process's resident set size in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
