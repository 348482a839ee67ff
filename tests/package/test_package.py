"""The Debian package from install to purge, in order: install it with apt-get, configure it
for the test database as README.Debian says, run /usr/bin/pop3d the way pop3d.service makes
systemd run it (user pop3d, CAP_NET_BIND_SERVICE only, Type=notify), log in over STLS, reload
it, rotate its log, match its failed logins with the fail2ban filter, stop it, and purge the
package, which must leave nothing behind.  The tests share one installation and run in file
order.
"""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.conftest import wait_until

from .conftest import (
    CONFIG,
    Package,
    add_user,
    as_pop3d,
    fail2ban_matches,
    free_low_port,
    installed_package,
    pop3_login,
    retrieve,
    run,
    set_options,
)
from .service import UNIT_PATH, Service, Unit, service_section

SNAPSHOT_TREES = ("/etc", "/usr", "/var/lib", "/var/log", "/opt", "/srv")
# apt's and dpkg's records of what they did, not files of the package.
BOOKKEEPING = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/log/apt/", "/var/log/dpkg.log")
LOG_FILE = Path("/var/log/pop3d/pop3d.log")
CAP_NET_BIND_SERVICE = 10  # linux/capability.h


def snapshot() -> set[str]:
    """Every path under the trees a package may write to."""
    paths: set[str] = set()
    for top in SNAPSHOT_TREES:
        for directory, dirs, files in os.walk(top):
            paths.update(os.path.join(directory, name) for name in dirs + files)
    return {path for path in paths if not path.startswith(BOOKKEEPING)}


@dataclass
class Installation:
    package: Package
    before: set[str]
    ssl_cert_members: list[str]


@pytest.fixture(scope="module")
def installation(deb: Path) -> Iterator[Installation]:
    """The package installed; what the machine held before, to compare after the purge."""
    package = Package(deb)
    package.install_dependencies()
    installation = Installation(package, snapshot(), grp.getgrnam("ssl-cert").gr_mem)
    with installed_package(deb):
        yield installation


@dataclass
class Configured:
    port: int
    tls_port: int
    address: str
    key: str
    message: bytes


@pytest.fixture(scope="module")
def configured(installation: Installation, make_database: Callable[[], str],
               services: dict[str, str]) -> Configured:
    """/etc/pop3d.toml filled in for the test database, privileged loopback ports and the
    test memcached (the snakeoil certificate and the secret stay as installed); the schema,
    a user with a key and one message, all made with the installed commands as pop3d."""
    port = free_low_port()
    tls_port = free_low_port(above=port)
    set_options(CONFIG, {
        "server": {"name": '"pop3d.test"', "listen": f'["127.0.0.1:{port}"]',
                   "tls_listen": f'["127.0.0.1:{tls_port}"]', "workers": "2",
                   "graceful_timeout": "5"},
        "database": {"dsn": f'"{make_database()}"'},
        "memcached": {"servers": f'["{services["POP3D_TEST_MEMCACHED"]}"]'},
        # The other tests fail logins from 127.0.0.1 on the same memcached: no lockout.
        "auth": {"failure_delay": "0.2", "bcrypt_cost": "4", "max_failures": "1000000"},
        "statsd": {"enabled": "false"},
        "logging": {"file": f'"{LOG_FILE}"'},
    })
    assert as_pop3d("db", "migrate").returncode == 0
    address = f"alice-{uuid.uuid4().hex[:8]}@pop3d.test"
    key = add_user(address)
    message = (f"From: Bob <bob@example.org>\r\nTo: {address}\r\nSubject: from the package\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nHello.\r\n.dot\r\n"
               ).encode()
    delivered = as_pop3d("deliver", "--to", address, stdin=message)
    assert delivered.returncode == 0, delivered.stderr
    return Configured(port, tls_port, address, key, message)


@pytest.fixture(scope="module")
def service(configured: Configured, shared_tmp: Path) -> Iterator[Service]:
    running = Service(Unit.installed(), shared_tmp)
    running.start()
    yield running
    running.close()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.append(int(entry.name))
    return found


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_lintian_finds_no_error_or_warning(deb: Path) -> None:
    (changes,) = deb.parent.glob("pop3d_*.changes")
    result = run("lintian", "--fail-on", "error,warning", str(changes), check=False)
    assert result.returncode == 0, result.stdout


# --- installed -----------------------------------------------------------------------------


def test_install_creates_the_account_the_secret_and_the_config(installation: Installation,
                                                               ) -> None:
    account = pwd.getpwnam("pop3d")
    group = grp.getgrnam("pop3d")
    assert account.pw_gid == group.gr_gid
    assert account.pw_shell == "/usr/sbin/nologin"
    assert "pop3d" in grp.getgrnam("ssl-cert").gr_mem  # reads the snakeoil key
    secret = Path("/etc/pop3d/secret")
    info = secret.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, group.gr_gid, 0o640)
    assert re.fullmatch(r"[0-9a-f]{64}", secret.read_text())  # 32 random bytes
    info = CONFIG.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, group.gr_gid, 0o640)
    assert 'secret_file = "/etc/pop3d/secret"' in CONFIG.read_text()
    # Installed, not enabled: the database comes first.
    assert not Path("/etc/systemd/system/multi-user.target.wants/pop3d.service").exists()


def test_the_console_script_needs_no_pypi_distribution(installation: Installation) -> None:
    probe = ("import importlib.metadata as m\n"
             "try:\n    m.distribution('psycopg2-binary')\nexcept m.PackageNotFoundError:\n"
             "    print('absent')\nimport psycopg2\nprint(psycopg2.__file__)\n")
    found = run("/usr/bin/python3", "-c", probe).stdout.split()
    assert found[0] == "absent"  # so nothing below can lean on the PyPI wheel
    assert found[1].startswith("/usr/lib/python3/dist-packages/")  # python3-psycopg2
    assert run("/usr/bin/pop3d", "--version").stdout.strip() == "pop3d, version 0.1.0"


def test_the_unit_file_verifies(installation: Installation) -> None:
    result = run("systemd-analyze", "verify", str(UNIT_PATH), check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    unit = service_section(UNIT_PATH.read_text())
    assert unit["ExecStart"] == ["/usr/bin/pop3d start -c /etc/pop3d.toml"]
    assert unit["Type"] == ["notify"]


def test_bash_completion_offers_the_commands(installation: Installation) -> None:
    script = ("source /usr/share/bash-completion/completions/pop3d\n"
              "COMP_WORDS=(pop3d st); COMP_CWORD=1; COMPREPLY=()\n"
              "_pop3d_completion pop3d; echo \"${COMPREPLY[*]}\"\n"
              "COMP_WORDS=(pop3d stop --); COMP_CWORD=2; COMPREPLY=()\n"
              "_pop3d_completion pop3d; echo \"${COMPREPLY[*]}\"\n")
    lines = run("bash", "-c", script).stdout.splitlines()
    assert lines[0].split() == ["start", "status", "stop"]
    assert {"--now", "--config"} <= set(lines[1].split())


# --- configured and running ----------------------------------------------------------------


def test_the_filled_in_configuration_checks_ok(configured: Configured) -> None:
    result = as_pop3d("check-config")
    assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr


def test_reinstalling_keeps_the_operators_configuration_and_secret(
        installation: Installation, configured: Configured) -> None:
    kept = {path: (path.read_bytes(), path.stat().st_mode, path.stat().st_gid)
            for path in (CONFIG, Path("/etc/pop3d/secret"), Path("/var/lib/pop3d/created"))}
    installation.package.install(again=True)
    assert {path: (path.read_bytes(), path.stat().st_mode, path.stat().st_gid)
            for path in kept} == kept


def test_without_the_units_capability_the_ports_cannot_be_bound(configured: Configured,
                                                                 shared_tmp: Path) -> None:
    (shared_tmp / "no-capability").mkdir(mode=0o755)
    attempt = Service(Unit.installed(), shared_tmp / "no-capability")
    try:
        code = attempt.launch(capabilities=False).wait(30)
    finally:
        attempt.close()
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{configured.port}: Permission denied" in attempt.journal()


def test_the_service_runs_as_pop3d_with_one_capability(service: Service,
                                                       configured: Configured) -> None:
    account = pwd.getpwnam("pop3d")
    workers = children(service.pid)
    assert len(workers) == 2
    for pid in (service.pid, *workers):
        status = proc_status(pid)
        assert status["Uid"].split() == [str(account.pw_uid)] * 4
        assert int(status["CapEff"], 16) == 1 << CAP_NET_BIND_SERVICE
        assert int(status["CapBnd"], 16) == 1 << CAP_NET_BIND_SERVICE
        assert status["NoNewPrivs"] == "1"
    assert Path("/run/pop3d/pop3d.pid").read_text().strip() == str(service.pid)


def test_a_login_over_stls_retrieves_the_delivered_message(service: Service,
                                                           configured: Configured) -> None:
    with pop3_login(configured.port, configured.address, configured.key) as client:
        count, size = client.stat()
        assert (count, size) == (1, len(configured.message))
        assert retrieve(client, 1) == configured.message
    with pop3_login(configured.tls_port, configured.address, configured.key,
                    implicit_tls=True) as client:
        assert retrieve(client, 1) == configured.message


def test_exec_reload_starts_new_workers_that_serve(service: Service,
                                                   configured: Configured) -> None:
    old_workers = set(children(service.pid))
    service.reload()
    status = run("/usr/bin/pop3d", "status").stdout
    assert "generation 2" in status
    assert "last reload: ok" in status

    def only_new_workers() -> set[int]:
        workers = set(children(service.pid))
        return set() if workers & old_workers else workers

    assert len(wait_until(only_new_workers, 15, "the old workers to retire")) == 2
    with pop3_login(configured.port, configured.address, configured.key) as client:
        assert client.stat()[0] == 1


def test_logrotate_moves_the_log_and_usr1_reopens_it(service: Service, configured: Configured,
                                                     shared_tmp: Path) -> None:
    run("logrotate", "-f", "-s", str(shared_tmp / "logrotate.state"), "/etc/logrotate.d/pop3d")
    rotated = LOG_FILE.with_name("pop3d.log.1")
    assert "login user=" in rotated.read_text()
    info = LOG_FILE.stat()
    assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name,
            info.st_mode & 0o777) == ("pop3d", "adm", 0o640)
    with pop3_login(configured.port, configured.address, configured.key) as client:
        client.stat()
    wait_until(lambda: f"login user={configured.address} " in LOG_FILE.read_text(), 10,
               "the login in the new log file")


def test_the_fail2ban_filter_matches_the_failed_logins(service: Service, configured: Configured,
                                                       shared_tmp: Path) -> None:
    # A wrong key for a known address, and a name pop3d logs as "(not an address)".
    logins = [configured.address, configured.address, "not-an-address"]
    for login in logins:
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"), \
                pop3_login(configured.port, login, "pk_wrong_key"):
            pass
    wait_until(lambda: LOG_FILE.read_text().count("login failed") == len(logins), 10,
               "the failed logins in the log")
    text = LOG_FILE.read_text()
    assert "user=(not an address)" in text
    assert "login user=" in text  # a successful login, which must not match
    assert fail2ban_matches(LOG_FILE) == (len(logins), {"127.0.0.1"})
    # The same lines as syslog (or the journal forwarded to it) shows them.
    syslog = shared_tmp / "syslog"
    syslog.write_text("".join(f"Dec  4 03:50:05 mailhost pop3d[{service.pid}]: {line}\n"
                              for line in text.splitlines()))
    assert fail2ban_matches(syslog) == (len(logins), {"127.0.0.1"})


def test_the_fail2ban_jail_uses_the_filter_on_the_journal(installation: Installation,
                                                          shared_tmp: Path) -> None:
    config = shared_tmp / "fail2ban"
    shutil.copytree("/etc/fail2ban", config)
    jail = config / "jail.d" / "pop3d.conf"
    jail.write_text(jail.read_text().replace("enabled = false", "enabled = true"))
    dump = run("fail2ban-client", "-c", str(config), "-d").stdout
    assert "['add', 'pop3d', 'systemd']" in dump
    assert "['set', 'pop3d', 'addjournalmatch', '_SYSTEMD_UNIT=pop3d.service']" in dump
    assert "['set', 'pop3d', 'maxretry', 5]" in dump
    assert re.search(r"\['set', 'pop3d', 'addfailregex', '.*login failed", dump)


def test_term_stops_the_service(service: Service) -> None:
    assert service.stop() == 0
    service.notify.wait_for(service.pid, "STOPPING", "1", timeout=5)
    assert service.left_at_stop == []  # pidfile and status file removed by pop3d itself


# --- purged --------------------------------------------------------------------------------


def test_purge_leaves_nothing_it_created(installation: Installation) -> None:
    installation.package.purge()
    after = snapshot()
    assert sorted(after - installation.before) == []
    assert sorted(installation.before - after) == []
    for database in ("passwd", "group"):
        assert run("getent", database, "pop3d", check=False).returncode == 2
    assert grp.getgrnam("ssl-cert").gr_mem == installation.ssl_cert_members
    assert subprocess.run(["dpkg-query", "-W", "pop3d"], capture_output=True,
                          check=False).returncode != 0
