"""Case 8: tokmon-emit demo traffic: --rate 2000 --count 2000 arrives whole,
every record accepted, and the cost of every record (so their sum) equals
an independent recomputation from the record's own tokens."""

import harness
from harness import bin_path, case, check, check_eq, run
from pricing import Prices, record_cost


@case(timeout=60)
def emit_demo(env):
    c = env.collector()
    prices = Prices(harness.PRICES_JSON)
    n = 2000
    tap = c.tap(["ev."], n, timeout=30)
    rc, out, err = run([bin_path("tokmon-emit"), "-c", c.client_cfg, "--rate", "2000", "--count", str(n),
                        "--seed", "7"], timeout=30)
    check(rc == 0, "tokmon-emit --rate 2000 --count %d: status %d: %s", n, rc, err)
    recs = tap.wait("demo records")
    check_eq(len(recs), n, "records on the bus")
    got_sum = want_sum = 0
    wrong = []
    sources = {}
    unpriced = {}
    for r in recs:
        want, src = record_cost(prices, r)
        sources[r["cost_source"]] = sources.get(r["cost_source"], 0) + 1
        if src != "priced":
            key = (r["provider"], r["model"])
            unpriced[key] = unpriced.get(key, 0) + 1
        got_sum += r["cost_nusd"]
        want_sum += want
        if r["cost_nusd"] != want or r["cost_source"] != src:
            wrong.append("%s/%s in=%d cr=%d cw=%d cw1h=%d out=%d rs=%d: cost %d (%s), expected %d (%s)" % (
                r["provider"], r["model"], r["input_tokens"], r["cache_read_tokens"], r["cache_write_tokens"],
                r["cache_write_1h_tokens"], r["output_tokens"], r["reasoning_tokens"], r["cost_nusd"],
                r["cost_source"], want, src))
        check(r["topic"] == harness.shard_topic(r["user"], r["account"]), "record %s on %s, expected %s",
              r["request_id"], r["topic"], harness.shard_topic(r["user"], r["account"]))
    check(not wrong, "%d of %d records priced wrong, e.g. %s", len(wrong), n, "; ".join(wrong[:3]))
    check_eq(got_sum, want_sum, "sum of cost_nusd")
    check(sources.get("priced", 0) > n * 0.9, "only %r of the demo records were priced", sources)
    st = c.wait_received(n)
    check_eq(st.get("ingest_received_total"), n, "ingest_received_total")
    check_eq(st.get("ingest_accepted_total"), n, "ingest_accepted_total")
    check_eq(st.rejected(), {}, "rejections")
    check_eq(st.sum("ingest_kernel_drops_total"), 0, "ingest_kernel_drops_total")
    for (prov, model), k in unpriced.items():
        check_eq(st.get("unpriced_requests_total", provider=prov, model=model), k,
                 "unpriced_requests_total{provider=%s,model=%s}" % (prov, model))


def _demo_check(c, prices, recs, n_records):
    wrong = []
    for r in recs:
        want, src = record_cost(prices, r)
        if r["cost_nusd"] != want or r["cost_source"] != src:
            wrong.append("%s/%s: cost %d (%s), expected %d (%s)" % (r["provider"], r["model"], r["cost_nusd"],
                                                                    r["cost_source"], want, src))
    check(not wrong, "%d of %d records priced wrong, e.g. %s", len(wrong), len(recs), "; ".join(wrong[:3]))
    st = c.wait_received(n_records)
    check_eq(st.get("ingest_accepted_total"), n_records, "ingest_accepted_total")
    check_eq(st.rejected(), {}, "rejections")


@case(timeout=60)
def emit_demo_formats(env):
    """tokmon-emit demo traffic as msgpack (10 maps a datagram, UDP), as
    DogStatsD lines (unix socket) and as JSON over TCP: all arrives, all
    accepted, every record priced as the table says."""
    c = env.collector(unix=True)
    prices = Prices(harness.PRICES_JSON)
    emit = [bin_path("tokmon-emit"), "-c", c.client_cfg, "--rate", "5000", "--seed", "11"]

    n = 500
    tap = c.tap(["ev."], n, timeout=20)
    rc, out, err = run(emit + ["--count", str(n), "--format", "msgpack", "--lines-per-datagram", "10"], timeout=30)
    check(rc == 0, "tokmon-emit --format msgpack: status %d: %s", rc, err)
    recs = tap.wait("msgpack demo records")
    _demo_check(c, prices, recs, n)

    # statsd: one event is several lines, each a record; count them first
    sd = emit + ["--count", "300", "--format", "statsd", "--lines-per-datagram", "4", "--unix", c.unix_path]
    rc, out, err = run(sd + ["--dry-run"], timeout=30)
    check(rc == 0, "tokmon-emit --dry-run: status %d: %s", rc, err)
    lines = [l for l in out.splitlines() if l]
    check(all(l.startswith("llm.") for l in lines), "unexpected statsd demo lines: %r", lines[:3])
    tap = c.tap(["ev."], len(lines), timeout=20)
    rc, out, err = run(sd, timeout=30)
    check(rc == 0, "tokmon-emit --format statsd --unix: status %d: %s", rc, err)
    recs = tap.wait("statsd demo records")
    _demo_check(c, prices, recs, n + len(lines))
    check_eq(sum(r["requests"] for r in recs), 300, "llm.requests in the statsd demo")

    tap = c.tap(["ev."], 300, timeout=20)
    rc, out, err = run(emit + ["--count", "300", "--tcp", "127.0.0.1:%d" % c.port], timeout=30)
    check(rc == 0, "tokmon-emit --tcp: status %d: %s", rc, err)
    recs = tap.wait("TCP demo records")
    _demo_check(c, prices, recs, n + len(lines) + 300)


@case(timeout=30)
def emit_file(env):
    """tokmon-emit --file: a JSON array and a loose object (pretty-printed,
    strings holding braces and commas), several a datagram; StatsD lines as
    they are; --format (which encodes flag and demo events) does not change
    how a file's records are framed."""
    c = env.collector()
    f1 = env.write("events.json", """[
  {"provider": "openai", "model": "gpt-4o", "user": "a b", "input_tokens": 10, "request_id": "f-1",
   "tags": {"x": "[1,2]"}},
  {"provider": "openai", "model": "gpt-4o", "note": "a } tricky, string", "input_tokens": 11,
   "request_id": "f-2"},
  {"provider": "openai", "model": "gpt-4o", "usage": {"prompt_tokens": 12}, "request_id": "f-3"}
]
{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "input_tokens": 13, "request_id": "f-4"}
""")
    f2 = env.write("lines.txt", "file.a:1|c\r\nfile.b:2|g\n\n"
                                "llm.tokens:5|c|#provider:openai,model:gpt-4o,type:input,request_id:f-5\n")
    tap = c.tap(["ev.", "metric"], 7, timeout=10)
    for args in (["--file", f1, "--lines-per-datagram", "2", "--format", "msgpack"],
                 ["--file", f2, "--lines-per-datagram", "2"]):
        rc, out, err = run([bin_path("tokmon-emit"), "--udp", "127.0.0.1:%d" % c.port] + args)
        check(rc == 0, "tokmon-emit %s: status %d: %s", " ".join(args), rc, err)
    recs = tap.wait("records")
    check_eq(sorted(r.get("request_id") or r.get("name") for r in recs),
             ["f-1", "f-2", "f-3", "f-4", "f-5", "file.a", "file.b"], "records")
    st = c.wait_received(7)
    check_eq(st.rejected(), {}, "rejections")
