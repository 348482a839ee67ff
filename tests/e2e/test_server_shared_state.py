"""State shared through memcached by all workers: the per-user session limit across workers,
slots freed when a worker is SIGKILLed, and the lockout of a login name from an address."""

from __future__ import annotations

import os
import random
import signal

import pytest

from .conftest import MasterHandle, wait_until
from .server_fixtures import Client, MailStore, message, socket_owner

pytestmark = pytest.mark.e2e

IN_USE = b"-ERR [IN-USE] Too many sessions for this user, try again later\r\n"


@pytest.fixture(scope="module")
def master(start_module_server) -> MasterHandle:
    return start_module_server({"server": {"workers": 2},
                                "limits": {"max_connections_per_user": 1}})


def on_other_worker(master: MasterHandle, first: Client) -> Client:
    """A new greeted connection served by a different worker than ``first``'s."""
    pids = master.worker_pids()
    taken = socket_owner(first, pids)
    for _ in range(50):
        client = Client.greeted(master.port)
        if socket_owner(client, pids) != taken:
            return client
        client.close()
    raise AssertionError("every connection landed on the same worker")


def test_the_session_limit_holds_across_workers(master, mail_store: MailStore):
    account = mail_store.account([message("one at a time")])
    with Client.greeted(master.port) as first:
        first.login(account)
        with on_other_worker(master, first) as second:
            assert second.command(f"USER {account.address}").startswith(b"+OK")
            assert second.command(f"PASS {account.key}") == IN_USE
        assert first.command("QUIT").startswith(b"+OK")
    with Client.greeted(master.port) as third:  # the slot is free again
        third.login(account)


def test_a_killed_workers_slots_are_freed_by_the_master(master, mail_store: MailStore):
    account = mail_store.account([message("orphaned slot")])
    victim = Client.greeted(master.port)
    victim.login(account)
    pid = socket_owner(victim, master.worker_pids())
    os.kill(pid, signal.SIGKILL)
    victim.close()
    wait_until(lambda: pid not in master.worker_pids() and len(master.worker_pids()) == 2,
               5, "the replacement worker")

    def logs_in() -> bool:
        with Client.greeted(master.port) as client:
            client.command(f"USER {account.address}")
            return client.command(f"PASS {account.key}").startswith(b"+OK Logged in")

    wait_until(logs_in, 5, "the killed session's slot to be released")
    assert f"released 1 registry slots of worker {pid}" in master.log_text()


def test_a_login_name_is_locked_out_from_an_address_after_max_failures(start_server,
                                                                       mail_store: MailStore):
    master = start_server({"server": {"workers": 1, "plaintext_networks": ["127.0.0.0/8"]},
                           "auth": {"max_failures": 2, "lockout": 60}})
    account = mail_store.account([message("locked out")])
    # Loopback addresses of their own: other tests (and earlier runs) fail logins from
    # 127.0.0.1 on purpose, and the counters live in the shared memcached.
    source, bystander = (f"127.{random.randint(64, 250)}.{random.randint(1, 250)}."
                         f"{random.randint(2, 250)}" for _ in range(2))
    for _ in range(2):
        with Client.greeted(master.port, source=source) as client:
            client.command(f"USER {account.address}")
            assert client.command("PASS wrong").startswith(b"-ERR [AUTH]")
    with Client.greeted(master.port, source=source) as client:
        client.command(f"USER {account.address}")
        assert client.command(f"PASS {account.key}").startswith(b"-ERR [AUTH]")
    with Client.greeted(master.port, source=bystander) as client:  # others are not affected
        client.login(account)
