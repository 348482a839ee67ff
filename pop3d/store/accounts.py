"""Users, verified aliases and API keys, as the admin commands manage them.

Addresses are compared case-insensitively (``lower(address)``, which the unique indexes also
use).  A primary address and an alias live in different tables, so uniqueness across both is
enforced here, under a transaction-level advisory lock that serialises concurrent additions.
API keys arrive already hashed: generating and hashing them is :mod:`pop3d.auth`'s job.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pop3d.errors import NoSuchUser, Pop3dError
from pop3d.ports import UserRecord
from pop3d.store.credentials import find_user
from pop3d.store.db import Cursor, Database, as_uuid, is_storable

_ADDRESS_LOCK = 0x706F70336461  # serialises address claims across `user add` and `user alias`
MAX_ADDRESS = 254  # RFC 5321 section 4.5.3.1.3: a path is at most 256 octets with its <>
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>,;\"()\[\]\\]")

_USERS = """
SELECT u.id::text, u.address, u.display_name, u.created_at, u.disabled_at,
       coalesce(array_agg(a.address ORDER BY lower(a.address)) FILTER
                (WHERE a.address IS NOT NULL), '{}')
FROM users u LEFT JOIN user_addresses a ON a.user_id = u.id AND a.verified
GROUP BY u.id ORDER BY lower(u.address)
"""

_KEYS = """
SELECT id::text, name, prefix, scopes, created_at, last_used_at, revoked_at
FROM api_keys WHERE user_id = %s ORDER BY created_at, id
"""


class InvalidAddress(Pop3dError):
    """Not something we accept as a mail address (admin input or an envelope recipient)."""


class AddressTaken(Pop3dError):
    """The address is already some user's primary address or alias."""


class NoSuchKey(Pop3dError):
    """No API key has this id or prefix."""


class PrefixTaken(Pop3dError):
    """A new key's random prefix collided with an existing one: generate another key."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    user_id: str
    address: str
    display_name: str | None
    created_at: datetime
    disabled_at: datetime | None
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    name: str
    prefix: str | None
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def check_address(text: str) -> str:
    """``text`` without surrounding spaces, if it is one plausible address; else InvalidAddress."""
    address = text.strip()
    local, at, domain = address.partition("@")
    if not (local and at and domain) or "@" in domain:
        raise InvalidAddress(f"{text!r} is not an address (need exactly one @)")
    if _FORBIDDEN.search(address) or not is_storable(address):
        raise InvalidAddress(f"{text!r} is not an address (spaces, controls or specials)")
    if len(address.encode("utf-8")) > MAX_ADDRESS:
        raise InvalidAddress(f"{text!r} is longer than {MAX_ADDRESS} octets")
    return address


class Accounts:
    """The admin side of users, aliases and keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_user(self, address: str, display_name: str | None = None) -> str:
        """Create a user; return its id."""
        address = check_address(address)
        return self.db.run(functools.partial(_add_user, address=address, name=display_name))

    def list_users(self) -> list[UserInfo]:
        return self.db.run(_list_users)

    def disable_user(self, address: str) -> bool:
        """Disable the user owning ``address``; False when it already was."""
        return self.db.run(functools.partial(_disable_user, address=address))

    def add_alias(self, address: str, alias: str) -> None:
        """Give the user owning ``address`` the verified alias ``alias``."""
        alias = check_address(alias)
        self.db.run(functools.partial(_add_alias, address=address, alias=alias))

    def user(self, address: str) -> UserRecord:
        """The user owning ``address``, or NoSuchUser."""
        return self.db.run(functools.partial(_require_user, address=address))

    def add_key(self, user_id: str, name: str, prefix: str, key_hash: bytes,
                scopes: Sequence[str]) -> str:
        """Store a new key (hash only); return its id, or PrefixTaken on a prefix collision."""
        return self.db.run(functools.partial(
            _add_key, user=user_id, name=name, prefix=prefix,
            key_hash=key_hash.decode("ascii"), scopes=list(scopes)))

    def list_keys(self, address: str) -> list[KeyInfo]:
        return self.db.run(functools.partial(_list_keys, address=address))

    def revoke_key(self, key: str) -> bool:
        """Revoke a key given by id or public prefix; False when it already was revoked."""
        return self.db.run(functools.partial(_revoke_key, key=key.strip()))

    def set_scopes(self, key: str, scopes: Sequence[str]) -> bool:
        """Give a key (by id or prefix) exactly these scopes; False when it had them already."""
        return self.db.run(functools.partial(_set_scopes, key=key.strip(), scopes=list(scopes)))

    def key_owner(self, key: str) -> str:
        """The user id of a key given by id or public prefix, or NoSuchKey."""
        return self.db.run(functools.partial(_key_owner, key=key.strip()))

    def login_names(self, user_id: str) -> list[str]:
        """Every address the user could log in with: the primary one and every alias (verified
        or not, so a name that becomes verified later is covered too)."""
        return self.db.run(functools.partial(_login_names, user_id=user_id))


def _require_user(cur: Cursor, *, address: str) -> UserRecord:
    user = find_user(cur, address.strip())
    if user is None:
        raise NoSuchUser(f"no user has the address {address.strip()!r}")
    return user


def _claim(cur: Cursor, address: str) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADDRESS_LOCK,))
    cur.execute(
        "SELECT 1 FROM users WHERE lower(address) = lower(%(a)s) UNION ALL"
        " SELECT 1 FROM user_addresses WHERE lower(address) = lower(%(a)s)", {"a": address})
    if cur.fetchone() is not None:
        raise AddressTaken(f"{address!r} is already a user's address or alias")


def _add_user(cur: Cursor, *, address: str, name: str | None) -> str:
    _claim(cur, address)
    cur.execute("INSERT INTO users (address, display_name) VALUES (%s, %s) RETURNING id::text",
                (address, name or None))
    return str(_one(cur))


def _add_alias(cur: Cursor, *, address: str, alias: str) -> None:
    user = _require_user(cur, address=address)
    _claim(cur, alias)
    cur.execute("INSERT INTO user_addresses (user_id, address, verified) VALUES (%s, %s, true)",
                (user.user_id, alias))


def _disable_user(cur: Cursor, *, address: str) -> bool:
    user = _require_user(cur, address=address)
    cur.execute("UPDATE users SET disabled_at = now() WHERE id = %s AND disabled_at IS NULL",
                (user.user_id,))
    return cur.rowcount == 1


def _list_users(cur: Cursor) -> list[UserInfo]:
    cur.execute(_USERS)
    return [UserInfo(row[0], row[1], row[2], row[3], row[4], tuple(row[5])) for row in cur]


def _add_key(cur: Cursor, *, user: str, name: str, prefix: str, key_hash: str,
             scopes: list[str]) -> str:
    cur.execute(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (prefix) DO NOTHING RETURNING id::text",
        (user, name, prefix, key_hash, scopes))
    row = cur.fetchone()
    if row is None:
        raise PrefixTaken(f"key prefix {prefix} exists")
    return str(row[0])


def _list_keys(cur: Cursor, *, address: str) -> list[KeyInfo]:
    user = _require_user(cur, address=address)
    cur.execute(_KEYS, (user.user_id,))
    return [KeyInfo(row[0], row[1], row[2], tuple(row[3]), row[4], row[5], row[6])
            for row in cur]


def _revoke_key(cur: Cursor, *, key: str) -> bool:
    key_id = as_uuid(key)
    cur.execute(
        "SELECT id, revoked_at IS NOT NULL FROM api_keys WHERE id = %s OR prefix = %s FOR UPDATE",
        (key_id, key))
    rows = cur.fetchall()
    if len(rows) != 1:
        raise NoSuchKey(f"no API key has the id or prefix {key!r}")
    cur.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                (rows[0][0],))
    return cur.rowcount == 1


def _key_row(cur: Cursor, key: str) -> tuple[str, str]:
    """(key id, user id) of the key with this id or prefix, locked for the transaction."""
    cur.execute("SELECT id::text, user_id::text FROM api_keys WHERE id = %s OR prefix = %s"
                " FOR UPDATE", (as_uuid(key), key))
    rows = cur.fetchall()
    if len(rows) != 1:
        raise NoSuchKey(f"no API key has the id or prefix {key!r}")
    return rows[0][0], rows[0][1]


def _key_owner(cur: Cursor, *, key: str) -> str:
    return _key_row(cur, key)[1]


def _set_scopes(cur: Cursor, *, key: str, scopes: list[str]) -> bool:
    key_id, _ = _key_row(cur, key)
    cur.execute("UPDATE api_keys SET scopes = %(s)s::text[] WHERE id = %(k)s"
                " AND scopes IS DISTINCT FROM %(s)s::text[]", {"s": scopes, "k": key_id})
    return cur.rowcount == 1


def _login_names(cur: Cursor, *, user_id: str) -> list[str]:
    cur.execute("SELECT address FROM users WHERE id = %(u)s UNION"
                " SELECT address FROM user_addresses WHERE user_id = %(u)s", {"u": user_id})
    return sorted(str(row[0]) for row in cur)


def _one(cur: Cursor) -> object:
    row = cur.fetchone()
    if row is None:
        raise Pop3dError("INSERT returned no row")
    return row[0]
