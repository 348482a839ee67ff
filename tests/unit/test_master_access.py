"""What the service user must be able to open: the checks, the identity switch, the pidfile
directory the master creates, the hand-over of the log file (as root: switching users needs it)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pop3d.config import AuthConfig, Config, ServerConfig, TlsConfig
from pop3d.master.access import (
    AccessError,
    Account,
    acting_as,
    check,
    current_account,
    needed_files,
    service_account,
)
from pop3d.master.startup import check_access, make_pidfile_directory

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def nobody() -> Account:
    entry = pwd.getpwnam("nobody")
    return Account("nobody", grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory anyone may enter (pytest's own temporary tree is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="pop3d-access-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def config_with(directory: Path, **files: str) -> Config:
    for name in ("pop3d.toml", "cert.pem", "key.pem", "secret"):
        path = directory / name
        path.write_text("x")
        path.chmod(0o644)
    return Config(
        path=str(directory / "pop3d.toml"),
        server=ServerConfig(pidfile=str(directory / "pop3d.pid")),
        tls=TlsConfig(cert=str(directory / "cert.pem"), key=str(directory / "key.pem")),
        auth=AuthConfig(secret_file=str(directory / "secret")),
        **files,  # type: ignore[arg-type]
    )


def test_needed_files_are_what_is_read_after_the_drop():
    assert needed_files(Config(path="/etc/pop3d.toml")) == [
        ("the configuration file", "/etc/pop3d.toml")]
    full = Config(path="c", tls=TlsConfig(cert="a", key="b"), auth=AuthConfig(secret_file="s"))
    assert needed_files(full) == [("the configuration file", "c"), ("tls.cert", "a"),
                                  ("tls.key", "b"), ("auth.secret_file", "s")]


def test_no_user_means_no_switch():
    assert service_account("", "") is None


def test_the_current_user_means_no_switch():
    me = pwd.getpwuid(os.geteuid())
    assert service_account(me.pw_name, grp.getgrgid(os.getegid()).gr_name) is None


def test_an_unknown_user_is_one_line():
    with pytest.raises(AccessError, match="no such user 'pop3d-nobody-here'"):
        service_account("pop3d-nobody-here", "")


@needs_root
def test_the_service_account_defaults_to_the_users_group(nobody):
    assert service_account("nobody", "") == nobody


@needs_root
def test_acting_as_switches_effective_ids_and_back(nobody):
    groups = os.getgroups()
    with acting_as(nobody):
        assert (os.geteuid(), os.getegid()) == (nobody.uid, nobody.gid)
        assert os.getuid() == 0
    assert (os.geteuid(), os.getegid(), os.getgroups()) == (0, 0, groups)


@needs_root
def test_acting_as_switches_back_after_an_error(nobody):
    with pytest.raises(RuntimeError), acting_as(nobody):
        raise RuntimeError
    assert os.geteuid() == 0


@needs_root
@pytest.mark.parametrize(("name", "what"), [
    ("pop3d.toml", "the configuration file"), ("key.pem", "tls.key"),
    ("secret", "auth.secret_file"),
])
def test_a_root_only_file_is_named_with_the_user_and_what_to_do(shared, nobody, name, what):
    config = config_with(shared)
    (shared / name).chmod(0o600)
    with pytest.raises(AccessError) as error, acting_as(nobody):
        check(config, nobody, config.server.pidfile)
    message = str(error.value)
    assert message.startswith(f"user nobody cannot read {what} {shared / name} (permission "
                              "denied): make it readable by nobody, e.g. ")
    assert "\n" not in message


@needs_root
def test_a_readable_setup_passes(shared, nobody):
    config = config_with(shared)
    os.chown(shared, nobody.uid, nobody.gid)
    with acting_as(nobody):
        check(config, nobody, config.server.pidfile)
    assert sorted(p.name for p in shared.iterdir()) == ["cert.pem", "key.pem", "pop3d.toml",
                                                       "secret"]  # the probe is gone


@needs_root
def test_a_group_readable_key_passes_through_the_users_groups(shared, nobody):
    config = config_with(shared)
    os.chown(shared, nobody.uid, nobody.gid)
    key = shared / "key.pem"
    key.chmod(0o640)
    os.chown(key, 0, nobody.gid)
    with acting_as(nobody):
        check(config, nobody, config.server.pidfile)


@needs_root
def test_a_pidfile_directory_the_user_cannot_write_is_refused(shared, nobody):
    config = config_with(shared)  # shared belongs to root, mode 0755
    with pytest.raises(AccessError) as error, acting_as(nobody):
        check(config, nobody, config.server.pidfile)
    assert str(error.value) == (
        f"pidfile directory {shared} is not writable by nobody (permission denied): use a "
        "directory of its own such as /run/pop3d (systemd RuntimeDirectory=pop3d)")


@needs_root
def test_check_access_runs_as_the_service_user_and_comes_back(shared, nobody):
    config = config_with(shared)
    (shared / "secret").chmod(0o600)
    with pytest.raises(AccessError, match=r"user nobody cannot read auth\.secret_file"):
        check_access(config, nobody)
    assert os.geteuid() == 0


def test_check_access_without_a_switch_checks_as_this_process(tmp_path):
    config = config_with(tmp_path)
    check_access(config, None)
    missing = Config(path=str(tmp_path / "gone.toml"), server=config.server)
    with pytest.raises(AccessError, match=f"user {current_account().name} cannot read the "
                                          "configuration file .*gone.toml .no such file"):
        check_access(missing, None)


@needs_root
def test_a_created_pidfile_directory_belongs_to_the_service_user(tmp_path, nobody):
    pidfile = tmp_path / "run" / "pop3d.pid"
    assert make_pidfile_directory(str(pidfile), nobody) == [str(tmp_path / "run")]
    info = (tmp_path / "run").stat()
    assert (info.st_uid, info.st_gid) == (nobody.uid, nobody.gid)


@needs_root
def test_an_existing_pidfile_directory_is_never_chowned(tmp_path, nobody):
    assert make_pidfile_directory(str(tmp_path / "pop3d.pid"), nobody) == []
    assert tmp_path.stat().st_uid == 0
