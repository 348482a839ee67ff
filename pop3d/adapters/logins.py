"""The memcached side of a login: the auth cache with its credential generations, and the
counters that lock out (address, login name) pairs and throttle addresses.

Keys (``<ns>`` is the namespace, ``<name>`` the first 32 hex digits of SHA-256 of the lower-cased
login name, ``<addr>`` the client's :func:`~pop3d.adapters.keys.address_key`):

* ``<ns>:gen:<name>``           the name's credential generation, a number that admin commands
  increment (revoking a key, disabling a user, changing scopes); a name without one gets a
  random one, so an entry stored before memcached lost the key never matches again
* ``<ns>:auth:<digest>``        a sealed cache entry (:func:`pop3d.auth.seal`), ``cache_ttl``
* ``<ns>:unlock:a:<addr>``, ``<ns>:unlock:n:<name>``  unlock epochs, which ``pop3d unlock``
  increments: the counters below carry them in their keys, so a new epoch starts from zero
* ``<ns>:fail:<addr>.<e>:<name>.<e>``  attempts of one pair, for ``lockout`` seconds from the
  first (``add`` starts the window, ``incr`` counts without moving it)
* ``<ns>:verify:<addr>.<e>``    fresh verifications of one address, for ``verify_window``

Counting is ``incr`` before the verification: each attempt gets its own number, so parallel
attempts cannot all see "not yet locked" and slip through together.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Protocol

from pop3d.adapters.keys import DEFAULT_IPV6_PREFIX, DEFAULT_NAMESPACE, address_key, key_part
from pop3d.ports import CachedLogin, Verdict

log = logging.getLogger(__name__)

LONG_TTL = 30 * 24 * 3600  # generations and epochs: memcached's longest relative expiry
_HEX_DIGEST_LENGTH = 64


class CounterStore(Protocol):
    """What these need of memcached (:class:`pop3d.adapters.memcache.MemcacheClient`)."""

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]: ...

    def set(self, key: str, value: bytes, ttl: float) -> bool: ...

    def add(self, key: str, value: bytes, ttl: float) -> bool: ...

    def incr(self, key: str, delta: int) -> int | None: ...

    def decr(self, key: str, delta: int) -> int | None: ...

    def delete(self, key: str) -> bool: ...


def name_part(name: str) -> str:
    """A login name as a key fragment: case-insensitive, fixed length, not readable."""
    octets = name.lower().encode("utf-8", "surrogatepass")
    return hashlib.sha256(octets).hexdigest()[:32]


def count(store: CounterStore, key: str, ttl: float) -> int:
    """Increment ``key``, creating it with 1 for ``ttl`` seconds when absent; the new value."""
    value = store.incr(key, 1)
    if value is not None:
        return value
    if store.add(key, b"1", ttl):
        return 1
    return store.incr(key, 1) or 1  # another process created it between the two calls


class MemcacheAuthCache:
    """The AuthCache port: sealed entries, and a credential generation per login name."""

    def __init__(self, store: CounterStore, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._store = store
        self._ns = key_part(namespace)

    def get(self, name: str, digest: str) -> CachedLogin:
        generation_key, entry_key = self._generation_key(name), self._entry_key(digest)
        found = self._store.get_many([generation_key, entry_key])
        generation = found.get(generation_key) or self._new_generation(generation_key)
        return CachedLogin(found.get(entry_key), generation.decode("ascii", "replace"))

    def put(self, digest: str, entry: bytes, ttl: int) -> None:
        if ttl > 0:  # no expiry would be forever
            self._store.set(self._entry_key(digest), entry, ttl)

    def bump(self, names: Iterable[str]) -> None:
        """A new generation for each login name: what was cached for them is stale at once.  A
        name without a generation has nothing cached that could still be used."""
        for name in names:
            self._store.incr(self._generation_key(name), 1)

    def _new_generation(self, key: str) -> bytes:
        value = str(secrets.randbits(62)).encode()  # incr stays far from 2**64
        if self._store.add(key, value, LONG_TTL):
            return value
        return self._store.get(key) or value  # another login made it first: theirs is used

    def _generation_key(self, name: str) -> str:
        return f"{self._ns}:gen:{name_part(name)}"

    def _entry_key(self, digest: str) -> str:
        # The caller passes an HMAC digest; anything else is hashed, so no credential is stored.
        if len(digest) != _HEX_DIGEST_LENGTH or not all(c in "0123456789abcdef" for c in digest):
            digest = hashlib.sha256(digest.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self._ns}:auth:{digest}"


class MemcacheRateLimiter:
    """The RateLimiter port: an (address, login name) pair is locked out after
    ``max_failures`` attempts that did not succeed within ``lockout`` seconds of the first, and
    an address may start ``verify_budget`` fresh verifications per ``verify_window`` seconds."""

    def __init__(self, store: CounterStore, *, max_failures: int, lockout: int,
                 verify_budget: int = 300, verify_window: int = 60,
                 ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self._store = store
        self._max_failures, self._lockout = max_failures, lockout
        self._budget, self._window = verify_budget, verify_window
        self._ipv6_prefix = ipv6_prefix
        self._ns = key_part(namespace)

    def begin(self, client_ip: str, name: str, *, verify: bool) -> Verdict:
        address = address_key(client_ip, self._ipv6_prefix)
        pair, budget = self._counters(address, name)
        if self._lockout > 0:
            attempts = count(self._store, pair, self._lockout)
            if attempts > self._max_failures:
                if attempts == self._max_failures + 1:
                    log.warning("locking out login name %.80r from %s for up to %d s: %d failed "
                                "logins", name, address, self._lockout, self._max_failures)
                return Verdict.LOCKED_OUT
        if verify and count(self._store, budget, self._window) > self._budget:
            return Verdict.THROTTLED
        return Verdict.GO

    def end(self, client_ip: str, name: str, *, succeeded: bool) -> None:
        if self._lockout <= 0:
            return
        pair, _ = self._counters(address_key(client_ip, self._ipv6_prefix), name)
        if succeeded:
            self._store.delete(pair)
        else:
            self._store.decr(pair, 1)

    def unlock_address(self, client_ip: str) -> str:
        """Start the address's counters afresh (every login name); returns the address key."""
        address = address_key(client_ip, self._ipv6_prefix)
        count(self._store, self._epoch_key("a", key_part(address)), LONG_TTL)
        return address

    def unlock_names(self, names: Iterable[str]) -> None:
        """Start the counters of these login names afresh, from every address."""
        for name in names:
            count(self._store, self._epoch_key("n", name_part(name)), LONG_TTL)

    def _counters(self, address: str, name: str) -> tuple[str, str]:
        """The keys of the pair's attempts and of the address's budget, in the current epochs."""
        address_part, user = key_part(address), name_part(name)
        epochs = _epochs(self._store.get_many(
            [self._epoch_key("a", address_part), self._epoch_key("n", user)]))
        of_address = f"{address_part}.{epochs.get(self._epoch_key('a', address_part), '0')}"
        of_name = f"{user}.{epochs.get(self._epoch_key('n', user), '0')}"
        return f"{self._ns}:fail:{of_address}:{of_name}", f"{self._ns}:verify:{of_address}"

    def _epoch_key(self, kind: str, part: str) -> str:
        return f"{self._ns}:unlock:{kind}:{part}"


def _epochs(found: Mapping[str, bytes]) -> dict[str, str]:
    return {key: value.decode("ascii") for key, value in found.items() if value.isdigit()}
