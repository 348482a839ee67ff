#!/usr/bin/env bash
# A private Dovecot POP3 server with the same users, keys and mail as the pop3d benchmark setup,
# so that pop3bench can measure both side by side (docs/PERFORMANCE.md).
#
#   scripts/dovecot-bench.sh start     install dovecot-pop3d if missing, (re)build, start, verify
#   scripts/dovecot-bench.sh stop | status | verify
#
# Run scripts/bench_setup.py first: it writes var/bench/users.txt and var/bench/corpus/.
# Nothing of the system's Dovecot is used but its binaries: the configuration, base_dir, log,
# passwd-file and maildirs live in $DOVECOT_DIR (default var/dovecot), the listeners are on
# loopback only, and the system service is never started.
#
# Environment: POP3D_CONFIG or DEV_CONFIG (the pop3d configuration whose [database] dsn holds
# the keys; default conf/dev.toml), DOVECOT_PORT (plain + STLS, default 12120),
# DOVECOT_TLS_PORT (implicit TLS, default 12993), BENCH_DIR (default var/bench), DOVECOT_DIR,
# DOVECOT_AUTH_CACHE_TTL (seconds, default 30; 0 turns the auth cache off).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${POP3D_CONFIG:-${DEV_CONFIG:-$ROOT/conf/dev.toml}}
PORT=${DOVECOT_PORT:-12120}
TLS_PORT=${DOVECOT_TLS_PORT:-12993}
BENCH=${BENCH_DIR:-$ROOT/var/bench}
DIR=${DOVECOT_DIR:-$ROOT/var/dovecot}
CACHE_TTL=${DOVECOT_AUTH_CACHE_TTL:-30}
MAX_SESSIONS=12000  # POP3 sessions at once: Dovecot runs one pop3 process per session
MAIL_USER=mail      # owns the maildirs; Dovecot refuses root

log() { printf 'dovecot-bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_dovecot() {
    command -v dovecot >/dev/null && [ -x /usr/lib/dovecot/pop3 ] && return
    [ "$(id -u)" = 0 ] || die "dovecot-pop3d is missing: sudo apt-get install dovecot-pop3d"
    log "installing dovecot-pop3d with apt-get (the system service is not started)"
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # tell invoke-rc.d not to start the service
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$guard"
        chmod 755 "$guard"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends dovecot-pop3d >/dev/null
    [ -z "$guard" ] || rm -f "$guard"
}

dsn() {
    python3 - "$CONFIG" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f)["database"]["dsn"])
PY
}

# --- the users: address and the bcrypt hash pop3d stored for the key in users.txt ---------------

write_passwd() {
    [ -s "$BENCH/users.txt" ] || die "no $BENCH/users.txt: run scripts/bench_setup.py first"
    psql "$(dsn)" -AtF ' ' -c "SELECT prefix, key_hash FROM api_keys WHERE revoked_at IS NULL" \
        >"$DIR/hashes" || die "cannot read api_keys from $(dsn)"
    # users.txt: "address pk_prefix_secret"; the key's public prefix is everything before the
    # second underscore.  Dovecot's BLF-CRYPT verifies pop3d's $2b$ bcrypt hashes as they are.
    awk 'NR == FNR { hash[$1] = $2; next }
         { split($2, part, "_"); prefix = part[1] "_" part[2]
           if (!(prefix in hash)) { print "no hash for " $1 > "/dev/stderr"; exit 1 }
           print $1 ":{BLF-CRYPT}" hash[prefix] "::::::" }' \
        "$DIR/hashes" "$BENCH/users.txt" >"$DIR/passwd"
    rm -f "$DIR/hashes"
    chmod 640 "$DIR/passwd"
    chgrp dovecot "$DIR/passwd"
}

# --- the mail: the corpus hard-linked into one maildir per user -------------------------------

write_maildirs() {
    rm -rf "$DIR/mail"
    python3 - "$BENCH/corpus" "$BENCH/users.txt" "$DIR/mail" <<'PY'
import os, sys
from pathlib import Path
corpus, users, mail = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
messages = sorted(corpus.glob("*.eml"))
if not messages:
    sys.exit(f"no messages in {corpus}")
source = mail / ".corpus"
source.mkdir(parents=True)
names = []
for number, path in enumerate(messages, 1):
    data = path.read_bytes()  # CRLF already: S= (file size) and W= (POP3 size) agree
    name = f"{1700000000 + number}.M{number}P1.bench,S={len(data)},W={len(data)}:2,"
    (source / name).write_bytes(data)
    names.append(name)
for line in users.read_text().splitlines():
    if not line.strip():
        continue
    box = mail / line.split()[0]
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for name in names:  # maildir order is the order of these names: corpus order
        os.link(source / name, box / "cur" / name)
PY
    chown -R "$MAIL_USER:$MAIL_USER" "$DIR/mail"
}

write_config() {
    local cert="$ROOT/var/tls/cert.pem" key="$ROOT/var/tls/key.pem"
    [ -r "$cert" ] || die "no $cert: run scripts/services.sh start (or make services) first"
    cat >"$DIR/dovecot.conf" <<CONF
# Written by scripts/dovecot-bench.sh: a private instance for benchmarks.
instance_name = pop3d-bench-$PORT
base_dir = $DIR/run
log_path = $DIR/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <$cert
ssl_key = <$key
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=BLF-CRYPT $DIR/passwd
}
userdb {
  driver = static
  args = uid=$MAIL_USER gid=$MAIL_USER home=$DIR/mail/%u
}
auth_cache_size = $([ "$CACHE_TTL" = 0 ] && echo 0 || echo 10M)
auth_cache_ttl = $CACHE_TTL s
auth_cache_negative_ttl = $CACHE_TTL s
mail_location = maildir:$DIR/mail/%u
first_valid_uid = $(id -u "$MAIL_USER")
first_valid_gid = $(id -g "$MAIL_USER")
default_process_limit = $MAX_SESSIONS
default_client_limit = $MAX_SESSIONS
default_vsz_limit = 256M
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $PORT
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $TLS_PORT
    ssl = yes
  }
  # "High-performance" login mode (Dovecot's advice for many connections): a few long-lived
  # login processes, one per core, each proxying many TLS sessions.
  service_count = 0
  process_min_avail = $(nproc)
  process_limit = $(( $(nproc) * 4 ))
  client_limit = $MAX_SESSIONS
}
service pop3 {
  process_limit = $MAX_SESSIONS
}
CONF
}

pid() { cat "$DIR/run/master.pid" 2>/dev/null || true; }

running() { local p; p=$(pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start() {
    ensure_dovecot
    stop_quietly
    mkdir -p "$DIR/run"
    chmod 755 "$DIR"
    write_passwd
    write_maildirs
    write_config
    ulimit -n "$(ulimit -Hn)"  # many sessions: every one is a process with descriptors
    # The daemon must not keep our stdout and stderr open: a caller reading them (make | tail,
    # a CI log) would wait for it to exit.  Its own messages go to its log.
    dovecot -c "$DIR/dovecot.conf" </dev/null >>"$DIR/dovecot.log" 2>&1 ||
        die "dovecot did not start; see $DIR/dovecot.log"
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    running || die "dovecot is not running; see $DIR/dovecot.log"
    verify
    log "running (pid $(pid)): 127.0.0.1:$PORT plain/STLS, 127.0.0.1:$TLS_PORT TLS;" \
        "$(wc -l <"$DIR/passwd") users; log $DIR/dovecot.log"
}

verify() {
    # Dovecot must send each corpus message byte for byte, as pop3d does, or MB/s would not
    # compare like for like.
    python3 - "$BENCH/users.txt" "$BENCH/corpus" "$PORT" <<'PY'
import poplib, sys
from pathlib import Path
users, corpus, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
address, key = users.read_text().split()[:2]
expected = [p.read_bytes() for p in sorted(corpus.glob("*.eml"))]
pop = poplib.POP3("127.0.0.1", port, timeout=30)
pop.user(address)
pop.pass_(key)
count, _ = pop.stat()
assert count == len(expected), f"Dovecot lists {count} messages, the corpus has {len(expected)}"
for number, want in enumerate(expected, 1):
    _, lines, _ = pop.retr(number)  # poplib undoes dot-stuffing and strips the CRLFs
    got = b"".join(line + b"\r\n" for line in lines)
    assert got == want, f"message {number}: Dovecot sent {len(got)} octets, corpus {len(want)}"
pop.quit()
print(f"dovecot-bench: verified {count} messages byte for byte for {address}", file=sys.stderr)
PY
}

stop_quietly() {
    running || return 0
    local p
    p=$(pid)
    dovecot -c "$DIR/dovecot.conf" stop 2>/dev/null || kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    die "dovecot (pid $p) did not stop"
}

case "${1:-}" in
    start) start ;;
    stop) stop_quietly; log "stopped" ;;
    status) if running; then log "running (pid $(pid))"; else log "not running"; exit 3; fi ;;
    verify) verify ;;
    *) echo "usage: $0 start|stop|status|verify" >&2; exit 64 ;;
esac
