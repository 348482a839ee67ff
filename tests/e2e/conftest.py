"""End-to-end fixtures: a real ``pop3d start`` master as a subprocess, on free loopback ports.

``start_master(overrides, worker=..., env=..., wait=True)`` writes a configuration (defaults below,
then ``overrides`` merged section by section), starts ``python -m pop3d start -c <it>`` and, with
``wait``, returns once the status file shows every worker booted.  The returned
:class:`MasterHandle` knows the pid, ports, log and status, sends signals, waits for exit and
runs other ``pop3d`` commands against the same configuration.  Every master still running at the
end of a test is stopped (and its process group killed).

By default the real worker (``pop3d.worker.Worker``) runs, so tests of the whole server pass the
database/TLS settings they need as overrides; the master's own tests pass
``worker=ECHO_WORKER``, a minimal honest worker (``echo_worker.py``) needing no services::

    def test_something(start_master):
        master = start_master({"server": {"workers": 3}}, worker=ECHO_WORKER)
        pid = master.greet()                   # "+OK <worker pid>" from some worker
        master.send_signal(signal.SIGTERM)
        assert master.wait_exit() == 0
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pop3d.config import parse_address
from pop3d.master.pidfile import read_status, status_path

E2E_DIR = Path(__file__).resolve().parent
ECHO_WORKER = "echo_worker:EchoWorker"
POLL = 0.05

Settings = dict[str, dict[str, Any]]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound with port 0, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_toml(settings: Settings) -> str:
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def merge(base: Settings, overrides: Settings | None) -> Settings:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    return merged


def default_settings(directory: Path) -> Settings:
    """Loopback on a free port, 2 workers, short timeouts, log and pidfile under ``directory``."""
    return {
        "server": {
            "name": "pop3d.test", "listen": [f"127.0.0.1:{free_port()}"], "tls_listen": [],
            "workers": 2, "graceful_timeout": 2, "worker_timeout": 3,
            "pidfile": str(directory / "run" / "pop3d.pid"),
        },
        "database": {"statement_timeout": 2},  # below worker_timeout, as config requires
        "statsd": {"enabled": False},
        "logging": {"level": "info", "file": str(directory / "pop3d.log")},
    }


@dataclass
class MasterHandle:
    """A master started by :func:`start_master`."""

    process: subprocess.Popen[bytes]
    directory: Path
    config_path: Path
    settings: Settings
    env: dict[str, str]
    stderr_path: Path
    extra: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ports(self) -> list[int]:
        """The ports of ``server.listen``, in order."""
        return [parse_address(a).port for a in self.settings["server"]["listen"]]

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def pidfile(self) -> Path:
        return Path(self.settings["server"]["pidfile"])

    @property
    def log_path(self) -> Path:
        return Path(self.settings["logging"]["file"])

    def log_text(self) -> str:
        """The log file (if any) followed by whatever the master wrote to stderr."""
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return text + self.stderr_path.read_text()

    def status(self) -> dict[str, Any] | None:
        return read_status(status_path(str(self.pidfile)))

    def workers(self, *, serving: bool = True) -> list[dict[str, Any]]:
        """Workers in the status file; by default only booted, non-retiring ones."""
        status = self.status() or {"workers": []}
        return [w for w in status["workers"]
                if not serving or (w["booted"] and not w["retiring"])]

    def worker_pids(self) -> set[int]:
        return {w["pid"] for w in self.workers()}

    def wait_ready(self, workers: int | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the status file shows ``workers`` (default: as configured) serving."""
        wanted = workers if workers is not None else self.settings["server"]["workers"]

        def ready() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                pytest.fail(f"master exited with {self.process.returncode}:\n{self.log_text()}")
            status = self.status()
            if status and status["state"] == "running" and len(self.workers()) == wanted:
                return status
            return None

        return wait_until(ready, timeout, f"{wanted} workers serving")  # type: ignore[no-any-return]

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.process.wait(timeout)

    def write_config(self, overrides: Settings | None = None, *, text: str | None = None) -> None:
        """Rewrite the configuration file (for reload tests): merged overrides, or raw text."""
        if text is None:
            self.settings = merge(self.settings, overrides)
            text = render_toml(self.settings)
        self.config_path.write_text(text)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``pop3d <args> -c <this config>``, captured."""
        command = [sys.executable, "-m", "pop3d", *args, "-c", str(self.config_path)]
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def connect(self, port: int | None = None, host: str = "127.0.0.1") -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_connection((host, port or self.port), timeout=5)
        assert sock.family == family
        return sock

    def greet(self, port: int | None = None, host: str = "127.0.0.1") -> int:
        """Connect, read the echo worker's ``+OK <pid>`` greeting, close; the worker's pid."""
        with self.connect(port, host) as sock:
            line = sock.makefile("rb").readline().decode()
        assert line.startswith("+OK "), line
        return int(line.split()[1])

    def stop(self) -> None:
        """TERM, wait, and kill the whole process group if anything is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def launch(directory: Path, settings: Settings, *, worker: str | None, env: dict[str, str] | None,
           args: list[str]) -> MasterHandle:
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "pop3d.toml"
    config_path.write_text(render_toml(settings))
    environment = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(E2E_DIR), environment.get("PYTHONPATH", "")) if p)
    environment.update(env or {})
    extra = [*args, *(["--test-worker-factory", worker] if worker else [])]
    stderr_path = directory / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pop3d", "start", "-c", str(config_path), *extra],
            env=environment, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            start_new_session=True)
    return MasterHandle(process, directory, config_path, settings, environment, stderr_path,
                        extra)


@pytest.fixture
def start_master(tmp_path: Path) -> Iterator[Callable[..., MasterHandle]]:
    """A function starting masters; see the module docstring."""
    handles: list[MasterHandle] = []

    def start(overrides: Settings | None = None, *, worker: str | None = None,
              env: dict[str, str] | None = None, wait: bool = True, args: tuple[str, ...] = (),
              directory: Path | None = None) -> MasterHandle:
        where = directory or tmp_path / f"master{len(handles)}"
        settings = merge(default_settings(where), overrides)
        handle = launch(where, settings, worker=worker, env=env, args=list(args))
        handles.append(handle)
        if wait:
            handle.wait_ready()
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory the service user can reach (pytest's own temporary tree is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="pop3d-e2e-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def spare_loopback() -> str:
    """A loopback source address (127.0.0.0/8 all reaches this host) no other test is likely to
    use: per-address counters and lockouts live in the shared memcached, where other tests and
    earlier runs count theirs."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


@contextlib.contextmanager
def udp_listener(timeout: float) -> Iterator[socket.socket]:
    """A UDP socket on loopback standing in for statsd; ``recv`` gives up after ``timeout``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    with sock:
        yield sock


@pytest.fixture
def statsd_listener() -> Iterator[socket.socket]:
    """A UDP socket standing in for statsd (datagrams arrive within 0.2 s or not at all)."""
    with udp_listener(0.2) as sock:
        yield sock


@pytest.fixture(scope="module")
def module_statsd() -> Iterator[socket.socket]:
    """The same, for a module's shared server (0.3 s: several workers send to it)."""
    with udp_listener(0.3) as sock:
        yield sock


def statsd_lines(sock: socket.socket) -> list[str]:
    """Every statsd line that arrives at ``sock`` until it stays quiet for its timeout."""
    lines: list[str] = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return lines
        lines.extend(data.decode().splitlines())


# Fixtures for tests of the whole server (real worker, PostgreSQL, TLS).  Imported last: they
# build on the helpers above.
from .scale_fixtures import memcached_pool  # noqa: E402, F401
from .server_fixtures import (  # noqa: E402, F401
    mail_store,
    start_module_server,
    start_server,
    tls_client_context,
)
