"""Random and mutated input at the sockets of a real server: the worker must survive it, stay
within a bounded amount of memory, log no unexpected error, and serve a normal session after.

What is sent, from several concurrent connections, for ``POP3D_FUZZ_SECONDS`` seconds per
target (a few seconds in ``make test``):

* the client side of every transcript in ``tests/transcripts/`` (logging in with a real account
  where they log in), mutated: bytes flipped, inserted and deleted, lines duplicated, dropped
  and swapped, huge lines, NULs and bare CRs, everything cut into random pieces;
* ClientHellos to the implicit-TLS port, real ones mutated and plain garbage;
* PROXY v1 and v2 headers, valid ones mutated, before a mutated session.

A longer run, outside ``make test`` (the seed is printed, so a failure can be replayed)::

    POP3D_FUZZ_SECONDS=300 POP3D_FUZZ_SEED=1234 .venv/bin/pytest -s tests/e2e/test_server_fuzz.py
"""

from __future__ import annotations

import ast
import contextlib
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import MasterHandle
from .server_fixtures import Account, Client, MailStore, message, rss_kib, tls_port

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("POP3D_FUZZ_SECONDS", "5"))
SEED = int(os.environ.get("POP3D_FUZZ_SEED", str(random.randrange(1 << 32))))
CONCURRENCY = 6
LINE_LENGTH = 1024  # the fuzzed servers' limits.line_length: long lines are cheap to reach
GROWTH_BOUND_KIB = 16 * 1024  # after the fuzzing, with every connection closed
TRANSCRIPTS = Path(__file__).resolve().parent.parent / "transcripts"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

Generator = Callable[[random.Random], tuple[int, list[bytes]]]  # (port, pieces to send)


def client_lines(path: Path) -> list[bytes]:
    """The client's side of a transcript: ``C: text`` and ``C= b"literal"`` lines."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("C: "):
            lines.append(line[3:].encode() + b"\r\n")
        elif line.startswith("C= "):
            value = ast.literal_eval(line[3:])
            lines.append(value if isinstance(value, bytes) else value.encode())
    return lines


def scripts(account: Account) -> list[list[bytes]]:
    """Every transcript's client side, logging in as ``account`` where it logs in."""
    found = []
    for path in sorted(TRANSCRIPTS.glob("*.pop3")):
        lines = [line.replace(b"alice@example.com", account.address.encode())
                 .replace(b"PASS secret", b"PASS " + account.key.encode())
                 for line in client_lines(path)]
        found.append(lines)
    return found


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        where = rng.randint(0, len(out))
        choice = rng.randrange(8)
        if choice == 0 and out:
            out[min(where, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            out[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 2:
            del out[where:where + rng.randint(1, 16)]
        elif choice == 3:
            out[where:where] = rng.choice([b"\r", b"\n", b"\0", b"\r\n", b"\xff", b" ", b"."])
        elif choice == 4:
            out[where:where] = bytes([rng.randrange(32, 127)]) * rng.choice(
                [LINE_LENGTH - 1, LINE_LENGTH + 2, 3 * LINE_LENGTH])
        elif choice == 5:
            out = out.swapcase() if rng.random() < 0.5 else out.upper()
        elif choice == 6 and out:
            out[where:where] = out[: rng.randint(1, len(out))]
        else:
            out[where:where] = rng.choice([b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"*\r\n",
                                           b"STLS\r\n", b"RETR 1\r\n", b"TOP 1 99999999\r\n",
                                           b"DELE 1\r\n", b"LIST 4294967296\r\n", b"QUIT\r\n"])
    return bytes(out)


def cut(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` in random pieces (one octet at a time, now and then)."""
    if rng.random() < 0.1:
        return [data[n:n + 1] for n in range(min(len(data), 300))]
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice([1, 2, 7, 64, 1500, 65536])
        pieces.append(data[at:at + size])
        at += size
    return pieces


def session_input(rng: random.Random, corpus: list[list[bytes]]) -> bytes:
    lines = list(rng.choice(corpus))
    for _ in range(rng.randint(0, 3)):  # lines dropped, duplicated, swapped
        if lines and rng.random() < 0.5:
            lines.insert(rng.randrange(len(lines)), rng.choice(lines))
        elif len(lines) > 1:
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
    data = b"".join(lines)
    return data if rng.random() < 0.2 else mutate(rng, data)


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def proxy_header(rng: random.Random) -> bytes:
    source = f"192.0.2.{rng.randint(1, 254)}"
    if rng.random() < 0.5:
        return f"PROXY TCP4 {source} 127.0.0.1 {rng.randint(0, 65535)} 110\r\n".encode()
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    addresses += struct.pack("!HH", rng.randint(0, 65535), 110)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def converse(port: int, pieces: list[bytes], rng: random.Random) -> None:
    """Send the pieces (reading a little now and then), then read briefly and close, maybe
    with a reset."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(0.03)
            reads = 0
            for piece in pieces:
                sock.sendall(piece)
                if reads < 3 and rng.random() < 0.05:
                    reads += 1
                    with contextlib.suppress(TimeoutError):
                        sock.recv(65536)
            with contextlib.suppress(TimeoutError):
                sock.recv(65536)
            if rng.random() < 0.3:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # the server closed on us (bad input, a full buffer): what it should do


def fuzz(generate: Generator, seconds: float, seed: int) -> int:
    """Run ``generate``'s conversations from CONCURRENCY threads; how many there were."""
    count = [0] * CONCURRENCY
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        while time.monotonic() < deadline:
            port, pieces = generate(rng)
            converse(port, pieces, rng)
            count[n] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(count)


FUZZED = {"server": {"workers": 1}, "limits": {"line_length": LINE_LENGTH, "idle_timeout": 5,
                                               "login_timeout": 5}}


@pytest.fixture(scope="module")
def plain(start_module_server) -> MasterHandle:
    return start_module_server(FUZZED)


@pytest.fixture(scope="module")
def proxied(start_module_server) -> MasterHandle:
    return start_module_server({**FUZZED, "server": {
        "workers": 1, "proxy_protocol": True, "proxy_networks": ["127.0.0.1/32"],
        "plaintext_networks": ["192.0.2.0/24"]}})


def survives(master: MasterHandle, generate: Generator, witness: Account,
             proxied: bool = False) -> None:
    """Fuzz ``master``, then check its worker: same process, bounded memory, no unexpected
    error logged, and a whole session of ``witness`` (an account the fuzz never logs in as)
    served."""
    (worker,) = master.worker_pids()
    before = rss_kib(worker)
    started = time.monotonic()
    count = fuzz(generate, SECONDS, SEED)
    took = time.monotonic() - started
    after = rss_kib(worker)
    print(f"\nfuzz seed {SEED}: {count} connections in {took:.1f} s, worker RSS {before} -> "
          f"{after} KiB")
    assert master.worker_pids() == {worker}, f"the worker died (seed {SEED})"
    assert after - before < GROWTH_BOUND_KIB, f"seed {SEED}"
    assert "Traceback" not in master.log_text(), f"seed {SEED}"
    normal_session(master, witness, proxied)


def normal_session(master: MasterHandle, account: Account, proxied: bool) -> None:
    raw = socket.create_connection(("127.0.0.1", master.port), timeout=10)
    if proxied:  # behind the proxy: a header, then as any client
        raw.sendall(b"PROXY TCP4 192.0.2.200 127.0.0.1 40000 110\r\n")
    with Client(raw) as client:
        assert client.line().endswith(b"POP3 server ready\r\n")
        client.login(account)
        assert client.command("STAT").startswith(b"+OK 1 ")
        assert client.command("RETR 1").startswith(b"+OK")
        assert any(b"after the fuzz" in line for line in client.multiline())
        assert client.command("QUIT").startswith(b"+OK")


def test_mutated_transcripts(plain: MasterHandle, mail_store: MailStore) -> None:
    corpus = scripts(mail_store.account([message("fuzzed"), message("and deleted")]))

    def generate(rng: random.Random) -> tuple[int, list[bytes]]:
        return plain.port, cut(rng, session_input(rng, corpus))

    survives(plain, generate, mail_store.account([message("after the fuzz")]))


def test_garbage_client_hellos(plain: MasterHandle, mail_store: MailStore) -> None:
    account = mail_store.account([message("after the fuzz")])
    hello = client_hello()

    def generate(rng: random.Random) -> tuple[int, list[bytes]]:
        if rng.random() < 0.3:
            data = b"\x16\x03" + bytes([rng.randrange(5)]) + os.urandom(rng.randint(0, 600))
        else:
            data = mutate(rng, hello)
        return tls_port(plain), cut(rng, data)

    survives(plain, generate, account)


def test_broken_proxy_headers(proxied: MasterHandle, mail_store: MailStore) -> None:
    corpus = scripts(mail_store.account([message("fuzzed")]))

    def generate(rng: random.Random) -> tuple[int, list[bytes]]:
        header = proxy_header(rng)
        if rng.random() < 0.8:
            header = mutate(rng, header)
        return proxied.port, cut(rng, header + session_input(rng, corpus))

    survives(proxied, generate, mail_store.account([message("after the fuzz")]), proxied=True)
