"""Authentication with API keys (ARCHITECTURE.md section 4), and the making of new keys.

Flow per login: cache -> limits -> user lookup -> candidate keys -> bcrypt -> scope.

* The cache first: a key it knows to be good for the name's current credential generation is
  accepted at once, whatever the counters say, so nobody's failures from a shared address (a
  NAT) ever refuse a known key.  Everything else is counted before it is verified (an atomic
  increment in memcached): a (client address, login name) pair with ``max_failures`` attempts
  in its window is locked out, and an address that spent its budget of fresh bcrypt
  verifications is throttled.  Either is refused like a wrong key, after the same delay.
* Every failure looks the same to the client (AuthFailed) and costs about the same time: an
  unknown or disabled user, or a user without a candidate key, still pays one bcrypt verify
  against a dummy hash of the configured cost, so response times do not reveal which
  addresses exist.
* Store trouble is BackendUnavailable and is neither cached nor counted as a failure: the
  client's key may be fine.  The optional cache and rate limiter fail open: when memcached is
  down, logins still work, only slower.
* Cache entries cannot be forged by whoever can write to memcached: the key is an HMAC of
  length-prefixed fields, and the entry is sealed with an HMAC over the key, the result, the
  generation and an expiry time (:func:`seal`, :func:`unseal`).
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
import json
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
    CachedLogin,
    Credentials,
    CredentialStore,
    KeyRecord,
    Metrics,
    Principal,
    RateLimiter,
    Tracer,
    Verdict,
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
_KEY_LABEL = b"pop3d auth-cache key v2\0"  # domain separation: one secret, two HMAC uses
_ENTRY_LABEL = b"pop3d auth-cache entry v2\0"
_UNCACHED = CachedLogin(None, "")


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


def _fields(*parts: str | bytes) -> bytes:
    """Each part preceded by its length: no two different lists of parts give the same octets."""
    octets = [p if isinstance(p, bytes) else p.encode("utf-8", "surrogatepass") for p in parts]
    return b"".join(len(p).to_bytes(4, "big") + p for p in octets)


def cache_key(secret: bytes, scope: str, username: str, password: str) -> str:
    """HMAC-SHA256(secret, length-prefixed scope, lower(username), password) in hex.

    memcached sees only this digest, never a key; without the secret it cannot be reversed."""
    message = _KEY_LABEL + _fields(scope, username.lower(), password)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def seal(secret: bytes, digest: str, result: Principal | bool, generation: str,
         sealed_at: float) -> bytes:
    """The cache entry for ``result`` under ``digest``: JSON, a dot, and an HMAC binding it to
    the digest, so an entry can neither be made up nor moved to other credentials.  It carries
    the time it was sealed: each reader applies its own ``cache_ttl`` to it."""
    fields: dict[str, object] = {"gen": generation, "at": int(sealed_at), "ok": False}
    if isinstance(result, Principal):
        fields.update(ok=True, user_id=result.user_id, key_id=result.key_id,
                      address=result.address)
    payload = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return payload + b"." + _entry_mac(secret, digest, payload).encode()


def unseal(secret: bytes, digest: str, entry: bytes, generation: str, *, now: float,
           ttl: float) -> Principal | bool | None:
    """The result sealed in ``entry``, or None (a miss) unless its HMAC is right, it was stored
    for ``generation`` and sealed at most ``ttl`` seconds ago: a host whose ``cache_ttl`` was
    lowered does not trust entries another host (or its former self) keeps for longer."""
    payload, _, mac = entry.rpartition(b".")
    if not hmac.compare_digest(mac, _entry_mac(secret, digest, payload).encode()):
        return None
    fields = json.loads(payload)
    sealed_at = fields.get("at")
    if fields["gen"] != generation or not isinstance(sealed_at, int) or sealed_at < now - ttl:
        return None
    if fields["ok"] is not True:
        return False
    return Principal(user_id=fields["user_id"], key_id=fields["key_id"],
                     address=fields["address"])


def _entry_mac(secret: bytes, digest: str, payload: bytes) -> str:
    return hmac.new(secret, _ENTRY_LABEL + _fields(digest, payload), hashlib.sha256).hexdigest()


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
        metrics: Metrics | None = None,
        touch_interval: float = DEFAULT_TOUCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
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
        self._metrics = metrics
        self._touch_interval = touch_interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._tracer = tracer  # spans: the login, and its cache, lookup and bcrypt steps
        # Same cost as real keys, so a failed lookup takes as long as a failed verify.
        self._dummy_hash = bcrypt.hashpw(_DUMMY_PASSWORD, bcrypt.gensalt(rounds=bcrypt_cost))
        self._lock = threading.Lock()
        self._pending_touches: set[str] = set()
        self._last_flush = clock()
        self._flights: dict[str, _Flight] = {}  # verifications running, by cache digest

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal, or AuthFailed ([AUTH]) / BackendUnavailable ([SYS/TEMP])."""
        with self._tracer.span("pop3.login") as span:
            span.set_attribute("pop3.mechanism", credentials.mechanism)
            principal = self._authenticate(credentials)
            span.set_attribute("pop3.user_id", principal.user_id)
            return principal

    def _authenticate(self, credentials: Credentials) -> Principal:
        digest = self._cache_key(credentials)
        looked_up = self._look_up(credentials.username, digest)
        cached = self._unseal(digest, looked_up)
        if isinstance(cached, Principal):  # known good: no counter refuses it
            self._queue_touch(cached.key_id)
            return cached
        self._begin(credentials, verify=cached is None)
        if cached is False:
            raise AuthFailed("failure cached")
        try:
            principal = self._verify_once(digest, credentials)
        except AuthFailed:
            self._remember(digest, looked_up, False)
            raise
        except BackendUnavailable:
            self._end(credentials, succeeded=False)
            raise
        self._remember(digest, looked_up, principal)
        self._end(credentials, succeeded=True)
        self._queue_touch(principal.key_id)
        return principal

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

    def _verify_once(self, digest: str, credentials: Credentials) -> Principal:
        """Verify, or wait for the same verification already running in this process.

        A client opening several sessions at once (a phone and a desktop, a client with
        parallel connections) sends the same key several times before any result is cached:
        one bcrypt answers them all.  ``digest`` (the cache key, "" without a cache) names
        the credentials exactly; the limits have counted every attempt already."""
        if not digest:
            return self._verify(credentials)
        with self._lock:
            flight = self._flights.get(digest)
            leading = flight is None
            if flight is None:
                flight = self._flights[digest] = _Flight()
        if not leading:
            return flight.result()
        try:
            flight.principal = self._verify(credentials)
            return flight.principal
        except Pop3dError as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[digest]
            flight.done.set()

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

    def _cache_key(self, credentials: Credentials) -> str:
        if self._cache is None:
            return ""
        return cache_key(self._cache_secret, self._scope, credentials.username,
                         credentials.password)

    def _look_up(self, username: str, digest: str) -> CachedLogin:
        """What the cache holds; its generation is "" when there is no cache to write to."""
        if self._cache is None:
            return _UNCACHED
        with self._tracer.span("pop3.auth.cache.get"):
            return _tolerate_outage("auth cache", functools.partial(
                self._cache.get, username, digest), _UNCACHED)

    def _unseal(self, digest: str, looked_up: CachedLogin) -> Principal | bool | None:
        if looked_up.entry is None or not looked_up.generation:
            return None
        try:
            return unseal(self._cache_secret, digest, looked_up.entry, looked_up.generation,
                          now=self._wall_clock(), ttl=self._cache_ttl)
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring an unreadable auth cache entry")
            return None

    def _remember(self, digest: str, looked_up: CachedLogin, result: Principal | bool) -> None:
        """Cache ``result`` for the generation read before the verification: a bump since then
        (a revocation while bcrypt ran) makes it stale at once."""
        if self._cache is None or not looked_up.generation:
            return
        entry = seal(self._cache_secret, digest, result, looked_up.generation,
                     self._wall_clock())
        with self._tracer.span("pop3.auth.cache.put"):
            _tolerate_outage("auth cache", functools.partial(
                self._cache.put, digest, entry, self._cache_ttl), None)

    def _begin(self, credentials: Credentials, *, verify: bool) -> None:
        """Count the attempt; AuthFailed when the limits refuse it without a verification."""
        if self._limiter is None:
            return
        verdict = _tolerate_outage("rate limiter", functools.partial(
            self._limiter.begin, credentials.client_ip, credentials.username, verify=verify),
            Verdict.GO)
        if verdict is not Verdict.GO:
            if self._metrics is not None:
                self._metrics.incr(f"auth.{verdict.name.lower()}")  # locked_out, throttled
            raise AuthFailed(f"refused without verifying: {verdict.value}")

    def _end(self, credentials: Credentials, *, succeeded: bool) -> None:
        if self._limiter is not None:
            _tolerate_outage("rate limiter", functools.partial(
                self._limiter.end, credentials.client_ip, credentials.username,
                succeeded=succeeded), None)

    def _queue_touch(self, key_id: str) -> None:
        with self._lock:
            self._pending_touches.add(key_id)


class _Flight:
    """One verification others wait for: its principal, or the error it ended in."""

    __slots__ = ("done", "error", "principal")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.principal: Principal | None = None
        self.error: Pop3dError | None = None

    def result(self) -> Principal:
        self.done.wait()
        if self.principal is not None:
            return self.principal
        if self.error is not None:  # a fresh error per waiter: tracebacks are not shared
            raise type(self.error)(str(self.error))
        raise BackendUnavailable("the verification this login waited for failed")


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
