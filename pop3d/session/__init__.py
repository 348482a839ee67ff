"""POP3 semantics over the ports: one :class:`Session` per client connection.

See :mod:`pop3d.session.core` for the theory of operation and docs/INTERNALS.md for the contract
with the worker.
"""

from pop3d.session.core import Session
from pop3d.session.mailbox import Mailbox
from pop3d.session.values import (
    Authenticate,
    Await,
    Effect,
    LoginGrant,
    Peer,
    Send,
    Services,
    SessionCounters,
    SessionSettings,
    StartTls,
)

__all__ = [
    "Authenticate",
    "Await",
    "Effect",
    "LoginGrant",
    "Mailbox",
    "Peer",
    "Send",
    "Services",
    "Session",
    "SessionCounters",
    "SessionSettings",
    "StartTls",
]
