"""The authenticator over an in-memory credential store (bcrypt cost 4 for speed)."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import bcrypt
import pytest

from pop3d import auth
from pop3d.auth import KeyAuthenticator, cache_key, generate_key
from pop3d.errors import AuthFailed, BackendUnavailable, StoreUnavailable
from pop3d.ports import Credentials, KeyRecord, Principal, UserRecord

from .fakes import FakeClock

COST = 4
KEY = generate_key(COST)
SMTP_ONLY = generate_key(COST)


@dataclass
class FakeStore:
    users: dict[str, UserRecord] = field(default_factory=dict)
    keys: dict[str, list[tuple[str, KeyRecord]]] = field(default_factory=dict)  # (prefix, key)
    touched: list[list[str]] = field(default_factory=list)
    lookups: int = 0
    down: bool = False

    def find_user(self, address: str) -> UserRecord | None:
        self.lookups += 1
        if self.down:
            raise StoreUnavailable("down")
        return self.users.get(address.lower())

    def candidate_keys(self, user_id: str, presented: str) -> list[KeyRecord]:
        return [key for prefix, key in self.keys.get(user_id, [])
                if not prefix or presented.startswith(prefix)]

    def touch_keys(self, key_ids: Sequence[str]) -> None:
        if self.down:
            raise StoreUnavailable("down")
        self.touched.append(list(key_ids))


def _store() -> FakeStore:
    store = FakeStore()
    store.users["ann@example.com"] = UserRecord("u-ann", "ann@example.com", False)
    store.users["off@example.com"] = UserRecord("u-off", "off@example.com", True)
    store.users["bare@example.com"] = UserRecord("u-bare", "bare@example.com", False)
    store.keys["u-ann"] = [
        (KEY.prefix, KeyRecord("k-ann", KEY.bcrypt_hash, frozenset({"pop3", "imap"}))),
        (SMTP_ONLY.prefix, KeyRecord("k-smtp", SMTP_ONLY.bcrypt_hash, frozenset({"smtp"}))),
    ]
    store.keys["u-off"] = [
        (KEY.prefix, KeyRecord("k-off", KEY.bcrypt_hash, frozenset({"pop3"})))]
    return store


def _login(username: str, password: str, ip: str = "192.0.2.1") -> Credentials:
    return Credentials(username=username, password=password, client_ip=ip, mechanism="USER")


@pytest.fixture
def store() -> FakeStore:
    return _store()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authenticator(store: FakeStore, clock: FakeClock) -> KeyAuthenticator:
    return KeyAuthenticator(store, bcrypt_cost=COST, clock=clock)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt verification's hash, in order."""
    seen: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(auth.bcrypt, "checkpw", spy)
    return seen


def test_key_format() -> None:
    key = generate_key(COST)
    assert re.fullmatch(r"pk_[a-z2-7]{10}_[A-Za-z0-9_-]{43}", key.key)
    assert key.key.startswith(key.prefix + "_")
    assert len(key.key.encode()) < 72
    assert bcrypt.checkpw(key.key.encode(), key.bcrypt_hash)
    assert bcrypt.checkpw(key.key[:-1].encode(), key.bcrypt_hash) is False
    assert key.key not in repr(key)
    assert generate_key(COST).prefix != key.prefix


def test_right_key_gives_the_principal(authenticator: KeyAuthenticator) -> None:
    principal = authenticator.authenticate(_login("Ann@Example.com", KEY.key))
    assert principal == Principal(user_id="u-ann", key_id="k-ann", address="ann@example.com")


@pytest.mark.parametrize("password", [
    "wrong", KEY.key[:-1] + "x", KEY.key + "x", "", SMTP_ONLY.key, "é" * 40, "x" * 73,
    KEY.key + "y" * 20, "\udcff" * 3, "\ud800"])
def test_every_bad_key_fails_the_same_way(authenticator: KeyAuthenticator,
                                          password: str) -> None:
    with pytest.raises(AuthFailed) as caught:
        authenticator.authenticate(_login("ann@example.com", password))
    assert caught.value.reply == "[AUTH] Authentication failed"


def test_scope_is_configurable(store: FakeStore) -> None:
    imap = KeyAuthenticator(store, scope="imap", bcrypt_cost=COST)
    assert imap.authenticate(_login("ann@example.com", KEY.key)).key_id == "k-ann"
    smtp = KeyAuthenticator(store, scope="smtp", bcrypt_cost=COST)
    with pytest.raises(AuthFailed):
        smtp.authenticate(_login("ann@example.com", KEY.key))
    assert smtp.authenticate(_login("ann@example.com", SMTP_ONLY.key)).key_id == "k-smtp"


@pytest.mark.parametrize("username", ["nobody@example.com", "off@example.com",
                                      "bare@example.com"])
def test_unknown_disabled_or_keyless_user_still_costs_one_bcrypt(
        authenticator: KeyAuthenticator, checks: list[bytes], username: str) -> None:
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login(username, KEY.key))
    assert len(checks) == 1
    assert checks[0].startswith(f"$2b${COST:02d}$".encode())  # same cost as real keys


def test_overlong_key_fails_cleanly_after_a_dummy_verify(
        authenticator: KeyAuthenticator, checks: list[bytes], store: FakeStore) -> None:
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "k" * 200))
    assert len(checks) == 1
    assert store.lookups == 0


def test_malformed_stored_hash_never_matches(store: FakeStore) -> None:
    store.keys["u-bare"] = [("", KeyRecord("k-bad", b"not a bcrypt hash", frozenset({"pop3"})))]
    with pytest.raises(AuthFailed):
        KeyAuthenticator(store, bcrypt_cost=COST).authenticate(_login("bare@example.com", "x"))


def test_key_without_prefix_is_checked(store: FakeStore) -> None:
    legacy = bcrypt.hashpw(b"legacy secret", bcrypt.gensalt(COST))
    store.keys["u-bare"] = [("", KeyRecord("k-legacy", legacy, frozenset({"pop3"})))]
    principal = KeyAuthenticator(store, bcrypt_cost=COST).authenticate(
        _login("bare@example.com", "legacy secret"))
    assert principal.key_id == "k-legacy"


def test_store_trouble_is_backend_unavailable(authenticator: KeyAuthenticator,
                                              store: FakeStore) -> None:
    store.down = True
    with pytest.raises(BackendUnavailable) as caught:
        authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert caught.value.reply.startswith("[SYS/TEMP]")


class FakeCache:
    def __init__(self, down: bool = False) -> None:
        self.items: dict[str, tuple[Principal | bool, int]] = {}
        self.down = down

    def get(self, key: str) -> Principal | bool | None:
        if self.down:
            raise BackendUnavailable("memcached down")
        item = self.items.get(key)
        return None if item is None else item[0]

    def put(self, key: str, result: Principal | bool, ttl: int) -> None:
        if self.down:
            raise BackendUnavailable("memcached down")
        self.items[key] = (result, ttl)


class FakeLimiter:
    def __init__(self, blocked: set[str] | None = None, down: bool = False) -> None:
        self.blocked = blocked or set()
        self.failures: list[str] = []
        self.down = down

    def is_blocked(self, client_ip: str) -> bool:
        if self.down:
            raise BackendUnavailable("memcached down")
        return client_ip in self.blocked

    def record_failure(self, client_ip: str) -> None:
        if self.down:
            raise BackendUnavailable("memcached down")
        self.failures.append(client_ip)


def test_cache_key_is_hmac_of_scope_username_and_key() -> None:
    expected = hmac.new(b"s3cret", b"pop3ann@example.com\0pw", hashlib.sha256).hexdigest()
    assert cache_key(b"s3cret", "pop3", "Ann@Example.COM", "pw") == expected
    assert cache_key(b"other", "pop3", "ann@example.com", "pw") != expected


def test_results_are_cached_both_ways(store: FakeStore) -> None:
    cache = FakeCache()
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, cache=cache,
                                     cache_secret=b"s", cache_ttl=30)
    principal = authenticator.authenticate(_login("ann@example.com", KEY.key))
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong"))
    assert sorted(map(str, cache.items.values())) == sorted(
        [str((principal, 30)), str((False, 30))])
    assert KEY.key not in str(cache.items)
    lookups = store.lookups
    assert authenticator.authenticate(_login("ANN@example.com", KEY.key)) == principal
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong"))
    assert store.lookups == lookups  # both answered from the cache


def test_store_trouble_is_not_cached(store: FakeStore) -> None:
    cache = FakeCache()
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, cache=cache, cache_secret=b"s")
    store.down = True
    with pytest.raises(BackendUnavailable):
        authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert cache.items == {}


def test_cache_and_limiter_outages_do_not_stop_logins(store: FakeStore) -> None:
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, cache=FakeCache(down=True),
                                     cache_secret=b"s", rate_limiter=FakeLimiter(down=True))
    assert authenticator.authenticate(_login("ann@example.com", KEY.key)).user_id == "u-ann"
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong"))


def test_a_cache_needs_a_secret(store: FakeStore) -> None:
    with pytest.raises(ValueError, match="secret"):
        KeyAuthenticator(store, bcrypt_cost=COST, cache=FakeCache())


def test_rate_limiter_blocks_and_counts_failures(store: FakeStore,
                                                 checks: list[bytes]) -> None:
    limiter = FakeLimiter(blocked={"203.0.113.9"})
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, rate_limiter=limiter)
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", KEY.key, ip="203.0.113.9"))
    assert store.lookups == 0
    assert checks == []
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong", ip="198.51.100.1"))
    store.down = True
    with pytest.raises(BackendUnavailable):
        authenticator.authenticate(_login("ann@example.com", KEY.key, ip="198.51.100.2"))
    assert limiter.failures == ["198.51.100.1"]


def test_touches_are_coalesced_into_one_write_per_interval(
        store: FakeStore, clock: FakeClock) -> None:
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, clock=clock, touch_interval=5)
    for _ in range(3):
        authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert authenticator.flush_touches() == 0  # the interval has not passed yet
    assert store.touched == []
    clock.now += 5
    assert authenticator.flush_touches() == 1
    assert store.touched == [["k-ann"]]
    assert authenticator.flush_touches() == 0  # nothing new queued
    authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert authenticator.flush_touches(force=True) == 1
    assert store.touched == [["k-ann"], ["k-ann"]]


def test_touches_survive_a_store_outage(store: FakeStore, clock: FakeClock) -> None:
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, clock=clock, touch_interval=1)
    authenticator.authenticate(_login("ann@example.com", KEY.key))
    store.down = True
    clock.now += 1
    assert authenticator.flush_touches() == 0
    store.down = False
    clock.now += 1
    assert authenticator.flush_touches() == 1
    assert store.touched == [["k-ann"]]


def test_concurrent_logins_from_a_thread_pool(store: FakeStore, clock: FakeClock) -> None:
    other = generate_key(COST)
    store.keys["u-ann"].append(
        (other.prefix, KeyRecord("k-other", other.bcrypt_hash, frozenset({"pop3"}))))
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, clock=clock)
    results: list[str] = []
    lock = threading.Lock()

    def login(key: str) -> None:
        for _ in range(5):
            key_id = authenticator.authenticate(_login("ann@example.com", key)).key_id
            with lock:
                results.append(key_id)

    threads = [threading.Thread(target=login, args=(k,)) for k in (KEY.key, other.key) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["k-ann"] * 10 + ["k-other"] * 10
    assert authenticator.flush_touches(force=True) == 2
    assert store.touched == [["k-ann", "k-other"]]
