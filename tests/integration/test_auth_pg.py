"""The authenticator over the real credential store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_rows import MailWriter

from pop3d.auth import KeyAuthenticator, generate_key
from pop3d.errors import AuthFailed, BackendUnavailable
from pop3d.ports import Credentials
from pop3d.store import Accounts, DbSettings, PgCredentialStore

COST = 4


@pytest.fixture
def store(dsn: str) -> Iterator[PgCredentialStore]:
    credentials = PgCredentialStore(DbSettings(dsn))
    yield credentials
    credentials.close()


@pytest.fixture
def authenticator(store: PgCredentialStore) -> KeyAuthenticator:
    return KeyAuthenticator(store, bcrypt_cost=COST)


def _login(username: str, password: str) -> Credentials:
    return Credentials(username, password, "192.0.2.7", "PLAIN")


def _key(accounts: Accounts, address: str, scopes: list[str]) -> tuple[str, str]:
    new = generate_key(COST)
    user = accounts.user(address)
    return accounts.add_key(user.user_id, "test", new.prefix, new.bcrypt_hash, scopes), new.key


def test_full_login_chain(accounts: Accounts, authenticator: KeyAuthenticator,
                          mail: MailWriter) -> None:
    user_id = accounts.add_user("ann@example.com")
    accounts.add_alias("ann@example.com", "a.n@example.com")
    key_id, key = _key(accounts, "ann@example.com", ["pop3"])
    principal = authenticator.authenticate(_login("ann@example.com", key))
    assert (principal.user_id, principal.key_id, principal.address) == (
        user_id, key_id, "ann@example.com")
    assert authenticator.authenticate(_login("A.N@example.com", key)) == principal
    assert mail.scalar("SELECT last_used_at FROM api_keys") is None  # not on the request path
    assert authenticator.flush_touches(force=True) == 1
    assert mail.scalar("SELECT last_used_at IS NOT NULL FROM api_keys") is True


def test_refusals(accounts: Accounts, authenticator: KeyAuthenticator) -> None:
    accounts.add_user("ann@example.com")
    accounts.add_user("bob@example.com")
    revoked_id, revoked = _key(accounts, "ann@example.com", ["pop3"])
    accounts.revoke_key(revoked_id)
    _, smtp_only = _key(accounts, "ann@example.com", ["smtp"])
    _, bobs = _key(accounts, "bob@example.com", ["pop3"])
    accounts.disable_user("bob@example.com")
    for username, password in [("ann@example.com", revoked), ("ann@example.com", smtp_only),
                               ("ann@example.com", bobs), ("bob@example.com", bobs),
                               ("nobody@example.com", bobs), ("ann@example.com", "x" * 100)]:
        with pytest.raises(AuthFailed):
            authenticator.authenticate(_login(username, password))


def test_database_down_is_backend_unavailable(dsn: str) -> None:
    store = PgCredentialStore(DbSettings(f"{dsn} port=1", connect_timeout=1))
    with pytest.raises(BackendUnavailable):
        KeyAuthenticator(store, bcrypt_cost=COST).authenticate(_login("a@example.com", "k"))
