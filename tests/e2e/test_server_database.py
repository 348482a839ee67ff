"""The database vanishing under a running worker: the sessions that need it get [SYS/TEMP], the
others go on, and the worker survives.  Uses a database of its own, dropped mid-test."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions
import pytest

from .server_fixtures import Client, message, migrated_store, sized_message

pytestmark = pytest.mark.e2e


def drop_database(dsn: str) -> None:
    """DROP ... WITH (FORCE): the worker's connections are terminated too."""
    name = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    admin = psycopg2.connect(psycopg2.extensions.make_dsn(dsn, dbname="postgres"))
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.close()


def test_sessions_survive_the_database_going_away(start_server, make_database):
    store = migrated_store(make_database)
    reader = store.account([message("one", b"body\r\n"), message("two")])
    bystander = store.account([message("bystander")])
    latecomer = store.account([message("late")])
    streamer = store.account([sized_message(8_000_000)])
    store.close()
    master = start_server({"server": {"workers": 1}}, dsn=store.dsn)
    (worker,) = master.worker_pids()

    with Client.greeted(master.port) as a, Client.greeted(master.port) as b, \
            Client.greeted(master.port, receive_buffer=65536) as d:
        a.login(reader)
        b.login(bystander)
        d.login(streamer)
        retr = d.command("RETR 1")
        size = int(retr.split()[1])
        assert size > 7_000_000, "a body far larger than what the sockets can buffer"
        assert a.command("RETR 1").startswith(b"+OK ")
        assert a.multiline()[-1] == b"body"
        stat = b.command("STAT")
        assert stat.startswith(b"+OK 1 ")

        drop_database(store.dsn)

        assert a.command("RETR 2").startswith(b"-ERR [SYS/TEMP] ")
        assert a.command("TOP 1 0").startswith(b"-ERR [SYS/TEMP] ")
        assert b.command("STAT") == stat
        assert b.command("NOOP") == b"+OK\r\n"
        assert b.command("UIDL 1").startswith(b"+OK 1 ")
        body = d.read_exactly(size + 3)
        assert len(body) < size, "the body cannot be complete: the database is gone"
        assert not body.endswith(b"\r\n.\r\n")
        assert d.closed_by_server()

        with Client.greeted(master.port) as c:
            assert c.command(f"USER {latecomer.address}") == b"+OK Send PASS\r\n"
            assert c.command(f"PASS {latecomer.key}").startswith(b"-ERR [SYS/TEMP] ")
            assert c.auth_plain(latecomer).startswith(b"-ERR [SYS/TEMP] ")
            assert c.command("QUIT").startswith(b"+OK")

        assert a.command("DELE 1") == b"+OK Message 1 deleted\r\n"
        assert a.command("QUIT").startswith(b"-ERR [SYS/TEMP] ")
        assert a.closed_by_server()
        assert b.command("NOOP") == b"+OK\r\n"
        assert b.command("QUIT") == \
            b"+OK pop3d.test POP3 server signing off (0 messages deleted)\r\n"

    assert master.process.poll() is None
    assert master.worker_pids() == {worker}
    log = master.log_text()
    assert "message body failed mid-stream" in log
    assert "Traceback" not in log
