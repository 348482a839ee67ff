"""Every tests/transcripts/*.pop3 conversation, fed whole, byte by byte and pipelined."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pop3d.protocol.parser import COMMANDS

from .transcript import (
    MODES,
    Item,
    Line,
    Transcript,
    check_outcome,
    parse_transcript,
    run_transcript,
)

TRANSCRIPT_DIR = Path(__file__).resolve().parent.parent / "transcripts"
TRANSCRIPTS = sorted(TRANSCRIPT_DIR.glob("*.pop3"))


def _render(items: list[Item]) -> list[str]:
    """Items in transcript syntax, so a mismatch reads like the file."""
    rendered = []
    for item in items:
        if isinstance(item, Line):
            prefix = f"DELAY {item.delay} " if item.delay else ""
            rendered.append(f"{prefix}S: {item.text.decode('latin-1')}")
        else:
            rendered.append(item)
    return rendered


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda path: path.stem)
def test_transcript(path: Path, mode: str) -> None:
    script = parse_transcript(path)
    harness = run_transcript(script, mode)
    assert _render(harness.items) == _render(script.expected)
    check_outcome(script, harness)


def _all_scripts() -> list[Transcript]:
    return [parse_transcript(path) for path in TRANSCRIPTS]


def test_every_command_has_a_transcript() -> None:
    sent = b"".join(line for script in _all_scripts() for seg in script.segments for line in seg)
    keywords = {match.upper() for match in re.findall(rb"^([A-Za-z0-9]+)", sent, re.MULTILINE)}
    assert set(COMMANDS) <= keywords


@pytest.mark.parametrize(
    "needle",
    [b"[AUTH]", b"[SYS/TEMP]", b"[SYS/PERM]", b"[IN-USE]", b"TLS required", b"Unknown command",
     b"Internal server error", b"Line too long", b"not allowed in the", b"too many bad commands"],
)  # fmt: skip
def test_every_response_code_has_a_transcript(needle: bytes) -> None:
    replies = [item.text for s in _all_scripts() for item in s.expected if isinstance(item, Line)]
    assert any(reply.startswith(b"-ERR") and needle in reply for reply in replies)


def test_transcripts_exist() -> None:
    assert len(TRANSCRIPTS) >= 30
