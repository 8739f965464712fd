"""Case 1: real StatsD clients, replayed for real: Debian python3-statsd
(plain StatsD) and npm hot-shots (DogStatsD, Telegraf tags)."""

import os
import time

from harness import HERE, REPO, case, check, check_eq, run, shard_topic
from pricing import Prices, cost_nusd
import harness


class _FixedRandom:
    """python3-statsd drops a sampled metric when random.random() > rate;
    pinned so every sampled metric is sent (the datagram is still the
    client's own)."""

    def random(self):
        return 0.1


def _sample_matches(got, want):
    name, typ, value, rate, delta = want
    if got.get("name") != name or got.get("type") != typ:
        return False
    if typ == "s":
        if got.get("value") != value:
            return False
    elif callable(value):
        if not value(got.get("value")):
            return False
    elif abs(float(got.get("value")) - value) > 1e-9:
        return False
    return abs(float(got.get("rate")) - rate) < 1e-12 and bool(got.get("delta")) == delta


@case(timeout=40)
def statsd_python(env):
    """python3-statsd: counters (one sampled at @0.5, a decrement), gauges
    with +3/-2 deltas, a negative absolute gauge (sent as x:0|g then x:-5|g),
    timers as 320.000000|ms, a sampled timer, a timer block, a set and a
    pipeline of several lines in one datagram → samples on `metric`."""
    import statsd
    import statsd.client.base as base

    c = env.collector()
    sent = []

    class Recording(statsd.StatsClient):
        def _send(self, data):
            sent.append(data)
            super()._send(data)

    want = [
        ("py.hits", "c", 1.0, 1.0, False),
        ("py.hits", "c", 5.0, 0.5, False),
        ("py.hits", "c", -2.0, 1.0, False),
        ("py.temp", "g", 20.0, 1.0, False),
        ("py.temp", "g", 3.0, 1.0, True),
        ("py.temp", "g", -2.0, 1.0, True),
        ("py.neg", "g", 0.0, 1.0, False),
        ("py.neg", "g", -5.0, 1.0, True),
        ("py.lat", "ms", 320.0, 1.0, False),
        ("py.lat", "ms", 12.5, 0.25, False),
        ("py.block", "ms", lambda v: 10.0 <= v < 5000.0, 1.0, False),
        ("py.users", "s", "alice", 1.0, False),
        ("py.pipe.a", "c", 3.0, 1.0, False),
        ("py.pipe.b", "g", 1.5, 1.0, False),
        ("py.pipe.c", "ms", 7.0, 1.0, False),
        ("py.pipe.d", "s", "bob", 1.0, False),
    ]
    tap = c.tap(["metric"], len(want), timeout=10)
    saved = base.random
    base.random = _FixedRandom()
    try:
        cl = Recording("127.0.0.1", c.port)
        cl.incr("py.hits")
        cl.incr("py.hits", 5, rate=0.5)
        cl.decr("py.hits", 2)
        cl.gauge("py.temp", 20)
        cl.gauge("py.temp", 3, delta=True)
        cl.gauge("py.temp", -2, delta=True)
        cl.gauge("py.neg", -5)
        cl.timing("py.lat", 320)
        cl.timing("py.lat", 12.5, rate=0.25)
        with cl.timer("py.block"):
            time.sleep(0.012)
        cl.set("py.users", "alice")
        with cl.pipeline() as p:
            p.incr("py.pipe.a", 3)
            p.gauge("py.pipe.b", 1.5)
            p.timing("py.pipe.c", 7)
            p.set("py.pipe.d", "bob")
        cl.close()
    finally:
        base.random = saved
    # the client's own wire format, as PEERS.md describes it
    check("py.hits:5|c|@0.5" in sent, "python3-statsd did not send a sampled counter: %r", sent)
    check("py.temp:+3|g" in sent and "py.temp:-2|g" in sent, "no gauge deltas in %r", sent)
    check("py.neg:0|g\npy.neg:-5|g" in sent, "negative gauge not sent as 0 then -5: %r", sent)
    check("py.lat:320.000000|ms" in sent, "timer not as 320.000000|ms: %r", sent)
    check(any(s.count("\n") == 3 and s.startswith("py.pipe.a:3|c") for s in sent),
          "pipeline not one datagram of 4 lines: %r", sent)

    recs = tap.wait("metric samples")
    now = time.time_ns()
    for i, (got, exp) in enumerate(zip(recs, want)):
        check(_sample_matches(got, exp), "sample %d: expected %r, got %r", i, exp, got)
        check_eq(got.get("topic"), "metric", "sample %d topic" % i)
        check_eq(got.get("tags"), {}, "sample %d tags" % i)
        check(abs(got["ts"] - now) < 60e9, "sample %d ts %r is not about now", i, got["ts"])
    st = c.wait_received(len(want))
    check_eq(st.get("ingest_received_total"), len(want), "ingest_received_total")
    check_eq(st.get("ingest_accepted_total"), len(want), "ingest_accepted_total")
    check_eq(st.get("ingest_samples_total"), len(want), "ingest_samples_total")
    check_eq(st.rejected(), {}, "rejections")
    c.check_invariant(st)


@case(timeout=40)
def statsd_hotshots(env):
    """npm hot-shots: llm.tokens DogStatsD counters (input, output, sampled
    cache_read) become priced usage records on ev.xx; gauges (a negative one
    is absolute), timer, histogram, distribution, set and Telegraf-style
    tags become samples on `metric`; the event and the service check are
    dropped and counted, not rejected."""
    c = env.collector()
    prices = Prices(harness.PRICES_JSON)
    rates = prices.rates("gpt-4o")
    want_usage = [
        # (type, tokens, expected record fields)
        ("input", 1027, dict(input_tokens=1027, cache_read_tokens=0, output_tokens=0)),
        ("output", 311, dict(input_tokens=0, cache_read_tokens=0, output_tokens=311)),
        ("cache_read", 1000, dict(input_tokens=1000, cache_read_tokens=1000, output_tokens=0)),
    ]
    want_samples = [
        ("hs.gauge", "g", 42.5, 1.0, False, {"env": "test"}),
        ("hs.neg", "g", -3.0, 1.0, False, {"env": "test"}),  # DogStatsD: absolute
        ("hs.timer", "ms", 250.0, 1.0, False, {"env": "test"}),
        ("hs.hist", "h", 17.0, 1.0, False, {"env": "test"}),
        ("hs.dist", "d", 3.25, 1.0, False, {"env": "test"}),
        ("hs.set", "s", "alice", 1.0, False, {"env": "test"}),
        ("hs.tele", "c", 2.0, 1.0, False, {"env": "test", "region": "eu"}),
        ("hs.tele_gauge", "g", 7.0, 1.0, False, {"region": "eu"}),
    ]
    tap = c.tap(["ev.", "metric"], len(want_usage) + len(want_samples), timeout=15)
    rc, out, err = run(["node", os.path.join(HERE, "hotshots.js"), "127.0.0.1", str(c.port)],
                       timeout=30, env={"NODE_PATH": os.path.join(REPO, "tests", "clients", "node_modules")})
    check(rc == 0, "hotshots.js failed (%d): %s %s", rc, out, err)
    recs = tap.wait("records")
    usage = [r for r in recs if r["topic"].startswith("ev.")]
    samples = [r for r in recs if r["topic"] == "metric"]
    check_eq(len(usage), len(want_usage), "usage records")
    for got, (typ, n, fields) in zip(usage, want_usage):
        what = "llm.tokens type:%s" % typ
        check_eq(got["topic"], shard_topic("hs-user"), what + " topic")
        check_eq((got["provider"], got["model"], got["user"]), ("openai", "gpt-4o", "hs-user"), what)
        for k, v in fields.items():
            check_eq(got[k], v, "%s %s" % (what, k))
        exp = cost_nusd(rates, input=fields["input_tokens"], cache_read=fields["cache_read_tokens"],
                        output=fields["output_tokens"])
        check_eq(got["cost_nusd"], exp, what + " cost_nusd")
        check_eq(got["cost_source"], "priced", what + " cost_source")
        check_eq(got["tags"], {"env": "test"}, what + " tags")
        check_eq(got["signed"], False, what + " signed")
        check_eq(got["price_version"], c.started_field("price_version"), what + " price_version")
    check_eq(len(samples), len(want_samples), "metric samples")
    for got, (name, typ, value, rate, delta, tags) in zip(samples, want_samples):
        check(_sample_matches(got, (name, typ, value, rate, delta)), "expected %r, got %r",
              (name, typ, value, rate, delta), got)
        check_eq(got["tags"], tags, name + " tags")
    st = c.wait_received(13)
    check_eq(st.get("ingest_received_total"), 13, "ingest_received_total")
    check_eq(st.get("ingest_accepted_total"), 11, "ingest_accepted_total")
    check_eq(st.dropped(), {"event": 1, "service_check": 1}, "ingest_dropped_total by kind")
    check_eq(st.rejected(), {}, "rejections")
    c.check_invariant(st)


@case(timeout=30)
def statsd_wire(env):
    """The StatsD grammar of DESIGN section 2 as sent raw: packed values,
    |T timestamps, a tag without value, SignalFX and Librato tags, and the
    LLM metrics besides llm.tokens (llm.requests with status, llm.latency,
    llm.ttft in ms) and the other token buckets (reasoning, cache_write_1h,
    packed counter values)."""
    c = env.collector()
    prices = Prices(harness.PRICES_JSON)
    lines = [
        "multi.d:1:2:3|d|#a:b",
        "ts.c:4|c|T1735787045",
        "flag.c:1|c|#novalue,k:v",
        "sfx.[k=v]name:1|c",
        "lib#k=v:2|g",
        "llm.requests:1|c|#provider:openai,model:gpt-4o,user:w1,status:error",
        "llm.latency:1250|ms|#provider:openai,model:gpt-4o,user:w1",
        "llm.ttft:80.5|ms|#provider:openai,model:gpt-4o,user:w1",
        "llm.tokens:100|c|#provider:openai,model:o3,user:w1,type:reasoning",
        "llm.tokens:100|c|#provider:anthropic,model:claude-sonnet-4-20250514,user:w1,type:cache_write_1h",
        "llm.tokens:10:20|c|#provider:openai,model:gpt-4o,user:w1,type:input",
        "llm.tokens:7|c|#provider:openai,model:gpt-4o,user:w1,type:output,team:core",
    ]
    want_samples = [
        ("multi.d", "d", 1.0, {"a": "b"}), ("multi.d", "d", 2.0, {"a": "b"}), ("multi.d", "d", 3.0, {"a": "b"}),
        ("ts.c", "c", 4.0, {}), ("flag.c", "c", 1.0, {"novalue": "", "k": "v"}), ("sfx.name", "c", 1.0, {"k": "v"}),
        ("lib", "g", 2.0, {"k": "v"}),
    ]
    o3, sonnet, g4o = (prices.rates("o3"), prices.rates("claude-sonnet-4-20250514"), prices.rates("gpt-4o"))
    want_usage = [
        dict(requests=1, status="error", cost_nusd=0),
        dict(requests=0, latency_us=1250000, cost_nusd=0),
        dict(requests=0, ttft_us=80500, cost_nusd=0),
        dict(model="o3", output_tokens=100, reasoning_tokens=100,
             cost_nusd=cost_nusd(o3, output=100, reasoning=100)),
        dict(model="claude-sonnet-4-20250514", input_tokens=100, cache_write_1h_tokens=100,
             cost_nusd=cost_nusd(sonnet, input=100, cache_write_1h=100)),
        dict(input_tokens=30, cost_nusd=cost_nusd(g4o, input=30)),
        dict(output_tokens=7, tags={"team": "core"}, cost_nusd=cost_nusd(g4o, output=7)),
    ]
    tap = c.tap(["ev.", "metric"], len(want_samples) + len(want_usage), timeout=10)
    c.send_udp("\n".join(lines))
    recs = tap.wait("records")
    samples = [r for r in recs if r["topic"] == "metric"]
    usage = [r for r in recs if r["topic"] != "metric"]
    check_eq([(r["name"], r["type"], r["value"], r["tags"]) for r in samples], want_samples, "samples")
    check_eq(samples[3]["ts"], 1735787045 * 10 ** 9, "ts.c ts from |T")
    check_eq(len(usage), len(want_usage), "usage records")
    for got, want in zip(usage, want_usage):
        for k, v in want.items():
            check_eq(got[k], v, "%s %s" % (got["model"], k))
        check_eq(got["topic"], shard_topic("w1"), "topic")
    st = c.wait_received(len(lines))
    check_eq(st.get("ingest_accepted_total"), len(lines), "ingest_accepted_total")


@case(timeout=30)
def statsd_oversized_fields(env):
    """A StatsD line whose set member, tag value or tag key is longer than a
    bus string may be (msg.h MSG_MAX_STR, 1024 bytes): the collector must
    either refuse it (counted) or publish something its subscribers can
    decode. Accepting it and publishing a record every subscriber drops as
    malformed is silent loss."""
    c = env.collector()
    lines = ["big.set:" + "m" * 2000 + "|s", "long.value:1|c|#k:" + "v" * 2000,
             "long.key:1|c|#" + "k" * 1100 + ":v", "ok.after:1|c"]
    tap = c.tap(["metric"], len(lines), timeout=3)
    for l in lines:
        c.send_udp(l)
    tap.proc.wait(10)
    recs = tap.records()
    st = c.wait_received(len(lines))
    published = st.get("ingest_samples_total")
    malformed = [l for l in tap.proc.stderr().splitlines() if "malformed" in l]
    check(not malformed and len(recs) == published,
          "the collector accepted %d samples (rejected %s) but tokmon-tap decoded %d (%s); %s",
          published, st.rejected(), len(recs), ", ".join(r["name"] for r in recs), "; ".join(malformed))
