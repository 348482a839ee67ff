"""Fixtures for tests against the private PostgreSQL: a fresh, migrated database per test.

The schema is migrated once per test session into a template database; each test gets a
``CREATE DATABASE ... TEMPLATE`` copy (tens of milliseconds); all are dropped when the test
session ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from store_drivers import DRIVERS, DrivenMaildrop, make_driver, make_maildrop
from store_rows import MailWriter

from pop3d.store import Accounts, Database, DbSettings, migrate

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def template_dsn(make_database: Callable[[], str]) -> str:
    dsn = make_database()
    db = Database(DbSettings(dsn))
    migrate(db)
    db.close()
    return dsn


@pytest.fixture(scope="session")
def clone_database(make_database: Callable[..., str], template_dsn: str) -> Callable[[], str]:
    """A factory of fresh databases copied from the migrated template."""
    template = psycopg2.extensions.parse_dsn(template_dsn)["dbname"]
    return lambda: make_database(template=template)


@pytest.fixture
def dsn(clone_database: Callable[[], str]) -> str:
    return clone_database()


@pytest.fixture
def db(dsn: str) -> Iterator[Database]:
    database = Database(DbSettings(dsn, application_name="pop3d-test"))
    yield database
    database.close()


@pytest.fixture(params=DRIVERS)
def maildrop(request: pytest.FixtureRequest, db: Database) -> Iterator[DrivenMaildrop]:
    """The maildrop, its streams run by the blocking driver and by the worker's asynchronous
    one in turn."""
    driver = make_driver(request.param, db)
    yield make_maildrop(request.param, db, driver)
    driver.close()


@pytest.fixture
def accounts(db: Database) -> Accounts:
    return Accounts(db)


@pytest.fixture
def mail(db: Database) -> MailWriter:
    return MailWriter(db)


@pytest.fixture
def users(accounts: Accounts) -> dict[str, str]:
    """Three users, a, b and c, by name -> user id."""
    return {name: accounts.add_user(f"{name}@example.com") for name in ("a", "b", "c")}
