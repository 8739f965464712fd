#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine, in the foreground, with
# deploy/local/tokmon.ini (state under ./run/). DEMO=1 adds demo traffic.
# Ctrl-C or SIGTERM stops every stage it started (by PID) and waits for them.
# Every stage's environment overrides work: TOKMON_COLLECTD_UDP=127.0.0.1:18125 make run
# With no database configured (TOKMON_PGWRITER_DATABASE, `database =` in
# [pgwriter], PGHOST or PGDATABASE) the writer gets a private PostgreSQL
# cluster in ./run/pg (scripts/pg.sh), kept between runs, stopped at the end.
set -u
BIN=${1:-build/bin}
export TOKMON_CONFIG=${TOKMON_CONFIG:-deploy/local/tokmon.ini}
CFG=$TOKMON_CONFIG
mkdir -p run

pids=()
names=()
stopping=0
pg_started=0
dbinfo=

pg_stop() {
    if [ $pg_started = 1 ]; then
        pg_started=0
        scripts/pg.sh stop run/pg || echo "run: could not stop the PostgreSQL cluster in run/pg" >&2
    fi
}

start() { # name command...
    local name=$1; shift
    "$@" &
    pids+=($!)
    names+=("$name")
}

stop_all() {
    stopping=1
    trap - INT TERM
    for ((i=${#pids[@]}-1; i>=0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null
    done
    pg_stop
}

trap 'echo; echo "run: stopping"; stop_all; exit 0' INT TERM
trap 'pg_stop' EXIT

# a non-empty `database =` in the [pgwriter] section of the config
cfg_database() {
    awk '/^[ \t]*\[/ { s = ($0 ~ /^[ \t]*\[[ \t]*pgwriter[ \t]*\]/); next }
         s && /^[ \t]*database[ \t]*=/ {
             v = $0; sub(/^[^=]*=/, "", v); sub(/[ \t]+;.*$/, "", v)
             gsub(/^[ \t]+|[ \t]+$/, "", v); gsub(/^"|"$/, "", v)
             if (v != "") { print v; exit }
         }' "$CFG"
}

stages=(tokmon-collectd tokmon-aggregator)
[ -x "$BIN/tokmon-pgwriter" ] && stages+=(tokmon-pgwriter)
stages+=(tokmon-exporter tokmon-alerter)

# the JSON API's key: made once, kept in run/ (mode 600)
keyfile=${TOKMON_EXPORTER_API_KEY_FILE:-run/api.key}
if [ ! -s "$keyfile" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '\n/+=' >"$keyfile" && echo >>"$keyfile")
fi
export TOKMON_EXPORTER_API_KEY_FILE=$keyfile

if [ -n "${TOKMON_PGWRITER_DATABASE:-}" ]; then
    dbinfo=$TOKMON_PGWRITER_DATABASE
elif dbinfo=$(cfg_database) && [ -n "$dbinfo" ]; then
    :
elif [ -n "${PGHOST:-}" ] || [ -n "${PGDATABASE:-}" ]; then
    dbinfo=
else
    pg_started=1
    if ! dbinfo=$(scripts/pg.sh start run/pg); then
        echo "run: could not start the private PostgreSQL cluster in run/pg (see above)" >&2
        exit 1
    fi
    export TOKMON_PGWRITER_DATABASE=$dbinfo
    echo "run: PostgreSQL for the writer in run/pg: $dbinfo"
fi

for stage in "${stages[@]}"; do
    if ! "$BIN/$stage" -c "$CFG" -n >/dev/null; then
        "$BIN/$stage" -c "$CFG" -n
        exit 1
    fi
done

# stages in pipeline order; later stages add themselves here
start tokmon-collectd "$BIN/tokmon-collectd" -c "$CFG"
start tokmon-aggregator "$BIN/tokmon-aggregator" -c "$CFG"
if [ -x "$BIN/tokmon-pgwriter" ]; then
    start tokmon-pgwriter "$BIN/tokmon-pgwriter" -c "$CFG"
fi
start tokmon-exporter "$BIN/tokmon-exporter" -c "$CFG"
start tokmon-alerter "$BIN/tokmon-alerter" -c "$CFG"

sleep 0.3
udp=${TOKMON_COLLECTD_UDP:-$(sed -n 's/^udp *= *\([^ ;]*\).*/\1/p' "$CFG" | head -1)}
http=${TOKMON_EXPORTER_HTTP:-$(sed -n 's/^http *= *\([^ ;]*\).*/\1/p' "$CFG" | head -1)}
if [ "${DEMO:-0}" = 1 ]; then
    start tokmon-emit "$BIN/tokmon-emit" -c "$CFG" --rate "${DEMO_RATE:-20}" --count 0 --users 200
fi

psql_target=
[ -n "$dbinfo" ] && psql_target="\"$dbinfo\" "
cat <<MSG

tokmon is running ($CFG, state in ./run/). Look at:
  priced records on the bus:   $BIN/tokmon-tap -c $CFG ev. | jq .
  generic StatsD samples:      $BIN/tokmon-tap -c $CFG metric
  every stage's counters:      $BIN/tokmonctl -c $CFG stats
  a user's quota:              $BIN/tokmonctl -c $CFG quota alice
  budgets:                     $BIN/tokmonctl -c $CFG budgets
  top users in the last hour:  $BIN/tokmonctl -c $CFG top --by user --window 1h
  rollups, quotas, budgets:    $BIN/tokmon-tap -c $CFG roll. quota budget | jq .
  stored calls:                psql $psql_target-c 'select * from daily_usage'
  Prometheus metrics:          curl -s http://$http/metrics
  the JSON API:                curl -s -H "X-Api-Key: \$(cat $keyfile)" http://$http/api/v1/usage
  live calls (SSE):            curl -sN -H "X-Api-Key: \$(cat $keyfile)" http://$http/api/v1/stream
  alerts and silences:         $BIN/tokmonctl -c $CFG alerts; $BIN/tokmon-tap -c $CFG alert | jq .
  send one call yourself:      $BIN/tokmon-emit -c $CFG --provider openai --model gpt-4o \\
                                 --user alice --input-tokens 1200 --cache-read-tokens 1000 --output-tokens 300
  or plain StatsD:             echo "llm.tokens:450|c|#provider:openai,model:gpt-4o,user:alice,type:input" \\
                                 | nc -u -w0 ${udp%:*} ${udp##*:}
$( [ "${DEMO:-0}" = 1 ] && echo "Demo traffic: ${DEMO_RATE:-20} calls a second from 200 users." || echo "Add demo traffic with: DEMO=1 make run" )
Ctrl-C stops everything.

MSG

# if any stage dies on its own, stop the rest and report it
while :; do
    wait -n "${pids[@]}"
    rc=$?
    [ $stopping = 1 ] && exit 0
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            if [ "${names[$i]}" = tokmon-emit ] && [ $rc = 0 ]; then
                unset 'pids[i]' 'names[i]'
                continue 2
            fi
            echo "run: ${names[$i]} exited with status $rc; stopping the rest" >&2
            unset 'pids[i]' 'names[i]'
            stop_all
            exit 1
        fi
    done
done
