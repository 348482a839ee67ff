"""Authentication with API keys (ARCHITECTURE.md section 4), and the making of new keys.

Flow per login: rate limit -> cache -> user lookup -> candidate keys -> bcrypt -> scope.

* Every failure looks the same to the client (AuthFailed) and costs about the same time: an
  unknown or disabled user, or a user without a candidate key, still pays one bcrypt verify
  against a dummy hash of the configured cost, so response times do not reveal which
  addresses exist.
* Store trouble is BackendUnavailable and is neither cached nor counted as a failure: the
  client's key may be fine.  The optional cache and rate limiter fail open: when memcached is
  down, logins still work, only slower.
* ``last_used_at`` is not written during the login: the key id joins a set, and
  :meth:`KeyAuthenticator.flush_touches` writes the whole set in one statement.

``authenticate`` is called from the worker's thread pool, so shared state is behind a lock and
the credential store must give each thread its own connection (PgCredentialStore does).

Key format: ``pk_`` + 10 lowercase base32 characters (the public prefix, stored in clear and
unique, so a login finds the one key to check) + ``_`` + 43 URL-safe random characters (256
bits of secret).  57 octets in all, under bcrypt's 72-octet limit, and hashed whole.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import bcrypt

from pop3d.errors import AuthFailed, BackendUnavailable, Pop3dError
from pop3d.ports import (
    NULL_TRACER,
    AuthCache,
    Credentials,
    CredentialStore,
    KeyRecord,
    Principal,
    RateLimiter,
    Tracer,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

BCRYPT_MAX_OCTETS = 72  # bcrypt reads at most 72 octets; bcrypt 5 raises ValueError beyond
KEY_PREFIX = "pk_"
PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case
PREFIX_CHARS = 10  # 50 bits: collisions are rare, and retried
SECRET_BYTES = 32  # 256 bits of secret, 43 characters of base64url
DEFAULT_TOUCH_INTERVAL = 5.0  # seconds between last_used_at writes
_DUMMY_PASSWORD = b"pop3d: no such user"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: show ``key`` once, store ``prefix`` and ``bcrypt_hash``."""

    key: str = field(repr=False)
    prefix: str
    bcrypt_hash: bytes = field(repr=False)


def generate_key(cost: int) -> NewKey:
    """A new random API key and its bcrypt hash of the given cost (4-31)."""
    prefix = KEY_PREFIX + "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_CHARS))
    key = f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    hashed = bcrypt.hashpw(key.encode("ascii"), bcrypt.gensalt(rounds=cost))
    return NewKey(key=key, prefix=prefix, bcrypt_hash=hashed)


def cache_key(secret: bytes, scope: str, username: str, password: str) -> str:
    """HMAC-SHA256(secret, scope + lower(username) + NUL + password) in hex.

    memcached sees only this digest, never a key; without the secret it cannot be reversed."""
    message = f"{scope}{username.lower()}\0{password}".encode("utf-8", "surrogateescape")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class KeyAuthenticator:
    """Implements :class:`pop3d.ports.Authenticator` over a CredentialStore."""

    def __init__(
        self,
        store: CredentialStore,
        *,
        scope: str = "pop3",
        bcrypt_cost: int = 10,
        cache: AuthCache | None = None,
        cache_secret: bytes = b"",
        cache_ttl: int = 30,
        rate_limiter: RateLimiter | None = None,
        touch_interval: float = DEFAULT_TOUCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer = NULL_TRACER,
    ) -> None:
        if cache is not None and not cache_secret:
            raise ValueError("an auth cache needs a secret to key it with")
        self._store = store
        self._scope = scope
        self._cache = cache
        self._cache_secret = cache_secret
        self._cache_ttl = cache_ttl
        self._limiter = rate_limiter
        self._touch_interval = touch_interval
        self._clock = clock
        self._tracer = tracer  # spans: the login, and its cache, lookup and bcrypt steps
        # Same cost as real keys, so a failed lookup takes as long as a failed verify.
        self._dummy_hash = bcrypt.hashpw(_DUMMY_PASSWORD, bcrypt.gensalt(rounds=bcrypt_cost))
        self._lock = threading.Lock()
        self._pending_touches: set[str] = set()
        self._last_flush = clock()

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal, or AuthFailed ([AUTH]) / BackendUnavailable ([SYS/TEMP])."""
        with self._tracer.span("pop3.login") as span:
            span.set_attribute("pop3.mechanism", credentials.mechanism)
            principal = self._authenticate(credentials)
            span.set_attribute("pop3.user_id", principal.user_id)
            return principal

    def _authenticate(self, credentials: Credentials) -> Principal:
        if self._blocked(credentials.client_ip):
            raise AuthFailed("client address is rate limited")
        key = self._cache_key(credentials)
        cached = self._cached(key)
        if cached is None:
            try:
                cached = self._verify(credentials)
            except AuthFailed:
                cached = False
            self._remember(key, cached)
        if not isinstance(cached, Principal):
            self._record_failure(credentials.client_ip)
            raise AuthFailed
        self._queue_touch(cached.key_id)
        return cached

    def flush_touches(self, *, force: bool = False) -> int:
        """Write the queued ``last_used_at`` updates in one statement; return how many keys.

        Cheap to call often: the worker calls it from its loop (say once a second) and it
        writes at most once per ``touch_interval`` seconds; ``force=True`` writes now (at
        shutdown).  When the store is down the ids stay queued for the next flush.  It uses
        the calling thread's store connection, never one of the login threads'.
        """
        now = self._clock()
        with self._lock:
            if not self._pending_touches or (
                    not force and now - self._last_flush < self._touch_interval):
                return 0
            ids, self._pending_touches = self._pending_touches, set()
            self._last_flush = now
        try:
            self._store.touch_keys(sorted(ids))
        except BackendUnavailable as exc:
            with self._lock:
                self._pending_touches |= ids
            log.warning("last_used_at update postponed: %s", exc)
            return 0
        except Pop3dError as exc:
            log.error("last_used_at update dropped: %s", exc)
            return 0
        return len(ids)

    def _verify(self, credentials: Credentials) -> Principal:
        password = _octets(credentials.password)
        user = None
        if password is not None:
            with self._tracer.span("pop3.auth.lookup"):
                user = self._store.find_user(credentials.username)
        if password is None or user is None or user.disabled:
            with self._tracer.span("pop3.auth.bcrypt"):
                self._dummy_verify(password)
            raise AuthFailed
        with self._tracer.span("pop3.auth.lookup"):
            keys = self._store.candidate_keys(user.user_id, credentials.password)
        with self._tracer.span("pop3.auth.bcrypt"):
            matched = self._match(password, keys)
        if matched is None or self._scope not in matched.scopes:
            raise AuthFailed
        return Principal(user_id=user.user_id, key_id=matched.key_id, address=user.address)

    def _match(self, password: bytes, keys: list[KeyRecord]) -> KeyRecord | None:
        if not keys:
            self._dummy_verify(password)
            return None
        for key in keys:
            try:
                if bcrypt.checkpw(password, key.bcrypt_hash):
                    return key
            except ValueError:
                log.warning("API key %s has a malformed bcrypt hash; it can never match",
                            key.key_id)
        return None

    def _dummy_verify(self, password: bytes | None) -> None:
        candidate = (password or b"")[:BCRYPT_MAX_OCTETS]
        bcrypt.checkpw(candidate, self._dummy_hash)

    def _cache_key(self, credentials: Credentials) -> str | None:
        if self._cache is None:
            return None
        return cache_key(self._cache_secret, self._scope, credentials.username,
                         credentials.password)

    def _cached(self, key: str | None) -> Principal | bool | None:
        if self._cache is None or key is None:
            return None
        with self._tracer.span("pop3.auth.cache.get"):
            return _tolerate_outage("auth cache", functools.partial(self._cache.get, key), None)

    def _remember(self, key: str | None, result: Principal | bool) -> None:
        if self._cache is not None and key is not None:
            with self._tracer.span("pop3.auth.cache.put"):
                _tolerate_outage("auth cache", functools.partial(
                    self._cache.put, key, result, self._cache_ttl), None)

    def _blocked(self, client_ip: str) -> bool:
        if self._limiter is None:
            return False
        return _tolerate_outage("rate limiter",
                                functools.partial(self._limiter.is_blocked, client_ip), False)

    def _record_failure(self, client_ip: str) -> None:
        if self._limiter is not None:
            _tolerate_outage("rate limiter",
                             functools.partial(self._limiter.record_failure, client_ip), None)

    def _queue_touch(self, key_id: str) -> None:
        with self._lock:
            self._pending_touches.add(key_id)


def _tolerate_outage(what: str, call: Callable[[], T], fallback: T) -> T:
    """``call()``, or ``fallback`` when memcached is down: the cache and the rate limiter fail
    open, so an outage makes logins slower, never impossible."""
    try:
        return call()
    except BackendUnavailable as exc:
        log.warning("%s unavailable: %s", what, exc)
        return fallback


def _octets(password: str) -> bytes | None:
    """The key as bcrypt sees it, or None when no stored key could be it (too long, unencodable)."""
    try:
        octets = password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return octets if len(octets) <= BCRYPT_MAX_OCTETS else None
