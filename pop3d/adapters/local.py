"""In-process versions of the shared-state ports, for one worker on its own."""

from __future__ import annotations


class LocalRegistry:
    """Counts each user's sessions inside this process only.

    It enforces ``max_connections_per_user`` per worker; the memcached registry extends the
    count across workers and hosts.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, set[str]] = {}

    def acquire(self, user_id: str, session_id: str, limit: int) -> bool:
        sessions = self._sessions.setdefault(user_id, set())
        if session_id not in sessions and len(sessions) >= limit:
            return False
        sessions.add(session_id)
        return True

    def release(self, user_id: str, session_id: str) -> None:
        sessions = self._sessions.get(user_id)
        if sessions is None:
            return
        sessions.discard(session_id)
        if not sessions:
            del self._sessions[user_id]
