"""Range and cross-field checks, run once every value has its type.

Errors make the configuration unusable; warnings flag values that are legal but unwise.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import ssl
import stat
from pathlib import Path

from pop3d.config.schema import LOG_LEVELS, TLS_VERSIONS, Config, TlsConfig
from pop3d.config.values import Collector

RFC1939_MIN_IDLE = 600  # RFC 1939 section 3: the autologout timer must be at least 10 minutes
MAX_LINE_LENGTH = 65536  # a command line, PASS and AUTH included, never needs more
# Each step doubles bcrypt's work: 16 is about 4 s per login, more would stall worker boots.
MAX_BCRYPT_COST = 16
MIN_SECRET_OCTETS = 32  # 256 bits, as many as HMAC-SHA256's output: no weaker than the MAC
_TEXT_SECRET = re.compile(rb"[\x20-\x7e]*")


def check_semantics(config: Config, c: Collector, *, files: bool = True) -> None:
    """Range and cross-field checks, after every value has its type.  ``files=False`` leaves
    out whether the TLS and secret files exist and load: `pop3d deliver` reads neither, and an
    MTA runs it without the supplementary groups (ssl-cert) those files may be readable by."""
    for check in (_check_server, _check_tls, _check_limits, _check_database,
                  _check_memcached, _check_auth, _check_statsd, _check_logging):
        check(config, c)
    if files:
        _check_files(config, c)


def _at_least(c: Collector, key: str, value: float, minimum: float) -> None:
    if value < minimum:
        c.error(key, f"must be at least {minimum:g}, got {value:g}")


def _check_server(config: Config, c: Collector) -> None:
    s = config.server
    if not s.name or not s.name.isascii() or not s.name.isprintable() or " " in s.name:
        c.error("server.name", "must be a non-empty printable ASCII name without spaces")
    if not s.listen and not s.tls_listen:
        c.error("server.listen", "no listen or tls_listen address: the server would serve nobody")
    _at_least(c, "server.workers", s.workers, 0)
    _at_least(c, "server.worker_connections", s.worker_connections, 1)
    _at_least(c, "server.graceful_timeout", s.graceful_timeout, 0)
    _at_least(c, "server.worker_timeout", s.worker_timeout, 2)
    _at_least(c, "server.proxy_timeout", s.proxy_timeout, 0.1)
    _at_least(c, "server.backlog", s.backlog, 1)
    if not s.pidfile:
        c.error("server.pidfile", "must be a path")
    if s.group and not s.user:
        c.error("server.group", "set server.user too (group alone does not drop privileges)")
    _check_account(s.user, s.group, c)


def _check_account(user: str, group: str, c: Collector) -> None:
    # A warning, not an error: the file may be checked on another host than the one it is for.
    try:
        if user:
            pwd.getpwnam(user)
    except KeyError:
        c.warn("server.user", f"no such user {user!r} on this host; `pop3d start` would fail")
    try:
        if group:
            grp.getgrnam(group)
    except KeyError:
        c.warn("server.group", f"no such group {group!r} on this host; `pop3d start` would fail")


def _check_tls(config: Config, c: Collector) -> None:
    t = config.tls
    if t.min_version not in TLS_VERSIONS:
        c.error("tls.min_version", f"must be one of {', '.join(TLS_VERSIONS)}")
    _at_least(c, "tls.handshake_timeout", t.handshake_timeout, 0.1)
    if not t.cert:
        if config.server.tls_listen:
            c.error("tls.cert", "required when server.tls_listen is set")
        if t.key:
            c.error("tls.cert", "tls.key is set but tls.cert is not")
        return
    if not t.key:
        c.error("tls.key", "required when tls.cert is set")


def _check_files(config: Config, c: Collector) -> None:
    t = config.tls
    if t.cert and t.key:
        missing = [(key, path) for key, path in (("tls.cert", t.cert), ("tls.key", t.key))
                   if not os.path.isfile(path)]
        for key, path in missing:
            c.error(key, f"file not found: {path}")
        if not missing:
            _try_load_certificate(t, c)
    secret = config.auth.secret_file
    if secret:
        problem = secret_problem(secret)
        if problem:
            c.error("auth.secret_file", problem)


def _try_load_certificate(t: TlsConfig, c: Collector) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(t.cert, t.key)
    except (ssl.SSLError, OSError) as exc:
        c.error("tls.cert", f"cannot load certificate and key: {exc}")


def _check_limits(config: Config, c: Collector) -> None:
    lim = config.limits
    _at_least(c, "limits.line_length", lim.line_length, 512)  # RFC 2449: commands up to 255
    if lim.line_length > MAX_LINE_LENGTH:
        c.error("limits.line_length", f"must be at most {MAX_LINE_LENGTH}, got {lim.line_length}")
    _at_least(c, "limits.login_timeout", lim.login_timeout, 1)
    _at_least(c, "limits.message_cache_mb", lim.message_cache_mb, 0)
    _at_least(c, "limits.idle_timeout", lim.idle_timeout, 1)
    _at_least(c, "limits.max_connections_per_user", lim.max_connections_per_user, 1)
    _at_least(c, "limits.max_messages_per_session", lim.max_messages_per_session, 1)
    _at_least(c, "limits.max_bad_commands", lim.max_bad_commands, 1)
    _at_least(c, "limits.login_deadline", lim.login_deadline, 1)
    _at_least(c, "limits.max_connections_per_address", lim.max_connections_per_address, 1)
    _at_least(c, "limits.max_tls_handshakes_per_address", lim.max_tls_handshakes_per_address, 1)
    if not 1 <= lim.ipv6_prefix <= 128:
        c.error("limits.ipv6_prefix", f"must be 1-128, got {lim.ipv6_prefix}")
    if 1 <= lim.idle_timeout < RFC1939_MIN_IDLE:
        c.warn("limits.idle_timeout", f"{lim.idle_timeout:g} s is below RFC 1939's 600 s minimum")


def _check_database(config: Config, c: Collector) -> None:
    if not config.database.dsn.strip():
        c.error("database.dsn", "must not be empty")
    _at_least(c, "database.connect_timeout", config.database.connect_timeout, 1)
    _at_least(c, "database.connections", config.database.connections, 1)
    timeout, heartbeat = config.database.statement_timeout, config.server.worker_timeout
    if not 0 < timeout < heartbeat:
        c.error("database.statement_timeout",
                f"must be above 0 and below server.worker_timeout ({heartbeat:g} s), got "
                f"{timeout:g}: a query that runs longer stalls a worker until it is killed")


def _check_memcached(config: Config, c: Collector) -> None:
    m = config.memcached
    _at_least(c, "memcached.timeout", m.timeout, 0.01)
    if m.registry_failure not in ("open", "closed"):
        c.error("memcached.registry_failure", 'must be "open" or "closed"')
    _at_least(c, "memcached.retry_after", m.retry_after, 0)
    # memcached expires by whole seconds; a worker refreshes every slot_ttl / 2.
    _at_least(c, "memcached.slot_ttl", m.slot_ttl, 2)


def _check_auth(config: Config, c: Collector) -> None:
    a = config.auth
    if not a.scope.strip():
        c.error("auth.scope", "must not be empty")
    _at_least(c, "auth.cache_ttl", a.cache_ttl, 0)
    _at_least(c, "auth.failure_delay", a.failure_delay, 0)
    _at_least(c, "auth.max_failures", a.max_failures, 1)
    _at_least(c, "auth.lockout", a.lockout, 0)
    _at_least(c, "auth.verify_budget", a.verify_budget, 1)
    _at_least(c, "auth.verify_window", a.verify_window, 1)
    _at_least(c, "auth.threads", a.threads, 1)
    if not 4 <= a.bcrypt_cost <= MAX_BCRYPT_COST:
        c.error("auth.bcrypt_cost", f"must be 4-{MAX_BCRYPT_COST}, got {a.bcrypt_cost}")
    elif a.bcrypt_cost < 10:
        c.warn("auth.bcrypt_cost", f"{a.bcrypt_cost} is cheap to brute-force; 10 or more is usual")
    elif a.bcrypt_cost > 12:
        c.warn("auth.bcrypt_cost", f"{a.bcrypt_cost} costs about {2 ** (a.bcrypt_cost - 12) / 4:g}"
               " s of CPU per login")
    if a.allow_plaintext:
        c.warn("auth.allow_plaintext", "keys may cross the network unencrypted")


def load_secret(path: str) -> bytes:
    """A secret file's key: text (printable ASCII, say hex or base64) without the whitespace
    around it, anything else exactly as stored (32 random octets may end in a newline octet)."""
    data = Path(path).read_bytes()
    text = data.strip()
    return text if _TEXT_SECRET.fullmatch(text) else data


def secret_problem(path: str) -> str | None:
    """Why ``path`` cannot key the auth cache, or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    if mode & 0o006:
        return (f"{path} is readable or writable by every user (mode "
                f"{stat.S_IMODE(mode):04o}): chmod o-rwx {path}, e.g. root:pop3d 0640")
    return _secret_length_problem(path)


def _secret_length_problem(path: str) -> str | None:
    try:
        octets = len(load_secret(path))
    except PermissionError:
        return None  # the access check (pop3d.master.access) names the user and the fix
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if octets < MIN_SECRET_OCTETS:
        return (f"{path} holds {octets} octets, fewer than {MIN_SECRET_OCTETS}: e.g. head -c "
                f"{MIN_SECRET_OCTETS} /dev/urandom > {path}")
    return None


def _check_statsd(config: Config, c: Collector) -> None:
    st = config.statsd
    if not 1 <= st.port <= 65535:
        c.error("statsd.port", f"must be 1-65535, got {st.port}")
    if st.enabled and not st.host:
        c.error("statsd.host", "must be set when statsd.enabled is true")


def _check_logging(config: Config, c: Collector) -> None:
    if config.logging.level.lower() not in LOG_LEVELS:
        c.error("logging.level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_file = config.logging.file
    if log_file and not os.path.isdir(os.path.dirname(os.path.abspath(log_file))):
        c.error("logging.file", f"directory does not exist: {os.path.dirname(log_file)}")

