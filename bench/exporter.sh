#!/usr/bin/env bash
# make bench-exporter: the cost of one /metrics scrape of tokmon-exporter
# (bench/scrapebench.c: the exporter's own model and renderer, no sockets),
# with 10,000 and 100,000 series, in both formats, with and without gzip,
# beside the baseline of copying the same bytes once; then the same scrape
# over HTTP from a running exporter (bench/scrape_http.py). About a minute.
#   BENCH_ROUNDS=R   renders per case (default 15; the medians are printed)
set -euo pipefail
BIN=${1:-build/bin}
ROUNDS=${BENCH_ROUNDS:-15}
OUT=$(mktemp /tmp/scrapebench.XXXXXX)
trap 'rm -f -- "$OUT"' EXIT
for n in 10000 100000; do
    "$BIN/scrapebench" "$n" --rounds "$ROUNDS" | tee -a "$OUT"
done
kv() { sed -n "s/.*[ ^]$1=\([^ ]*\).*/\1/p" <<<" $2" | head -1; }
echo
echo "One scrape ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?'), medians of $ROUNDS)"
echo
echo "| series | label sets | text 0.0.4 | OpenMetrics | gzip (level 1) | text + gzip | page | gzipped | copying the page once (baseline) | text / baseline |"
echo "|---|---|---|---|---|---|---|---|---|---|"
while read -r line; do
    t=$(kv text_ms "$line"); g=$(kv gzip_ms "$line"); c=$(kv copy_ms "$line")
    printf '| %s | %s | %s ms | %s ms | %s ms | %s ms | %s MB | %s kB | %s ms | %s |\n' \
        "$(kv series "$line")" "$(kv label_sets "$line")" "$t" "$(kv openmetrics_ms "$line")" "$g" \
        "$(awk -v a="$t" -v b="$g" 'BEGIN { printf "%.1f", a + b }')" \
        "$(awk -v b="$(kv text_bytes "$line")" 'BEGIN { printf "%.1f", b / 1e6 }')" \
        "$(awk -v b="$(kv gzip_bytes "$line")" 'BEGIN { printf "%.0f", b / 1e3 }')" "$c" \
        "$(awk -v a="$t" -v b="$c" 'BEGIN { printf "%.1f", a / b }')"
done <"$OUT"

# end to end: a running exporter scraped over HTTP by curl
echo
echo "Over HTTP (bench/scrape_http.py: a collector and tokmon-exporter on loopback, curl, medians of $ROUNDS):"
echo
echo "| series | plain | gzip | page | gzipped |"
echo "|---|---|---|---|---|"
BENCH_ROUNDS=$ROUNDS /usr/bin/python3 "$(dirname "$0")/scrape_http.py" "$BIN" | while read -r line; do
    printf '| %s | %s ms | %s ms | %s MB | %s kB |\n' "$(kv series "$line")" "$(kv plain_ms "$line")" \
        "$(kv gzip_ms "$line")" "$(awk -v b="$(kv plain_bytes "$line")" 'BEGIN { printf "%.1f", b / 1e6 }')" \
        "$(awk -v b="$(kv gzip_bytes "$line")" 'BEGIN { printf "%.0f", b / 1e3 }')"
done
