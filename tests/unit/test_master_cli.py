"""The control commands' pure parts: reports, fallbacks, the worker factory."""

from __future__ import annotations

import os
import subprocess

import pytest

from pop3d.cli.server import (
    control_settings,
    find_master,
    format_duration,
    format_status,
    load_factory,
)
from pop3d.config import Config, ServerConfig


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


def test_find_master(tmp_path):
    path = tmp_path / "pop3d.pid"
    assert find_master(str(path)) == (None, f"not running (no pidfile {path})", 3)
    path.write_text(f"{os.getpid()}\n")
    assert find_master(str(path)) == (os.getpid(), f"running as pid {os.getpid()}", 0)


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


def test_load_factory_imports_only_when_called():
    factory = load_factory("pop3d_no_such_module:Worker")
    with pytest.raises(ImportError):
        factory(1, Config(), [], None)  # type: ignore[arg-type]
