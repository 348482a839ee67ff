#!/usr/bin/env bash
# Seed the development database with a demo user, a fresh API key and a few messages, and print
# how to connect.  Safe to run again: the user and the mail are created once, the key anew each
# time (the previous demo keys are revoked, since a key cannot be shown twice).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${1:-conf/dev.toml}
POP3D="$ROOT/.venv/bin/pop3d"
DEMO=demo@example.com

cd "$ROOT"
if ! "$POP3D" user list -c "$CONFIG" | cut -f1 | grep -qix "$DEMO"; then
    "$POP3D" user add "$DEMO" --name "Demo User" -c "$CONFIG" >/dev/null
    "$POP3D" user alias "$DEMO" "postmaster@example.com" -c "$CONFIG" >/dev/null
    for message in "$ROOT"/scripts/demo-mail/*.eml; do
        "$POP3D" deliver -c "$CONFIG" --to "$DEMO" "$message" >/dev/null
    done
fi
"$POP3D" key list "$DEMO" -c "$CONFIG" |
    awk -F'\t' '$3 == "demo" && $NF == "active" {print $1}' |
    while read -r old; do "$POP3D" key revoke "$old" -c "$CONFIG" >/dev/null; done
KEY=$("$POP3D" key create "$DEMO" --name demo -c "$CONFIG" 2>/dev/null)

listen_port() {
    python3 -c 'import sys, tomllib
conf = tomllib.load(open(sys.argv[1], "rb"))
print(conf["server"][sys.argv[2]][0].rpartition(":")[2])' "$CONFIG" "$1"
}
PORT=$(listen_port listen)
TLS_PORT=$(listen_port tls_listen)

cat <<EOF

  Demo user: $DEMO   (alias: postmaster@example.com)
  API key:   $KEY

  Connect with curl:
    curl -u '$DEMO:$KEY' pop3://127.0.0.1:$PORT/          # LIST
    curl -u '$DEMO:$KEY' pop3://127.0.0.1:$PORT/1         # RETR 1
    curl --cacert var/tls/cert.pem -u '$DEMO:$KEY' pop3s://localhost:$TLS_PORT/1

  Connect with Python's poplib (STLS):
    python3 -c 'import poplib, ssl; p = poplib.POP3("127.0.0.1", $PORT); \\
      p.stls(ssl.create_default_context(cafile="var/tls/cert.pem")); \\
      p.user("$DEMO"); p.pass_("$KEY"); print(p.stat()); p.quit()'

EOF
