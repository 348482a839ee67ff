"""The mail store on PostgreSQL: schema, maildrop, credentials, accounts and delivery.

Construction from a DSN::

    settings = DbSettings(dsn, connect_timeout=5, statement_timeout=30.0)
    maildrop = PgMaildrop(Database(settings))      # one Database for the worker's loop thread
    credentials = PgCredentialStore(settings)      # one connection per calling thread
    accounts = Accounts(Database(settings))
    migrate(Database(settings)); deliver(Database(settings), raw, ["user@example.com"])

Only :mod:`pop3d.ports`, :mod:`pop3d.errors`, the standard library and psycopg2 are imported
here; psycopg2's exceptions never leave this package.
"""

from pop3d.store.accounts import (
    Accounts,
    AddressTaken,
    InvalidAddress,
    KeyInfo,
    NoSuchKey,
    PrefixTaken,
    UserInfo,
    check_address,
)
from pop3d.store.credentials import PgCredentialStore
from pop3d.store.db import Database, DbSettings
from pop3d.store.delivery import deliver
from pop3d.store.maildrop import PgMaildrop, uidl
from pop3d.store.migrate import applied_versions, available, migrate

__all__ = [
    "Accounts",
    "AddressTaken",
    "Database",
    "DbSettings",
    "InvalidAddress",
    "KeyInfo",
    "NoSuchKey",
    "PgCredentialStore",
    "PgMaildrop",
    "PrefixTaken",
    "UserInfo",
    "applied_versions",
    "available",
    "check_address",
    "deliver",
    "migrate",
    "uidl",
]
