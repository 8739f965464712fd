#!/usr/bin/python3
"""bench/scrape_http.py BINDIR: one /metrics scrape of a running
tokmon-exporter over HTTP, end to end (the HTTP server, rendering, gzip,
the kernel, curl), with about 10,000 and 100,000 series. A collector and the
exporter run on loopback (tests/integration/harness.py: free ports, a
temporary directory, stopped by PID at the end); tokmon-emit sends calls of
distinct provider/model/operation triples (42 series each, histograms
counted bucket by bucket, as Prometheus counts series) until the page has
them; then curl scrapes it ROUNDS times, plain and gzip, and prints the
medians. Prints key=value lines for bench/exporter.sh."""

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
os.environ.setdefault("TOKMON_BIN", os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/bin"))

import harness  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))


def scrape(url, gzip):
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url]
    if gzip:
        args[1:1] = ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout.split()
    return float(out[0]) * 1000, int(out[1])


def run(series):
    env = harness.Env("bench_scrape_%d" % series)
    ok = False
    try:
        c = harness.Collector(env)
        x = harness.Exporter(env, c.cfg_path, exporter={"max_series": "1000000"})
        triples = series // 42
        events = []
        for t in range(triples):
            base = {"provider": ["openai", "anthropic", "google"][t % 3], "model": "model-%d" % (t // 4),
                    "operation": "op%d" % (t % 4), "input_tokens": 1000, "cache_read_tokens": 100,
                    "cache_write_tokens": 50, "output_tokens": 300, "reasoning_tokens": 20,
                    "latency_ms": 100 + t % 5000, "ttft_ms": 20 + t % 100, "cost_usd": 0.001234}
            events.append(dict(base, status="ok"))
            events.append(dict(base, status="error"))
        path = env.write("events.json", json.dumps(events))
        harness.run([harness.bin_path("tokmon-emit"), "-c", c.cfg_path, "--file", path], timeout=120)
        url = x.base + "/metrics"
        deadline = time.monotonic() + 60
        want = triples * 2
        while time.monotonic() < deadline:
            page = subprocess.run(["curl", "-s", url], capture_output=True, text=True, timeout=60).stdout
            total = sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines() if l.startswith("llm_requests_total{"))
            if total >= want:
                break
            time.sleep(0.5)
        lines = sum(1 for l in page.splitlines() if l and not l.startswith("#"))
        plain = [scrape(url, False) for _ in range(ROUNDS)]
        gz = [scrape(url, True) for _ in range(ROUNDS)]
        print("http series=%d rounds=%d plain_ms=%.2f gzip_ms=%.2f plain_bytes=%d gzip_bytes=%d"
              % (lines, ROUNDS, statistics.median(p[0] for p in plain), statistics.median(g[0] for g in gz),
                 plain[-1][1], gz[-1][1]))
        ok = True
    finally:
        env.close(not ok)


for n in (10000, 100000):
    run(n)
