"""Logging set-up: handlers swapped only once the new one is open, reopen that never raises,
the hand-over of a root-owned log file, masking."""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

import pytest

from pop3d import log as log_module
from pop3d.log import (
    MaskingFilter,
    ReopenableFileHandler,
    escape,
    hand_over,
    mask,
    reopen,
    setup,
)

pop3d_log = logging.getLogger("pop3d.test")


pytestmark = pytest.mark.usefixtures("isolated_pop3d_logging")


def handlers() -> list[logging.Handler]:
    return logging.getLogger(log_module.ROOT_LOGGER).handlers


def unopenable(tmp_path: Path) -> str:
    """A path no process can open, root included: its directory is a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return str(blocker / "pop3d.log")


# --- setup -----------------------------------------------------------------------------------


def test_setup_logs_to_the_file_at_the_level(tmp_path):
    path = tmp_path / "pop3d.log"
    setup("warning", str(path))
    pop3d_log.info("not shown")
    pop3d_log.warning("shown")
    text = path.read_text()
    assert "not shown" not in text
    assert "WARNING pop3d.test: shown" in text


def test_setup_replaces_the_previous_handler_and_closes_it(tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    setup("info", str(first))
    old = handlers()[0]
    assert isinstance(old, ReopenableFileHandler)
    setup("info", str(second))
    pop3d_log.info("to the second")
    assert handlers() != [old]
    assert len(handlers()) == 1
    assert old.stream is None or old.stream.closed
    assert "to the second" in second.read_text()
    assert "to the second" not in first.read_text()


def test_setup_keeps_the_old_handler_when_the_new_file_cannot_be_opened(tmp_path):
    path = tmp_path / "pop3d.log"
    setup("info", str(path))
    before = list(handlers())
    with pytest.raises(NotADirectoryError):
        setup("debug", unopenable(tmp_path))
    assert handlers() == before
    assert logging.getLogger(log_module.ROOT_LOGGER).level == logging.INFO
    pop3d_log.info("still here")
    assert "still here" in path.read_text()


def test_setup_without_a_file_logs_to_stderr(capsys):
    setup("info", "")
    pop3d_log.info("on stderr")
    assert "INFO pop3d.test: on stderr" in capsys.readouterr().err


# --- reopen ----------------------------------------------------------------------------------


def test_reopen_follows_a_rotated_file(tmp_path):
    path = tmp_path / "pop3d.log"
    setup("info", str(path))
    pop3d_log.info("before")
    path.rename(tmp_path / "pop3d.log.1")
    assert reopen() is True
    pop3d_log.info("after")
    assert "after" in path.read_text()
    assert "after" not in (tmp_path / "pop3d.log.1").read_text()


def test_reopen_never_raises_and_keeps_the_old_file_when_the_path_cannot_be_opened(tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    setup("info", str(directory / "pop3d.log"))
    directory.rename(tmp_path / "rotated")
    (tmp_path / "logs").write_text("")  # the path now runs through a regular file: ENOTDIR
    assert reopen() is False
    pop3d_log.info("still logging")
    text = (tmp_path / "rotated" / "pop3d.log").read_text()
    assert f"cannot reopen the log file {directory / 'pop3d.log'}: Not a directory; still " \
           "logging to the file opened before" in text
    assert text.count("cannot reopen") == 1
    assert "still logging" in text


def test_reopen_with_stderr_does_nothing(capsys):
    setup("info", "")
    assert reopen() is True
    assert capsys.readouterr().err == ""


# --- hand_over -------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


@needs_root
def test_hand_over_gives_a_root_owned_log_file_to_the_service_user(tmp_path, nobody):
    path = tmp_path / "pop3d.log"
    setup("info", str(path))
    path.chmod(0o640)
    assert hand_over(nobody.pw_uid, nobody.pw_gid) == [str(path)]
    info = path.stat()
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert info.st_mode & 0o7777 == 0o640


@needs_root
def test_hand_over_leaves_a_file_someone_else_owns(tmp_path, nobody):
    path = tmp_path / "pop3d.log"
    path.write_text("")
    os.chown(path, 1, 1)
    setup("info", str(path))
    assert hand_over(nobody.pw_uid, nobody.pw_gid) == []
    assert path.stat().st_uid == 1


@needs_root
def test_hand_over_never_follows_a_symlink_or_another_link(tmp_path, nobody):
    target = tmp_path / "precious"
    target.write_text("")
    link = tmp_path / "pop3d.log"
    link.symlink_to(target)
    setup("info", str(link))
    assert hand_over(nobody.pw_uid, nobody.pw_gid) == []
    assert target.stat().st_uid == 0
    link.unlink()
    os.link(target, link)  # a hard link: another name of a file that is not only the log
    setup("info", str(link))
    assert hand_over(nobody.pw_uid, nobody.pw_gid) == []
    assert target.stat().st_uid == 0


@needs_root
def test_hand_over_skips_a_file_no_longer_at_its_path(tmp_path, nobody):
    path = tmp_path / "pop3d.log"
    setup("info", str(path))
    path.rename(tmp_path / "moved.log")
    path.write_text("")  # someone else's new file at the path
    assert hand_over(nobody.pw_uid, nobody.pw_gid) == []
    assert path.stat().st_uid == 0


# --- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "masked"), [
    ("key pk_ab12cd_SeCrEt-_x9 used", "key pk_ab12cd_*** used"),
    ("C: PASS hunter2 and more", "C: PASS ***"),
    ("c: pass hunter2", "c: pass ***"),
    ("C: AUTH PLAIN AGFsaWNlAHNlY3JldA==", "C: AUTH PLAIN ***"),
    ("C: AUTH PLAIN", "C: AUTH PLAIN"),
    ("user alice logged in", "user alice logged in"),
])
def test_mask(text, masked):
    assert mask(text) == masked


def test_the_filter_masks_arguments_before_any_output(tmp_path):
    path = tmp_path / "pop3d.log"
    setup("info", str(path))
    pop3d_log.info("line from %s: %s", "192.0.2.1", "PASS pk_ab12cd_topsecret")
    text = path.read_text()
    assert "topsecret" not in text
    assert "line from 192.0.2.1: PASS ***" in text


def test_the_filter_leaves_clean_records_alone():
    record = logging.LogRecord("pop3d", logging.INFO, __file__, 1, "hello %s", ("alice",), None)
    assert MaskingFilter().filter(record)
    assert (record.msg, record.args) == ("hello %s", ("alice",))


@pytest.mark.parametrize(("text", "escaped"), [
    ("plain text, nothing to do", "plain text, nothing to do"),
    ("evil\r\n2026-01-01 [1] INFO pop3d: forged", "evil\\r\\n2026-01-01 [1] INFO pop3d: forged"),
    ("\x1b[2J\x07\x00\t", "\\x1b[2J\\x07\\x00\\t"),
    ("nel\x85 line\u2028para\u2029del\x7f", "nel\\x85 line\\u2028para\\u2029del\\x7f"),
    ("unicode stays: é ü 名前", "unicode stays: é ü 名前"),
])
def test_escape(text, escaped):
    assert escape(text) == escaped


def test_the_filter_escapes_client_strings_so_a_record_stays_one_line(tmp_path):
    record = logging.LogRecord("pop3d.test", logging.INFO, __file__, 1,
                               "login failed user=%s ip=%s", ("a\r\nINFO forged", "\x1b]0;x"),
                               None)
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "login failed user=a\\r\\nINFO forged ip=\\x1b]0;x"
