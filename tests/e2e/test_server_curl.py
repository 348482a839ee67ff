"""curl as a client: pop3:// LIST and RETR, pop3s:// (implicit TLS) and --ssl-reqd (STLS)."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import MasterHandle
from .server_fixtures import UNTRUSTED_SOURCE, Account, MailStore, as_sent, message, tls_port

pytestmark = pytest.mark.e2e

CURL_LOGIN_DENIED = 67  # curl(1) exit code: "the remote server denied curl to login"
RAWS = [
    message("curl one", b"line\r\n.dot\r\n..two dots\r\n.\r\nno final newline"),
    message("curl two", b"bare\nline\nfeeds\n"),
    message("curl three", "caf\u00e9 8-bit\r\n".encode() + bytes(range(128, 256)) + b"\r\n"),
]


@pytest.fixture(scope="module")
def master(start_module_server) -> MasterHandle:
    return start_module_server()


@pytest.fixture(scope="module")
def account(mail_store: MailStore) -> Account:
    return mail_store.account(RAWS)


def curl(account: Account, url: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-s", "--max-time", "20", "-u", f"{account.address}:{account.key}", *options,
         url], capture_output=True, timeout=30, check=False)


def test_list(master, account):
    result = curl(account, f"pop3://127.0.0.1:{master.port}/")
    assert result.returncode == 0, result.stderr
    expected = "".join(f"{n} {len(as_sent(raw))}\r\n" for n, raw in enumerate(RAWS, 1))
    assert result.stdout == expected.encode()


@pytest.mark.parametrize("number", [1, 2, 3])
def test_retr(master, account, number):
    result = curl(account, f"pop3://127.0.0.1:{master.port}/{number}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == as_sent(RAWS[number - 1])


def test_retr_over_implicit_tls(master, account, services):
    result = curl(account, f"pop3s://localhost:{tls_port(master)}/1",
                  "--cacert", services["POP3D_TEST_CERT"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == as_sent(RAWS[0])


def test_retr_over_stls_from_an_untrusted_address(master, account, services):
    result = curl(account, f"pop3://localhost:{master.port}/3", "--ssl-reqd", "--cacert",
                  services["POP3D_TEST_CERT"], "--interface", UNTRUSTED_SOURCE, "-v")
    assert result.returncode == 0, result.stderr
    assert b"> STLS" in result.stderr
    assert result.stdout == as_sent(RAWS[2])


def test_no_login_without_tls_from_an_untrusted_address(master, account):
    result = curl(account, f"pop3://127.0.0.1:{master.port}/1",
                  "--interface", UNTRUSTED_SOURCE)
    assert result.returncode == CURL_LOGIN_DENIED
    assert result.stdout == b""
