"""Drive a Session over in-memory fakes through a real channel, and run the
``tests/transcripts/*.pop3`` files through it.

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
    The server starts TLS after the output so far; the runner's client completes the
    handshake, and later client lines go over TLS.
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
    Make a fake fail: method is a Maildrop, Registry or Authenticator method (``snapshot``,
    ``open_message``, ``open_top``, ``acquire``, ``release``, ``authenticate``) or ``delete``
    (the deletions of QUIT's update); error is one of ERRORS.
``@registry full``
    alice already has max_connections_per_user other sessions.
``= deleted|read e1 e2 ...`` / ``= deleted|read none``
    After the run (the session closed): the email ids deleted by UPDATE / marked read, in
    order.  Read marks are written at QUIT, or when the session ends without one.
``= sessions n``
    After the run: alice's live registry slots.
``= metric name n``
    After the run: the value of a counter.
``= auth_calls n``
    After the run: how many times the authenticator was asked.

Every transcript is run three ways (see MODES): each client line fed whole, one byte at a
time, and all client lines pipelined in one buffer (split only at TLS handshakes, since a
client cannot send ciphertext before the handshake).  The server output must be identical.
The session sits behind a real channel on a socket pair (``channel_rig.py``), so the channel
code the worker runs carries out every effect: TLS is a real handshake, a delayed reply waits
for the fake clock.  After the run the channel is closed.
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
from pop3d.ports import Chunks, Principal
from pop3d.session import (
    Authenticate,
    Await,
    Effect,
    LoginGrant,
    Peer,
    Send,
    Services,
    Session,
    SessionSettings,
)
from pop3d.worker.channel import Phase

from .channel_rig import Rig
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


class RecordingSession(Session):
    """A Session that remembers every effect it hands out, and the bytes of each reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.effects: list[Effect] = []
        self.payloads: list[bytearray] = []  # one per Send and StartTls, filled as sent

    def next_effect(self) -> Effect | None:
        effect = super().next_effect()
        return None if effect is None else self._recorded(effect)

    def login_done(self, result: LoginGrant | Exception) -> Send:
        send = self._recorded(super().login_done(result))
        assert isinstance(send, Send)
        return send

    def _recorded(self, effect: Effect) -> Effect:
        self.effects.append(effect)
        if isinstance(effect, Authenticate):
            return effect
        if isinstance(effect, Await):  # what it resumes with is an effect too
            resume = effect.resume
            return replace(effect, resume=lambda outcome: self._recorded(resume(outcome)))
        payload = bytearray()
        self.payloads.append(payload)
        if isinstance(effect.data, bytes | bytearray | memoryview):
            payload += effect.data
            return effect
        return replace(effect, data=_tee(effect.data, payload))


def _tee(chunks: Chunks, copy: bytearray) -> Chunks:
    for chunk in chunks:
        if isinstance(chunk, bytes):
            copy += chunk
        yield chunk


class Harness:
    """A Session over fakes, behind a real channel on a socket pair: every effect is carried
    out by the channel code the worker runs (see channel_rig.py)."""

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
        services = Services(self.maildrop, self.registry, self.metrics, clock=self.clock)
        self.session = RecordingSession(self.settings, services, self.peer, session_id="test:1")
        self.items: list[Item] = []
        self._partial = bytearray()  # received, not yet a whole line
        self.rig = Rig(self._open_session, login=self._authenticate, clock=self.clock)
        self._settle()

    @property
    def effects(self) -> list[Effect]:
        return self.session.effects

    @property
    def payloads(self) -> list[bytes]:
        return [bytes(payload) for payload in self.session.payloads]

    def _open_session(self, client_ip: str, *, tls: bool, known_source: bool) -> Session:
        return self.session  # the transcript's peer flags, whatever the channel's

    def feed(self, data: bytes) -> None:
        """Client bytes in; everything the server answers, held replies included, collected."""
        if self.rig.channel.phase is Phase.CLOSED:
            return
        self.rig.send(data)
        self._settle()

    def close(self, reason: str = "end of transcript") -> None:
        self.rig.channel.close(reason)

    def _settle(self) -> None:
        while True:
            self._collect(self.rig.converse())
            if self.rig.channel.phase is Phase.HANDSHAKE:
                self.items.append(TLS)
                self.rig.start_client_tls()
            elif self.rig.host.holds:
                delay = self.rig.release_hold()
                self._collect(self.rig.converse(), delay)
            else:
                return

    def _collect(self, data: bytes, delay: float = 0.0) -> None:
        """Received bytes as lines; the first carries ``delay`` (a held reply is one line)."""
        self._partial += data
        while (end := self._partial.find(b"\r\n")) >= 0:
            self.items.append(Line(bytes(self._partial[:end]), delay))
            delay = 0.0
            del self._partial[: end + 2]
        if self.rig.eof and CLOSE not in self.items:
            if self._partial:
                raise AssertionError(f"output does not end with CRLF: {self._partial[-40:]!r}")
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
        if fake.can_fail(method):
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
    harness.close()
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
