"""ARCHITECTURE §2: who may import whom, checked on the source of every module in pop3d/.

Each module belongs to a layer (:data:`LAYER_OF`, matched by the longest module-name prefix);
each layer may import the internal layers in :data:`MAY_IMPORT` and the third-party libraries in
:data:`LIBRARIES`.  A module that matches no layer fails: a new module must be classified here
before it can land, which is how the arrows stay a decision rather than an accident.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pop3d"

LAYER_OF: dict[str, str] = {
    "pop3d": "root",  # __init__: the version only
    "pop3d.__main__": "main",
    "pop3d.errors": "errors",
    "pop3d.ports": "ports",
    "pop3d.protocol": "protocol",
    "pop3d.session": "session",
    "pop3d.auth": "auth",
    "pop3d.store": "store",
    "pop3d.adapters": "adapters",
    "pop3d.worker": "worker",
    "pop3d.channel": "worker",  # one connection of the worker's loop
    "pop3d.services": "worker",  # builds the worker's adapters and store after fork
    "pop3d.wakeup": "worker",  # signals and finished logins wake the worker's loop
    "pop3d.master": "master",
    "pop3d.master.plan": "plan",  # the master's decisions: pure, so no IO (FORBIDDEN_STDLIB)
    "pop3d.sockets": "sockets",
    "pop3d.pidfile": "pidfile",
    "pop3d.sdnotify": "sdnotify",
    "pop3d.heartbeat": "heartbeat",
    "pop3d.config": "config",
    "pop3d.log": "log",
    "pop3d.cli": "cli",
    "pop3d.bench": "bench",  # pop3bench: a client for any POP3 server, stdlib only
}

MASTER_HELPERS = frozenset({"sockets", "pidfile", "sdnotify", "heartbeat"})
MASTER_MAY_IMPORT = frozenset(
    {"root", "master", "plan", "config", "log", "errors"} | MASTER_HELPERS
)

MAY_IMPORT: dict[str, frozenset[str]] = {
    "root": frozenset(),
    "main": frozenset({"cli"}),
    "errors": frozenset(),
    "ports": frozenset({"errors"}),
    "protocol": frozenset({"protocol"}),
    "session": frozenset({"session", "protocol", "ports", "errors"}),
    "auth": frozenset({"root", "ports", "errors"}),
    "store": frozenset({"root", "store", "ports", "errors"}),
    "adapters": frozenset({"root", "adapters", "ports", "errors"}),
    # The master hands the worker its listeners and heartbeat (docs/INTERNALS.md), so the
    # worker may name those two helpers' types; never the pidfile or sd_notify.
    "worker": frozenset(
        {"root", "worker", "session", "protocol", "ports", "auth", "store", "adapters"}
        | {"config", "errors", "log", "sockets", "heartbeat"}
    ),
    "master": MASTER_MAY_IMPORT,
    "plan": MASTER_MAY_IMPORT,
    "config": frozenset({"root", "config", "errors"}),
    "log": frozenset({"root", "errors"}),
    "bench": frozenset({"bench"}),
    "cli": frozenset(
        {"root", "cli", "config", "master", "worker", "store", "auth", "log", "errors", "adapters"}
        | MASTER_HELPERS
    ),
    **{helper: frozenset({"root", "config", "log", "errors"} | MASTER_HELPERS)
       for helper in MASTER_HELPERS},
}  # fmt: skip

LIBRARIES: dict[str, frozenset[str]] = {
    "auth": frozenset({"bcrypt"}),
    "store": frozenset({"psycopg2"}),
    "adapters": frozenset({"pymemcache", "statsd"}),  # and only one of them per module
    "worker": frozenset({"setproctitle"}),
    "master": frozenset({"setproctitle"}),
    "cli": frozenset({"click"}),
}

_IO = frozenset(
    {"socket", "ssl", "select", "selectors", "os", "subprocess", "threading", "asyncio"}
    | {"signal", "multiprocessing", "concurrent", "pathlib", "shutil", "tempfile", "fcntl", "io"}
)
FORBIDDEN_STDLIB: dict[str, frozenset[str]] = {
    "protocol": _IO | {"time", "logging"},  # pure: bytes in, events out
    "session": _IO,
    "plan": _IO | {"time"},  # the arbiter passes ``now``: plan.py reads no clock
}

# ARCHITECTURE §2 plus the master-side helpers: every one of these must have a layer.
PLANNED = [
    "pop3d", "pop3d.__main__", "pop3d.errors", "pop3d.ports", "pop3d.session", "pop3d.auth",
    "pop3d.worker", "pop3d.master", "pop3d.config", "pop3d.log", "pop3d.cli",
    "pop3d.protocol", "pop3d.protocol.events", "pop3d.protocol.parser", "pop3d.protocol.writer",
    "pop3d.protocol.states", "pop3d.protocol.connection", "pop3d.protocol.proxy",
    "pop3d.store", "pop3d.store.maildrop", "pop3d.adapters.memcache", "pop3d.adapters.statsd",
    "pop3d.sockets", "pop3d.pidfile", "pop3d.sdnotify", "pop3d.heartbeat",
]  # fmt: skip


def layer_of(module: str) -> str | None:
    """The layer of a module: its own entry, or its nearest package's (never the root's, so a
    new top-level module is unclassified until someone decides where it belongs)."""
    if module == "pop3d":
        return LAYER_OF[module]
    name = module
    while "." in name:
        if name in LAYER_OF:
            return LAYER_OF[name]
        name = name.rpartition(".")[0]
    return None


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, with ``from pop3d.x import y`` resolved to the
    submodule ``pop3d.x.y`` when there is one."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                internal = base.split(".")[0] == "pop3d"
                names.add(candidate if internal and _is_module(candidate) else base)
    return names


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    layer = layer_of(module)
    if layer is None:
        return [f"{module} has no layer: classify it in {Path(__file__).name}"]
    found: list[str] = []
    libraries: set[str] = set()
    for name in sorted(imported(source, module, is_package)):
        top = name.split(".")[0]
        if top == "pop3d":
            target = layer_of(name)
            if target not in MAY_IMPORT[layer]:
                found.append(f"{module} ({layer}) imports {name} ({target})")
        elif top in sys.stdlib_module_names:
            if top in FORBIDDEN_STDLIB.get(layer, frozenset()):
                found.append(f"{module} ({layer}) imports the IO module {name}")
        elif top not in LIBRARIES.get(layer, frozenset()):
            found.append(f"{module} ({layer}) imports the library {name}")
        else:
            libraries.add(top)
    if layer == "adapters" and len(libraries) > 1:
        found.append(f"{module} wraps more than one library: {sorted(libraries)}")
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_module_follows_the_arrows(path: Path) -> None:
    source = path.read_text("utf-8")
    assert violations(_module_name(path), source, path.name == "__init__.py") == []


def test_the_package_is_found() -> None:
    assert {"pop3d.session", "pop3d.protocol.connection"} <= {_module_name(p) for p in SOURCES}


@pytest.mark.parametrize("module", PLANNED)
def test_every_planned_module_has_a_layer(module: str) -> None:
    assert layer_of(module) is not None


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("pop3d.util", "", "has no layer"),
        ("pop3d.helpers.misc", "", "has no layer"),
        ("pop3d.protocol.parser", "import socket", "IO module socket"),
        ("pop3d.protocol.parser", "import time", "IO module time"),
        ("pop3d.protocol.parser", "import logging", "IO module logging"),
        ("pop3d.protocol.parser", "from os import path", "IO module os"),
        ("pop3d.protocol.parser", "from pop3d import errors", "pop3d.errors (errors)"),
        ("pop3d.protocol.parser", "import attr", "library attr"),
        ("pop3d.session", "import selectors", "IO module selectors"),
        ("pop3d.session", "from pop3d.worker import Worker", "pop3d.worker (worker)"),
        ("pop3d.session", "from pop3d.store import maildrop", "pop3d.store"),
        ("pop3d.session", "import psycopg2", "library psycopg2"),
        ("pop3d.master", "from pop3d import session", "pop3d.session (session)"),
        ("pop3d.master.plan", "import time", "IO module time"),
        ("pop3d.master", "from pop3d.protocol import Connection", "pop3d.protocol"),
        ("pop3d.master", "import pop3d.worker", "pop3d.worker (worker)"),
        ("pop3d.master", "from pop3d.store.db import Database", "pop3d.store.db (store)"),
        ("pop3d.config", "import click", "library click"),
        ("pop3d.worker", "import click", "library click"),
        ("pop3d.worker", "from pop3d.pidfile import read_pid", "pop3d.pidfile (pidfile)"),
        ("pop3d.store.db", "from pop3d.session import Session", "pop3d.session (session)"),
        ("pop3d.store.db", "import statsd", "library statsd"),
        ("pop3d.adapters.memcache", "import pymemcache\nimport statsd", "more than one"),
        ("pop3d.adapters.memcache", "from pop3d.config import Config", "pop3d.config"),
        ("pop3d.auth", "import pymemcache", "library pymemcache"),
    ],
)
def test_violations_are_caught(module: str, source: str, complaint: str) -> None:
    found = violations(module, source)
    assert any(complaint in message for message in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("pop3d.protocol.connection", "from pop3d.protocol.parser import LineReader"),
        ("pop3d.protocol.connection", "from . import parser\nfrom .states import State"),
        ("pop3d.session", "from pop3d.protocol import events as ev\nimport logging\nimport time"),
        ("pop3d.session", "from pop3d.errors import InUse\nfrom pop3d.ports import Maildrop"),
        ("pop3d.master", "from pop3d.sockets import Listener\nimport setproctitle"),
        ("pop3d.cli", "import click\nfrom pop3d import master, worker, config"),
        ("pop3d.store.db", "import psycopg2.extensions\nfrom ..errors import StoreUnavailable"),
        ("pop3d.adapters.statsd", "import statsd\nfrom pop3d.ports import Metrics"),
    ],
)
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(module, source) == []


def test_relative_imports_are_resolved() -> None:
    names = imported("from .. import errors\nfrom . import db", "pop3d.store.maildrop")
    assert names == {"pop3d.errors", "pop3d.store.db"}
    assert imported("from . import events", "pop3d.protocol", is_package=True) == {
        "pop3d.protocol.events"
    }
