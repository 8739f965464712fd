"""tokmon-aggregator in the pipeline: totals against an independent
recomputation from the events sent (queries and roll.m records), kill -9 in
the middle of a stream and restart (nothing lost, nothing counted twice,
budget crossings announced once), two shards against one, and a hostile
publisher on the bus whose bad messages are counted and skipped."""

import json
import os
import random
import signal
import threading
import time

from harness import Aggregator, CaseFailure, bin_path, case, check, check_eq, fnv1a64, free_port, run

PROVIDERS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-sonnet-20241022")]


def make_events(n, seed, users=40, ts=None, accounts=("acme", "globex", "initech"), projects=("search", "chat", None)):
    """n usage events with known tokens and costs (cost_usd exact to the
    nano-dollar), and event times ts (default: 100 s ago, so their minute
    buckets are closed as soon as they arrive)."""
    rnd = random.Random(seed)
    base = ts if ts is not None else time.time() - 100
    out = []
    for i in range(n):
        prov, model = PROVIDERS[rnd.randrange(len(PROVIDERS))]
        nusd = rnd.randrange(1, 2000000)
        e = {"provider": prov, "model": model, "user": "u%03d" % rnd.randrange(users),
             "account": accounts[rnd.randrange(len(accounts))],
             "input_tokens": rnd.randrange(0, 4000), "output_tokens": rnd.randrange(0, 900),
             "cost_usd": "%d.%09d" % (nusd // 10**9, nusd % 10**9), "latency_ms": rnd.randrange(50, 9000),
             "ts": round(base + i * 0.0005, 6), "_nusd": nusd}
        p = projects[rnd.randrange(len(projects))]
        if p:
            e["project"] = p
        if rnd.random() < 0.1:
            e["status"] = "error"
        out.append(e)
    return out


def wire(e):
    d = {k: v for k, v in e.items() if not k.startswith("_")}
    # cost_usd as a JSON number written exactly
    return json.dumps(d).replace('"cost_usd": "%s"' % d["cost_usd"], '"cost_usd": %s' % d["cost_usd"])


def send(c, events, per_datagram=4, rate=None):
    t0 = time.monotonic()
    for i in range(0, len(events), per_datagram):
        c.send_udp("\n".join(wire(e) for e in events[i:i + per_datagram]))
        if rate:
            ahead = (i + per_datagram) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def expected(events):
    """Requests, tokens and nano-dollars per user, account, model and project."""
    want = {"user": {}, "account": {}, "model": {}, "project": {}}
    for e in events:
        keys = {"user": e["user"], "account": e["account"], "model": e["provider"] + "/" + e["model"],
                "project": e.get("project")}
        for dim, k in keys.items():
            if k is None:
                continue
            r = want[dim].setdefault(k, [0, 0, 0])
            r[0] += 1
            r[1] += e["input_tokens"] + e["output_tokens"]
            r[2] += e["_nusd"]
    return want


def usage(aggs, by, window=3600):
    """{key: [requests, tokens, nusd]} summed over the aggregators (shards)."""
    got = {}
    for a in aggs:
        for port in a.query_ports if len(aggs) == 1 else [a.query_ports[0]]:
            ans = a.query({"q": "usage", "by": by, "window": window}, port=port)
            check(ans.get("ok"), "usage query failed: %r", ans)
            for r in ans["rows"]:
                g = got.setdefault(r["key"], [0, 0, 0])
                g[0] += r["requests"]
                g[1] += r["tokens"]
                g[2] += r["cost_nusd"]
    return got


def wait_requests(aggs, n, timeout=60.0):
    deadline = time.monotonic() + timeout
    total = -1
    while time.monotonic() < deadline:
        total = sum(v[0] for v in usage(aggs, "model").values())
        if total >= n:
            return total
        time.sleep(0.2)
    raise CaseFailure("the aggregator counted %d of %d requests in %.0f s" % (total, n, timeout))


def compare(want, aggs, dims=("user", "account", "model", "project")):
    for dim in dims:
        got = usage(aggs, dim)
        for k, w in want[dim].items():
            if got.get(k) != w:
                raise CaseFailure("usage by %s of %s: expected %r, got %r" % (dim, k, w, got.get(k)))
        extra = set(got) - set(want[dim])
        check(not extra, "usage by %s has keys never sent: %r", dim, sorted(extra)[:5])


def durable_tap(env, cfg, name, topics):
    """Reads every message of topics once, from the start of the publishers'
    spools, into name.jsonl (with src), and exits when idle."""
    p = env.spawn(name, [bin_path("tokmon-tap"), "-c", cfg, "--state", env.path(name + ".state"),
                         "--output", env.path(name + ".jsonl"), "-e", "--exit-idle", "2"] + list(topics))
    rc = p.wait(90)
    check(rc == 0, "%s exited with %r: %s", name, rc, p.stderr()[-500:])
    with open(env.path(name + ".jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def rollup_totals(records, grain="m"):
    """Last record wins per (src, bucket, dimension values); then summed over
    srcs and buckets per dim and key: {dim: {key: [requests, tokens, nusd]}}."""
    last = {}
    for r in records:
        if r.get("grain") != grain:
            continue
        key = (r["src"], r["start"], r["dim"], r.get("provider"), r.get("model"), r.get("operation"),
               r.get("status"), r.get("key"))
        last[key] = r
    out = {"user": {}, "account": {}, "model": {}, "project": {}}
    for key, r in last.items():
        dim = r["dim"]
        k = r["provider"] + "/" + r["model"] if dim == "model" else r["key"]
        g = out[dim].setdefault(k, [0, 0, 0])
        g[0] += r["requests"]
        g[1] += r.get("input_tokens", 0) + r.get("output_tokens", 0)
        g[2] += r["cost_nusd"]
    return out


def check_rollups(want, records, what):
    got = rollup_totals(records)
    for dim in want:
        if got[dim] != want[dim]:
            diff = [(k, want[dim].get(k), got[dim].get(k)) for k in set(want[dim]) | set(got[dim])
                    if want[dim].get(k) != got[dim].get(k)]
            raise CaseFailure("%s: roll.m by %s differs from the events sent (key, sent, rolled up): %r" %
                              (what, dim, diff[:5]))


@case(timeout=120)
def agg_totals(env):
    c = env.collector()
    a = Aggregator(env, c)
    events = make_events(3000, seed=11)
    send(c, events)
    c.wait_stats(lambda s: s.get("ingest_accepted_total") >= 3000, what="3000 accepted")
    wait_requests([a], 3000)
    want = expected(events)
    compare(want, [a])
    # quotas: day tokens of a few users, exactly
    for u in sorted(want["user"])[:5]:
        ans = a.query({"q": "quota", "subject": "user", "id": u})
        day = [w for w in ans["windows"] if w["window"] == "day" and w["unit"] == "tokens"][0]
        check_eq(day["used"], want["user"][u][1], "day tokens of %s" % u)
    # the minute rollups, read back from the aggregator's spool
    records = durable_tap(env, a.cfg_path, "rolls", ["roll.m"])
    check_rollups(want, records, "roll.m")
    st = a.stats()
    check_eq(st.get("agg_records_total", kind="usage"), 3000, "usage records applied")
    check_eq(st.sum("agg_rejected_total"), 0, "records rejected")


@case(timeout=180)
def agg_kill9(env):
    """Kill -9 twice in the middle of a stream; after the restarts every
    total equals the events sent and each budget crossing went out once."""
    c = env.collector()
    events = make_events(15000, seed=12)
    total = sum(e["_nusd"] for e in events)
    limit = total // 2  # warning at 40 % of the stream, exceeded at 50 %
    sections = ("[budget.day]\nscope = global\nperiod = day\nlimit_usd = %d.%09d\n" %
                (limit // 10**9, limit % 10**9))
    # statuses only at start and on change, so the reading tap falls idle
    a = Aggregator(env, c, sections=sections, aggregator={"budget_interval": "1h"})
    sender = threading.Thread(target=send, args=(c, events), kwargs={"rate": 5000})
    sender.start()
    time.sleep(1.0)
    a.kill9()
    a.start()
    time.sleep(1.2)
    a.kill9()
    a.start()
    sender.join()
    c.wait_stats(lambda s: s.get("ingest_accepted_total") >= len(events), what="all accepted")
    wait_requests([a], len(events), timeout=90)
    time.sleep(1.0)  # anything counted twice would show now
    want = expected(events)
    compare(want, [a])
    for u in sorted(want["user"])[:5]:
        ans = a.query({"q": "quota", "subject": "user", "id": u})
        day = [w for w in ans["windows"] if w["window"] == "day" and w["unit"] == "tokens"][0]
        check_eq(day["used"], want["user"][u][1], "day tokens of %s after two kill -9" % u)
    ans = a.query({"q": "budgets"})
    day = [b for b in ans["budgets"] if b["name"] == "day"][0]
    check_eq(day["spent_nusd"], total, "budget spent after two kill -9")
    out = durable_tap(env, a.cfg_path, "out", ["budget", "roll.m"])
    crossings = [r for r in out if r.get("crossing")]
    check_eq(sorted(r["crossing"] for r in crossings), ["exceeded", "warning"], "budget crossings announced")
    check_rollups(want, [r for r in out if r.get("grain")], "roll.m after two kill -9")
    check(a.log().count("snapshot loaded") >= 1 or "read back" in a.log(),
          "the restarts neither loaded a snapshot nor read back their output: %s", a.log()[-600:])


@case(timeout=150)
def agg_shards(env):
    """Two shards give the same totals as one aggregator."""
    c = env.collector()
    one = Aggregator(env, c, name="one")
    eps = ["tcp://127.0.0.1:%d" % free_port(udp=False) for _ in range(2)]
    reps = ["tcp://127.0.0.1:%d" % free_port(udp=False) for _ in range(2)]
    qports = [free_port(udp=False), free_port(udp=False)]
    sections = "[budget.all]\nscope = global\nperiod = month\nlimit_usd = 100000\n"
    shards = [Aggregator(env, c, name="shard%d" % i, shard="%d/2" % i, bus_endpoints=eps,
                         replay_endpoints=reps, query_ports=qports, sections=sections)
              for i in range(2)]
    for i, s in enumerate(shards):  # each shard answers on its own port
        s.query_ports = [qports[i]]
    events = make_events(4000, seed=13, users=300)
    send(c, events)
    wait_requests([one], len(events))
    wait_requests(shards, len(events))
    want = expected(events)
    compare(want, [one])
    compare(want, shards)
    # users live on one shard each: the one that owns their shard byte
    for u in sorted(want["user"])[:20]:
        owner = (fnv1a64(u) & 0xff) % 2
        for i, s in enumerate(shards):
            ans = s.query({"q": "quota", "subject": "user", "id": u})
            check_eq(ans["known"], i == owner, "shard %d knows %s" % (i, u))
    # budget parts add up to the whole
    parts = [s.query({"q": "budgets"})["budgets"] for s in shards]
    spent = sum(b["spent_nusd"] for p in parts for b in p if b["name"] == "all")
    check(all(b.get("partial") for p in parts for b in p), "shards' global budget records not marked partial")
    check_eq(spent, sum(e["_nusd"] for e in events), "sum of the shards' budget parts")
    recs = durable_tap(env, shards[0].cfg_path, "rolls", ["roll.m"])
    srcs = {r["src"] for r in recs}
    check_eq(len(srcs), 2, "roll.m publishers (shards)")
    check_rollups(want, recs, "roll.m of two shards")


class FakePublisher:
    """A publisher on the bus that sends what it is told, envelopes and all:
    a PUB socket and a replay ROUTER that answers HELLO and REPLAY from what
    it has published."""

    def __init__(self, src, pub_ep, replay_ep):
        import zmq
        self.zmq = zmq
        self.src = src
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(pub_ep)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(replay_ep)
        self.sent = []  # (topic, envelope bytes), seq = index + 1
        self.hello = threading.Event()
        self.stop = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            if not self.router.poll(50):
                continue
            with self.lock:
                f = self.router.recv_multipart()
                ident, cmd = f[0], f[1]
                last = str(len(self.sent)).encode()
                if cmd == b"HELLO":
                    self.router.send_multipart([ident, b"HELLO", self.src.encode(), b"1" if self.sent else b"0", last])
                    self.hello.set()
                elif cmd == b"REPLAY" and len(f) >= 4:
                    if f[2] != self.src.encode():
                        self.router.send_multipart([ident, b"UNKNOWN", f[2]])
                        continue
                    for seq in range(max(1, int(f[3])), len(self.sent) + 1):
                        topic, env = self.sent[seq - 1]
                        self.router.send_multipart([ident, b"MSG", topic.encode(), env])
                    self.router.send_multipart([ident, b"END", self.src.encode(), last])

    def envelope(self, kind, body_raw, seq, v=1):
        import msgpack
        head = msgpack.packb({"v": v, "src": self.src, "seq": seq, "ts": time.time_ns(), "kind": kind})
        # a six-entry map: the five above and the raw body
        return bytes([0x86]) + head[1:] + msgpack.packb("body") + body_raw

    def publish(self, topic, kind, body_raw=None, raw_envelope=None):
        with self.lock:
            seq = len(self.sent) + 1
            env = raw_envelope if raw_envelope is not None else self.envelope(kind, body_raw, seq)
            self.sent.append((topic, env))
            self.pub.send_multipart([topic.encode(), env])

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.pub.close()
        self.router.close()
        self.ctx.term()


@case(timeout=90)
def agg_hostile_bus(env):
    """Malformed and hostile messages from a publisher on the bus are
    counted and skipped; the good records beside them count."""
    import msgpack
    c = env.collector()
    fake_pub = "tcp://127.0.0.1:%d" % free_port(udp=False)
    fake_replay = "tcp://127.0.0.1:%d" % free_port(udp=False)
    c.bus["collectd"] += "," + fake_pub
    c.bus["collectd_replay"] += "," + fake_replay
    fake = FakePublisher("fake-collector", fake_pub, fake_replay)
    try:
        a = Aggregator(env, c)
        check(fake.hello.wait(10), "the aggregator never asked the fake publisher HELLO")
        time.sleep(0.5)  # its subscription reaches the PUB
        now = time.time_ns()
        good = {"provider": "openai", "model": "gpt-4o", "operation": "chat", "user": "good", "status": "ok",
                "input_tokens": 70, "output_tokens": 7, "requests": 1, "ts": now, "recv_ts": now,
                "cost_nusd": 1234, "cost_source": "reported"}
        topic = "ev.%02x" % (fnv1a64("good") & 0xff)
        bad_records = [
            "a string",
            {"provider": "openai"},                                       # missing fields
            dict(good, reasoning_tokens=100),                            # parts beyond the whole
            dict(good, status="maybe"),                                  # unknown status
            dict(good, input_tokens=-5),                                 # negative
            dict(good, input_tokens=2**41),                              # beyond 2^40
            dict(good, user="x" * 5000),                                 # too long
            dict(good, cost_nusd="12"),                                  # wrong type
        ]
        fake.publish(topic, "usage", msgpack.packb([good] + bad_records))
        fake.publish(topic, "usage", msgpack.packb({"not": "an array"}))
        fake.publish("ev.zz", "usage", msgpack.packb([good]))            # no shard of ours
        fake.publish(topic, "quota", msgpack.packb([good]))              # a kind not read here
        fake.publish(topic, "usage", raw_envelope=b"\xc1\xc1 not msgpack")
        fake.publish(topic, "usage", raw_envelope=b"\x91" * 5000)       # nested beyond reason
        fake.publish(topic, "usage", raw_envelope=msgpack.packb({"v": 1, "src": "fake-collector"}))
        fake.publish(topic, "usage", msgpack.packb([good]))
        deadline = time.monotonic() + 20
        while True:
            ans = a.query({"q": "quota", "subject": "user", "id": "good"})
            day = [w for w in ans["windows"] if w["window"] == "day" and w["unit"] == "tokens"][0]
            if day["used"] >= 154 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        check_eq(day["used"], 154, "tokens of the two good records")
        st = a.stats()
        check_eq(st.get("agg_rejected_total", reason="malformed_record"), len(bad_records), "malformed records")
        check_eq(st.get("agg_rejected_total", reason="malformed_message"), 1, "malformed messages")
        check_eq(st.get("agg_rejected_total", reason="other_shard"), 1, "messages for no shard of ours")
        check_eq(st.get("agg_rejected_total", reason="unexpected_kind"), 1, "messages of another kind")
        check(st.get("bus_malformed_total") >= 3, "bad envelopes not counted: %d", st.get("bus_malformed_total"))
        check(a.proc.alive(), "the aggregator died")
        check("skipped a bus record" in a.log(), "nothing logged about the skipped records")
    finally:
        fake.close()


@case(timeout=90)
def agg_tokmonctl(env):
    """tokmonctl quota, budgets, top and usage answer from a running
    pipeline, as tables and as JSON, with the totals of the events sent."""
    c = env.collector()
    a = Aggregator(env, c, sections="[quota]\ndaily_tokens = 50000\n"
                                     "[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 5\n"
                                     "[budget.acme]\nscope = account:acme\nperiod = month\nlimit_usd = 100\n")
    events = make_events(600, seed=14, users=12, ts=time.time() - 30)
    send(c, events)
    wait_requests([a], len(events))
    want = expected(events)
    u = sorted(want["user"])[0]

    rc, out, err = a.ctl("quota", u, "--json")
    check(rc == 0, "tokmonctl quota --json: %s", err)
    q = json.loads(out)
    day = [w for w in q["windows"] if w["window"] == "day" and w["unit"] == "tokens"][0]
    check_eq(day["used"], want["user"][u][1], "quota day tokens of %s" % u)
    check_eq(day["limit"], 50000, "quota day limit")
    rc, out, err = a.ctl("quota", u)
    check(rc == 0 and ("user %s:" % u) in out and "day" in out and "month" in out,
          "tokmonctl quota table: %s %s", out, err)

    rc, out, err = a.ctl("budgets", "--json")
    check(rc == 0, "tokmonctl budgets --json: %s", err)
    b = json.loads(out)
    daily = [x for x in b["budgets"] if x["name"] == "daily"][0]
    check_eq(daily["spent_nusd"], sum(e["_nusd"] for e in events), "daily budget spent")
    acme = [x for x in b["budgets"] if x["name"] == "acme"][0]
    check_eq(acme["spent_nusd"], want["account"]["acme"][2], "acme budget spent")
    rc, out, err = a.ctl("budgets")
    check(rc == 0 and "daily" in out and "acme" in out, "tokmonctl budgets table: %s %s", out, err)

    rc, out, err = a.ctl("top", "--by", "user", "--window", "1h", "--json", "-n", "5")
    check(rc == 0, "tokmonctl top --json: %s", err)
    t = json.loads(out)
    ranked = sorted(want["user"].items(), key=lambda kv: (-kv[1][2], kv[0]))[:5]
    check_eq([(r["key"], r["cost_nusd"]) for r in t["rows"]], [(k, v[2]) for k, v in ranked],
             "top 5 users by cost")
    rc, out, err = a.ctl("top", "--by", "model", "--metric", "tokens", "--window", "1h")
    check(rc == 0, "tokmonctl top table: %s", err)
    best = max(want["model"].items(), key=lambda kv: (kv[1][1], kv[0]))[0]
    first = [line for line in out.splitlines() if line.strip().startswith("1 ")]
    check(first and best in first[0], "top model by tokens should be %s: %s", best, out)

    rc, out, err = a.ctl("usage", "--by", "account", "--id", "acme", "--window", "300", "--json")
    check(rc == 0, "tokmonctl usage --json: %s", err)
    us = json.loads(out)
    check_eq([(r["key"], r["requests"], r["tokens"], r["cost_nusd"]) for r in us["rows"]],
             [("acme",) + tuple(want["account"]["acme"])], "usage of acme over 300 s")

    # a clear error when nobody answers
    rc, out, err = a.ctl("quota", u, "--endpoint", "tcp://127.0.0.1:%d" % free_port(udp=False),
                         "--timeout", "1")
    check(rc == 1 and "no answer" in err, "tokmonctl against nobody: %d %s", rc, err)


@case(timeout=90)
def agg_reload_and_restart(env):
    """SIGHUP takes new limits and budgets at once; SIGTERM writes a
    snapshot that the next start loads, with every total intact."""
    c = env.collector()
    a = Aggregator(env, c, sections="[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 1000\n")
    events = make_events(500, seed=15, users=5)
    send(c, events)
    wait_requests([a], len(events))
    want = expected(events)
    u = sorted(want["user"])[0]
    with open(a.cfg_path) as f:
        text = f.read()
    with open(a.cfg_path, "w") as f:
        f.write(text.replace("limit_usd = 1000", "limit_usd = 0.1") +
                "\n[quota.user.%s]\ndaily_tokens = 10\n" % u)
    a.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while 'msg="reloaded"' not in a.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    check('msg="reloaded"' in a.log(), "no reload logged: %s", a.log()[-400:])
    q = a.query({"q": "quota", "subject": "user", "id": u})
    day = [w for w in q["windows"] if w["window"] == "day" and w["unit"] == "tokens"][0]
    check_eq((day["limit"], day["state"]), (10, "exceeded"), "%s's new daily limit and state" % u)
    b = [x for x in a.query({"q": "budgets"})["budgets"] if x["name"] == "daily"][0]
    check_eq((b["limit_nusd"], b["state"]), (100000000, "exceeded"), "the daily budget after SIGHUP")
    check_eq(b["spent_nusd"], sum(e["_nusd"] for e in events), "spending kept across the reload")
    # a broken config is refused and the running one stays
    with open(a.cfg_path, "w") as f:
        f.write(text + "\n[budget.bad]\nscope = galaxy\nlimit_usd = 1\n")
    a.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in a.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    check("reload failed" in a.log() and a.proc.alive(), "a bad config was not refused: %s", a.log()[-400:])
    with open(a.cfg_path, "w") as f:
        f.write(text)
    check_eq(a.stop(), 0, "exit status on SIGTERM")
    check("snapshot=" in a.log().splitlines()[-1], "no snapshot on SIGTERM: %s", a.log()[-300:])
    a.start()
    check("snapshot loaded" in a.log(), "the snapshot was not loaded: %s", a.log()[-600:])
    time.sleep(1.0)
    compare(want, [a])
