"""Metrics over statsd (UDP): fire-and-forget, never raises into the caller."""

from __future__ import annotations

import logging

import statsd

log = logging.getLogger(__name__)


class StatsdMetrics:
    """The Metrics port over ``statsd.StatsClient``; names get the configured prefix."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        # Resolves the host once, at construction: build it after fork, in the worker.
        self._client = statsd.StatsClient(host, port, prefix=prefix or None)

    def incr(self, name: str, count: int = 1) -> None:
        self._client.incr(name, count)

    def gauge(self, name: str, value: float) -> None:
        self._client.gauge(name, value)

    def timing(self, name: str, milliseconds: float) -> None:
        self._client.timing(name, milliseconds)

    def close(self) -> None:
        self._client.close()


class NullMetrics:
    """Metrics switched off (``statsd.enabled = false``)."""

    def incr(self, name: str, count: int = 1) -> None:
        pass

    def gauge(self, name: str, value: float) -> None:
        pass

    def timing(self, name: str, milliseconds: float) -> None:
        pass

    def close(self) -> None:
        pass
