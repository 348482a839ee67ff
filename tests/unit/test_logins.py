"""The memcached side of logins over an in-memory store (the same calls memcached answers):
lockouts per (address, login name), the verification budget per address, unlocking, and the
auth cache's credential generations."""

from __future__ import annotations

import pytest

from pop3d.adapters.logins import MemcacheAuthCache, MemcacheRateLimiter, name_part
from pop3d.errors import BackendUnavailable
from pop3d.ports import Verdict

from .test_memcache_unit import MemoryStore

GO, LOCKED, THROTTLED = Verdict.GO, Verdict.LOCKED_OUT, Verdict.THROTTLED
NAT = "198.51.100.7"


def limiter(store: MemoryStore, **options: int) -> MemcacheRateLimiter:
    settings = {"max_failures": 3, "lockout": 900, "verify_budget": 1000, "verify_window": 60}
    return MemcacheRateLimiter(store, **{**settings, **options})


def attempts(limits: MemcacheRateLimiter, client: str, name: str, count: int) -> list[Verdict]:
    return [limits.begin(client, name, verify=True) for _ in range(count)]


def test_a_pair_is_locked_out_after_max_failures_and_nobody_else_is() -> None:
    limits = limiter(MemoryStore())
    assert attempts(limits, NAT, "ann@example.com", 5) == [GO, GO, GO, LOCKED, LOCKED]
    assert limits.begin(NAT, "bob@example.com", verify=True) is GO  # a neighbour behind the NAT
    assert limits.begin("192.0.2.1", "ann@example.com", verify=True) is GO  # ann elsewhere
    assert limits.begin(NAT, "ANN@Example.com", verify=True) is LOCKED  # names ignore case


def test_an_ipv6_prefix_counts_as_one_address() -> None:
    limits = limiter(MemoryStore())
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        limits.begin(host, "ann@example.com", verify=True)
    assert limits.begin("2001:db8:1:2::99", "ann@example.com", verify=True) is LOCKED
    assert limits.begin("2001:db8:1:3::1", "ann@example.com", verify=True) is GO


def test_a_success_forgets_the_pairs_attempts() -> None:
    limits = limiter(MemoryStore())
    attempts(limits, NAT, "ann@example.com", 2)
    limits.end(NAT, "ann@example.com", succeeded=True)
    assert attempts(limits, NAT, "ann@example.com", 4) == [GO, GO, GO, LOCKED]


def test_an_attempt_the_store_could_not_answer_is_taken_back() -> None:
    limits = limiter(MemoryStore())
    for _ in range(5):  # the database is down: the client retries, never wrong
        assert limits.begin(NAT, "ann@example.com", verify=True) is GO
        limits.end(NAT, "ann@example.com", succeeded=False)


def test_the_verification_budget_throttles_an_address_but_not_counted_attempts() -> None:
    limits = limiter(MemoryStore(), verify_budget=4, max_failures=100)
    names = [f"user{n}@example.com" for n in range(6)]
    assert [limits.begin(NAT, name, verify=True) for name in names] == \
        [GO, GO, GO, GO, THROTTLED, THROTTLED]
    assert limits.begin(NAT, "user0@example.com", verify=False) is GO  # a cached failure
    assert limits.begin("192.0.2.1", "user0@example.com", verify=True) is GO


def test_unlocking_an_address_clears_its_pairs_and_its_budget_only() -> None:
    store = MemoryStore()
    limits = limiter(store, verify_budget=3)
    attempts(limits, NAT, "ann@example.com", 3)
    attempts(limits, "192.0.2.1", "ann@example.com", 3)
    assert limits.unlock_address(NAT) == NAT
    assert limits.begin(NAT, "ann@example.com", verify=True) is GO
    assert limits.begin("192.0.2.1", "ann@example.com", verify=True) is LOCKED
    assert limits.unlock_address("2001:db8:1:2::5") == "2001:db8:1:2::/64"


def test_unlocking_names_clears_them_from_every_address() -> None:
    limits = limiter(MemoryStore())
    for client in (NAT, "192.0.2.1"):
        attempts(limits, client, "ann@example.com", 3)
        attempts(limits, client, "bob@example.com", 3)
    limits.unlock_names(["ann@example.com", "alias-of-ann@example.com"])
    for client in (NAT, "192.0.2.1"):
        assert limits.begin(client, "ann@example.com", verify=True) is GO
        assert limits.begin(client, "bob@example.com", verify=True) is LOCKED


def test_no_lockout_window_means_no_lockout() -> None:
    limits = limiter(MemoryStore(), lockout=0)
    assert attempts(limits, NAT, "ann@example.com", 10) == [GO] * 10


def test_the_keys_carry_no_login_name_or_secret() -> None:
    store = MemoryStore()
    limits = limiter(store)
    limits.begin(NAT, "ann@example.com", verify=True)
    MemcacheAuthCache(store).get("ann@example.com", "a" * 64)
    keys = " ".join(store.data)
    assert "ann" not in keys
    assert name_part("Ann@Example.com") == name_part("ann@example.com")
    assert len(name_part("x")) == 32


def test_the_limiter_raises_backend_unavailable_when_memcached_is_down() -> None:
    store = MemoryStore()
    store.down = True
    with pytest.raises(BackendUnavailable):
        limiter(store).begin(NAT, "ann@example.com", verify=True)


# -- the auth cache ------------------------------------------------------------------------------


def test_a_name_gets_a_generation_that_a_bump_changes() -> None:
    store = MemoryStore()
    cache = MemcacheAuthCache(store, namespace="t")
    first = cache.get("ann@example.com", "a" * 64)
    assert first.entry is None
    assert first.generation.isdigit()
    assert cache.get("ANN@example.com", "a" * 64).generation == first.generation
    cache.bump(["ann@example.com", "never-logged-in@example.com"])
    assert cache.get("ann@example.com", "a" * 64).generation != first.generation
    assert sum(key.startswith("t:gen:") for key in store.data) == 1  # none for a stranger


def test_entries_are_stored_and_read_with_the_generation_in_one_call() -> None:
    store = MemoryStore()
    cache = MemcacheAuthCache(store, namespace="t")
    cache.put("b" * 64, b"sealed", 30)
    cache.put("c" * 64, b"never", 0)  # no expiry would be forever: not stored
    found = cache.get("ann@example.com", "b" * 64)
    assert found.entry == b"sealed"
    assert "t:auth:" + "c" * 64 not in store.data


def test_a_key_that_is_no_digest_is_hashed_before_it_reaches_memcached() -> None:
    store = MemoryStore()
    MemcacheAuthCache(store, namespace="t").put("pk_abc_secret", b"x", 30)
    assert not any("secret" in key for key in store.data)
