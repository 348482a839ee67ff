"""How should a worker wait for PostgreSQL without blocking its loop?  Measures three ways of
running the query RETR needs (one message's bytes by id, with the recipient check) for a number
of concurrent sessions, as a selectors loop would:

- ``blocking``: the loop runs each query itself on one connection (what the worker used to do);
- ``pool``: queries run on a thread pool, each thread with its own connection, and the loop
  learns of each result through a wakeup socket;
- ``async``: psycopg2 asynchronous connections whose sockets sit in the loop's selector.

For each: queries per second, and CPU microseconds per query of this process and of the whole
machine (the PostgreSQL backends included), from /proc/stat.  Usage (after ``make services``):

    .venv/bin/python scripts/bench_db_dispatch.py [--sessions 8] [--connections 4] [--size 36000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parent.parent
QUERY = (
    "SELECT e.raw FROM emails e WHERE e.id = %s AND EXISTS"
    " (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.user_id = %s)"
)


def dsn() -> str:
    for line in (ROOT / "var" / "services.env").read_text().splitlines():
        if line.startswith("POP3D_TEST_DSN="):
            return line.split("=", 1)[1].strip('"')
    raise SystemExit("run `make services` first")


def machine_busy() -> float:
    """Seconds of CPU time all cores have spent not idle, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def set_up(database: str, messages: int, size: int) -> tuple[str, list[str]]:
    """A scratch database with one user and ``messages`` emails of ``size`` octets."""
    admin = psycopg2.connect(psycopg2.extensions.make_dsn(dsn(), dbname="postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{database}"')
        cur.execute(f'CREATE DATABASE "{database}"')
    admin.close()
    target = psycopg2.extensions.make_dsn(dsn(), dbname=database)
    conn = psycopg2.connect(target)
    user = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(messages)]
    body = (b"x" * 78 + b"\r\n") * (size // 80)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE emails (id uuid PRIMARY KEY, raw bytea)")
        cur.execute("CREATE TABLE email_recipients (email_id uuid, user_id uuid)")
        cur.execute("CREATE INDEX ON email_recipients (email_id, user_id)")
        for email_id in ids:
            cur.execute("INSERT INTO emails VALUES (%s, %s)", (email_id, body))
            cur.execute("INSERT INTO email_recipients VALUES (%s, %s)", (email_id, user))
    conn.close()
    return target, [user, *ids]


def tear_down(database: str) -> None:
    admin = psycopg2.connect(psycopg2.extensions.make_dsn(dsn(), dbname="postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    admin.close()


def connect(target: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(target)
    conn.autocommit = True
    return conn


def fetch(conn: psycopg2.extensions.connection, user: str, email: str) -> int:
    with conn.cursor() as cur:
        cur.execute(QUERY, (email, user))
        row = cur.fetchone()
    return len(bytes(row[0])) if row else 0


def run_blocking(target: str, ids: list[str], args: argparse.Namespace) -> int:
    conn = connect(target)
    user, emails = ids[0], ids[1:]
    done, deadline = 0, time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        fetch(conn, user, emails[done % len(emails)])
        done += 1
    conn.close()
    return done


def run_pool(target: str, ids: list[str], args: argparse.Namespace) -> int:
    user, emails = ids[0], ids[1:]
    local: dict[int, psycopg2.extensions.connection] = {}

    def job(email: str) -> int:
        conn = local.get(threading.get_ident())
        if conn is None:
            conn = local[threading.get_ident()] = connect(target)
        return fetch(conn, user, email)

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    finished: deque[int] = deque()
    pool = ThreadPoolExecutor(args.connections)
    selector = selectors.DefaultSelector()
    selector.register(reader, selectors.EVENT_READ)
    sent = done = 0

    def submit() -> None:
        nonlocal sent
        future = pool.submit(job, emails[sent % len(emails)])
        sent += 1
        future.add_done_callback(lambda f: (finished.append(f.result()), writer.send(b"\0")))

    for _ in range(args.sessions):
        submit()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        selector.select(1.0)
        with contextlib.suppress(BlockingIOError):
            reader.recv(4096)
        while finished:
            finished.popleft()
            done += 1
            submit()
    pool.shutdown(wait=True)
    for conn in local.values():
        conn.close()
    return done


def wait_async(conn: psycopg2.extensions.connection) -> None:
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        events = selectors.EVENT_READ if state == psycopg2.extensions.POLL_READ else \
            selectors.EVENT_WRITE
        with selectors.DefaultSelector() as sel:
            sel.register(conn.fileno(), events)
            sel.select()


def run_async(target: str, ids: list[str], args: argparse.Namespace) -> int:
    user, emails = ids[0], ids[1:]
    conns = []
    for _ in range(args.connections):
        conn = psycopg2.connect(target, async_=True)
        wait_async(conn)
        conns.append(conn)
    selector = selectors.DefaultSelector()
    idle = deque(conns)
    waiting = args.sessions  # sessions waiting for a connection
    sent = done = 0
    cursors: dict[int, psycopg2.extensions.cursor] = {}

    def start(conn: psycopg2.extensions.connection) -> None:
        nonlocal sent
        cur = conn.cursor()
        cur.execute(QUERY, (emails[sent % len(emails)], user))
        sent += 1
        cursors[conn.fileno()] = cur
        selector.register(conn.fileno(), selectors.EVENT_READ, conn)

    while waiting and idle:
        start(idle.popleft())
        waiting -= 1
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            conn = key.data
            if conn.poll() != psycopg2.extensions.POLL_OK:
                continue
            selector.unregister(key.fd)
            cur = cursors.pop(key.fd)
            row = cur.fetchone()
            assert row is not None
            assert len(bytes(row[0])) > 0
            cur.close()
            done += 1
            start(conn)  # the session that finished asks again; the connection is free
    for conn in conns:
        conn.close()
    return done


RUNS: dict[str, Callable[[str, list[str], argparse.Namespace], int]] = {
    "blocking": run_blocking, "pool": run_pool, "async": run_async,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--size", type=int, default=36000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    database = f"pop3d_bench_{os.getpid()}"
    target, ids = set_up(database, 20, args.size)
    print(f"{args.sessions} sessions, {args.connections} connections, {args.size} octets a query,"
          f" {os.cpu_count()} cores")
    try:
        for _ in range(args.rounds):
            for name, run in RUNS.items():
                mine, busy, started = own_cpu(), machine_busy(), time.monotonic()
                count = run(target, ids, args)
                elapsed = time.monotonic() - started
                print(f"{name:9} {count / elapsed:8.0f} queries/s   "
                      f"{(own_cpu() - mine) / count * 1e6:6.1f} us CPU here   "
                      f"{(machine_busy() - busy) / count * 1e6:6.1f} us CPU machine")
                sys.stdout.flush()
    finally:
        tear_down(database)


if __name__ == "__main__":
    main()
