#!/usr/bin/env bash
# Create ./.venv with pop3d (editable) and the test tools; install python3-venv when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV="$ROOT/.venv"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || { log "error: $PYTHON not found"; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { log "error: pop3d needs Python 3.11 or newer ($("$PYTHON" --version))"; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 ships venv's pip in a separate package.
        rm -rf "$VENV"
        [ "$(id -u)" = 0 ] || { log "error: install python3-venv (sudo apt-get install python3-venv)"; exit 1; }
        log "installing python3-venv with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$PYTHON" -m venv "$VENV"
    fi
fi
log "installing pop3d and its test tools into .venv"
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
"$VENV/bin/python" -c 'import pop3d, psycopg2, bcrypt, pymemcache, statsd, click, setproctitle, pytest, hypothesis' ||
    { log "error: the installation is incomplete"; exit 1; }
touch "$VENV/.installed"
