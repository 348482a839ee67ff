"""The values that cross between a session and its worker: settings, peer, services, effects."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pop3d.ports import (
    Authenticator,
    Chunks,
    Credentials,
    Maildrop,
    MessageInfo,
    Metrics,
    Principal,
    Registry,
    Tracer,
)
from pop3d.protocol.parser import MAX_LINE_LENGTH


@dataclass(frozen=True, slots=True)
class SessionSettings:
    server_name: str
    line_length: int = MAX_LINE_LENGTH
    max_messages: int = 10000  # snapshot size limit: the oldest messages, the rest after DELE
    max_bad_commands: int = 10  # consecutive bad commands before login, then close
    max_connections_per_user: int = 5
    failure_delay: float = 2.0  # seconds before a failed login is answered
    login_delay: int = 0  # advertised as LOGIN-DELAY (RFC 2449 §6.8)
    implementation: str = "pop3d"


@dataclass(frozen=True, slots=True)
class Peer:
    client_ip: str
    tls: bool = False  # implicit TLS (port 995) already active
    plaintext_ok: bool = False  # trusted network or allow_plaintext: login without TLS is fine
    stls_available: bool = False  # the listener can upgrade with STLS


@dataclass(frozen=True, slots=True)
class Services:
    maildrop: Maildrop
    registry: Registry
    metrics: Metrics
    clock: Callable[[], float] = time.monotonic  # seconds, only for durations
    tracer: Tracer | None = None  # None: no spans, and nothing on the command path


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data``: bytes, or a stream whose store requests the worker completes as it
    pulls; after ``delay`` seconds (a refused login); then close the connection if ``close``."""

    data: bytes | Chunks
    delay: float = 0.0
    close: bool = False


@dataclass(frozen=True, slots=True)
class StartTls:
    data: bytes


@dataclass(frozen=True, slots=True)
class LoginGrant:
    """What a successful login brings back from the thread pool: who, and their maildrop."""

    principal: Principal
    messages: list[MessageInfo]  # the snapshot, oldest first


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Verify these credentials and take the maildrop snapshot, off the worker's loop."""

    credentials: Credentials
    max_messages: int

    def run(self, authenticator: Authenticator, maildrop: Maildrop) -> LoginGrant:
        """The slow part of a login (bcrypt, the snapshot query): call it on a pool thread with
        ports that thread may use, and hand the result (or the exception) to ``login_done``."""
        principal = authenticator.authenticate(self.credentials)
        return LoginGrant(principal, maildrop.snapshot(principal.user_id, self.max_messages))


@dataclass(frozen=True, slots=True)
class Await:
    """Pull ``steps`` (completing the store requests it yields, off the session) until it gives
    bytes, ends or fails, then call ``resume`` with the first bytes, None or the error; it
    returns the next effect.  RETR and TOP wait for the message's first bytes this way (so a
    message gone meanwhile is still a plain ``-ERR``), QUIT for its UPDATE."""

    steps: Chunks
    resume: Callable[[bytes | Exception | None], Effect]


Effect = Send | StartTls | Authenticate | Await


@dataclass(slots=True)
class SessionCounters:
    """What a session did, for its logout line."""

    retr: int = 0
    retr_bytes: int = 0
    top: int = 0
    top_bytes: int = 0
    dele: int = 0
    dele_bytes: int = 0
