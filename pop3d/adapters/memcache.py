"""The state workers share through memcached: the auth cache, the failure counters, the registry.

This is the only module that imports pymemcache.  :class:`MemcacheClient` wraps it: one
thread-safe client per process (a connection pool per server), built after ``fork()``, with
``memcached.timeout`` on connect and on every read and write.  Every pymemcache or socket error
becomes :class:`~pop3d.errors.BackendUnavailable` here; nothing above sees a library exception.

Keys are ``<namespace>:<kind>:<part>``; a part that is not plainly safe is replaced by its
SHA-256, so every key is printable ASCII without spaces and far below memcached's 250 octets:

* ``pop3d:auth:<hmac hex>``      auth cache entry: JSON of a Principal, or ``{"ok": false}``
* ``pop3d:fail:<client ip>``     failures of one address (canonical form; IPv4-mapped -> IPv4)
* ``pop3d:reg:u:<user>#<n>``     registry slot n of a user (see :mod:`pop3d.adapters.registry`)
* ``pop3d:reg:w:<host:pid:>#<k>`` shard k of a worker's session index

A key is placed on a server by its part before ``#``, so all the slots of one user (and all the
shards of one worker) live on one server and are read in one round trip.  The placement (a
rendezvous hash over the servers, pure Python in pymemcache) is computed once per part and
remembered, not once per key.  A server that fails
to answer is skipped for ``retry_after`` seconds: while memcached is down, a login pays the
timeout about once per interval, not on every call.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from pop3d.adapters.keys import DEFAULT_NAMESPACE, client_ip_part, key_part
from pop3d.adapters.registry import DEFAULT_SLOT_TTL, MemcacheRegistry
from pop3d.errors import BackendUnavailable
from pop3d.ports import Principal

__all__ = [
    "Endpoint", "MemcacheAuthCache", "MemcacheClient", "MemcacheRateLimiter", "MemcacheRegistry",
    "SharedState", "build_shared_state",
]  # fmt: skip

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 2.0  # seconds a failed server is skipped (pymemcache HashClient: 1-60 s)
PLACEMENTS = 65536  # key groups (users, workers, addresses) whose server is remembered
MAX_RELATIVE_TTL = 30 * 24 * 3600  # memcached reads a larger expiry as a Unix timestamp
_HEX_DIGEST = re.compile(r"[0-9a-f]{32,128}")
_CLOSED_BY_SERVER = (ConnectionResetError, BrokenPipeError, MemcacheUnexpectedCloseError)


class Endpoint(Protocol):
    """A memcached server address (``pop3d.config.Address`` is one)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def _expiry(ttl: float) -> int:
    return max(1, min(int(ttl), MAX_RELATIVE_TTL))


class MemcacheClient:
    """Typed, error-translating access to a set of memcached servers; safe across threads.

    Construct it after ``fork()``: it connects lazily, on first use, and a connection must
    never be shared by two processes."""

    def __init__(self, servers: Sequence[Endpoint], *, timeout: float,
                 retry_after: float = DEFAULT_RETRY_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not servers:
            raise ValueError("at least one memcached server is needed")
        self._pools = {
            _node_name(s): PooledClient((s.host, s.port), connect_timeout=timeout,
                                        timeout=timeout, no_delay=True, default_noreply=False)
            for s in servers
        }
        self._hash = RendezvousHash(nodes=list(self._pools))
        self._placement = functools.lru_cache(maxsize=PLACEMENTS)(self._hash.get_node)
        self._retry_after = retry_after
        self._clock = clock
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        return _as_bytes(self._run(key, "get", key))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values found, by key; one round trip per server involved."""
        found: dict[str, bytes] = {}
        for batch in self._by_node(keys):
            values = self._run(batch[0], "get_many", batch)
            found.update({k: v for k, v in values.items() if isinstance(v, bytes)})
        return found

    def gets(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The value and its CAS token, or ``(None, None)``."""
        value, token = self._run(key, "gets", key)
        return _as_bytes(value), _as_bytes(token)

    def set(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(self._run(key, "set", key, value, expire=_expiry(ttl)))

    def set_many(self, values: Mapping[str, bytes], ttl: float) -> list[str]:
        """Store every value; returns the keys that were not stored."""
        failed: list[str] = []
        for batch in self._by_node(values):
            items = {k: values[k] for k in batch}
            failed += self._run(batch[0], "set_many", items, expire=_expiry(ttl))
        return failed

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if the key is absent; False when it exists."""
        return bool(self._run(key, "add", key, value, expire=_expiry(ttl)))

    def cas(self, key: str, value: bytes, token: bytes, ttl: float) -> bool:
        """Store only if the key is unchanged since ``gets``; a negative ``ttl`` deletes."""
        expire = -1 if ttl < 0 else _expiry(ttl)
        return bool(self._run(key, "cas", key, value, token, expire=expire))

    def incr(self, key: str, delta: int) -> int | None:
        """The new value, or None when the key is absent."""
        result = self._run(key, "incr", key, delta)
        return None if result is None else int(result)

    def delete(self, key: str) -> bool:
        return bool(self._run(key, "delete", key))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def _run(self, key: str, command: str, *args: Any, **kwargs: Any) -> Any:
        """One pymemcache call on the server of ``key``, its errors as BackendUnavailable."""
        node = self._node(key)
        with self._lock:
            down = self._clock() < self._down_until.get(node, 0.0)
        if down:
            raise BackendUnavailable(f"memcached {node} is down (retrying shortly)")
        call = getattr(self._pools[node], command)
        try:
            try:
                return call(*args, **kwargs)
            except _CLOSED_BY_SERVER:  # a pooled connection from before a memcached restart
                return call(*args, **kwargs)
        except _CLOSED_BY_SERVER as exc:
            raise BackendUnavailable(f"memcached {node}: {_describe(exc)}") from exc
        except OSError as exc:  # refused, unreachable, timed out: skip the server for a while
            with self._lock:
                self._down_until[node] = self._clock() + self._retry_after
            raise BackendUnavailable(f"memcached {node}: {_describe(exc)}") from exc
        except MemcacheError as exc:
            raise BackendUnavailable(f"memcached {node}: {_describe(exc)}") from exc

    def _node(self, key: str) -> str:
        node: str = self._placement(key.partition("#")[0])
        return node

    def _by_node(self, keys: Iterable[str]) -> list[list[str]]:
        batches: dict[str, list[str]] = {}
        for key in keys:
            batches.setdefault(self._node(key), []).append(key)
        return list(batches.values())


def _node_name(server: Endpoint) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{host}:{server.port}"


def _as_bytes(value: object) -> bytes | None:
    return value if isinstance(value, bytes) else None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class MemcacheAuthCache:
    """The AuthCache port: results under ``<ns>:auth:<hmac hex>`` as explicit JSON."""

    def __init__(self, client: MemcacheClient, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client = client
        self._prefix = f"{key_part(namespace)}:auth:"

    def get(self, key: str) -> Principal | bool | None:
        raw = self._client.get(self._key(key))
        return None if raw is None else _decode_result(raw)

    def put(self, key: str, result: Principal | bool, ttl: int) -> None:
        if ttl <= 0 or result is True:  # no expiry would be forever; True names nobody
            return
        self._client.set(self._key(key), _encode_result(result), ttl)

    def _key(self, key: str) -> str:
        # The caller passes an HMAC digest; anything else is hashed, so no credential is stored.
        digest = key if _HEX_DIGEST.fullmatch(key) else _sha256_hex(key)
        return self._prefix + digest


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _encode_result(result: Principal | bool) -> bytes:
    if isinstance(result, Principal):
        fields = {"ok": True, "user_id": result.user_id, "key_id": result.key_id,
                  "address": result.address}
    else:
        fields = {"ok": False}
    return json.dumps(fields, separators=(",", ":")).encode()


def _decode_result(raw: bytes) -> Principal | bool | None:
    """The cached result, or None (a miss) for anything this version did not write."""
    try:
        fields = json.loads(raw)
        if fields["ok"] is False:
            return False
        values = (fields["user_id"], fields["key_id"], fields["address"])
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring an unreadable auth cache entry")
        return None
    if fields["ok"] is not True or not all(isinstance(v, str) for v in values):
        return None
    return Principal(user_id=values[0], key_id=values[1], address=values[2])


class MemcacheRateLimiter:
    """The RateLimiter port: failures per client address, counted for ``lockout`` seconds from
    the first one; an address is blocked once it has ``max_failures``."""

    def __init__(self, client: MemcacheClient, *, max_failures: int, lockout: int,
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self._client = client
        self._max_failures = max_failures
        self._lockout = lockout
        self._prefix = f"{key_part(namespace)}:fail:"

    def is_blocked(self, client_ip: str) -> bool:
        raw = self._client.get(self._key(client_ip))
        count = int(raw) if raw is not None and raw.strip().isdigit() else 0
        return count >= self._max_failures

    def record_failure(self, client_ip: str) -> None:
        if self._lockout <= 0:
            return
        key = self._key(client_ip)
        # add starts the window; incr leaves the expiry alone, so the window does not slide.
        if self._client.add(key, b"1", self._lockout):
            return
        if self._client.incr(key, 1) is None:  # expired between the two calls
            self._client.add(key, b"1", self._lockout)

    def _key(self, client_ip: str) -> str:
        return self._prefix + client_ip_part(client_ip)


@dataclass
class SharedState:
    """The three memcached-backed ports of one process, over one client."""

    client: MemcacheClient
    auth_cache: MemcacheAuthCache
    rate_limiter: MemcacheRateLimiter
    registry: MemcacheRegistry

    def close(self) -> None:
        self.client.close()


def build_shared_state(servers: Sequence[Endpoint], timeout: float, registry_failure: str, *,
                       max_failures: int, lockout: int, namespace: str = DEFAULT_NAMESPACE,
                       slot_ttl: int = DEFAULT_SLOT_TTL,
                       retry_after: float = DEFAULT_RETRY_AFTER) -> SharedState:
    """Everything over one new client: call it in the worker, after ``fork()`` (or in the
    master, for :meth:`MemcacheRegistry.release_worker`).

    ``registry_failure`` is ``memcached.registry_failure``: "open" or "closed"."""
    if registry_failure not in ("open", "closed"):
        raise ValueError(f'registry_failure must be "open" or "closed", not {registry_failure!r}')
    client = MemcacheClient(servers, timeout=timeout, retry_after=retry_after)
    return SharedState(
        client=client,
        auth_cache=MemcacheAuthCache(client, namespace=namespace),
        rate_limiter=MemcacheRateLimiter(client, max_failures=max_failures, lockout=lockout,
                                         namespace=namespace),
        registry=MemcacheRegistry(client, fail_open=registry_failure == "open",
                                  namespace=namespace, slot_ttl=slot_ttl),
    )
