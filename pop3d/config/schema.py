"""The configuration's shape: one frozen dataclass per TOML section, every default in one place.

``conf/pop3d.toml`` documents each option; :mod:`pop3d.config.values` fills these from the file
and :mod:`pop3d.config.checks` validates the result.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any

TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
LOG_LEVELS = ("debug", "info", "warning", "error")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))
# Keys still read, with a warning, and what replaces them: section -> key -> replacements.
DEPRECATED: dict[str, dict[str, tuple[str, ...]]] = {
    "server": {"trusted_networks": ("proxy_networks", "plaintext_networks")},
}

@dataclass(frozen=True, slots=True)
class Address:
    """A listening address: host (IPv4, IPv6 or name) and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str = "localhost"
    listen: tuple[Address, ...] = (Address("0.0.0.0", 110), Address("::", 110))  # noqa: S104
    tls_listen: tuple[Address, ...] = (Address("0.0.0.0", 995), Address("::", 995))  # noqa: S104
    workers: int = 0
    worker_connections: int = 5000
    user: str = ""
    group: str = ""
    pidfile: str = "/run/pop3d/pop3d.pid"
    graceful_timeout: float = 30.0
    worker_timeout: float = 30.0
    proxy_protocol: bool = False
    proxy_timeout: float = 5.0
    backlog: int = 1024
    proxy_networks: tuple[Network, ...] = LOOPBACK  # may send a PROXY header
    plaintext_networks: tuple[Network, ...] = LOOPBACK  # may log in without TLS


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str = ""
    key: str = ""
    min_version: str = "TLSv1.2"
    handshake_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    line_length: int = 8192
    login_timeout: float = 60.0
    idle_timeout: float = 600.0
    max_connections_per_user: int = 5
    max_messages_per_session: int = 10000
    max_bad_commands: int = 10
    login_deadline: float = 180.0  # seconds from connecting to logging in, whatever is sent
    max_connections_per_address: int = 50  # across every worker and host sharing memcached
    max_tls_handshakes_per_address: int = 10  # in progress at once, per worker
    ipv6_prefix: int = 64  # IPv6 clients are counted by this prefix for limits and lockouts
    message_cache_mb: int = 32  # per worker; 0 = no cache


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str = "postgresql:///mail"
    connect_timeout: int = 5
    statement_timeout: float = 10.0
    connections: int = 4  # per worker, for its loop's queries (logins have auth.threads more)


@dataclass(frozen=True, slots=True)
class MemcachedConfig:
    servers: tuple[Address, ...] = (Address("127.0.0.1", 11211),)
    timeout: float = 0.5
    registry_failure: str = "open"
    retry_after: float = 2.0
    slot_ttl: int = 120


@dataclass(frozen=True, slots=True)
class AuthConfig:
    secret_file: str = ""
    scope: str = "pop3"
    cache_ttl: int = 30
    failure_delay: float = 2.0
    max_failures: int = 5  # per (client address, login name) within `lockout`
    lockout: int = 900
    verify_budget: int = 300  # fresh bcrypt verifications per client address per verify_window
    verify_window: int = 60
    bcrypt_cost: int = 10
    allow_plaintext: bool = False
    threads: int = 4


@dataclass(frozen=True, slots=True)
class StatsdConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8125
    prefix: str = "pop3"


@dataclass(frozen=True, slots=True)
class TracingConfig:
    enabled: bool = False
    service_name: str = "pop3d"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    file: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    path: str = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    memcached: MemcachedConfig = field(default_factory=MemcachedConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    statsd: StatsdConfig = field(default_factory=StatsdConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def tls_enabled(self) -> bool:
        """A certificate is configured: implicit TLS listeners and STLS are possible."""
        return bool(self.tls.cert)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "tls": TlsConfig,
    "limits": LimitsConfig,
    "database": DatabaseConfig,
    "memcached": MemcachedConfig,
    "auth": AuthConfig,
    "statsd": StatsdConfig,
    "tracing": TracingConfig,
    "logging": LoggingConfig,
}

