"""Heartbeat: the record, its age, sessions and booted flag, with a fake clock."""

from __future__ import annotations

import os

import pytest

from pop3d.heartbeat import Heartbeat, decode, encode

from .fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def heartbeat(clock):
    beat = Heartbeat(clock)
    yield beat
    beat.close()


def test_a_new_heartbeat_has_not_booted_and_ages_from_creation(heartbeat, clock):
    assert not heartbeat.booted()
    assert heartbeat.sessions() == 0
    clock.now += 2.5
    assert heartbeat.age_seconds() == 2.5


def test_a_beat_resets_the_age_and_reports_sessions(heartbeat, clock):
    clock.now += 10
    heartbeat.beat(42)
    assert heartbeat.booted()
    assert heartbeat.sessions() == 42
    assert heartbeat.age_seconds() == 0.0
    clock.now += 1.25
    assert heartbeat.age_seconds() == 1.25


def test_another_handle_on_the_same_file_sees_the_beats(heartbeat, clock):
    """After fork the worker and the master share the file; a dup stands in for that."""
    other = Heartbeat.__new__(Heartbeat)
    other.__dict__.update(heartbeat.__dict__)
    other._fd = os.dup(heartbeat.fileno())
    try:
        other.beat(3)
        assert heartbeat.sessions() == 3
    finally:
        other.close()


def test_a_torn_record_is_ignored_in_favour_of_the_last_good_one(heartbeat, clock):
    heartbeat.beat(5)
    assert heartbeat.sessions() == 5  # the master's last good read
    record = bytearray(encode(clock.now, 6))
    record[3] ^= 0xFF
    os.pwrite(heartbeat.fileno(), bytes(record), 0)
    assert heartbeat.sessions() == 5
    clock.now += 1
    assert heartbeat.age_seconds() == 1.0


def test_records_round_trip_and_reject_damage():
    assert decode(encode(12.5, 7)) == (12.5, 7)
    assert decode(encode(12.5, 7)[:-1]) is None
    damaged = bytearray(encode(12.5, 7))
    damaged[-1] ^= 1
    assert decode(bytes(damaged)) is None


def test_negative_session_counts_are_reported_as_zero(heartbeat):
    heartbeat.beat(-3)
    assert heartbeat.booted()
    assert heartbeat.sessions() == 0


def test_close_is_idempotent(clock):
    beat = Heartbeat(clock)
    beat.close()
    beat.close()
    assert beat.closed

