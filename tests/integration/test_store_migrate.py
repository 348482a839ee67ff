"""Schema migrations: complete, idempotent, and safe to run twice at once."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from pop3d.errors import StorePermanentError
from pop3d.store import Database, DbSettings, applied_versions, available, migrate
from pop3d.store.db import Cursor

TABLES = {"users", "user_addresses", "api_keys", "emails", "email_recipients",
          "email_attachments", "schema_migrations"}


def _tables(db: Database) -> set[str]:
    def work(cur: Cursor) -> set[str]:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {name for (name,) in cur.fetchall()}

    return db.run(work)


def _indexes(db: Database) -> dict[str, str]:
    def work(cur: Cursor) -> dict[str, str]:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        return dict(cur.fetchall())

    return db.run(work)


@pytest.fixture
def empty_db(make_database: Callable[[], str]) -> Database:
    return Database(DbSettings(make_database()))


def test_first_run_creates_schema_and_records_versions(empty_db: Database) -> None:
    assert applied_versions(empty_db) == []
    applied = migrate(empty_db)
    assert applied == [m.label for m in available()]
    assert applied[0] == "0001_initial"
    assert _tables(empty_db) >= TABLES
    assert applied_versions(empty_db) == [m.version for m in available()]
    empty_db.close()


def test_second_run_changes_nothing(empty_db: Database) -> None:
    migrate(empty_db)
    before = _indexes(empty_db)
    assert migrate(empty_db) == []
    assert _indexes(empty_db) == before
    empty_db.close()


def test_indexes_serve_login_and_maildrop_queries(db: Database) -> None:
    indexes = _indexes(db)
    definitions = "\n".join(indexes.values())
    assert "ON public.users USING btree (lower(address))" in definitions
    assert "ON public.user_addresses USING btree (lower(address))" in definitions
    assert "ON public.api_keys USING btree (user_id) WHERE (revoked_at IS NULL)" in definitions
    assert "ON public.api_keys USING btree (prefix) WHERE (revoked_at IS NULL)" in definitions
    assert "ON public.email_recipients USING btree (user_id, email_id)" in definitions
    assert "ON public.emails USING btree (received_at, id)" in definitions


def test_recipient_kind_is_constrained(db: Database) -> None:
    def work(cur: Cursor) -> None:
        cur.execute("INSERT INTO emails DEFAULT VALUES RETURNING id")
        email_id = cur.fetchone()[0]
        cur.execute("INSERT INTO email_recipients (email_id, address, kind)"
                    " VALUES (%s, 'x@example.com', 'reply-to')", (email_id,))

    with pytest.raises(StorePermanentError, match="check constraint"):
        db.run(work)


def test_two_concurrent_runs_both_succeed_with_one_schema(
        make_database: Callable[[], str]) -> None:
    dsn = make_database()
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        db = Database(DbSettings(dsn))
        try:
            barrier.wait()
            results.append(migrate(db))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Each migration was applied by exactly one of the two runs.
    assert sorted(results[0] + results[1]) == [m.label for m in available()]
    check = Database(DbSettings(dsn))
    assert applied_versions(check) == [m.version for m in available()]
    check.close()
