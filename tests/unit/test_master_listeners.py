"""Listening sockets: bind specs, duplicates, options, reuse across reloads, the fd limit."""

from __future__ import annotations

import re
import resource
import socket

import pytest

from pop3d.config import Address, ServerConfig
from pop3d.master.listeners import (
    BindError,
    bind_all,
    bind_spec,
    close_all,
    nofile_target,
    open_socket,
    unused,
    wanted,
)


def fake_resolver(family: socket.AddressFamily):
    def resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
        return family, (host, port)
    return resolve


@pytest.mark.parametrize(("host", "family", "v6only"), [
    ("0.0.0.0", socket.AF_INET, False),
    ("127.0.0.1", socket.AF_INET, False),
    ("::", socket.AF_INET6, True),
    ("::1", socket.AF_INET6, True),
])
def test_bind_spec_for_literals(host, family, v6only):
    spec = bind_spec(Address(host, 110))
    assert (spec.family, spec.v6only) == (family, v6only)
    assert spec.sockaddr[:2] == (host, 110)


def test_bind_spec_for_a_name_uses_the_resolver():
    spec = bind_spec(Address("mail.example", 995), fake_resolver(socket.AF_INET6))
    assert spec.v6only
    assert spec.sockaddr == ("mail.example", 995)


def test_an_unresolvable_name_is_a_bind_error(monkeypatch):
    def getaddrinfo(*args: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(BindError) as error:
        bind_spec(Address("mail.example", 110))
    assert str(error.value) == "cannot listen on mail.example:110: Name or service not known"


def test_wanted_lists_plain_then_tls_and_rejects_duplicates():
    server = ServerConfig(listen=(Address("0.0.0.0", 110), Address("::", 110)),
                          tls_listen=(Address("0.0.0.0", 995),))
    assert wanted(server) == [(Address("0.0.0.0", 110), False), (Address("::", 110), False),
                              (Address("0.0.0.0", 995), True)]
    twice = ServerConfig(listen=(Address("0.0.0.0", 110),), tls_listen=(Address("0.0.0.0", 110),))
    with pytest.raises(BindError, match="listed twice"):
        wanted(twice)


def test_open_socket_sets_the_options():
    sock = open_socket(Address("::1", 0), backlog=7)
    try:
        assert sock.family == socket.AF_INET6
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        sock.close()


def test_ipv4_and_ipv6_wildcards_coexist_on_one_port():
    v4 = open_socket(Address("0.0.0.0", 0), backlog=1)
    try:
        port = v4.getsockname()[1]
        v6 = open_socket(Address("::", port), backlog=1)
        v6.close()
    finally:
        v4.close()


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BindError, match=re.escape(f"127.0.0.1:{port}: Address already")):
            open_socket(Address("127.0.0.1", port), backlog=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bind_all_keeps_sockets_of_addresses_still_configured():
    a, b = Address("127.0.0.1", free_port()), Address("127.0.0.1", free_port())
    first, added = bind_all(ServerConfig(listen=(a,), tls_listen=()))
    assert [listener.address for listener in added] == [a]
    second, added = bind_all(ServerConfig(listen=(b,), tls_listen=(a,)), first)
    try:
        assert [listener.address for listener in added] == [b]
        kept = next(listener for listener in second if listener.address == a)
        assert kept.sock is first[0].sock
        assert kept.tls
        assert unused(first, second) == []
        assert unused(second, first) == added
    finally:
        close_all(second)


def test_bind_all_closes_what_it_opened_when_an_address_fails():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        free = Address("127.0.0.1", free_port())
        taken = Address("127.0.0.1", squatter.getsockname()[1])
        with pytest.raises(BindError, match=re.escape(str(taken))):
            bind_all(ServerConfig(listen=(free, taken), tls_listen=()))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", free.port))  # released again


def test_nofile_target():
    assert nofile_target(1024, 4096, 5064) == 4096
    assert nofile_target(8192, 4096, 100) == 8192
    assert nofile_target(1024, resource.RLIM_INFINITY, 5064) == 5064
    assert nofile_target(9000, resource.RLIM_INFINITY, 5064) == 9000
