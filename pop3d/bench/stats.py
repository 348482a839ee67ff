"""Latency samples and counters of one run, mergeable across processes, and their summary.

Samples are kept whole (an ``array('d')`` of seconds per command kind), not bucketed: a run of
a few minutes holds at most a few million of them, and exact percentiles need no explanation.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(ordered: list[float], pct: float) -> float:
    """The nearest-rank percentile of ascending ``ordered`` (0.0 for no samples)."""
    if not ordered:
        return 0.0
    if not 0 < pct <= 100:
        raise ValueError(f"percentile {pct} is not in (0, 100]")
    rank = math.ceil(pct / 100 * len(ordered))
    return ordered[rank - 1]


def summarize(samples: array[float] | list[float]) -> dict[str, float]:
    """count, p50, p90, p99 and max, in milliseconds."""
    ordered = sorted(samples)
    summary = {"count": float(len(ordered))}
    for pct in (50, 90, 99):
        summary[f"p{pct}_ms"] = round(percentile(ordered, pct) * 1000, 3)
    summary["max_ms"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    return summary


@dataclass
class Tally:
    """What one process measured: latencies and octets by kind, sessions, logins, errors."""

    latencies: dict[str, array[float]] = field(default_factory=dict)
    octets: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    logins: int = 0
    first: float = math.inf  # monotonic time the measured phase began
    last: float = 0.0  # monotonic time the last counted reply arrived

    def record(self, kind: str, started: float, ended: float) -> None:
        samples = self.latencies.get(kind)
        if samples is None:
            samples = self.latencies[kind] = array("d")
        samples.append(ended - started)
        self.last = max(self.last, ended)

    def error(self, key: str) -> None:
        self.errors[key] += 1

    def to_wire(self) -> dict[str, Any]:
        """A picklable form (arrays as bytes) to cross a process boundary."""
        return {"latencies": {k: v.tobytes() for k, v in self.latencies.items()},
                "octets": dict(self.octets), "errors": dict(self.errors),
                "sessions": self.sessions, "logins": self.logins,
                "first": self.first, "last": self.last}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Tally:
        tally = cls(octets=Counter(data["octets"]), errors=Counter(data["errors"]),
                    sessions=data["sessions"], logins=data["logins"],
                    first=data["first"], last=data["last"])
        for kind, raw in data["latencies"].items():
            tally.latencies[kind] = array("d", raw)
        return tally

    def merge(self, other: Tally) -> None:
        for kind, samples in other.latencies.items():
            self.latencies.setdefault(kind, array("d")).extend(samples)
        self.octets.update(other.octets)
        self.errors.update(other.errors)
        self.sessions += other.sessions
        self.logins += other.logins
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)

    @property
    def elapsed(self) -> float:
        return max(self.last - self.first, 0.0) if self.first != math.inf else 0.0
