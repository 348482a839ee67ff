"""Where the users come from: a file of ``address key`` lines, or a numbered pattern."""

from __future__ import annotations

from pathlib import Path

from .workloads import User


def read_users(path: str) -> list[User]:
    """One user per line: address, whitespace, key (or password); blank lines and lines that
    start with ``#`` are skipped."""
    users = []
    for number, raw in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'address key', got {len(parts)} fields")
        users.append(User(parts[0], parts[1]))
    return users


def pattern_users(address: str, password: str, count: int, first: int = 1) -> list[User]:
    """``{n}`` in both patterns replaced by first, first+1, ... (count users)."""
    return [User(address.replace("{n}", str(n)), password.replace("{n}", str(n)))
            for n in range(first, first + count)]
