#!/usr/bin/env python3
"""What the per-transaction preamble (pop3d.store.db.transaction_preamble) costs.

    .venv/bin/python scripts/bench_transaction.py [--dsn DSN] [--count 3000] [--repeat 5]

Times the shortest transaction pop3d runs (a one-row SELECT, committed) on a psycopg2
connection the way ``Database.run`` drives it, without the preamble (what a transaction cost
when the settings were made once per connection) and with it; then on an autocommit
connection sending ``BEGIN; <preamble>`` as one query (the asynchronous driver's way); then
``Database.run`` itself.  --dsn defaults to the test database of scripts/services.sh; point it
at a PgBouncer to measure through the pooler.  Prints microseconds per transaction, best and
median of --repeat runs.
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


def default_dsn() -> str:
    for line in SERVICES_ENV.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "POP3D_TEST_DSN":
            return shlex.split(value)[0]
    raise SystemExit("no POP3D_TEST_DSN in var/services.env: run scripts/services.sh start")


def select_one(cur: Cursor) -> object:
    cur.execute("SELECT 1")
    return cur.fetchone()


def raw_transaction(conn: psycopg2.extensions.connection, preamble: str) -> None:
    with conn.cursor() as cur:
        if preamble:
            cur.execute(preamble)
        select_one(cur)
    conn.commit()


def explicit_transaction(conn: psycopg2.extensions.connection, preamble: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"BEGIN; {preamble}")
        select_one(cur)
        cur.execute("COMMIT")


def per_transaction(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        run()
    return (time.perf_counter() - started) / count * 1e6


def report(name: str, run: Callable[[], object], count: int, repeat: int) -> None:
    run()  # connect outside the timing
    runs = [per_transaction(run, count) for _ in range(repeat)]
    print(f"{name:20} best {min(runs):7.1f} us  median {statistics.median(runs):7.1f} us"
          " per transaction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = DbSettings(args.dsn or default_dsn(), application_name="pop3d-bench")
    conn = psycopg2.connect(settings.dsn)
    preamble = transaction_preamble(settings)
    for name, text in (("without preamble", ""), ("with preamble", preamble)):
        report(name, partial(raw_transaction, conn, text), args.count, args.repeat)
    conn.autocommit = True
    report("BEGIN; preamble", partial(explicit_transaction, conn, preamble), args.count,
           args.repeat)
    conn.close()
    db = Database(settings)
    report("Database.run", partial(db.run, select_one), args.count, args.repeat)
    db.close()


if __name__ == "__main__":
    main()
