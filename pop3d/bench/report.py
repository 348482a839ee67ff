"""What a run measured, as a dict (``--json``) and as text for a person."""

from __future__ import annotations

from typing import Any

from .runner import Outcome
from .stats import summarize

MB = 1_000_000  # MB/s in decimal megabytes, like the and Dovecot's own figures
KIND_ORDER = ("connect", "tls", "STLS", "login", "STAT", "LIST", "UIDL", "RETR", "NOOP", "QUIT",
              "session")


def _rate(count: float, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0


def as_dict(outcome: Outcome) -> dict[str, Any]:
    config, tally = outcome.config, outcome.tally
    elapsed = tally.elapsed
    octets = tally.octets["RETR"]  # message octets; LIST and UIDL bodies are not mail
    kinds = sorted(tally.latencies, key=lambda k: (*KIND_ORDER, k).index(k))
    report: dict[str, Any] = {
        "workload": config.workload, "server": f"{config.host}:{config.port}",
        "tls": config.tls, "auth": config.auth, "processes": config.processes,
        "concurrency": config.concurrency, "duration_s": config.duration,
        "warmup_s": config.warmup, "users": len(config.users), "elapsed_s": round(elapsed, 3),
        "sessions": tally.sessions, "sessions_per_s": _rate(tally.sessions, elapsed),
        "logins": tally.logins, "logins_per_s": _rate(tally.logins, elapsed),
        "retr": len(tally.latencies.get("RETR", ())), "octets": octets,
        "octets_by_kind": dict(tally.octets),
        "mb_per_s": round(octets / MB / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {kind: summarize(tally.latencies[kind]) for kind in kinds},
        "errors": dict(tally.errors.most_common()), "error_count": sum(tally.errors.values()),
        "client_cpu_s": round(outcome.cpu_seconds, 3),
        "client_cpu_pct": round(100 * outcome.cpu_seconds / elapsed, 1) if elapsed else 0.0,
        "per_process": outcome.per_process,
    }
    if config.workload == "idle":
        report.update({
            "sessions_wanted": config.sessions, "opened": outcome.opened,
            "open_s": round(outcome.open_seconds, 3),
            "opens_per_s": _rate(outcome.opened, outcome.open_seconds),
            "noop_interval_s": config.noop_interval, "on_open_output": outcome.on_open_output,
        })
    return report


def as_text(report: dict[str, Any]) -> str:
    clients = (f"{report['sessions_wanted']} sessions ({report['concurrency']} opening at once)"
               if report["workload"] == "idle" else f"{report['concurrency']} clients")
    lines = [
        f"pop3bench {report['workload']} against {report['server']} ({report['tls']}): "
        f"{clients} in {report['processes']} processes, "
        f"{report['duration_s']:g} s (warm-up {report['warmup_s']:g} s), "
        f"{report['users']} users",
    ]
    if report["workload"] == "idle":
        lines.append(f"  opened      {report['opened']} of {report['sessions_wanted']} sessions "
                     f"in {report['open_s']:.2f} s ({report['opens_per_s']:.1f}/s)")
    lines += [
        f"  elapsed     {report['elapsed_s']:.2f} s",
        f"  sessions    {report['sessions']} ({report['sessions_per_s']:.1f}/s)",
        f"  logins      {report['logins']} ({report['logins_per_s']:.1f}/s)",
    ]
    if report["retr"]:
        lines.append(f"  RETR        {report['retr']} ({report['octets']} octets, "
                     f"{report['mb_per_s']:.2f} MB/s)")
    lines.append("  latency ms      count       p50       p90       p99       max")
    for kind, row in report["latency_ms"].items():
        lines.append(f"    {kind:<10}{int(row['count']):>9}{row['p50_ms']:>10.2f}"
                     f"{row['p90_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['max_ms']:>10.2f}")
    lines.append(f"  errors      {report['error_count'] or 'none'}")
    lines += [f"    {count:>8}  {key}" for key, count in report["errors"].items()]
    lines.append(f"  client CPU  {report['client_cpu_s']:.2f} s "
                 f"({report['client_cpu_pct']:.0f}% of one core over the run)")
    if report.get("on_open_output"):
        lines.append("  --on-open output:")
        lines += [f"    {line}" for line in report["on_open_output"].rstrip().splitlines()]
    return "\n".join(lines)
