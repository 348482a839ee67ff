"""Fixtures for the pure unit tests."""

from __future__ import annotations

import logging
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
