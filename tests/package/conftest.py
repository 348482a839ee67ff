"""Fixtures of the package tests: the built package, installing and purging it, the installed
configuration, and POP3 over STLS against the installed server.

These tests install the package on this machine (they need root: elsewhere they are skipped)
and run it the way its systemd unit would (:mod:`tests.package.service`).  ``scripts/deb.sh``
builds dist/pop3d_*.deb when the sources changed and installs the tools the tests use
(Postfix, fail2ban, logrotate) when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import re
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path("/etc/pop3d.toml")
SNAKEOIL = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q"]
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
LOW_PORTS = range(700, 1000)  # privileged ports, far from the well-known ones


def run(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A command, captured; a failure shows its output."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited with {result.returncode}:\n"
                    f"{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="session")
def deb() -> Path:
    """dist/pop3d_<version>_all.deb, built if the sources changed, with the test tools."""
    if os.geteuid() != 0:
        pytest.skip("the package tests install packages: run them as root")
    run(str(ROOT / "scripts" / "deb.sh"), "build")
    run(str(ROOT / "scripts" / "deb.sh"), "test-deps")
    (package,) = (ROOT / "dist").glob("pop3d_*_all.deb")
    return package


class Package:
    """The package on this machine: dependencies, install, purge."""

    def __init__(self, deb: Path) -> None:
        self.deb = deb

    def install_dependencies(self) -> None:
        """What the package depends on, installed on its own (before the snapshot)."""
        depends = run("dpkg-deb", "-f", str(self.deb), "Depends").stdout.strip()
        satisfy = [*APT, "satisfy", "--no-install-recommends", depends]
        if run(*satisfy, env=APT_ENV, check=False).returncode != 0:
            run(*APT, "update", env=APT_ENV)  # package lists missing or stale
            run(*satisfy, env=APT_ENV)

    def install(self, *, again: bool = False) -> None:
        options = ["--reinstall"] if again else []
        run(*APT, "install", "--no-install-recommends", *options, str(self.deb), env=APT_ENV)

    def installed(self) -> bool:
        status = run("dpkg-query", "-W", "-f", "${db:Status-Status}", "pop3d", check=False)
        return status.stdout == "installed"

    def purge(self) -> None:
        run("dpkg", "--purge", "pop3d", env=APT_ENV)


@contextlib.contextmanager
def installed_package(deb: Path) -> Iterator[Package]:
    """The package installed for a test module; purged afterwards if a test has not."""
    package = Package(deb)
    package.install_dependencies()
    package.install()
    try:
        yield package
    finally:
        if run("dpkg-query", "-W", "pop3d", check=False).returncode == 0:
            package.purge()


def set_options(path: Path, options: dict[str, dict[str, str]]) -> None:
    """Change ``key = value`` lines of ``path`` in place, section by section, as an operator
    edits /etc/pop3d.toml; values are TOML text.  Every key must be there already."""
    lines = path.read_text().splitlines(keepends=True)
    section, left = "", {s: dict(v) for s, v in options.items()}
    for number, line in enumerate(lines):
        header = re.match(r"^\[(\w+)\]", line)
        section = header.group(1) if header else section
        key = re.match(r"^(\w+) = ", line)
        if key and key.group(1) in left.get(section, {}):
            lines[number] = f"{key.group(1)} = {left[section].pop(key.group(1))}\n"
    assert not any(left.values()), f"not in {path}: {left}"
    path.write_text("".join(lines))


def free_low_port(above: int = 0) -> int:
    """A privileged loopback port above ``above`` that nothing listens on."""
    for port in (port for port in LOW_PORTS if port > above):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LOW_PORTS}")


def tls_context() -> ssl.SSLContext:
    """Trusts exactly the snakeoil certificate (made for the host name, not 127.0.0.1)."""
    context = ssl.create_default_context(cafile=SNAKEOIL)
    context.check_hostname = False
    return context


@contextlib.contextmanager
def pop3_login(port: int, address: str, key: str, *, implicit_tls: bool = False,
               ) -> Iterator[poplib.POP3]:
    """A POP3 session on 127.0.0.1:``port``, upgraded with STLS (or TLS from the start on an
    implicit-TLS port), logged in."""
    if implicit_tls:
        client: poplib.POP3 = poplib.POP3_SSL("127.0.0.1", port, timeout=10,
                                              context=tls_context())
    else:
        client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        if not implicit_tls:
            client.stls(tls_context())
        client.user(address)
        client.pass_(key)
        yield client
    finally:
        with contextlib.suppress(poplib.error_proto, OSError):
            client.quit()
        client.close()


def retrieve(client: poplib.POP3, number: int) -> bytes:
    """Message ``number`` as the server sent it, dot-unstuffed, CRLF line ends."""
    _, lines, _ = client.retr(number)
    return b"".join(line + b"\r\n" for line in lines)


def as_pop3d(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """An installed pop3d command run by the pop3d user, as README.Debian does it."""
    return subprocess.run(["runuser", "-u", "pop3d", "--", "/usr/bin/pop3d", *argv],
                          input=stdin, capture_output=True, check=False, cwd="/")


def admin(*argv: str) -> str:
    """``pop3d <argv>`` as pop3d; its standard output, stripped."""
    result = as_pop3d(*argv)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def add_user(address: str) -> str:
    """A user with a new key; the key."""
    admin("user", "add", address)
    return admin("key", "create", address, "--name", "package test")


def fail2ban_matches(log: Path) -> tuple[int, set[str]]:
    """How many lines of ``log`` the installed filter matches, and the addresses found."""
    output = run("fail2ban-regex", "--verbose", str(log),
                 "/etc/fail2ban/filter.d/pop3d.conf").stdout
    matched = re.search(r"^Lines: \d+ lines, \d+ ignored, (\d+) matched", output, re.M)
    assert matched, output
    addresses = set(re.findall(r"^\|\s+(\S+)\s+\w{3} \w{3} ", output, re.M))
    return int(matched.group(1)), addresses


@pytest.fixture(scope="module")
def shared_tmp() -> Iterator[Path]:
    """A directory the service user can reach (pytest's temporary tree is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="pop3d-package-"))
    directory.chmod(0o755)
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)
