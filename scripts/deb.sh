#!/usr/bin/env bash
# Build the Debian package into dist/, and install what building and testing it need.
# Usage: scripts/deb.sh build       build dist/pop3d_<version>_all.deb unless it is up to date
#        scripts/deb.sh lintian     lintian on the built package (fails on errors and warnings)
#        scripts/deb.sh test-deps   install what the package tests use (postfix, fail2ban, ...)
# Building needs root only to install missing build dependencies (apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIST="$ROOT/dist"
BUILD="$ROOT/build/deb"
STAMP="$DIST/.source-digest"

log() { printf 'deb: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*; install them (sudo apt-get install $*) or run as root"
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

# The files the package is built from: what git tracks or would track, else everything
# outside the development directories.
source_files() {
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$ROOT" ls-files -co --exclude-standard -- setup.py pyproject.toml README.md \
            pop3d conf docs debian | while read -r f; do [ -f "$ROOT/$f" ] && echo "$f"; done
    else
        (cd "$ROOT" && find setup.py pyproject.toml README.md pop3d conf docs debian -type f \
            -not -path '*/__pycache__/*')
    fi
}

source_digest() {
    (cd "$ROOT" && source_files | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum | cut -d' ' -f1
}

version() {
    dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version
}

ensure_build_deps() {
    if ! (cd "$1" && dpkg-checkbuilddeps 2>/dev/null); then
        [ "$(id -u)" = 0 ] || die "missing build dependencies (see dpkg-checkbuilddeps); run as root"
        log "installing the build dependencies with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
        apt-get -o DPkg::Lock::Timeout=300 build-dep -y -qq "$1" >/dev/null
    fi
}

build() {
    local digest deb
    command -v dpkg-buildpackage >/dev/null || apt_install dpkg-dev
    digest=$(source_digest)
    deb="$DIST/pop3d_$(version)_all.deb"
    if [ -f "$deb" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$digest" ]; then
        log "$deb is up to date"
        return 0
    fi
    # A copy of the sources: dpkg-buildpackage writes into the parent directory and leaves
    # build trees behind, neither of which belongs in the checkout.
    local tree="$BUILD/pop3d-$(version)"
    rm -rf "$BUILD" && mkdir -p "$tree"
    (cd "$ROOT" && source_files | tar -cf - -T -) | tar -xf - -C "$tree"
    ensure_build_deps "$tree"
    log "building in $tree"
    (cd "$tree" && dpkg-buildpackage -us -uc -b) >"$BUILD/build.log" 2>&1 ||
        { tail -n 40 "$BUILD/build.log" >&2; die "dpkg-buildpackage failed; see $BUILD/build.log"; }
    mkdir -p "$DIST"
    rm -f "$DIST"/pop3d_*
    mv "$BUILD"/pop3d_*.deb "$BUILD"/pop3d_*.buildinfo "$BUILD"/pop3d_*.changes "$DIST/"
    echo "$digest" >"$STAMP"
    log "built $deb"
}

run_lintian() {
    command -v lintian >/dev/null || apt_install lintian
    local changes
    changes=$(ls "$DIST"/pop3d_*.changes 2>/dev/null | head -n 1)
    [ -n "$changes" ] || die "no package in $DIST: run scripts/deb.sh build first"
    lintian --fail-on error,warning "$changes"
}

test_deps() {
    local missing=()
    command -v fail2ban-regex >/dev/null || missing+=(fail2ban)
    command -v logrotate >/dev/null || missing+=(logrotate)
    command -v lintian >/dev/null || missing+=(lintian)
    command -v man >/dev/null || missing+=(man-db)  # systemd-analyze verify reads Documentation=
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v setpriv >/dev/null || missing+=(util-linux)
    if ! command -v postfix >/dev/null; then
        # Postfix unconfigured: the tests run their own instance; the system's stays off.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        missing+=(postfix)
    fi
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

case "${1:-}" in
    build) build ;;
    lintian) run_lintian ;;
    test-deps) test_deps ;;
    *) die "usage: $0 build|lintian|test-deps" ;;
esac
