#!/usr/bin/env bash
# make bench-spool: the cost of the publisher's spool. The same publisher,
# one subscriber, messages of 1 and 64 usage records, with the spool off,
# on with group fsync every 1 s and every 10 ms, and fsync after every
# write (spool_fsync = 0: a write is a loop turn, 64 messages here); the
# modes alternate in each round so drift on the machine touches
# all of them. Prints the median of the rounds and the ratio to "off".
set -u
BIN=${1:-build/bin}
ROUNDS=${BENCH_ROUNDS:-3}
DIR=${BENCH_DIR:-/tmp}
modes="off 1s 10ms each"
declare -A rate rrate
for records in 1 64; do
    n=$(( records == 1 ? 200000 : 20000 ))
    for r in $(seq "$ROUNDS"); do
        for m in $modes; do
            nn=$n
            [ "$m" = each ] && nn=$(( n / 10 ))
            line=$("$BIN/busbench" --mode "$m" --messages "$nn" --records "$records" --dir "$DIR") || {
                echo "busbench failed: $line" >&2; exit 1; }
            rate[$records,$m]+="$(sed -n 's/.*msgs_per_s=\([0-9]*\).*/\1/p' <<<"$line") "
            rrate[$records,$m]+="$(sed -n 's/.*records_per_s=\([0-9]*\).*/\1/p' <<<"$line") "
        done
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "Bus publishing with and without the spool (median of $ROUNDS rounds; spool in $DIR)"
echo
printf '| records/message | spool | messages/s | records/s | vs off |\n|---|---|---|---|---|\n'
for records in 1 64; do
    base=$(median "${rate[$records,off]}")
    for m in $modes; do
        mr=$(median "${rate[$records,$m]}")
        rr=$(median "${rrate[$records,$m]}")
        label=$m
        case $m in off) label="off";; 1s) label="fsync every 1 s";; 10ms) label="fsync every 10 ms";; each) label="fsync after every write";; esac
        printf '| %s | %s | %s | %s | %s %% |\n' "$records" "$label" "$mr" "$rr" "$(( 100 * mr / base ))"
    done
done
