"""What the Postfix test runs besides the package: a Postfix instance of its own and a
PostgreSQL cluster of its own.

:class:`Postfix` is a second Postfix instance with its configuration, queue and log in one
directory: nothing in /etc/postfix or /var/spool/postfix is touched, and it has no SMTP
listener at all (mail enters with ``sendmail -C``).  Its main.cf and master.cf end with the
examples the package installs, so the transport under test is the one operators copy.

:class:`Cluster` is a PostgreSQL cluster that the test can stop and start again without
disturbing the cluster the other tests share.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from e2e.conftest import wait_until

EXAMPLES = Path("/usr/share/doc/pop3d/examples")

INSTANCE = """\
# A test instance: configuration, queue, data and log under {root}.
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/lib
maillog_file = {root}/maillog
myhostname = postfix.{domain}
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =

# The package's example, for the test domain:
"""

# Postfix's own services, without chroot and without any inet listener.
SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd

# The package's example:
"""


def _run(*argv: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:\n{output}")
    return output


class Postfix:
    """A Postfix instance in ``root`` delivering ``domain`` into pop3d."""

    def __init__(self, root: Path, domain: str) -> None:
        self.root = root
        self.etc = root / "etc"
        self.maillog = root / "maillog"
        self.etc.mkdir()
        (root / "lib").mkdir()
        (root / "spool").mkdir()
        _run("chown", "postfix:", str(root / "lib"))
        example = (EXAMPLES / "main.cf").read_text().replace("example.com", domain)
        (self.etc / "main.cf").write_text(INSTANCE.format(root=root, domain=domain) + example)
        (self.etc / "master.cf").write_text(SERVICES + (EXAMPLES / "master.cf").read_text())

    def start(self) -> None:
        _run("postfix", "-c", str(self.etc), "start")

    def stop(self) -> None:
        if subprocess.run(["postfix", "-c", str(self.etc), "status"], capture_output=True,
                          check=False).returncode == 0:
            _run("postfix", "-c", str(self.etc), "stop")
        wait_until(lambda: subprocess.run(["postfix", "-c", str(self.etc), "status"],
                                          capture_output=True, check=False).returncode != 0,
                   30, "Postfix to stop")

    def sendmail(self, raw: bytes, sender: str, *recipients: str) -> None:
        """Submit as a local program does: ``sendmail -i`` (a lone dot is not the end)."""
        _run("sendmail", "-C", str(self.etc), "-f", sender, "-i", "--", *recipients, stdin=raw)

    def flush(self) -> None:
        """Retry the deferred mail now."""
        _run("postqueue", "-c", str(self.etc), "-f")

    def queued(self) -> list[str]:
        """The recipients of the mail waiting in the queue."""
        lines = _run("postqueue", "-c", str(self.etc), "-j").splitlines()
        return [r["address"] for line in lines for r in json.loads(line)["recipients"]]

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def wait_status(self, message_id: str, recipient: str, status: str,
                    timeout: float = 30.0) -> str:
        """The log line reporting ``status`` (sent, bounced, deferred) of the message with
        this Message-ID for ``recipient``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            queue_id = re.search(rf"\b([0-9A-F]+): message-id=<{re.escape(message_id)}>", log)
            found = queue_id and re.search(
                rf"^.* {queue_id.group(1)}: to=<{re.escape(recipient)}>,.* status={status} .*$",
                log, re.M)
            if found:
                return found.group(0)
            time.sleep(0.05)
        raise AssertionError(f"no status={status} for {recipient} within {timeout:g} s:\n"
                             f"{self.log()}")


class Cluster:
    """A PostgreSQL cluster in ``root`` on port ``port``: superuser pop3d, who logs in through
    the Unix socket in ``root`` by peer authentication, as README.Debian sets it up (the OS
    user pop3d is the role pop3d, no password), or through 127.0.0.1 without one."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.logfile = root / "postgresql.log"
        self.port = port
        self.bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                             key=lambda p: int(p.parent.parent.name))[-1].parent
        _run("chown", "postgres:", str(root))
        self._as_postgres("initdb", "-D", str(self.data), "-U", "pop3d", "--auth-local=peer",
                          "--auth-host=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nsynchronous_commit = off\n")

    def _as_postgres(self, program: str, *args: str) -> str:
        return _run("runuser", "-u", "postgres", "--", str(self.bindir / program), *args)

    def socket_dsn(self, dbname: str) -> str:
        """Through the Unix socket as whoever connects: peer authentication."""
        return f"host={self.root} port={self.port} dbname={dbname}"

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w",
                          "-o", f"-p {self.port}", "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"),
                               "-D", str(self.data), "status"], capture_output=True,
                              check=False).returncode == 0

    def create_database(self, name: str) -> None:
        dsn = f"host=127.0.0.1 port={self.port} user=pop3d dbname=postgres"
        _run(str(self.bindir / "psql"), dsn, "-qc", f"CREATE DATABASE {name}")
