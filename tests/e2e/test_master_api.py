"""The Master class driven directly (as `pop3d start` does), in a subprocess of its own."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import E2E_DIR, MasterHandle, default_settings, render_toml, wait_until

pytestmark = pytest.mark.e2e

SCRIPT = """
import sys
import time
from pathlib import Path

from echo_worker import EchoWorker
from pop3d import config, log
from pop3d.master import Master

cfg, _ = config.load(sys.argv[1])
log.setup(cfg.logging.level, cfg.logging.file)
exits = Path(sys.argv[2])


def build(age, cfg, listeners, heartbeat):
    return EchoWorker(age=age, config=cfg, listeners=listeners, heartbeat=heartbeat)


def on_worker_exit(pid):
    with exits.open("a") as f:
        f.write(f"{pid}\\n")
    if len(exits.read_text().split()) == 1:
        raise RuntimeError("the first cleanup fails")


def on_status(sessions, workers):
    with Path(sys.argv[3]).open("a") as f:
        f.write(f"{time.monotonic()} {sessions} {workers}\\n")


master = Master(cfg, build, on_worker_exit=on_worker_exit, on_status=on_status)
master.start()
sys.exit(master.run())
"""


@pytest.fixture
def api_master(tmp_path: Path):
    settings = default_settings(tmp_path)
    config_path = tmp_path / "pop3d.toml"
    config_path.write_text(render_toml(settings))
    env = {**os.environ, "PYTHONPATH": str(E2E_DIR)}
    env.pop("NOTIFY_SOCKET", None)
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(config_path), str(tmp_path / "exits"),
             str(tmp_path / "statuses")],
            env=env, stdout=stderr, stderr=stderr, start_new_session=True)
    handle = MasterHandle(process, tmp_path, config_path, settings, env, stderr_path)
    yield handle
    handle.stop()


def test_the_caller_cleans_up_after_every_reaped_worker(api_master, tmp_path):
    api_master.wait_ready()
    exits = tmp_path / "exits"
    victim, survivor = sorted(api_master.worker_pids())
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: exits.exists() and exits.read_text() == f"{victim}\n", 5.0,
               "the cleanup for the killed worker")
    wait_until(lambda: len(api_master.worker_pids()) == 2, 5.0, "the replacement")
    assert f"cleaning up after worker {victim} (age 1, generation 1) failed" in \
        api_master.log_text()
    assert "RuntimeError: the first cleanup fails" in api_master.log_text()
    replacement = (api_master.worker_pids() - {survivor}).pop()
    api_master.send_signal(signal.SIGTERM)
    assert api_master.wait_exit() == 0
    assert sorted(map(int, exits.read_text().split()[1:])) == sorted([survivor, replacement])


def reports(tmp_path: Path) -> list[tuple[float, int, int]]:
    path = tmp_path / "statuses"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(float(t), int(s), int(w)) for t, s, w in (line.split() for line in lines)]


def test_on_status_reports_sessions_and_workers_once_a_second(api_master, tmp_path):
    api_master.wait_ready()
    sock = api_master.connect()
    holder = int(sock.makefile("rb").readline().split()[1])
    sock.sendall(b"HOLD\r\n")
    wait_until(lambda: (1, 2) in [(s, w) for _, s, w in reports(tmp_path)], 5.0,
               "a report of the held session")
    time.sleep(2.5)
    steady = [t for t, s, w in reports(tmp_path) if (s, w) == (1, 2)]
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    assert len(steady) >= 2
    assert all(0.9 <= gap <= 1.6 for gap in gaps), gaps
    os.kill(holder, signal.SIGKILL)  # it cannot say its session is gone: the count must not drift
    wait_until(lambda: reports(tmp_path)[-1][1:] == (0, 2), 5.0, "no session left")
    sock.close()
    api_master.send_signal(signal.SIGTERM)
    assert api_master.wait_exit() == 0
    assert reports(tmp_path)[-1][1:] == (0, 0)
