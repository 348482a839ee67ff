"""Drive a Session over in-memory fakes, and run ``tests/transcripts/*.pop3`` files through it.

Transcript format, one directive per line (blank lines and lines starting with ``#`` are
ignored):

``C: text``
    A client line; CRLF is appended.
``C= literal``
    Client bytes given exactly as a Python bytes/str literal, line end included
    (``C= b"STAT\\n"`` sends a bare LF, ``C= b"PASS \\xff\\r\\n"`` invalid UTF-8).
``S: text``
    One expected server line, without its CRLF (``S:`` alone is an empty line).  Multi-line
    responses are simply several ``S:`` lines, dot-stuffing and the final ``.`` included.
``S= literal``
    One expected server line as a Python string literal, for trailing spaces: ``S= "+ "``.
``DELAY seconds``
    The next ``S:`` line must arrive in a Send delayed by this much (auth failures); every
    other line must arrive undelayed.
``CLOSE``
    The server closes the connection after the output so far.
``TLS``
    The server answers with StartTls after the output so far; the runner completes the
    handshake (``session.tls_started()``).
``@peer key=value ...``
    Peer flags: ``tls``, ``plaintext_ok``, ``stls`` (yes/no) and ``ip``.  Default: no TLS,
    plaintext login allowed (a trusted network), STLS available, ip 192.0.2.7.
``@setting key=value ...``
    SessionSettings fields (``max_bad_commands=3``, ``line_length=40``, ...).
``@password literal``
    alice@example.com's password as a Python string literal (default ``"secret"``).
``@message uidl literal``
    A message of alice's maildrop, content as a Python bytes literal; the first ``@message``
    replaces the default maildrop (see DEFAULT_MAILDROP).  Email ids are e1, e2, ... in order.
``@mailbox empty``
    alice's maildrop has no messages.
``@fail method error``
    Make a fake fail: method is a Maildrop, Registry or Authenticator method
    (``snapshot``, ``open_message``, ``open_top``, ``mark_read``, ``delete``, ``acquire``,
    ``release``, ``authenticate``); error is one of ERRORS.
``@registry full``
    alice already has max_connections_per_user other sessions.
``= deleted|read e1 e2 ...`` / ``= deleted|read none``
    After the run: the email ids deleted by UPDATE / marked read, in order.
``= sessions n``
    After the run: alice's live registry slots.
``= metric name n``
    After the run: the value of a counter.
``= auth_calls n``
    After the run: how many times the authenticator was asked.

Every transcript is run three ways (see MODES): each client line fed whole, one byte at a
time, and all client lines pipelined in one buffer (split only at TLS handshakes, since a
client cannot send ciphertext before the handshake).  The server output must be identical.
Before the run ``session.greeting()`` is sent; after it ``session.close()`` is called.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pop3d.errors import (
    AuthFailed,
    BackendUnavailable,
    InUse,
    MessageGone,
    StorePermanentError,
    StoreUnavailable,
)
from pop3d.ports import Principal
from pop3d.session import (
    Authenticate,
    LoginGrant,
    Peer,
    Send,
    Services,
    Session,
    SessionSettings,
    StartTls,
)

from .fakes import (
    FakeAuthenticator,
    FakeClock,
    FakeMaildrop,
    FakeMetrics,
    FakeRegistry,
    StoredMessage,
)

USER_ID = "u-alice"
ADDRESS = "alice@example.com"
SERVER_NAME = "pop.example.test"

DEFAULT_MAILDROP = [
    StoredMessage(
        "e1",
        "uid-0001",
        b"From: bob@example.com\r\nTo: alice@example.com\r\nSubject: Hello\r\n\r\n"
        b"Hi Alice,\r\nlunch at noon?\r\nBob\r\n",
    ),
    StoredMessage(
        "e2",
        "uid-0002",
        b"From: carol@example.com\r\nSubject: Dots\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\nthe end\r\n",
    ),
    StoredMessage("e3", "uid-0003", b"Subject: Short\r\n\r\nok\r\n"),
]

ERRORS: dict[str, type[BaseException]] = {
    "temp": StoreUnavailable,  # [SYS/TEMP]
    "backend": BackendUnavailable,  # [SYS/TEMP]
    "perm": StorePermanentError,  # [SYS/PERM]
    "gone": MessageGone,
    "auth": AuthFailed,  # [AUTH]
    "in-use": InUse,  # [IN-USE]
    "bug": RuntimeError,  # an unexpected exception
}

MODES = ("whole", "bytewise", "pipelined")


@dataclass(frozen=True)
class Line:
    """One line of server output with the circumstances of its delivery."""

    text: bytes
    delay: float = 0.0


CLOSE = "CLOSE"
TLS = "TLS"
Item = Line | str  # a line, CLOSE or TLS


class Harness:
    """A Session over fakes, carrying out its effects the way the worker would."""

    def __init__(
        self,
        settings: SessionSettings | None = None,
        peer: Peer | None = None,
        mailbox: list[StoredMessage] | None = None,
        password: str = "secret",
    ) -> None:
        messages = DEFAULT_MAILDROP if mailbox is None else mailbox
        self.maildrop = FakeMaildrop({USER_ID: list(messages)})
        self.registry = FakeRegistry()
        self.metrics = FakeMetrics()
        self.clock = FakeClock()
        self.authenticator = FakeAuthenticator()
        self.principal: Principal = self.authenticator.add_user(ADDRESS, password, USER_ID)
        self.settings = settings or SessionSettings(server_name=SERVER_NAME)
        self.peer = peer or Peer("192.0.2.7", tls=False, plaintext_ok=True, stls_available=True)
        self.complete_tls = True
        self.items: list[Item] = []
        self.effects: list[Any] = []
        self.payloads: list[bytes] = []  # the bytes of each Send and StartTls, drained
        self.session = self._new_session()

    def _new_session(self) -> Session:
        services = Services(self.maildrop, self.registry, self.metrics, clock=self.clock)
        session = Session(self.settings, services, self.peer, session_id="test:1")
        self._record(session.greeting(), 0.0)
        return session

    def feed(self, data: bytes) -> None:
        self.session.feed(data)
        self.pump()

    def pump(self) -> None:
        while (effect := self.session.next_effect()) is not None:
            self.carry_out(effect)

    def carry_out(self, effect: Send | StartTls | Authenticate) -> None:
        self.effects.append(effect)
        if isinstance(effect, Authenticate):
            self.carry_out(self.session.login_done(self._authenticate(effect)))
        elif isinstance(effect, StartTls):
            self.payloads.append(effect.data)
            self._record(effect.data, 0.0)
            self.items.append(TLS)
            if self.complete_tls:
                self.session.tls_started()
        else:
            data = effect.data if isinstance(effect.data, bytes) else b"".join(effect.data)
            self.payloads.append(data)
            self._record(data, effect.delay)
            if effect.close:
                self.items.append(CLOSE)

    def _authenticate(self, effect: Authenticate) -> LoginGrant | Exception:
        """What the worker's pool thread does: ``Authenticate.run``, its error handed over."""
        try:
            return effect.run(self.authenticator, self.maildrop)
        except Exception as error:
            return error

    def grant(self) -> LoginGrant:
        """alice's successful login, as ``Authenticate.run`` would return it."""
        return LoginGrant(self.principal, self.maildrop.snapshot(USER_ID, 10000))

    def _record(self, data: bytes, delay: float) -> None:
        if not data:
            return
        if not data.endswith(b"\r\n"):
            raise AssertionError(f"output does not end with CRLF: {data[-40:]!r}")
        for text in data[:-2].split(b"\r\n"):
            self.items.append(Line(text, delay))

    def output(self) -> bytes:
        return b"".join(item.text + b"\r\n" for item in self.items if isinstance(item, Line))


# -- transcript files ---------------------------------------------------------------------------


@dataclass
class Transcript:
    name: str
    segments: list[list[bytes]] = field(default_factory=lambda: [[]])  # client lines per TLS
    expected: list[Item] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    peer: dict[str, Any] = field(default_factory=dict)
    password: str = "secret"
    mailbox: list[StoredMessage] | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    registry_full: bool = False
    checks: list[list[str]] = field(default_factory=list)


def _literal(text: str) -> bytes:
    value = ast.literal_eval(text)
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _value(text: str) -> Any:
    if text in ("yes", "no"):
        return text == "yes"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _flags(words: list[str]) -> dict[str, Any]:
    return {key: _value(value) for key, _, value in (word.partition("=") for word in words)}


def parse_transcript(path: Path) -> Transcript:
    script = Transcript(path.stem)
    delay = 0.0
    for number, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        try:
            delay = _parse_line(script, raw, delay)
        except (ValueError, SyntaxError, KeyError) as error:
            raise ValueError(f"{path.name}:{number}: {error}: {raw!r}") from error
    return script


def _parse_line(script: Transcript, raw: str, delay: float) -> float:
    tag, rest = raw[:2], raw[3:] if raw[2:3] == " " else raw[2:]
    if tag == "C:":
        script.segments[-1].append(rest.encode("utf-8") + b"\r\n")
    elif tag == "C=":
        script.segments[-1].append(_literal(rest))
    elif tag in ("S:", "S="):
        text = rest.encode("utf-8") if tag == "S:" else _literal(rest)
        script.expected.append(Line(text, delay))
        return 0.0
    elif raw.startswith("DELAY "):
        return float(raw.split()[1])
    elif raw in (CLOSE, TLS):
        script.expected.append(raw)
        if raw == TLS:
            script.segments.append([])
    elif raw.startswith(("@", "= ")):
        _parse_directive(script, raw)
    else:
        raise ValueError("unknown directive")
    return delay


def _parse_directive(script: Transcript, raw: str) -> None:
    words = raw.split()
    if words[0] == "=":
        script.checks.append(words[1:])
    elif words[0] == "@peer":
        script.peer.update(_flags(words[1:]))
    elif words[0] == "@setting":
        script.settings.update(_flags(words[1:]))
    elif words[0] == "@password":
        script.password = _literal(raw.split(" ", 1)[1]).decode("utf-8")
    elif words[0] == "@message":
        script.mailbox = script.mailbox or []
        number = len(script.mailbox) + 1
        content = _literal(raw.split(" ", 2)[2])
        script.mailbox.append(StoredMessage(f"e{number}", words[1], content))
    elif words[0] == "@fail":
        if words[2] not in ERRORS:
            raise ValueError(f"unknown error {words[2]!r}")
        script.failures.append((words[1], words[2]))
    elif words[0] == "@mailbox" and words[1:] == ["empty"]:
        script.mailbox = []
    elif words[0] == "@registry" and words[1:] == ["full"]:
        script.registry_full = True
    else:
        raise ValueError("unknown setup directive")


def build_harness(script: Transcript) -> Harness:
    settings = replace(SessionSettings(server_name=SERVER_NAME), **script.settings)
    flags = {"tls": False, "plaintext_ok": True, "stls": True, "ip": "192.0.2.7"}
    flags.update(script.peer)
    peer = Peer(flags["ip"], flags["tls"], flags["plaintext_ok"], flags["stls"])
    harness = Harness(settings, peer, script.mailbox, script.password)
    for method, error in script.failures:
        target = _owner(harness, method)
        target.fail(method, ERRORS[error]())
    if script.registry_full:
        harness.registry.fill(USER_ID, settings.max_connections_per_user)
    return harness


def _owner(harness: Harness, method: str) -> Any:
    for fake in (harness.maildrop, harness.registry, harness.authenticator):
        if hasattr(fake, method):
            return fake
    raise ValueError(f"no fake has a method {method!r}")


def _chunks(script: Transcript, mode: str) -> Iterator[bytes]:
    for segment in script.segments:
        if mode == "whole":
            yield from segment
        elif mode == "bytewise":
            for line in segment:
                yield from (line[i : i + 1] for i in range(len(line)))
        elif segment:
            yield b"".join(segment)


def run_transcript(script: Transcript, mode: str) -> Harness:
    harness = build_harness(script)
    for chunk in _chunks(script, mode):
        harness.feed(chunk)
    harness.session.close("end of transcript")
    return harness


def check_outcome(script: Transcript, harness: Harness) -> None:
    for check in script.checks:
        what, values = check[0], check[1:]
        if what in ("deleted", "read"):
            recorded = harness.maildrop.deleted if what == "deleted" else harness.maildrop.read
            assert recorded == ([] if values == ["none"] else values), f"{what}: {recorded}"
        elif what == "sessions":
            held = harness.registry.sessions.get(USER_ID, set()) - _others(harness)
            assert len(held) == int(values[0]), f"registry holds {held}"
        elif what == "metric":
            count = harness.metrics.counters[values[0]]
            assert count == int(values[1]), f"metric {values[0]} is {count}"
        elif what == "auth_calls":
            assert len(harness.authenticator.calls) == int(values[0])
        else:
            raise ValueError(f"unknown check {check}")


def _others(harness: Harness) -> set[str]:
    return {s for s in harness.registry.sessions.get(USER_ID, set()) if s.startswith("other:")}
