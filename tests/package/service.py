"""The installed pop3d, run the way its systemd unit tells systemd to run it.

systemd may be absent (or not PID 1) where the tests run, so :class:`Service` does what systemd
would do with ``pop3d.service``, read from the installed unit file: it creates the
RuntimeDirectory and LogsDirectory owned by User:Group, listens on a ``$NOTIFY_SOCKET`` and
believes only notifications from the main pid (``NotifyAccess=main``), runs ExecStart through
``setpriv`` with the unit's User, Group (and the user's groups), ambient and bounding
capabilities, NoNewPrivileges, UMask and LimitNOFILE in systemd's clean environment, runs
ExecReload with ``$MAINPID`` for a reload, and stops with TERM to the main process
(``KillMode=mixed``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UNIT_PATH = Path("/lib/systemd/system/pop3d.service")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid (SCM_CREDENTIALS)


def service_section(text: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file, every value of each key in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _capabilities(names: list[str]) -> str:
    """``["CAP_NET_BIND_SERVICE"]`` -> ``"-all,+net_bind_service"`` for setpriv."""
    caps = [cap.lower().removeprefix("cap_") for value in names for cap in value.split()]
    return ",".join(["-all", *(f"+{cap}" for cap in caps)])


@dataclass(frozen=True)
class Unit:
    """What the tests use of the unit file."""

    settings: dict[str, list[str]]

    @classmethod
    def installed(cls) -> Unit:
        return cls(service_section(UNIT_PATH.read_text()))

    def one(self, key: str, default: str = "") -> str:
        return self.settings.get(key, [default])[-1]

    def command(self, key: str, mainpid: int | None = None) -> list[str]:
        value = self.one(key)
        if mainpid is not None:
            value = value.replace("$MAINPID", str(mainpid))
        return shlex.split(value)

    def credentials(self, *, capabilities: bool = True) -> list[str]:
        """setpriv options giving a command the unit's user, groups and capabilities."""
        options = [f"--reuid={self.one('User')}", f"--regid={self.one('Group')}",
                   "--init-groups"]
        if capabilities:
            ambient = _capabilities(self.settings.get("AmbientCapabilities", []))
            options += [f"--inh-caps={ambient}", f"--ambient-caps={ambient}",
                        f"--bounding-set={_capabilities(self.settings['CapabilityBoundingSet'])}"]
        if self.one("NoNewPrivileges") == "yes":
            options.append("--no-new-privs")
        return ["setpriv", *options, "--"]

    def environment(self, notify_socket: str) -> dict[str, str]:
        account = pwd.getpwnam(self.one("User"))
        return {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "NOTIFY_SOCKET": notify_socket,
                "HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
                "SHELL": account.pw_shell}

    def prepare_directories(self) -> None:
        """RuntimeDirectory= and LogsDirectory=, as systemd creates them before ExecStart."""
        account = pwd.getpwnam(self.one("User"))
        gid = grp.getgrnam(self.one("Group")).gr_gid
        for key, base in (("RuntimeDirectory", "/run"), ("LogsDirectory", "/var/log")):
            for name in self.one(key).split():
                path = Path(base, name)
                path.mkdir(exist_ok=True)
                os.chown(path, account.pw_uid, gid)
                path.chmod(int(self.one(f"{key}Mode", "0755"), 8))

    def remove_runtime_directory(self) -> list[str]:
        """systemd removes RuntimeDirectory= once the service has stopped; what the service
        had left in it."""
        left: list[str] = []
        for name in self.one("RuntimeDirectory").split():
            directory = Path("/run", name)
            left += sorted(str(path) for path in directory.glob("*"))
            shutil.rmtree(directory, ignore_errors=True)
        return left

    def limits(self) -> None:
        """UMask= and LimitNOFILE=, in the child before it execs (a preexec_fn)."""
        os.umask(int(self.one("UMask", "0022"), 8))
        nofile = self.one("LimitNOFILE")
        if nofile:
            # Within this machine's hard limit: a container may forbid raising it.
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            limit = int(nofile) if hard == resource.RLIM_INFINITY else min(int(nofile), hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


class NotifySocket:
    """systemd's end of sd_notify: every datagram, with the pid that sent it."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o777)  # the service user sends to it
        self.received: list[tuple[int, dict[str, str]]] = []

    def wait_for(self, pid: int, key: str, value: str, timeout: float = 20.0) -> None:
        """Until ``pid`` has sent ``key=value`` (counting only what arrives from now on)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key}={value} from pid {pid}; got {self.received}")
            self._sock.settimeout(remaining)
            sender, fields = self._receive()
            if sender == pid and fields.get(key) == value:
                return

    def _receive(self) -> tuple[int, dict[str, str]]:
        data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        sender = next(_UCRED.unpack(cdata[:_UCRED.size])[0]
                      for level, kind, cdata in ancillary
                      if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((sender, fields))
        return sender, fields

    def close(self) -> None:
        self._sock.close()


class Service:
    """The installed pop3d under the unit's rules; ``output`` stands in for the journal."""

    def __init__(self, unit: Unit, directory: Path) -> None:
        self.unit = unit
        self.output = directory / "journal.log"
        self.notify = NotifySocket(directory)
        self.process: subprocess.Popen[bytes] | None = None
        self.left_at_stop: list[str] = []  # what the service left in its RuntimeDirectory

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def launch(self, *, capabilities: bool = True) -> subprocess.Popen[bytes]:
        """ExecStart with the unit's credentials; returns at once."""
        self.unit.prepare_directories()
        argv = [*self.unit.credentials(capabilities=capabilities),
                *self.unit.command("ExecStart")]
        with self.output.open("ab") as journal:
            self.process = subprocess.Popen(
                argv, env=self.unit.environment(self.notify.path), cwd="/",
                stdin=subprocess.DEVNULL, stdout=journal, stderr=journal,
                preexec_fn=self.unit.limits, start_new_session=True)  # noqa: PLW1509
        return self.process

    def start(self) -> None:
        """Launch and wait for READY=1 from the main pid, as systemd does for Type=notify."""
        assert self.unit.one("Type") == "notify"
        self.launch()
        try:
            self.notify.wait_for(self.pid, "READY", "1")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.journal()}") from None

    def reload(self) -> None:
        """ExecReload (as the unit's user), then RELOADING=1 and READY=1 from the main pid."""
        argv = [*self.unit.credentials(), *self.unit.command("ExecReload", mainpid=self.pid)]
        subprocess.run(argv, env=self.unit.environment(self.notify.path), check=True)
        self.notify.wait_for(self.pid, "RELOADING", "1")
        self.notify.wait_for(self.pid, "READY", "1")

    def stop(self, timeout: float = 30.0) -> int:
        """KillMode=mixed: TERM to the main process; SIGKILL to the rest after the timeout."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.left_at_stop = self.unit.remove_runtime_directory()
        return code

    def journal(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def close(self) -> None:
        self.stop()
        self.notify.close()


@contextlib.contextmanager
def running_service(directory: Path) -> Iterator[Service]:
    """The installed service, started and ready; stopped at the end."""
    service = Service(Unit.installed(), directory)
    try:
        service.start()
        yield service
    finally:
        service.close()
