"""A session's maildrop: the snapshot taken at login and its DELE marks."""

from __future__ import annotations

from pop3d.errors import Pop3dError
from pop3d.ports import MessageInfo


class Mailbox:
    """The snapshot taken at login, numbered from 1 and never renumbered, and its DELE marks."""

    __slots__ = ("_marked", "_marked_size", "_messages", "_total", "user_id")

    def __init__(self, user_id: str, messages: list[MessageInfo]) -> None:
        self.user_id = user_id
        self._messages = messages
        self._marked: dict[int, MessageInfo] = {}
        self._total = sum(message.size for message in messages)
        self._marked_size = 0

    def get(self, number: int) -> MessageInfo:
        """A message that exists and is not marked deleted, or a Pop3dError saying why not."""
        if not 1 <= number <= len(self._messages):
            raise Pop3dError(reply=f"No message {number} (maildrop has {len(self._messages)})")
        if number in self._marked:
            raise Pop3dError(reply=f"Message {number} is marked deleted")
        return self._messages[number - 1]

    def mark(self, number: int) -> None:
        message = self.get(number)
        self._marked[number] = message
        self._marked_size += message.size

    def reset(self) -> None:
        self._marked.clear()
        self._marked_size = 0

    def totals(self) -> tuple[int, int]:
        """Count and octets of the messages not marked deleted (STAT)."""
        return len(self._messages) - len(self._marked), self._total - self._marked_size

    def live(self) -> list[tuple[int, MessageInfo]]:
        marked = self._marked
        return [(n, m) for n, m in enumerate(self._messages, 1) if n not in marked]

    def marked(self) -> list[MessageInfo]:
        return [self._marked[number] for number in sorted(self._marked)]
