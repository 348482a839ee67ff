"""The AUTHORIZATION side of a :class:`~pop3d.session.Session`: USER/PASS, AUTH and its SASL
exchange, the refusals and their delay, the budgets before login, and logging in.

USER/PASS and every SASL mechanism end in one :meth:`LoginCommands._authenticate`, which hands
the worker an :class:`Authenticate` effect; its outcome comes back through
``Session.login_done``, either to :meth:`LoginCommands._log_in` (the per-user registry slot and
the maildrop snapshot) or to :meth:`LoginCommands._refuse`.  A refusal is answered only once
``failure_delay`` has passed since the attempt began, so slow and fast failures look alike, and
the connection closes after :data:`MAX_FAILED_LOGINS` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from pop3d.errors import InUse, Pop3dError
from pop3d.ports import Credentials, Metrics, Principal, Registry
from pop3d.protocol import Connection, LocalProtocolError, SaslExchange, SaslLogin
from pop3d.protocol import events as ev
from pop3d.protocol.states import SASL_MECHANISMS
from pop3d.session.mailbox import Mailbox
from pop3d.session.values import Authenticate, LoginGrant, Peer, Send, SessionSettings

log = logging.getLogger("pop3d.session.core")  # one name for the whole session in the log

AUTHZID_REFUSED = "[AUTH] Authorization identity must match the login"
MAX_FAILED_LOGINS = 3  # per connection, then close (the rate limiter counts per address)
TLS_REQUIRED = "[AUTH] Plaintext login refused: TLS required"  # RFC 2595 §2.1, RFC 3206 [AUTH]

HandlerResult = ev.Reply | Authenticate | Send  # a reply, or an effect for the worker


class LoginCommands:
    """The login commands of :class:`~pop3d.session.Session`, which owns the state below."""

    _settings: SessionSettings
    _peer: Peer
    _id: str
    _registry: Registry
    _metrics: Metrics
    _clock: Callable[[], float]
    _conn: Connection
    _tls: bool
    _username: str | None
    _sasl: SaslExchange | None
    _attempt: Credentials | None
    _attempt_started: float
    _failed_logins: int
    _bad_commands: int
    _principal: Principal | None
    _box: Mailbox | None
    _end_reason: str | None
    _send: Callable[[bytes | Iterator[bytes], float], Send]  # the Session's: how replies leave

    def _plaintext_ok(self) -> bool:
        return self._tls or self._peer.plaintext_ok

    def _require_plaintext_ok(self) -> None:
        if not self._plaintext_ok():
            raise Pop3dError(reply=TLS_REQUIRED)

    def _user(self, event: ev.User) -> ev.Reply:
        self._require_plaintext_ok()
        self._username = event.name
        return ev.Ok("Send PASS")

    def _pass(self, event: ev.Pass) -> HandlerResult:
        self._require_plaintext_ok()
        username, self._username = self._username, None
        if username is None:
            return self._strike("Send USER first")
        return self._authenticate(username, event.password, "USER")

    def _auth(self, event: ev.Auth) -> HandlerResult:
        if event.mechanism is None:  # RFC 1734 style probe, still sent by old Outlook
            offered = SASL_MECHANISMS if self._plaintext_ok() else ()
            return ev.MultiLine("Supported mechanisms follow", offered)
        if event.mechanism not in SASL_MECHANISMS:
            return ev.Err("Unsupported authentication mechanism")
        self._require_plaintext_ok()
        self._sasl = SaslExchange(event.mechanism)
        return self._sasl_result(self._sasl.start(event.initial_response))

    def _sasl_response(self, event: ev.SaslResponse) -> HandlerResult:
        if self._sasl is None:
            raise LocalProtocolError("a SASL response outside an AUTH exchange")
        return self._sasl_result(self._sasl.step(event.data))

    def _sasl_cancel(self, event: ev.SaslCancel) -> ev.Reply:
        return ev.Err("Authentication cancelled")

    def _sasl_result(self, result: ev.Continue | ev.Err | SaslLogin) -> HandlerResult:
        if not isinstance(result, SaslLogin):
            return result
        # RFC 4616 §2: acting as another identity is a policy decision; ours is "never".
        if result.authzid and result.authzid.lower() != result.username.lower():
            self._metrics.incr("auth.attempts")
            return self._refuse(ev.Err(AUTHZID_REFUSED))
        return self._authenticate(result.username, result.password, result.mechanism)

    def _authenticate(self, username: str, password: str, mechanism: str) -> Authenticate:
        self._attempt = Credentials(username, password, self._peer.client_ip, mechanism)
        self._attempt_started = self._clock()
        self._metrics.incr("auth.attempts")
        return Authenticate(self._attempt, self._settings.max_messages)

    def _refuse(self, reply: ev.Err) -> Send:
        """A failed login: answered once ``failure_delay`` has passed since the attempt began
        (a floor, so slow and fast failures look alike), and the connection closed after
        MAX_FAILED_LOGINS of them."""
        self._metrics.incr("auth.failures")
        self._failed_logins += 1
        if self._failed_logins >= MAX_FAILED_LOGINS:
            self._end_reason = "too many failed logins"
        elapsed = self._clock() - self._attempt_started if self._attempt_started else 0.0
        self._attempt_started = 0.0
        delay = max(0.0, self._settings.failure_delay - elapsed)
        return self._send(self._conn.send(reply), delay)

    def _log_in(self, grant: LoginGrant, mechanism: str) -> ev.Reply:
        principal = grant.principal
        limit = self._settings.max_connections_per_user
        if not self._registry.acquire(principal.user_id, self._id, limit):
            self._metrics.incr("in_use")
            return ev.Err(InUse.reply)
        self._principal, self._box = principal, Mailbox(principal.user_id, grant.messages)
        log.info(
            "login user=%s method=%s ip=%s tls=%s session=%s",
            principal.address, mechanism, self._peer.client_ip,
            "yes" if self._tls else "no", self._id,
        )  # fmt: skip
        count, size = self._box.totals()
        return ev.Ok(f"Logged in, {count} messages ({size} octets)")

    def _strike(self, reason: str) -> ev.Err:
        """A bad command before login, counted against ``max_bad_commands`` in a row."""
        if self._box is not None:
            return ev.Err(reason)  # after login the budget no longer applies
        self._bad_commands += 1
        if self._bad_commands < self._settings.max_bad_commands:
            return ev.Err(reason)
        self._end_reason = "too many bad commands"
        return ev.Err(f"{reason}; too many bad commands, closing connection")


def loggable_user(username: str) -> str:
    """A login name fit for the log: an address as given, anything else (a key pasted into the
    wrong field, say) hidden."""
    if "@" in username and len(username) <= 254 and username.isprintable() and " " not in username:
        return repr(username)
    return "(not an address)"
