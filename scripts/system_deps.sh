#!/usr/bin/env bash
# System packages the test suite uses: a PostgreSQL server (the results store's cluster backend)
# and Debian's Chromium (the results page's screenshot test).
#
# Idempotent and quick when everything is there; never fails the build: where apt is missing or
# an install fails it says why and exits 0, and the tests that need the package skip with a reason.
set -u

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
have_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

missing=()
have_postgres || missing+=(postgresql)
have_chromium || missing+=(chromium)
# Text on screenshots needs at least one font; fontconfig usually brings DejaVu along.
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ]; then
    echo "system_deps: postgresql, chromium and fonts already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps: apt-get not found; cannot install ${missing[*]} (the tests that need them will skip)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "system_deps: not root and no password-less sudo; cannot install ${missing[*]} (tests will skip)"
        exit 0
    fi
fi

echo "system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/system_deps_apt.log 2>&1; then
    # The package lists may be missing or stale on a fresh machine: refresh once and retry.
    $SUDO apt-get update -qq >>/tmp/system_deps_apt.log 2>&1 || true
    if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/system_deps_apt.log 2>&1; then
        echo "system_deps: apt-get install ${missing[*]} failed (see /tmp/system_deps_apt.log); tests will skip"
        tail -n 5 /tmp/system_deps_apt.log
        exit 0
    fi
fi
echo "system_deps: installed ${missing[*]}"
exit 0
