"""A pool of two memcached servers: keys spread over both by the client's hashing; one server
killed or hung: logins go on (its share of the cache is recomputed, its users' registry slots
follow registry_failure) and no worker is stalled into the heartbeat's kill; the server back:
the pool uses it again without a restart."""

from __future__ import annotations

import pytest
from pymemcache.client.rendezvous import RendezvousHash

from .conftest import MasterHandle, wait_until
from .scale_fixtures import Memcached
from .server_fixtures import Account, Client, MailStore, message

pytestmark = pytest.mark.e2e

IN_USE = b"-ERR [IN-USE] Too many sessions for this user, try again later\r\n"
RETRY_AFTER = 0.5  # seconds a failed server is skipped
SLOT_TTL = 3  # seconds a registry slot lives unless refreshed


def pool_settings(servers: list[Memcached], registry_failure: str) -> dict[str, dict[str, object]]:
    return {"server": {"workers": 1},
            "limits": {"max_connections_per_user": 1},
            "memcached": {"servers": [s.address for s in servers], "timeout": 0.3,
                          "retry_after": RETRY_AFTER, "registry_failure": registry_failure,
                          "slot_ttl": SLOT_TTL}}


def slot_server(account: Account, servers: list[Memcached]) -> Memcached:
    """The server holding the account's registry slots (pop3d.adapters.memcache hashes the part
    of a key before ``#`` over the servers' host:port names)."""
    ring = RendezvousHash(nodes=[s.address for s in servers])
    node = ring.get_node(f"pop3d:reg:u:{account.user_id}")
    return next(s for s in servers if s.address == node)


def accounts_on_each(mail_store: MailStore, servers: list[Memcached]) -> dict[int, Account]:
    """An account whose registry slots live on each server, by the server's port."""
    found: dict[int, Account] = {}
    while len(found) < len(servers):
        account = mail_store.account([message("pooled")])
        found.setdefault(slot_server(account, servers).port, account)
    return found


def logs_in(master: MasterHandle, account: Account) -> Client:
    client = Client.greeted(master.port)
    client.login(account)
    return client


def second_login(master: MasterHandle, account: Account) -> bytes:
    """The reply to another login of an account that already has a session."""
    with Client.greeted(master.port) as client:
        client.command(f"USER {account.address}")
        return client.command(f"PASS {account.key}")


def limit_enforced(master: MasterHandle, account: Account) -> bool:
    """Whether a session of ``account`` keeps a second one out (a session that logged in
    while its registry server was skipped holds no slot)."""
    with logs_in(master, account):
        return second_login(master, account) == IN_USE


def test_keys_spread_and_a_dead_server_costs_only_its_share(
        start_server, mail_store: MailStore, memcached_pool: list[Memcached]):
    master = start_server(pool_settings(memcached_pool, "open"))
    worker = master.worker_pids()
    accounts = accounts_on_each(mail_store, memcached_pool)
    for account in accounts.values():
        logs_in(master, account).close()
    assert all(server.stats()["cmd_set"] > 0 for server in memcached_pool)  # both are used
    dead, alive = memcached_pool
    dead.kill()
    orphan, kept = accounts[dead.port], accounts[alive.port]
    with logs_in(master, orphan), logs_in(master, kept):
        # registry_failure = "open": the dead server's users log in without a limit ...
        assert second_login(master, orphan).startswith(b"+OK Logged in")
        # ... and the other users keep theirs.
        assert second_login(master, kept) == IN_USE
    dead.start()  # a new, empty memcached on the same port; pop3d is not restarted
    wait_until(lambda: limit_enforced(master, orphan), 5,
               "the returned server to hold the registry slots again")
    assert dead.stats()["curr_items"] > 0
    assert master.worker_pids() == worker


def test_a_hung_server_under_registry_failure_closed(
        start_server, mail_store: MailStore, memcached_pool: list[Memcached]):
    """SIGSTOP: connections hang instead of being refused, so every call waits for the
    timeout; the worker skips the server for retry_after and keeps serving everyone else."""
    master = start_server(pool_settings(memcached_pool, "closed"))
    worker = master.worker_pids()
    accounts = accounts_on_each(mail_store, memcached_pool)
    hung, alive = memcached_pool
    refused, kept = accounts[hung.port], accounts[alive.port]
    with logs_in(master, kept) as bystander:
        hung.pause()
        for _ in range(3):
            assert second_login(master, refused).startswith(b"-ERR [SYS/TEMP]")
            assert bystander.command("NOOP") == b"+OK\r\n"
        assert second_login(master, kept) == IN_USE
        hung.resume()
        # A claim that timed out may still be applied when the server resumes (the request sat
        # in its socket): that slot, held by a session that was refused, lapses with slot_ttl.
        wait_until(lambda: second_login(master, refused).startswith(b"+OK Logged in"),
                   SLOT_TTL + 5, "logins of the resumed server's users")
    assert master.worker_pids() == worker  # no heartbeat kill
