#!/usr/bin/env python3
"""Memory of a process tree, for pop3bench's --on-open: RSS and PSS summed over a process and
its descendants (or only the descendants), from /proc/PID/smaps_rollup.

    python3 scripts/bench_memory.py PID [--children]    # prints one JSON line

PSS splits shared pages (the interpreter, libraries, copy-on-write memory after fork) between
the processes that share them, so the sum over a tree is what the tree costs the machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROC = Path("/proc")


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, todo = children_of(), [], [root]
    while todo:
        pid = todo.pop()
        for child in tree.get(pid, []):
            found.append(child)
            todo.append(child)
    return found


def rollup(pid: int) -> dict[str, int]:
    values = {}
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name.lower() + "_kib"] = int(rest.split()[0])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--children", action="store_true", help="leave the root process out")
    args = parser.parse_args()
    pids = descendants(args.pid) + ([] if args.children else [args.pid])
    total = {"processes": 0, "rss_kib": 0, "pss_kib": 0}
    for pid in pids:
        values = rollup(pid)
        if values:
            total["processes"] += 1
            total["rss_kib"] += values.get("rss_kib", 0)
            total["pss_kib"] += values.get("pss_kib", 0)
    print(json.dumps(total))


if __name__ == "__main__":
    main()
