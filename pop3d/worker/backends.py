"""A worker's backends: what its sessions run on, built from the config after fork.

This is the one place that picks implementations for the ports: PostgreSQL for the maildrop and
the credentials, bcrypt API keys for authentication (with the memcached auth cache and rate
limiter), the memcached registries for the per-user session limit and the per-address
connection limit, and statsd (or nothing) for metrics.  It also gives the master the one thing
it needs from memcached: freeing the slots of a worker that died without releasing them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from pop3d.adapters.memcache import SharedState, build_shared_state
from pop3d.adapters.registry import MemcacheRegistry
from pop3d.adapters.statsd import NullMetrics, StatsdMetrics
from pop3d.auth import KeyAuthenticator
from pop3d.config import Config, StatsdConfig, TracingConfig, read_secret
from pop3d.ports import NULL_TRACER, Tracer
from pop3d.store import Database, DbSettings, PgCredentialStore, PgMaildrop
from pop3d.store.cache import MB, MessageCache

log = logging.getLogger(__name__)


@dataclass
class Backends:
    maildrop: PgMaildrop
    authenticator: KeyAuthenticator
    credentials: PgCredentialStore
    shared: SharedState
    metrics: StatsdMetrics | NullMetrics
    database: Database
    tracer: Tracer | None = None  # None: tracing is off
    _threads: threading.local = field(default_factory=threading.local)
    _thread_databases: list[Database] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def registry(self) -> MemcacheRegistry:
        return self.shared.registry

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
        """Housekeeping about once a second, on a pool thread: last_used_at writes, and keeping
        this worker's registry slots from expiring."""
        self.authenticator.flush_touches(force=False)
        self.shared.registry.refresh_if_due()
        self.shared.connections.refresh_if_due()

    def close(self) -> None:
        self.authenticator.flush_touches(force=True)
        self.credentials.close()
        for database in (self.database, *self._thread_databases):
            database.close()
        self.shared.close()
        self.metrics.close()


def session_prefix(pid: int) -> str:
    """The start of every session id of the worker ``pid`` on this host: ``host:pid:``."""
    return f"{socket.gethostname()}:{pid}:"


def build_backends(config: Config) -> Backends:
    """Connect nothing yet: database and memcached connections open on first use, so a worker
    boots while PostgreSQL is down and answers ``[SYS/TEMP]`` until it is back."""
    settings = DbSettings(config.database.dsn,
                          connect_timeout=config.database.connect_timeout,
                          statement_timeout=config.database.statement_timeout,
                          application_name=f"pop3d worker {os.getpid()}")
    credentials = PgCredentialStore(settings)
    database = Database(settings)
    shared = shared_state(config)
    auth = config.auth
    metrics = metrics_for(config.statsd)
    tracer = tracer_for(config.tracing)
    authenticator = KeyAuthenticator(credentials, scope=auth.scope, bcrypt_cost=auth.bcrypt_cost,
                                     cache=shared.auth_cache if auth.cache_ttl > 0 else None,
                                     cache_secret=read_secret(config), cache_ttl=auth.cache_ttl,
                                     rate_limiter=shared.rate_limiter, metrics=metrics,
                                     tracer=tracer or NULL_TRACER)
    cache_mb = config.limits.message_cache_mb
    cache = MessageCache(cache_mb * MB) if cache_mb > 0 else None
    return Backends(maildrop=PgMaildrop(database, cache), authenticator=authenticator,
                    credentials=credentials, shared=shared, metrics=metrics, database=database,
                    tracer=tracer)


def release_worker_slots(config: Config, pid: int) -> None:
    """For the master, after reaping worker ``pid``: free the registry slots its sessions and
    connections held (a SIGKILLed worker could not).  Never raises; a fresh client each time,
    so no socket is inherited by the workers the master forks later."""
    shared = shared_state(config)
    try:
        freed = shared.registry.release_worker(session_prefix(pid))
        if freed:
            log.info("released %d registry slots of worker %d", freed, pid)
        freed = shared.connections.release_worker(session_prefix(pid))
        if freed:
            log.info("released %d connection slots of worker %d", freed, pid)
    finally:
        shared.close()


def shared_state(config: Config) -> SharedState:
    """A new client and the ports over it, as ``config`` sets them (the admin commands use it
    too: they bump generations and unlock)."""
    m, auth = config.memcached, config.auth
    return build_shared_state(m.servers, m.timeout, m.registry_failure,
                              max_failures=auth.max_failures, lockout=auth.lockout,
                              verify_budget=auth.verify_budget, verify_window=auth.verify_window,
                              ipv6_prefix=config.limits.ipv6_prefix,
                              slot_ttl=m.slot_ttl, retry_after=m.retry_after)

def tracer_for(settings: TracingConfig) -> Tracer | None:
    """OpenTelemetry spans when ``[tracing]`` enables them and opentelemetry-api is installed;
    otherwise None, and nothing of OpenTelemetry is imported."""
    if not settings.enabled:
        return None
    try:
        from pop3d.adapters.otel import build_tracer  # noqa: PLC0415 - only when enabled
    except ImportError:
        log.warning("[tracing] is enabled but opentelemetry-api is not installed: no spans")
        return None
    return build_tracer(settings.service_name)


def metrics_for(settings: StatsdConfig) -> StatsdMetrics | NullMetrics:
    """The statsd client ``[statsd]`` asks for, or one that sends nothing."""
    if not settings.enabled:
        return NullMetrics()
    return StatsdMetrics(settings.host, settings.port, settings.prefix)
