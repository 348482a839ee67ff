"""The worker process: one ``selectors`` loop serving many POP3 sessions.

:mod:`~pop3d.worker.loop` is the loop (accepting, timers, signals, the login thread pool);
:mod:`~pop3d.worker.channel` is one client connection (PROXY header, TLS, buffers, the session's
effects); :mod:`~pop3d.worker.wakeup` is how signals and finished jobs wake the loop;
:mod:`~pop3d.worker.backends` builds the store, memcached and statsd clients after ``fork()``.
The master reaches a worker only through :mod:`pop3d.handoff`.
"""

from pop3d.worker.loop import Worker

__all__ = ["Worker"]
