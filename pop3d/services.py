"""What a worker's sessions run on, built from the config after fork.

This is the one place that picks implementations for the ports: PostgreSQL for the maildrop and
the credentials, bcrypt API keys for authentication, statsd (or nothing) for metrics, and the
in-process registry for the per-user session limit.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from pop3d.adapters.local import LocalRegistry
from pop3d.adapters.statsd import NullMetrics, StatsdMetrics
from pop3d.auth import KeyAuthenticator
from pop3d.config import Config, read_secret
from pop3d.ports import Registry
from pop3d.store import Database, DbSettings, PgCredentialStore, PgMaildrop


@dataclass
class WorkerServices:
    maildrop: PgMaildrop
    authenticator: KeyAuthenticator
    credentials: PgCredentialStore
    registry: Registry
    metrics: StatsdMetrics | NullMetrics
    database: Database
    _threads: threading.local = field(default_factory=threading.local)
    _thread_databases: list[Database] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def thread_maildrop(self) -> PgMaildrop:
        """A maildrop on the calling pool thread's own connection (logins take their snapshot
        off the loop, in parallel)."""
        maildrop: PgMaildrop | None = getattr(self._threads, "maildrop", None)
        if maildrop is None:
            database = Database(self.database.settings)
            with self._lock:
                self._thread_databases.append(database)
            maildrop = self._threads.maildrop = PgMaildrop(database)
        return maildrop

    def periodic(self) -> None:
        """Called from the worker's loop about once a second."""
        self.authenticator.flush_touches(force=False)

    def close(self) -> None:
        self.authenticator.flush_touches(force=True)
        self.credentials.close()
        for database in (self.database, *self._thread_databases):
            database.close()
        self.metrics.close()


def build_services(config: Config) -> WorkerServices:
    """Connect nothing yet: database connections open lazily on first use, so a worker boots
    while PostgreSQL is down and answers ``[SYS/TEMP]`` until it is back."""
    settings = DbSettings(config.database.dsn,
                          connect_timeout=config.database.connect_timeout,
                          statement_timeout=config.database.statement_timeout,
                          application_name=f"pop3d worker {os.getpid()}")
    credentials = PgCredentialStore(settings)
    database = Database(settings)
    auth = config.auth
    authenticator = KeyAuthenticator(credentials, scope=auth.scope, bcrypt_cost=auth.bcrypt_cost,
                                     cache=None, cache_secret=read_secret(config),
                                     cache_ttl=auth.cache_ttl, rate_limiter=None)
    return WorkerServices(maildrop=PgMaildrop(database), authenticator=authenticator,
                          credentials=credentials, registry=LocalRegistry(),
                          metrics=_metrics(config), database=database)


def _metrics(config: Config) -> StatsdMetrics | NullMetrics:
    if not config.statsd.enabled:
        return NullMetrics()
    return StatsdMetrics(config.statsd.host, config.statsd.port, config.statsd.prefix)
