"""The maildrop on PostgreSQL: snapshots, access control, read marks and per-user deletion."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from store_drivers import BlockingDriver, DrivenMaildrop, LoopDriver
from store_rows import Attachment, MailWriter

from pop3d.errors import MessageGone, StorePermanentError
from pop3d.store import Database, DbSettings, PgMaildrop
from pop3d.store.cache import MB, MessageCache
from pop3d.store.jobs import drain
from pop3d.store.maildrop import RAW_SLICE, SIZE_BATCH

RAW = b"Subject: hello\n\nbody\n"
RETR = b"Subject: hello\r\n\r\nbody\r\n"


def _to(user_id: str, name: str = "a", kind: str = "to") -> tuple[str, str, str]:
    return (user_id, f"{name}@example.com", kind)


def test_snapshot_is_oldest_first_by_received_at_then_id(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    same_time = datetime(2024, 1, 1, tzinfo=UTC)
    late = mail.email([_to(users["a"])], raw=RAW, received_at=datetime(2024, 3, 1, tzinfo=UTC))
    tied = [mail.email([_to(users["a"])], raw=RAW, received_at=same_time) for _ in range(3)]
    early = mail.email([_to(users["a"])], raw=RAW, received_at=datetime(2023, 1, 1, tzinfo=UTC))
    ids = [m.email_id for m in maildrop.snapshot(users["a"], 100)]
    assert ids == [early, *sorted(tied), late]


def test_snapshot_caps_oldest_first_so_deleting_reveals_the_rest(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    ids = [mail.email([_to(users["a"])], raw=RAW) for _ in range(5)]
    first = maildrop.snapshot(users["a"], 3)
    assert [m.email_id for m in first] == ids[:3]
    maildrop.delete(users["a"], [m.email_id for m in first])
    assert [m.email_id for m in maildrop.snapshot(users["a"], 3)] == ids[3:]
    assert maildrop.snapshot(users["a"], 0) == []


def test_snapshot_lists_an_email_once_per_user_and_derives_uidl_from_id(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"]), _to(users["a"], "a-alias", "cc"),
                           _to(users["a"], "a", "bcc")], raw=RAW)
    [info] = maildrop.snapshot(users["a"], 10)
    assert info.email_id == email_id
    assert info.uidl == uuid.UUID(email_id).hex
    assert len(info.uidl) == 32
    assert info.uidl == info.uidl.lower()
    assert info.size == len(RETR)


def test_snapshot_only_holds_the_users_own_mail(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    mine = mail.email([_to(users["a"])], raw=RAW)
    mail.email([_to(users["b"], "b")], raw=RAW)
    mail.email([(None, "a@example.com", "to")], raw=RAW)  # same address, not linked to a
    assert [m.email_id for m in maildrop.snapshot(users["a"], 10)] == [mine]
    assert maildrop.snapshot(str(uuid.uuid4()), 10) == []
    assert maildrop.snapshot("not-a-uuid", 10) == []


def test_missing_size_is_computed_once_and_stored(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"])], raw=RAW, size=None)
    [info] = maildrop.snapshot(users["a"], 10)
    assert info.size == len(RETR)
    assert mail.scalar("SELECT size FROM emails WHERE id = %s", (email_id,)) == len(RETR)
    # A stored size is trusted: the next login does not recompute it.
    mail.execute("UPDATE emails SET size = 12345 WHERE id = %s", (email_id,))
    assert maildrop.snapshot(users["a"], 10)[0].size == 12345


def test_stored_size_of_rendered_message_matches_its_bytes(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"])], subject="Grüße", text_body="hallo\n",
                          attachments=[Attachment(bytes(range(256)) * 100, "b.bin")])
    [info] = maildrop.snapshot(users["a"], 10)
    assert info.size == len(b"".join(maildrop.open_message(users["a"], email_id)))
    assert mail.scalar("SELECT size FROM emails WHERE id = %s", (email_id,)) == info.size


def test_other_users_mail_is_gone_for_every_operation(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"]), (None, "c@example.com", "cc")], raw=RAW)
    with pytest.raises(MessageGone):
        maildrop.retr(users["c"], email_id)
    with pytest.raises(MessageGone):
        next(maildrop.open_top(users["c"], email_id, 0))
    maildrop.mark_read(users["c"], email_id)
    maildrop.delete(users["c"], [email_id])
    assert mail.scalar("SELECT count(*) FROM email_recipients WHERE email_id = %s",
                       (email_id,)) == 2
    assert mail.scalar("SELECT bool_or(is_read) FROM email_recipients") is False


def test_open_message_checks_access_before_the_first_chunk(
        maildrop: DrivenMaildrop, users: dict[str, str]) -> None:
    for bad in (str(uuid.uuid4()), "junk", ""):
        chunks = maildrop.open_message(users["a"], bad)  # a stream: nothing happens yet
        with pytest.raises(MessageGone):
            next(chunks)


def test_message_deleted_while_streaming_stops_the_stream(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"])], raw=b"Subject: big\n\n" + b"x" * 600_000)
    chunks = maildrop.open_message(users["a"], email_id)
    next(chunks)
    maildrop.delete(users["a"], [email_id])
    with pytest.raises(MessageGone):
        list(chunks)


def test_mark_read_marks_only_the_users_rows(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"]), _to(users["b"], "b")], raw=RAW)
    other = mail.email([_to(users["a"])], raw=RAW)
    maildrop.mark_read(users["a"], email_id, other, "junk")
    read = mail.scalar("SELECT array_agg(user_id::text || ':' || (email_id = %s)::text)"
                       " FROM email_recipients WHERE is_read", (email_id,))
    assert sorted(read) == sorted([f"{users['a']}:true", f"{users['a']}:false"])


def test_one_update_deletes_and_marks_read(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    doomed = mail.email([_to(users["a"]), _to(users["b"], "b")], raw=RAW)
    kept = mail.email([_to(users["a"])], raw=RAW)
    maildrop.update(users["a"], delete=[doomed], mark_read=[doomed, kept])
    assert [m.email_id for m in maildrop.snapshot(users["a"], 10)] == [kept]
    read = mail.scalar("SELECT array_agg(email_id::text) FROM email_recipients WHERE is_read")
    assert read == [kept]  # b's row of the deleted email stays unread


def test_top_does_not_mark_read(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"])], raw=RAW)
    assert b"".join(maildrop.open_top(users["a"], email_id, 0)) == b"Subject: hello\r\n\r\n"
    assert mail.scalar("SELECT bool_or(is_read) FROM email_recipients") is False


def _refuse(mail: MailWriter, event: str, email_id: str) -> None:
    """Make every ``event`` ("UPDATE" or "DELETE") of one email row fail."""
    mail.execute(f"""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
        CREATE TRIGGER refuse BEFORE {event} ON emails FOR EACH ROW
        WHEN (OLD.id = '{email_id}') EXECUTE FUNCTION refuse();
    """)


def _exists(mail: MailWriter, email_id: str) -> bool:
    return mail.scalar("SELECT count(*) FROM emails WHERE id = %s", (email_id,)) == 1


def test_deletion_is_per_user_and_the_last_one_removes_the_email(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"]), _to(users["b"], "b", "cc"),
                           (None, "outsider@example.net", "to")],
                          raw=RAW, attachments=[Attachment(b"data", "f.txt")])
    maildrop.delete(users["a"], [email_id])
    assert maildrop.snapshot(users["a"], 10) == []
    assert [m.email_id for m in maildrop.snapshot(users["b"], 10)] == [email_id]
    assert b"".join(maildrop.open_message(users["b"], email_id)) == RETR
    maildrop.delete(users["b"], [email_id])
    # The unlinked outsider row does not keep the email alive; everything cascades.
    assert not _exists(mail, email_id)
    assert mail.scalar("SELECT count(*) FROM email_attachments") == 0
    assert mail.scalar("SELECT count(*) FROM email_recipients") == 0


def test_deleting_several_is_all_or_nothing(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    ids = [mail.email([_to(users["a"])], raw=RAW) for _ in range(3)]
    _refuse(mail, "DELETE", ids[2])
    with pytest.raises(StorePermanentError, match="refused"):
        maildrop.delete(users["a"], ids)
    assert len(maildrop.snapshot(users["a"], 10)) == 3


def test_delete_ignores_unknown_and_malformed_ids(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"])], raw=RAW)
    maildrop.delete(users["a"], ["junk", str(uuid.uuid4()), email_id, email_id])
    assert not _exists(mail, email_id)


def test_user_cannot_delete_an_unreferenced_email_by_id(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    orphan = mail.email([(None, "nobody@example.com", "to")], raw=RAW)
    maildrop.delete(users["c"], [orphan])
    assert _exists(mail, orphan)


def test_deleting_a_to_recipient_keeps_a_rendered_email_byte_identical(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    email_id = mail.email([_to(users["a"]), _to(users["b"], "b"), _to(users["c"], "c", "bcc")],
                          text_body="hi")
    [before] = maildrop.snapshot(users["b"], 10)
    rendered = b"".join(maildrop.open_message(users["b"], email_id))
    maildrop.delete(users["a"], [email_id])
    maildrop.delete(users["c"], [email_id])
    assert maildrop.snapshot(users["a"], 10) == []
    assert maildrop.snapshot(users["c"], 10) == []
    assert maildrop.snapshot(users["b"], 10) == [before]
    assert b"".join(maildrop.open_message(users["b"], email_id)) == rendered
    assert len(rendered) == before.size
    assert b"a@example.com" in rendered
    # The deleting users' rows are no longer theirs: the To row stays unlinked, the Bcc row goes.
    rows = mail.scalar("SELECT array_agg(kind || ':' || coalesce(user_id::text, '-')"
                       " ORDER BY kind, address) FROM email_recipients")
    assert rows == ["to:-", f"to:{users['b']}"]


def test_concurrent_deletion_by_two_users_leaves_no_orphan(
        dsn: str, mail: MailWriter, users: dict[str, str]) -> None:
    shared = [mail.email([_to(users["a"]), _to(users["b"], "b")], raw=RAW,
                         attachments=[Attachment(b"x")]) for _ in range(10)]
    # Widen the race: each unlinking of a recipient row pauses, so both transactions are past
    # their own row's unlinking before either checks whether the email is still referenced.
    mail.execute("""
        CREATE FUNCTION pause() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.05); RETURN OLD; END $$;
        CREATE TRIGGER pause AFTER DELETE OR UPDATE ON email_recipients FOR EACH ROW
        EXECUTE FUNCTION pause();
    """)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def delete_all(user: str) -> None:
        db = Database(DbSettings(dsn))
        driver = BlockingDriver(db)
        try:
            barrier.wait()
            for email_id in shared:  # one transaction per email: maximal interleaving
                DrivenMaildrop(PgMaildrop(db), driver).delete(users[user], [email_id])
        except BaseException as exc:
            errors.append(exc)
        finally:
            driver.close()
            db.close()

    threads = [threading.Thread(target=delete_all, args=(u,)) for u in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert mail.scalar("SELECT count(*) FROM emails") == 0
    assert mail.scalar("SELECT count(*) FROM email_attachments") == 0


def _toast_blocks_touched(mail: MailWriter, table: str) -> int:
    """Blocks of ``table``'s TOAST relation (where large values live) read or found in cache.

    ``mail`` shares the maildrop's connection, whose statistics reach the shared counters at
    most once a second; forcing them out at the end of a transaction makes the count exact.
    """
    mail.scalar("SELECT pg_stat_force_next_flush()")
    blocks = mail.scalar(
        "SELECT coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0)"
        " FROM pg_statio_user_tables WHERE relname = %s", (table,))
    assert isinstance(blocks, int)
    return blocks


def test_sizes_of_rendered_rows_need_no_attachment_content(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    attachment = 2_000_000
    # A vacuum of the freshly written values would read them too, and count.
    mail.execute("ALTER TABLE email_attachments"
                 " SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
    mail.execute("""
        WITH new AS (
            INSERT INTO emails (subject, text_body, received_at)
            SELECT 'n' || g, 'hello ' || g, now() + g * interval '1 second'
            FROM generate_series(1, 200) g RETURNING id
        ), recipient AS (
            INSERT INTO email_recipients (email_id, user_id, address, kind)
            SELECT id, %s, 'a@example.com', 'to' FROM new
        )
        INSERT INTO email_attachments (email_id, file_name, content, size)
        SELECT id, 'big.bin', decode(repeat(md5(id::text), %s), 'hex'), %s FROM new
    """, (users["a"], attachment // 16, attachment))
    touched = _toast_blocks_touched(mail, "email_attachments")
    started = time.monotonic()
    infos = maildrop.snapshot(users["a"], 1000)
    elapsed = time.monotonic() - started
    assert _toast_blocks_touched(mail, "email_attachments") == touched
    assert elapsed < 5
    assert len(infos) == 200
    assert mail.scalar("SELECT count(*) FROM emails WHERE size IS NULL") == 0
    for info in (infos[0], infos[-1]):
        assert info.size == len(maildrop.retr(users["a"], info.email_id))
        # The check can fail: streaming a message on this connection does read its attachment.
        stream = maildrop.inner.open_message(users["a"], info.email_id)
        assert len(b"".join(drain(stream, maildrop.inner.db.complete))) == info.size
    assert _toast_blocks_touched(mail, "email_attachments") > touched


def test_sizes_computed_before_an_interruption_are_kept(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    ids = [mail.email([_to(users["a"])], raw=RAW) for _ in range(SIZE_BATCH + 8)]
    _refuse(mail, "UPDATE", ids[SIZE_BATCH + 3])
    with pytest.raises(StorePermanentError, match="refused"):
        maildrop.snapshot(users["a"], 100)
    assert mail.scalar("SELECT count(*) FROM emails WHERE size IS NOT NULL") == SIZE_BATCH
    mail.execute("DROP TRIGGER refuse ON emails")
    assert [m.size for m in maildrop.snapshot(users["a"], 100)] == [len(RETR)] * len(ids)


def test_each_streamed_size_is_saved_at_once(
        maildrop: DrivenMaildrop, mail: MailWriter, users: dict[str, str]) -> None:
    big = b"Subject: big\n\n" + b"x\n" * RAW_SLICE
    first = mail.email([_to(users["a"])], raw=big)
    second = mail.email([_to(users["a"])], raw=big)
    _refuse(mail, "UPDATE", second)
    with pytest.raises(StorePermanentError, match="refused"):
        maildrop.snapshot(users["a"], 100)
    size = len(big) + big.count(b"\n")  # every LF becomes CRLF
    assert mail.scalar("SELECT size FROM emails WHERE id = %s", (first,)) == size


def test_a_cached_message_costs_one_access_check_and_is_never_shown_to_others(
        db: Database, mail: MailWriter, users: dict[str, str]) -> None:
    driver = LoopDriver(db.settings)
    cache = MessageCache(MB)
    maildrop = DrivenMaildrop(PgMaildrop(db, cache), driver)
    email_id = mail.email([_to(users["a"]), _to(users["b"], "b")], raw=RAW)
    try:
        assert maildrop.retr(users["a"], email_id) == RETR
        assert (len(cache), cache.hits) == (1, 0)
        before = driver.jobs
        assert maildrop.retr(users["b"], email_id) == RETR  # another user: the same octets
        assert b"".join(maildrop.open_top(users["b"], email_id, 0)) == b"Subject: hello\r\n\r\n"
        assert (cache.hits, driver.jobs - before) == (2, 2)  # one access check each
        with pytest.raises(MessageGone):
            maildrop.retr(users["c"], email_id)  # cached, but not c's
        maildrop.delete(users["a"], [email_id])
        with pytest.raises(MessageGone):
            maildrop.retr(users["a"], email_id)  # deleted meanwhile: a plain -ERR as before
        assert maildrop.retr(users["b"], email_id) == RETR
    finally:
        driver.close()


def test_messages_larger_than_a_slice_are_not_cached(
        db: Database, mail: MailWriter, users: dict[str, str]) -> None:
    driver = LoopDriver(db.settings)
    cache = MessageCache(16 * MB)
    maildrop = DrivenMaildrop(PgMaildrop(db, cache), driver)
    big = mail.email([_to(users["a"])], raw=b"Subject: big\n\n" + b"x\n" * RAW_SLICE)
    try:
        assert len(maildrop.retr(users["a"], big)) > RAW_SLICE
        assert len(cache) == 0
    finally:
        driver.close()
