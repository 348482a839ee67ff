"""memcached key fragments: printable ASCII without spaces, whatever the input.

memcached keys are at most 250 octets with no whitespace or control characters.  A fragment
that is plainly safe is used as it is, so keys stay readable for an operator running
``memcached-tool``; anything else (a long or odd host name, a non-ASCII value) becomes ``~`` and
its SHA-256, which no plain fragment can look like.  ``#`` never appears in a fragment: the
client places a key on a server by what precedes ``#``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

DEFAULT_NAMESPACE = "pop3d"
_SAFE_PART = re.compile(r"[A-Za-z0-9._:@%+=-]{1,120}")


def key_part(text: str) -> str:
    """``text`` itself when it is a safe key fragment, else ``~`` and its SHA-256 in hex."""
    if _SAFE_PART.fullmatch(text):
        return text
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def client_ip_part(client_ip: str) -> str:
    """One fragment per client address, however it is spelt: IPv6 in canonical compressed
    form without a zone, an IPv4-mapped IPv6 address as its IPv4 address."""
    try:
        address = ipaddress.ip_address(client_ip.strip())
    except ValueError:
        return key_part(client_ip)
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped else str(ipaddress.IPv6Address(address.packed))
    return str(address)
