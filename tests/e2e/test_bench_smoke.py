"""pop3bench against a real server, a second or so per workload, so the tool cannot rot.

The assertions check that the reports are sane (sessions done, every RETR the size LIST
announced, octets adding up to the corpus, no errors), never how fast anything was.  About 15 s.
"""

from __future__ import annotations

import json
import poplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pop3d.bench.corpus import corpus

from .conftest import MasterHandle
from .server_fixtures import MailStore, tls_port

pytestmark = pytest.mark.e2e

MESSAGES = corpus(count=6)  # 1 KiB to 200 KiB, every kind of message
USERS = 5


@pytest.fixture(scope="module")
def server(start_module_server) -> MasterHandle:
    return start_module_server()


@pytest.fixture(scope="module")
def users_file(mail_store: MailStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "users.txt"
    accounts = [mail_store.account(MESSAGES) for _ in range(USERS)]
    path.write_text("".join(f"{a.address} {a.key}\n" for a in accounts))
    return path


def bench(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "pop3d.bench.cli", *args, "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["errors"] == {}
    assert report["error_count"] == 0
    return report


def plain(server: MasterHandle, users_file: Path, workload: str, *extra: str) -> dict[str, Any]:
    return bench(workload, "--port", str(server.port), "--users", str(users_file),
                 "-c", "2", "-p", "2", "-d", "0.7", *extra)


def test_pop3d_sends_the_corpus_byte_for_byte(server, users_file: Path) -> None:
    address, key = users_file.read_text().split()[:2]
    pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
    pop.user(address)
    pop.pass_(key)
    for number, raw in enumerate(MESSAGES, 1):
        lines = pop.retr(number)[1]
        assert b"".join(line + b"\r\n" for line in lines) == raw
    pop.quit()


@pytest.mark.parametrize("workload", ["login", "poll"])
def test_sessions_that_only_log_in_and_look(server, users_file: Path, workload: str) -> None:
    report = plain(server, users_file, workload)
    assert report["sessions"] > 0
    assert report["logins"] == report["sessions"]
    assert report["latency_ms"]["login"]["count"] == report["sessions"]
    if workload == "poll":
        assert report["latency_ms"]["UIDL"]["count"] == report["sessions"]


@pytest.mark.parametrize("tls", ["plain", "starttls", "tls"])
def test_download_gets_the_whole_corpus_each_session(server, users_file: Path,
                                                     tls: str) -> None:
    port = tls_port(server) if tls == "tls" else server.port
    report = bench("download", "--port", str(port), "--tls", tls, "--cafile",
                   str(Path(server.settings["tls"]["cert"])), "--users", str(users_file),
                   "-c", "2", "-p", "1", "-d", "0.5", "--verify")
    assert report["sessions"] > 0
    assert report["retr"] == report["sessions"] * len(MESSAGES)
    assert report["octets"] == report["sessions"] * sum(len(m) for m in MESSAGES)
    if tls != "plain":
        assert report["latency_ms"]["tls"]["count"] == report["sessions"]


def test_bulk_logs_in_once_per_client_and_retrieves_again_and_again(
        server, users_file: Path) -> None:
    report = plain(server, users_file, "bulk", "--verify")
    assert report["sessions"] == 2
    assert report["retr"] > len(MESSAGES)
    assert report["octets"] > 0
    assert report["mb_per_s"] > 0


def test_idle_opens_holds_and_noops(server, users_file: Path) -> None:
    report = bench("idle", "--port", str(tls_port(server)), "--tls", "tls", "--cafile",
                   str(Path(server.settings["tls"]["cert"])), "--users", str(users_file),
                   "-n", "20", "-c", "10", "-p", "2", "-d", "1", "--noop-interval", "0.25",
                   "--on-open", "echo all open")
    assert report["opened"] == 20
    assert report["sessions"] == 20
    assert report["latency_ms"]["NOOP"]["count"] >= 20
    assert report["on_open_output"] == "all open\n"
