"""The real server under the master's signals: a worker killed with SIGKILL, HUP under load
(good and broken configurations), TERM with sessions open, and INT."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from pop3d.cli.sysexits import EX_CONFIG

from .conftest import MasterHandle, wait_until
from .server_fixtures import Account, Client, MailStore, message, socket_owner

pytestmark = pytest.mark.e2e


def reload_finished(master: MasterHandle, serial: int) -> str | None:
    """The result of reload number ``serial`` once it is known ("ok" or "failed")."""
    reload = (master.status() or {}).get("reload", {})
    if reload.get("serial") == serial and reload.get("result") in ("ok", "failed"):
        return str(reload["result"])
    return None


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def one_session(port: int, account: Account) -> bytes:
    """Connect, log in, STAT, RETR 1, QUIT; the greeting (assertions fail the session)."""
    with Client.connect(port) as client:
        greeting = client.line()
        assert greeting.endswith(b" POP3 server ready\r\n"), greeting
        client.login(account)
        assert client.command("STAT").startswith(b"+OK 1 "), "STAT"
        assert client.command("RETR 1").startswith(b"+OK "), "RETR"
        assert client.multiline()[-1] == b"load", "RETR body"
        assert client.command("QUIT").startswith(b"+OK"), "QUIT"
    return greeting


# --- SIGKILL ---------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_the_others_sessions_go_on(start_server,
                                                                   mail_store: MailStore):
    master = start_server()
    account = mail_store.account([message("survivor", b"still here\r\n"), message("two")])
    survivor = Client.greeted(master.port)
    survivor.login(account)
    owner = socket_owner(survivor, master.worker_pids())
    victim = next(pid for pid in master.worker_pids() if pid != owner)

    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(master.worker_pids() - {victim, owner}) == 1, 2.0,
               "a new worker serving")
    replacement = (master.worker_pids() - {owner}).pop()
    served_by: set[int] = set()
    for _ in range(40):
        with Client.greeted(master.port) as other:
            served_by.add(socket_owner(other, master.worker_pids()))
            other.login(account)
            assert other.command("QUIT").startswith(b"+OK")
        if replacement in served_by:
            break
    assert replacement in served_by

    assert survivor.command("RETR 1").startswith(b"+OK ")
    assert survivor.multiline()[-1] == b"still here"
    assert survivor.command("QUIT").startswith(b"+OK")
    survivor.close()
    death = [line for line in master.log_text().splitlines() if f"worker {victim} (age" in line
             and "was killed by signal SIGKILL" in line]
    assert len(death) == 1, master.log_text()


# --- HUP -------------------------------------------------------------------------------------


class LoadLoop(threading.Thread):
    """Whole sessions back to back until ``until``; greetings and failures recorded."""

    def __init__(self, port: int, account: Account, until: float) -> None:
        super().__init__(daemon=True)
        self.port, self.account, self.until = port, account, until
        self.greetings: list[bytes] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while time.monotonic() < self.until:
            try:
                self.greetings.append(one_session(self.port, self.account))
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))


def test_hup_under_load_drops_nothing(start_server, mail_store: MailStore):
    master = start_server({"limits": {"max_connections_per_user": 100}})
    accounts = [mail_store.account([message(f"load {n}", b"load\r\n")]) for n in range(20)]
    started = time.monotonic()
    loops = [LoadLoop(master.port, account, started + 5.0) for account in accounts]
    for loop in loops:
        loop.start()
    time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    master.send_signal(signal.SIGHUP)
    assert wait_until(lambda: reload_finished(master, 1), 10.0, "the first reload") == "ok"
    master.write_config({"server": {"name": "pop3d.reloaded"}})
    master.send_signal(signal.SIGHUP)
    assert wait_until(lambda: reload_finished(master, 2), 10.0, "the second reload") == "ok"
    for loop in loops:
        loop.join(15)
    assert not any(loop.is_alive() for loop in loops)

    failures = [failure for loop in loops for failure in loop.failures]
    greetings = [greeting for loop in loops for greeting in loop.greetings]
    assert failures == []
    assert all(len(loop.greetings) >= 5 for loop in loops)
    assert set(greetings) == {b"+OK pop3d.test POP3 server ready\r\n",
                              b"+OK pop3d.reloaded POP3 server ready\r\n"}
    assert greetings.count(b"+OK pop3d.reloaded POP3 server ready\r\n") >= 20
    status = master.status()
    assert status is not None
    assert status["generation"] == 3
    assert {w["generation"] for w in master.workers()} == {3}


def test_hup_with_a_broken_config_keeps_serving(start_server, mail_store: MailStore):
    master = start_server()
    account = mail_store.account([message("broken config", b"load\r\n")])
    workers = master.worker_pids()
    master.write_config(text="[server\nworkers = \n")
    result = master.cli("reload")
    assert result.returncode == EX_CONFIG
    assert "not valid TOML" in result.stderr
    assert str(master.config_path) in result.stderr
    master.send_signal(signal.SIGHUP)
    assert wait_until(lambda: reload_finished(master, 1), 10.0, "the reload") == "failed"
    status = master.status()
    assert status is not None
    assert "not valid TOML" in status["reload"]["error"]
    assert status["generation"] == 1
    assert master.worker_pids() == workers
    assert one_session(master.port, account) == b"+OK pop3d.test POP3 server ready\r\n"


# --- TERM and INT ----------------------------------------------------------------------------


def test_term_lets_an_open_session_finish_and_apply_its_deletions(start_server,
                                                                  mail_store: MailStore):
    master = start_server({"server": {"graceful_timeout": 10}})
    account = mail_store.account([message("doomed"), message("kept", b"kept\r\n")])
    with Client.greeted(master.port) as client:
        client.login(account)
        master.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(master.port), 3.0, "the listeners to close")
        assert master.process.poll() is None
        assert client.command("STAT").startswith(b"+OK 2 ")
        assert client.command("RETR 2").startswith(b"+OK ")
        assert client.multiline()[-1] == b"kept"
        assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
        assert master.process.poll() is None
        quit_at = time.monotonic()
        assert client.command("QUIT") == \
            b"+OK pop3d.test POP3 server signing off (1 messages deleted)\r\n"
        assert client.closed_by_server()
    assert master.wait_exit(10) == 0
    assert time.monotonic() - quit_at < 5.0, "the master waited for graceful_timeout"
    assert mail_store.message_count(account) == 1


def test_int_closes_sessions_at_once_without_update(start_server, mail_store: MailStore):
    master = start_server({"server": {"graceful_timeout": 10}})
    account = mail_store.account([message("not deleted"), message("neither")])
    with Client.greeted(master.port) as client:
        client.login(account)
        assert client.command("DELE 1") == b"+OK Message 1 deleted\r\n"
        sent_at = time.monotonic()
        master.send_signal(signal.SIGINT)
        assert client.closed_by_server()
        assert time.monotonic() - sent_at < 3.0
    assert master.wait_exit(10) == 0
    assert mail_store.message_count(account) == 2

    again = start_server()
    with Client.greeted(again.port) as client:
        assert client.login(account).startswith(b"+OK Logged in, 2 messages")
        assert client.command("QUIT").startswith(b"+OK")
