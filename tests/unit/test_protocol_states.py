"""The state table is data: check it is consistent with the parser and the RFCs."""

from __future__ import annotations

import pytest

from pop3d.protocol import events
from pop3d.protocol.parser import COMMANDS
from pop3d.protocol.states import (
    LEGAL,
    QUIET,
    TRANSITIONS,
    WRONG_STATE_HINT,
    Outcome,
    State,
    capabilities,
)


def test_every_command_is_legal_somewhere_and_parsed() -> None:
    legal_somewhere = set().union(*LEGAL.values())
    assert {rule.event for rule in COMMANDS.values()} == legal_somewhere


def test_rfc1939_command_sets() -> None:
    authorization = {events.Capa, events.User, events.Pass, events.Auth, events.Stls}
    assert LEGAL[State.AUTHORIZATION] == authorization | {events.Utf8, events.Quit}
    transaction = {events.Stat, events.List, events.Retr, events.Dele, events.Noop, events.Rset}
    assert LEGAL[State.TRANSACTION] == transaction | {events.Uidl, events.Top, events.Capa}.union(
        {events.Quit}
    )


def test_states_that_read_commands_have_a_hint() -> None:
    assert set(WRONG_STATE_HINT) == set(LEGAL)


def test_quiet_states_read_nothing() -> None:
    assert not QUIET & set(LEGAL)
    assert State.SASL not in QUIET


def test_only_a_single_line_ok_logs_in() -> None:
    into_transaction = [key for key, state in TRANSITIONS.items() if state is State.TRANSACTION]
    assert into_transaction
    assert all(outcome is Outcome.OK for _, _, outcome in into_transaction)
    assert {event for _, event, _ in into_transaction} == {
        events.Pass,
        events.Auth,
        events.SaslResponse,
    }


def test_every_way_out_of_sasl_returns_to_authorization_or_transaction() -> None:
    exits = {state for (start, _, _), state in TRANSITIONS.items() if start is State.SASL}
    assert exits == {State.SASL, State.AUTHORIZATION, State.TRANSACTION, State.CLOSED}


def test_nothing_leaves_closed() -> None:
    assert not [key for key in TRANSITIONS if key[0] is State.CLOSED]


def test_quit_always_ends_in_closed() -> None:
    for state in (State.AUTHORIZATION, State.UPDATE):
        for outcome in (Outcome.OK, Outcome.ERR):
            assert TRANSITIONS[(state, events.Quit, outcome)] is State.CLOSED
    assert TRANSITIONS[(State.TRANSACTION, events.Quit, Outcome.RECEIVED)] is State.UPDATE


def _caps(**overrides: object) -> tuple[str, ...]:
    options: dict[str, object] = {
        "logged_in": False,
        "plaintext_ok": True,
        "stls": True,
        "login_delay": 0,
        "implementation": "pop3d",
    }
    options.update(overrides)
    return capabilities(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("logged_in", [False, True])
@pytest.mark.parametrize("plaintext_ok", [False, True])
@pytest.mark.parametrize("stls", [False, True])
def test_capabilities_by_situation(logged_in: bool, plaintext_ok: bool, stls: bool) -> None:
    caps = _caps(logged_in=logged_in, plaintext_ok=plaintext_ok, stls=stls)
    always = {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"}
    assert always <= set(caps)
    assert "LOGIN-DELAY 0" in caps
    may_log_in = plaintext_ok and not logged_in
    assert ("USER" in caps) == may_log_in
    assert ("SASL PLAIN LOGIN" in caps) == may_log_in
    assert ("UTF8 USER" in caps) == may_log_in
    assert ("UTF8" in caps) != may_log_in
    assert ("STLS" in caps) == (stls and not logged_in)
    assert ("IMPLEMENTATION pop3d" in caps) == logged_in
    assert len(caps) == len(set(caps))


def test_login_delay_is_advertised() -> None:
    assert "LOGIN-DELAY 900" in _caps(login_delay=900)
