"""Tracing: spans per command from the session and per login step from the authenticator,
recorded by OpenTelemetry's SDK in memory; and nothing of OpenTelemetry imported when tracing is
off or the package is missing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pop3d.adapters.otel import OtelTracer
from pop3d.auth import KeyAuthenticator
from pop3d.session import Authenticate, Peer, Send, Services, Session, SessionSettings

from .fakes import FakeAuthenticator, FakeClock, FakeMaildrop, FakeMetrics, FakeRegistry
from .test_auth import COST, KEY, FakeCache, _login, _store
from .test_session import _body, _resolved
from .transcript import ADDRESS, DEFAULT_MAILDROP, USER_ID


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[OtelTracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracer(provider)
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def run(session: Session, line: bytes) -> object:
    """One command through the session; a login job is carried out with the fakes."""
    session.feed(line)
    effect: object = _resolved(session.next_effect())
    if isinstance(effect, Authenticate):
        authenticator = FakeAuthenticator()
        authenticator.add_user(ADDRESS, "secret", USER_ID)
        maildrop = FakeMaildrop({USER_ID: list(DEFAULT_MAILDROP)})
        effect = session.login_done(effect.run(authenticator, maildrop))
    if isinstance(effect, Send) and not isinstance(effect.data, bytes):
        b"".join(_body(effect))  # pull a body to its end
    return effect


def test_each_command_has_a_span_with_its_session_user_size_and_status(
        tracer: OtelTracer, exporter: InMemorySpanExporter) -> None:
    maildrop = FakeMaildrop({USER_ID: list(DEFAULT_MAILDROP)})
    services = Services(maildrop, FakeRegistry(), FakeMetrics(), clock=FakeClock(),
                        tracer=tracer)
    session = Session(SessionSettings(server_name="pop.test"), services,
                      Peer("192.0.2.7", plaintext_ok=True), session_id="h:1:1")
    session.greeting()
    for line in (b"USER alice@example.com\r\n", b"PASS secret\r\n", b"RETR 1\r\n",
                 b"RETR 9\r\n", b"XYZZY\r\n"):
        run(session, line)
    maildrop.fail("open_message", RuntimeError("disk on fire"))
    run(session, b"RETR 2\r\n")
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == [
        "pop3.user", "pop3.pass", "pop3.retr", "pop3.retr", "pop3.badcommand", "pop3.retr"]
    assert all(span.attributes["pop3.session_id"] == "h:1:1" for span in spans)
    user, password, retr, missing, bad, broken = (span.attributes for span in spans)
    assert "pop3.user_id" not in user
    assert password["pop3.status"] == "login"
    # RETR is answered once the store has the first bytes: after its span.
    assert retr == {"pop3.session_id": "h:1:1", "pop3.user_id": USER_ID, "pop3.status": "await",
                    "pop3.message.octets": DEFAULT_MAILDROP[0].info().size}
    assert missing["pop3.status"] == "-ERR"
    assert "pop3.message.octets" not in missing
    assert bad["pop3.status"] == "-ERR"
    assert broken["pop3.status"] == "-ERR"
    failed = spans[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.events[0].attributes["exception.message"] == "disk on fire"


def test_a_login_span_covers_the_cache_lookup_and_bcrypt_steps(
        tracer: OtelTracer, exporter: InMemorySpanExporter) -> None:
    authenticator = KeyAuthenticator(_store(), bcrypt_cost=COST, clock=FakeClock(),
                                     cache=FakeCache(), cache_secret=b"s", tracer=tracer)
    principal = authenticator.authenticate(_login("ann@example.com", KEY.key))
    spans = exporter.get_finished_spans()
    (login,) = by_name(spans, "pop3.login")
    steps = [span.name for span in spans if span is not login]
    assert steps == ["pop3.auth.cache.get", "pop3.auth.lookup", "pop3.auth.lookup",
                     "pop3.auth.bcrypt", "pop3.auth.cache.put"]
    assert all(span.parent is not None and span.parent.span_id == login.context.span_id
               for span in spans if span is not login)
    assert login.attributes == {"pop3.mechanism": "USER", "pop3.user_id": principal.user_id}


def test_a_failed_login_span_records_the_failure(
        tracer: OtelTracer, exporter: InMemorySpanExporter) -> None:
    authenticator = KeyAuthenticator(_store(), bcrypt_cost=COST, clock=FakeClock(),
                                     tracer=tracer)
    with pytest.raises(Exception, match="AUTH"):
        authenticator.authenticate(_login("nobody@example.com", KEY.key))
    spans = exporter.get_finished_spans()
    (login,) = by_name(spans, "pop3.login")
    assert login.status.status_code is StatusCode.ERROR
    assert "pop3.user_id" not in login.attributes
    assert [span.name for span in spans if span is not login] == [
        "pop3.auth.lookup", "pop3.auth.bcrypt"]  # an unknown user still pays a bcrypt


NOTHING_IMPORTED = """
import sys
{block}
from pop3d.config import TracingConfig
from pop3d.worker.backends import tracer_for
import pop3d.cli, pop3d.worker.loop, pop3d.session, pop3d.auth
assert tracer_for(TracingConfig(enabled={enabled})) is None
loaded = sorted(m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v)
assert not loaded, loaded
"""


@pytest.mark.parametrize(("enabled", "block"), [
    (False, ""),  # off: not imported, though installed
    (True, "sys.modules['opentelemetry'] = None"),  # on, but not installed
])
def test_nothing_of_opentelemetry_is_imported_without_tracing(enabled: bool, block: str) -> None:
    code = NOTHING_IMPORTED.format(enabled=enabled, block=block)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert ("opentelemetry-api is not installed" in result.stderr) is enabled
