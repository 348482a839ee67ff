#!/usr/bin/env python3
"""Figures for sizing a multi-host installation (docs/SCALING.md).

    .venv/bin/python scripts/bench_scale.py bcrypt [--cost 10]
    .venv/bin/python scripts/bench_scale.py memcached
    .venv/bin/python scripts/bench_scale.py sessions -c CONFIG --accounts FILE [-n 1000]

bcrypt: milliseconds per verify of an API key at the given cost: the CPU a login without a
cached result takes, so fresh logins per second per core.

memcached: round trips per login, logout and failure, counted on the real client code
(KeyAuthenticator, MemcacheRegistry, MemcacheClient) against the memcached of
scripts/services.sh; the credentials come from memory, since PostgreSQL adds no memcached
traffic.

sessions: opens -n logged-in sessions to a running server (127.0.0.1, the first `listen`
address of CONFIG, plaintext login: a trusted network) and prints the RSS its workers grew by,
per session.  FILE has one "address key" per line; the sessions take them in turn, so give at
least n / max_connections_per_user accounts.  Start the server with one worker for a clear
figure.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bcrypt

from pop3d.adapters.memcache import MemcacheClient, build_shared_state
from pop3d.auth import KeyAuthenticator, generate_key
from pop3d.config import Address, load, parse_address
from pop3d.errors import AuthFailed
from pop3d.master.pidfile import read_status, status_path
from pop3d.ports import Credentials, KeyRecord, UserRecord

SERVICES_ENV = Path(__file__).resolve().parent.parent / "var" / "services.env"


def bench_bcrypt(cost: int) -> None:
    new = generate_key(cost)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        bcrypt.checkpw(new.key.encode(), new.bcrypt_hash)
        runs.append(time.perf_counter() - started)
    best = min(runs) * 1000
    print(f"bcrypt cost {cost}: {best:.1f} ms per verify, {1000 / best:.0f} fresh logins/s/core")


class OneUser:
    """A CredentialStore with one user and one key, in memory."""

    def __init__(self, key_hash: bytes) -> None:
        self.user = UserRecord("00000000-0000-4000-8000-000000000001", "bench@example.com",
                               disabled=False)
        self.key = KeyRecord("00000000-0000-4000-8000-000000000002", key_hash,
                             frozenset({"pop3"}))

    def find_user(self, address: str) -> UserRecord | None:
        return self.user if address == self.user.address else None

    def candidate_keys(self, user_id: str, presented: str) -> list[KeyRecord]:
        return [self.key]

    def touch_keys(self, key_ids: Sequence[str]) -> None:
        pass


def count_calls(client: MemcacheClient) -> list[int]:
    """Count the client's round trips (one per call to a server) from now on."""
    counter = [0]
    run = client._run

    def counted(key: str, command: str, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return run(key, command, *args, **kwargs)

    client._run = counted  # type: ignore[method-assign]
    return counter


def bench_memcached() -> None:
    server = memcached_address()
    shared = build_shared_state([server], 0.5, "open", max_failures=5, lockout=60,
                                namespace=f"bench{time.time_ns()}")
    new = generate_key(4)
    auth = KeyAuthenticator(OneUser(new.bcrypt_hash), bcrypt_cost=4, cache=shared.auth_cache,
                            cache_secret=b"bench", rate_limiter=shared.rate_limiter)
    counter = count_calls(shared.client)
    good = Credentials("bench@example.com", new.key, "192.0.2.1", "USER")
    bad = Credentials("bench@example.com", "wrong", "192.0.2.2", "USER")

    def measured(name: str, step: Callable[[], object]) -> None:
        before = counter[0]
        with contextlib.suppress(AuthFailed):
            step()
        print(f"{name:38} {counter[0] - before} round trips")

    measured("login, result not cached (+ slot)", lambda: login(auth, shared, good, "s:1:1"))
    measured("logout (slot released)", lambda: shared.registry.release(OneUser(b"").user.user_id,
                                                                       "s:1:1"))
    measured("login, result cached (+ slot)", lambda: login(auth, shared, good, "s:1:2"))
    measured("failed login, not cached", lambda: auth.authenticate(bad))
    measured("failed login, failure cached", lambda: auth.authenticate(bad))
    shared.close()


def login(auth: KeyAuthenticator, shared: Any, credentials: Credentials, session: str) -> None:
    principal = auth.authenticate(credentials)
    shared.registry.acquire(principal.user_id, session, 5)


def memcached_address() -> Address:
    for line in SERVICES_ENV.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "POP3D_TEST_MEMCACHED":
            return parse_address(shlex.split(value)[0])
    raise SystemExit("no memcached in var/services.env: run scripts/services.sh start")


def bench_sessions(config_path: str, accounts_path: str, count: int) -> None:
    config = load(config_path)[0]
    address = config.server.listen[0]
    accounts = [line.split() for line in Path(accounts_path).read_text().splitlines() if line]
    pids = [w["pid"] for w in (read_status(status_path(config.server.pidfile)) or {})["workers"]]
    before = sum(rss_kib(pid) for pid in pids)
    sessions = [logged_in(address.port, *accounts[n % len(accounts)]) for n in range(count)]
    time.sleep(1)  # let the workers settle (heartbeats, registry index writes)
    after = sum(rss_kib(pid) for pid in pids)
    print(f"{count} logged-in idle sessions on {len(pids)} worker(s): RSS +{after - before} KiB,"
          f" {(after - before) / count:.1f} KiB per session")
    for sock in sessions:
        sock.sendall(b"QUIT\r\n")
        sock.close()


def logged_in(port: int, user: str, key: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    reader = sock.makefile("rb")
    reader.readline()
    for line in (f"USER {user}", f"PASS {key}"):
        sock.sendall(line.encode() + b"\r\n")
        reply = reader.readline()
        if not reply.startswith(b"+OK"):
            raise SystemExit(f"login failed: {reply!r}")
    return sock


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bcrypt").add_argument("--cost", type=int, default=10)
    commands.add_parser("memcached")
    sessions = commands.add_parser("sessions")
    sessions.add_argument("-c", "--config", required=True)
    sessions.add_argument("--accounts", required=True)
    sessions.add_argument("-n", "--sessions", type=int, default=1000)
    args = parser.parse_args()
    if args.command == "bcrypt":
        bench_bcrypt(args.cost)
    elif args.command == "memcached":
        bench_memcached()
    else:
        bench_sessions(args.config, args.accounts, args.sessions)


if __name__ == "__main__":
    main()
