"""TOML values to typed fields: reading the file, unknown keys, and one converter per field type.

A value of the wrong type is recorded in the :class:`Collector` with its key and left out, so the
field keeps its default and loading goes on to find the next problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Callable
from typing import Any, get_args, get_origin, get_type_hints

from pop3d.config.problems import ConfigError, ConfigProblem
from pop3d.config.schema import DEPRECATED, SECTIONS, Address


class Collector:
    """Gathers problems and warnings for one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, key: str, problem: str) -> None:
        self.problems.append(ConfigProblem(self.path, key, problem))

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(ConfigProblem(self.path, key, problem))


def read_toml(path: str) -> dict[str, Any]:
    """The file's tables; a file that cannot be read or parsed is the one problem reported."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(path, "-", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "-", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(path, "-", f"not valid TOML: {exc}")]) from None


def build_section(section: str, values: Any, collector: Collector) -> Any:
    """The section's dataclass from its table: unknown keys and ill-typed values recorded."""
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


def replace_deprecated(section: str, values: Any, collector: Collector) -> Any:
    """The section's table with each deprecated key turned into the keys that replace it (those
    the file does not set itself), and a warning for each; an invalid value is an error under
    the deprecated key's own name."""
    if not isinstance(values, dict):
        return values
    table = dict(values)
    hints = get_type_hints(SECTIONS[section])
    for old, new in DEPRECATED.get(section, {}).items():
        if old not in table:
            continue
        value = table.pop(old)
        key = f"{section}.{old}"
        collector.warn(key, f"deprecated: use {' and '.join(new)} instead (read as both)")
        if _convert(hints[new[0]], value, key, collector) is not _INVALID:
            table.update({replacement: value for replacement in new if replacement not in table})
    return table


_INVALID: Any = object()


def _convert(hint: Any, value: Any, key: str, collector: Collector) -> Any:
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


def _convert_list(item_hint: Any, value: Any, key: str, collector: Collector) -> Any:
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

