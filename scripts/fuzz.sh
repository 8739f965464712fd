#!/bin/sh
# Runs each libFuzzer target for a while on a scratch copy of its seed corpus
# (tests/fuzz/corpus/<name>), so the repository's seeds stay as they are.
#   scripts/fuzz.sh DIR SECONDS fuzz_statsd fuzz_json ...
# Fails on the first crash, leak or timeout; the reproducer stays in
# build/fuzz-artifacts/.
set -eu
dir=$1; secs=$2; shift 2
art=build/fuzz-artifacts
mkdir -p "$art"
for f in "$@"; do
    name=${f#fuzz_}
    work=$(mktemp -d /tmp/tokmon-fuzz.XXXXXX)
    seeds=tests/fuzz/corpus/$name
    [ -d "$seeds" ] && cp -r "$seeds"/. "$work"/ 2>/dev/null || true
    dict=""
    [ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
    echo "== $f for ${secs}s"
    if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
         "$dir/$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
            -max_len=65536 -print_final_stats=1 -artifact_prefix="$art/$f-" $dict "$work" \
            >"$work.log" 2>&1; then
        tail -40 "$work.log"
        echo "fuzz: $f failed; reproducer in $art/"
        rm -rf "$work" "$work.log"
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$work.log" | tr '\n' ' '
    echo
    rm -rf "$work" "$work.log"
done
