"""pop3bench's pure parts: percentiles and tallies, the session scripts driven by canned
replies, the users file, the corpus and the command line's choices."""

from __future__ import annotations

import re
from array import array
from pathlib import Path

import pytest

from pop3d.bench import corpus
from pop3d.bench.cli import config_from, parser
from pop3d.bench.replies import OPENED, Reply, Sleep, Step
from pop3d.bench.runner import RunConfig, idle_user
from pop3d.bench.stats import Tally, percentile, summarize
from pop3d.bench.users import pattern_users, read_users
from pop3d.bench.workloads import WORKLOADS, Plan, Script, SessionFailed, User

USER = User("a@example.com", "k1")


def test_nearest_rank_percentiles() -> None:
    ordered = [float(n) for n in range(1, 101)]
    assert percentile(ordered, 50) == 50.0
    assert percentile(ordered, 99) == 99.0
    assert percentile(ordered, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError, match="not in"):
        percentile(ordered, 0)


def test_summary_in_milliseconds() -> None:
    summary = summarize(array("d", [0.004, 0.001, 0.002, 0.003]))
    assert summary == {"count": 4.0, "p50_ms": 2.0, "p90_ms": 4.0, "p99_ms": 4.0,
                       "max_ms": 4.0}


def test_tallies_cross_processes_and_merge() -> None:
    one, two = Tally(first=10.0), Tally(first=10.0)
    one.record("RETR", 10.0, 10.5)
    one.octets["RETR"] += 100
    one.error("-ERR [IN-USE] busy")
    two.record("RETR", 11.0, 12.0)
    two.sessions = 3
    merged = Tally.from_wire(one.to_wire())
    merged.merge(Tally.from_wire(two.to_wire()))
    assert list(merged.latencies["RETR"]) == [0.5, 1.0]
    assert merged.octets["RETR"] == 100
    assert merged.errors == {"-ERR [IN-USE] busy": 1}
    assert (merged.sessions, merged.elapsed) == (3, 2.0)


def run_script(script: Script, replies: dict[bytes, Reply]) -> list[bytes | None]:
    """Drive a script, answering each command from ``replies`` (default ``+OK``)."""
    sent: list[bytes | None] = []
    action = next(script)
    try:
        while True:
            if isinstance(action, Step):
                sent.append(action.line)
                reply: Reply | None = replies.get(action.line or b"", Reply(True, b"+OK"))
            else:
                reply = None
            action = script.send(reply)
    except StopIteration:
        return sent


def test_poll_says_what_the_issue_says() -> None:
    plan = Plan(clock=lambda: 0.0)
    sent = run_script(WORKLOADS["poll"](USER, plan), {})
    assert sent == [None, b"USER a@example.com", b"PASS k1", b"STAT", b"UIDL", b"QUIT"]


def test_starttls_and_auth_plain() -> None:
    plan = Plan(clock=lambda: 0.0, starttls=True, auth="plain")
    sent = run_script(WORKLOADS["login"](USER, plan), {})
    assert sent == [None, b"STLS", b"AUTH PLAIN AGFAZXhhbXBsZS5jb20AazE=", b"QUIT"]


def test_download_retrieves_every_message_and_verifies_sizes() -> None:
    plan = Plan(clock=lambda: 0.0, verify=True)
    replies = {b"LIST": Reply(True, b"+OK", body=b"1 10\r\n2 20\r\n"),
               b"RETR 1": Reply(True, b"+OK", octets=10), b"RETR 2": Reply(True, b"+OK", 20)}
    sent = run_script(WORKLOADS["download"](USER, plan), replies)
    assert sent[3:] == [b"LIST", b"RETR 1", b"RETR 2", b"QUIT"]
    replies[b"RETR 2"] = Reply(True, b"+OK", octets=19)
    with pytest.raises(SessionFailed, match="RETR 2: 19 octets, LIST said 20"):
        run_script(WORKLOADS["download"](USER, plan), replies)


def test_bulk_cycles_until_the_deadline() -> None:
    ticks = iter(range(100))
    plan = Plan(clock=lambda: float(next(ticks)), deadline=5.0)
    sent = run_script(WORKLOADS["bulk"](USER, plan), {b"STAT": Reply(True, b"+OK 2 30")})
    assert sent[4:] == [b"RETR 1", b"RETR 2", b"RETR 1", b"RETR 2", b"RETR 1", b"QUIT"]


def test_idle_reports_open_then_noops_until_the_hold_ends() -> None:
    now = [0.0]
    plan = Plan(clock=lambda: now[0], noop_interval=1.0)
    script = WORKLOADS["idle"](USER, plan)
    assert [next(script), script.send(Reply(True, b"+OK")).line,
            script.send(Reply(True, b"+OK")).line] == [Step("connect"), b"USER a@example.com",
                                                      b"PASS k1"]  # type: ignore[union-attr]
    assert script.send(Reply(True, b"+OK")) is OPENED
    plan.hold_until = 2.5
    assert isinstance(script.send(None), Sleep)
    lines = []
    for _ in range(3):
        step = script.send(None)
        assert isinstance(step, Step)
        lines.append(step.line)
        now[0] += 1.0
        if step.line != b"QUIT":
            assert script.send(Reply(True, b"+OK")) == Sleep(1.0)
    assert lines == [b"NOOP", b"NOOP", b"NOOP"]
    assert script.send(None).line == b"QUIT"  # type: ignore[union-attr]


def test_users_from_a_file_and_from_a_pattern(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("# address key\nu1@x pk_1\n\n  u2@x\tpk_2  \n")
    assert read_users(str(path)) == [User("u1@x", "pk_1"), User("u2@x", "pk_2")]
    path.write_text("u1@x\n")
    with pytest.raises(ValueError, match="expected 'address key'"):
        read_users(str(path))
    assert pattern_users("u{n}@x", "s{n}", 2, first=7) == [User("u7@x", "s7"),
                                                           User("u8@x", "s8")]


def test_the_corpus_is_deterministic_and_mail_like() -> None:
    messages = corpus.corpus()
    assert messages == corpus.corpus()
    assert messages != corpus.corpus(seed=2)
    sizes = [len(m) for m in messages]
    assert min(sizes) >= 1024
    assert max(sizes) <= 200 * 1024
    assert 34_000 < sum(sizes) / len(sizes) < 38_000
    for message in messages:
        assert message.endswith(b"\r\n")
        assert re.search(rb"(?<!\r)\n|\r(?!\n)", message) is None
        assert b"\r\nBcc:" not in message
    text = b"".join(messages)
    assert b"\r\n.\r\n" in text  # a lone dot line, which the server must stuff
    assert b"multipart/mixed" in text
    assert b"multipart/alternative" in text


def test_command_line_choices() -> None:
    args = parser().parse_args(["download", "--tls", "tls", "--user-pattern", "u{n}@x",
                                "--password-pattern", "p", "--user-count", "3", "-c", "1",
                                "-p", "4"])
    config = config_from(args)
    assert (config.port, config.processes, len(config.users)) == (995, 1, 3)
    idle = config_from(parser().parse_args(["idle", "--user-pattern", "u", "-n", "10000",
                                            "-p", "4", "--port", "1"]))
    assert (idle.processes, idle.sessions, idle.port) == (4, 10000, 1)


def test_idle_sessions_spread_or_grouped_over_users() -> None:
    users = tuple(pattern_users("u{n}", "p", 4))
    spread = RunConfig("idle", "h", 1, users=users, sessions=10)
    grouped = RunConfig("idle", "h", 1, users=users, sessions=10, grouped=True)
    assert [idle_user(k, spread) for k in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert [idle_user(k, grouped) for k in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
