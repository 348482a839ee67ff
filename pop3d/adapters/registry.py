"""The per-user session registry shared by every worker on every host (ARCHITECTURE §4.7).

Theory of operation.  A user with a limit of N has N slot keys, ``<ns>:reg:u:<user>#0`` to
``#N-1``; a session holds one slot, whose value is its session id.  Slots are claimed with
memcached ``add``, which creates a key only if it is absent: two sessions racing for a slot
cannot both win, so at most N sessions ever hold slots, without any read-modify-write of shared
data.  ``acquire`` first tries the one slot its session id hashes to: most users hold few of
their slots, so a login usually costs that one round trip whatever N is.  Only when that slot
is taken does it read the slots that follow, :data:`WINDOW` at a time, and try the free ones; a
user whose slots are all held is refused after one read of each window.  ``release`` deletes
the slot with ``cas`` (a negative expiry), so it never frees a slot someone else has taken
since.

Slots expire ``slot_ttl`` seconds after they were last written.  The worker calls
:meth:`MemcacheRegistry.refresh_if_due` once a second, which extends the slots of its live
sessions one index shard group at a time (``REFRESH_STEPS`` groups), so that every slot is
rewritten about every ``slot_ttl / 2`` seconds; a host that disappears stops refreshing and
its slots lapse.  Expiry is memcached's own clock, so clock skew between hosts does not
matter.

A SIGKILLed worker cannot release anything, so each process also keeps a session index:
``<ns>:reg:w:<host:pid:>#<k>`` (k < INDEX_SHARDS, by a hash of the session id) lists the
session, user and slot of every slot it holds.  A shard is rewritten whole from the process's
own bookkeeping after each change, so one shard stays small and needs no compare-and-set: only
this process writes it.  After reaping a worker, the master calls ``release_worker("host:pid:")``
to free every slot the index lists.  One registry per process, then, and session ids of the
form ``host:pid:n``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pop3d.adapters.keys import DEFAULT_NAMESPACE, key_part
from pop3d.errors import BackendUnavailable

log = logging.getLogger(__name__)

DEFAULT_REFRESH_INTERVAL = 60  # seconds in which a worker rewrites every slot it holds
DEFAULT_SLOT_TTL = 2 * DEFAULT_REFRESH_INTERVAL  # one missed refresh is forgiven, two are not
INDEX_SHARDS = 256  # a worker with 5000 sessions rewrites ~20 entries (~1 kB) per change
# A refresh is pure-Python work holding the GIL (30 ms for 5,000 slots): done at once, the
# worker's loop waits behind it and held sessions' commands take 100 ms and more.  In 32
# steps, one every slot_ttl / 64 seconds, each takes about 1 ms.
REFRESH_STEPS = 32
CLAIM_ROUNDS = 3  # tries of a slot (gets and cas) before a contended release gives up
WINDOW = 32  # slots read in one round trip when the first choice is taken
WARN_INTERVAL = 60.0  # seconds between "memcached is down" warnings


class SlotStore(Protocol):
    """What the registry needs of memcached (:class:`pop3d.adapters.memcache.MemcacheClient`)."""

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]: ...

    def gets(self, key: str) -> tuple[bytes | None, bytes | None]: ...

    def add(self, key: str, value: bytes, ttl: float) -> bool: ...

    def cas(self, key: str, value: bytes, token: bytes, ttl: float) -> bool: ...

    def set_many(self, values: Mapping[str, bytes], ttl: float) -> list[str]: ...

    def delete(self, key: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Held:
    user_id: str
    slot: int


_Shard = tuple[str, int]  # (worker prefix, shard number)


def worker_prefix(session_id: str) -> str:
    """The part of a session id naming its worker: ``host:pid:`` of ``host:pid:n``."""
    head, sep, _ = session_id.rpartition(":")
    return head + sep


def _shard_of(session_id: str) -> _Shard:
    number = zlib.crc32(session_id.encode("utf-8", "surrogateescape")) % INDEX_SHARDS
    return worker_prefix(session_id), number


def _id_bytes(session_id: str) -> bytes:
    return session_id.encode("utf-8", "surrogateescape")


class MemcacheRegistry:
    """The Registry port over memcached slots; safe to share between threads.

    ``fail_open`` is ``memcached.registry_failure == "open"``: when memcached cannot be
    reached, ``acquire`` allows the login (and warns at most once a minute) instead of raising
    BackendUnavailable.  ``release``, the refresh methods and ``release_worker`` never raise
    for memcached: they log, and what they could not do expires with ``slot_ttl``."""

    def __init__(self, store: SlotStore, *, fail_open: bool = True,
                 namespace: str = DEFAULT_NAMESPACE, slot_ttl: int = DEFAULT_SLOT_TTL,
                 warn_interval: float = WARN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._fail_open = fail_open
        self._ns = key_part(namespace)
        self._slot_ttl = slot_ttl
        self._refresh_interval = slot_ttl / 2
        self._step_interval = self._refresh_interval / REFRESH_STEPS
        self._next_refresh = clock() + self._step_interval
        self._next_step = 0
        self._warn_interval = warn_interval
        self._clock = clock
        self._last_warning = -math.inf
        self._shards: dict[_Shard, dict[str, _Held]] = {}
        self._lock = threading.RLock()  # the bookkeeping, and the order of index writes

    # -- the Registry port ------------------------------------------------------------------

    def acquire(self, user_id: str, session_id: str, limit: int) -> bool:
        """Claim a slot; False when the user's ``limit`` slots are all held."""
        if limit < 1:
            return False
        try:
            slot = self._claim(user_id, session_id, limit)
        except BackendUnavailable as exc:
            return self._unavailable(exc)
        if slot is None:
            return False
        with self._lock:
            self._shards.setdefault(_shard_of(session_id), {})[session_id] = _Held(user_id, slot)
            self._write_shards([_shard_of(session_id)])
        return True

    def release(self, user_id: str, session_id: str) -> None:
        """Give the slot back; a no-op when this process holds none for the session."""
        shard = _shard_of(session_id)
        with self._lock:
            held = self._shards.get(shard, {}).pop(session_id, None)
        if held is None:
            return
        try:
            self._free(self._slot_key(held.user_id, held.slot), session_id)
        except BackendUnavailable as exc:
            self._warn("registry: slot of session %s not released (it will expire): %s",
                       session_id, exc)
        with self._lock:
            self._write_shards([shard])

    # -- for the worker and the master --------------------------------------------------------

    def refresh(self, user_id: str, session_id: str) -> bool:
        """Extend one session's slot; False when it does not hold one (any more)."""
        shard = _shard_of(session_id)
        with self._lock:
            held = self._shards.get(shard, {}).get(session_id)
            if held is None:
                return False
            return self._refresh({session_id: held}) == 1

    def refresh_all(self) -> int:
        """Extend every slot this process holds and rewrite its index; returns how many slots
        it still holds.  Call it about every ``slot_ttl / 2`` seconds (default: every minute),
        off the worker's loop if it holds thousands of sessions (a few round trips)."""
        with self._lock:
            held = {sid: h for shard in self._shards.values() for sid, h in shard.items()}
            return self._refresh(held) if held else 0

    def refresh_if_due(self) -> int | None:
        """Refresh the next group of index shards when its turn has come (every
        ``slot_ttl / 2 / REFRESH_STEPS`` seconds, so each slot every ``slot_ttl / 2``); how
        many of that group's slots are still held, or None when no group was due.  Cheap
        enough for the worker's once-a-second housekeeping."""
        now = self._clock()
        with self._lock:
            if now < self._next_refresh:
                return None
            self._next_refresh += self._step_interval  # on schedule, whatever the ticks
            step, self._next_step = self._next_step, (self._next_step + 1) % REFRESH_STEPS
            held = {sid: h for shard, entries in self._shards.items()
                    if shard[1] % REFRESH_STEPS == step for sid, h in entries.items()}
            return self._refresh(held) if held else 0

    def release_worker(self, prefix: str) -> int:
        """Free every slot indexed for the worker whose session ids start with ``prefix``
        (``host:pid:``, as :func:`worker_prefix` gives); returns how many were freed.

        The master calls it after reaping a worker, before a new one could reuse the pid."""
        with self._lock:
            for shard in [s for s in self._shards if s[0] == prefix]:
                del self._shards[shard]
        keys = [self._index_key((prefix, n)) for n in range(INDEX_SHARDS)]
        freed = 0
        try:
            for key, raw in self._store.get_many(keys).items():
                freed += self._free_entries(prefix, _decode_entries(raw))
                self._store.delete(key)
        except BackendUnavailable as exc:
            log.warning("registry: slots of worker %s not released (they will expire): %s",
                        prefix, exc)
        return freed

    # -- slots ----------------------------------------------------------------------------------

    def _claim(self, user_id: str, session_id: str, limit: int) -> int | None:
        wanted = _id_bytes(session_id)
        # Each session starts at its own slot, so racing sessions rarely collide.
        first = zlib.crc32(wanted) % limit
        if self._store.add(self._slot_key(user_id, first), wanted, self._slot_ttl):
            return first
        order = [(first + step) % limit for step in range(limit)]
        for start in range(0, limit, WINDOW):
            slot = self._claim_in(user_id, order[start:start + WINDOW], wanted)
            if slot is not None:
                return slot
        return None

    def _claim_in(self, user_id: str, slots: list[int], wanted: bytes) -> int | None:
        """One of ``slots``: read them in one round trip, then try the free ones in turn."""
        keys = {slot: self._slot_key(user_id, slot) for slot in slots}
        taken = self._store.get_many(keys.values())
        for slot, key in keys.items():
            if taken.get(key) == wanted:
                return slot  # held already by this very session
        for slot, key in keys.items():
            if key not in taken and self._store.add(key, wanted, self._slot_ttl):
                return slot
        return None

    def _free(self, key: str, session_id: str) -> bool:
        """Delete the slot if ``session_id`` still holds it; True when it did."""
        for _ in range(CLAIM_ROUNDS):
            value, token = self._store.gets(key)
            if value != _id_bytes(session_id) or token is None:
                return False
            if self._store.cas(key, b"", token, -1):
                return True
        return False

    def _free_entries(self, prefix: str, entries: list[tuple[str, str, int]]) -> int:
        freed = 0
        for session_id, user_id, slot in entries:
            if worker_prefix(session_id) == prefix:
                freed += self._free(self._slot_key(user_id, slot), session_id)
        return freed

    def _refresh(self, held: dict[str, _Held]) -> int:
        """Rewrite the slots still ours with a new expiry, re-add the ones that vanished
        (memcached restarted or evicted them), forget the ones taken by others.  Called with
        the lock held, so no release of these sessions can run in between."""
        keys = {self._slot_key(h.user_id, h.slot): sid for sid, h in held.items()}
        try:
            current = self._store.get_many(keys)
            ours = {k: _id_bytes(s) for k, s in keys.items() if current.get(k) == _id_bytes(s)}
            self._store.set_many(ours, self._slot_ttl)  # a key not stored is retried next time
            readded = {k for k, s in keys.items()
                       if k not in current and self._store.add(k, _id_bytes(s), self._slot_ttl)}
        except BackendUnavailable as exc:
            self._warn("registry: slots not refreshed: %s", exc)
            return len(held)
        lost = [sid for k, sid in keys.items() if k not in ours and k not in readded]
        self._forget(lost)
        self._write_shards({_shard_of(sid) for sid in held})
        return len(held) - len(lost)

    def _forget(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            log.warning("registry: session %s lost its slot (expired and taken)", session_id)
            self._shards.get(_shard_of(session_id), {}).pop(session_id, None)

    # -- the index ------------------------------------------------------------------------------

    def _write_shards(self, shards: Iterable[_Shard]) -> None:
        """Store these index shards as this process's bookkeeping has them (lock held)."""
        shards = list(shards)
        values = {self._index_key(s): _encode_entries(self._shards.get(s, {})) for s in shards}
        try:
            self._store.set_many(values, self._slot_ttl)
        except BackendUnavailable as exc:
            self._warn("registry: session index not written: %s", exc)
        for shard in [s for s in shards if not self._shards.get(s)]:
            self._shards.pop(shard, None)

    def _slot_key(self, user_id: str, slot: int) -> str:
        return f"{self._ns}:reg:u:{key_part(user_id)}#{slot}"

    def _index_key(self, shard: _Shard) -> str:
        return f"{self._ns}:reg:w:{key_part(shard[0])}#{shard[1]}"

    # -- memcached down -------------------------------------------------------------------------

    def _unavailable(self, exc: BackendUnavailable) -> bool:
        if not self._fail_open:
            raise exc
        self._warn("registry unavailable, login allowed without a session limit: %s", exc)
        return True

    def _warn(self, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            if now - self._last_warning < self._warn_interval:
                return
            self._last_warning = now
        log.warning(message, *args)


def _encode_entries(entries: Mapping[str, _Held]) -> bytes:
    rows = [[sid, held.user_id, held.slot] for sid, held in sorted(entries.items())]
    return json.dumps(rows, separators=(",", ":")).encode()


def _decode_entries(raw: bytes) -> list[tuple[str, str, int]]:
    try:
        rows = json.loads(raw)
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        log.warning("registry: ignoring an unreadable session index shard")
        return []
    return [(row[0], row[1], row[2]) for row in rows if _is_entry(row)]


def _is_entry(row: object) -> bool:
    return (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
            and isinstance(row[1], str) and isinstance(row[2], int))
