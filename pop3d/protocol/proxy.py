"""HAProxy PROXY protocol headers, version 1 (text) and 2 (binary), parsed without IO.

The caller keeps every byte received on a PROXY-enabled listener and calls
:meth:`ProxyHeaderParser.parse` with all of them after each read.  The
:class:`ProxyResult` says: ``need_more`` (read more, within the caller's deadline), ``error``
(close the connection), or the header is complete: its first ``consumed`` octets are the header
and whatever follows is the client's own first bytes.  ``source`` None (v1 UNKNOWN, v2 LOCAL, a
non-IP family) means: use the socket's real peer address.

Addresses come out in one spelling, fit for logs and for counting: IPv6 compressed in lower
case, an IPv4-mapped IPv6 address as its IPv4 address.  A v1 header must already spell them so
(as proxies do, inet_ntop's form): a zone id (``fe80::1%eth0``), upper case, leading zeros or
any other spelling is refused, since such text is someone's invention and would reach the log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # haproxy proxy-protocol.txt §2.1: the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # proxy-protocol.txt §2.2: the 12-octet v2 magic
V2_FIXED_LENGTH = 16  # signature, version/command, family/transport, 2-octet length
V2_MAX_PAYLOAD = 2048  # addresses plus TLVs; real proxies send a few hundred octets at most
MAX_PORT = 65535

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_ADDRESS_LENGTHS = {0x11: 12, 0x21: 36}  # TCP over IPv4 / IPv6 (proxy-protocol.txt §2.2)
_V2_OTHER_STREAMS = {0x00, 0x31}  # UNSPEC, UNIX stream: addresses we cannot use


@dataclass(frozen=True, slots=True)
class ProxyResult:
    need_more: bool = False
    error: str = ""  # why the header is invalid; empty when it is not
    consumed: int = 0  # octets of the header, once complete
    version: int = 0
    source: tuple[str, int] | None = None  # the original client (address, port)
    destination: tuple[str, int] | None = None

    @property
    def source_ip(self) -> str | None:
        return None if self.source is None else self.source[0]


NEED_MORE = ProxyResult(need_more=True)


def _invalid(reason: str) -> ProxyResult:
    return ProxyResult(error=reason)


class ProxyHeaderParser:
    """Parses the PROXY header at the start of a connection; holds only its limits."""

    def __init__(self, max_v2_payload: int = V2_MAX_PAYLOAD) -> None:
        self.max_v2_payload = max_v2_payload

    def parse(self, data: bytes) -> ProxyResult:
        """Parse the header at the start of ``data``: everything received so far."""
        if data.startswith(V1_PREFIX):
            return _parse_v1(data)
        if data.startswith(V2_SIGNATURE):
            return _parse_v2(data, self.max_v2_payload)
        if V1_PREFIX.startswith(data) or V2_SIGNATURE.startswith(data):
            return NEED_MORE
        return _invalid("not a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyResult:
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            return _invalid(f"v1 header longer than {V1_MAX_LENGTH} octets")
        return NEED_MORE
    if data[end - 1 : end] != b"\r":
        return _invalid("v1 header does not end with CRLF")
    return _v1_fields(data[: end - 1].split(b" "), end + 1)


def _v1_fields(fields: list[bytes], length: int) -> ProxyResult:
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyResult(consumed=length, version=1)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        return _invalid("v1 header is not 'PROXY TCP4|TCP6 src dst sport dport'")
    family = 4 if fields[1] == b"TCP4" else 6
    source = _v1_endpoint(fields[2], fields[4], family)
    destination = _v1_endpoint(fields[3], fields[5], family)
    if source is None or destination is None:
        return _invalid("v1 header has a malformed address or port")
    return ProxyResult(consumed=length, version=1, source=source, destination=destination)


def _v1_endpoint(address: bytes, port: bytes, family: int) -> tuple[str, int] | None:
    ip = _v1_address(address, family)
    if ip is None or not port.isdigit() or len(port) > 5 or (port[:1] == b"0" and port != b"0"):
        return None
    number = int(port)
    return (_canonical(ip), number) if number <= MAX_PORT else None


def _v1_address(address: bytes, family: int) -> IPAddress | None:
    """The address if ``address`` is its canonical spelling (for a mapped IPv4 address, also
    ``::ffff:a.b.c.d``), else None."""
    if b"%" in address or not address.isascii():
        return None
    text = address.decode("ascii")
    try:
        ip = ipaddress.IPv4Address(text) if family == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if text == str(ip) or (mapped is not None and text == f"::ffff:{mapped}"):
        return ip
    return None


def _canonical(ip: IPAddress) -> str:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped if mapped is not None else ip)


def _parse_v2(data: bytes, max_payload: int) -> ProxyResult:
    if len(data) < V2_FIXED_LENGTH:
        return NEED_MORE
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        return _invalid("v2 header has an unknown version or command")
    payload = int.from_bytes(data[14:16], "big")
    if payload > max_payload:
        return _invalid(f"v2 header longer than {max_payload} octets of addresses")
    length = V2_FIXED_LENGTH + payload
    if len(data) < length:
        return NEED_MORE
    if command == _V2_COMMAND_LOCAL:
        return ProxyResult(consumed=length, version=2)  # the proxy's own health check
    return _v2_addresses(data[13], data[V2_FIXED_LENGTH:length], length)


def _v2_addresses(family: int, payload: bytes, length: int) -> ProxyResult:
    if family in _V2_OTHER_STREAMS:
        return ProxyResult(consumed=length, version=2)
    needed = _V2_ADDRESS_LENGTHS.get(family)
    if needed is None:
        return _invalid("v2 header has an unsupported address family or transport")
    if len(payload) < needed:
        return _invalid("v2 header is too short for its address family")
    size = (needed - 4) // 2  # two addresses, then two 2-octet ports
    ports = payload[2 * size : needed]
    source = (_ip(payload[:size]), int.from_bytes(ports[:2], "big"))
    destination = (_ip(payload[size : 2 * size]), int.from_bytes(ports[2:], "big"))
    return ProxyResult(consumed=length, version=2, source=source, destination=destination)


def _ip(packed: bytes) -> str:
    return _canonical(ipaddress.ip_address(packed))
