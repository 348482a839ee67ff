"""A worker's cache of recently sent messages: their RETR octets, by email id.

Stored mail never changes: raw bytes are written once, and a rendered message is a pure
function of rows that are only ever unlinked, never rewritten (docs/DESIGN.md).  So the octets
RETR sent once (CRLF line ends, Bcc removed) can be sent again without reading, decompressing
and normalising the message a second time.  What cannot be cached is whether the user may
still read it: another session may have deleted it since, so every RETR and TOP still asks
PostgreSQL, with the one indexed lookup of the recipient row instead of the message.

Least recently used first out, bounded by the octets held (``[limits] message_cache_mb`` per
worker); a message larger than one slice of the store is never cached.  One per worker, used
on its loop only: no locking.
"""

from __future__ import annotations

from collections import OrderedDict

MB = 1024 * 1024


class MessageCache:
    """RETR octets by email id, at most ``capacity`` octets of them."""

    __slots__ = ("_capacity", "_entries", "_held", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self.hits = 0
        self.misses = 0

    def get(self, email_id: str) -> bytes | None:
        octets = self._entries.get(email_id)
        if octets is None:
            self.misses += 1
            return None
        self._entries.move_to_end(email_id)
        self.hits += 1
        return octets

    def put(self, email_id: str, octets: bytes) -> None:
        if len(octets) > self._capacity or email_id in self._entries:
            return
        self._entries[email_id] = octets
        self._held += len(octets)
        while self._held > self._capacity:
            _, evicted = self._entries.popitem(last=False)
            self._held -= len(evicted)

    @property
    def held(self) -> int:
        """Octets of message held now."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)
