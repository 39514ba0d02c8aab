#!/usr/bin/env bash
# A throw-away PostgreSQL server for the PostgresKeyStore tests.
#
#   source tests/postgres.sh        start one, export HYBRIDKEX_TEST_POSTGRES, and stop it
#                                   (and delete its data) when the sourcing shell exits
#   bash tests/postgres.sh start    start one and leave it running; prints the DSN and
#                                   the data directory
#   bash tests/postgres.sh stop DIR stop the server started in DIR and delete DIR
#
# If HYBRIDKEX_TEST_POSTGRES is already set, nothing is started: the tests use that
# server.  Otherwise a new cluster is made every time, in a new temporary directory,
# on the first free loopback port from $HYBRIDKEX_PG_PORT (default 55432), so two
# test runs on one machine never share or stop each other's server.
#
# On a machine without PostgreSQL, Debian's `postgresql` package is installed with
# apt-get (as root).  PostgreSQL refuses to run as root, so as root the cluster runs
# as the `postgres` user (or, where it does not exist, a system user made for this).
# Authentication is `trust`, on 127.0.0.1 only: this is a test cluster, nothing else.

_hkx_pg_log() { echo "postgres.sh: $*" >&2; }

_hkx_pg_bindir() {
    # initdb and pg_ctl: $PG_BINDIR, then PATH, then Debian's versioned directories
    # (Debian's package does not put them on PATH), newest version first.
    local dir
    if [[ -n "${PG_BINDIR:-}" && -x "$PG_BINDIR/initdb" ]]; then
        echo "$PG_BINDIR"; return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dir=$(dirname "$(readlink -f "$(command -v initdb)")")
        if [[ -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then echo "$dir"; return 0; fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -rn); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"; return 0
        fi
    done
    return 1
}

_hkx_pg_install() {
    if [[ $(id -u) -ne 0 ]]; then
        _hkx_pg_log "PostgreSQL (initdb, pg_ctl) not found and not root: install Debian's" \
            "'postgresql' package, or set PG_BINDIR, or set HYBRIDKEX_TEST_POSTGRES"
        return 1
    fi
    _hkx_pg_log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || return 1
    apt-get install -y -qq --no-install-recommends postgresql >&2 || return 1
}

_hkx_pg_port_free() {
    # Nothing listens on 127.0.0.1:$1 (bash's /dev/tcp: no extra tools needed).
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Run a command as the cluster's owner ($_hkx_pg_user; empty: the current user).
_hkx_pg_as() {
    if [[ -n "$_hkx_pg_user" ]]; then
        runuser -u "$_hkx_pg_user" -- "$@"
    else
        "$@"
    fi
}

hkx_pg_stop() {
    # hkx_pg_stop DIR [USER]: fast shutdown, then delete the directory.
    local dir=$1
    _hkx_pg_user=${2:-$(stat -c %U "$dir" 2>/dev/null)}
    [[ "$_hkx_pg_user" == "$(id -un)" ]] && _hkx_pg_user=""
    local bindir
    bindir=$(_hkx_pg_bindir) || return 0
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        _hkx_pg_as "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf -- "$dir"
}

hkx_pg_start() {
    # Start a cluster; on success sets HKX_PG_DSN and HKX_PG_DIR.
    local bindir port dir
    if ! bindir=$(_hkx_pg_bindir); then
        _hkx_pg_install || return 1
        bindir=$(_hkx_pg_bindir) || { _hkx_pg_log "initdb still not found"; return 1; }
    fi

    _hkx_pg_user=""
    if [[ $(id -u) -eq 0 ]]; then
        _hkx_pg_user=postgres
        if ! id -u postgres >/dev/null 2>&1; then
            _hkx_pg_user=hybridkex-pg
            id -u "$_hkx_pg_user" >/dev/null 2>&1 || useradd --system --no-create-home \
                --shell /usr/sbin/nologin "$_hkx_pg_user" || return 1
        fi
    fi

    port=${HYBRIDKEX_PG_PORT:-55432}
    while ! _hkx_pg_port_free "$port"; do
        port=$((port + 1))
        if (( port > ${HYBRIDKEX_PG_PORT:-55432} + 100 )); then
            _hkx_pg_log "no free port"; return 1
        fi
    done

    dir=$(mktemp -d "${TMPDIR:-/tmp}/hybridkex-pg.XXXXXX") || return 1
    chmod 700 "$dir"
    [[ -n "$_hkx_pg_user" ]] && chown "$_hkx_pg_user:" "$dir"

    if ! _hkx_pg_as "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
        _hkx_pg_log "initdb failed:"; cat "$dir/initdb.log" >&2
        rm -rf -- "$dir"; return 1
    fi
    # Loopback TCP only; the socket lives in the data directory, so nothing outside
    # it (such as /var/run/postgresql) has to exist or be writable.
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 128MB
EOF
    if ! _hkx_pg_as "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            start >/dev/null; then
        _hkx_pg_log "pg_ctl start failed:"; cat "$dir/server.log" >&2
        hkx_pg_stop "$dir"; return 1
    fi
    local i
    for i in $(seq 1 100); do
        "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        sleep 0.1
    done
    if ! "$bindir/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
            -d postgres >/dev/null <<'EOF'
CREATE ROLE hybridkex LOGIN;
CREATE DATABASE hybridkex_test OWNER hybridkex;
EOF
    then
        _hkx_pg_log "creating the test role and database failed"
        hkx_pg_stop "$dir"; return 1
    fi
    HKX_PG_DIR=$dir
    HKX_PG_DSN="postgresql://hybridkex@127.0.0.1:$port/hybridkex_test"
    _hkx_pg_log "PostgreSQL $("$bindir/postgres" -V | awk '{print $3}') on 127.0.0.1:$port," \
        "data in $dir"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: start a server unless one is configured, export its DSN, stop it at exit.
    if [[ -n "${HYBRIDKEX_TEST_POSTGRES:-}" ]]; then
        _hkx_pg_log "using HYBRIDKEX_TEST_POSTGRES as set"
    elif hkx_pg_start; then
        export HYBRIDKEX_TEST_POSTGRES=$HKX_PG_DSN
        _HKX_PG_OWNED_DIR=$HKX_PG_DIR
        _HKX_PG_OWNED_USER=$_hkx_pg_user
        # shellcheck disable=SC2064  # expand now: the trap must stop this server
        trap "hkx_pg_stop '$_HKX_PG_OWNED_DIR' '$_HKX_PG_OWNED_USER'" EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
    else
        _hkx_pg_log "could not start PostgreSQL; the PostgreSQL tests will skip (fail under CI)"
    fi
else
    set -euo pipefail
    case "${1:-start}" in
        start)
            hkx_pg_start
            echo "HYBRIDKEX_TEST_POSTGRES=$HKX_PG_DSN"
            echo "# stop with: bash $0 stop $HKX_PG_DIR"
            ;;
        stop)
            [[ -n "${2:-}" && -d "$2" ]] || { _hkx_pg_log "usage: $0 stop DIR"; exit 2; }
            hkx_pg_stop "$2"
            ;;
        *)
            _hkx_pg_log "usage: source $0 | bash $0 start | bash $0 stop DIR"; exit 2
            ;;
    esac
fi
