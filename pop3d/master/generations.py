"""Configuration generations: what the master serves, and a reload from one to the next.

A generation is a configuration, the listeners it names and how many workers it wants.  HUP
loads the file again as generation N+1: it checks that the master's user can read what the new
workers will read (:mod:`~pop3d.master.access`), binds only the addresses N did not listen on and
reopens the logs; the arbiter then spawns N+1's workers.  Once they all serve,
:meth:`Generations.complete` closes the listeners only N used; if one cannot boot,
:meth:`Generations.abort` goes back to N, closing what N+1 added.  The listeners the two share
stay open throughout, so a reload refuses no connection.  :attr:`Generations.result` is what
``pop3d reload`` reads in the status file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from pop3d import config as config_module
from pop3d import log as log_module
from pop3d.config import Config, ConfigError
from pop3d.handoff import Listener
from pop3d.master import access
from pop3d.master.listeners import BindError, bind_all, close_all, unused
from pop3d.master.plan import adjust_target, restart_only_changes, worker_count

log = logging.getLogger("pop3d.master")  # one name for the whole master in the log


@dataclass(frozen=True, slots=True)
class Generation:
    config: Config
    listeners: list[Listener]
    number: int
    target: int  # workers wanted: server.workers, then TTIN/TTOU


@dataclass(frozen=True, slots=True)
class Reload:
    """A reload whose workers have not all booted yet, and what to go back to if they fail."""

    serial: int
    previous: Generation
    added: list[Listener]  # bound for the new generation; closed if it is abandoned


class Generations:
    """The generation served, the reload in progress (if any) and the last reload's outcome."""

    def __init__(self, config: Config) -> None:
        self.current = Generation(config, [], 1, worker_count(config.server.workers,
                                                              os.cpu_count()))
        self.reload: Reload | None = None
        self.result: dict[str, Any] = {"serial": 0, "result": None, "error": None}
        self._last_number = 1
        self._again = False
        self._pidfile = config.server.pidfile  # server.pidfile changes only at a restart

    def listen(self, listeners: list[Listener]) -> None:
        """The listeners bound at start-up."""
        self.current = replace(self.current, listeners=listeners)

    def resize(self, delta: int) -> int:
        """TTIN/TTOU: the new number of workers wanted."""
        self.current = replace(self.current, target=adjust_target(self.current.target, delta))
        return self.current.target

    def dropped(self) -> list[Listener]:
        """Listeners of the generation being replaced that the new one does not use."""
        if self.reload is None:
            return []
        return unused(self.reload.previous.listeners, self.current.listeners)

    def held(self) -> list[Listener]:
        """Every listening socket the master holds."""
        return [*self.current.listeners, *self.dropped()]

    def take_again(self) -> bool:
        """Whether a HUP came during the reload that just ended (then reload once more)."""
        again, self._again = self._again, False
        return again

    # a reload, step by step

    def begin(self) -> int | None:
        """A new reload's serial, recorded as pending; None while one is in progress (the HUP
        is remembered: see :meth:`take_again`)."""
        if self.reload is not None:
            log.info("SIGHUP: a reload is in progress; reloading again when it ends")
            self._again = True
            return None
        serial = int(self.result["serial"]) + 1
        self._record(serial, "pending", None)
        return serial

    def load(self, serial: int) -> bool:
        """Read the configuration file again and start the next generation; False, with the
        reason logged and recorded, when it is invalid or cannot be applied."""
        path = self.current.config.path
        log.info("SIGHUP: reloading %s", path)
        try:
            new, warnings = config_module.load(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            return self._fail(serial, "; ".join(str(p) for p in exc.problems))
        for warning in [*warnings, *restart_only_changes(self.current.config, new)]:
            log.warning("reload: %s", warning)
        try:
            access.check(new, access.current_account(), self._pidfile)
        except access.AccessError as exc:
            log.error("reload: %s", exc)
            return self._fail(serial, str(exc))
        return self._apply(serial, new)

    def _apply(self, serial: int, new: Config) -> bool:
        try:
            listeners, added = bind_all(new.server, self.current.listeners)
        except BindError as exc:
            log.error("reload: %s", exc)
            return self._fail(serial, str(exc))
        error = switch_logging(self.current.config, new)
        if error:
            close_all(added)
            log.error("reload: %s", error)
            return self._fail(serial, error)
        self.reload = Reload(serial, self.current, added)
        self._last_number += 1
        target = worker_count(new.server.workers, os.cpu_count())
        self.current = Generation(new, listeners, self._last_number, target)
        for listener in added:
            log.info("reload: listening on %s", listener)
        log.info("reload: generation %d starts %d workers; the others retire once they serve",
                 self.current.number, target)
        return True

    def complete(self) -> None:
        """Every worker of the new generation serves: close what only the old one used."""
        if self.reload is None:
            return
        close_all(self.dropped())
        serial, self.reload = self.reload.serial, None
        self._record(serial, "ok", None)
        log.info("reload complete: generation %d serving with %d workers",
                 self.current.number, self.current.target)

    def abort(self, reason: str) -> None:
        """The new generation cannot serve: back to the previous one (its workers never left)."""
        reload, self.reload = self.reload, None
        if reload is None:
            return
        close_all(reload.added)
        abandoned, self.current = self.current, reload.previous
        self._restore_logging(abandoned.config)
        message = f"generation {abandoned.number} abandoned, generation " \
                  f"{self.current.number} keeps serving: {reason}"
        log.error("reload: %s", message)
        self._fail(reload.serial, message)

    def _restore_logging(self, abandoned: Config) -> None:
        """Log as the generation served again does; never raises (the new log stays if the old
        one cannot be opened again)."""
        error = switch_logging(abandoned, self.current.config)
        if error:
            log.error("reload: %s; still logging to %s", error,
                      abandoned.logging.file or "stderr")

    def _fail(self, serial: int, error: str) -> bool:
        self._record(serial, "failed", error)
        return False

    def _record(self, serial: int, result: str, error: str | None) -> None:
        self.result = {"serial": serial, "result": result, "error": error, "time": time.time()}


def switch_logging(old: Config, new: Config) -> str:
    """Log as ``new`` says, coming from ``old``; why that failed ("" when it did not).

    The same file is reopened (as USR1 does), which never fails: the file in use stays if the
    path cannot be opened.  Another file must open, or the logging stays as it was."""
    if new.logging.file == old.logging.file:
        log_module.reopen()
        log_module.set_level(new.logging.level)
        return ""
    try:
        log_module.setup(new.logging.level, new.logging.file)
    except OSError as exc:
        return f"cannot open the log file {new.logging.file}: {exc.strerror or exc}"
    return ""
