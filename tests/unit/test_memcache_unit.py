"""The memcached adapters' pure parts: key fragments, and the registry over an in-memory store
(the same calls memcached answers, without expiry), so its bookkeeping is checked exactly."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import pytest

from pop3d.adapters.keys import address_key, canonical_ip, key_part
from pop3d.adapters.registry import INDEX_SHARDS, REFRESH_STEPS, MemcacheRegistry, worker_prefix
from pop3d.errors import BackendUnavailable


class MemoryStore:
    """The SlotStore calls over a dict; ``down`` makes every call fail like memcached would."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.down = False
        self._version = 0

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("memcached 127.0.0.1:1: ConnectionRefusedError")

    def _store(self, key: str, value: bytes) -> None:
        self._version += 1
        self.data[key] = (value, self._version)

    def get(self, key: str) -> bytes | None:
        self._check()
        return self.data[key][0] if key in self.data else None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        self._check()
        return {k: self.data[k][0] for k in keys if k in self.data}

    def set(self, key: str, value: bytes, ttl: float) -> bool:
        self._check()
        self._store(key, value)
        return True

    def incr(self, key: str, delta: int) -> int | None:
        self._check()
        if key not in self.data:
            return None
        value = int(self.data[key][0]) + delta
        self._store(key, str(value).encode())
        return value

    def decr(self, key: str, delta: int) -> int | None:
        self._check()
        if key not in self.data:
            return None
        value = max(0, int(self.data[key][0]) - delta)  # memcached never goes below 0
        self._store(key, str(value).encode())
        return value

    def gets(self, key: str) -> tuple[bytes | None, bytes | None]:
        self._check()
        if key not in self.data:
            return None, None
        value, version = self.data[key]
        return value, str(version).encode()

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        self._check()
        if key in self.data:
            return False
        self._store(key, value)
        return True

    def cas(self, key: str, value: bytes, token: bytes, ttl: float) -> bool:
        self._check()
        if key not in self.data or str(self.data[key][1]).encode() != token:
            return False
        if ttl < 0:
            del self.data[key]
        else:
            self._store(key, value)
        return True

    def set_many(self, values: Mapping[str, bytes], ttl: float) -> list[str]:
        self._check()
        for key, value in values.items():
            self._store(key, value)
        return []

    def delete(self, key: str) -> bool:
        self._check()
        return self.data.pop(key, None) is not None

    def index(self, namespace: str, prefix: str) -> list[list[object]]:
        rows: list[list[object]] = []
        for shard in range(INDEX_SHARDS):
            raw = self.data.get(f"{namespace}:reg:w:{prefix}#{shard}")
            rows += json.loads(raw[0]) if raw else []
        return sorted(rows, key=str)


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "part"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8::1%eth0", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::1", "::1"),
    ],
)
def test_client_addresses_have_one_spelling(spelling: str, part: str) -> None:
    assert canonical_ip(spelling) == part


@pytest.mark.parametrize(
    ("client", "prefix", "key"),
    [
        ("192.0.2.1", 64, "192.0.2.1"),
        ("::ffff:192.0.2.1", 64, "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"),
        ("not an address", 64, "not an address"),
    ],
)
def test_the_address_key_counts_ipv6_by_prefix(client: str, prefix: int, key: str) -> None:
    assert address_key(client, prefix) == key


@pytest.mark.parametrize(
    "text", ["", "has space", "tab\there", "nul\0", "é", "#hash", "~" + "a" * 64, "x" * 121]
)
def test_unsafe_parts_are_hashed(text: str) -> None:
    part = key_part(text)
    assert part.startswith("~")
    assert len(part) == 65
    assert part.isascii()
    assert part.isprintable()
    assert " " not in part
    assert "#" not in part


def test_safe_parts_stay_readable() -> None:
    assert key_part("mail-1.example.com:4242:") == "mail-1.example.com:4242:"
    assert key_part("3f0c5b8e-0000-4000-8000-000000000001") == (
        "3f0c5b8e-0000-4000-8000-000000000001")
    assert key_part("a b") != key_part("a_b")


@pytest.mark.parametrize(
    ("session_id", "prefix"),
    [("mail:4242:17", "mail:4242:"), ("mail:4242:", "mail:4242:"), ("solo", "")],
)
def test_worker_prefix(session_id: str, prefix: str) -> None:
    assert worker_prefix(session_id) == prefix


# -- the registry's bookkeeping -------------------------------------------------------------------


def test_acquire_writes_slot_and_index_and_release_removes_both() -> None:
    store = MemoryStore()
    reg = MemcacheRegistry(store, namespace="n")
    assert reg.acquire("u1", "h:7:1", 2)
    assert reg.acquire("u1", "h:7:2", 2)
    assert sorted(v for k, (v, _) in store.data.items() if k.startswith("n:reg:u:")) == [
        b"h:7:1", b"h:7:2"]
    assert [row[0] for row in store.index("n", "h:7:")] == ["h:7:1", "h:7:2"]
    reg.release("u1", "h:7:1")
    assert [row[:2] for row in store.index("n", "h:7:")] == [["h:7:2", "u1"]]
    assert sum(k.startswith("n:reg:u:") for k in store.data) == 1


def test_a_refused_acquire_leaves_no_trace() -> None:
    store = MemoryStore()
    reg = MemcacheRegistry(store, namespace="n")
    assert reg.acquire("u1", "h:7:1", 1)
    before = dict(store.data)
    assert not reg.acquire("u1", "h:7:2", 1)
    assert store.data == before


def test_release_worker_ignores_other_workers() -> None:
    store = MemoryStore()
    worker_a, worker_b = MemcacheRegistry(store), MemcacheRegistry(store)
    assert worker_a.acquire("u1", "h:7:1", 5)
    assert worker_b.acquire("u1", "h:70:1", 5)
    assert MemcacheRegistry(store).release_worker("h:7:") == 1
    assert store.index("pop3d", "h:7:") == []
    assert [row[0] for row in store.index("pop3d", "h:70:")] == ["h:70:1"]
    assert sum(k.startswith("pop3d:reg:u:") for k in store.data) == 1


def test_refresh_readds_a_vanished_slot() -> None:
    store = MemoryStore()
    reg = MemcacheRegistry(store, namespace="n")
    assert reg.acquire("u1", "h:7:1", 1)
    store.data.clear()  # memcached restarted
    assert reg.refresh_all() == 1
    assert store.get_many(["n:reg:u:u1#0"]) == {"n:reg:u:u1#0": b"h:7:1"}
    assert [row[0] for row in store.index("n", "h:7:")] == ["h:7:1"]


def test_closed_policy_raises_and_open_policy_allows() -> None:
    store = MemoryStore()
    store.down = True
    with pytest.raises(BackendUnavailable):
        MemcacheRegistry(store, fail_open=False).acquire("u1", "h:7:1", 1)
    assert MemcacheRegistry(store, fail_open=True).acquire("u1", "h:7:1", 1)


def test_the_open_policy_warns_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    store.down = True
    now = [0.0]
    reg = MemcacheRegistry(store, warn_interval=60.0, clock=lambda: now[0])
    for t in (0.0, 30.0, 59.9, 60.0, 61.0, 125.0):
        now[0] = t
        assert reg.acquire("u1", f"h:7:{t}", 1)
    assert len(caplog.records) == 3  # at 0, 60 and 125


def test_nothing_raises_from_release_or_refresh_when_memcached_is_down() -> None:
    store = MemoryStore()
    reg = MemcacheRegistry(store)
    assert reg.acquire("u1", "h:7:1", 1)
    assert reg.acquire("u1", "h:7:2", 2)
    store.down = True
    assert reg.refresh_all() == 2
    reg.release("u1", "h:7:1")
    assert reg.release_worker("h:7:") == 0


def test_refresh_if_due_rewrites_every_slot_each_half_ttl_a_small_group_at_a_time() -> None:
    store = MemoryStore()
    now = [1000.0]
    reg = MemcacheRegistry(store, slot_ttl=120, clock=lambda: now[0])
    sessions = [f"h:7:{n}" for n in range(640)]
    for n, session in enumerate(sessions):
        assert reg.acquire(f"u{n}", session, 1)
    slots = {session: next(k for k, (v, _) in store.data.items() if v == session.encode()
                           and ":reg:w:" not in k) for session in sessions}
    last_written = {s: store.data[k][1] for s, k in slots.items()}
    refreshed_at: dict[str, list[float]] = {s: [] for s in sessions}
    largest_group = 0
    for tick in range(1, 121):  # the worker's housekeeping: once a second for two minutes
        now[0] = 1000.0 + tick
        held = reg.refresh_if_due()
        group = [s for s, k in slots.items() if store.data[k][1] != last_written[s]]
        for session in group:
            refreshed_at[session].append(now[0])
            last_written[session] = store.data[slots[session]][1]
        assert held == (None if held is None else len(group))
        largest_group = max(largest_group, len(group))
    # Each slot is rewritten once per half TTL (60 s), never all of them at once.
    assert all(len(times) == 2 and 55 <= times[1] - times[0] <= 65
               for times in refreshed_at.values())
    assert largest_group <= 3 * len(sessions) // REFRESH_STEPS
