"""The Master class driven directly (as `pop3d start` does), in a subprocess of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import E2E_DIR, MasterHandle, default_settings, render_toml, wait_until

pytestmark = pytest.mark.e2e

SCRIPT = """
import sys
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


master = Master(cfg, build, on_worker_exit=on_worker_exit)
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
            [sys.executable, "-c", SCRIPT, str(config_path), str(tmp_path / "exits")],
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
