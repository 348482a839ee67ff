"""Fixtures for the pure unit tests."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pop3d import log as log_module

from .channel_rig import close_rigs


@pytest.fixture
def isolated_pop3d_logging() -> Iterator[None]:
    """The ``pop3d`` logger without handlers for the test, restored (and the test's handlers
    closed) afterwards: for tests that call ``pop3d.log.setup``."""
    logger = logging.getLogger(log_module.ROOT_LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    yield
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.level, logger.propagate = saved


@pytest.fixture(autouse=True)
def _close_channel_rigs() -> Iterator[None]:
    """Every channel a test put on a socket pair is closed, both ends, when the test is over."""
    yield
    close_rigs()


# A process whose title is a master's, as `pop3d start` sets it (setproctitle), idle until killed.
_FAKE_MASTER = ("import setproctitle, sys, time; setproctitle.setproctitle('pop3d: master "
                "[/etc/pop3d.toml]'); print('ready', flush=True); time.sleep(60)")


@pytest.fixture
def fake_master() -> Iterator[int]:
    """The pid of a live process that looks like a pop3d master to ``is_master``."""
    process = subprocess.Popen([sys.executable, "-c", _FAKE_MASTER], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    yield process.pid
    process.kill()
    process.wait()
    process.stdout.close()
