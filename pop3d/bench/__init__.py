"""pop3bench: a load generator for any POP3 server (pop3d, Dovecot, ...).

Standard library only, and nothing else of pop3d: operators can point it at any server.

* :mod:`.replies` -- pure reply framing: status lines, and multi-line bodies scanned with
  ``bytes.find`` over each received buffer (no Python loop per line, no copy of the body).
* :mod:`.stats` -- latency samples, percentiles, error counts; mergeable across processes.
* :mod:`.workloads` -- what one session says, as generators of :class:`~.replies.Step`.
* :mod:`.loop` -- one process's selectors loop driving many sessions (plain, STLS, TLS).
* :mod:`.runner` -- several such processes, their results merged.
* :mod:`.report` and :mod:`.cli` -- the text and JSON reports; the ``pop3bench`` command.
"""
