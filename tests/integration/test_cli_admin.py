"""The admin commands as an operator (or an MTA) runs them: real processes, real database."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg2.extensions import make_dsn

from pop3d.auth import KeyAuthenticator
from pop3d.cli.sysexits import EX_CONFIG, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, EX_USAGE
from pop3d.ports import Credentials
from pop3d.store import Database, DbSettings, PgCredentialStore, PgMaildrop
from pop3d.store.jobs import drain

POP3D = str(Path(sys.executable).with_name("pop3d"))
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MESSAGE = (b"From: Sender <sender@example.org>\nTo: ann@example.com\nBcc: hidden@example.com\n"
           b"Subject: hello\n\nfirst line\n.\n..dots\nno final newline")


def _config(tmp_path: Path, dsn: str, name: str = "pop3d.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[server]\ntls_listen = []\n\n[database]\ndsn = "{dsn}"\n'
                    f"connect_timeout = 2\n\n[auth]\nbcrypt_cost = 4\n")
    return path


def pop3d(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    result = subprocess.run([POP3D, *args, "-c", str(config)], input=stdin,
                            capture_output=True, timeout=60, check=False)
    out = subprocess.CompletedProcess(result.args, result.returncode,
                                      result.stdout.decode(), result.stderr.decode())
    assert "Traceback" not in out.stderr
    return out


def _errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the config warning that bcrypt_cost = 4 (used for speed) causes."""
    return [line for line in result.stderr.splitlines() if not line.startswith("warning:")]


@pytest.fixture
def config(tmp_path: Path, make_database: Callable[[], str]) -> Path:
    return _config(tmp_path, make_database())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_migrate_add_user_create_key_deliver_and_log_in(config: Path, tmp_path: Path) -> None:
    first = pop3d(config, "db", "migrate")
    assert (first.returncode, first.stdout) == (0, "applied 0001_initial\n")
    assert pop3d(config, "db", "migrate").stdout == "schema is up to date\n"
    added = pop3d(config, "user", "add", "ann@example.com", "--name", "Ann")
    assert added.returncode == 0
    assert re.fullmatch(UUID + "\n", added.stdout)
    user_id = added.stdout.strip()

    created = pop3d(config, "key", "create", "ann@example.com", "--name", "laptop")
    assert created.returncode == 0
    assert re.fullmatch(r"pk_[a-z2-7]{10}_[A-Za-z0-9_-]{43}\n", created.stdout)  # key alone
    key = created.stdout.strip()
    assert key not in created.stderr
    listed = pop3d(config, "key", "list", "ann@example.com").stdout
    assert key[:13] in listed
    assert key[14:] not in listed

    message_file = tmp_path / "message.eml"
    message_file.write_bytes(MESSAGE)
    delivered = pop3d(config, "deliver", "--to", "ann@example.com", str(message_file))
    assert delivered.returncode == 0
    assert re.fullmatch(UUID + "\n", delivered.stdout)
    from_stdin = pop3d(config, "deliver", "--to", "ANN@example.com", "-", stdin=MESSAGE)
    assert from_stdin.returncode == 0

    settings = DbSettings(_dsn_of(config))
    credentials = PgCredentialStore(settings)
    principal = KeyAuthenticator(credentials, bcrypt_cost=4).authenticate(
        Credentials("ann@example.com", key, "127.0.0.1", "USER"))
    credentials.close()
    assert principal.user_id == user_id
    db = Database(settings)
    maildrop = PgMaildrop(db)
    for info in maildrop.snapshot(user_id, 10):
        sent = b"".join(drain(maildrop.open_message(user_id, info.email_id), db.complete))
        assert info.size == len(sent)
        assert sent == MESSAGE.replace(b"Bcc: hidden@example.com\n", b"").replace(
            b"\n", b"\r\n") + b"\r\n"
    db.close()


def _dsn_of(config: Path) -> str:
    match = re.search(r'dsn = "([^"]*)"', config.read_text())
    assert match is not None
    return match[1]


def test_deliver_exit_codes(config: Path, tmp_path: Path) -> None:
    pop3d(config, "db", "migrate")
    pop3d(config, "user", "add", "ann@example.com")
    unknown = pop3d(config, "deliver", "--to", "ann@example.com", "--to", "ghost@example.com",
                    stdin=MESSAGE)
    assert unknown.returncode == EX_NOUSER
    assert "ghost@example.com" in unknown.stderr
    assert unknown.stdout == ""
    assert pop3d(config, "deliver", "--to", "ann@example.com", stdin=b"").returncode == EX_DATAERR
    assert pop3d(config, "deliver", stdin=MESSAGE).returncode == EX_USAGE  # no --to
    headerless = pop3d(config, "deliver", "--to", "ann@example.com", stdin=b"just text\n")
    assert headerless.returncode == EX_DATAERR
    assert len(_errors(headerless)) == 1

    down = _config(tmp_path, f"host=127.0.0.1 port={_closed_port()} user=x dbname=x", "down.toml")
    unavailable = pop3d(down, "deliver", "--to", "ann@example.com", stdin=MESSAGE)
    assert unavailable.returncode == EX_TEMPFAIL
    assert "database unavailable" in unavailable.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nno_such_option = 1\n")
    misconfigured = pop3d(bad, "deliver", "--to", "ann@example.com", stdin=MESSAGE)
    assert misconfigured.returncode == EX_CONFIG
    assert "server.no_such_option" in misconfigured.stderr

    no_schema = _config(tmp_path, make_dsn(_dsn_of(config), dbname="postgres"), "other.toml")
    unmigrated = pop3d(no_schema, "deliver", "--to", "ann@example.com", stdin=MESSAGE)
    assert unmigrated.returncode == EX_TEMPFAIL  # a fixable fault defers, never bounces
    assert "database error" in unmigrated.stderr
    stored = pop3d(config, "user", "list").stdout
    assert stored.count("\n") == 1


def test_admin_errors_are_one_line_with_distinct_codes(config: Path) -> None:
    pop3d(config, "db", "migrate")
    pop3d(config, "user", "add", "ann@example.com")
    cases = [
        (("user", "add", "not an address"), EX_USAGE),
        (("user", "add", "ANN@example.com"), EX_DATAERR),
        (("user", "alias", "ann@example.com", "Ann@Example.com"), EX_DATAERR),
        (("user", "alias", "ghost@example.com", "g2@example.com"), EX_NOUSER),
        (("user", "disable", "ghost@example.com"), EX_NOUSER),
        (("key", "create", "ghost@example.com", "--name", "x"), EX_NOUSER),
        (("key", "create", "ann@example.com", "--name", "x", "--scope", "Bad Scope"), EX_USAGE),
        (("key", "revoke", "pk_nonexistent"), 66),
    ]
    for args, code in cases:
        result = pop3d(config, *args)
        assert result.returncode == code, (args, result.stderr)
        assert result.stdout == ""
        assert len(_errors(result)) == 1, result.stderr


def test_user_and_key_management(config: Path) -> None:
    pop3d(config, "db", "migrate")
    pop3d(config, "user", "add", "ann@example.com", "--name", "Ann")
    assert pop3d(config, "user", "alias", "ann@example.com", "annie@example.com").returncode == 0
    assert pop3d(config, "user", "disable", "annie@example.com").returncode == 0
    line = pop3d(config, "user", "list").stdout.rstrip("\n").split("\t")
    assert line[0] == "ann@example.com"
    assert line[1].startswith("disabled ")
    assert line[3:] == ["Ann", "annie@example.com"]
    created = pop3d(config, "key", "create", "ann@example.com", "--name", "k",
                    "--scope", "pop3", "--scope", "imap")
    key = created.stdout.strip()
    listed = pop3d(config, "key", "list", "ann@example.com").stdout.split("\t")
    assert listed[1:4] == [key[:13], "k", "pop3,imap"]
    assert pop3d(config, "key", "revoke", listed[0]).returncode == 0
    assert "revoked" in pop3d(config, "key", "list", "ann@example.com").stdout.split("\t")[6]


def test_two_concurrent_migrate_processes(config: Path) -> None:
    processes = [subprocess.Popen([POP3D, "db", "migrate", "-c", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert sorted(out.decode() for out, _ in outputs) == [
        "applied 0001_initial\n", "schema is up to date\n"]
