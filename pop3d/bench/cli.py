"""``pop3bench``: the command line (see docs/PERFORMANCE.md, "pop3bench")."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .report import as_dict, as_text
from .runner import RunConfig, run
from .users import pattern_users, read_users
from .workloads import WORKLOADS

DEFAULT_PORTS = {"plain": 110, "starttls": 110, "tls": 995}
EPILOG = """workloads:
  login     connect, authenticate, QUIT
  poll      login, STAT, UIDL, QUIT
  download  login, STAT, RETR every message, QUIT
  bulk      one login per client, then RETR every message again and again; QUIT at the end
  idle      open and authenticate --sessions sessions, hold them for --duration seconds
            while each sends a NOOP every --noop-interval seconds

users: --users FILE (one 'address key' per line), or --user-pattern and --password-pattern
with {n} standing for 1..--user-count.  Client c's k-th session uses user (c + k * clients)
modulo the number of users; idle session k uses user k modulo the number of users, or with
--grouped user k // (sessions / users).
Exit status: 0 when no error was counted, 1 when some were, 2 for bad arguments."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pop3bench", description="Load generator for POP3 servers.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="default 110, or 995 with --tls tls")
    p.add_argument("--tls", choices=sorted(DEFAULT_PORTS), default="plain",
                   help="plain, starttls (STLS), or tls (implicit); default plain")
    p.add_argument("--cafile", help="trust this CA/certificate file for TLS")
    p.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("--server-name", help="TLS server name to verify (default: --host)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", metavar="FILE", help="'address key' per line")
    who.add_argument("--user-pattern", metavar="ADDRESS", help="e.g. 'u{n}@example.com'")
    p.add_argument("--password-pattern", default="", help="e.g. 'secret{n}'")
    p.add_argument("--user-count", type=int, default=1)
    p.add_argument("-c", "--concurrency", type=int, default=8,
                   help="clients running sessions at once (idle: opening at once)")
    p.add_argument("-n", "--sessions", type=int, default=100, help="idle: sessions to hold")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds run but not measured")
    p.add_argument("-p", "--processes", type=int, default=0,
                   help="load processes (default: one per CPU, at most one per client)")
    p.add_argument("--auth", choices=("user", "plain"), default="user",
                   help="USER/PASS (default) or AUTH PLAIN")
    p.add_argument("--verify", action="store_true",
                   help="LIST instead of STAT, and check each RETR against the listed size")
    p.add_argument("--noop-interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    p.add_argument("--recv-size", type=int, default=256 * 1024)
    p.add_argument("--grouped", action="store_true",
                   help="idle: open each user's sessions together (default: users apart)")
    p.add_argument("--on-open", metavar="COMMAND",
                   help="idle: shell command to run once every session is open")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def config_from(args: argparse.Namespace) -> RunConfig:
    users = (read_users(args.users) if args.users else
             pattern_users(args.user_pattern, args.password_pattern, args.user_count))
    if not users:
        raise ValueError("no users")
    clients = args.sessions if args.workload == "idle" else args.concurrency
    processes = args.processes or os.cpu_count() or 1
    return RunConfig(
        workload=args.workload, host=args.host, port=args.port or DEFAULT_PORTS[args.tls],
        tls=args.tls, cafile=args.cafile, insecure=args.insecure,
        server_name=args.server_name, users=tuple(users), concurrency=args.concurrency,
        sessions=args.sessions, processes=max(1, min(processes, clients)),
        duration=args.duration, warmup=args.warmup, noop_interval=args.noop_interval,
        verify=args.verify, auth=args.auth, timeout=args.timeout, recv_size=args.recv_size,
        on_open=args.on_open, grouped=args.grouped)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = config_from(args)
    except (OSError, ValueError) as exc:
        print(f"pop3bench: {exc}", file=sys.stderr)
        return 2
    report = as_dict(run(config))
    print(json.dumps(report, indent=2) if args.json else as_text(report))
    return 1 if report["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
