"""The man pages keep up with the code: pop3d.toml(5) documents every option of every section,
pop3d(8) every command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from pop3d.cli import main
from pop3d.config import SECTIONS

MAN = Path(__file__).resolve().parents[2] / "docs" / "man"


def documented_options(page: str) -> dict[str, set[str]]:
    """``.SS [section]`` -> the names of its entries (``.TP`` then ``.BR name ", " other ...``)."""
    options: dict[str, set[str]] = {}
    section, previous = "", ""
    for line in page.splitlines():
        header = re.match(r"^\.SS \[(\w+)\]$", line)
        if header:
            section = header.group(1)
            options[section] = set()
        elif section and previous == ".TP" and line.startswith(".BR "):
            names = line[4:line.index(" (")]
            options[section] |= set(re.findall(r"\b[a-z][a-z0-9_]*\b", names))
        previous = line
    return options


def commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names += commands(command, f"{prefix}{name} ")
        else:
            names.append(prefix + name)
    return names


def test_pop3d_toml_5_documents_every_option() -> None:
    documented = documented_options((MAN / "pop3d.toml.5").read_text())
    expected = {section: {field.name for field in dataclasses.fields(kind)}
                for section, kind in SECTIONS.items()}
    assert documented == expected


def test_pop3d_8_documents_every_command() -> None:
    page = (MAN / "pop3d.8").read_text().replace("\\-", "-")
    names = commands(main)
    assert "key revoke" in names
    described = page.split(".SH OPTIONS")[0]  # the synopsis and the COMMANDS section
    missing = [name for name in names
               if not re.search(rf"\b{re.escape(name.split()[-1])}\b", described)]
    assert missing == []
