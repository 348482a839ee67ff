#!/usr/bin/env bash
# Private development and test services for this checkout, all on loopback and under ./var/:
#   - a PostgreSQL cluster (initdb) on the port named in conf/dev.toml's [database] dsn
#   - memcached on the port named in conf/dev.toml's [memcached] servers
#   - a self-signed TLS certificate and an auth-cache secret
#   - HAProxy and PgBouncer installed (not started): the scale-out tests start their own
#     instances on free loopback ports
# Usage: scripts/services.sh start|stop|status
# `start` installs what is missing (apt-get, as root), is idempotent, and writes var/services.env
# (PG*, POP3D_TEST_DSN, POP3D_TEST_MEMCACHED) for the tests.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR="$ROOT/var"
DEV_CONFIG="${DEV_CONFIG:-$ROOT/conf/dev.toml}"
PGDATA_LINK="$VAR/pg"
MC_PIDFILE="$VAR/run/memcached.pid"
PG_DB=pop3d
PG_TEST_DB=pop3d_test
PG_USER=pop3d

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- configuration ---------------------------------------------------------------------------

read_dev_ports() {
    # The ports come from conf/dev.toml, so the server and the services never disagree.
    local out
    out=$(python3 - "$DEV_CONFIG" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    conf = tomllib.load(f)
dsn = dict(part.split("=", 1) for part in conf["database"]["dsn"].split())
print(dsn.get("port", "5432"), conf["memcached"]["servers"][0].rpartition(":")[2])
PY
) || die "cannot read ports from $DEV_CONFIG"
    read -r PG_PORT MC_PORT <<<"$out"
}

# --- installing what is missing --------------------------------------------------------------

apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*; install them (sudo apt-get install $*) or run as root"
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

ensure_packages() {
    local missing=()
    pg_bindir >/dev/null || missing+=(postgresql)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v memcached >/dev/null || missing+=(memcached)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v make-ssl-cert >/dev/null || missing+=(ssl-cert)
    command -v curl >/dev/null || missing+=(curl)  # a real POP3 client for the end-to-end tests
    sbin haproxy >/dev/null || missing+=(haproxy)
    sbin pgbouncer >/dev/null || missing+=(pgbouncer)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    quiet_system_units "${missing[@]}"
    PG_BIN=$(pg_bindir) || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
}

sbin() {
    # Daemons live in /usr/sbin, which is not on every user's PATH.
    command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; }
}

quiet_system_units() {
    # Debian starts the packaged HAProxy and PgBouncer (PgBouncer on the default port 6432);
    # the tests run their own, so the system instances that this script installed are stopped.
    local unit
    command -v systemctl >/dev/null && [ -d /run/systemd/system ] || return 0
    for unit in haproxy pgbouncer; do
        case " $* " in *" $unit "*) systemctl disable --now -q "$unit" 2>/dev/null || true ;; esac
    done
}

# --- PostgreSQL ------------------------------------------------------------------------------

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user (created by the
# Debian package); otherwise as whoever runs this script.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_datadir() {
    # The cluster lives in ./var/pg unless the postgres user cannot reach this checkout (a home
    # directory with mode 700, say); then it lives in /var/tmp and ./var/pg points at it.
    if [ ! -e "$PGDATA_LINK" ]; then
        mkdir -p "$PGDATA_LINK"
        if [ "$(id -u)" = 0 ]; then
            chown postgres: "$PGDATA_LINK"
            if ! runuser -u postgres -- test -w "$PGDATA_LINK"; then
                rmdir "$PGDATA_LINK"
                local elsewhere
                elsewhere="/var/tmp/pop3d-$(echo "$ROOT" | sha1sum | cut -c1-12)"
                mkdir -p "$elsewhere" && chown postgres: "$elsewhere"
                ln -s "$elsewhere" "$PGDATA_LINK"
            fi
        fi
    fi
    PGDATA="$PGDATA_LINK/data"
}

port_taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg_running() {
    [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

pg_init() {
    [ -f "$PGDATA/PG_VERSION" ] && return 0
    log "creating a PostgreSQL cluster in $PGDATA"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U "$PG_USER" --auth=trust -E UTF8 --no-locale >/dev/null
    # A throw-away cluster: durability is traded for speed.
    cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
EOF
}

pg_start() {
    pg_datadir
    pg_init
    if pg_running; then
        log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    else
        port_taken "$PG_PORT" && die "127.0.0.1:$PG_PORT is taken by another program; change the port in $DEV_CONFIG"
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/../postgresql.log" -w -t 60 \
            -o "-p $PG_PORT" start >/dev/null
        log "PostgreSQL started on 127.0.0.1:$PG_PORT"
    fi
    local db
    for db in "$PG_DB" "$PG_TEST_DB"; do
        if ! psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
            psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE $db" >/dev/null
        fi
    done
}

pg_stop() {
    pg_datadir
    if pg_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        log "PostgreSQL stopped"
    fi
}

# --- memcached -------------------------------------------------------------------------------

mc_running() {
    [ -f "$MC_PIDFILE" ] && kill -0 "$(cat "$MC_PIDFILE")" 2>/dev/null
}

mc_start() {
    if mc_running; then
        log "memcached already running on 127.0.0.1:$MC_PORT"
        return 0
    fi
    port_taken "$MC_PORT" && die "127.0.0.1:$MC_PORT is taken by another program; change [memcached] servers in $DEV_CONFIG"
    local user_opt=()
    [ "$(id -u)" = 0 ] && user_opt=(-u nobody)
    setsid memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 64 -c 4096 "${user_opt[@]}" \
        >"$VAR/memcached.log" 2>&1 </dev/null &
    echo $! >"$MC_PIDFILE"
    local _
    for _ in $(seq 50); do port_taken "$MC_PORT" && break; sleep 0.1; done
    port_taken "$MC_PORT" || die "memcached did not start; see $VAR/memcached.log"
    log "memcached started on 127.0.0.1:$MC_PORT"
}

mc_stop() {
    if mc_running; then
        local pid _
        pid=$(cat "$MC_PIDFILE")
        kill "$pid"
        # Gone, and its port free, before we say so: a start right after must find it free.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        log "memcached stopped"
    fi
    rm -f "$MC_PIDFILE"
}

# --- TLS certificate and secret --------------------------------------------------------------

make_tls() {
    mkdir -p "$VAR/tls"
    [ -f "$VAR/tls/cert.pem" ] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:::1" \
        -keyout "$VAR/tls/key.pem" -out "$VAR/tls/cert.pem" 2>/dev/null
    chmod 600 "$VAR/tls/key.pem"
    log "self-signed certificate written to var/tls/cert.pem"
}

make_snakeoil() {
    # Debian's default certificate, which conf/pop3d.toml (the production example) names.
    [ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] && return 0
    [ "$(id -u)" = 0 ] || return 0
    make-ssl-cert generate-default-snakeoil && log "generated Debian's snakeoil certificate"
}

make_secret() {
    [ -f "$VAR/secret" ] && return 0
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$VAR/secret")
}

write_env() {
    cat >"$VAR/services.env" <<EOF
PGHOST=127.0.0.1
PGPORT=$PG_PORT
PGUSER=$PG_USER
POP3D_TEST_DSN="host=127.0.0.1 port=$PG_PORT user=$PG_USER dbname=$PG_TEST_DB"
POP3D_TEST_MEMCACHED=127.0.0.1:$MC_PORT
POP3D_TEST_CERT=$VAR/tls/cert.pem
POP3D_TEST_KEY=$VAR/tls/key.pem
POP3D_TEST_HAPROXY=$(sbin haproxy)
POP3D_TEST_PGBOUNCER=$(sbin pgbouncer)
POP3D_TEST_MEMCACHED_BIN=$(command -v memcached)
EOF
}

# --- commands --------------------------------------------------------------------------------

main() {
    mkdir -p "$VAR/run"
    read_dev_ports
    case "${1:-}" in
        start)
            ensure_packages
            pg_start
            mc_start
            make_tls
            make_snakeoil
            make_secret
            write_env
            ;;
        stop)
            PG_BIN=$(pg_bindir) || exit 0
            pg_stop
            mc_stop
            ;;
        status)
            PG_BIN=$(pg_bindir) || die "PostgreSQL is not installed"
            pg_datadir
            if pg_running; then echo "postgresql: running on 127.0.0.1:$PG_PORT"; else echo "postgresql: stopped"; fi
            if mc_running; then echo "memcached: running on 127.0.0.1:$MC_PORT"; else echo "memcached: stopped"; fi
            ;;
        *) die "usage: $0 start|stop|status" ;;
    esac
}

main "$@"
