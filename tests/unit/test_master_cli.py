"""The control commands' pure parts: reports, fallbacks, the worker factory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pop3d.adapters.statsd import NullMetrics
from pop3d.cli.control import control_settings, find_master, format_duration, format_status
from pop3d.cli.server import (
    DAEMON_READY,
    StartupReport,
    StatusGauges,
    load_factory,
    metrics_for,
    read_report,
)
from pop3d.config import Config, ServerConfig, StatsdConfig


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3600, "1h 00m 00s"),
    (93784, "1d 02h 03m 04s"), (-5, "0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


STATUS = {
    "pid": 100, "started": 1000.0, "config": "/etc/pop3d.toml", "generation": 2,
    "state": "running", "workers_wanted": 2, "sessions": 7,
    "reload": {"serial": 1, "result": "ok", "error": None},
    "workers": [
        {"pid": 101, "age": 1, "generation": 1, "sessions": 2, "booted": True, "retiring": True},
        {"pid": 102, "age": 2, "generation": 2, "sessions": 5, "booted": True, "retiring": False},
        {"pid": 103, "age": 3, "generation": 2, "sessions": 0, "booted": False, "retiring": False},
    ],
}


def test_format_status():
    assert format_status(STATUS, 1000.0 + 3725).splitlines() == [
        "pop3d is running: master pid 100, up 1h 02m 05s, running",
        "config /etc/pop3d.toml, generation 2; last reload: ok",
        "workers: 1 serving of 2 wanted; sessions: 7",
        "  pid 101      age 1    generation 1   sessions 2  retiring",
        "  pid 102      age 2    generation 2   sessions 5",
        "  pid 103      age 3    generation 2   sessions 0  booting",
    ]


@pytest.mark.parametrize(("reload", "text"), [
    ({"serial": 0, "result": None, "error": None}, "last reload: none"),
    ({"serial": 3, "result": "pending", "error": None}, "last reload: in progress"),
    ({"serial": 3, "result": "failed", "error": "x: y: z"}, "last reload: failed: x: y: z"),
])
def test_format_status_reload_outcomes(reload, text):
    assert text in format_status({**STATUS, "reload": reload}, 1000.0)


def test_control_settings_from_a_valid_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:1110"]\ntls_listen = []\n'
                    'pidfile = "/run/x.pid"\ngraceful_timeout = 5\n')
    server = control_settings(str(path))
    assert (server.pidfile, server.graceful_timeout) == ("/run/x.pid", 5.0)


def test_control_settings_survive_an_invalid_config(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[server]\npidfile = "/run/y.pid"\ngraceful_timeout = 7\n'
                    'worker_timeout = true\nworkers = -1\n')
    server = control_settings(str(path))
    assert (server.pidfile, server.graceful_timeout) == ("/run/y.pid", 7)
    assert server.worker_timeout == ServerConfig().worker_timeout
    assert "using server.pidfile = /run/y.pid" in capsys.readouterr().err


def test_control_settings_without_a_readable_config_use_the_defaults(tmp_path, capsys):
    server = control_settings(str(tmp_path / "missing.toml"))
    assert server.pidfile == ServerConfig().pidfile
    assert "has 1 problem(s)" in capsys.readouterr().err


def test_find_master(tmp_path, fake_master):
    path = tmp_path / "pop3d.pid"
    assert find_master(str(path)) == (None, f"not running (no pidfile {path})", 3)
    path.write_text(f"{fake_master}\n")
    assert find_master(str(path)) == (fake_master, f"running as pid {fake_master}", 0)


def test_a_pidfile_naming_another_program_is_stale_and_nothing_is_signalled(tmp_path):
    path = tmp_path / "pop3d.pid"
    path.write_text(f"{os.getpid()}\n")  # pytest: alive, but no pop3d master
    assert find_master(str(path)) == (
        None, f"not running (stale pidfile {path}: pid {os.getpid()} is not a pop3d master; "
              "not signalling it)", 1)


def test_find_master_with_a_stale_pidfile(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = tmp_path / "pop3d.pid"
    path.write_text(f"{gone.pid}\n")
    assert find_master(str(path)) == (
        None, f"not running (stale pidfile {path}: pid {gone.pid} is gone)", 1)


def test_an_unreadable_pidfile_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        find_master(str(tmp_path))  # a directory: reading it fails with EISDIR
    assert exit_info.value.code == 4
    assert capsys.readouterr().err == f"pop3d: cannot read the pidfile {tmp_path}: Is a directory\n"


class RecordingWorker:
    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    def run(self) -> int:
        return 0


def test_load_factory_builds_workers_with_keyword_arguments():
    factory = load_factory(f"{__name__}:RecordingWorker")
    config = Config()
    listeners: tuple[()] = ()
    worker = factory(4, config, listeners, None)  # type: ignore[arg-type]
    assert isinstance(worker, RecordingWorker)
    assert worker.kwargs == {"age": 4, "config": config, "listeners": [], "heartbeat": None}


def test_load_factory_imports_the_worker_module_at_once(tmp_path, monkeypatch):
    # The master imports it as root, before it drops privileges, not at the first spawn.
    (tmp_path / "pop3d_eager_worker.py").write_text("class Worker:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pop3d_eager_worker", raising=False)
    load_factory("pop3d_eager_worker:Worker")
    assert "pop3d_eager_worker" in sys.modules


def test_load_factory_fails_at_once_for_a_missing_module_or_class():
    with pytest.raises(ImportError):
        load_factory("pop3d_no_such_module:Worker")
    with pytest.raises(AttributeError):
        load_factory(f"{__name__}:NoSuchWorker")


def test_start_reports_an_unloadable_worker_in_one_line(tmp_path):
    config = tmp_path / "pop3d.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:1"]\ntls_listen = []\n'
                      f'pidfile = "{tmp_path}/pop3d.pid"\n[database]\nstatement_timeout = 10\n')
    result = subprocess.run(
        [sys.executable, "-m", "pop3d", "start", "-c", str(config),
         "--test-worker-factory", "pop3d_no_such_module:Worker"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "pop3d: cannot load the worker pop3d_no_such_module:Worker: ModuleNotFoundError: "
        "No module named 'pop3d_no_such_module'")
    assert not (tmp_path / "pop3d.pid").exists()


def test_read_report_returns_the_first_line():
    read_end, write_end = os.pipe()
    os.write(write_end, b"ok\nmore")
    assert read_report(read_end, 5.0) == "ok"
    os.close(write_end)


def test_read_report_of_a_pipe_closed_without_a_report_is_empty():
    read_end, write_end = os.pipe()
    os.write(write_end, b"half a lin")
    os.close(write_end)
    assert read_report(read_end, 5.0) == "half a lin"
    read_end, write_end = os.pipe()
    os.close(write_end)
    assert read_report(read_end, 5.0) == ""


def test_read_report_gives_up_after_the_timeout():
    read_end, write_end = os.pipe()
    assert read_report(read_end, 0.05) is None
    os.close(write_end)


def test_the_startup_report_sends_one_line_then_closes_its_pipe():
    read_end, write_end = os.pipe()
    report = StartupReport(write_end, " (see the log)", environ={})
    report.stopping("worker 7 could not boot;\nstopping")
    report.ready("2 workers, 0 sessions")  # too late: the first report counts
    assert os.read(read_end, 100) == b"worker 7 could not boot; stopping (see the log)\n"
    assert os.read(read_end, 100) == b""  # EOF: the pipe is closed
    os.close(read_end)
    report.close()


def test_the_startup_report_says_ready():
    read_end, write_end = os.pipe()
    report = StartupReport(write_end, environ={})
    report.ready("2 workers, 0 sessions")
    report.stopping("stopping (SIGTERM)")
    assert read_report(read_end, 5.0) == DAEMON_READY


class Gauges:
    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []
        self.closed = False

    def gauge(self, name: str, value: float) -> None:
        self.sent.append((name, value))

    def close(self) -> None:
        self.closed = True


def test_status_gauges_are_absolute_and_follow_a_reload(monkeypatch):
    built: list[tuple[StatsdConfig, Gauges]] = []

    def fake_metrics(settings: StatsdConfig) -> Gauges:
        built.append((settings, Gauges()))
        return built[-1][1]

    monkeypatch.setattr("pop3d.cli.server.metrics_for", fake_metrics)
    first = StatsdConfig(host="127.0.0.1")
    gauges = StatusGauges(first)
    gauges.report(first, 7, 2)
    gauges.report(first, 5, 2)
    assert built[0][1].sent == [("sessions.active", 7), ("workers", 2),
                                ("sessions.active", 5), ("workers", 2)]
    moved = StatsdConfig(host="127.0.0.2")
    gauges.report(moved, 3, 4)
    assert [settings for settings, _ in built] == [first, moved]
    assert built[0][1].closed
    assert built[1][1].sent == [("sessions.active", 3), ("workers", 4)]


def test_metrics_for_disabled_statsd_sends_nothing():
    assert isinstance(metrics_for(StatsdConfig(enabled=False)), NullMetrics)
