"""Limits per client address: connections across every worker and host, and TLS handshakes in
progress in this worker.

Theory of operation.  A client is counted by :func:`~pop3d.adapters.keys.address_key`: its IPv4
address, or its IPv6 ``limits.ipv6_prefix`` network (one IPv6 host can use any address of its
/64).  A channel asks :meth:`AddressLimits.admit` once its address is final (after the PROXY
header) and gives everything back in :meth:`AddressLimits.release` when it closes.

* Connections are shared state: a client's connections land on any worker of any host, and an
  operator's ``limits.max_connections_per_address`` means all of them.  Each connection holds a
  slot of a per-address registry in memcached (:class:`~pop3d.adapters.registry.MemcacheRegistry`
  under its own namespace, so the same machinery as the per-user limit: ``add`` races cannot
  overbook, slots expire unless refreshed, and the master frees the slots of a worker killed
  with SIGKILL).  This worker's own count is checked first, and alone when memcached is down:
  then each worker enforces the limit on its share (fail open, but never unbounded).
* TLS handshakes are this worker's CPU: ``limits.max_tls_handshakes_per_address`` counts only
  the handshakes in progress here, without any round trip.

Refusals are counted in statsd (``connections.refused``, ``tls.refused``) and logged at most
once a minute per address, so an attacker cannot flood the log.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Protocol

from pop3d.adapters.keys import DEFAULT_IPV6_PREFIX, address_key
from pop3d.ports import Metrics, Registry

log = logging.getLogger(__name__)

WARN_INTERVAL = 60.0  # seconds between two log lines about refusals from one address
WARNED_MAX = 4096  # addresses remembered for WARN_INTERVAL; beyond it the memory starts over


class Client(Hashable, Protocol):
    """What the limits need of a channel: its final client address."""

    client_ip: str


class Admission(Protocol):
    """Limits per client address, which a channel asks before it serves or starts TLS."""

    def admit(self, channel: Client) -> bool:
        """May ``channel`` be served?  False: refuse it."""

    def begin_handshake(self, channel: Client) -> bool:
        """May ``channel`` start a TLS handshake now (True again if it already holds one)?"""

    def end_handshake(self, channel: Client) -> None:
        """The channel's handshake is over (it succeeded or failed)."""

    def release(self, channel: Client) -> None:
        """The channel is closing: give back whatever it holds (safe to call twice)."""


class Unlimited:
    """Admission without limits: every channel, every handshake."""

    def admit(self, channel: Client) -> bool:
        return True

    def begin_handshake(self, channel: Client) -> bool:
        return True

    def end_handshake(self, channel: Client) -> None:
        pass

    def release(self, channel: Client) -> None:
        pass


UNLIMITED = Unlimited()


class AddressLimits:
    """The :class:`Admission` of one worker; used from its loop thread only.

    ``connections`` is the shared per-address registry (None: this worker's count only);
    ``id_prefix`` starts the ids of its slots (``host:pid:``, so the master can free them)."""

    def __init__(self, *, connections: Registry | None, max_connections: int,
                 max_handshakes: int, metrics: Metrics, id_prefix: str,
                 ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = connections
        self._max_connections = max_connections
        self._max_handshakes = max_handshakes
        self._metrics = metrics
        self._id_prefix = id_prefix
        self._ipv6_prefix = ipv6_prefix
        self._clock = clock
        self._ids = itertools.count(1)
        self._held: dict[Client, tuple[str, str]] = {}  # channel -> (address key, slot id)
        self._connections: Counter[str] = Counter()  # this worker's, by address key
        self._handshaking: dict[Client, str] = {}
        self._handshakes: Counter[str] = Counter()
        self._warned: dict[tuple[str, str], float] = {}

    def key(self, channel: Client) -> str:
        return address_key(channel.client_ip, self._ipv6_prefix)

    def admit(self, channel: Client) -> bool:
        key = self.key(channel)
        slot = f"{self._id_prefix}c{next(self._ids)}"
        if self._connections[key] >= self._max_connections or (
                self._registry is not None
                and not self._registry.acquire(key, slot, self._max_connections)):
            self._refused(key, "connections", "limits.max_connections_per_address")
            return False
        self._held[channel] = (key, slot)
        self._connections[key] += 1
        return True

    def begin_handshake(self, channel: Client) -> bool:
        if channel in self._handshaking:
            return True
        key = self.key(channel)
        if self._handshakes[key] >= self._max_handshakes:
            self._refused(key, "tls", "limits.max_tls_handshakes_per_address")
            return False
        self._handshaking[channel] = key
        self._handshakes[key] += 1
        return True

    def end_handshake(self, channel: Client) -> None:
        key = self._handshaking.pop(channel, None)
        if key is not None:
            _decrement(self._handshakes, key)

    def release(self, channel: Client) -> None:
        self.end_handshake(channel)
        held = self._held.pop(channel, None)
        if held is None:
            return
        key, slot = held
        _decrement(self._connections, key)
        if self._registry is not None:
            self._registry.release(key, slot)  # never raises: a slot not freed expires

    def _refused(self, key: str, what: str, setting: str) -> None:
        self._metrics.incr(f"{what}.refused")
        now = self._clock()
        if now - self._warned.get((key, what), -math.inf) < WARN_INTERVAL:
            return
        if len(self._warned) >= WARNED_MAX:
            self._warned.clear()
        self._warned[(key, what)] = now
        noun = "connections" if what == "connections" else "TLS handshakes"
        log.warning("refusing %s from %s: %s reached (further refusals for a minute are only "
                    "counted)", noun, key, setting)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
