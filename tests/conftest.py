"""Shared fixtures: where the private services are, and fresh databases on them.

``scripts/services.sh start`` (run by ``make test``) writes ``var/services.env``; values already
in the environment win, so CI or a developer can point the tests elsewhere.
"""

from __future__ import annotations

import os
import shlex
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES_ENV = ROOT / "var" / "services.env"


def _read_services_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if SERVICES_ENV.exists():
        for line in SERVICES_ENV.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = shlex.split(value)[0] if value else ""
    return values


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """POP3D_TEST_DSN, POP3D_TEST_MEMCACHED, POP3D_TEST_CERT, POP3D_TEST_KEY and PG*."""
    values = _read_services_env()
    values.update({k: v for k, v in os.environ.items() if k.startswith(("POP3D_TEST_", "PG"))})
    if "POP3D_TEST_DSN" not in values:
        pytest.fail("no test services: run `make test` (or scripts/services.sh start) first")
    return values


def _admin_connection(services: dict[str, str]) -> psycopg2.extensions.connection:
    dsn = psycopg2.extensions.make_dsn(services["POP3D_TEST_DSN"], dbname="postgres")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def make_database(services: dict[str, str]) -> Iterator[Callable[..., str]]:
    """A factory: each call creates a database (empty, or a copy of the database named by
    ``template``) and returns its DSN; all are dropped at the end of the test session."""
    created: list[str] = []
    admin = _admin_connection(services)

    def create(template: str | None = None) -> str:
        name = f"pop3d_t_{uuid.uuid4().hex[:12]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"{copy}')
        created.append(name)
        return psycopg2.extensions.make_dsn(services["POP3D_TEST_DSN"], dbname=name)

    yield create
    with admin.cursor() as cur:
        for name in created:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
