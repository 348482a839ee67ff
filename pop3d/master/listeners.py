"""Listening sockets: bound once by the master, shared by every worker it forks.

Every ``server.listen`` (plain, STLS offered) and ``server.tls_listen`` (implicit TLS) address
becomes one non-blocking listening socket with SO_REUSEADDR (a restart does not wait for
TIME_WAIT) and the configured backlog.  IPv6 sockets set IPV6_V6ONLY, so ``0.0.0.0:110`` and
``[::]:110`` are two sockets that coexist instead of the second failing with EADDRINUSE.  On
reload, :func:`bind_all` keeps the socket of every address still configured and binds only the
new ones, so no connection is refused while workers are replaced.

Each worker holds up to ``server.worker_connections`` client sockets, so the master also raises
its soft RLIMIT_NOFILE (inherited across ``fork``) before it forks any worker.
"""

from __future__ import annotations

import logging
import resource
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pop3d.config import Address, ServerConfig
from pop3d.handoff import Listener

log = logging.getLogger(__name__)

NOFILE_RESERVE = 64  # descriptors a worker needs besides sessions: listeners, DB, memcached, pipes

Resolver = Callable[[str, int], tuple[socket.AddressFamily, tuple[Any, ...]]]


class BindError(Exception):
    """An address that cannot be listened on; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class BindSpec:
    """How to bind one address: the socket family, the ``bind()`` argument, IPV6_V6ONLY."""

    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]
    v6only: bool


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The first passive TCP address for ``host``: literals need no DNS; names do."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {Address(host, port)}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def bind_spec(address: Address, resolver: Resolver = resolve) -> BindSpec:
    """The socket family and options for ``address``."""
    family, sockaddr = resolver(address.host, address.port)
    return BindSpec(family, sockaddr, v6only=family == socket.AF_INET6)


def wanted(server: ServerConfig) -> list[tuple[Address, bool]]:
    """``(address, tls)`` for every configured address, plain first; a duplicate is an error."""
    pairs = [(a, False) for a in server.listen] + [(a, True) for a in server.tls_listen]
    seen: set[Address] = set()
    for address, _ in pairs:
        if address in seen:
            raise BindError(f"cannot listen on {address}: listed twice in listen/tls_listen")
        seen.add(address)
    return pairs


def open_socket(address: Address, backlog: int, resolver: Resolver = resolve) -> socket.socket:
    """A new listening socket on ``address``; BindError says what went wrong."""
    spec = bind_spec(address, resolver)
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.v6only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(spec.sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def bind_all(server: ServerConfig, existing: Sequence[Listener] = (),
             resolver: Resolver = resolve) -> tuple[list[Listener], list[Listener]]:
    """Listeners for every configured address and, separately, the ones newly bound.

    An address that ``existing`` already listens on keeps its socket (with the new backlog and
    tls flag).  If any address fails, the sockets opened here are closed and BindError raised.
    """
    by_address = {listener.address: listener.sock for listener in existing}
    listeners: list[Listener] = []
    added: list[Listener] = []
    try:
        for address, tls in wanted(server):
            sock = by_address.get(address)
            if sock is None:
                sock = open_socket(address, server.backlog, resolver)
                added.append(Listener(sock, address, tls))
            else:
                sock.listen(server.backlog)
            listeners.append(Listener(sock, address, tls))
    except BindError:
        close_all(added)
        raise
    return listeners, added


def unused(old: Iterable[Listener], new: Iterable[Listener]) -> list[Listener]:
    """Listeners of ``old`` whose socket ``new`` no longer uses."""
    kept = {id(listener.sock) for listener in new}
    return [listener for listener in old if id(listener.sock) not in kept]


def close_all(listeners: Iterable[Listener]) -> None:
    for listener in listeners:
        listener.sock.close()


def nofile_target(soft: int, hard: int, needed: int) -> int:
    """The soft RLIMIT_NOFILE to set: the hard limit, or ``needed`` if the hard one is infinite."""
    if hard == resource.RLIM_INFINITY:
        return max(soft, needed)
    return max(soft, hard)


def raise_nofile_limit(worker_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by workers); return the limit now in force."""
    needed = worker_connections + NOFILE_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = nofile_target(soft, hard, needed)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
            target = soft
    if target < needed:
        log.warning("open-files limit %d is below the %d a worker may need "
                    "(server.worker_connections); raise LimitNOFILE", target, needed)
    return target
