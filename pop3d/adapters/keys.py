"""memcached key fragments: printable ASCII without spaces, whatever the input; and client
addresses as the per-address limits count them.

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
DEFAULT_IPV6_PREFIX = 64  # RFC 6177: a site (one customer, often one host) gets a whole /64
_SAFE_PART = re.compile(r"[A-Za-z0-9._:@%+=-]{1,120}")


def key_part(text: str) -> str:
    """``text`` itself when it is a safe key fragment, else ``~`` and its SHA-256 in hex."""
    if _SAFE_PART.fullmatch(text):
        return text
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def canonical_ip(text: str) -> str:
    """A client address spelt one way: IPv6 compressed in lower case without a zone, an
    IPv4-mapped IPv6 address as its IPv4 address.  Text that is no address comes back as it
    is (it never comes from a socket or a checked PROXY header)."""
    try:
        address = ipaddress.ip_address(text.strip().partition("%")[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def address_key(client_ip: str, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> str:
    """What per-address limits and lockouts count a client as: its IPv4 address, or the IPv6
    network of ``ipv6_prefix`` bits it is in (``2001:db8:1:2::/64``), since one IPv6 host can
    take any address of its prefix."""
    canonical = canonical_ip(client_ip)
    try:
        address = ipaddress.ip_address(canonical)
    except ValueError:
        return canonical
    if isinstance(address, ipaddress.IPv4Address) or ipv6_prefix >= 128:
        return canonical
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
