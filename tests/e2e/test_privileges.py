"""The real server started as root with ``server.user = "nobody"``: what the service user must be
able to open, logs across HUP and USR1, and ``start --daemon`` waiting for the workers.

Everything lives in a directory nobody can reach (pytest's temporary tree is root-only), and the
Python installation running the tests may not be readable by nobody at all (a pyenv under
/root): the worker module must be imported before the master drops privileges.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import MasterHandle, Settings, merge, wait_until
from .server_fixtures import Client, MailStore, message, server_settings

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")]

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
NOGROUP = "nogroup"
STARTS_AT_ONCE = 10.0  # seconds: a refused start never waits for a worker


def nobody_ids() -> tuple[int, int]:
    assert NOBODY is not None
    return NOBODY.pw_uid, grp.getgrnam(NOGROUP).gr_gid


@pytest.fixture
def as_nobody(world_readable_dir: Path, services: dict[str, str], mail_store: MailStore,
              ) -> Callable[[Settings | None], Settings]:
    """Settings for the real worker running as nobody:nogroup, with a copy of the test
    certificate whose key nobody reads through its group (as with Debian's ssl-cert)."""
    cert = world_readable_dir / "cert.pem"
    key = world_readable_dir / "key.pem"
    shutil.copyfile(services["POP3D_TEST_CERT"], cert)
    shutil.copyfile(services["POP3D_TEST_KEY"], key)
    cert.chmod(0o644)
    key.chmod(0o640)
    os.chown(key, 0, nobody_ids()[1])

    def settings(overrides: Settings | None = None) -> Settings:
        base = server_settings(mail_store.dsn, services, {
            "server": {"user": "nobody", "group": NOGROUP, "graceful_timeout": 10},
            "tls": {"cert": str(cert), "key": str(key)},
            "database": {"statement_timeout": 2},
        })
        return merge(base, overrides)

    return settings


def root_only(path: Path, text: str = "x") -> Path:
    """A file only root may read (0600)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def stderr_lines(master: MasterHandle) -> list[str]:
    return master.stderr_path.read_text().splitlines()


def process_uids(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:3]


def open_on(pid: int, path: Path) -> bool:
    """Whether ``pid`` holds ``path`` (the file now at that path) open."""
    inode = path.stat().st_ino
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path) and fd.stat().st_ino == inode:
                return True
        except OSError:
            continue
    return False


def no_deaths(text: str) -> None:
    for sign in ("crashed", "was killed", "failed to boot", "the master failed",
                 "exited with code 70", "Traceback"):
        assert sign not in text, text


# --- logs: HUP and USR1 ----------------------------------------------------------------------


def test_hup_and_usr1_with_a_log_file_keep_every_process_serving(
        start_master, world_readable_dir, as_nobody, mail_store):
    logs = world_readable_dir / "log"  # like /var/log/pop3d: the service user's directory
    logs.mkdir()
    os.chown(logs, *nobody_ids())
    log_file = root_only(logs / "pop3d.log", "")
    log_file.chmod(0o640)
    master = start_master(as_nobody({"logging": {"file": str(log_file)}}),
                          directory=world_readable_dir)
    info = log_file.stat()
    assert (info.st_uid, info.st_gid) == nobody_ids()  # handed over before the drop
    assert stat.S_IMODE(info.st_mode) == 0o640  # with its mode kept
    for pid in [master.pid, *master.worker_pids()]:
        assert process_uids(pid) == [str(nobody_ids()[0])] * 3
    account = mail_store.account([message("one")])

    with Client.greeted(master.port) as client:
        client.login(account)
        reloaded = master.cli("reload")
        assert reloaded.returncode == 0, reloaded.stderr + master.log_text()
        assert client.command("NOOP") == b"+OK\r\n"  # the retiring worker still answers
        with Client.greeted(master.port) as other:
            other.login(account)
        assert client.command("QUIT").startswith(b"+OK")
    assert master.process.poll() is None
    wait_until(lambda: len(master.workers(serving=False)) == 2, 15.0, "the old generation to go")
    workers = master.worker_pids()

    rotated = logs / "pop3d.log.1"
    log_file.rename(rotated)
    master.send_signal(signal.SIGUSR1)
    wait_until(lambda: log_file.exists() and all(open_on(pid, log_file)
                                                 for pid in [master.pid, *workers]),
               5.0, "the master and every worker to reopen the log file")
    assert "SIGUSR1: reopened log files" in log_file.read_text()
    with Client.greeted(master.port) as client:
        client.login(account)
        assert client.command("QUIT").startswith(b"+OK")
    assert master.worker_pids() == workers
    assert master.status()["generation"] == 2
    no_deaths(rotated.read_text() + log_file.read_text())


def test_usr1_when_the_log_cannot_be_reopened_keeps_the_old_file_and_every_process(
        start_master, world_readable_dir, as_nobody, mail_store):
    master = start_master(as_nobody(), directory=world_readable_dir)
    workers = master.worker_pids()
    log_file = master.log_path  # in a directory root owns: nobody cannot create it again
    rotated = log_file.with_name("pop3d.log.1")
    log_file.rename(rotated)
    master.send_signal(signal.SIGUSR1)

    def complaints() -> set[int]:
        return {pid for pid in [master.pid, *workers]
                if f"[{pid}] ERROR pop3d.log: cannot reopen the log file {log_file}: Permission "
                   "denied; still logging to the file opened before" in rotated.read_text()}

    wait_until(lambda: complaints() == {master.pid, *workers}, 5.0,
               "every process to say it keeps its log file")
    assert not log_file.exists()
    with Client.greeted(master.port) as client:
        client.login(mail_store.account())
        assert client.command("QUIT").startswith(b"+OK")
    assert master.worker_pids() == workers
    no_deaths(rotated.read_text())


# --- files the service user cannot read ------------------------------------------------------


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize("what", ["tls.key", "auth.secret_file", "the configuration file"])
def test_a_file_nobody_cannot_read_fails_the_start_at_once(
        start_master, world_readable_dir, as_nobody, what, daemon):
    overrides: Settings = {}
    if what == "tls.key":
        path = world_readable_dir / "key.pem"
        path.chmod(0o600)
    elif what == "auth.secret_file":
        path = root_only(world_readable_dir / "secret", "0123456789abcdef0123456789abcdef")
        overrides = {"auth": {"secret_file": str(path)}}
    else:
        path = root_only(world_readable_dir / "pop3d.toml", "")  # the fixture keeps the mode
    started = time.monotonic()
    master = start_master(as_nobody(overrides), directory=world_readable_dir, wait=False,
                          args=("--daemon",) if daemon else ())
    assert master.wait_exit(STARTS_AT_ONCE) == 1
    assert time.monotonic() - started < STARTS_AT_ONCE
    advice = f"group ssl-cert (chgrp ssl-cert {path}; chmod 0640 {path}; adduser nobody " \
             "ssl-cert)" if what == "tls.key" else f"chgrp {NOGROUP} {path}; chmod 0640 {path}"
    assert stderr_lines(master)[-1] == (
        f"pop3d: user nobody cannot read {what} {path} (permission denied): make it readable "
        f"by nobody, e.g. {advice}")
    assert "spawned worker" not in master.log_text()
    assert not master.pidfile.exists()


def test_a_root_owned_pidfile_directory_fails_the_start_and_is_left_alone(
        start_master, world_readable_dir, as_nobody):
    run = world_readable_dir / "run"
    run.mkdir()
    master = start_master(as_nobody(), directory=world_readable_dir, wait=False)
    assert master.wait_exit(STARTS_AT_ONCE) == 1
    assert stderr_lines(master)[-1] == (
        f"pop3d: pidfile directory {run} is not writable by nobody (permission denied): use a "
        "directory of its own such as /run/pop3d (systemd RuntimeDirectory=pop3d)")
    assert run.stat().st_uid == 0
    assert list(run.iterdir()) == []


def test_a_symlink_planted_in_the_pidfile_directory_never_gets_its_target_chowned(
        start_master, world_readable_dir, as_nobody):
    """nobody owns the pidfile's directory and plants a symlink to a root file where the
    pidfile goes: root replaces it, and gives nobody only the file it created itself."""
    run = world_readable_dir / "run"
    run.mkdir()
    os.chown(run, *nobody_ids())
    victim = root_only(world_readable_dir / "victim", "root's own\n")
    (run / "pop3d.pid").symlink_to(victim)
    master = start_master(as_nobody(), directory=world_readable_dir)
    assert victim.stat().st_uid == 0
    assert victim.read_text() == "root's own\n"
    pidfile = run / "pop3d.pid"
    assert not pidfile.is_symlink()
    assert (pidfile.stat().st_uid, pidfile.read_text()) == (nobody_ids()[0], f"{master.pid}\n")


def test_a_reload_nobody_could_not_serve_is_refused_and_the_old_config_keeps_serving(
        start_master, world_readable_dir, as_nobody, mail_store):
    master = start_master(as_nobody(), directory=world_readable_dir)
    workers = master.worker_pids()
    secret = root_only(world_readable_dir / "secret", "0123456789abcdef0123456789abcdef")
    master.write_config({"auth": {"secret_file": str(secret)}})
    result = master.cli("reload")
    assert result.returncode == 1
    assert f"reload failed: user nobody cannot read auth.secret_file {secret} (permission " \
           "denied)" in result.stderr
    master.write_config({"auth": {"secret_file": ""},
                         "logging": {"file": str(world_readable_dir / "other.log")}})
    result = master.cli("reload")
    assert result.returncode == 1
    assert f"reload failed: cannot open the log file {world_readable_dir / 'other.log'}: " \
           "Permission denied" in result.stderr
    assert master.status()["generation"] == 1
    assert master.worker_pids() == workers
    with Client.greeted(master.port) as client:
        client.login(mail_store.account())
    no_deaths(master.log_text())


# --- start --daemon --------------------------------------------------------------------------


def test_daemon_returns_once_the_workers_serve(start_master, world_readable_dir, as_nobody,
                                               mail_store):
    account = mail_store.account([message("one")])
    master = start_master(as_nobody(), directory=world_readable_dir, wait=False,
                          args=("--daemon",))
    try:
        assert master.wait_exit(30) == 0, master.log_text()
        status = master.status()  # at once: nothing left to wait for
        assert status is not None
        assert status["state"] == "running"
        assert [w["booted"] for w in status["workers"]] == [True, True]
        with Client.greeted(master.port, timeout=2) as client:
            client.login(account)
            assert client.command("STAT").startswith(b"+OK 1 ")
        assert stderr_lines(master)[-1] == f"pop3d started (pid {status['pid']})"
        assert process_uids(status["pid"]) == [str(nobody_ids()[0])] * 3
    finally:
        master.cli("stop")
