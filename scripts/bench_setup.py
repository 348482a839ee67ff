#!/usr/bin/env python3
"""Benchmark users and mail for pop3bench, made through pop3d's own CLI.

    .venv/bin/python scripts/bench_setup.py -c conf/dev.toml --users 2000

* writes the corpus (pop3d.bench.corpus, deterministic) to OUT/corpus/NN.eml;
* creates users bench1@bench.example ... benchN@bench.example (`pop3d user add`) and one API
  key each (`pop3d key create`, at the configured bcrypt cost), in parallel processes;
* delivers the corpus to every new user (`pop3d deliver --to A --to B ...`: one email row per
  message, shared by all of them), in order;
* writes OUT/users.txt, one "address key" line per user, for `pop3bench --users`.

Run again with more users, and only the missing users are created and given the corpus; users
that already have a key in users.txt keep it.  The commands run in-process (each worker process
imports the CLI once and calls the same click commands with the same arguments) because
starting an interpreter per command would cost more than the bcrypt of 2,000 keys.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from pop3d.bench.corpus import corpus
from pop3d.cli import main as pop3d_cli

ROOT = Path(__file__).resolve().parent.parent


def pop3d(*args: str) -> str:
    """Run one `pop3d` command in this process; its stdout, or exit with its error."""
    result = CliRunner().invoke(pop3d_cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        sys.exit(f"pop3d {args[0]} {args[1] if len(args) > 1 else ''} failed "
                 f"({result.exit_code}): {result.stderr.strip()}")
    return result.stdout


def add_user(config: str, address: str) -> str:
    pop3d("user", "add", address, "-c", config)
    return create_key(config, address)


def create_key(config: str, address: str) -> str:
    return pop3d("key", "create", address, "--name", "bench", "-c", config).strip()


def read_users_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return dict(line.split() for line in path.read_text().splitlines() if line.strip())


def make_users(config: str, addresses: list[str], known: dict[str, str],
               jobs: int) -> tuple[dict[str, str], list[str]]:
    """address -> key for every address; and the addresses that did not exist before."""
    existing = {line.split("\t")[0] for line in pop3d("user", "list", "-c", config).splitlines()}
    new = [a for a in addresses if a not in existing]
    rekey = [a for a in addresses if a in existing and a not in known]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        new_keys = pool.starmap(add_user, [(config, a) for a in new], chunksize=8)
        old_keys = pool.starmap(create_key, [(config, a) for a in rekey], chunksize=8)
    keys = {a: known[a] for a in addresses if a in known}
    keys.update(zip(new, new_keys, strict=True))
    keys.update(zip(rekey, old_keys, strict=True))
    return keys, new


def write_corpus(directory: Path, messages: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.eml"):
        stale.unlink()
    paths = []
    for number, raw in enumerate(messages, 1):
        path = directory / f"{number:03d}.eml"
        path.write_bytes(raw)
        paths.append(path)
    return paths


def deliver(config: str, paths: list[Path], recipients: list[str]) -> None:
    """Each message once, to every recipient, in corpus order (maildrop order)."""
    to = [arg for address in recipients for arg in ("--to", address)]
    for path in paths:
        pop3d("deliver", "-c", config, *to, str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default=os.environ.get("POP3D_CONFIG",
                                                                 "conf/dev.toml"))
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--domain", default="bench.example")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--jobs", type=int, default=(os.cpu_count() or 1) * 2,
                        help="parallel processes (bcrypt and PostgreSQL round trips overlap)")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.monotonic()
    paths = write_corpus(out / "corpus", corpus(args.messages, args.seed))
    users_file = out / "users.txt"
    addresses = [f"bench{n}@{args.domain}" for n in range(1, args.users + 1)]
    keys, new = make_users(args.config, addresses, read_users_file(users_file), args.jobs)
    if new:
        deliver(args.config, paths, new)
    users_file.write_text("".join(f"{a} {keys[a]}\n" for a in addresses))
    users_file.chmod(0o600)
    octets = sum(p.stat().st_size for p in paths)
    print(f"{len(addresses)} users ({len(new)} new), {len(paths)} messages of "
          f"{octets // len(paths)} octets on average; {users_file} "
          f"({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
