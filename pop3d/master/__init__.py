"""The master process: listening sockets, worker processes, signals; it never speaks POP3.

Theory of operation
-------------------
:meth:`Master.start` does what happens once, as the invoking user (usually root): check that
the service user can open every file it will need later (:mod:`~pop3d.master.access`), take the
pidfile, bind every ``listen``/``tls_listen`` address, raise RLIMIT_NOFILE, drop privileges
(:mod:`~pop3d.master.startup`).  :meth:`Master.run` is then a loop in the manner of gunicorn's
arbiter (:mod:`~pop3d.master.arbiter`).  Each turn it

1. waits up to a second for a signal (handlers only append to a queue; ``signal.set_wakeup_fd``
   makes the wait return at once: :mod:`~pop3d.master.signals`);
2. acts on the queued signals (``_on_hup``, ``_on_term``, ...);
3. reaps dead workers, logging each death with its cause (:mod:`~pop3d.master.exits`);
4. SIGKILLs workers whose heartbeat is older than ``worker_timeout``, and workers still
   running after their stop deadline;
5. asks :func:`plan_workers` how many workers to spawn and which to retire, and does it,
   respecting the respawn back-off;
6. tells systemd and the status file what changed (:mod:`~pop3d.master.status`), and the
   caller's ``on_status`` the session and worker counts (statsd gauges).

Every worker belongs to a configuration *generation* (:mod:`~pop3d.master.generations`).  HUP
loads the configuration as a new generation; the plan spawns workers for it and, once all of them
have beaten their heartbeat, retires (TERM) the previous generation, whose workers drain.  The
listening sockets belong to the master and outlive generations, so a reload refuses no
connection.  A worker that cannot boot makes the master stop (or abandon the reload) instead of
fork-looping.  The decisions -- how many workers, which to retire, how long to back off, when
deaths mean a crash loop, when a worker is stale -- are pure functions in
:mod:`~pop3d.master.plan`, tested without forking.
"""

from __future__ import annotations

from pop3d.master.arbiter import Master
from pop3d.master.exits import EXIT_CRASH_LOOP, EXIT_STARTUP_FAILED, describe_exit
from pop3d.master.plan import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_MAX_SECONDS,
    BOOT_POLL_SECONDS,
    EARLY_DEATH_SECONDS,
    FAST_STOP_SECONDS,
    KILL_SLACK_SECONDS,
    MAX_EARLY_DEATHS,
    TICK_SECONDS,
    Backoff,
    Plan,
    WorkerView,
    adjust_target,
    crash_looping,
    generation_serving,
    plan_workers,
    record_death,
    record_health,
    report_due,
    respawn_delay,
    restart_only_changes,
    worker_count,
)
from pop3d.master.signals import HANDLED_SIGNALS
from pop3d.master.startup import StartError, drop_privileges
from pop3d.master.workers import run_worker

__all__ = [
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "BOOT_POLL_SECONDS",
    "EARLY_DEATH_SECONDS",
    "EXIT_CRASH_LOOP",
    "EXIT_STARTUP_FAILED",
    "FAST_STOP_SECONDS",
    "HANDLED_SIGNALS",
    "KILL_SLACK_SECONDS",
    "MAX_EARLY_DEATHS",
    "TICK_SECONDS",
    "Backoff",
    "Master",
    "Plan",
    "StartError",
    "WorkerView",
    "adjust_target",
    "crash_looping",
    "describe_exit",
    "drop_privileges",
    "generation_serving",
    "plan_workers",
    "record_death",
    "record_health",
    "report_due",
    "respawn_delay",
    "restart_only_changes",
    "run_worker",
    "worker_count",
]
