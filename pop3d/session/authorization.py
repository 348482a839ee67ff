"""The AUTHORIZATION state of a session, as its own object: USER/PASS, AUTH and its SASL
exchange, the plaintext policy, the failure delay and the budgets before login.

:class:`Authorization` owns what a client builds up before it is logged in: the name from USER,
the SASL exchange in progress, the attempt being verified and when it began, the failed logins
and the bad commands in a row.  Each command method returns what the session should do: a reply,
an :class:`Authenticate` job for the worker, or a :class:`Refusal` to send after a delay.  USER/PASS
and every SASL mechanism end in one :meth:`Authorization._authenticate`; the job's outcome comes
back through :meth:`Authorization.finish` (the credentials, for logging in) or
:meth:`Authorization.refuse`.  A refusal is answered only once ``failure_delay`` has passed
since the attempt began, so slow and fast failures look alike, and the connection closes after
:data:`MAX_FAILED_LOGINS` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pop3d.errors import Pop3dError
from pop3d.ports import Credentials, Metrics
from pop3d.protocol import LocalProtocolError, SaslExchange, SaslLogin
from pop3d.protocol import events as ev
from pop3d.protocol.states import SASL_MECHANISMS
from pop3d.session.values import Authenticate, Peer, SessionSettings

log = logging.getLogger("pop3d.session.core")  # one name for the whole session in the log

AUTHZID_REFUSED = "[AUTH] Authorization identity must match the login"
MAX_FAILED_LOGINS = 3  # per connection, then close (the rate limiter counts per address)
TLS_REQUIRED = "[AUTH] Plaintext login refused: TLS required"  # RFC 2595 §2.1, RFC 3206 [AUTH]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A ``-ERR`` to send after ``delay`` seconds; ``closing`` names why the connection then
    ends (None: it stays open)."""

    reply: ev.Err
    delay: float = 0.0
    closing: str | None = None


Outcome = ev.Reply | Authenticate | Refusal  # what a login command asks the session to do


class Authorization:
    """One session's state before login, and the login commands that change it."""

    __slots__ = (
        "_attempt", "_attempt_started", "_bad_commands", "_clock", "_failed_logins",
        "_metrics", "_peer", "_sasl", "_settings", "_struck", "_username", "tls",
    )

    def __init__(self, settings: SessionSettings, peer: Peer, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        self._settings, self._peer = settings, peer
        self._metrics, self._clock = metrics, clock
        self.tls = peer.tls
        self._username: str | None = None  # from USER, until PASS
        self._sasl: SaslExchange | None = None
        self._attempt: Credentials | None = None  # while an Authenticate is outstanding
        self._attempt_started = 0.0
        self._failed_logins = 0
        self._bad_commands = 0
        self._struck = False  # the current command was a bad one

    # -- what the session asks -----------------------------------------------------------------

    def plaintext_ok(self) -> bool:
        return self.tls or self._peer.plaintext_ok

    def tls_started(self) -> None:
        """STLS succeeded: a USER given in the clear is forgotten."""
        self.tls = True
        self._username = None

    def sasl_over(self) -> None:
        """The connection left the SASL state (a reply ended the exchange)."""
        self._sasl = None

    def end_command(self) -> None:
        """The budget is for bad commands in a row: a good one starts the count again."""
        if not self._struck:
            self._bad_commands = 0
        self._struck = False

    # -- the commands --------------------------------------------------------------------------

    def user(self, event: ev.User) -> Outcome:
        self._require_plaintext_ok()
        self._username = event.name
        return ev.Ok("Send PASS")

    def pass_(self, event: ev.Pass) -> Outcome:
        self._require_plaintext_ok()
        username, self._username = self._username, None
        if username is None:
            return self.strike("Send USER first")
        return self._authenticate(username, event.password, "USER")

    def auth(self, event: ev.Auth) -> Outcome:
        if event.mechanism is None:  # RFC 1734 style probe, still sent by old Outlook
            offered = SASL_MECHANISMS if self.plaintext_ok() else ()
            return ev.MultiLine("Supported mechanisms follow", offered)
        if event.mechanism not in SASL_MECHANISMS:
            return ev.Err("Unsupported authentication mechanism")
        self._require_plaintext_ok()
        self._sasl = SaslExchange(event.mechanism)
        return self._sasl_result(self._sasl.start(event.initial_response))

    def sasl_response(self, event: ev.SaslResponse) -> Outcome:
        if self._sasl is None:
            raise LocalProtocolError("a SASL response outside an AUTH exchange")
        return self._sasl_result(self._sasl.step(event.data))

    def sasl_cancel(self, event: ev.SaslCancel) -> Outcome:
        return ev.Err("Authentication cancelled")

    def strike(self, reason: str) -> ev.Err | Refusal:
        """A bad command before login, counted against ``max_bad_commands`` in a row."""
        self._struck = True
        self._bad_commands += 1
        if self._bad_commands < self._settings.max_bad_commands:
            return ev.Err(reason)
        return Refusal(ev.Err(f"{reason}; too many bad commands, closing connection"),
                       closing="too many bad commands")

    # -- the outcome of an Authenticate job ----------------------------------------------------

    def finish(self) -> Credentials:
        """The credentials of the attempt whose job just came back; it is over."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            raise LocalProtocolError("a login outcome without an outstanding Authenticate")
        return attempt

    def refuse(self, reply: ev.Err) -> Refusal:
        """A failed login: answered once ``failure_delay`` has passed since the attempt began
        (a floor, so slow and fast failures look alike), the connection closed after
        MAX_FAILED_LOGINS of them."""
        self._metrics.incr("auth.failures")
        self._failed_logins += 1
        closing = "too many failed logins" if self._failed_logins >= MAX_FAILED_LOGINS else None
        elapsed = self._clock() - self._attempt_started if self._attempt_started else 0.0
        self._attempt_started = 0.0
        return Refusal(reply, max(0.0, self._settings.failure_delay - elapsed), closing)

    # -- helpers -------------------------------------------------------------------------------

    def _require_plaintext_ok(self) -> None:
        if not self.plaintext_ok():
            raise Pop3dError(reply=TLS_REQUIRED)

    def _sasl_result(self, result: ev.Continue | ev.Err | SaslLogin) -> Outcome:
        if not isinstance(result, SaslLogin):
            return result
        # RFC 4616 §2: acting as another identity is a policy decision; ours is "never".
        if result.authzid and result.authzid.lower() != result.username.lower():
            self._metrics.incr("auth.attempts")
            return self.refuse(ev.Err(AUTHZID_REFUSED))
        return self._authenticate(result.username, result.password, result.mechanism)

    def _authenticate(self, username: str, password: str, mechanism: str) -> Authenticate:
        self._attempt = Credentials(username, password, self._peer.client_ip, mechanism)
        self._attempt_started = self._clock()
        self._metrics.incr("auth.attempts")
        return Authenticate(self._attempt, self._settings.max_messages)


def loggable_user(username: str) -> str:
    """A login name fit for the log: an address as given, anything else (a key pasted into the
    wrong field, say) hidden."""
    if "@" in username and len(username) <= 254 and username.isprintable() and " " not in username:
        return repr(username)
    return "(not an address)"
