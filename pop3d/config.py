"""Configuration: one TOML file read into frozen dataclasses, validated as a whole.

Every option has its default here and is documented in ``conf/pop3d.toml``.  Loading never stops
at the first problem: it collects every unknown key, wrong type and impossible value, naming the
file, the key and the problem, and raises them together as one :class:`ConfigError`.  Values that
are legal but unwise come back as warnings.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from pop3d.errors import ConfigError, ConfigProblem

DEFAULT_PATH = "/etc/pop3d.toml"
RFC1939_MIN_IDLE = 600  # RFC 1939 section 3: the autologout timer must be at least 10 minutes
TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_LINE_LENGTH = 65536  # a command line, PASS and AUTH included, never needs more
# Each step doubles bcrypt's work: 16 is about 4 s per login, more would stall worker boots.
MAX_BCRYPT_COST = 16


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
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


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


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str = "postgresql:///mail"
    connect_timeout: int = 5
    statement_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MemcachedConfig:
    servers: tuple[Address, ...] = (Address("127.0.0.1", 11211),)
    timeout: float = 0.5
    registry_failure: str = "open"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    secret_file: str = ""
    scope: str = "pop3"
    cache_ttl: int = 30
    failure_delay: float = 2.0
    max_failures: int = 5
    lockout: int = 900
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
    "logging": LoggingConfig,
}


class _Collector:
    """Gathers problems and warnings for one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, key: str, problem: str) -> None:
        self.problems.append(ConfigProblem(self.path, key, problem))

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(ConfigProblem(self.path, key, problem))


def load(path: str | os.PathLike[str]) -> tuple[Config, list[ConfigProblem]]:
    """Read and validate ``path``; return the config and its warnings, or raise ConfigError."""
    name = str(path)
    collector = _Collector(name)
    raw = _read_toml(name, collector)
    sections = {section: _build_section(section, raw.get(section, {}), collector)
                for section in SECTIONS}
    for section in sorted(raw.keys() - SECTIONS.keys()):
        collector.error(section, "unknown section")
    config = Config(path=name, **sections)
    _check_semantics(config, collector)
    if collector.problems:
        raise ConfigError(collector.problems)
    return config, collector.warnings


def _read_toml(path: str, collector: _Collector) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(path, "-", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "-", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(path, "-", f"not valid TOML: {exc}")]) from None


def _build_section(section: str, values: Any, collector: _Collector) -> Any:
    cls = SECTIONS[section]
    if not isinstance(values, dict):
        collector.error(section, "must be a table ([" + section + "])")
        return cls()
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(values.keys() - known):
        collector.error(f"{section}.{key}", "unknown key")
    converted = {}
    for key in sorted(values.keys() & known):
        value = _convert(hints[key], values[key], f"{section}.{key}", collector)
        if value is not _INVALID:
            converted[key] = value
    return cls(**converted)


_INVALID: Any = object()


def _convert(hint: Any, value: Any, key: str, collector: _Collector) -> Any:
    """Check ``value`` against the field's type and turn it into the field's representation."""
    origin = get_origin(hint)
    if origin is tuple:
        return _convert_list(get_args(hint)[0], value, key, collector)
    converter = _SCALARS.get(hint)
    if converter is None:
        raise TypeError(f"no converter for {hint!r}")
    try:
        return converter(value)
    except (TypeError, ValueError) as exc:
        collector.error(key, str(exc))
        return _INVALID


def _convert_list(item_hint: Any, value: Any, key: str, collector: _Collector) -> Any:
    if not isinstance(value, list):
        collector.error(key, f"expected a list, got {_toml_type(value)}")
        return _INVALID
    items = [_convert(item_hint, item, f"{key}[{i}]", collector) for i, item in enumerate(value)]
    return _INVALID if any(item is _INVALID for item in items) else tuple(items)


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_toml_type(value)}")
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_toml_type(value)}")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_toml_type(value)}")
    return float(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_toml_type(value)}")
    return value


def parse_address(value: Any) -> Address:
    """``host:port`` or ``[v6]:port``; the port must be 1-65535."""
    text = _as_str(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r}: unbalanced brackets")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write IPv6 addresses as [addr]:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return Address(host, int(port_text))


def _parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _as_str(value)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a network (e.g. 10.0.0.0/8)") from None


_SCALARS: dict[Any, Callable[[Any], Any]] = {
    str: _as_str,
    int: _as_int,
    float: _as_float,
    bool: _as_bool,
    Address: parse_address,
    ipaddress.IPv4Network | ipaddress.IPv6Network: _parse_network,
}


def _check_semantics(config: Config, c: _Collector) -> None:
    """Range and cross-field checks, after every value has its type."""
    for check in (_check_server, _check_tls, _check_limits, _check_database,
                  _check_memcached, _check_auth, _check_statsd, _check_logging):
        check(config, c)


def _at_least(c: _Collector, key: str, value: float, minimum: float) -> None:
    if value < minimum:
        c.error(key, f"must be at least {minimum:g}, got {value:g}")


def _check_server(config: Config, c: _Collector) -> None:
    s = config.server
    if not s.name or not s.name.isascii() or not s.name.isprintable() or " " in s.name:
        c.error("server.name", "must be a non-empty printable ASCII name without spaces")
    if not s.listen and not s.tls_listen:
        c.error("server.listen", "no listen or tls_listen address: the server would serve nobody")
    _at_least(c, "server.workers", s.workers, 0)
    _at_least(c, "server.worker_connections", s.worker_connections, 1)
    _at_least(c, "server.graceful_timeout", s.graceful_timeout, 0)
    _at_least(c, "server.worker_timeout", s.worker_timeout, 2)
    _at_least(c, "server.proxy_timeout", s.proxy_timeout, 0.1)
    _at_least(c, "server.backlog", s.backlog, 1)
    if not s.pidfile:
        c.error("server.pidfile", "must be a path")
    if s.group and not s.user:
        c.error("server.group", "set server.user too (group alone does not drop privileges)")
    _check_account(s.user, s.group, c)


def _check_account(user: str, group: str, c: _Collector) -> None:
    # A warning, not an error: the file may be checked on another host than the one it is for.
    try:
        if user:
            pwd.getpwnam(user)
    except KeyError:
        c.warn("server.user", f"no such user {user!r} on this host; `pop3d start` would fail")
    try:
        if group:
            grp.getgrnam(group)
    except KeyError:
        c.warn("server.group", f"no such group {group!r} on this host; `pop3d start` would fail")


def _check_tls(config: Config, c: _Collector) -> None:
    t = config.tls
    if t.min_version not in TLS_VERSIONS:
        c.error("tls.min_version", f"must be one of {', '.join(TLS_VERSIONS)}")
    _at_least(c, "tls.handshake_timeout", t.handshake_timeout, 0.1)
    if not t.cert:
        if config.server.tls_listen:
            c.error("tls.cert", "required when server.tls_listen is set")
        if t.key:
            c.error("tls.cert", "tls.key is set but tls.cert is not")
        return
    if not t.key:
        c.error("tls.key", "required when tls.cert is set")
        return
    missing = [(key, path) for key, path in (("tls.cert", t.cert), ("tls.key", t.key))
               if not os.path.isfile(path)]
    for key, path in missing:
        c.error(key, f"file not found: {path}")
    if not missing:
        _try_load_certificate(t, c)


def _try_load_certificate(t: TlsConfig, c: _Collector) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(t.cert, t.key)
    except (ssl.SSLError, OSError) as exc:
        c.error("tls.cert", f"cannot load certificate and key: {exc}")


def _check_limits(config: Config, c: _Collector) -> None:
    lim = config.limits
    _at_least(c, "limits.line_length", lim.line_length, 512)  # RFC 2449: commands up to 255
    if lim.line_length > MAX_LINE_LENGTH:
        c.error("limits.line_length", f"must be at most {MAX_LINE_LENGTH}, got {lim.line_length}")
    _at_least(c, "limits.login_timeout", lim.login_timeout, 1)
    _at_least(c, "limits.idle_timeout", lim.idle_timeout, 1)
    _at_least(c, "limits.max_connections_per_user", lim.max_connections_per_user, 1)
    _at_least(c, "limits.max_messages_per_session", lim.max_messages_per_session, 1)
    _at_least(c, "limits.max_bad_commands", lim.max_bad_commands, 1)
    if 1 <= lim.idle_timeout < RFC1939_MIN_IDLE:
        c.warn("limits.idle_timeout", f"{lim.idle_timeout:g} s is below RFC 1939's 600 s minimum")


def _check_database(config: Config, c: _Collector) -> None:
    if not config.database.dsn.strip():
        c.error("database.dsn", "must not be empty")
    _at_least(c, "database.connect_timeout", config.database.connect_timeout, 1)
    timeout, heartbeat = config.database.statement_timeout, config.server.worker_timeout
    if not 0 < timeout < heartbeat:
        c.error("database.statement_timeout",
                f"must be above 0 and below server.worker_timeout ({heartbeat:g} s), got "
                f"{timeout:g}: a query that runs longer stalls a worker until it is killed")


def _check_memcached(config: Config, c: _Collector) -> None:
    m = config.memcached
    _at_least(c, "memcached.timeout", m.timeout, 0.01)
    if m.registry_failure not in ("open", "closed"):
        c.error("memcached.registry_failure", 'must be "open" or "closed"')


def _check_auth(config: Config, c: _Collector) -> None:
    a = config.auth
    if not a.scope.strip():
        c.error("auth.scope", "must not be empty")
    if a.secret_file and not os.path.isfile(a.secret_file):
        c.error("auth.secret_file", f"file not found: {a.secret_file}")
    _at_least(c, "auth.cache_ttl", a.cache_ttl, 0)
    _at_least(c, "auth.failure_delay", a.failure_delay, 0)
    _at_least(c, "auth.max_failures", a.max_failures, 1)
    _at_least(c, "auth.lockout", a.lockout, 0)
    _at_least(c, "auth.threads", a.threads, 1)
    if not 4 <= a.bcrypt_cost <= MAX_BCRYPT_COST:
        c.error("auth.bcrypt_cost", f"must be 4-{MAX_BCRYPT_COST}, got {a.bcrypt_cost}")
    elif a.bcrypt_cost < 10:
        c.warn("auth.bcrypt_cost", f"{a.bcrypt_cost} is cheap to brute-force; 10 or more is usual")
    elif a.bcrypt_cost > 12:
        c.warn("auth.bcrypt_cost", f"{a.bcrypt_cost} costs about {2 ** (a.bcrypt_cost - 12) / 4:g}"
               " s of CPU per login")
    if a.allow_plaintext:
        c.warn("auth.allow_plaintext", "keys may cross the network unencrypted")


def _check_statsd(config: Config, c: _Collector) -> None:
    st = config.statsd
    if not 1 <= st.port <= 65535:
        c.error("statsd.port", f"must be 1-65535, got {st.port}")
    if st.enabled and not st.host:
        c.error("statsd.host", "must be set when statsd.enabled is true")


def _check_logging(config: Config, c: _Collector) -> None:
    if config.logging.level.lower() not in LOG_LEVELS:
        c.error("logging.level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_file = config.logging.file
    if log_file and not os.path.isdir(os.path.dirname(os.path.abspath(log_file))):
        c.error("logging.file", f"directory does not exist: {os.path.dirname(log_file)}")


def resolve_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The config file to use: -c/--config, else $POP3D_CONFIG, else /etc/pop3d.toml."""
    return cli_value or environ.get("POP3D_CONFIG") or DEFAULT_PATH


def is_trusted(config: Config, ip: str) -> bool:
    """Whether a client address is inside ``server.trusted_networks``."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in config.server.trusted_networks)


# Made once when the master imports this module; the workers fork from the master, so they all
# share it, and the cache entries one worker writes are the ones another reads.
_START_SECRET = os.urandom(32)


def read_secret(config: Config) -> bytes:
    """The auth-cache HMAC key: the secret file's bytes, or a random key made at start."""
    if not config.auth.secret_file:
        return _START_SECRET
    return Path(config.auth.secret_file).read_bytes().strip()
