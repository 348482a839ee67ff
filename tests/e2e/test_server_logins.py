"""Logins under attack, against a real server with real PostgreSQL and memcached: lockouts hit
the (address, login name) that failed and never a neighbour, an address is only throttled by
its budget of fresh verifications, parallel attempts cannot slip through together, operators
unlock with the CLI, revocations apply at once, and a forged cache entry logs nobody in.

Each test logs in from loopback addresses of its own: the counters live in the shared memcached.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator

import pytest

from pop3d.adapters.memcache import MemcacheClient
from pop3d.auth import cache_key
from pop3d.config import Address
from pop3d.store import Accounts

from .conftest import MasterHandle, spare_loopback, statsd_lines
from .server_fixtures import Account, Client, MailStore, message

pytestmark = pytest.mark.e2e

MAX_FAILURES, BUDGET = 3, 6
WRONG = b"-ERR [AUTH] Authentication failed\r\n"
SECRET = b"0123456789abcdef" * 3


@pytest.fixture(scope="module")
def gate(start_module_server, tmp_path_factory: pytest.TempPathFactory,
         module_statsd: socket.socket) -> MasterHandle:
    secret = tmp_path_factory.mktemp("secret") / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return start_module_server({
        "server": {"workers": 2, "plaintext_networks": ["127.0.0.0/8"]},
        "auth": {"max_failures": MAX_FAILURES, "lockout": 60, "verify_budget": BUDGET,
                 "verify_window": 60, "cache_ttl": 30, "secret_file": str(secret)},
        "statsd": {"enabled": True, "host": "127.0.0.1", "port": module_statsd.getsockname()[1]},
    })


@pytest.fixture
def memcached(services: dict[str, str]) -> Iterator[MemcacheClient]:
    host, _, port = services["POP3D_TEST_MEMCACHED"].rpartition(":")
    client = MemcacheClient([Address(host, int(port))], timeout=1.0)
    yield client
    client.close()


def log_in(master: MasterHandle, source: str, username: str, key: str) -> bytes:
    """The reply to USER/PASS from ``source``, on a connection of its own."""
    with Client.greeted(master.port, source=source) as client:
        assert client.command(f"USER {username}").startswith(b"+OK")
        reply = client.command(f"PASS {key}")
        if reply.startswith(b"+OK"):
            client.command("QUIT")
        return reply


def logs_in(master: MasterHandle, source: str, account: Account, name: str = "") -> bool:
    return log_in(master, source, name or account.address, account.key).startswith(b"+OK Log")


def fail_times(master: MasterHandle, source: str, username: str, count: int) -> None:
    for _ in range(count):
        assert log_in(master, source, username, "pk_wrong_key") == WRONG


# --- 3. lockouts that hit the attacker --------------------------------------------------------


def test_failures_of_one_user_never_lock_out_a_neighbour(gate: MasterHandle,
                                                         mail_store: MailStore) -> None:
    """The issue's case: eight wrong keys for one user from an address (a NAT)."""
    typo, neighbour = mail_store.account(), mail_store.account()
    nat = spare_loopback()
    fail_times(gate, nat, typo.address, 8)
    assert logs_in(gate, nat, neighbour)  # a valid key of someone else behind the same NAT
    assert log_in(gate, nat, typo.address, typo.key) == WRONG  # locked: same reply as a typo
    assert logs_in(gate, spare_loopback(), typo)  # the same user from elsewhere


def test_the_operator_unlocks_a_user_or_an_address(gate: MasterHandle,
                                                   mail_store: MailStore) -> None:
    ann, bob = mail_store.account(), mail_store.account()
    office, home = spare_loopback(), spare_loopback()
    fail_times(gate, office, ann.address, MAX_FAILURES)
    fail_times(gate, home, ann.address, MAX_FAILURES)
    assert not logs_in(gate, office, ann)
    result = gate.cli("unlock", "--user", ann.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"unlocked {ann.address} ({ann.address}) from every address\n"
    assert logs_in(gate, office, ann)
    assert logs_in(gate, home, ann)
    elsewhere = spare_loopback()
    fail_times(gate, elsewhere, bob.address, MAX_FAILURES)
    assert not logs_in(gate, elsewhere, bob)
    result = gate.cli("unlock", "--address", elsewhere)
    assert result.stdout == f"unlocked {elsewhere}: every login name, and a new verification " \
                            "budget\n"
    assert logs_in(gate, elsewhere, bob)


def test_an_address_is_throttled_by_its_budget_but_a_known_key_still_works(
        gate: MasterHandle, mail_store: MailStore) -> None:
    regular, newcomer = mail_store.account(), mail_store.account()
    nat = spare_loopback()
    assert logs_in(gate, nat, regular)  # one fresh verification; now in the auth cache
    for n in range(BUDGET - 1):  # someone sprays other names: one verification each
        assert log_in(gate, nat, f"spray{n}@example.com", "pk_wrong_key") == WRONG
    assert log_in(gate, nat, newcomer.address, newcomer.key) == WRONG  # throttled
    assert logs_in(gate, nat, regular)  # known good: never refused for the others
    assert logs_in(gate, spare_loopback(), newcomer)
    gate.cli("unlock", "--address", nat)
    assert logs_in(gate, nat, newcomer)


def test_parallel_attempts_cannot_slip_through_together(gate: MasterHandle,
                                                        mail_store: MailStore,
                                                        module_statsd: socket.socket) -> None:
    """Twelve wrong keys at the same moment over twelve connections (on both workers): the
    count is taken before each verification, so exactly MAX_FAILURES are verified."""
    target, source, attempts = mail_store.account(), spare_loopback(), 12
    statsd_lines(module_statsd)  # what earlier tests sent
    clients = [Client.greeted(gate.port, source=source) for _ in range(attempts)]
    for client in clients:
        assert client.command(f"USER {target.address}").startswith(b"+OK")
    start = threading.Barrier(attempts)
    replies: list[bytes] = []

    def attempt(client: Client) -> None:
        start.wait()
        replies.append(client.command(f"PASS pk_wrong_{random.randint(0, 10**9)}"))

    threads = [threading.Thread(target=attempt, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert replies == [WRONG] * attempts
    locked = sum(int(line.split(":")[1].split("|")[0]) for line in statsd_lines(module_statsd)
                 if line.startswith("pop3.auth.locked_out:"))
    assert locked == attempts - MAX_FAILURES
    assert gate.log_text().count(f"from {source} for up to 60 s") == 1  # logged once


# --- 4. revocation at once ---------------------------------------------------------------------


def test_revoking_a_key_ends_its_logins_at_once_under_every_name(
        gate: MasterHandle, mail_store: MailStore) -> None:
    account = mail_store.account([message("revoked")])
    alias = f"alias-{account.address}"
    Accounts(mail_store.db).add_alias(account.address, alias)
    for name in (account.address, alias):  # both cached as good now
        assert logs_in(gate, spare_loopback(), account, name)
        assert logs_in(gate, spare_loopback(), account, name)
    result = gate.cli("key", "revoke", account.key[:13])
    assert (result.returncode, result.stdout) == (0, f"revoked {account.key[:13]}\n")
    for name in (account.address, alias):
        assert log_in(gate, spare_loopback(), name, account.key) == WRONG


def test_disabling_a_user_and_changing_scopes_apply_at_once(gate: MasterHandle,
                                                           mail_store: MailStore) -> None:
    disabled, rescoped = mail_store.account(), mail_store.account()
    assert logs_in(gate, spare_loopback(), disabled)
    assert gate.cli("user", "disable", disabled.address).returncode == 0
    assert not logs_in(gate, spare_loopback(), disabled)
    assert logs_in(gate, spare_loopback(), rescoped)
    assert gate.cli("key", "scopes", rescoped.key[:13], "--scope", "imap").returncode == 0
    assert not logs_in(gate, spare_loopback(), rescoped)
    assert gate.cli("key", "scopes", rescoped.key[:13], "--scope", "pop3").returncode == 0
    assert logs_in(gate, spare_loopback(), rescoped)


# --- 5. the cache cannot be forged --------------------------------------------------------------


def test_a_forged_cache_entry_logs_nobody_in(gate: MasterHandle, mail_store: MailStore,
                                             memcached: MemcacheClient) -> None:
    """Someone who can write to memcached (not knowing the secret) watches a failed guess
    appear in the cache and turns it into a success: by hand, or by copying the victim's own
    genuine entry over it."""
    victim = mail_store.account([message("private")])
    assert logs_in(gate, spare_loopback(), victim)  # the genuine entry
    assert log_in(gate, spare_loopback(), victim.address, "pk_guess_1") == WRONG
    genuine = memcached.get("pop3d:auth:" + cache_key(SECRET, "pop3", victim.address, victim.key))
    guessed = "pop3d:auth:" + cache_key(SECRET, "pop3", victim.address, "pk_guess_1")
    assert genuine is not None
    assert memcached.get(guessed) is not None  # the failure the attacker saw appear
    forged_json = (f'{{"ok":true,"user_id":"{victim.user_id}","key_id":"k",'
                   f'"address":"{victim.address}"}}').encode()
    for forged in (forged_json, genuine, genuine.replace(b'"ok":true', b'"ok":true ')):
        memcached.set(guessed, forged, 30)
        assert log_in(gate, spare_loopback(), victim.address, "pk_guess_1") == WRONG
    assert logs_in(gate, spare_loopback(), victim)
