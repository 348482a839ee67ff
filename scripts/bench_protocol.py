#!/usr/bin/env python3
"""Benchmark the protocol engine: commands/s through Connection + Session, and RETR throughput.

    .venv/bin/python scripts/bench_protocol.py [--repeat 7] [--commands 200000] [--mib 64]

1. Simple commands: a logged-in session over in-memory ports receives pipelined
   NOOP / STAT / LIST n / UIDL n in 64 KiB reads (what a worker's recv hands over) and is
   pumped until it has answered everything; the time covers framing, parsing, the state table,
   the session, metrics calls and the reply bytes.
2. RETR: a realistic corpus (text mail with lines starting with ".", base64 attachments) in
   64 KiB chunks; first the writer alone (dot-stuffing + terminator), then a whole RETR
   through Session.next_effect() with the chunks coming from the Maildrop port.

Each figure is measured --repeat times with time.perf_counter; the best and the median print.
The first line times a fixed pure-Python loop: when its median is far below its best, the
machine was busy and the medians below understate the code.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

from pop3d.adapters.statsd import NullMetrics
from pop3d.ports import MessageInfo, Principal
from pop3d.protocol.writer import dot_stuff
from pop3d.session import (
    Authenticate,
    LoginGrant,
    Peer,
    Send,
    Services,
    Session,
    SessionSettings,
)

CHUNK = 64 * 1024
READ_SIZE = 64 * 1024  # one recv of the worker (pop3d/worker/channel.py)
USER = "u-bench"


class MemoryRegistry:
    def acquire(self, user_id: str, session_id: str, limit: int) -> bool:
        return True

    def release(self, user_id: str, session_id: str) -> None:
        pass


class MemoryMaildrop:
    """Serves one corpus as message 1 (and small messages after it) in 64 KiB chunks."""

    def __init__(self, corpus: bytes, count: int = 50) -> None:
        self.chunks = [corpus[i : i + CHUNK] for i in range(0, len(corpus), CHUNK)]
        self.infos = [MessageInfo("big", "uid-big", len(corpus))]
        self.infos += [MessageInfo(f"e{n}", f"uid-{n:08d}", 2000 + n) for n in range(count)]

    def snapshot(self, user_id: str, limit: int) -> list[MessageInfo]:
        return self.infos[:limit]

    def open_message(self, user_id: str, email_id: str) -> Iterator[bytes]:
        return iter(self.chunks)

    def open_top(self, user_id: str, email_id: str, lines: int) -> Iterator[bytes]:
        return iter(self.chunks[:1])

    def mark_read(self, user_id: str, email_id: str) -> None:
        pass

    def delete(self, user_id: str, email_ids: Sequence[str]) -> None:
        pass


def logged_in_session(maildrop: MemoryMaildrop) -> Session:
    services = Services(maildrop, MemoryRegistry(), NullMetrics())
    peer = Peer("192.0.2.1", tls=True)
    session = Session(SessionSettings(server_name="bench.example"), services, peer, "bench:1")
    session.greeting()
    session.feed(b"USER bench@example.com\r\nPASS key\r\n")
    while (effect := session.next_effect()) is not None:
        if isinstance(effect, Authenticate):
            principal = Principal(USER, "k", "bench@example.com")
            session.login_done(LoginGrant(principal, maildrop.snapshot(USER, 10000)))
    assert session.authenticated
    return session


def command_stream(count: int) -> bytes:
    verbs = [b"NOOP\r\n", b"STAT\r\n", b"LIST %d\r\n", b"UIDL %d\r\n"]
    lines = [verbs[n % 4] % (n % 40 + 2) if b"%" in verbs[n % 4] else verbs[n % 4]
             for n in range(count)]  # fmt: skip
    return b"".join(lines)


def run_commands(maildrop: MemoryMaildrop, stream: bytes) -> float:
    session = logged_in_session(maildrop)
    started = time.perf_counter()
    sent = 0
    for start in range(0, len(stream), READ_SIZE):
        session.feed(stream[start : start + READ_SIZE])
        while (effect := session.next_effect()) is not None:
            assert isinstance(effect, Send)
            assert isinstance(effect.data, bytes)
            sent += len(effect.data)
    elapsed = time.perf_counter() - started
    assert sent > 0
    return elapsed


def make_corpus(mib: int, seed: int = 1939) -> bytes:
    """Mail-like bytes: headers, prose with some lines starting with ".", base64 parts."""
    rng = random.Random(seed)
    words = b"the of and to in is you that it he was for on are as with his they at be".split()
    parts: list[bytes] = []
    size = 0
    while size < mib * 1024 * 1024:
        lines = [b"Subject: report %d" % rng.randrange(10**6), b"From: a@example.com", b""]
        for _ in range(rng.randrange(20, 80)):
            line = b" ".join(rng.choice(words) for _ in range(rng.randrange(3, 14)))
            lines.append(b"." + line if rng.random() < 0.02 else line)
        encoded = base64.encodebytes(rng.randbytes(rng.randrange(4000, 60000)))
        part = b"\r\n".join(lines) + b"\r\n\r\n" + encoded.replace(b"\n", b"\r\n")
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def run_writer(chunks: list[bytes]) -> float:
    started = time.perf_counter()
    out = 0
    for piece in dot_stuff(chunks):
        out += len(piece)
    elapsed = time.perf_counter() - started
    assert out >= sum(map(len, chunks))
    return elapsed


def run_retr(maildrop: MemoryMaildrop) -> float:
    session = logged_in_session(maildrop)
    started = time.perf_counter()
    session.feed(b"RETR 1\r\n")
    effect = session.next_effect()
    assert isinstance(effect, Send)
    assert not isinstance(effect.data, bytes)
    out = sum(len(piece) for piece in effect.data)
    elapsed = time.perf_counter() - started
    assert out > maildrop.infos[0].size
    return elapsed


def run_reference() -> float:
    """A fixed pure-Python loop: its best/median spread shows how noisy the machine is."""
    started = time.perf_counter()
    total = 0
    for number in range(1_000_000):
        total += number
    elapsed = time.perf_counter() - started
    assert total > 0
    return elapsed


def measure(label: str, repeat: int, run: Callable[[], float], amount: float, unit: str) -> None:
    rates = sorted(amount / run() for _ in range(repeat))
    best, median = rates[-1], statistics.median(rates)
    print(f"{label:<40} best {best:>10,.0f} {unit:<6} median {median:>10,.0f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()

    corpus = make_corpus(args.mib)
    maildrop = MemoryMaildrop(corpus)
    chunks = maildrop.chunks
    stream = command_stream(args.commands)
    dots = corpus.count(b"\n.")
    print(f"corpus: {len(corpus):,} octets in {len(chunks)} chunks, {dots:,} lines start with '.'")
    print(f"commands: {args.commands:,} pipelined NOOP/STAT/LIST n/UIDL n, {len(stream):,} octets")
    measure("reference: 1M-step Python loop", args.repeat, run_reference, 1.0, "runs/s")
    measure("simple commands (Connection + Session)", args.repeat,
            lambda: run_commands(maildrop, stream), args.commands, "cmd/s")  # fmt: skip
    mb = len(corpus) / 1e6
    measure("writer: dot_stuff, 64 KiB chunks", args.repeat,
            lambda: run_writer(chunks), mb, "MB/s")  # fmt: skip
    measure("RETR through Session.next_effect()", args.repeat,
            lambda: run_retr(maildrop), mb, "MB/s")  # fmt: skip


if __name__ == "__main__":
    main()
