"""Rows written straight into the tables, as other parts of the mail system might write them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extensions

from pop3d.store import Database


@dataclass
class Attachment:
    content: bytes
    file_name: str | None = None
    content_type: str | None = "application/octet-stream"


class MailWriter:
    """Writes rows the way other parts of the mail system might: raw or size may be NULL."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def email(self, recipients: Sequence[tuple[str | None, str, str]], *,
              raw: bytes | None = None, size: int | None = None,
              received_at: datetime | None = None, attachments: Sequence[Attachment] = (),
              **columns: str | None) -> str:
        """Insert an email; recipients are (user_id or None, address, kind)."""
        if received_at is None:
            self.clock += timedelta(minutes=1)
            received_at = self.clock
        names = ["raw", "size", "received_at", *columns]
        values = [None if raw is None else psycopg2.Binary(raw), size, received_at,
                  *columns.values()]

        def work(cur: psycopg2.extensions.cursor) -> str:
            cur.execute(f"INSERT INTO emails ({', '.join(names)}) VALUES"
                        f" ({', '.join(['%s'] * len(values))}) RETURNING id::text", values)
            row = cur.fetchone()
            assert row is not None
            for user_id, address, kind in recipients:
                cur.execute("INSERT INTO email_recipients (email_id, user_id, address, kind)"
                            " VALUES (%s, %s, %s, %s)", (row[0], user_id, address, kind))
            for position, att in enumerate(attachments):
                cur.execute("INSERT INTO email_attachments (email_id, position, file_name,"
                            " content_type, content, size) VALUES (%s, %s, %s, %s, %s, %s)",
                            (row[0], position, att.file_name, att.content_type,
                             psycopg2.Binary(att.content), len(att.content)))
            return str(row[0])

        return self.db.run(work)

    def scalar(self, sql: str, params: Sequence[object] = ()) -> object:
        def work(cur: psycopg2.extensions.cursor) -> object:
            cur.execute(sql, params)
            row = cur.fetchone()
            return None if row is None else row[0]

        return self.db.run(work)

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.db.run(lambda cur: cur.execute(sql, params))
