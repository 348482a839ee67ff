"""Configuration: one TOML file read into frozen dataclasses, validated as a whole.

Every option has its default in the schema and is documented in ``conf/pop3d.toml``.  Loading
never stops at the first problem: it collects every unknown key, wrong type and impossible value,
naming the file, the key and the problem, and raises them together as one :class:`ConfigError`.
Values that are legal but unwise come back as warnings.

The package: :mod:`~pop3d.config.schema` (the dataclasses and their defaults),
:mod:`~pop3d.config.values` (reading the TOML and converting each value to its field's type) and
:mod:`~pop3d.config.checks` (ranges and cross-field rules).  Import from ``pop3d.config``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping

from pop3d.config.checks import (
    MAX_BCRYPT_COST,
    MAX_LINE_LENGTH,
    MIN_SECRET_OCTETS,
    RFC1939_MIN_IDLE,
    check_semantics,
    load_secret,
)
from pop3d.config.problems import ConfigError, ConfigProblem
from pop3d.config.schema import (
    LOG_LEVELS,
    SECTIONS,
    TLS_VERSIONS,
    Address,
    AuthConfig,
    Config,
    DatabaseConfig,
    LimitsConfig,
    LoggingConfig,
    MemcachedConfig,
    Network,
    ServerConfig,
    StatsdConfig,
    TlsConfig,
    TracingConfig,
)
from pop3d.config.values import (
    Collector,
    build_section,
    parse_address,
    read_toml,
    replace_deprecated,
)

DEFAULT_PATH = "/etc/pop3d.toml"

__all__ = [
    "DEFAULT_PATH",
    "LOG_LEVELS",
    "MAX_BCRYPT_COST",
    "MAX_LINE_LENGTH",
    "MIN_SECRET_OCTETS",
    "RFC1939_MIN_IDLE",
    "SECTIONS",
    "TLS_VERSIONS",
    "Address",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DatabaseConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MemcachedConfig",
    "Network",
    "ServerConfig",
    "StatsdConfig",
    "TlsConfig",
    "TracingConfig",
    "in_networks",
    "load",
    "load_secret",
    "parse_address",
    "read_secret",
    "resolve_path",
]


def load(path: str | os.PathLike[str], *, check_files: bool = True,
         ) -> tuple[Config, list[ConfigProblem]]:
    """Read and validate ``path``; return the config and its warnings, or raise ConfigError.
    ``check_files=False`` skips the TLS and secret files (see :func:`check_semantics`)."""
    name = str(path)
    collector = Collector(name)
    raw = read_toml(name)
    sections = {section: build_section(
                    section, replace_deprecated(section, raw.get(section, {}), collector),
                    collector)
                for section in SECTIONS}
    for section in sorted(raw.keys() - SECTIONS.keys()):
        collector.error(section, "unknown section")
    config = Config(path=name, **sections)
    check_semantics(config, collector, files=check_files)
    if collector.problems:
        raise ConfigError(collector.problems)
    return config, collector.warnings


def resolve_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The config file to use: -c/--config, else $POP3D_CONFIG, else /etc/pop3d.toml."""
    return cli_value or environ.get("POP3D_CONFIG") or DEFAULT_PATH


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    """Whether a client address is inside one of ``networks`` (``server.proxy_networks``,
    ``server.plaintext_networks``); an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


# Made once when the master imports this module; the workers fork from the master, so they all
# share it, and the cache entries one worker writes are the ones another reads.
_START_SECRET = os.urandom(32)


def read_secret(config: Config) -> bytes:
    """The auth-cache HMAC key: the secret file's content (:func:`load_secret`), or a random
    key made at start."""
    if not config.auth.secret_file:
        return _START_SECRET
    return load_secret(config.auth.secret_file)
