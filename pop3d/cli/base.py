"""The ``pop3d`` command group, the ``-c/--config`` option, ``check-config``, and what the
commands share (loading the configuration, failing with one line, the wait limits)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from pop3d import __version__, config
from pop3d.cli.sysexits import EX_CONFIG
from pop3d.config import ConfigError, ConfigProblem

F = TypeVar("F", bound=Callable[..., Any])

EXIT_TIMEOUT = 1  # the server did not get there in time (`stop`, `reload`, `start --daemon`)
WAIT_MARGIN_SECONDS = 10.0  # beyond the server's own timeouts, for `stop`, `reload`, `--daemon`


@click.group()
@click.version_option(__version__, prog_name="pop3d")
def main() -> None:
    """pop3d: a POP3 server for mail kept in PostgreSQL."""


def config_option(func: F) -> F:
    """-c/--config FILE, defaulting to $POP3D_CONFIG, then /etc/pop3d.toml."""
    option = click.option(
        "-c", "--config", "config_path", metavar="FILE", default=None,
        help=f"configuration file (default: $POP3D_CONFIG or {config.DEFAULT_PATH})",
    )
    return option(func)


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, never a traceback, and a non-zero exit."""
    click.echo(f"pop3d: {message}", err=True)
    sys.exit(code)


def load_config(config_path: str | None, *, quiet: bool = False,
                check_files: bool = True) -> config.Config:
    """The validated configuration, or every problem on stderr and exit 78 (EX_CONFIG)."""
    path = config.resolve_path(config_path)
    try:
        loaded, warnings = config.load(path, check_files=check_files)
    except ConfigError as exc:
        _echo_problems(exc.problems, "error")
        sys.exit(EX_CONFIG)
    if not quiet:
        _echo_problems(warnings, "warning")
    return loaded


def _echo_problems(problems: list[ConfigProblem], kind: str) -> None:
    for problem in problems:
        click.echo(f"{kind}: {problem}", err=True)


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration: print `ok`, or every error with file, key and reason."""
    load_config(config_path)
    click.echo("ok")
