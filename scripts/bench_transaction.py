#!/usr/bin/env python3
"""What the per-transaction preamble (pop3d.store.db.transaction_preamble) costs.

    .venv/bin/python scripts/bench_transaction.py [--dsn DSN] [--count 3000] [--repeat 7]

Times the shortest statement pop3d runs (a one-row SELECT) on one psycopg2 connection, alone
and with the preamble in front of it in the same query string (as both drivers send it), in
autocommit mode (a single statement: the asynchronous driver's jobs, the login lookups) and
in a transaction psycopg2 begins and commits; then ``Database.run`` itself both ways.  --dsn
defaults to the test database of scripts/services.sh; point it at a PgBouncer to measure
through the pooler.  Prints microseconds per statement, best and median of --repeat runs.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psycopg2
import psycopg2.extensions

from pop3d.store import Database, DbSettings
from pop3d.store.db import Cursor, transaction_preamble

SERVICES_ENV = Path(__file__).resolve().parent.parent / "var" / "services.env"
SELECT = "SELECT 1"


def default_dsn() -> str:
    for line in SERVICES_ENV.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "POP3D_TEST_DSN":
            return shlex.split(value)[0]
    raise SystemExit("no POP3D_TEST_DSN in var/services.env: run scripts/services.sh start")


def select_one(cur: Cursor) -> object:
    cur.execute(SELECT)
    return cur.fetchone()


def raw_statement(conn: psycopg2.extensions.connection, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)
        cur.fetchone()
    if not conn.autocommit:
        conn.commit()


def per_statement(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        run()
    return (time.perf_counter() - started) / count * 1e6


def report(name: str, run: Callable[[], object], count: int, repeat: int) -> None:
    run()  # connect outside the timing
    runs = [per_statement(run, count) for _ in range(repeat)]
    print(f"{name:34} best {min(runs):7.1f} us  median {statistics.median(runs):7.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    settings = DbSettings(args.dsn or default_dsn(), application_name="pop3d-bench")
    prefixed = f"{transaction_preamble(settings)}; {SELECT}"
    conn = psycopg2.connect(settings.dsn)
    for autocommit in (True, False):
        conn.autocommit = autocommit
        mode = "autocommit" if autocommit else "transaction"
        for name, sql in (("", SELECT), (" + preamble", prefixed)):
            report(f"{mode}{name}", partial(raw_statement, conn, sql), args.count, args.repeat)
    conn.close()
    db = Database(settings)
    for autocommit in (True, False):
        report(f"Database.run(autocommit={autocommit})",
               partial(db.run, select_one, autocommit=autocommit), args.count, args.repeat)
    db.close()


if __name__ == "__main__":
    main()
