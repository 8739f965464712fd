#!/usr/bin/env bash
# make bench-aggregator: the aggregator's memory per user and its apply rate
# (bench/aggbench.c, no sockets), about 3 minutes.
#
#   memory: one agg_t takes 3 calls from each of 100,000 and 1,000,000
#     distinct users (and again without the by-user rollups, to show what
#     they cost); RSS, agg_memory() and its split, snapshot size and times.
#   rate: the same pre-built bus messages (256 records each, 10,000 users)
#     decoded only and applied by the aggregator, alternately, BENCH_ROUNDS
#     rounds of BENCH_SECONDS each; the medians and their ratio.
#
# Knobs: BENCH_QUICK=1 (100,000 users only, 2 s x 1 round: about 20 s),
# BENCH_SECONDS (10), BENCH_ROUNDS (3), BENCH_DIR (/tmp: the snapshots,
# up to 350 MB, in a directory of their own removed on exit).
set -euo pipefail
BIN=${1:-build/bin}
SECONDS_PER_ROUND=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
USERS="100000 1000000"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    USERS=100000
    SECONDS_PER_ROUND=2
    ROUNDS=1
fi
TMP=$(mktemp -d "${BENCH_DIR:-/tmp}/aggbench-run.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT
OUT=$TMP/out.txt

run() {
    echo "== aggbench $*"
    "$BIN/aggbench" "$@" --dir "$TMP" | tee -a "$OUT" | sed 's/^/   /'
}

for n in $USERS; do
    run memory "$n" --rollup-users on
    run memory "$n" --rollup-users off
done
echo "== aggbench rate $SECONDS_PER_ROUND --rounds $ROUNDS"
"$BIN/aggbench" rate "$SECONDS_PER_ROUND" --rounds "$ROUNDS" | tee -a "$OUT" | sed 's/^/   /'

# value of key k in a line
kv() { sed -n "s/.*[ ^]$1=\([^ ]*\).*/\1/p" <<<" $2" | head -1; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

echo
echo "Aggregator memory ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
echo "| users | by-user rollups | RSS after apply | per user | agg_memory per user: applied / settled | quota | budget | rollups etc. | snapshot | save | load | RSS after load, per user | apply per record |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
# blocks of lines per run, in the order they ran
awk '/^memory /{n++} {print n "\t" $0}' "$OUT" | grep -v $'^0\t' >"$TMP/blocks" || true
for i in $(cut -f1 "$TMP/blocks" | sort -un); do
    b=$(awk -F'\t' -v i="$i" '$1 == i { print $2 }' "$TMP/blocks")
    head=$(grep '^memory ' <<<"$b" || true)
    [ -n "$head" ] || continue
    app=$(grep '^rss when=applied' <<<"$b")
    sa=$(grep '^split when=applied' <<<"$b")
    ss=$(grep '^split when=settled' <<<"$b")
    snap=$(grep '^snapshot ' <<<"$b")
    ld=$(grep '^rss when=loaded' <<<"$b")
    printf '| %s | %s | %s MiB | %s B | %s / %s B | %s B | %s B | %s B | %s MiB | %s s | %s s | %s MiB, %s B | %s µs |\n' \
        "$(kv users "$head")" "$(kv rollup_users "$head")" \
        "$(mib "$(kv kib "$app")")" "$(kv per_user "$app")" \
        "$(kv per_user "$sa")" "$(kv per_user "$ss")" \
        "$(kv quota_per_user "$ss")" "$(kv budget_per_user "$ss")" "$(kv rollup_per_user "$ss")" \
        "$(awk -v b="$(kv bytes "$snap")" 'BEGIN { printf "%.0f", b / 1048576 }')" \
        "$(kv save_s "$snap")" "$(kv load_s "$snap")" \
        "$(mib "$(kv kib "$ld")")" "$(kv per_user "$ld")" \
        "$(awk -v n="$(kv apply_ns_per_record "$head")" 'BEGIN { printf "%.1f", n / 1000 }')"
done
echo
echo "Periodic work of agg_tick and the snapshot at that many users (ms, one call each; the default interval in brackets):"
echo
echo "| users | by-user rollups | agg_memory (gauges, every 10 s) | quota sweep (10 s) | budget statuses, changed (5 s) | budget statuses, all (60 s) | snapshot, s (30 s) |"
echo "|---|---|---|---|---|---|---|"
for i in $(cut -f1 "$TMP/blocks" | sort -un); do
    b=$(awk -F'\t' -v i="$i" '$1 == i { print $2 }' "$TMP/blocks")
    head=$(grep '^memory ' <<<"$b" || true)
    [ -n "$head" ] || continue
    p=$(grep '^periodic ' <<<"$b")
    printf '| %s | %s | %s | %s | %s | %s (%s records, %s MiB) | %s |\n' "$(kv users "$head")" "$(kv rollup_users "$head")" \
        "$(kv agg_memory_ms "$p")" "$(kv quota_sweep_ms "$p")" "$(kv budget_changed_ms "$p")" \
        "$(kv budget_all_ms "$p")" "$(kv budget_all_records "$p")" \
        "$(awk -v b="$(kv budget_all_bytes "$p")" 'BEGIN { printf "%.0f", b / 1048576 }')" \
        "$(kv save_s "$(grep '^snapshot ' <<<"$b")")"
done
echo
echo "Aggregator rate: records/s, decode only (bus_envelope_decode + msg_usage_unpack) against agg_apply + agg_tick + agg_flush"
echo
echo "| round | decode only | aggregator | ratio | share of agg_tick |"
echo "|---|---|---|---|---|"
grep '^rate round=' "$OUT" | while read -r line; do
    printf '| %s | %s | %s | %s | %s |\n' "$(kv round "$line")" "$(kv decode_per_s "$line")" \
        "$(kv agg_per_s "$line")" "$(kv ratio "$line")" "$(kv tick_share "$line")"
done
m=$(grep '^rate_median' "$OUT")
printf '| median | %s | %s | %s | |\n' "$(kv decode_per_s "$m")" "$(kv agg_per_s "$m")" "$(kv ratio "$m")"
echo
echo "Per record: decode $(kv decode_ns "$m") ns, aggregator $(kv agg_ns "$m") ns, its own work $(kv agg_own_ns "$m") ns."
