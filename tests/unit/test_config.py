"""Configuration files: good ones load, bad ones name the file, the key and the problem."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pop3d import config
from pop3d.cli import main
from pop3d.cli.sysexits import EX_CONFIG
from pop3d.config import SECTIONS, Address, Config, ConfigError, ConfigProblem, load

ROOT = Path(__file__).resolve().parents[2]
POP3D = str(Path(sys.executable).with_name("pop3d"))
MINIMAL = '[server]\ntls_listen = []\n'


def _write(tmp_path: Path, text: str, name: str = "pop3d.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return caught.value.problems


@pytest.fixture
def certificate(services: dict[str, str]) -> tuple[str, str]:
    return services["POP3D_TEST_CERT"], services["POP3D_TEST_KEY"]


def test_dev_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # its paths are relative to the project root
    loaded, _ = load("conf/dev.toml")
    assert loaded.server.listen == (Address("127.0.0.1", 11110),)
    assert loaded.database.dsn.startswith("host=127.0.0.1")
    assert loaded.tls_enabled


FULL = """
[server]
name = "pop.example.net"
listen = ["127.0.0.1:1110", "[::1]:1110"]
tls_listen = ["127.0.0.1:1995"]
workers = 3
worker_connections = 100
user = ""
group = ""
pidfile = "{tmp}/pop3d.pid"
graceful_timeout = 12.5
worker_timeout = 20
proxy_protocol = true
proxy_timeout = 2
backlog = 64
proxy_networks = ["10.0.0.0/8", "2001:db8::/32"]
plaintext_networks = ["10.1.0.0/16"]

[tls]
cert = "{cert}"
key = "{key}"
min_version = "TLSv1.3"
handshake_timeout = 5

[limits]
line_length = 4096
login_timeout = 30
idle_timeout = 900
max_connections_per_user = 2
message_cache_mb = 8
max_messages_per_session = 500
max_bad_commands = 3
login_deadline = 90
max_connections_per_address = 20
max_tls_handshakes_per_address = 4
ipv6_prefix = 56

[database]
dsn = "host=db.example.net dbname=mail"
connect_timeout = 3
statement_timeout = 10
connections = 6

[memcached]
servers = ["10.0.0.5:11211", "[2001:db8::5]:11211"]
timeout = 0.25
registry_failure = "closed"
retry_after = 5
slot_ttl = 30

[auth]
secret_file = "{tmp}/secret"
scope = "pop"
cache_ttl = 10
failure_delay = 1.5
max_failures = 3
lockout = 60
verify_budget = 100
verify_window = 30
bcrypt_cost = 12
allow_plaintext = false
threads = 8

[statsd]
enabled = false
host = "stats.example.net"
port = 9125
prefix = "mail.pop3"

[tracing]
enabled = true
service_name = "pop3d-eu"

[logging]
level = "debug"
file = "{tmp}/pop3d.log"
"""


def test_full_example_with_every_option(tmp_path: Path, certificate: tuple[str, str]) -> None:
    (tmp_path / "secret").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "secret").chmod(0o640)
    text = FULL.format(tmp=tmp_path, cert=certificate[0], key=certificate[1])
    for section, cls in SECTIONS.items():  # the example really sets every option
        for option in dataclasses.fields(cls):
            assert re.search(rf"^\[{section}\]$(?:\n(?!\[).*)*\n{option.name} = ", text,
                             re.MULTILINE), f"{section}.{option.name}"
    loaded, warnings = load(_write(tmp_path, text))
    assert warnings == []
    assert loaded.server.listen == (Address("127.0.0.1", 1110), Address("::1", 1110))
    assert loaded.server.proxy_networks[1] == ipaddress.ip_network("2001:db8::/32")
    assert loaded.server.plaintext_networks == (ipaddress.ip_network("10.1.0.0/16"),)
    assert loaded.limits.ipv6_prefix == 56
    assert loaded.server.graceful_timeout == 12.5
    assert loaded.limits.idle_timeout == 900.0
    assert loaded.memcached.servers[1] == Address("2001:db8::5", 11211)
    assert (loaded.memcached.retry_after, loaded.memcached.slot_ttl) == (5.0, 30)
    assert loaded.tracing == config.TracingConfig(enabled=True, service_name="pop3d-eu")
    assert loaded.auth.scope == "pop"
    assert config.read_secret(loaded) == b"0123456789abcdef0123456789abcdef"
    assert loaded.logging.level == "debug"


def test_production_example_documents_every_option(tmp_path: Path,
                                                   certificate: tuple[str, str]) -> None:
    text = (ROOT / "conf" / "pop3d.toml").read_text()
    for section, cls in SECTIONS.items():
        for option in dataclasses.fields(cls):
            assert re.search(rf"^#?\s*{option.name}\s*=", text, re.MULTILINE), (
                f"{section}.{option.name} is not in conf/pop3d.toml")
    text = re.sub(r'^cert = ".*"$', f'cert = "{certificate[0]}"', text, flags=re.MULTILINE)
    text = re.sub(r'^key = ".*"$', f'key = "{certificate[1]}"', text, flags=re.MULTILINE)
    loaded, _ = load(_write(tmp_path, text))
    assert isinstance(loaded, Config)


def test_minimal_file_gets_the_defaults(tmp_path: Path) -> None:
    loaded, warnings = load(_write(tmp_path, MINIMAL))
    assert loaded.limits == config.LimitsConfig()
    assert loaded.auth.bcrypt_cost == 10
    assert warnings == []


BAD = [
    ("unknown key", "[server]\nbogus = 1\n", "server.bogus", "unknown key"),
    ("unknown section", "[nonsense]\na = 1\n", "nonsense", "unknown section"),
    ("wrong type", '[server]\nworkers = "four"\n', "server.workers",
     "expected an integer, got a string"),
    ("wrong list type", '[server]\nlisten = "0.0.0.0:110"\n', "server.listen",
     "expected a list, got a string"),
    ("bool for int", "[limits]\nline_length = true\n", "limits.line_length",
     "expected an integer, got a boolean"),
    ("port out of range", '[server]\nlisten = ["0.0.0.0:70000"]\n', "server.listen[0]",
     "port must be 1-65535"),
    ("statsd port", "[statsd]\nport = 0\n", "statsd.port", "must be 1-65535"),
    ("negative timeout", "[limits]\nlogin_timeout = -5\n", "limits.login_timeout",
     "must be at least 1, got -5"),
    ("negative statement timeout", "[database]\nstatement_timeout = -1\n",
     "database.statement_timeout", "must be above 0 and below server.worker_timeout (30 s)"),
    ("no statement timeout", "[database]\nstatement_timeout = 0\n",
     "database.statement_timeout", "must be above 0"),
    ("no database connections", "[database]\nconnections = 0\n",
     "database.connections", "must be at least 1"),
    ("statement timeout over the heartbeat", "[server]\nworker_timeout = 5\n"
     "[database]\nstatement_timeout = 5\n", "database.statement_timeout",
     "below server.worker_timeout (5 s), got 5"),
    ("slot ttl", "[memcached]\nslot_ttl = 1\n", "memcached.slot_ttl", "must be at least 2, got 1"),
    ("line length", "[limits]\nline_length = 100000\n", "limits.line_length",
     "must be at most 65536"),
    ("control character in the name", '[server]\nname = "mail\\u0007"\n', "server.name",
     "printable ASCII"),
    ("bad TLS version", '[tls]\nmin_version = "TLSv1.0"\n', "tls.min_version",
     "must be one of TLSv1.2, TLSv1.3"),
    ("bad network", '[server]\nproxy_networks = ["10.0.0.0/33"]\n',
     "server.proxy_networks[0]", "is not a network"),
    ("bad deprecated network", '[server]\ntrusted_networks = ["10.0.0.0/33"]\n',
     "server.trusted_networks[0]", "is not a network"),
    ("ipv6 prefix", "[limits]\nipv6_prefix = 0\n", "limits.ipv6_prefix", "must be 1-128"),
    ("bad log level", '[logging]\nlevel = "loud"\n', "logging.level", "must be one of"),
    ("bad registry mode", '[memcached]\nregistry_failure = "maybe"\n',
     "memcached.registry_failure", 'must be "open" or "closed"'),
    ("bcrypt cost", "[auth]\nbcrypt_cost = 40\n", "auth.bcrypt_cost", "must be 4-16, got 40"),
    ("empty dsn", '[database]\ndsn = " "\n', "database.dsn", "must not be empty"),
]


@pytest.mark.parametrize(("text", "key", "problem"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_values_name_file_key_and_problem(tmp_path: Path, text: str, key: str,
                                              problem: str) -> None:
    # MINIMAL's [server] table comes first; server options go into it.
    path = _write(tmp_path, MINIMAL + text.removeprefix("[server]\n"))
    found = [p for p in _problems(path) if p.key == key]
    assert found, _problems(path)
    assert found[0].file == str(path)
    assert problem in found[0].problem


def test_missing_certificate_file_with_tls_listen(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\ntls_listen = ["0.0.0.0:995"]\n[tls]\n'
                  f'cert = "{tmp_path}/missing.pem"\nkey = "{tmp_path}/missing.key"\n')
    problems = {p.key: p.problem for p in _problems(path)}
    assert problems["tls.cert"] == f"file not found: {tmp_path}/missing.pem"
    assert problems["tls.key"] == f"file not found: {tmp_path}/missing.key"


def test_a_broken_certificate_is_reported_beside_other_problems(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    path = _write(tmp_path, f'[server]\nworkrs = 2\n[tls]\ncert = "{tmp_path}/cert.pem"\n'
                  f'key = "{tmp_path}/key.pem"\n')
    problems = {p.key: p.problem for p in _problems(path)}
    assert problems["server.workrs"] == "unknown key"
    assert problems["tls.cert"].startswith("cannot load certificate and key")


def test_tls_listen_without_certificate(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, '[server]\ntls_listen = ["0.0.0.0:995"]\n'))
    assert ConfigProblem(str(tmp_path / "pop3d.toml"), "tls.cert",
                         "required when server.tls_listen is set") in problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "bogus = 1\n[limits]\nidle_timeout = -1\n[x]\n")
    assert {p.key for p in _problems(path)} == {"server.bogus", "limits.idle_timeout", "x"}


def test_unreadable_files(tmp_path: Path) -> None:
    [missing] = _problems(tmp_path / "absent.toml")
    assert (missing.key, missing.problem) == ("-", "file not found")
    [garbled] = _problems(_write(tmp_path, "[server\nname = 1\n"))
    assert garbled.problem.startswith("not valid TOML")


def test_short_idle_timeout_is_a_warning(tmp_path: Path) -> None:
    _, warnings = load(_write(tmp_path, MINIMAL + "[limits]\nidle_timeout = 300\n"))
    assert [(w.key, w.problem) for w in warnings] == [
        ("limits.idle_timeout", "300 s is below RFC 1939's 600 s minimum")]


def test_check_config_command(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _write(tmp_path, MINIMAL, "good.toml")
    result = runner.invoke(main, ["check-config", "-c", str(good)])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "ok\n", "")
    bad = _write(tmp_path, MINIMAL + "bogus = 1\n[limits]\nidle_timeout = -1\n", "bad.toml")
    result = runner.invoke(main, ["check-config", "-c", str(bad)])
    assert result.exit_code == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {bad}: server.bogus: unknown key",
        f"error: {bad}: limits.idle_timeout: must be at least 1, got -1"]
    warned = _write(tmp_path, MINIMAL + "[limits]\nidle_timeout = 60\n", "warned.toml")
    result = runner.invoke(main, ["check-config"], env={"POP3D_CONFIG": str(warned)})
    assert result.exit_code == 0
    assert "warning:" in result.stderr
    assert "limits.idle_timeout" in result.stderr


def test_check_config_in_a_real_process(tmp_path: Path) -> None:
    good = _write(tmp_path, MINIMAL, "good.toml")
    bad = _write(tmp_path, "[server]\nworkers = -1\n", "bad.toml")
    ok = subprocess.run([POP3D, "check-config", "-c", str(good)], capture_output=True,
                        text=True, check=False)
    assert (ok.returncode, ok.stdout) == (0, "ok\n")
    failed = subprocess.run([POP3D, "check-config", "-c", str(bad)], capture_output=True,
                            text=True, check=False)
    assert failed.returncode == EX_CONFIG
    assert f"{bad}: server.workers: must be at least 0, got -1" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_without_a_secret_file_every_caller_gets_the_same_start_secret(tmp_path: Path) -> None:
    loaded, _ = load(_write(tmp_path, "[server]\ntls_listen = []\n[auth]\nsecret_file = \"\"\n"))
    first = config.read_secret(loaded)
    assert len(first) == 32
    assert config.read_secret(loaded) == first


def test_trusted_networks_still_works_as_both_with_a_deprecation_warning(tmp_path: Path) -> None:
    loaded, warnings = load(_write(tmp_path, MINIMAL + 'trusted_networks = ["10.0.0.0/8"]\n'))
    assert loaded.server.proxy_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert loaded.server.plaintext_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert [(w.key, w.problem) for w in warnings] == [(
        "server.trusted_networks",
        "deprecated: use proxy_networks and plaintext_networks instead (read as both)")]


def test_the_new_network_options_win_over_trusted_networks(tmp_path: Path) -> None:
    loaded, _ = load(_write(tmp_path, MINIMAL + 'trusted_networks = ["10.0.0.0/8"]\n'
                                                'proxy_networks = ["192.0.2.0/24"]\n'))
    assert loaded.server.proxy_networks == (ipaddress.ip_network("192.0.2.0/24"),)
    assert loaded.server.plaintext_networks == (ipaddress.ip_network("10.0.0.0/8"),)


def test_the_defaults_trust_loopback_for_both() -> None:
    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.ServerConfig().proxy_networks == loopback
    assert config.ServerConfig().plaintext_networks == loopback
    assert config.in_networks("127.0.0.5", loopback)
    assert config.in_networks("::ffff:127.0.0.5", loopback)
    assert not config.in_networks("192.0.2.1", loopback)
    assert not config.in_networks("garbage", loopback)


def _with_secret(tmp_path: Path, content: bytes, mode: int) -> Path:
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    secret.chmod(mode)
    return _write(tmp_path, MINIMAL + f'[auth]\nsecret_file = "{secret}"\n')


@pytest.mark.parametrize(("content", "mode", "problem"), [
    (b"0123456789abcdef" * 2, 0o644, "is readable or writable by every user (mode 0644): "
                                     "chmod o-rwx"),
    (b"0123456789abcdef" * 2, 0o602, "(mode 0602)"),
    (b"short secret\n", 0o600, "holds 12 octets, fewer than 32: e.g. head -c 32 /dev/urandom"),
    (b"  " + b"x" * 31 + b"\n", 0o640, "holds 31 octets"),  # text: the whitespace goes
])
def test_a_weak_or_exposed_secret_file_is_an_error_naming_it(
        tmp_path: Path, content: bytes, mode: int, problem: str) -> None:
    (found,) = [p for p in _problems(_with_secret(tmp_path, content, mode))
                if p.key == "auth.secret_file"]
    assert found.problem.startswith(str(tmp_path / "secret") + " ")
    assert problem in found.problem


def test_a_binary_secret_is_used_as_stored(tmp_path: Path) -> None:
    raw = bytes(range(1, 31)) + b"\n\n"  # 32 random-looking octets that end in newlines
    loaded, _ = load(_with_secret(tmp_path, raw, 0o640))
    assert config.read_secret(loaded) == raw
    loaded, _ = load(_with_secret(tmp_path, b"ab" * 16 + b"\n", 0o600))
    assert config.read_secret(loaded) == b"ab" * 16  # text: the newline is not part of it


def test_a_missing_secret_file_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + f'[auth]\nsecret_file = "{tmp_path / "nope"}"\n')
    assert [(p.key, p.problem) for p in _problems(path)] == [
        ("auth.secret_file", f"{tmp_path / 'nope'}: No such file or directory")]
