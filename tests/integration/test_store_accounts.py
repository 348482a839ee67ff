"""Users, aliases and keys (admin side), and the credential lookups logins make."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from store_rows import MailWriter

from pop3d.auth import generate_key
from pop3d.errors import NoSuchUser
from pop3d.store import (
    Accounts,
    AddressTaken,
    DbSettings,
    InvalidAddress,
    NoSuchKey,
    PgCredentialStore,
    PrefixTaken,
)


@pytest.fixture
def credentials(dsn: str) -> Iterator[PgCredentialStore]:
    store = PgCredentialStore(DbSettings(dsn))
    yield store
    store.close()


@pytest.mark.parametrize("bad", ["", "plain", "a@b@c", "@example.com", "a@", "a b@example.com",
                                 "a@exa mple.com", "a\n@example.com", "<a@example.com>",
                                 "a,b@example.com", "x" * 250 + "@example.com",
                                 "lone\ud800surrogate@example.com"])
def test_invalid_addresses_are_refused(accounts: Accounts, bad: str) -> None:
    with pytest.raises(InvalidAddress):
        accounts.add_user(bad)


def test_addresses_are_unique_case_insensitively(accounts: Accounts) -> None:
    accounts.add_user("Mixed.Case@Example.com", "M")
    with pytest.raises(AddressTaken):
        accounts.add_user("mixed.case@example.COM")
    assert accounts.user("MIXED.case@example.com").address == "Mixed.Case@Example.com"


def test_alias_may_not_equal_a_primary_or_another_alias(accounts: Accounts) -> None:
    accounts.add_user("one@example.com")
    accounts.add_user("two@example.com")
    accounts.add_alias("one@example.com", "alias@example.com")
    with pytest.raises(AddressTaken):
        accounts.add_alias("one@example.com", "TWO@example.com")
    with pytest.raises(AddressTaken):
        accounts.add_alias("two@example.com", "Alias@Example.com")
    with pytest.raises(AddressTaken):
        accounts.add_user("alias@example.com")
    with pytest.raises(NoSuchUser):
        accounts.add_alias("nobody@example.com", "fresh@example.com")


def test_list_and_disable_users(accounts: Accounts) -> None:
    accounts.add_user("b@example.com")
    accounts.add_user("a@example.com", "Ann")
    accounts.add_alias("a@example.com", "ann@example.com")
    assert accounts.disable_user("ANN@example.com") is True
    assert accounts.disable_user("a@example.com") is False
    listed = accounts.list_users()
    assert [u.address for u in listed] == ["a@example.com", "b@example.com"]
    assert listed[0].display_name == "Ann"
    assert listed[0].aliases == ("ann@example.com",)
    assert listed[0].disabled_at is not None
    assert listed[1].disabled_at is None


def test_keys_are_listed_and_revoked_by_id_or_prefix(accounts: Accounts) -> None:
    user_id = accounts.add_user("k@example.com")
    first, second = generate_key(4), generate_key(4)
    first_id = accounts.add_key(user_id, "one", first.prefix, first.bcrypt_hash, ["pop3"])
    accounts.add_key(user_id, "two", second.prefix, second.bcrypt_hash, ["pop3", "imap"])
    keys = accounts.list_keys("k@example.com")
    assert [(k.name, k.prefix, k.scopes) for k in keys] == [
        ("one", first.prefix, ("pop3",)), ("two", second.prefix, ("pop3", "imap"))]
    assert accounts.revoke_key(first_id) is True
    assert accounts.revoke_key(first_id) is False
    assert accounts.revoke_key(second.prefix) is True
    assert all(k.revoked_at is not None for k in accounts.list_keys("k@example.com"))
    with pytest.raises(NoSuchKey):
        accounts.revoke_key("pk_doesnotexist")


def test_prefix_collision_is_reported(accounts: Accounts) -> None:
    user_id = accounts.add_user("k@example.com")
    key = generate_key(4)
    accounts.add_key(user_id, "one", key.prefix, key.bcrypt_hash, ["pop3"])
    with pytest.raises(PrefixTaken):
        accounts.add_key(user_id, "two", key.prefix, key.bcrypt_hash, ["pop3"])


def test_find_user_by_primary_or_verified_alias(
        accounts: Accounts, credentials: PgCredentialStore, mail: MailWriter) -> None:
    user_id = accounts.add_user("main@example.com")
    accounts.add_alias("main@example.com", "Alias@example.com")
    mail.execute("INSERT INTO user_addresses (user_id, address, verified)"
                 " VALUES (%s, 'unverified@example.com', false)", (user_id,))
    for address in ("main@example.com", "MAIN@EXAMPLE.COM", "alias@EXAMPLE.com"):
        found = credentials.find_user(address)
        assert found is not None
        assert (found.user_id, found.address, found.disabled) == (
            user_id, "main@example.com", False)
    assert credentials.find_user("unverified@example.com") is None
    assert credentials.find_user("nobody@example.com") is None
    assert credentials.find_user("nul\0@example.com") is None
    assert credentials.find_user("lone\udfff@example.com") is None
    accounts.disable_user("main@example.com")
    disabled = credentials.find_user("main@example.com")
    assert disabled is not None
    assert disabled.disabled


def test_candidate_keys(accounts: Accounts, credentials: PgCredentialStore,
                        mail: MailWriter) -> None:
    user_id = accounts.add_user("k@example.com")
    other = accounts.add_user("other@example.com")
    mine, revoked, foreign = generate_key(4), generate_key(4), generate_key(4)
    mine_id = accounts.add_key(user_id, "mine", mine.prefix, mine.bcrypt_hash, ["pop3"])
    revoked_id = accounts.add_key(user_id, "old", revoked.prefix, revoked.bcrypt_hash, ["pop3"])
    accounts.revoke_key(revoked_id)
    accounts.add_key(other, "theirs", foreign.prefix, foreign.bcrypt_hash, ["pop3"])
    mail.execute("INSERT INTO api_keys (user_id, name, key_hash, scopes)"
                 " VALUES (%s, 'legacy', '$2b$04$legacy', '{pop3,smtp}')", (user_id,))
    found = credentials.candidate_keys(user_id, mine.key)
    assert found[0].key_id == mine_id
    assert [k.scopes for k in found] == [frozenset({"pop3"}), frozenset({"pop3", "smtp"})]
    assert found[0].bcrypt_hash == mine.bcrypt_hash
    assert len(credentials.candidate_keys(user_id, revoked.key)) == 1  # only the legacy key
    assert len(credentials.candidate_keys(user_id, foreign.key)) == 1
    assert len(credentials.candidate_keys(user_id, "no-prefix\0")) == 1
    assert credentials.candidate_keys("junk", mine.key) == []


def test_touch_keys_sets_last_used(accounts: Accounts, credentials: PgCredentialStore,
                                   mail: MailWriter) -> None:
    user_id = accounts.add_user("k@example.com")
    key = generate_key(4)
    key_id = accounts.add_key(user_id, "k", key.prefix, key.bcrypt_hash, ["pop3"])
    credentials.touch_keys([key_id, "junk"])
    assert mail.scalar("SELECT last_used_at IS NOT NULL FROM api_keys") is True


def test_each_thread_gets_its_own_connection(credentials: PgCredentialStore) -> None:
    pids: list[object] = []

    def lookup() -> None:
        credentials.find_user("x@example.com")
        db = credentials._db()
        pids.append(db.run(lambda cur: (cur.execute("SELECT pg_backend_pid()"),
                                        cur.fetchone())[1]))

    threads = [threading.Thread(target=lookup) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == 3
