"""Delivery: raw bytes and parsed columns stored together, for resolved recipients only."""

from __future__ import annotations

import pytest
from store_rows import MailWriter

from pop3d.errors import BadMessage, NoSuchUser, StoreUnavailable
from pop3d.store import Accounts, Database, DbSettings, PgMaildrop, deliver
from pop3d.store.db import Cursor
from pop3d.store.jobs import drain

MESSAGE = (
    b"From: =?utf-8?q?Zo=C3=AB?= <zoe@example.org>\n"
    b"To: A <a@example.com>, other@example.net\n"
    b"Cc: b@example.com\n"
    b"Bcc: c@example.com\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"Message-ID: <m2@example.org>\n"
    b"In-Reply-To: <m1@example.org>\n"
    b"References: <m0@example.org>\n <m1@example.org>\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="B"\n'
    b"\n"
    b"--B\n"
    b'Content-Type: multipart/alternative; boundary="A"\n'
    b"\n"
    b"--A\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n"
    b"\n"
    b"Hall=C3=B6\n"
    b"--A\n"
    b"Content-Type: text/html; charset=utf-8\n"
    b"\n"
    b"<p>Hall\xc3\xb6</p>\n"
    b"--A--\n"
    b"--B\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.bin\n"
    b"Content-Transfer-Encoding: base64\n"
    b"\n"
    b"AAEC/w==\n"
    b"--B--\n"
)


@pytest.fixture
def people(accounts: Accounts) -> dict[str, str]:
    ids = {name: accounts.add_user(f"{name}@example.com") for name in ("a", "b", "c", "d")}
    accounts.add_alias("d@example.com", "d.alias@example.com")
    return ids


def _row(mail: MailWriter, sql: str, params: tuple[object, ...]) -> tuple[object, ...]:
    def work(cur: Cursor) -> tuple[object, ...]:
        cur.execute(sql, params)
        return tuple(cur.fetchone())

    return mail.db.run(work)


def test_stores_raw_and_parsed_columns(db: Database, mail: MailWriter,
                                       people: dict[str, str]) -> None:
    email_id = deliver(db, MESSAGE, ["a@example.com", "b@example.com", "c@example.com"])
    row = _row(mail, "SELECT raw, from_address, from_name, subject, text_body, html_body,"
               " message_id, in_reply_to, references_header FROM emails WHERE id = %s",
               (email_id,))
    assert bytes(row[0]) == MESSAGE
    assert row[1:] == ("zoe@example.org", "Zoë", "Grüße", "Hallö", "<p>Hallö</p>",
                       "<m2@example.org>", "<m1@example.org>",
                       "<m0@example.org> <m1@example.org>")
    attachment = _row(mail, "SELECT file_name, content_type, content, size, position"
                      " FROM email_attachments WHERE email_id = %s", (email_id,))
    assert attachment[0:2] == ("résumé.bin", "application/octet-stream")
    assert bytes(attachment[2]) == b"\x00\x01\x02\xff"
    assert attachment[3:] == (4, 0)


def test_recipient_kinds_follow_the_headers(db: Database, mail: MailWriter,
                                            people: dict[str, str]) -> None:
    email_id = deliver(db, MESSAGE, ["A@Example.com", "b@example.com", "c@example.com"])
    rows = mail.db.run(lambda cur: (cur.execute(
        "SELECT address, kind, display_name, user_id::text FROM email_recipients"
        " WHERE email_id = %s ORDER BY address", (email_id,)), cur.fetchall())[1])
    assert rows == [("A@Example.com", "to", "A", people["a"]),
                    ("b@example.com", "cc", None, people["b"]),
                    ("c@example.com", "bcc", None, people["c"])]


def test_alias_recipients_link_to_their_user(db: Database, mail: MailWriter,
                                             people: dict[str, str]) -> None:
    to_alias = b"To: d.alias@example.com\nSubject: x\n\nbody\n"
    email_id = deliver(db, to_alias, ["d@example.com"])  # the MTA expanded the alias
    assert _row(mail, "SELECT user_id::text, kind FROM email_recipients WHERE email_id = %s",
                (email_id,)) == (people["d"], "to")
    email_id = deliver(db, b"To: d@example.com\n\nbody\n", ["d.alias@example.com"])
    assert _row(mail, "SELECT user_id::text, kind FROM email_recipients WHERE email_id = %s",
                (email_id,)) == (people["d"], "to")


def test_duplicate_envelope_recipients_are_stored_once(
        db: Database, mail: MailWriter, people: dict[str, str]) -> None:
    deliver(db, MESSAGE, ["a@example.com", "A@EXAMPLE.COM"])
    assert mail.scalar("SELECT count(*) FROM email_recipients") == 1


def test_unknown_recipient_stores_nothing_and_is_named(
        db: Database, mail: MailWriter, people: dict[str, str]) -> None:
    with pytest.raises(NoSuchUser, match=r"nobody@example\.com, ghost@example\.com"):
        deliver(db, MESSAGE, ["a@example.com", "nobody@example.com", "ghost@example.com"])
    assert mail.scalar("SELECT count(*) FROM emails") == 0
    assert mail.scalar("SELECT count(*) FROM email_recipients") == 0
    with pytest.raises(NoSuchUser, match="not an address"):
        deliver(db, MESSAGE, ["not an address"])


@pytest.mark.parametrize("raw", [b"", b"\n\n", b"no header here\n\nbody\n",
                                 b"\nSubject: after a blank line\n", b"From x\n"])
def test_bad_data_is_refused(db: Database, mail: MailWriter, people: dict[str, str],
                             raw: bytes) -> None:
    with pytest.raises(BadMessage):
        deliver(db, raw, ["a@example.com"])
    assert mail.scalar("SELECT count(*) FROM emails") == 0


def test_mbox_envelope_line_is_dropped(db: Database, mail: MailWriter,
                                       people: dict[str, str]) -> None:
    email_id = deliver(db, b"From sender@x  Mon Jan  1 00:00:00 2024\nSubject: s\n\nb\n",
                       ["a@example.com"])
    raw = mail.scalar("SELECT raw FROM emails WHERE id = %s", (email_id,))
    assert bytes(raw) == b"Subject: s\n\nb\n"


@pytest.mark.parametrize("message", [
    MESSAGE,
    MESSAGE.replace(b"\n", b"\r\r\n"),  # line ends converted twice
    MESSAGE.replace(b"\n", b"\r"),
    b"To: a@example.com\r\nX: y\rBcc: c@example.com\r\r\n\r\nbody" + b"\r" * 300_000,
])
def test_size_is_what_retr_sends(db: Database, mail: MailWriter, people: dict[str, str],
                                 message: bytes) -> None:
    email_id = deliver(db, message, ["a@example.com"])
    sent = b"".join(drain(PgMaildrop(db).open_message(people["a"], email_id), db.complete))
    assert b"Bcc" not in sent
    assert mail.scalar("SELECT size FROM emails WHERE id = %s", (email_id,)) == len(sent)


def test_malformed_headers_leave_columns_empty_but_store_the_message(
        db: Database, mail: MailWriter, people: dict[str, str]) -> None:
    raw = (b"From: <<<@@@>>>\nTo: ,,,;;;\nSubject: =?bogus?x?zzz?=\n"
           b"Content-Type: multipart/mixed\n\nno boundary at all\x00\n")
    email_id = deliver(db, raw, ["a@example.com"])
    row = _row(mail, "SELECT raw, size FROM emails WHERE id = %s", (email_id,))
    assert bytes(row[0]) == raw
    assert row[1] == len(raw) + raw.count(b"\n")


def test_disabled_user_still_receives(db: Database, accounts: Accounts, mail: MailWriter,
                                      people: dict[str, str]) -> None:
    accounts.disable_user("a@example.com")
    deliver(db, MESSAGE, ["a@example.com"])
    assert mail.scalar("SELECT count(*) FROM emails") == 1


def test_database_down_is_temporary(dsn: str) -> None:
    db = Database(DbSettings(f"{dsn} port=1", connect_timeout=1))
    with pytest.raises(StoreUnavailable):
        deliver(db, MESSAGE, ["a@example.com"])
