"""What one login costs in round trips, counted on the real PostgreSQL and memcached: with the
auth cache warm it must not grow with the user's session limit or mailbox."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from store_rows import MailWriter

from pop3d.adapters.memcache import SharedState, build_shared_state
from pop3d.auth import KeyAuthenticator, generate_key
from pop3d.config import Address
from pop3d.ports import Credentials
from pop3d.session import Authenticate
from pop3d.store import Accounts, Database, DbSettings, PgCredentialStore, PgMaildrop
from pop3d.store import db as db_module

COST = 4


class CountingCursor(psycopg2.extensions.cursor):
    def execute(self, query: Any, vars: Any = None) -> None:
        connection = self.connection
        assert isinstance(connection, CountingConnection)
        if not connection.autocommit and connection.status == psycopg2.extensions.STATUS_READY:
            connection.round_trips += 1  # the BEGIN psycopg2 sends first
        connection.round_trips += 1
        super().execute(query, vars)


class CountingConnection(psycopg2.extensions.connection):
    """Counts the messages that wait for PostgreSQL's answer: statements, BEGIN, COMMIT."""

    round_trips = 0

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cursor_factory", CountingCursor)
        return super().cursor(*args, **kwargs)

    def commit(self) -> None:
        if self.status != psycopg2.extensions.STATUS_READY:
            self.round_trips += 1
        super().commit()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[CountingConnection]:
    """Every connection the store opens during the test, counting."""
    connections: list[CountingConnection] = []
    real_connect = psycopg2.connect

    def connect(dsn: str, **kwargs: Any) -> Any:
        connection = real_connect(dsn, connection_factory=CountingConnection, **kwargs)
        connections.append(connection)
        return connection

    monkeypatch.setattr(db_module.psycopg2, "connect", connect)
    return connections


@pytest.fixture
def shared(services: dict[str, str]) -> Iterator[SharedState]:
    host, _, port = services["POP3D_TEST_MEMCACHED"].rpartition(":")
    state = build_shared_state([Address(host, int(port))], 0.5, "open", max_failures=5,
                               lockout=60, namespace=f"rt{id(object())}")
    yield state
    state.close()


def _count_memcached(state: SharedState) -> Counter[str]:
    """Wrap the client's one funnel to the servers: a call there is a round trip."""
    calls: Counter[str] = Counter()
    real = state.client._run

    def counted(key: str, command: str, *args: Any, **kwargs: Any) -> Any:
        calls[command] += 1
        return real(key, command, *args, **kwargs)

    state.client._run = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("limit", [5, 1000])
def test_a_login_with_a_warm_cache_costs_the_same_whatever_the_limit(
        dsn: str, accounts: Accounts, mail: MailWriter, shared: SharedState,
        opened: list[CountingConnection], limit: int) -> None:
    user_id = accounts.add_user("ann@example.com")
    new = generate_key(COST)
    accounts.add_key(user_id, "t", new.prefix, new.bcrypt_hash, ["pop3"])
    for _ in range(20):
        mail.email([(user_id, "ann@example.com", "to")], raw=b"Subject: x\n\nbody\n")
    settings = DbSettings(dsn)
    credentials = PgCredentialStore(settings)
    database = Database(settings)
    authenticator = KeyAuthenticator(credentials, bcrypt_cost=COST, cache=shared.auth_cache,
                                     cache_secret=b"s" * 32, rate_limiter=shared.rate_limiter)
    login = Authenticate(Credentials("ann@example.com", new.key, "192.0.2.7", "PLAIN"), 10000)

    def log_in(session_id: str) -> None:
        grant = login.run(authenticator, PgMaildrop(database))
        assert len(grant.messages) == 20
        assert shared.registry.acquire(grant.principal.user_id, session_id, limit)

    try:
        log_in("h:1:1")  # connections opened, the cache warmed, sizes known
        before = sum(c.round_trips for c in opened)
        memcached = _count_memcached(shared)
        log_in("h:1:2")
        assert sum(c.round_trips for c in opened) - before == 1  # the snapshot, nothing else
        # The rate limiter and the cache (one get each), the slot (one add), the worker's
        # session index (one set).
        assert memcached == Counter({"get": 2, "add": 1, "set_many": 1})
    finally:
        credentials.close()
        database.close()
