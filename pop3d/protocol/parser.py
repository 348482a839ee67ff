"""Client bytes -> lines -> events, and the SASL messages inside an AUTH exchange.

Framing accepts CRLF and bare LF (clients that forget the CR still work) and bounds every line,
so a client can never make us buffer an unbounded line.  Keywords are case-insensitive
(RFC 1939 §3); each keyword has one argument rule in :data:`COMMANDS`.  Nothing here raises on
client input: every mistake becomes a :class:`BadCommand` carrying the ``-ERR`` text.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass, field

from pop3d.protocol.events import (
    Auth,
    BadCommand,
    Capa,
    Command,
    Continue,
    Dele,
    Err,
    Event,
    LineTooLong,
    List,
    LocalProtocolError,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    SaslCancel,
    SaslResponse,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
    Utf8,
)
from pop3d.protocol.states import LEGAL, SASL_MECHANISMS, WRONG_STATE_HINT, State

MAX_LINE_LENGTH = 8192  # generous for PASS/AUTH lines; RFC 2449 §4 only requires 255 for commands
MAX_NUMBER_DIGITS = 10  # message numbers and TOP line counts: far beyond any real maildrop
MAX_MECHANISM_LENGTH = 20  # RFC 4422 §3.1: a SASL mechanism name is 1-20 characters

LINE_TOO_LONG = LineTooLong()


class LineReader:
    """Buffers client bytes and hands out complete lines without their line end.

    Each feed is split into lines at once (one C-level split per socket read, not a search
    per line); a line longer than the limit is reported when its turn comes, and an unfinished
    line is never allowed to grow past the limit."""

    __slots__ = ("_lines", "_max", "_next", "_overflow", "_partial", "_size")

    def __init__(self, max_length: int = MAX_LINE_LENGTH) -> None:
        if max_length < 1:
            raise ValueError("max_length must be positive")
        self._max = max_length
        # Complete lines, LF removed, and the index of the next one to hand out: a list (56
        # octets empty) rather than a deque (about 600), as every idle session holds one.
        self._lines: list[bytes] = []
        self._next = 0
        self._partial = b""  # the bytes after the last LF
        self._overflow = False  # the unfinished line already exceeded the limit
        self._size = 0  # octets received and not yet handed out

    def __len__(self) -> int:
        return self._size

    def feed(self, data: bytes) -> None:
        if self._overflow or not data:
            return
        self._size += len(data)
        if b"\n" not in data:
            self._partial += data
        else:
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            self._lines.extend(lines)
        # CR plus LF may still follow a maximal line: only max + 2 octets prove it too long.
        if len(self._partial) > self._max + 1:
            self._overflow = True
            self._size -= len(self._partial)
            self._partial = b""

    def clear(self) -> None:
        self._lines.clear()
        self._next = 0
        self._partial = b""
        self._overflow = False
        self._size = 0

    def read_line(self) -> bytes | LineTooLong | None:
        """The next line, None when incomplete, or LINE_TOO_LONG (everything is then dropped)."""
        if self._next == len(self._lines):
            if self._overflow:
                self.clear()
                return LINE_TOO_LONG
            return None
        line = self._lines[self._next]
        self._next += 1
        if self._next == len(self._lines):
            self._lines.clear()
            self._next = 0
        self._size -= len(line) + 1
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > self._max:
            self.clear()
            return LINE_TOO_LONG
        return line


# -- arguments ----------------------------------------------------------------------------------


def parse_number(arg: bytes, what: str) -> int | BadCommand:
    """A non-negative decimal argument of at most MAX_NUMBER_DIGITS digits."""
    if arg.isdigit():  # bytes.isdigit is ASCII-only: no "+1", " 1", "1_0" or Unicode digits
        if len(arg) > MAX_NUMBER_DIGITS:
            return BadCommand(f"{what} too large")
        return int(arg)
    if arg[:1] == b"-" and arg[1:].isdigit():
        return BadCommand(f"{what} must not be negative")
    return BadCommand(f"{what} must be a decimal number")


def parse_message_number(arg: bytes) -> int | BadCommand:
    """A 1-based message number (RFC 1939 §5); range checks belong to the session."""
    number = parse_number(arg, "Message number")
    if number == 0:
        return BadCommand("No message 0: message numbers start at 1")
    return number


def decode_base64(arg: bytes) -> bytes | None:
    """Strict base64 (RFC 4648 §4) as SASL uses it; ``=`` is the empty string (RFC 5034 §4)."""
    if arg == b"=":
        return b""
    try:
        return binascii.a2b_base64(arg, strict_mode=True)
    except binascii.Error:
        return None


def decode_text(data: bytes) -> str | None:
    """Usernames and passwords are UTF-8 (RFC 6856 §3); None when they are not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_plain(message: bytes) -> tuple[str, str, str] | None:
    """SASL PLAIN (RFC 4616 §2): ``authzid NUL authcid NUL passwd``, or None when malformed."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        return None
    return authzid, authcid, password


@dataclass(frozen=True, slots=True)
class SaslLogin:
    """A finished SASL exchange: who wants to log in, with what."""

    username: str
    password: str = field(repr=False)
    mechanism: str
    authzid: str = ""  # PLAIN's authorization identity; the session decides whether to allow it


class SaslExchange:
    """The server side of one AUTH exchange: PLAIN (RFC 4616) or LOGIN (the de-facto
    draft-murchison-sasl-login: "Username:" then "Password:" challenges)."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in SASL_MECHANISMS:
            raise LocalProtocolError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial_response: bytes | None) -> Continue | Err | SaslLogin:
        if initial_response is not None:
            return self.step(initial_response)
        return Continue(b"" if self.mechanism == "PLAIN" else b"Username:")

    def step(self, response: bytes) -> Continue | Err | SaslLogin:
        if self.mechanism == "PLAIN":
            return _plain_login(response)
        text = decode_text(response)
        if text is None:
            return Err("Credentials are not valid UTF-8")
        if self._username is None:
            self._username = text
            return Continue(b"Password:")
        return SaslLogin(self._username, text, "LOGIN")


def _plain_login(message: bytes) -> Err | SaslLogin:
    parsed = parse_plain(message)
    if parsed is None:
        return Err("Malformed PLAIN credentials")
    authzid, authcid, password = parsed
    return SaslLogin(authcid, password, "PLAIN", authzid)


def parse_sasl_response(line: bytes) -> SaslResponse | SaslCancel | BadCommand:
    """A line answering a ``+ `` continuation: base64 data, or ``*`` to cancel."""
    if line == b"*":
        return SASL_CANCEL
    data = b"" if not line else decode_base64(line)
    if data is None:
        return BadCommand("Invalid base64 in authentication exchange")
    return SaslResponse(data)


SASL_CANCEL = SaslCancel()

# -- one rule per keyword -----------------------------------------------------------------------

Builder = Callable[[bytes], Command | BadCommand]


@dataclass(frozen=True, slots=True)
class Rule:
    """How to read one command: the event it becomes and how its arguments are parsed."""

    event: type[Command]
    build: Builder


def _usage(verb: str, usage: str) -> BadCommand:
    return BadCommand(f"Syntax: {usage}", verb)


def _no_arguments(verb: str, event: Command) -> Builder:
    error = _usage(verb, verb)

    def build(rest: bytes) -> Command | BadCommand:
        return error if rest.strip() else event

    return build


def _one_message(verb: str, make: Callable[[int], Command], optional: Command | None) -> Builder:
    usage = f"{verb} [msg]" if optional is not None else f"{verb} msg"

    def build(rest: bytes) -> Command | BadCommand:
        if rest.isdigit() and 0 < len(rest) <= MAX_NUMBER_DIGITS and int(rest):
            return make(int(rest))  # the usual "RETR 7", checked exactly as below
        args = rest.split()
        if not args and optional is not None:
            return optional
        if len(args) != 1:
            return _usage(verb, usage)
        number = parse_message_number(args[0])
        return number if isinstance(number, BadCommand) else make(number)

    return build


def _build_top(rest: bytes) -> Command | BadCommand:
    args = rest.split()
    if len(args) != 2:
        return _usage("TOP", "TOP msg lines")
    number = parse_message_number(args[0])
    if isinstance(number, BadCommand):
        return number
    lines = parse_number(args[1], "Line count")
    return lines if isinstance(lines, BadCommand) else Top(number, lines)


def _build_user(rest: bytes) -> Command | BadCommand:
    args = rest.split()
    if len(args) != 1:
        return _usage("USER", "USER name")
    name = decode_text(args[0])
    return BadCommand("User name is not valid UTF-8", "USER") if name is None else User(name)


def _build_pass(rest: bytes) -> Command | BadCommand:
    # RFC 1939 §7: the password is the rest of the line and may contain spaces.
    if not rest:
        return _usage("PASS", "PASS password")
    password = decode_text(rest)
    if password is None:
        return BadCommand("Password is not valid UTF-8", "PASS")
    return Pass(password)


def _build_auth(rest: bytes) -> Command | BadCommand:
    args = rest.split()
    if not args:
        return AUTH_LIST
    mechanism = args[0].upper()
    if len(args) > 2 or len(mechanism) > MAX_MECHANISM_LENGTH:
        return _usage("AUTH", "AUTH [mechanism [initial-response]]")
    if len(args) == 1:
        return Auth(mechanism.decode("ascii", "replace"))
    initial = decode_base64(args[1])
    if initial is None:
        return BadCommand("Invalid base64 in initial response", "AUTH")
    return Auth(mechanism.decode("ascii", "replace"), initial)


AUTH_LIST = Auth(None)

COMMANDS: dict[bytes, Rule] = {
    b"CAPA": Rule(Capa, _no_arguments("CAPA", Capa())),
    b"USER": Rule(User, _build_user),
    b"PASS": Rule(Pass, _build_pass),
    b"AUTH": Rule(Auth, _build_auth),
    b"STLS": Rule(Stls, _no_arguments("STLS", Stls())),
    b"UTF8": Rule(Utf8, _no_arguments("UTF8", Utf8())),
    b"QUIT": Rule(Quit, _no_arguments("QUIT", Quit())),
    b"STAT": Rule(Stat, _no_arguments("STAT", Stat())),
    b"LIST": Rule(List, _one_message("LIST", List, List())),
    b"RETR": Rule(Retr, _one_message("RETR", Retr, None)),
    b"DELE": Rule(Dele, _one_message("DELE", Dele, None)),
    b"NOOP": Rule(Noop, _no_arguments("NOOP", Noop())),
    b"RSET": Rule(Rset, _no_arguments("RSET", Rset())),
    b"UIDL": Rule(Uidl, _one_message("UIDL", Uidl, Uidl())),
    b"TOP": Rule(Top, _build_top),
}

UNKNOWN = BadCommand("Unknown command")
EMPTY = BadCommand("Empty command line")


def parse_command(line: bytes, state: State) -> Event:
    """One command line (without its line end) in ``state``, which must accept commands."""
    keyword, _, rest = line.partition(b" ")
    rule = COMMANDS.get(keyword.upper())
    if rule is None:
        return UNKNOWN if line.strip() else EMPTY
    if rule.event not in LEGAL[state]:
        verb = keyword.upper().decode("ascii")
        reason = f"{verb} is not allowed in the {state.value} state ({WRONG_STATE_HINT[state]})"
        return BadCommand(reason, verb)
    event = rule.build(rest)
    if isinstance(event, BadCommand) and event.verb is None:
        return BadCommand(event.reason, keyword.upper().decode("ascii"))
    return event
