#!/usr/bin/env python3
"""pop3d and Dovecot side by side: every pop3bench workload against both, in one run.

    .venv/bin/python scripts/bench_compare.py -c $DEV_CONFIG            # all measurements
    .venv/bin/python scripts/bench_compare.py -c $DEV_CONFIG --only poll bulk8

Needs the services (scripts/services.sh start) and the benchmark users and corpus
(scripts/bench_setup.py --users 2000).  Starts pop3d from a copy of the services configuration
on its own loopback ports (12110 plain/STLS, 12995 TLS; 2 workers) and a private Dovecot
(scripts/dovecot-bench.sh; 12120, 12993), runs each measurement on pop3d then on Dovecot,
stops both, prints one Markdown table per workload and keeps every JSON report in
var/bench/results/<time>/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import bcrypt

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BENCH = ROOT / "var" / "bench"
POP3D_PORTS = (12110, 12995)
DOVECOT_PORTS = (12120, 12993)
SMALL_USERS = 50  # the table: a corpus shared by 50 users


@dataclass(frozen=True)
class Measurement:
    name: str
    title: str
    args: tuple[str, ...]
    users: str = "small"  # "small" (the first 50) or "all"
    cache: bool = True  # auth cache on (30 s) or off
    tls: str = "plain"
    warm_ttl: int = 0  # > 0: pop3d's cache_ttl, and every user logs in once before the run


MEASUREMENTS = [
    Measurement("bulk8", "bulk, 8 sessions: one login, then RETR every message again and again",
                ("bulk", "-c", "8", "-p", "2")),
    Measurement("bulk1", "bulk, 1 session", ("bulk", "-c", "1", "-p", "1")),
    Measurement("download", "download: login, RETR all, QUIT (8 clients)",
                ("download", "-c", "8", "-p", "2")),
    Measurement("poll", "poll: login, STAT, UIDL, QUIT (16 clients, cache warm)",
                ("poll", "-c", "16", "-p", "2")),
    Measurement("fresh", "fresh logins, auth cache off (16 clients, 2,000 users)",
                ("login", "-c", "16", "-p", "2"), users="all", cache=False),
    Measurement("storm", "NOOP of 400 established sessions during a storm of fresh logins "
                "(auth cache off, 16 clients)", ("idle",), users="all", cache=False),
    Measurement("poll_cold", "poll over 2,000 users (16 clients, auth cache_ttl 30 s: each "
                "user comes back after the cache forgot it)", ("poll", "-c", "16", "-p", "2"),
                users="all"),
    Measurement("poll_ttl600", "poll over 2,000 users (16 clients, pop3d auth cache_ttl "
                "600 s, every user logged in just before)", ("poll", "-c", "16", "-p", "2"),
                users="all", warm_ttl=600),
    Measurement("idle_tls", "idle over implicit TLS", ("idle",), users="all", tls="tls"),
    Measurement("idle_stls", "idle over STLS", ("idle",), users="all", tls="starttls"),
    Measurement("idle_grouped", "idle over implicit TLS, each user's sessions opened together",
                ("idle", "--grouped"), users="all", tls="tls"),
    Measurement("idle_warm", "idle over implicit TLS, every user logged in just before "
                "(pop3d auth cache_ttl 600 s)", ("idle",), users="all", tls="tls",
                warm_ttl=600),
]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def pop3d_config(base: Path, cache: bool, ttl: int = 30, workers: int = 2) -> Path:
    """The services configuration with the benchmark's listeners, workers and log."""
    with base.open("rb") as f:
        config = tomllib.load(f)
    config["server"].update({
        "listen": [f"127.0.0.1:{POP3D_PORTS[0]}"], "tls_listen": [f"127.0.0.1:{POP3D_PORTS[1]}"],
        "workers": workers, "worker_connections": 12000,
        "pidfile": str(BENCH / "run" / "pop3d.pid")})
    config.setdefault("auth", {})["cache_ttl"] = ttl if cache else 0
    # Every benchmark client comes from 127.0.0.1: the per-address limits, meant for one
    # host among thousands, are lifted so that one address can stand for them all.
    config["auth"].update({"verify_budget": 1_000_000, "max_failures": 1_000_000})
    config.setdefault("limits", {}).update({
        "max_connections_per_address": 100_000, "max_tls_handshakes_per_address": 100_000})
    config.setdefault("logging", {})["file"] = str(BENCH / "pop3d.log")
    path = BENCH / ("pop3d.toml" if cache else "pop3d-nocache.toml")
    path.write_text("".join(
        f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + "\n"
        for section, values in config.items()))
    return path


def pop3d_master(path: Path) -> int:
    return int((BENCH / "run" / "pop3d.pid").read_text().split()[0])


def start_pop3d(path: Path) -> None:
    stop_pop3d(path)
    subprocess.run([BIN / "pop3d", "start", "-c", path, "--daemon"], check=True, cwd=ROOT)
    time.sleep(1.0)


def stop_pop3d(path: Path) -> None:
    subprocess.run([BIN / "pop3d", "stop", "-c", path], cwd=ROOT, capture_output=True,
                   check=False)


def start_dovecot(base: Path, cache: bool) -> None:
    env = dict(os.environ, POP3D_CONFIG=str(base), DOVECOT_AUTH_CACHE_TTL="30" if cache else "0")
    subprocess.run([ROOT / "scripts" / "dovecot-bench.sh", "start"], check=True, env=env)


def dovecot_master() -> int:
    return int((ROOT / "var" / "dovecot" / "run" / "master.pid").read_text().split()[0])


def memory(pid: int, children: bool) -> dict[str, int]:
    command = [sys.executable, ROOT / "scripts" / "bench_memory.py", str(pid)]
    out = subprocess.run(command + (["--children"] if children else []), capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def pop3bench(args: list[str], where: Path) -> dict[str, Any]:
    done = subprocess.run([BIN / "pop3bench", *args, "--json"], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    where.write_text(done.stdout + done.stderr)
    if not done.stdout.startswith("{"):
        raise SystemExit(f"pop3bench failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def bcrypt_verify_seconds(cost: int = 10, rounds: int = 15) -> float:
    hashed = bcrypt.hashpw(b"pk_benchmark_key", bcrypt.gensalt(rounds=cost))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        bcrypt.checkpw(b"pk_benchmark_key", hashed)
        times.append(time.perf_counter() - started)
    return median(times)


def run_one(m: Measurement, server: str, ports: tuple[int, int], args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    users = str(BENCH / ("users.txt" if m.users == "all" else "users-small.txt"))
    port = ports[1] if m.tls == "tls" else ports[0]
    common = ["--port", str(port), "--users", users, "--tls", m.tls,
              "--cafile", str(ROOT / "var" / "tls" / "cert.pem")]
    if m.warm_ttl and server == "pop3d":  # every user once: the run starts with all keys cached
        users_count = len(Path(users).read_text().split("\n")) - 1
        pop3bench(["idle", *common, "-n", str(users_count), "-c", "32", "-p", "2", "-d", "1",
                   "--timeout", "120"], out / f"{m.name}-{server}-prewarm.json")
        if m.args[0] == "idle":  # the cache stays warm in memcached; the workers start afresh
            start_pop3d(BENCH / "pop3d.toml")
    if m.name == "storm":
        return storm(common, args, out / f"{m.name}-{server}")
    extra: list[str] = []
    if m.args[0] == "idle":
        sessions = args.idle_sessions if server == "pop3d" else args.dovecot_idle_sessions
        pid = pop3d_master(BENCH / "pop3d.toml") if server == "pop3d" else dovecot_master()
        children = server == "pop3d"  # pop3d: the workers; Dovecot: the whole instance
        probe = f"{sys.executable} {ROOT / 'scripts' / 'bench_memory.py'} {pid}" + (
            " --children" if children else "")
        extra = ["-n", str(sessions), "-c", "200", "-p", "2", "-d", str(args.idle_hold),
                 "--noop-interval", "2", "--timeout", "120", "--on-open", probe]
        before = memory(pid, children)
        report = pop3bench([*m.args, *common, *extra], out / f"{m.name}-{server}.json")
        report["memory_before"] = before
        report["memory_open"] = json.loads(report["on_open_output"].strip().splitlines()[-1])
        return report
    extra = ["-d", str(args.duration), "--warmup", str(args.warmup)]
    return pop3bench([*m.args, *common, *extra], out / f"{m.name}-{server}.json")


def storm(common: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """400 sessions held with a NOOP a second while, once they are all open, 16 clients log in
    as fast as the server lets them: the NOOP latencies of the first during the second."""
    logins = out.with_name(out.name + "-logins.json")
    storm_command = " ".join(shlex.quote(str(a)) for a in [
        BIN / "pop3bench", "login", *common, "-c", "16", "-p", "2", "-d", args.duration,
        "--warmup", "2", "--json"]) + f" > {shlex.quote(str(logins))}"
    report = pop3bench(["idle", *common, "-n", "400", "-c", "50", "-p", "2",
                        "-d", str(args.duration + 5), "--noop-interval", "1", "--timeout", "120",
                        "--on-open", storm_command], out.with_name(out.name + ".json"))
    report["storm"] = json.loads(logins.read_text())
    return report


def _row(name: str, pop3d: float | None, dovecot: float | None, unit: str = "",
         ratio: bool = True) -> str:
    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:,.2f}{unit}".replace(".00" + unit, unit)

    times = (f"{pop3d / dovecot:.2f}x" if ratio and pop3d is not None and dovecot else "")
    return f"| {name} | {cell(pop3d)} | {cell(dovecot)} | {times} |"


def _lat(report: dict[str, Any] | None, kind: str, pct: str) -> float | None:
    if not report or kind not in report["latency_ms"]:
        return None
    return float(report["latency_ms"][kind][f"{pct}_ms"])


def _per_session(report: dict[str, Any] | None, key: str) -> float | None:
    if not report or not report.get("opened"):
        return None
    grown = report["memory_open"][key] - report["memory_before"][key]
    return float(grown / report["opened"])


def _storm_rows(p: dict[str, Any] | None, d: dict[str, Any] | None, bound: float) -> list[str]:
    """The held sessions' NOOP latencies, then what the storm of logins around them did."""
    storms = [None if r is None else r["storm"] for r in (p, d)]
    return [
        _row("**NOOP p99 (ms)** of the 400 held", _lat(p, "NOOP", "p99"), _lat(d, "NOOP", "p99"),
             ratio=False),
        _row("NOOP p50 (ms)", _lat(p, "NOOP", "p50"), _lat(d, "NOOP", "p50"), ratio=False),
        _row("NOOPs answered", *(None if r is None else r["latency_ms"]["NOOP"]["count"]
                                 for r in (p, d)), ratio=False),
        _row("storm: logins/s", *(None if r is None else r["logins_per_s"] for r in storms)),
        _row("storm: % of the bcrypt bound", *(None if r is None else
             100 * r["logins_per_s"] / bound for r in storms), " %", ratio=False),
        _row("storm: login p99 (ms)", _lat(storms[0], "login", "p99"),
             _lat(storms[1], "login", "p99"), ratio=False),
        _row("errors (held, storm)", *(None if r is None else
             r["error_count"] + r["storm"]["error_count"] for r in (p, d)), ratio=False),
    ]


def table(m: Measurement, results: dict[str, Any]) -> str:
    """One Markdown table: pop3d, Dovecot and the ratio of each figure."""
    p, d = results.get(f"{m.name}/pop3d"), results.get(f"{m.name}/dovecot")

    def get(report: dict[str, Any] | None, key: str) -> float | None:
        return None if report is None else float(report[key])

    rows = ["| | pop3d | Dovecot | pop3d ÷ Dovecot |", "|---|---|---|---|"]
    if m.args[0] in ("bulk", "download"):
        rows.append(_row("**MB/s**", get(p, "mb_per_s"), get(d, "mb_per_s")))
        rows.append(_row("RETR/s", *(None if r is None else r["retr"] / r["elapsed_s"]
                                     for r in (p, d))))
    if m.args[0] in ("download", "poll"):
        rows.append(_row("sessions/s", get(p, "sessions_per_s"), get(d, "sessions_per_s")))
    if m.args[0] == "login":
        bound = results["cores"] / results["bcrypt_verify_s"]
        rows.append(_row("**logins/s**", get(p, "logins_per_s"), get(d, "logins_per_s")))
        rows.append(_row("% of the bcrypt bound", *(None if r is None else
                         100 * r["logins_per_s"] / bound for r in (p, d)), " %", ratio=False))
    if m.name == "storm":
        rows += _storm_rows(p, d, results["cores"] / results["bcrypt_verify_s"])
    elif m.args[0] == "idle":
        rows.append(_row("sessions opened", get(p, "opened"), get(d, "opened"), ratio=False))
        rows.append(_row("opening took (s)", get(p, "open_s"), get(d, "open_s"), ratio=False))
        rows.append(_row("opened/s", get(p, "opens_per_s"), get(d, "opens_per_s")))
        rows.append(_row("idle sessions at the start (PSS MiB)", *(None if r is None else
                         r["memory_before"]["pss_kib"] / 1024 for r in (p, d)), ratio=False))
        rows.append(_row("all sessions open (PSS MiB)", *(None if r is None else
                         r["memory_open"]["pss_kib"] / 1024 for r in (p, d)), ratio=False))
        rows.append(_row("**server PSS per session (KiB)**", _per_session(p, "pss_kib"),
                         _per_session(d, "pss_kib")))
        rows.append(_row("server RSS per session (KiB)", _per_session(p, "rss_kib"),
                         _per_session(d, "rss_kib")))
        for kind in ("NOOP", "login"):
            for pct in ("p50", "p99"):
                rows.append(_row(f"{kind} {pct} (ms)", _lat(p, kind, pct), _lat(d, kind, pct),
                                 ratio=False))
    else:
        kind = {"bulk": "RETR", "download": "session", "poll": "session"}.get(m.args[0], "login")
        for pct in ("p50", "p99"):
            rows.append(_row(f"{kind} {pct} (ms)", _lat(p, kind, pct), _lat(d, kind, pct),
                             ratio=False))
    if m.name != "storm":
        rows.append(_row("errors", get(p, "error_count"), get(d, "error_count"), ratio=False))
    rows.append(_row("pop3bench CPU (% of a core)", get(p, "client_cpu_pct"),
                     get(d, "client_cpu_pct"), ratio=False))
    return f"#### {m.title}\n\n" + "\n".join(rows) + "\n"


def print_tables(directory: Path) -> None:
    results = json.loads((directory / "summary.json").read_text())
    for m in MEASUREMENTS:
        if any(key.startswith(m.name + "/") for key in results):
            print(table(m, results))
    bound = results["cores"] / results["bcrypt_verify_s"]
    print(f"bcrypt: one verify at cost 10 takes {results['bcrypt_verify_s'] * 1000:.1f} ms; "
          f"{results['cores']} cores ÷ that = {bound:.1f} logins/s. Load average before "
          f"{results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default=os.environ.get("DEV_CONFIG",
                                                                 "conf/dev.toml"))
    parser.add_argument("--only", nargs="*", default=[m.name for m in MEASUREMENTS])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--idle-sessions", type=int, default=10000)
    parser.add_argument("--dovecot-idle-sessions", type=int, default=2000)
    parser.add_argument("--idle-hold", type=float, default=20.0)
    parser.add_argument("--servers", nargs="*", default=["pop3d", "dovecot"])
    parser.add_argument("--workers", type=int, default=2, help="pop3d's worker processes")
    parser.add_argument("--tables", metavar="DIR", help="only print the tables of a past run")
    args = parser.parse_args()
    if args.tables:
        print_tables(Path(args.tables))
        return 0
    base = Path(args.config).resolve()
    out = BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    lines = (BENCH / "users.txt").read_text().splitlines()
    (BENCH / "users-small.txt").write_text("\n".join(lines[:SMALL_USERS]) + "\n")
    results: dict[str, Any] = {"load_before": os.getloadavg(), "cores": os.cpu_count(),
                               "bcrypt_verify_s": bcrypt_verify_seconds()}
    servers: tuple[bool, int, str] | None = None
    try:
        for m in [m for m in MEASUREMENTS if m.name in args.only]:
            # Fresh servers for each idle run, so the memory before it is a clean baseline.
            wanted = (m.cache, m.warm_ttl, m.name if m.args[0] == "idle" else "")
            if servers != wanted:
                start_pop3d(pop3d_config(base, m.cache, m.warm_ttl or 30, args.workers))
                start_dovecot(base, m.cache)
                servers = wanted
            for server, ports in (("pop3d", POP3D_PORTS), ("dovecot", DOVECOT_PORTS)):
                if server in args.servers:
                    print(f"{m.name} on {server} ...", file=sys.stderr, flush=True)
                    results[f"{m.name}/{server}"] = run_one(m, server, ports, args, out)
    finally:
        stop_pop3d(BENCH / "pop3d.toml")
        subprocess.run([ROOT / "scripts" / "dovecot-bench.sh", "stop"], check=False)
    results["load_after"] = os.getloadavg()
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    print_tables(out)
    print(f"results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
