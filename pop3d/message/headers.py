"""Header fields for messages rendered from columns: sanitised, encoded and folded.

Column values come from other parts of the mail system and may hold anything: line breaks
(which would let a subject inject a ``Bcc:`` field), control characters, non-ASCII text.  Every
value is reduced to one line of single-spaced text, non-ASCII text becomes RFC 2047 encoded
words, and fields are folded at whitespace so that lines stay within 76 characters where the
data allows it (RFC 2047 section 2 limits lines holding encoded words to 76; RFC 5322 allows
998).  The output is a pure function of the input, so renders are byte-identical.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

FOLD_WIDTH = 76  # RFC 2047 section 2: lines containing encoded words are at most 76 chars
_ENCODED_WORD_OVERHEAD = len("=?utf-8?b??=")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(" {2,}")
# RFC 5322 atext plus the space between words: a display name that needs no quoting.
_PLAIN_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")
_MAX_QUOTED = 60  # longer quoted names are encoded instead, so they can be folded
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 2045 token
_PARAM_SEGMENT = 60  # longer (or non-ASCII) parameter values use RFC 2231 continuations


@dataclass(frozen=True, slots=True)
class EmailAddress:
    """An address with an optional display name."""

    address: str
    name: str | None = None


def clean(value: str | None) -> str:
    """One line of single-spaced text: no CR, LF, other controls or lone surrogates survive."""
    if not value:
        return ""
    value = _SURROGATES.sub("\ufffd", _CONTROLS.sub(" ", value))
    return _SPACES.sub(" ", value).strip(" ")


def field(name: str, tokens: Sequence[str]) -> bytes:
    """``Name: tokens`` folded before a token whenever the line would pass FOLD_WIDTH."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > FOLD_WIDTH and line != f"{name}:":
            lines.append(line)
            line = ""
        line = f"{line} {token}"
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def unstructured(name: str, value: str | None) -> bytes:
    """Subject-like text: plain words when ASCII and foldable, else encoded words."""
    text = clean(value)
    words = text.split(" ") if text else []
    # A literal "=?" would be taken for the start of an encoded word (RFC 2047 section 5).
    plain = text.isascii() and "=?" not in text
    if plain and all(len(w) < FOLD_WIDTH - len(name) - 2 for w in words):
        return field(name, words)
    return field(name, encoded_words(text, first_width=FOLD_WIDTH - len(name) - 2))


def identifiers(name: str, value: str | None) -> bytes | None:
    """Message-ID, In-Reply-To, References: msg-id tokens, never encoded (RFC 5322 3.6.4)."""
    tokens = [_angle(t) for t in clean(value).split(" ") if t.strip("<>")]
    return field(name, tokens) if tokens else None


def _angle(token: str) -> str:
    inner = token.strip("<>")
    return f"<{inner}>"


def addresses(name: str, mailboxes: Sequence[EmailAddress]) -> bytes:
    """An address list, one mailbox per token group, folded between words."""
    tokens: list[str] = []
    for index, mailbox in enumerate(mailboxes):
        group = mailbox_tokens(mailbox, first_width=FOLD_WIDTH - len(name) - 2)
        if index < len(mailboxes) - 1:
            group[-1] += ","
        tokens.extend(group)
    return field(name, tokens)


def mailbox_tokens(mailbox: EmailAddress, first_width: int = FOLD_WIDTH - 1) -> list[str]:
    address = "".join(clean(mailbox.address).split(" ")).strip("<>")
    name = clean(mailbox.name)
    if not name:
        return [address]
    return [*_phrase(name, first_width), f"<{address}>"]


def _phrase(name: str, first_width: int) -> list[str]:
    words = name.split(" ")
    if _PLAIN_PHRASE.match(name) and "=?" not in name and max(map(len, words)) <= _MAX_QUOTED:
        return words
    if name.isascii() and len(name) <= _MAX_QUOTED:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return [f'"{escaped}"']
    return encoded_words(name, first_width)


def encoded_words(text: str, first_width: int = FOLD_WIDTH - 1) -> list[str]:
    """RFC 2047 "B" encoded words of UTF-8, each fitting its line, split between characters."""
    words: list[str] = []
    width = max(first_width, _ENCODED_WORD_OVERHEAD + 8)
    piece = b""
    for char in text:
        encoded = char.encode("utf-8")
        if piece and _b_length(len(piece) + len(encoded)) > width:
            words.append(_b_word(piece))
            piece = b""
            width = FOLD_WIDTH - 1  # continuation lines start with one space
        piece += encoded
    if piece or not words:
        words.append(_b_word(piece))
    return words


def _b_length(octets: int) -> int:
    return _ENCODED_WORD_OVERHEAD + 4 * ((octets + 2) // 3)


def _b_word(octets: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(octets).decode("ascii") + "?="


def parameter(name: str, value: str) -> list[str]:
    """``name="value"`` for short plain ASCII, else RFC 2231 ``name*N*=`` continuations."""
    value = clean(value)
    if value.isascii() and len(value) <= _PARAM_SEGMENT and not set(value) & set('"\\'):
        return [f'{name}="{value}"']
    # A continuation line is ' name*NN*=' + "utf-8''" + segment + ';' (RFC 2231 section 3).
    width = FOLD_WIDTH - len(name) - len(" *NN*=utf-8'';")
    segments = _split_percent_encoded(quote(value.encode("utf-8"), safe=""), width)
    if len(segments) == 1:
        return [f"{name}*=utf-8''{segments[0]}"]
    first = [f"{name}*0*=utf-8''{segments[0]}"]
    return first + [f"{name}*{i}*={part}" for i, part in enumerate(segments[1:], start=1)]


def with_parameters(value: str, parameters: Sequence[str]) -> list[str]:
    """Tokens for ``value; p1; p2``: the separators belong to the tokens they follow."""
    tokens = [value, *parameters]
    return [token + ";" for token in tokens[:-1]] + tokens[-1:]


def _split_percent_encoded(encoded: str, width: int) -> list[str]:
    segments = []
    start = 0
    while start < len(encoded):
        end = min(start + width, len(encoded))
        percent = encoded.rfind("%", max(start, end - 2), end)
        if percent >= 0 and end < len(encoded):
            end = percent  # never cut inside a %XX escape
        segments.append(encoded[start:end])
        start = end
    return segments


def content_type(value: str | None, default: str) -> tuple[str, str | None]:
    """A stored ``type/subtype`` (and its charset) when well-formed, else ``default``."""
    kind, *params = clean(value).split(";")
    main, _, subtype = kind.strip().lower().partition("/")
    if not (_TOKEN.match(main) and _TOKEN.match(subtype)):
        return default, None
    charset = None
    for param in params:
        key, _, raw = param.partition("=")
        candidate = raw.strip().strip('"')
        if key.strip().lower() == "charset" and _TOKEN.match(candidate):
            charset = candidate.lower()
    return f"{main}/{subtype}", charset
