"""The ``pop3d`` command line (click).  This package is the only place that imports click."""

from pop3d.cli import admin, control, security, server  # noqa: F401  (their commands register on `main`)
from pop3d.cli.base import main

__all__ = ["main"]
