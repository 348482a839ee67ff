"""PROXY protocol v1 and v2 headers, whole and arriving in pieces."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.protocol.proxy import V1_MAX_LENGTH, V2_SIGNATURE, ProxyHeaderParser, ProxyResult

parse = ProxyHeaderParser().parse


def v2(command: int, family: int, payload: bytes) -> bytes:
    fixed = V2_SIGNATURE + bytes([0x20 | command, family]) + len(payload).to_bytes(2, "big")
    return fixed + payload


def ipv4_payload(src: str, dst: str, sport: int, dport: int) -> bytes:
    packed = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")


def header(consumed: int, version: int, source: object = None, dest: object = None) -> ProxyResult:
    return ProxyResult(consumed=consumed, version=version, source=source, destination=dest)  # type: ignore[arg-type]


def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 110\r\nCAPA\r\n"
    result = parse(data)
    assert result == header(44, 1, ("203.0.113.9", 51234), ("192.0.2.1", 110))
    assert result.source_ip == "203.0.113.9"
    assert not result.need_more
    assert not result.error
    assert data[result.consumed :] == b"CAPA\r\n"


def test_v1_tcp6() -> None:
    result = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 995\r\n")
    assert result.source == ("2001:db8::1", 4000)
    assert result.destination == ("2001:db8::2", 995)


def test_v1_unknown_means_use_the_socket_address() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == header(15, 1)
    result = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    assert result.consumed == 35
    assert result.source_ip is None


def test_longest_v1_headers_are_accepted() -> None:
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    tcp6 = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert parse(tcp6).source == (address, 65535)
    unknown = f"PROXY UNKNOWN {address} {address} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX_LENGTH  # the worst case the specification sizes for
    assert parse(unknown) == header(V1_MAX_LENGTH, 1)
    assert parse(b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n").error


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
        b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 200,  # no line end within 107 octets
        b"GET / HTTP/1.0\r\n",
        b"USER alice\r\n",
        b"\r\n\r\n\x00\r\nQUIX\n",
        # addresses that are not spelt the one way proxies spell them: they would reach the log
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 fe80::1%\x1b[2J 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 fe80::1%\rforged 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 2001:DB8::1 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 2001:db8:0:0:0:0:0:1 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 2001:0db8::1 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 2001:db8::2 2001:db8::1%1 1 2\r\n",
        b"PROXY TCP6 ::FFFF:1.2.3.4 2001:db8::2 1 2\r\n",
    ],
)
def test_invalid_headers(data: bytes) -> None:
    result = parse(data)
    assert result.error
    assert not result.need_more
    assert result.consumed == 0


def test_v2_ipv4() -> None:
    data = v2(1, 0x11, ipv4_payload("198.51.100.7", "192.0.2.1", 40000, 995)) + b"CAPA\r\n"
    assert parse(data) == header(28, 2, ("198.51.100.7", 40000), ("192.0.2.1", 995))


def test_v2_ipv6_with_tlvs() -> None:
    src, dst = ipaddress.IPv6Address("2001:db8::7"), ipaddress.IPv6Address("2001:db8::1")
    tlv = bytes([0x04]) + (3).to_bytes(2, "big") + b"abc"  # PP2_TYPE_NOOP
    payload = src.packed + dst.packed + (1234).to_bytes(2, "big") + (110).to_bytes(2, "big") + tlv
    result = parse(v2(1, 0x21, payload))
    assert result == header(16 + 36 + 6, 2, ("2001:db8::7", 1234), ("2001:db8::1", 110))


def test_v2_local_is_a_health_check() -> None:
    assert parse(v2(0, 0x00, b"")) == header(16, 2)
    assert parse(v2(0, 0x11, ipv4_payload("1.1.1.1", "2.2.2.2", 1, 2))) == header(28, 2)


def test_v2_unspec_and_unix_use_the_socket_address() -> None:
    assert parse(v2(1, 0x00, b"")) == header(16, 2)
    assert parse(v2(1, 0x31, b"\0" * 216)) == header(16 + 216, 2)


@pytest.mark.parametrize(
    "data",
    [
        V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + b"\0" * 12,  # version 1 in a v2 header
        V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + b"\0" * 12,  # command 2
        v2(1, 0x12, ipv4_payload("1.1.1.1", "2.2.2.2", 1, 2)),  # UDP
        v2(1, 0x41, b""),  # family 4
        v2(1, 0x11, b"\0" * 11),  # too short for IPv4
        v2(1, 0x21, b"\0" * 35),  # too short for IPv6
        V2_SIGNATURE + bytes([0x21, 0x11]) + (4000).to_bytes(2, "big"),  # over our limit
    ],
)
def test_invalid_v2_headers(data: bytes) -> None:
    assert parse(data).error


def test_v2_payload_limit_is_configurable() -> None:
    data = v2(1, 0x11, ipv4_payload("1.1.1.1", "2.2.2.2", 1, 2) + b"\0" * 100)
    assert parse(data).consumed == len(data)
    assert "longer than 64" in ProxyHeaderParser(max_v2_payload=64).parse(data).error


VALID = [
    b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 110\r\n",
    b"PROXY UNKNOWN\r\n",
    v2(1, 0x11, ipv4_payload("198.51.100.7", "192.0.2.1", 40000, 995)),
    v2(0, 0x00, b""),
]


@pytest.mark.parametrize("data", VALID)
def test_every_proper_prefix_needs_more_data(data: bytes) -> None:
    for end in range(len(data)):
        assert parse(data[:end]) == ProxyResult(need_more=True), data[:end]
    assert parse(data + b"USER x\r\n").consumed == len(data)


@settings(database=None, deadline=None, max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse(data)
    assert [result.need_more, bool(result.error), result.consumed > 0].count(True) == 1
    assert result.consumed <= len(data)


@settings(database=None, deadline=None, max_examples=300)
@given(st.sampled_from(VALID), st.binary(max_size=30))
def test_trailing_bytes_do_not_change_a_complete_header(data: bytes, rest: bytes) -> None:
    assert parse(data + rest) == parse(data)


@pytest.mark.parametrize(("spelling", "source"), [
    (b"::ffff:192.0.2.1", "192.0.2.1"),  # inet_ntop's mapped form, as HAProxy writes it
    (b"::ffff:c000:201", "192.0.2.1"),
    (b"2001:db8::1", "2001:db8::1"),
])
def test_sources_come_out_in_one_spelling(spelling: bytes, source: str) -> None:
    result = parse(b"PROXY TCP6 " + spelling + b" 2001:db8::2 40000 110\r\n")
    assert result.source == (source, 40000)


def test_a_v2_mapped_source_comes_out_as_ipv4() -> None:
    addresses = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]) + bytes(15) + b"\x01"
    header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21, 0, 36]) + addresses + \
        (40000).to_bytes(2, "big") + (995).to_bytes(2, "big")
    assert parse(header).source == ("192.0.2.1", 40000)
