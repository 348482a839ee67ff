"""What a command's span records: a bounded name per command, and the attributes set once the
command has been handled (the session id, the user after login, the message size for
RETR/TOP, the reply's status).  Used only when the session was given a tracer."""

from __future__ import annotations

from pop3d.ports import Principal, Span
from pop3d.protocol import events as ev
from pop3d.session.authorization import Refusal
from pop3d.session.mailbox import Mailbox
from pop3d.session.values import Authenticate, Await

# One name per event type, never from client input: a span name is an index in every backend.
_NAMES: dict[type[ev.Event], str] = {}


def span_name(event: ev.Event) -> str:
    kind = type(event)
    name = _NAMES.get(kind)
    if name is None:
        name = _NAMES[kind] = f"pop3.{kind.__name__.lower()}"
    return name


def describe(span: Span, *, session_id: str, principal: Principal | None, box: Mailbox | None,
             event: ev.Event, result: object) -> None:
    span.set_attribute("pop3.session_id", session_id)
    if principal is not None:
        span.set_attribute("pop3.user_id", principal.user_id)
    status = reply_status(result)
    span.set_attribute("pop3.status", status)
    if status != "-ERR" and box is not None and isinstance(event, ev.Retr | ev.Top):
        span.set_attribute("pop3.message.octets", box.get(event.msg).size)


def reply_status(result: object) -> str:
    """+OK, -ERR, "login" for a login handed to the thread pool (its own span there), or
    "await" for a command answered once the store has replied (RETR, TOP, QUIT)."""
    if isinstance(result, Authenticate):
        return "login"
    if isinstance(result, Await):
        return "await"
    if isinstance(result, ev.Err | Refusal):
        return "-ERR"
    return "+OK"  # a reply, a body, or a SASL challenge
