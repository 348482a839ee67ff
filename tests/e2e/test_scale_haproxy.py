"""Two pop3d hosts behind a real HAProxy running conf/haproxy.cfg, sharing one PostgreSQL and
one memcached: both serve, every limit sees the real client address, the per-user limit spans
the hosts, a host is drained with no dropped session, and a host killed with SIGKILL is routed
around, its registry slots lapse within the slot TTL, and it rejoins when it returns."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymemcache.client.base import Client as MemcacheClient

from .conftest import MasterHandle, default_settings, launch, merge, spare_loopback, wait_until
from .scale_fixtures import HAProxy, host_settings, ports_free_on
from .server_fixtures import Account, Client, MailStore, message, server_settings

pytestmark = pytest.mark.e2e

HOSTS = {"pop1": ("127.0.0.2", "pop-a.test"), "pop2": ("127.0.0.3", "pop-b.test")}
IN_USE = b"-ERR [IN-USE] Too many sessions for this user, try again later\r\n"
SLOT_TTL = 4  # seconds: a dead host's slots lapse within this (a refresh every 2 s)
HOST_OVERRIDES = {
    "server": {"workers": 2, "graceful_timeout": 10},
    "limits": {"max_connections_per_user": 1},
    "memcached": {"slot_ttl": SLOT_TTL},
    "auth": {"max_failures": 2, "lockout": 60},
}


@dataclass
class Pool:
    """HAProxy and the pop3d hosts behind it, by HAProxy server name."""

    haproxy: HAProxy
    hosts: dict[str, MasterHandle]
    restart: Callable[[str], MasterHandle]

    def greeted(self, source: str) -> tuple[str, Client]:
        """A new session through HAProxy from ``source``, and which host greeted it."""
        client = Client.connect(self.haproxy.port, source=source)
        greeting = client.line()
        for server, (_, name) in HOSTS.items():
            if greeting == f"+OK {name} POP3 server ready\r\n".encode():
                return server, client
        client.close()
        raise AssertionError(f"unexpected greeting {greeting!r}")

    def landing(self, source: str) -> str:
        """The host a new session through HAProxy lands on (the session is closed again)."""
        server, client = self.greeted(source)
        client.close()
        return server

    def greeted_on(self, server: str, source: str) -> Client:
        """A new session through HAProxy that landed on ``server``."""
        spare = []
        try:
            for _ in range(20):
                landed, client = self.greeted(source)
                if landed == server:
                    return client
                spare.append(client)  # held open, so leastconn sends the next one elsewhere
        finally:
            for client in spare:
                client.close()
        raise AssertionError(f"no session reached {server}")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, services: dict[str, str],
         mail_store: MailStore) -> Iterator[Pool]:
    addresses = [address for address, _ in HOSTS.values()]
    ports = ports_free_on(addresses, 2)
    hosts: dict[str, MasterHandle] = {}
    directories: dict[str, Path] = {}

    def start(server: str) -> MasterHandle:
        address, name = HOSTS[server]
        directory = directories.setdefault(server, tmp_path_factory.mktemp(server))
        overrides = merge(HOST_OVERRIDES, host_settings(name, address, ports))
        settings = merge(default_settings(directory),
                         server_settings(mail_store.dsn, services, overrides))
        handle = launch(directory, settings, worker=None, env=None, args=[])
        hosts[server] = handle
        handle.wait_ready()
        return handle

    haproxy = None
    try:
        for server in HOSTS:
            start(server)
        haproxy = HAProxy(services["POP3D_TEST_HAPROXY"], tmp_path_factory.mktemp("haproxy"),
                          addresses, ports)
        for server in HOSTS:
            haproxy.wait_status(server, "UP")
        yield Pool(haproxy, hosts, start)
    finally:
        if haproxy is not None:
            haproxy.stop()
        for handle in hosts.values():
            handle.stop()


def login_lines(host: MasterHandle, account: Account) -> list[str]:
    return [line for line in host.log_text().splitlines()
            if f" login user={account.address} " in line]


def test_clients_log_in_on_both_hosts_under_their_own_address(pool: Pool,
                                                               mail_store: MailStore):
    source = spare_loopback()
    for server, host in pool.hosts.items():
        account = mail_store.account([message(f"for {server}")])
        with pool.greeted_on(server, source) as client:
            client.login(account)
            assert client.command("STAT").startswith(b"+OK 1 ")
            assert client.command("QUIT").startswith(b"+OK")
        lines = wait_until(lambda h=host, a=account: login_lines(h, a), 5, "the login line")
        assert f" ip={source} " in lines[0], lines  # not HAProxy's 127.0.0.1


def test_the_session_limit_holds_across_both_hosts(pool: Pool, mail_store: MailStore):
    account = mail_store.account([message("one session at a time")])
    source = spare_loopback()
    with pool.greeted_on("pop1", source) as first:
        first.login(account)
        with pool.greeted_on("pop2", source) as second:
            assert second.command(f"USER {account.address}").startswith(b"+OK")
            assert second.command(f"PASS {account.key}") == IN_USE
        assert first.command("QUIT").startswith(b"+OK")
    with pool.greeted_on("pop2", source) as third:  # the slot is free again, for either host
        third.login(account)


def test_failed_logins_lock_out_the_real_client_address(pool: Pool, mail_store: MailStore):
    """Both clients reach pop3d from HAProxy's address; only the PROXY header tells them apart,
    and only the one that failed is refused (max_failures = 2)."""
    account = mail_store.account([message("locked out")])
    failing, bystander = spare_loopback(), spare_loopback()
    for server in ("pop1", "pop2"):  # the count is shared by the hosts
        with pool.greeted_on(server, failing) as client:
            client.command(f"USER {account.address}")
            assert client.command("PASS wrong").startswith(b"-ERR [AUTH]")
    _, refused = pool.greeted(failing)
    with refused:
        refused.command(f"USER {account.address}")
        assert refused.command(f"PASS {account.key}").startswith(b"-ERR [AUTH]")
    _, allowed = pool.greeted(bystander)
    with allowed:
        allowed.login(account)


def test_a_drained_host_finishes_its_sessions_and_rejoins(pool: Pool, mail_store: MailStore):
    """Removing a host: drain it in HAProxy, TERM its master; the session on it goes on to its
    QUIT, and a restarted host gets new sessions again once it is set ready."""
    account = mail_store.account([message("kept"), message("deleted on the drained host")])
    source = spare_loopback()
    with pool.greeted_on("pop1", source) as session:
        session.login(account)
        for backend in ("pop3d", "pop3d_tls"):
            pool.haproxy.command(f"set server {backend}/pop1 state drain")
        assert {pool.landing(source) for _ in range(4)} == {"pop2"}
        old = pool.hosts["pop1"]
        old.send_signal(signal.SIGTERM)
        assert session.command("RETR 1").startswith(b"+OK")
        assert b"kept" in b"\n".join(session.multiline())
        assert session.command("DELE 2").startswith(b"+OK")
        assert session.command("QUIT") == (
            b"+OK pop-a.test POP3 server signing off (1 messages deleted)\r\n")
    assert old.wait_exit() == 0
    assert mail_store.message_count(account) == 1
    pool.restart("pop1")
    for backend in ("pop3d", "pop3d_tls"):
        pool.haproxy.command(f"set server {backend}/pop1 state ready")
    pool.haproxy.wait_status("pop1", "UP")
    with pool.greeted_on("pop1", source) as back:
        back.login(account)


def test_a_killed_host_is_routed_around_and_rejoins(pool: Pool, mail_store: MailStore,
                                                     services: dict[str, str]):
    survivor_account = mail_store.account([message("on the survivor")])
    orphan = mail_store.account([message("on the host that dies")])
    source = spare_loopback()
    with pool.greeted_on("pop2", source) as survivor, pool.greeted_on("pop1", source) as doomed:
        survivor.login(survivor_account)
        doomed.login(orphan)
        dead_workers = pool.hosts["pop1"].worker_pids()
        os.killpg(pool.hosts["pop1"].pid, signal.SIGKILL)  # the master and its workers
        pool.hosts["pop1"].process.wait()
        # Sessions on the survivor are untouched.
        assert survivor.command("RETR 1").startswith(b"+OK")
        assert b"on the survivor" in b"\n".join(survivor.multiline())
        pool.haproxy.wait_status("pop1", "DOWN")
        assert {pool.landing(source) for _ in range(4)} == {"pop2"}
        # Nobody freed the dead host's slot: the user is [IN-USE] until it lapses.
        slot = memcached_value(services, f"pop3d:reg:u:{orphan.user_id}#0")
        assert slot is not None
        assert int(slot.decode().split(":")[-2]) in dead_workers  # host:pid:n
        wait_until(lambda: memcached_value(services, f"pop3d:reg:u:{orphan.user_id}#0") is None,
                   SLOT_TTL + 2, "the dead host's slot to lapse")
        _, again = pool.greeted(source)
        with again:
            again.login(orphan)
        assert survivor.command("QUIT").startswith(b"+OK")
    pool.restart("pop1")
    pool.haproxy.wait_status("pop1", "UP")
    with pool.greeted_on("pop1", source) as back:
        back.login(survivor_account)


def memcached_value(services: dict[str, str], key: str) -> bytes | None:
    host, _, port = services["POP3D_TEST_MEMCACHED"].rpartition(":")
    client = MemcacheClient((host, int(port)), timeout=2)
    try:
        value = client.get(key)
    finally:
        client.close()
    return value if isinstance(value, bytes) else None
