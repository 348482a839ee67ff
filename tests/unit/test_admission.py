"""Limits per client address (pop3d.worker.admission) over the real registry on an in-memory
store: shared connection counts, this worker's own count when memcached is down, handshakes
in progress, and refusals counted and logged without flooding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pop3d.adapters.registry import MemcacheRegistry
from pop3d.worker.admission import AddressLimits

from .fakes import FakeClock, FakeMetrics
from .test_memcache_unit import MemoryStore


@dataclass(eq=False)
class Conn:
    client_ip: str


def limits(store: MemoryStore, *, worker: str = "h:1:", connections: int = 2,
           handshakes: int = 2, clock: FakeClock | None = None) -> AddressLimits:
    registry = MemcacheRegistry(store, namespace="t-conn")
    return AddressLimits(connections=registry, max_connections=connections,
                         max_handshakes=handshakes, metrics=FakeMetrics(), id_prefix=worker,
                         clock=clock or FakeClock())


def test_connections_are_counted_across_workers_per_address() -> None:
    store = MemoryStore()
    one, two = limits(store, worker="h:1:"), limits(store, worker="h:2:")
    first, second = Conn("192.0.2.1"), Conn("192.0.2.1")
    assert one.admit(first)
    assert two.admit(second)
    assert not one.admit(Conn("192.0.2.1"))  # two in all, whichever worker holds them
    assert two.admit(Conn("192.0.2.2"))  # another address is not affected
    one.release(first)
    one.release(first)  # twice is harmless
    assert two.admit(Conn("192.0.2.1"))


def test_ipv6_clients_are_counted_by_their_prefix() -> None:
    gate = limits(MemoryStore())
    assert gate.admit(Conn("2001:db8:1:2::1"))
    assert gate.admit(Conn("2001:db8:1:2::ffff"))
    assert not gate.admit(Conn("2001:db8:1:2:abcd::1"))
    assert gate.admit(Conn("2001:db8:1:3::1"))


def test_a_worker_killed_with_sigkill_has_its_connections_freed_by_the_master() -> None:
    store = MemoryStore()
    doomed = limits(store, worker="h:1:")
    assert doomed.admit(Conn("192.0.2.1"))
    assert doomed.admit(Conn("192.0.2.1"))
    survivor = limits(store, worker="h:2:")
    assert not survivor.admit(Conn("192.0.2.1"))
    assert MemcacheRegistry(store, namespace="t-conn").release_worker("h:1:") == 2
    assert survivor.admit(Conn("192.0.2.1"))


def test_without_memcached_each_worker_still_enforces_the_limit_on_its_share() -> None:
    store = MemoryStore()
    store.down = True
    gate = limits(store)
    conns = [Conn("192.0.2.1") for _ in range(3)]
    assert [gate.admit(conn) for conn in conns] == [True, True, False]
    gate.release(conns[0])
    assert gate.admit(Conn("192.0.2.1"))


def test_handshakes_in_progress_are_bounded_per_address() -> None:
    gate = limits(MemoryStore(), connections=10, handshakes=2)
    conns = [Conn("192.0.2.1") for _ in range(3)]
    assert [gate.begin_handshake(conn) for conn in conns] == [True, True, False]
    assert gate.begin_handshake(conns[0])  # one it holds already
    assert gate.begin_handshake(Conn("192.0.2.9"))
    gate.end_handshake(conns[0])
    assert gate.begin_handshake(conns[2])
    gate.release(conns[1])  # closing mid-handshake gives the place back too
    assert gate.begin_handshake(Conn("192.0.2.1"))


def test_refusals_are_counted_and_logged_once_a_minute_per_address(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    metrics = FakeMetrics()
    gate = AddressLimits(connections=None, max_connections=1, max_handshakes=1,
                         metrics=metrics, id_prefix="h:1:", clock=clock)
    assert gate.admit(Conn("192.0.2.1"))
    assert [gate.admit(Conn("192.0.2.1")) for _ in range(5)] == [False] * 5
    assert [gate.begin_handshake(Conn("192.0.2.7")) for _ in range(5)] == [True] + [False] * 4
    clock.advance(61)
    assert not gate.admit(Conn("192.0.2.1"))
    assert metrics.counters["connections.refused"] == 6
    assert metrics.counters["tls.refused"] == 4
    lines = [r.getMessage() for r in caplog.records if "connections" in r.getMessage()]
    assert lines == ["refusing connections from 192.0.2.1: limits.max_connections_per_address "
                     "reached (further refusals for a minute are only counted)"] * 2
