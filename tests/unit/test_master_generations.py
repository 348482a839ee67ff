"""Reloads and the log file: a new file that cannot be opened fails the reload and leaves
logging alone; going back to the old generation never raises; the same file is reopened."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pop3d import config as config_module
from pop3d import log as log_module
from pop3d.master.generations import Generations
from pop3d.master.listeners import close_all

from .test_master_listeners import free_port

master_log = logging.getLogger("pop3d.master")


pytestmark = pytest.mark.usefixtures("isolated_pop3d_logging")


class Served:
    """A configuration file, the generations loaded from it, and its log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "pop3d.toml"
        self.port = free_port()
        self.write(directory / "pop3d.log")
        cfg, _ = config_module.load(self.path)
        log_module.setup(cfg.logging.level, cfg.logging.file)
        self.generations = Generations(cfg)

    def write(self, log_file: Path, workers: int = 1) -> None:
        self.path.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.port}"]\ntls_listen = []\n'
            f'workers = {workers}\npidfile = "{self.directory}/pop3d.pid"\n'
            f'[logging]\nfile = "{log_file}"\n')

    def reload(self) -> bool:
        serial = self.generations.begin()
        assert serial is not None
        return self.generations.load(serial)

    def close(self) -> None:
        close_all(self.generations.held())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path)
    yield served
    served.close()


def test_a_reload_whose_new_log_file_cannot_be_opened_fails_and_logging_stays(served, tmp_path):
    unopenable = tmp_path / "a-directory"
    unopenable.mkdir()
    served.write(unopenable, workers=3)
    assert served.reload() is False
    result = served.generations.result
    assert (result["result"], result["error"]) == (
        "failed", f"cannot open the log file {unopenable}: Is a directory")
    assert served.generations.current.number == 1
    assert served.generations.current.listeners == []  # what it bound for the reload is closed
    master_log.info("after the failed reload")
    text = (tmp_path / "pop3d.log").read_text()
    assert f"reload: cannot open the log file {unopenable}: Is a directory" in text
    assert "after the failed reload" in text


def test_a_reload_to_another_log_file_switches_and_abort_switches_back(served, tmp_path):
    served.write(tmp_path / "new.log")
    assert served.reload() is True
    master_log.info("to the new file")
    assert "to the new file" in (tmp_path / "new.log").read_text()
    served.generations.abort("its workers could not boot")
    master_log.info("back to the old file")
    assert "back to the old file" in (tmp_path / "pop3d.log").read_text()


def test_abort_never_raises_when_the_old_log_file_cannot_be_opened_again(served, tmp_path):
    served.write(tmp_path / "new.log")
    assert served.reload() is True
    old = tmp_path / "pop3d.log"
    old.unlink()
    old.mkdir()  # the old path cannot be opened any more
    served.generations.abort("its workers could not boot")
    assert served.generations.current.number == 1
    assert served.generations.result["result"] == "failed"
    text = (tmp_path / "new.log").read_text()
    assert f"reload: cannot open the log file {old}: Is a directory; still logging to " \
           f"{tmp_path / 'new.log'}" in text


def test_a_reload_keeping_the_log_file_reopens_it(served, tmp_path):
    log_file = tmp_path / "pop3d.log"
    log_file.rename(tmp_path / "pop3d.log.1")
    assert served.reload() is True
    master_log.info("after the reload")
    assert "after the reload" in log_file.read_text()


def test_a_reload_keeping_a_log_file_that_cannot_be_reopened_goes_on(served, tmp_path):
    log_file = tmp_path / "pop3d.log"
    log_file.unlink()
    log_file.mkdir()
    assert served.reload() is True
    assert served.generations.current.number == 2
