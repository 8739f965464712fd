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
