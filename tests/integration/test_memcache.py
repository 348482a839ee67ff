"""The memcached adapters against a real memcached: the shared one from ``services`` (each test
in its own key namespace) and, for outages and restarts, a private one started by the test."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pop3d.adapters.memcache import (
    MemcacheAuthCache,
    MemcacheClient,
    MemcacheRateLimiter,
    MemcacheRegistry,
    build_shared_state,
)
from pop3d.auth import cache_key, seal, unseal
from pop3d.config import Address
from pop3d.errors import BackendUnavailable
from pop3d.ports import CachedLogin, Principal, Verdict

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"s" * 32
ALICE = Principal(user_id="3f0c5b8e-0000-4000-8000-000000000001", key_id="k-17",
                  address="alice@example.com")

# A child process for the cross-process tests: "race" acquires from 10 threads at a given
# moment and prints the results; "hold" acquires and then waits to be killed.
CHILD = """
import json, os, socket, sys, threading, time
from pop3d.adapters.memcache import build_shared_state
from pop3d.config import Address
mode, host, port, ns, user, count, limit, start = sys.argv[1:9]
state = build_shared_state([Address(host, int(port))], 0.5, "closed", max_failures=5,
                           lockout=60, namespace=ns)
prefix = f"{socket.gethostname()}:{os.getpid()}:"
results = [None] * int(count)
def claim(n):
    while time.time() < float(start):
        time.sleep(0.001)
    results[n] = state.registry.acquire(user, f"{prefix}{n}", int(limit))
threads = [threading.Thread(target=claim, args=(n,)) for n in range(int(count))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"prefix": prefix, "results": results}), flush=True)
if mode == "hold":
    time.sleep(60)
"""


# -- fixtures -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def address(services: dict[str, str]) -> Address:
    host, _, port = services["POP3D_TEST_MEMCACHED"].rpartition(":")
    return Address(host, int(port))


@pytest.fixture
def ns() -> str:
    """A key namespace of this test alone."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(address: Address) -> Iterator[MemcacheClient]:
    mc = MemcacheClient([address], timeout=0.5)
    yield mc
    mc.close()


@pytest.fixture
def down_client() -> Iterator[MemcacheClient]:
    """A client of a port where nothing listens."""
    mc = MemcacheClient([Address("127.0.0.1", free_port())], timeout=0.3)
    yield mc
    mc.close()


class PrivateMemcached:
    """A memcached of one test, to stop and restart without disturbing the others."""

    def __init__(self, executable: str) -> None:
        self.address = Address("127.0.0.1", free_port())
        self._argv = [executable, "-l", "127.0.0.1", "-p", str(self.address.port), "-U", "0",
                      "-m", "16"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address.host, self.address.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        pytest.fail("the private memcached did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(5)
            self._process = None


@pytest.fixture
def private_memcached() -> Iterator[PrivateMemcached]:
    executable = shutil.which("memcached")
    if executable is None:
        pytest.skip("memcached is not installed")
    server = PrivateMemcached(executable)
    server.start()
    yield server
    server.stop()


def registry(client: MemcacheClient, ns: str, **options: object) -> MemcacheRegistry:
    return MemcacheRegistry(client, namespace=ns, **options)  # type: ignore[arg-type]


# -- the auth cache -----------------------------------------------------------------------------


def test_cache_entries_and_generations_round_trip(client: MemcacheClient, ns: str) -> None:
    cache = MemcacheAuthCache(client, namespace=ns)
    digest = cache_key(SECRET, "pop3", "alice@example.com", "pk_x_y")
    first = cache.get("alice@example.com", digest)
    assert first.entry is None
    entry = seal(SECRET, digest, ALICE, first.generation, time.time())
    cache.put(digest, entry, 30)
    found = cache.get("Alice@Example.com", digest)
    assert found == CachedLogin(entry, first.generation)
    assert unseal(SECRET, digest, found.entry or b"", found.generation,
                  now=time.time(), ttl=30) == ALICE
    cache.bump(["alice@example.com"])
    assert int(cache.get("alice@example.com", digest).generation) == int(first.generation) + 1


def test_a_generation_is_created_once_however_many_logins_race(client: MemcacheClient,
                                                               ns: str) -> None:
    cache = MemcacheAuthCache(client, namespace=ns)
    seen: list[str] = []
    start = threading.Barrier(10)

    def look_up() -> None:
        start.wait()
        seen.append(cache.get("racer@example.com", "ab" * 32).generation)

    threads = [threading.Thread(target=look_up) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1


def test_cache_entries_expire(client: MemcacheClient, ns: str) -> None:
    cache = MemcacheAuthCache(client, namespace=ns)
    cache.put("01" * 32, b"short", 1)
    cache.put("02" * 32, b"long", 30)
    time.sleep(2.1)  # memcached counts whole seconds: a ttl of 1 lives less than 2
    assert cache.get("a@example.com", "01" * 32).entry is None
    assert cache.get("a@example.com", "02" * 32).entry == b"long"


def test_cache_never_stores_what_is_not_a_digest(client: MemcacheClient, ns: str) -> None:
    cache = MemcacheAuthCache(client, namespace=ns)
    cache.put("alice pk_secret", b"entry", 30)
    hashed = hashlib.sha256(b"alice pk_secret").hexdigest()
    assert client.get(f"{ns}:auth:{hashed}") == b"entry"


def test_cache_with_memcached_down_raises_quickly(down_client: MemcacheClient) -> None:
    cache = MemcacheAuthCache(down_client)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as raised:
        cache.get("alice@example.com", "ab" * 32)
    assert time.monotonic() - started < 0.5
    assert "[SYS/TEMP]" in raised.value.reply
    with pytest.raises(BackendUnavailable):
        cache.put("ab" * 32, b"entry", 30)
    with pytest.raises(BackendUnavailable):
        cache.bump(["alice@example.com"])


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mc = MemcacheClient([Address("127.0.0.1", silent.getsockname()[1])], timeout=0.3,
                            retry_after=5.0)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            mc.get("k")
        assert 0.25 < time.monotonic() - started < 1.5
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="is down"):
            mc.get("k")  # skipped for retry_after: no second wait
        assert time.monotonic() - started < 0.05
        mc.close()


def test_client_recovers_after_a_memcached_restart(private_memcached: PrivateMemcached) -> None:
    mc = MemcacheClient([private_memcached.address], timeout=0.5)
    assert mc.set("k", b"v", 60)
    private_memcached.stop()
    private_memcached.start()
    assert mc.get("k") is None  # its pooled connection is stale: retried on a new one
    assert mc.set("k", b"w", 60)
    assert mc.get("k") == b"w"
    mc.close()


# -- the rate limiter ---------------------------------------------------------------------------


def test_limiter_locks_a_pair_at_max_failures(client: MemcacheClient, ns: str) -> None:
    limiter = MemcacheRateLimiter(client, max_failures=3, lockout=60, namespace=ns)
    verdicts = [limiter.begin("192.0.2.1", "ann@example.com", verify=True) for _ in range(4)]
    assert verdicts == [Verdict.GO] * 3 + [Verdict.LOCKED_OUT]
    assert limiter.begin("192.0.2.1", "bob@example.com", verify=True) is Verdict.GO
    assert limiter.begin("192.0.2.2", "ann@example.com", verify=True) is Verdict.GO


def test_parallel_attempts_cannot_slip_through_together(client: MemcacheClient,
                                                        ns: str) -> None:
    """The count is an atomic incr taken before the verification: of 40 attempts racing from
    20 threads, exactly max_failures go on, however they interleave."""
    limiter = MemcacheRateLimiter(client, max_failures=5, lockout=60, namespace=ns)
    verdicts: list[Verdict] = []
    start = threading.Barrier(20)

    def attempt() -> None:
        start.wait()
        for _ in range(2):
            verdicts.append(limiter.begin("192.0.2.1", "ann@example.com", verify=True))

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verdicts.count(Verdict.GO) == 5
    assert verdicts.count(Verdict.LOCKED_OUT) == 35


def test_limiter_counts_ipv6_by_prefix_and_ipv4_mapped_as_ipv4(client: MemcacheClient,
                                                               ns: str) -> None:
    limiter = MemcacheRateLimiter(client, max_failures=2, lockout=60, namespace=ns)
    for client_ip in ("2001:db8:7:7::1", "2001:DB8:7:7:0:0:0:2"):
        limiter.begin(client_ip, "ann@example.com", verify=True)
    assert limiter.begin("2001:db8:7:7::3", "ann@example.com", verify=True) is Verdict.LOCKED_OUT
    assert limiter.begin("2001:db8:7:8::1", "ann@example.com", verify=True) is Verdict.GO
    limiter.begin("::ffff:198.51.100.7", "ann@example.com", verify=True)
    limiter.begin("198.51.100.7", "ann@example.com", verify=True)
    assert limiter.begin("198.51.100.7", "ann@example.com", verify=True) is Verdict.LOCKED_OUT


def test_limiter_window_expires(client: MemcacheClient, ns: str) -> None:
    limiter = MemcacheRateLimiter(client, max_failures=1, lockout=2, verify_budget=1,
                                  verify_window=2, namespace=ns)
    assert limiter.begin("192.0.2.9", "ann@example.com", verify=True) is Verdict.GO
    assert limiter.begin("192.0.2.9", "ann@example.com", verify=True) is Verdict.LOCKED_OUT
    assert limiter.begin("192.0.2.9", "bob@example.com", verify=True) is Verdict.THROTTLED
    time.sleep(2.1)
    assert limiter.begin("192.0.2.9", "ann@example.com", verify=True) is Verdict.GO


def test_unlock_starts_the_counters_afresh(client: MemcacheClient, ns: str) -> None:
    limiter = MemcacheRateLimiter(client, max_failures=1, lockout=60, namespace=ns)
    for client_ip in ("192.0.2.1", "192.0.2.2"):
        for _ in range(2):
            limiter.begin(client_ip, "ann@example.com", verify=True)
    limiter.unlock_address("192.0.2.1")
    assert limiter.begin("192.0.2.1", "ann@example.com", verify=True) is Verdict.GO
    assert limiter.begin("192.0.2.2", "ann@example.com", verify=True) is Verdict.LOCKED_OUT
    limiter.unlock_names(["ann@example.com"])
    assert limiter.begin("192.0.2.2", "ann@example.com", verify=True) is Verdict.GO


def test_limiter_with_memcached_down_raises(down_client: MemcacheClient) -> None:
    limiter = MemcacheRateLimiter(down_client, max_failures=2, lockout=60)
    with pytest.raises(BackendUnavailable):
        limiter.begin("192.0.2.1", "ann@example.com", verify=True)
    with pytest.raises(BackendUnavailable):
        limiter.unlock_address("192.0.2.1")


# -- the registry -------------------------------------------------------------------------------


def test_registry_enforces_the_limit(client: MemcacheClient, ns: str) -> None:
    reg = registry(client, ns)
    assert [reg.acquire("u1", f"h:1:{n}", 2) for n in range(3)] == [True, True, False]
    assert reg.acquire("u2", "h:1:9", 2)
    assert not reg.acquire("u3", "h:1:10", 0)


def test_registry_acquire_is_idempotent(client: MemcacheClient, ns: str) -> None:
    reg = registry(client, ns)
    assert reg.acquire("u1", "h:1:1", 2)
    assert reg.acquire("u1", "h:1:1", 2)
    assert reg.acquire("u1", "h:1:2", 2)
    assert not reg.acquire("u1", "h:1:3", 2)


def test_release_frees_a_slot_and_twice_is_harmless(client: MemcacheClient, ns: str) -> None:
    reg = registry(client, ns)
    assert reg.acquire("u1", "h:1:1", 2)
    assert reg.acquire("u1", "h:1:2", 2)
    reg.release("u1", "h:1:1")
    assert reg.acquire("u1", "h:1:3", 2)
    reg.release("u1", "h:1:1")
    reg.release("u1", "h:1:1")
    assert not reg.acquire("u1", "h:1:4", 2)  # the second release freed nobody else's slot
    reg.release("u1", "never-acquired")


def test_release_leaves_a_slot_someone_else_holds(client: MemcacheClient, ns: str) -> None:
    reg = registry(client, ns)
    assert reg.acquire("u1", "h:1:1", 1)
    client.set(f"{ns}:reg:u:u1#0", b"other:7:1", 60)  # as if it had expired and been retaken
    reg.release("u1", "h:1:1")
    assert client.get(f"{ns}:reg:u:u1#0") == b"other:7:1"


def test_refresh_notices_a_slot_taken_by_someone_else(client: MemcacheClient, ns: str) -> None:
    reg = registry(client, ns)
    assert reg.acquire("u1", "h:1:1", 1)
    assert reg.acquire("u2", "h:1:2", 1)
    client.set(f"{ns}:reg:u:u1#0", b"other:7:1", 60)
    assert not reg.refresh("u1", "h:1:1")
    assert reg.refresh_all() == 1
    assert client.get(f"{ns}:reg:u:u1#0") == b"other:7:1"


def test_twenty_threads_race_for_five_slots(client: MemcacheClient, ns: str) -> None:
    reg = registry(client, ns)
    barrier = threading.Barrier(20)
    results: list[bool] = [False] * 20

    def claim(n: int) -> None:
        barrier.wait()
        results[n] = reg.acquire("racer", f"h:1:{n}", 5)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 5
    assert not reg.acquire("racer", "h:1:late", 5)
    for n in [n for n, won in enumerate(results) if won]:
        reg.release("racer", f"h:1:{n}")
    assert [reg.acquire("racer", f"h:2:{n}", 5) for n in range(6)] == [True] * 5 + [False]


def run_children(mode: str, address: Address, ns: str, user: str, count: int, limit: int,
                 processes: int) -> list[subprocess.Popen[str]]:
    start = time.time() + 1.5  # after every child has imported and started its threads
    argv = [sys.executable, "-c", CHILD, mode, address.host, str(address.port), ns, user,
            str(count), str(limit), str(start)]
    return [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(processes)]


def test_two_processes_race_for_five_slots(address: Address, ns: str) -> None:
    children = run_children("race", address, ns, "racer", 10, 5, processes=2)
    outputs = []
    for child in children:
        with child:
            out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        outputs.append(json.loads(out))
    results = [won for output in outputs for won in output["results"]]
    assert len(results) == 20
    assert results.count(True) == 5


def test_expired_slots_stop_counting(client: MemcacheClient, ns: str) -> None:
    kept, lapsed, other = (registry(client, ns, slot_ttl=2) for _ in range(3))
    assert kept.acquire("u1", "a:1:1", 2)
    assert lapsed.acquire("u1", "b:2:1", 2)
    assert not other.acquire("u1", "c:3:1", 2)
    for _ in range(5):  # 2.5 s: past the ttl of the slot that is not refreshed
        time.sleep(0.5)
        assert kept.refresh_all() == 1
    assert other.acquire("u1", "c:3:1", 2)
    assert not other.acquire("u1", "c:3:2", 2)
    assert kept.refresh("u1", "a:1:1")
    assert not kept.refresh("u1", "a:1:2")


def test_release_worker_frees_exactly_that_workers_slots(client: MemcacheClient,
                                                         ns: str) -> None:
    worker_a, worker_b, master = (registry(client, ns) for _ in range(3))
    assert worker_a.acquire("u1", "hostA:100:1", 3)
    assert worker_a.acquire("u1", "hostA:100:2", 3)
    assert worker_a.acquire("u2", "hostA:100:3", 3)
    assert worker_b.acquire("u1", "hostB:100:1", 3)
    assert master.release_worker("hostA:100:") == 3
    assert master.release_worker("hostA:100:") == 0
    assert [worker_b.acquire("u1", f"hostB:100:{n}", 3) for n in (2, 3, 4)] == [
        True, True, False]
    assert [worker_b.acquire("u2", f"hostB:100:{n}", 3) for n in (5, 6, 7, 8)] == [
        True, True, True, False]


def test_the_master_frees_the_slots_of_a_killed_worker(address: Address, ns: str,
                                                       client: MemcacheClient) -> None:
    [child] = run_children("hold", address, ns, "victim", 3, 3, processes=1)
    with child:
        assert child.stdout is not None
        held = json.loads(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert held["results"] == [True, True, True]
    master = registry(client, ns)
    assert not master.acquire("victim", "master:1:1", 3)
    assert master.release_worker(held["prefix"]) == 3
    assert master.acquire("victim", "master:1:1", 3)


def test_refresh_restores_slots_after_a_memcached_restart(
        private_memcached: PrivateMemcached) -> None:
    mc = MemcacheClient([private_memcached.address], timeout=0.5)
    worker, other = registry(mc, "r"), registry(mc, "r")
    assert worker.acquire("u1", "w:1:1", 2)
    assert worker.acquire("u1", "w:1:2", 2)
    private_memcached.stop()
    private_memcached.start()
    assert worker.refresh_all() == 2
    assert not other.acquire("u1", "o:2:1", 2)
    assert other.release_worker("w:1:") == 2  # the index was rewritten too
    assert other.acquire("u1", "o:2:1", 2)
    mc.close()


def test_open_policy_allows_logins_and_warns_once(down_client: MemcacheClient,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(down_client, "p", fail_open=True)
    with caplog.at_level(logging.WARNING, logger="pop3d.adapters.registry"):
        assert reg.acquire("u1", "h:1:1", 1)
        assert reg.acquire("u1", "h:1:2", 1)
        reg.release("u1", "h:1:1")
    assert len(caplog.records) == 1
    assert "login allowed" in caplog.records[0].getMessage()


def test_closed_policy_refuses_with_sys_temp(down_client: MemcacheClient) -> None:
    reg = registry(down_client, "p", fail_open=False)
    with pytest.raises(BackendUnavailable) as raised:
        reg.acquire("u1", "h:1:1", 1)
    assert raised.value.reply.startswith("[SYS/TEMP]")
    reg.release("u1", "h:1:1")
    assert reg.release_worker("h:1:") == 0


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_release_refresh_and_cleanup_never_raise_when_memcached_dies(
        private_memcached: PrivateMemcached, policy: str) -> None:
    state = build_shared_state([private_memcached.address], 0.3, policy, max_failures=5,
                               lockout=60, namespace="d", retry_after=0.0)
    assert state.registry.acquire("u1", "h:1:1", 1)
    assert state.registry.acquire("u1", "h:1:2", 2)
    private_memcached.stop()
    assert state.registry.refresh_all() == 2
    state.registry.release("u1", "h:1:1")
    assert state.registry.release_worker("h:1:") == 0
    if policy == "open":
        assert state.registry.acquire("u1", "h:1:3", 1)
    else:
        with pytest.raises(BackendUnavailable):
            state.registry.acquire("u1", "h:1:3", 1)
    state.close()


def test_build_shared_state_rejects_an_unknown_policy(address: Address) -> None:
    with pytest.raises(ValueError, match="registry_failure"):
        build_shared_state([address], 0.5, "ajar", max_failures=5, lockout=60)
