"""tokmon-exporter's JSON API in a running pipeline: quota, budgets, top and
window answers equal what `tokmonctl --json` says (money as exact decimal
strings beside the nano-dollars); /api/v1/usage totals the calls sent; the
key (missing, wrong, right) and malformed requests; the daily history from
PostgreSQL through a login role granted tokmon_reader, also across a
restart of PostgreSQL; the event stream (ids, Last-Event-ID, live calls)
and a clean SIGTERM with a stream open."""

import http.client
import json
import socket
import time
from decimal import Decimal

import harness
from harness import CaseFailure, Aggregator, Postgres, Writer, case, check, check_eq
from cases_aggregator import expected, make_events, send, usage, wire

KEY = "it-api-key-0123456789abcdefghij"

# what changes between two questions asked a moment apart
VOLATILE = {"ok", "now", "ts", "from", "to", "exhaust_ts", "forecast_avg_nusd", "forecast_rate_nusd",
            "forecast_avg_usd", "forecast_rate_usd"}


class ApiExporter(harness.Exporter):
    """harness.Exporter with KEY in its api_key_file, query_timeout = 2s
    and the keys given; request() speaks to the JSON API."""

    def __init__(self, env, base_cfg, name="exporter", exporter=None):
        keys = {"query_timeout": "2s"}
        keys.update(exporter or {})
        super().__init__(env, base_cfg, name=name, exporter=keys, api_key=KEY)

    def request(self, path, key=KEY, headers=None, method="GET", timeout=15):
        """(status, response, body): body parsed when it is JSON."""
        h = dict(headers or {})
        if key is not None:
            h["X-Api-Key"] = key
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, headers=h)
            r = c.getresponse()
            raw = r.read()
        finally:
            c.close()
        body = raw.decode("utf-8", "replace")
        if "application/json" in (r.getheader("Content-Type") or "") and raw:
            body = json.loads(raw, parse_float=Decimal)
        return r.status, r, body

    def api(self, path, want=200, **kw):
        """The JSON body of a request that must answer want."""
        st, r, body = self.request(path, **kw)
        check(st == want, "GET %s: %d, want %d: %r", path, st, want, body)
        return body


def usd9(nusd):
    sign = "-" if nusd < 0 else ""
    n = abs(nusd)
    return "%s%d.%09d" % (sign, n // 10**9, n % 10**9)


def normalize(o, ours, where):
    """o without the volatile keys and the _usd keys, after checking each
    _usd key against its nano-dollars (ours: an exact string; tokmonctl's:
    a float within a nano-dollar)."""
    if isinstance(o, list):
        return [normalize(x, ours, "%s[%d]" % (where, i)) for i, x in enumerate(o)]
    if not isinstance(o, dict):
        return o
    out = {}
    for k, v in o.items():
        if k in VOLATILE:
            continue
        if k.endswith("_usd"):
            base = k[:-4]
            src = o.get(base + "_nusd", o.get(base))
            if src is None:
                check(v is None, "%s.%s: %r, want null", where, k, v)
            elif ours:
                check(isinstance(v, str) and v == usd9(src), "%s.%s: %r, want \"%s\"", where, k, v, usd9(src))
            else:
                check(abs(Decimal(str(v)) - Decimal(src) / 10**9) <= Decimal("1e-9"),
                      "tokmonctl %s.%s: %r for %d nano-dollars", where, k, v, src)
            continue
        out[k] = normalize(v, ours, "%s.%s" % (where, k))
    return out


def wait_subscribed(ex, c, timeout=15.0):
    """Sends a probe call (user probe-user, no account, one token, cost 0)
    until the exporter has counted it, so that what is sent next reaches
    it (a SUB connects a moment after start and misses what came before);
    returns the requests counted so far."""
    deadline = time.monotonic() + timeout
    while True:
        c.send_udp(json.dumps({"provider": "openai", "model": "gpt-4o", "user": "probe-user",
                               "input_tokens": 1, "output_tokens": 0, "cost_usd": 0}))
        time.sleep(0.2)
        n = ex.api("/api/v1/usage")["requests"]
        if n:
            time.sleep(0.3)  # probes still on their way
            return ex.api("/api/v1/usage")["requests"]
        if time.monotonic() > deadline:
            raise CaseFailure("the exporter saw no call in %.0f s: %s" % (timeout, ex.log()[-500:]))


def wait_bus_seen(ex, timeout=15.0):
    """Waits until the exporter has had a bus message (a publisher answers a
    new subscription with its stats at once)."""
    deadline = time.monotonic() + timeout
    while True:
        st, r, body = ex.request("/health/ready", key=None)
        if st == 200 or "no bus message since" not in body.get("reason", ""):
            return
        if time.monotonic() > deadline:
            raise CaseFailure("the exporter had no bus message in %.0f s: %r" % (timeout, body))
        time.sleep(0.05)


def same_as_ctl(a, ex, path, *ctl_args):
    rc, out, err = a.ctl(*(list(ctl_args) + ["--json"]))
    check(rc == 0, "tokmonctl %s: %s", " ".join(ctl_args), err)
    want = json.loads(out, parse_float=Decimal)
    got = ex.api(path)
    g, w = normalize(got, True, path), normalize(want, False, "tokmonctl")
    if g != w:
        raise CaseFailure("%s differs from tokmonctl %s --json:\n  api: %s\n  ctl: %s" %
                          (path, " ".join(ctl_args), json.dumps(g, default=str)[:1500],
                           json.dumps(w, default=str)[:1500]))
    return got


@case(timeout=150)
def exporter_api_aggregator(env):
    """Quota (user and account), budgets, top and usage windows through the
    API equal tokmonctl --json; totals; the key; 4xx for malformed requests;
    health and readiness."""
    c = env.collector()
    a = Aggregator(env, c, sections="[quota]\ndaily_tokens = 50000\n"
                                     "[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 5\n"
                                     "[budget.acme]\nscope = account:acme\nperiod = month\nlimit_usd = 100\n")
    ex = ApiExporter(env, a.cfg_path)
    base = wait_subscribed(ex, c)
    events = make_events(500, seed=21, users=12, ts=time.time() - 30)
    send(c, events)
    deadline = time.monotonic() + 60  # every event counted (probes have no account)
    while sum(v[0] for v in usage([a], "account").values()) < len(events):
        check(time.monotonic() < deadline, "the aggregator did not count the %d events", len(events))
        time.sleep(0.2)
    want = expected(events)

    # totals since the exporter started: every call sent
    deadline = time.monotonic() + 20
    tot = {}
    while time.monotonic() < deadline:
        tot = ex.api("/api/v1/usage")
        if tot["requests"] >= len(events) + base:
            break
        time.sleep(0.2)
    check_eq(tot["requests"], len(events) + base, "/api/v1/usage requests")
    check_eq(tot["errors"], sum(1 for e in events if e.get("status") == "error"), "/api/v1/usage errors")
    check_eq(tot["total_tokens"], sum(e["input_tokens"] + e["output_tokens"] for e in events) + base,
             "/api/v1/usage total_tokens")
    nusd = sum(e["_nusd"] for e in events)
    check_eq(tot["cost_nusd"], nusd, "/api/v1/usage cost_nusd")
    check_eq(tot["cost_usd"], usd9(nusd), "/api/v1/usage cost_usd")

    u = sorted(want["user"])[0]
    q = same_as_ctl(a, ex, "/api/v1/quota/" + u, "quota", u)
    day = [w for w in q["windows"] if w["window"] == "day" and w["unit"] == "tokens"][0]
    check_eq(day["used"], want["user"][u][1], "quota day tokens of %s" % u)
    same_as_ctl(a, ex, "/api/v1/quota/acme?subject=account", "quota", "--account", "acme")
    same_as_ctl(a, ex, "/api/v1/quota/nobody-at-all", "quota", "nobody-at-all")
    b = same_as_ctl(a, ex, "/api/v1/budgets", "budgets")
    daily = [x for x in b["budgets"] if x["name"] == "daily"][0]
    check_eq(daily["spent_nusd"], nusd, "daily budget spent")
    check_eq(daily["spent_usd"], usd9(nusd), "daily budget spent_usd")
    same_as_ctl(a, ex, "/api/v1/budgets?name=acme", "budgets", "acme")
    t = same_as_ctl(a, ex, "/api/v1/top?by=user&window=1h&n=5", "top", "--by", "user", "--window", "1h",
                    "-n", "5")
    ranked = sorted(want["user"].items(), key=lambda kv: (-kv[1][2], kv[0]))[:5]
    check_eq([(r["key"], r["cost_nusd"]) for r in t["rows"]], [(k, v[2]) for k, v in ranked],
             "top 5 users by cost")
    same_as_ctl(a, ex, "/api/v1/top?by=model&metric=tokens&window=3600", "top", "--by", "model",
                "--metric", "tokens", "--window", "3600")
    same_as_ctl(a, ex, "/api/v1/top?by=account&metric=requests&window=300&n=2", "top", "--by", "account",
                "--metric", "requests", "--window", "300", "-n", "2")
    w = same_as_ctl(a, ex, "/api/v1/usage/window?window=300&by=account", "usage", "--by", "account",
                    "--window", "300")
    check_eq({r["key"]: [r["requests"], r["tokens"], r["cost_nusd"]] for r in w["rows"]}, want["account"],
             "usage by account over 300 s")
    same_as_ctl(a, ex, "/api/v1/usage/window?window=5m&by=user", "usage", "--by", "user", "--window", "5m")
    same_as_ctl(a, ex, "/api/v1/usage/window?window=300&by=user&id=" + u, "usage", "--by", "user",
                "--id", u, "--window", "300")

    # the key
    for key, hdrs, want_st in ((None, None, 401), ("wrong", None, 401), (KEY + "x", None, 401),
                               (None, {"Authorization": "Bearer wrong"}, 401),
                               (None, {"Authorization": "Bearer " + KEY}, 200), (KEY, None, 200)):
        st, r, body = ex.request("/api/v1/budgets", key=key, headers=hdrs)
        check_eq(st, want_st, "key %r headers %r" % (key, hdrs))
        if st == 401:
            check("Bearer" in (r.getheader("WWW-Authenticate") or ""), "no WWW-Authenticate on 401")
            check(isinstance(body, dict) and "error" in body, "401 body: %r", body)
    check(KEY not in ex.log(), "the key is in the exporter's log")

    # malformed requests
    for path, want_st, text in (("/api/v1/top?window=abc", 400, "window"),
                                ("/api/v1/top?window=0", 400, "window"),
                                ("/api/v1/top?window=48h", 400, "history"),
                                ("/api/v1/top?by=planet", 400, "by must be"),
                                ("/api/v1/top?metric=joules", 400, "metric"),
                                ("/api/v1/top?n=-1", 400, "n must be"),
                                ("/api/v1/usage/window?by=team", 400, "by must be"),
                                ("/api/v1/quota/%s?subject=team" % u, 400, "subject"),
                                ("/api/v1/stream?last_event_id=x", 400, "Last-Event-ID"),
                                ("/api/v1/history/daily?user=x", 503, "database"),
                                ("/api/v1/nothing", 404, "no such endpoint"),
                                ("/nothing", 404, "no such path")):
        st, r, body = ex.request(path)
        check(st == want_st and text in body.get("error", ""), "GET %s: %d %r, want %d and %r",
              path, st, body, want_st, text)
    st, r, body = ex.request("/api/v1/budgets", method="POST")
    check(st == 405 and "GET" in (r.getheader("Allow") or ""), "POST: %d %r", st, body)

    # health
    check_eq(ex.api("/health", key=None), {"status": "ok"}, "/health")
    deadline = time.monotonic() + 15
    while True:  # the bus is fresh once any stage's stats arrived
        st, r, body = ex.request("/health/ready", key=None)
        if st == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    check_eq((st, body), (200, {"status": "ready"}), "/health/ready")

    # the counters reach /metrics
    deadline = time.monotonic() + 15
    page = ""
    while time.monotonic() < deadline:
        st, r, page = ex.request("/metrics", key=None)
        if 'tokmon_api_unauthorized_total{' in page and 'tokmon_api_requests_total{' in page:
            break
        time.sleep(0.5)
    check('tokmon_api_unauthorized_total{' in page, "no tokmon_api_unauthorized_total on /metrics")
    a.stop()
    st, r, body = ex.request("/api/v1/budgets")
    check(st == 504 and "no answer" in body["error"], "aggregator stopped: %d %r", st, body)
    check_eq(ex.proc.stop(), 0, "exporter exit status")


@case(timeout=150)
def exporter_api_history(env):
    """/api/v1/history/daily from PostgreSQL as a login role granted
    tokmon_reader: per day requests, tokens and cost of one user, zero days
    included; 4xx for bad parameters; 503 while PostgreSQL is down and
    answers again once it is back (lazy reconnect)."""
    pg = Postgres(env).start()
    c = env.collector()
    w = Writer(env, c, pg)
    pg.psql("create role api_user login; grant tokmon_reader to api_user")
    conninfo = pg.conninfo.replace("user=postgres", "user=api_user")
    check("user=api_user" in conninfo, "conninfo %r", conninfo)
    ex = ApiExporter(env, c.client_cfg, exporter={"database": conninfo})

    now = time.time()
    sod = now - now % 86400  # UTC
    when = [max(sod + 1, now - 60), now - 86400 - 60, now - 3 * 86400 - 60]
    events = []
    for i in range(30):
        t = when[i % 3]
        nusd = 1000003 * (i + 1)
        e = {"provider": "openai", "model": "gpt-4o", "user": "hist-1" if i % 5 else "hist-2",
             "input_tokens": 100 + i, "output_tokens": 10 + i, "request_id": "h-%d" % i,
             "cost_usd": "%d.%09d" % (nusd // 10**9, nusd % 10**9), "ts": round(t + i * 0.001, 6),
             "_nusd": nusd}
        if i % 7 == 0:
            e["status"] = "error"
        events.append(e)
    for i in range(0, len(events), 3):
        c.send_udp("\n".join(wire(e) for e in events[i:i + 3]))
    w.wait_rows(len(events))

    def day_of(t):
        return time.strftime("%Y-%m-%d", time.gmtime(t))

    mine = [e for e in events if e["user"] == "hist-1"]
    got = ex.api("/api/v1/history/daily?user=hist-1&days=5")
    days = [day_of(now - k * 86400) for k in range(4, -1, -1)]
    if [r["day"] for r in got["rows"]] != days:  # midnight passed in between
        now = time.time()
        days = [day_of(now - k * 86400) for k in range(4, -1, -1)]
    check_eq([r["day"] for r in got["rows"]], days, "the days")
    check_eq((got["user"], got["days"], got["timezone"], got["from"], got["to"]),
             ("hist-1", 5, "UTC", days[0], days[-1]), "the head")
    for r in got["rows"]:
        es = [e for e in mine if day_of(e["ts"]) == r["day"]]
        n = sum(e["_nusd"] for e in es)
        check_eq((r["requests"], r["errors"], r["input_tokens"], r["output_tokens"], r["total_tokens"],
                  r["cost_nusd"], r["cost_usd"]),
                 (len(es), sum(1 for e in es if e.get("status") == "error"),
                  sum(e["input_tokens"] for e in es), sum(e["output_tokens"] for e in es),
                  sum(e["input_tokens"] + e["output_tokens"] for e in es), n, usd9(n)),
                 "history of %s" % r["day"])
    n = sum(e["_nusd"] for e in mine)
    check_eq((got["total"]["requests"], got["total"]["cost_nusd"], got["total"]["cost_usd"]),
             (len(mine), n, usd9(n)), "the total")
    got = ex.api("/api/v1/history/daily?user=hist-2")  # 30 days by default
    check_eq(len(got["rows"]), 30, "days by default")
    check_eq(got["total"]["requests"], len(events) - len(mine), "hist-2's requests")
    got = ex.api("/api/v1/history/daily?user=nobody&days=1")
    check_eq([(r["requests"], r["cost_usd"]) for r in got["rows"]], [(0, "0.000000000")], "a user without calls")
    # a user id that would break string-built SQL is just an id
    got = ex.api("/api/v1/history/daily?user=x%27%3B%20drop%20table%20llm_events%3B--&days=2")
    check_eq(got["user"], "x'; drop table llm_events;--", "the quoted user")
    check_eq(pg.scalar("select count(*) from llm_events"), str(len(events)), "rows still there")

    for path, text in (("/api/v1/history/daily", "user"), ("/api/v1/history/daily?user=a&days=0", "days"),
                       ("/api/v1/history/daily?user=a&days=367", "days"),
                       ("/api/v1/history/daily?user=a&days=x", "days")):
        st, r, body = ex.request(path)
        check(st == 400 and text in body["error"], "GET %s: %d %r", path, st, body)
    st, r, body = ex.request("/api/v1/history/daily?user=hist-1", key="wrong")
    check_eq(st, 401, "history with a wrong key")

    # PostgreSQL goes away and comes back
    pg.stop()
    st, r, body = ex.request("/api/v1/history/daily?user=hist-1")
    check(st == 503 and "PostgreSQL unavailable" in body["error"], "PostgreSQL stopped: %d %r", st, body)
    check(ex.proc.alive(), "the exporter died with PostgreSQL")
    pg.start()
    deadline = time.monotonic() + 30
    while True:
        st, r, body = ex.request("/api/v1/history/daily?user=hist-1&days=5")
        if st == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    check_eq(st, 200, "history after PostgreSQL came back (%r)" % (body,))
    check_eq(body["total"]["requests"], len(mine), "hist-1's requests after the restart")
    check_eq(ex.proc.stop(), 0, "exporter exit status")


def sse_open(port, last=None, query=""):
    """A stream over HTTP/1.0 (no chunked framing): the socket, after the
    response head."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    req = "GET /api/v1/stream%s HTTP/1.0\r\nX-Api-Key: %s\r\n" % (query, KEY)
    if last is not None:
        req += "Last-Event-ID: %s\r\n" % last
    s.sendall((req + "\r\n").encode())
    return s


def sse_read(s, buf, want_calls, timeout=10.0):
    """Reads until want_calls call events arrived in all; returns the events
    [(event, id, data)] and the bytes read."""
    deadline = time.monotonic() + timeout
    while True:
        text = buf.decode("utf-8", "replace")
        body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
        events = []
        for block in body.split("\n\n")[:-1]:
            ev, eid, data = "message", None, None
            for line in block.split("\n"):
                if line.startswith("event: "):
                    ev = line[7:]
                elif line.startswith("id: "):
                    eid = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
            if data is not None:
                events.append((ev, eid, data))
        if sum(1 for e in events if e[0] == "call") >= want_calls:
            return events, buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise CaseFailure("%d call events of %d after %.0f s: %r" %
                              (sum(1 for e in events if e[0] == "call"), want_calls, timeout, text[-800:]))
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            raise CaseFailure("the stream closed: %r" % text[-800:])
        buf += chunk


@case(timeout=90)
def exporter_api_stream(env):
    """/api/v1/stream: every priced call as an event with increasing ids;
    Last-Event-ID (or ?last_event_id=) resumes after it; then a SIGTERM
    with a stream open and waiting stops the exporter cleanly."""
    c = env.collector()
    ex = ApiExporter(env, c.client_cfg, exporter={"query_timeout": "200ms"})  # no aggregator here
    wait_bus_seen(ex)  # only the collector publishes: its SUB is connected
    s = sse_open(ex.port)
    head = b""
    deadline = time.monotonic() + 10
    while b": tokmon calls" not in head and time.monotonic() < deadline:
        head += s.recv(65536)
    text = head.decode()
    check(text.startswith("HTTP/1.") and " 200 " in text.split("\r\n")[0], "stream head: %r", text[:300])
    check("text/event-stream" in text, "content type: %r", text[:300])

    events = [{"provider": "openai", "model": "gpt-4o", "user": "s%d" % i, "input_tokens": 10 + i,
               "output_tokens": 2, "request_id": "st-%d" % i, "cost_usd": (i + 1) / 1000}
              for i in range(6)]
    c.send_udp("\n".join(json.dumps(e) for e in events))
    got, head = sse_read(s, head, 6)
    calls = [e for e in got if e[0] == "call"]
    ids = [e[1] for e in calls]
    check_eq(ids, list(range(ids[0], ids[0] + 6)), "consecutive ids")
    # one event per call (users on different ev.xx topics may come in any order)
    by_rid = {e[2]["request_id"]: e[2] for e in calls}
    check_eq(sorted(by_rid), ["st-%d" % i for i in range(6)], "the calls")
    check_eq([by_rid["st-%d" % i]["cost_usd"] for i in range(6)], ["0.00%d000000" % (i + 1) for i in range(6)],
             "cost_usd")
    check_eq([by_rid["st-%d" % i]["cost_nusd"] for i in range(6)], [(i + 1) * 1000000 for i in range(6)],
             "cost_nusd")
    check_eq({d["src"] for d in by_rid.values()}, {c.src}, "src")
    check_eq(by_rid["st-3"]["user"], "s3", "user")
    s.close()

    # resume after the second: the four after it, then live ones
    s = sse_open(ex.port, last=ids[1])
    got, buf = sse_read(s, b"", 4)
    check_eq([e[1] for e in got if e[0] == "call"], ids[2:], "resumed ids")
    check("event: gap" not in buf.decode(), "a gap where none was: %r", buf[-500:])
    c.send_udp(json.dumps(dict(events[0], request_id="live-1")))
    got, buf = sse_read(s, buf, 5)
    calls = [e for e in got if e[0] == "call"]
    check_eq((calls[-1][1], calls[-1][2]["request_id"]), (ids[-1] + 1, "live-1"), "the live call")
    s.close()
    s = sse_open(ex.port, query="?last_event_id=%d" % ids[4])
    got, buf = sse_read(s, b"", 2)
    check_eq([e[1] for e in got if e[0] == "call"], [ids[5], ids[5] + 1], "resumed from the query")
    # an id from before this exporter started: a gap event, then what is kept
    s2 = sse_open(ex.port, last=5)
    got, buf2 = sse_read(s2, b"", 7)
    check_eq(got[0][0], "gap", "the first event after an id from another start")
    check_eq((got[0][2]["last_event_id"], got[0][2]["next_id"]), (5, ids[0]), "the gap")

    # SIGTERM while both streams wait for calls
    time.sleep(0.3)
    rc = ex.proc.stop(timeout=10)
    err = ex.log()
    check("Fatal error" not in err, "the exporter aborted: %s", err[-600:])
    check_eq(rc, 0, "exporter exit status with streams open")
    s.close()
    s2.close()
