#!/bin/sh
# A private PostgreSQL cluster in a directory, for `make run` and the tests.
#
#   scripts/pg.sh start DIR [PORT]   init DIR/data if missing, start it on a unix
#                                    socket only (no TCP), create database
#                                    tokmon; print one line, the conninfo
#   scripts/pg.sh stop DIR           fast shutdown; status 0 if not running
#   scripts/pg.sh status DIR         "running pid N: CONNINFO" (status 0) or
#                                    "not running" (status 3)
#   scripts/pg.sh conninfo DIR       the conninfo (the cluster must exist)
#   scripts/pg.sh destroy DIR        stop, then remove DIR and the cluster
#
# The conninfo is `host=SOCKETDIR port=PORT dbname=tokmon user=postgres`
# (trust authentication over the unix socket). The port is chosen once
# (PORT, or a free one near 5432) and kept in DIR/port. Server log: DIR/log.
#
# As root, PostgreSQL runs as the postgres user (initdb refuses root). When
# postgres cannot reach DIR (a parent directory it may not traverse), or DIR
# is too long for a unix socket path, the cluster lives in
# /var/tmp/tokmon-pg-HASH (HASH from DIR's absolute path) instead: DIR/home
# names it, DIR/data and DIR/log are symlinks into it, and the socket is
# there (the conninfo says so).
#
# Environment: PGBIN (default /usr/lib/postgresql/15/bin), TOKMON_PG_FAST=1
# (initdb --no-sync and fsync=off: for tests, not for data you keep),
# TOKMON_PG_TIMEOUT (seconds for start/stop, default 60).
set -u

prog=pg.sh
die() { echo "$prog: $*" >&2; exit 1; }
usage() {
    echo "usage: $prog start DIR [PORT] | stop DIR | status DIR | conninfo DIR | destroy DIR" >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
arg_dir=$2
arg_port=${3:-}
[ -n "$arg_dir" ] || usage
case $cmd in
    start) [ $# -le 3 ] || usage ;;
    stop|status|conninfo|destroy) [ $# -eq 2 ] || usage ;;
    *) usage ;;
esac
if [ -n "$arg_port" ]; then
    case $arg_port in
        *[!0-9]*) die "PORT must be a number: $arg_port" ;;
    esac
    if [ "$arg_port" -lt 1 ] || [ "$arg_port" -gt 65535 ]; then die "PORT out of range: $arg_port"; fi
fi

tmo=${TOKMON_PG_TIMEOUT:-60}
# the caller's libpq settings must not redirect what this script runs
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGSERVICE PGSERVICEFILE PGOPTIONS PGDATA \
    PGPASSWORD PGPASSFILE PGSSLMODE PGTARGETSESSIONATTRS 2>/dev/null

# ---- PostgreSQL's programs -------------------------------------------------------

if [ -z "${PGBIN:-}" ]; then
    PGBIN=/usr/lib/postgresql/15/bin
    if [ ! -x "$PGBIN/pg_ctl" ]; then
        for d in /usr/lib/postgresql/*/bin; do
            [ -x "$d/pg_ctl" ] && PGBIN=$d
        done
    fi
    if [ ! -x "$PGBIN/pg_ctl" ] && command -v pg_ctl >/dev/null 2>&1; then
        PGBIN=$(dirname "$(command -v pg_ctl)")
    fi
fi
for p in initdb pg_ctl postgres; do
    [ -x "$PGBIN/$p" ] || die "$PGBIN/$p not found (install postgresql-15, or set PGBIN)"
done
PSQL=$PGBIN/psql
[ -x "$PSQL" ] || PSQL=$(command -v psql 2>/dev/null) || die "psql not found"

if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a postgres user (initdb refuses root)"
    root=1
else
    root=0
fi

# as_pg CMD...: a PostgreSQL program as the cluster's owner, bounded in time
as_pg() {
    if [ $root = 1 ]; then
        timeout -k 5 "$((tmo + 15))" runuser -u postgres -- "$@"
    else
        timeout -k 5 "$((tmo + 15))" "$@"
    fi
}
pg_test() { # test ARGS... as the cluster's owner
    if [ $root = 1 ]; then
        runuser -u postgres -- test "$@"
    else
        test "$@"
    fi
}

# ---- where the cluster lives -----------------------------------------------------

case $arg_dir in
    /*) dir=$arg_dir ;;
    *) dir=$(pwd -P)/$arg_dir ;;
esac
# normalise (.., //, trailing /) without needing DIR to exist
dir=$(printf '%s\n' "$dir" | awk -F/ '{
    n = 0
    for (i = 1; i <= NF; i++) {
        if ($i == "" || $i == ".") continue
        if ($i == "..") { if (n > 0) n--; continue }
        part[++n] = $i
    }
    out = ""
    for (i = 1; i <= n; i++) out = out "/" part[i]
    print (out == "" ? "/" : out)
}')
[ "$dir" != / ] || die "DIR must not be /"
case $dir in
    *[!A-Za-z0-9_./+:@%,=-]*)
        die "DIR may hold only letters, digits and _ . / + : @ % , = - (it goes into a conninfo): $dir" ;;
esac

# home: the directory holding data/, log and the socket; DIR itself, or
# the /var/tmp fallback named in DIR/home
home_of() {
    if [ -f "$dir/home" ]; then
        cat "$dir/home"
    else
        echo "$dir"
    fi
}
fallback_home() {
    h=$(printf '%s' "$dir" | sha256sum | cut -c1-16)
    echo "/var/tmp/tokmon-pg-$h"
}

# a unix socket path is at most 107 bytes: HOME/.s.PGSQL.NNNNN
socket_fits() { [ $((${#1} + 18)) -le 107 ]; }

decide_home() { # sets home; creates DIR (and the fallback) as needed
    mkdir -p "$dir" || die "cannot create $dir"
    if [ -f "$dir/home" ] || [ -e "$dir/data" ] || [ -L "$dir/data" ]; then
        home=$(home_of)
        return
    fi
    reason=
    if ! socket_fits "$dir"; then
        reason="$dir is too long for a unix socket path"
    elif [ $root = 1 ] && ! runuser -u postgres -- test -x "$(dirname "$dir")"; then
        reason="the postgres user cannot reach $dir"
    elif [ $root = 0 ] && ! { [ -w "$dir" ] && [ -x "$dir" ]; }; then
        die "$dir is not writable"
    fi
    if [ -z "$reason" ]; then
        home=$dir
        if [ $root = 1 ]; then
            chown postgres:postgres "$dir" || die "cannot chown $dir to postgres"
            pg_test -w "$dir" -a -x "$dir" || reason="the postgres user cannot write $dir"
        fi
    fi
    if [ -n "$reason" ]; then
        home=$(fallback_home)
        echo "$prog: $reason; keeping the cluster in $home (DIR/data and DIR/log point there)" >&2
        mkdir -p "$home" || die "cannot create $home"
        [ $root = 1 ] && { chown postgres:postgres "$home" || die "cannot chown $home"; }
        chmod 755 "$home"
        printf '%s\n' "$dir" >"$home/owner"
        printf '%s\n' "$home" >"$dir/home" || die "cannot write $dir/home"
        ln -sfn "$home/data" "$dir/data"
        ln -sfn "$home/log" "$dir/log"
    fi
}

# the port: remembered in DIR/port; else PORT; else a free one near 5432
pick_port() {
    if [ -n "$arg_port" ]; then
        port=$arg_port
    elif [ -s "$dir/port" ]; then
        port=$(cat "$dir/port")
    else
        h=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
        port=$((5433 + h % 2000))
        n=0
        while [ $n -lt 200 ] && port_busy "$port"; do
            port=$((port + 1)); n=$((n + 1))
        done
    fi
    printf '%s\n' "$port" >"$dir/port" || die "cannot write $dir/port"
}
port_busy() { # something listens on TCP PORT, or a socket file is in the way
    [ -e "$home/.s.PGSQL.$1" ] && return 0
    command -v ss >/dev/null 2>&1 || return 1
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

conninfo() { echo "host=$home port=$1 dbname=tokmon user=postgres"; }

# running_pid: the postmaster's PID if the cluster runs (pg_ctl status)
running_pid() {
    [ -f "$home/data/PG_VERSION" ] || return 1
    as_pg "$PGBIN/pg_ctl" -D "$home/data" status >/dev/null 2>&1 || return 1
    head -1 "$home/data/postmaster.pid" 2>/dev/null
}
running_port() { sed -n 4p "$home/data/postmaster.pid" 2>/dev/null; }

log_tail() {
    if [ -f "$home/log" ]; then
        echo "$prog: the last lines of $home/log:" >&2
        tail -n 20 "$home/log" | sed 's/^/  /' >&2
    fi
}

# ---- commands --------------------------------------------------------------------

do_start() {
    decide_home
    if [ -f "$home/owner" ] && [ "$(cat "$home/owner")" != "$dir" ]; then
        die "$home belongs to $(cat "$home/owner"), not $dir"
    fi
    # one start at a time per DIR; the lock's descriptor is not passed on
    if command -v flock >/dev/null 2>&1; then
        exec 9>>"$dir/.lock" || die "cannot open $dir/.lock"
        flock -w "$tmo" 9 || die "another pg.sh holds $dir/.lock"
    fi
    if pid=$(running_pid); then
        port=$(running_port)
        [ -n "$port" ] || port=$(cat "$dir/port")
        conninfo "$port"
        return 0
    fi
    pick_port
    if [ ! -f "$home/data/PG_VERSION" ]; then
        if [ -d "$home/data" ] && [ -n "$(ls -A "$home/data" 2>/dev/null)" ]; then
            die "$home/data exists but holds no cluster (no PG_VERSION); remove it"
        fi
        [ -d "$home/data" ] && rmdir "$home/data"
        fast=
        [ "${TOKMON_PG_FAST:-0}" = 1 ] && fast=--no-sync
        if ! out=$(as_pg "$PGBIN/initdb" -D "$home/data" -U postgres -A trust -E UTF8 \
                --no-locale $fast 9>&- 2>&1); then
            echo "$out" | tail -n 20 >&2
            die "initdb -D $home/data failed"
        fi
    fi
    opts="-k $home -p $port -c listen_addresses=''"
    [ "${TOKMON_PG_FAST:-0}" = 1 ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if [ $root = 1 ] && [ ! -e "$home/log" ]; then
        : >"$home/log" && chown postgres:postgres "$home/log"
    fi
    if ! as_pg "$PGBIN/pg_ctl" -D "$home/data" -l "$home/log" -s -w -t "$tmo" -o "$opts" start \
            9>&- >/dev/null; then
        echo "$prog: pg_ctl start failed (port $port, socket in $home)" >&2
        log_tail
        exit 1
    fi
    # the database tokmon
    admin="host=$home port=$port dbname=postgres user=postgres connect_timeout=10"
    if ! have=$(timeout 30 "$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 \
            -c "select 1 from pg_database where datname = 'tokmon'" "$admin" 2>&1); then
        echo "$have" >&2
        log_tail
        die "cannot connect to the new server ($admin)"
    fi
    if [ "$have" != 1 ]; then
        if ! out=$(timeout 30 "$PSQL" -X -q -v ON_ERROR_STOP=1 -c "create database tokmon" "$admin" 2>&1); then
            echo "$out" >&2
            die "cannot create database tokmon"
        fi
    fi
    conninfo "$port"
}

# these find the cluster without creating anything
existing_home() {
    [ -d "$dir" ] || return 1
    home=$(home_of)
    [ -f "$home/data/PG_VERSION" ]
}

do_stop() {
    existing_home || return 0
    running_pid >/dev/null || return 0
    if ! as_pg "$PGBIN/pg_ctl" -D "$home/data" -m fast -s -w -t "$tmo" stop >/dev/null; then
        echo "$prog: fast shutdown did not finish in $tmo s; immediate shutdown" >&2
        as_pg "$PGBIN/pg_ctl" -D "$home/data" -m immediate -s -w -t "$tmo" stop >/dev/null || {
            log_tail
            die "cannot stop the server in $home/data"
        }
    fi
    return 0
}

do_status() {
    if existing_home && pid=$(running_pid); then
        echo "running pid $pid: $(conninfo "$(running_port)")"
        return 0
    fi
    echo "not running"
    return 3
}

do_conninfo() {
    existing_home || die "no cluster in $dir (run: $prog start $arg_dir)"
    port=$(running_port)
    if [ -z "$port" ] || ! running_pid >/dev/null; then
        port=$(cat "$dir/port" 2>/dev/null) || die "no port in $dir/port"
    fi
    conninfo "$port"
}

do_destroy() {
    [ -d "$dir" ] || return 0
    home=$(home_of)
    if [ ! -f "$dir/port" ] && [ ! -f "$home/data/PG_VERSION" ] && [ ! -f "$dir/home" ] &&
        [ -n "$(ls -A "$dir")" ]; then
        die "$dir does not look like a pg.sh cluster; not removing it"
    fi
    do_stop || exit 1
    if [ "$home" != "$dir" ]; then
        case $home in
            /var/tmp/tokmon-pg-*)
                if [ "$(cat "$home/owner" 2>/dev/null)" = "$dir" ] || [ ! -e "$home/owner" ]; then
                    rm -rf "$home"
                fi ;;
        esac
    fi
    rm -rf "$dir"
}

case $cmd in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    conninfo) do_conninfo ;;
    destroy) do_destroy ;;
esac
