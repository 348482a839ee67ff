"""ARCHITECTURE §2: who may import whom, checked on the source of every module in pop3d/.

Each folder of the package is a layer, and so is each of the few top-level modules that two or
more folders share (:data:`LAYER_OF`, matched by the longest module-name prefix).  Each layer
may import the internal layers in :data:`MAY_IMPORT` and the third-party libraries in
:data:`LIBRARIES`.  A module that matches no layer fails: a new top-level module or folder must
be classified here before it can land, which is how the arrows stay a decision rather than an
accident.
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
    # top-level modules: concepts that two or more folders share
    "pop3d.errors": "errors",
    "pop3d.ports": "ports",
    "pop3d.handoff": "handoff",  # what crosses fork(): master and worker both import it
    "pop3d.heartbeat": "heartbeat",
    "pop3d.auth": "auth",
    "pop3d.log": "log",
    # folders
    "pop3d.protocol": "protocol",
    "pop3d.session": "session",
    "pop3d.message": "message",
    "pop3d.store": "store",
    "pop3d.adapters": "adapters",
    "pop3d.worker": "worker",
    "pop3d.master": "master",
    "pop3d.master.plan": "plan",  # the master's decisions: pure, so no IO (FORBIDDEN_STDLIB)
    "pop3d.config": "config",
    "pop3d.cli": "cli",
    "pop3d.bench": "bench",  # pop3bench: a client for any POP3 server, stdlib only
}

MAY_IMPORT: dict[str, frozenset[str]] = {
    "root": frozenset(),
    "main": frozenset({"cli"}),
    "errors": frozenset(),
    "ports": frozenset({"errors"}),
    "handoff": frozenset({"config", "heartbeat"}),
    "heartbeat": frozenset(),
    "auth": frozenset({"root", "ports", "errors"}),
    "log": frozenset({"root"}),
    "protocol": frozenset({"protocol"}),
    "session": frozenset({"session", "protocol", "ports", "errors"}),
    "message": frozenset({"message"}),
    "store": frozenset({"root", "store", "message", "ports", "errors"}),
    "adapters": frozenset({"root", "adapters", "ports", "errors"}),
    "worker": frozenset(
        {"root", "worker", "session", "protocol", "ports", "auth", "store", "adapters"}
        | {"config", "errors", "log", "handoff", "heartbeat"}
    ),
    "master": frozenset({"root", "master", "plan", "config", "log", "handoff", "heartbeat"}),
    "plan": frozenset({"root", "plan", "config"}),
    "config": frozenset({"root", "config"}),
    "bench": frozenset({"bench"}),
    "cli": frozenset(
        {"root", "cli", "config", "master", "worker", "store", "auth", "log", "errors"}
        | {"adapters", "handoff", "heartbeat"}
    ),
}  # fmt: skip

LIBRARIES: dict[str, frozenset[str]] = {
    "auth": frozenset({"bcrypt"}),
    "store": frozenset({"psycopg2"}),
    "adapters": frozenset({"pymemcache", "statsd", "opentelemetry"}),  # one per module
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
    "message": _IO | {"time", "logging"},  # pure: values in, octets out
    "session": _IO,
    "plan": _IO | {"time"},  # the arbiter passes ``now``: plan.py reads no clock
}

# ARCHITECTURE §2: every one of these must have a layer.
PLANNED = [
    "pop3d", "pop3d.__main__", "pop3d.errors", "pop3d.ports", "pop3d.handoff",
    "pop3d.heartbeat", "pop3d.auth", "pop3d.log", "pop3d.protocol", "pop3d.session",
    "pop3d.session.authorization", "pop3d.message", "pop3d.message.render", "pop3d.store",
    "pop3d.store.maildrop", "pop3d.adapters.memcache", "pop3d.worker", "pop3d.worker.channel",
    "pop3d.master", "pop3d.master.listeners", "pop3d.master.pidfile", "pop3d.config",
    "pop3d.cli",
]  # fmt: skip

# A newcomer reading the top-level listing can tell which process each part belongs to: the
# top level holds only the shared modules above and folders.
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "ports", "handoff", "heartbeat", "auth",
                     "log"}


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


def test_the_top_level_holds_shared_modules_and_folders_only() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == TOP_LEVEL_MODULES
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert {f"pop3d.{folder}" for folder in folders} <= set(LAYER_OF)


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
        ("pop3d.worker.loop", "from pop3d.master.pidfile import read_pid", "(master)"),
        ("pop3d.worker.channel", "from pop3d.master import listeners", "(master)"),
        ("pop3d.master.arbiter", "from pop3d.worker.backends import Backends", "(worker)"),
        ("pop3d.master.arbiter", "from pop3d.auth import KeyAuthenticator", "(auth)"),
        ("pop3d.master.plan", "from pop3d.heartbeat import Heartbeat", "(heartbeat)"),
        ("pop3d.message.render", "from pop3d.errors import MessageGone", "(errors)"),
        ("pop3d.message.render", "from pop3d.store.db import Database", "(store)"),
        ("pop3d.message.parse", "import logging", "IO module logging"),
        ("pop3d.handoff", "from pop3d.worker import Worker", "(worker)"),
        ("pop3d.handoff", "from pop3d.master import Master", "(master)"),
        ("pop3d.session.core", "from pop3d.message import render", "(message)"),
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
        ("pop3d.master", "from pop3d.handoff import Listener\nimport setproctitle"),
        ("pop3d.master.arbiter", "from pop3d.master.listeners import close_all"),
        ("pop3d.worker.loop", "from pop3d.handoff import Listener\nfrom pop3d import heartbeat"),
        ("pop3d.store.maildrop", "from pop3d.message.render import render"),
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
