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
from pop3d.auth import KeyAuthenticator, cache_key, generate_key, seal, unseal
from pop3d.errors import AuthFailed, BackendUnavailable, StoreUnavailable
from pop3d.ports import CachedLogin, Credentials, KeyRecord, Principal, UserRecord, Verdict

from .fakes import FakeClock, FakeMetrics

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
    """The AuthCache port in memory: sealed entries, and a generation per (lower-cased) name."""

    def __init__(self, down: bool = False) -> None:
        self.entries: dict[str, tuple[bytes, int]] = {}
        self.generations: dict[str, str] = {}
        self.down = down

    def get(self, name: str, digest: str) -> CachedLogin:
        if self.down:
            raise BackendUnavailable("memcached down")
        generation = self.generations.setdefault(name.lower(), "1")
        entry = self.entries.get(digest)
        return CachedLogin(None if entry is None else entry[0], generation)

    def put(self, digest: str, entry: bytes, ttl: int) -> None:
        if self.down:
            raise BackendUnavailable("memcached down")
        self.entries[digest] = (entry, ttl)

    def bump(self, name: str) -> None:
        self.generations[name] = str(int(self.generations.get(name, "1")) + 1)


class FakeLimiter:
    """The RateLimiter port: answers ``verdict`` (or what ``verdicts`` says for an address) and
    records every call."""

    def __init__(self, verdict: Verdict = Verdict.GO, down: bool = False) -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, str, str, bool]] = []
        self.down = down

    def begin(self, client_ip: str, name: str, *, verify: bool) -> Verdict:
        if self.down:
            raise BackendUnavailable("memcached down")
        self.calls.append(("begin", client_ip, name, verify))
        return self.verdict

    def end(self, client_ip: str, name: str, *, succeeded: bool) -> None:
        if self.down:
            raise BackendUnavailable("memcached down")
        self.calls.append(("end", client_ip, name, succeeded))


SECRET = b"k" * 32


def _cached(store: FakeStore, cache: FakeCache, **options: object) -> KeyAuthenticator:
    return KeyAuthenticator(store, bcrypt_cost=COST, cache=cache, cache_secret=SECRET,
                            cache_ttl=30, **options)  # type: ignore[arg-type]


def test_the_cache_key_is_an_hmac_of_length_prefixed_fields() -> None:
    fields = b"".join(len(f).to_bytes(4, "big") + f for f in (b"pop3", b"ann@example.com", b"pw"))
    expected = hmac.new(b"s3cret", b"pop3d auth-cache key v2\0" + fields,
                        hashlib.sha256).hexdigest()
    assert cache_key(b"s3cret", "pop3", "Ann@Example.COM", "pw") == expected
    assert cache_key(b"other", "pop3", "ann@example.com", "pw") != expected


@pytest.mark.parametrize(("one", "other"), [
    (("pop3", "ann@example.com", "pw"), ("pop", "3ann@example.com", "pw")),
    (("pop3", "ann\0x", "y"), ("pop3", "ann", "x\0y")),
    (("pop3", "ann", "\0pw"), ("pop3", "ann\0", "pw")),
])
def test_different_credentials_never_share_a_cache_key(one: tuple[str, str, str],
                                                       other: tuple[str, str, str]) -> None:
    assert cache_key(SECRET, *one) != cache_key(SECRET, *other)


PRINCIPAL = Principal(user_id="u-ann", key_id="k-ann", address="ann@example.com")


@pytest.mark.parametrize("result", [PRINCIPAL, False])
def test_a_sealed_entry_opens_only_for_its_digest_generation_and_time(
        result: Principal | bool) -> None:
    digest = cache_key(SECRET, "pop3", "ann@example.com", KEY.key)
    entry = seal(SECRET, digest, result, "7", sealed_at=1000.0)
    assert unseal(SECRET, digest, entry, "7", now=1030.0, ttl=30) == result
    assert unseal(SECRET, digest, entry, "7", now=1030.5, ttl=30) is None  # expired
    assert unseal(SECRET, digest, entry, "8", now=1000.0, ttl=30) is None  # generation bumped
    assert unseal(SECRET, "0" * 64, entry, "7", now=1000.0, ttl=30) is None  # other keys
    assert unseal(b"x" * 32, digest, entry, "7", now=1000.0, ttl=30) is None  # another secret
    assert KEY.key.encode() not in entry


def test_each_reader_applies_its_own_ttl_to_an_entry() -> None:
    digest = cache_key(SECRET, "pop3", "ann@example.com", KEY.key)
    entry = seal(SECRET, digest, PRINCIPAL, "7", sealed_at=1000.0)  # by a host keeping 900 s
    assert unseal(SECRET, digest, entry, "7", now=1100.0, ttl=900) == PRINCIPAL
    assert unseal(SECRET, digest, entry, "7", now=1100.0, ttl=30) is None  # this host: 30 s


def test_entries_of_the_former_format_are_misses() -> None:
    digest = cache_key(SECRET, "pop3", "ann@example.com", KEY.key)
    entry = seal(SECRET, digest, PRINCIPAL, "7", sealed_at=1000.0)
    payload = entry.rpartition(b".")[0].replace(b'"at":1000', b'"exp":1030')
    former = payload + b"." + auth._entry_mac(SECRET, digest, payload).encode()
    assert unseal(SECRET, digest, former, "7", now=1000.0, ttl=30) is None


def test_entries_written_without_the_secret_are_misses() -> None:
    digest = cache_key(SECRET, "pop3", "ann@example.com", "wrong")
    forged_ok = b'{"address":"ann@example.com","at":1000,"gen":"7","key_id":"k-ann",' \
                b'"ok":true,"user_id":"u-ann"}'
    assert unseal(SECRET, digest, forged_ok, "7", now=1000.0, ttl=30) is None  # no MAC at all
    assert unseal(SECRET, digest, forged_ok + b"." + b"0" * 64, "7", now=1000.0, ttl=30) is None
    tampered = seal(SECRET, digest, False, "7", 1000.0).replace(b'"ok":false', b'"ok":true')
    assert unseal(SECRET, digest, tampered, "7", now=1000.0, ttl=30) is None


def test_results_are_cached_both_ways(store: FakeStore) -> None:
    cache = FakeCache()
    authenticator = _cached(store, cache)
    principal = authenticator.authenticate(_login("ann@example.com", KEY.key))
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong"))
    assert sorted(ttl for _, ttl in cache.entries.values()) == [30, 30]
    assert KEY.key.encode() not in b"".join(entry for entry, _ in cache.entries.values())
    lookups = store.lookups
    assert authenticator.authenticate(_login("ANN@example.com", KEY.key)) == principal
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong"))
    assert store.lookups == lookups  # both answered from the cache


def test_a_new_generation_sends_the_next_login_to_the_store(store: FakeStore) -> None:
    cache = FakeCache()
    authenticator = _cached(store, cache)
    authenticator.authenticate(_login("ann@example.com", KEY.key))
    store.keys["u-ann"] = []  # the key is revoked in the database...
    cache.bump("ann@example.com")  # ...and the admin command bumps the name's generation
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", KEY.key))


def test_a_result_verified_during_a_bump_is_cached_for_the_old_generation(
        store: FakeStore) -> None:
    cache = FakeCache()
    authenticator = _cached(store, cache)
    real_find = store.find_user

    def revoked_meanwhile(address: str) -> UserRecord | None:
        cache.bump("ann@example.com")  # while bcrypt runs, the admin revokes
        return real_find(address)

    store.find_user = revoked_meanwhile  # type: ignore[method-assign]
    authenticator.authenticate(_login("ann@example.com", KEY.key))
    store.find_user = real_find  # type: ignore[method-assign]
    lookups = store.lookups
    authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert store.lookups == lookups + 1  # not answered from the stale entry


def test_store_trouble_is_not_cached(store: FakeStore) -> None:
    cache = FakeCache()
    authenticator = _cached(store, cache)
    store.down = True
    with pytest.raises(BackendUnavailable):
        authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert cache.entries == {}


def test_cache_and_limiter_outages_do_not_stop_logins(store: FakeStore) -> None:
    authenticator = _cached(store, FakeCache(down=True), rate_limiter=FakeLimiter(down=True))
    assert authenticator.authenticate(_login("ann@example.com", KEY.key)).user_id == "u-ann"
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong"))


def test_a_cache_needs_a_secret(store: FakeStore) -> None:
    with pytest.raises(ValueError, match="secret"):
        KeyAuthenticator(store, bcrypt_cost=COST, cache=FakeCache())


def test_attempts_are_counted_before_the_verification(store: FakeStore,
                                                      checks: list[bytes]) -> None:
    limiter = FakeLimiter()
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, rate_limiter=limiter)
    seen: list[int] = []
    real_begin = limiter.begin

    def begin(client_ip: str, name: str, *, verify: bool) -> Verdict:
        seen.append(len(checks))  # how many bcrypt verifications had run by then
        return real_begin(client_ip, name, verify=verify)

    limiter.begin = begin  # type: ignore[method-assign]
    with pytest.raises(AuthFailed):
        authenticator.authenticate(_login("ann@example.com", "wrong", ip="198.51.100.1"))
    authenticator.authenticate(_login("ann@example.com", KEY.key, ip="198.51.100.1"))
    store.down = True
    with pytest.raises(BackendUnavailable):
        authenticator.authenticate(_login("ann@example.com", KEY.key, ip="198.51.100.2"))
    assert seen == [0, 1, 2]
    assert limiter.calls == [
        ("begin", "198.51.100.1", "ann@example.com", True),  # failed: stays counted
        ("begin", "198.51.100.1", "ann@example.com", True),
        ("end", "198.51.100.1", "ann@example.com", True),  # succeeded: forgotten
        ("begin", "198.51.100.2", "ann@example.com", True),
        ("end", "198.51.100.2", "ann@example.com", False),  # the store was down: taken back
    ]


@pytest.mark.parametrize("verdict", [Verdict.LOCKED_OUT, Verdict.THROTTLED])
def test_a_refused_attempt_is_never_verified(store: FakeStore, checks: list[bytes],
                                             verdict: Verdict) -> None:
    metrics = FakeMetrics()
    authenticator = KeyAuthenticator(store, bcrypt_cost=COST, rate_limiter=FakeLimiter(verdict),
                                     metrics=metrics)
    with pytest.raises(AuthFailed) as caught:
        authenticator.authenticate(_login("ann@example.com", KEY.key))
    assert caught.value.reply == "[AUTH] Authentication failed"  # the same as a wrong key
    assert checks == []
    assert store.lookups == 0
    assert metrics.counters == {f"auth.{verdict.name.lower()}": 1}


def test_a_key_known_good_is_never_refused_by_the_counters(store: FakeStore,
                                                          checks: list[bytes]) -> None:
    cache, limiter = FakeCache(), FakeLimiter()
    authenticator = _cached(store, cache, rate_limiter=limiter)
    principal = authenticator.authenticate(_login("ann@example.com", KEY.key))
    limiter.verdict = Verdict.LOCKED_OUT  # the NAT's other users failed, or this pair did
    limiter.calls.clear()
    verified = len(checks)
    assert authenticator.authenticate(_login("ann@example.com", KEY.key)) == principal
    assert limiter.calls == []
    assert len(checks) == verified


def test_a_cached_failure_is_counted_but_spends_no_verification(store: FakeStore,
                                                               checks: list[bytes]) -> None:
    cache, limiter = FakeCache(), FakeLimiter()
    authenticator = _cached(store, cache, rate_limiter=limiter)
    for _ in range(2):
        with pytest.raises(AuthFailed):
            authenticator.authenticate(_login("ann@example.com", "wrong"))
    assert [call[3] for call in limiter.calls] == [True, False]
    assert len(checks) == 1


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


@pytest.mark.parametrize("key", [KEY.key, "pk_wrongwrong_" + "x" * 43])
def test_the_same_key_sent_at_once_is_verified_once(
        store: FakeStore, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    started = threading.Barrier(4)
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def slow(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        threading.Event().wait(0.2)  # the other logins arrive meanwhile
        return real(password, hashed)

    monkeypatch.setattr(auth.bcrypt, "checkpw", slow)
    authenticator = _cached(store, FakeCache())
    outcomes: list[str] = []

    def login() -> None:
        started.wait()
        try:
            outcomes.append(authenticator.authenticate(_login("ann@example.com", key)).key_id)
        except AuthFailed:
            outcomes.append("refused")

    threads = [threading.Thread(target=login) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == (["k-ann"] if key == KEY.key else ["refused"]) * 4
    assert len(checked) == 1  # one bcrypt for the four
