"""The parts of a scaled-out installation, as real processes on loopback: HAProxy in front of
several pop3d hosts, extra memcached servers, and PgBouncer in front of PostgreSQL.

``scripts/services.sh start`` installs HAProxy and PgBouncer and names the binaries in
``var/services.env``; these helpers start private instances on free ports in a directory of the
test, and every process they start is stopped when its fixture ends.

* :func:`host_settings`: a pop3d "host" on its own loopback address (127.0.0.2, 127.0.0.3, ...
  are all loopback on Linux) behind HAProxy: PROXY v2 expected, HAProxy's address trusted.
* :class:`HAProxy`: ``conf/haproxy.cfg`` itself, with its addresses, paths and check interval
  replaced, so the shipped example is what the tests run; its admin socket answers commands.
* :class:`Memcached` and :class:`PgBouncer`: one server each, stoppable and restartable.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .conftest import Settings, wait_until

HAPROXY_EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "haproxy.cfg"
CHECK_INTERVAL = "200ms"  # HAProxy's check interval in the tests (2 s in the example)
HAPROXY_ADDRESS = "127.0.0.1"  # where HAProxy listens and connects from


def ports_free_on(hosts: Sequence[str], count: int = 2) -> list[int]:
    """``count`` TCP ports that are free on every one of ``hosts`` (hosts share port numbers,
    like real machines running the same configuration)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if port not in found and all(_free(host, port) for host in hosts[1:]):
            found.append(port)
    return found


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def host_settings(name: str, address: str, ports: Sequence[int]) -> Settings:
    """Overrides making a pop3d master one host of the pool behind HAProxy."""
    return {
        "server": {"name": name, "listen": [f"{address}:{ports[0]}"],
                   "tls_listen": [f"{address}:{ports[1]}"], "proxy_protocol": True,
                   "proxy_timeout": 2, "trusted_networks": [f"{HAPROXY_ADDRESS}/32"]},
        # Clients reach HAProxy from loopback addresses outside trusted_networks.
        "auth": {"allow_plaintext": True},
    }


def private_dir(prefix: str) -> Path:
    """A directory a daemon that drops root (memcached, PgBouncer as nobody) can use."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o777)
    return directory


def drop_root() -> list[str]:
    """The option daemons take to run as nobody when the tests run as root."""
    return ["-u", "nobody"] if os.geteuid() == 0 else []


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    wait_until(listening, 10, f"{what} on port {port}")


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


# --- HAProxy -------------------------------------------------------------------------------


class HAProxy:
    """A private HAProxy running conf/haproxy.cfg over the given hosts' ports."""

    def __init__(self, binary: str, directory: Path, hosts: Sequence[str],
                 host_ports: Sequence[int]) -> None:
        self.directory = directory
        self.socket_path = directory / "admin.sock"
        self.ports = ports_free_on([HAPROXY_ADDRESS], 2)
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(self._render(hosts, host_ports))
        self._binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def port(self) -> int:
        """The plain POP3 frontend (the example's :110)."""
        return self.ports[0]

    def start(self) -> None:
        log = (self.directory / "haproxy.log").open("ab")
        self.process = subprocess.Popen([self._binary, "-db", "-f", str(self.config_path)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_listening(self.port, self.process, "HAProxy")

    def stop(self) -> None:
        stop_process(self.process)

    def command(self, text: str) -> str:
        """One command on the admin socket (``disable server pop3d/pop1``, ``show stat``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self, backend: str, server: str) -> str:
        """UP, DOWN, MAINT, DRAIN, ... of one server as HAProxy's checks see it."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        for row in rows:
            if (row["pxname"], row["svname"]) == (backend, server):
                return row["status"].split()[0]
        raise AssertionError(f"no server {backend}/{server} in HAProxy's stats")

    def wait_status(self, server: str, wanted: str, timeout: float = 10) -> None:
        wait_until(lambda: all(self.status(backend, server) == wanted
                               for backend in ("pop3d", "pop3d_tls")),
                   timeout, f"HAProxy to see {server} {wanted}")

    def _render(self, hosts: Sequence[str], host_ports: Sequence[int]) -> str:
        text = HAPROXY_EXAMPLE.read_text()
        for line in ("log /dev/log local0", "chroot ", "user ", "group ", "daemon"):
            text = re.sub(rf"(?m)^\s+{re.escape(line)}.*\n", "", text)
        text = re.sub(r"stats socket \S+", f"stats socket {self.socket_path}", text)
        text = text.replace("bind :110", f"bind {HAPROXY_ADDRESS}:{self.ports[0]}")
        text = text.replace("bind :995", f"bind {HAPROXY_ADDRESS}:{self.ports[1]}")
        text = text.replace("check port 110", f"check port {host_ports[0]}")
        text = re.sub(r"inter \S+", f"inter {CHECK_INTERVAL}", text)
        text = re.sub(r"maxconn \d+", "maxconn 1000", text)  # within a test's open-files limit
        for backend, port in (("pop3d", host_ports[0]), ("pop3d_tls", host_ports[1])):
            servers = "".join(f"    server pop{n} {host}:{port}\n"
                              for n, host in enumerate(hosts, start=1))
            text = re.sub(rf"(?m)(^backend {backend}\n(?:(?!\s+server ).*\n)*)(\s+server .*\n)+",
                          lambda m, s=servers: m.group(1) + s, text)
        return text


# --- memcached -----------------------------------------------------------------------------


class Memcached:
    """One private memcached server; ``kill`` and ``start`` again on the same port."""

    def __init__(self, binary: str) -> None:
        self._binary = binary
        self.port = ports_free_on(["127.0.0.1"], 1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self._binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "16",
             *drop_root()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.process, "memcached")

    def kill(self) -> None:
        stop_process(self.process)

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted, nothing is answered (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stats(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.port), 5) as sock:
            sock.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                data += sock.recv(65536)
        values = {}
        for line in data.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                values[parts[1]] = int(parts[2])
        return values


@pytest.fixture
def memcached_pool(services: dict[str, str]) -> Iterator[list[Memcached]]:
    """Two private memcached servers."""
    servers = [Memcached(services["POP3D_TEST_MEMCACHED_BIN"]) for _ in range(2)]
    yield servers
    for server in servers:
        with contextlib.suppress(AssertionError):
            server.resume()
        server.kill()


# --- PgBouncer -----------------------------------------------------------------------------


class PgBouncer:
    """A private PgBouncer in transaction pooling mode in front of one database."""

    def __init__(self, binary: str, dsn_parts: dict[str, str], pool_size: int) -> None:
        self.directory = private_dir("pop3d-pgbouncer-")
        self.port = ports_free_on(["127.0.0.1"], 1)[0]
        self.database = dsn_parts["dbname"]
        user = dsn_parts.get("user", "pop3d")
        (self.directory / "users.txt").write_text(f'"{user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(_PGBOUNCER_INI.format(
            db=self.database, host=dsn_parts.get("host", "127.0.0.1"),
            port=dsn_parts.get("port", "5432"), listen=self.port, dir=self.directory,
            user=user, pool_size=pool_size))
        self.dsn = f"host=127.0.0.1 port={self.port} user={user} dbname={self.database}"
        log = (self.directory / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            [binary, *drop_root(), str(self.directory / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_listening(self.port, self.process, "PgBouncer")

    def close(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


_PGBOUNCER_INI = """\
[databases]
{db} = host={host} port={port} dbname={db}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/users.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
server_reset_query =
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""
