"""tokmon-pgwriter against a private PostgreSQL: what it stores is compared
with what the collector published (a durable tap of ev.*, never what the
test thinks it sent); kill -9 in the middle of a stream and a 30 s outage of
PostgreSQL lose and duplicate nothing; partitions are made ahead and dropped
after the retention; rows PostgreSQL or the writer refuses go to
dead_letter without blocking their batch; two writers migrate one database
once, and an edited migration stops a writer; the read-only role reads and
cannot write."""

import copy
import glob
import json
import os
import random
import time
from decimal import Decimal

from harness import (REPO, Aggregator, CaseFailure, Postgres, Writer, bin_path, case, check, check_eq,
                     fnv1a64, free_port, run)
from cases_aggregator import FakePublisher, durable_tap

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
          ("gemini", "gemini-2.5-flash")]
OPERATIONS = ["chat", "chat", "chat", "embed", "completion"]
SUMS = ("requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
        "output_tokens", "reasoning_tokens", "cost_nusd")
DAY = 86400


# ---- helpers -------------------------------------------------------------------

def pg_json(pg, sql):
    """The rows of sql as a list of dicts (jsonb, so one line; numbers exact)."""
    v = pg.scalar("select coalesce(jsonb_agg(to_jsonb(q_row_)), '[]'::jsonb) from (%s) q_row_" % sql)
    return json.loads(v, parse_float=Decimal)


def make_events(n, seed, ts, users=25, prefix="r"):
    """n usage events for several users, accounts, models and operations,
    some with cache and reasoning tokens, half priced by the collector and
    half with a reported cost; each with a request id; event times from ts
    on, 0.5 ms apart."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        prov, model = MODELS[rnd.randrange(len(MODELS))]
        inp = rnd.randrange(10, 5000)
        out_t = rnd.randrange(1, 1200)
        e = {"provider": prov, "model": model, "operation": OPERATIONS[rnd.randrange(len(OPERATIONS))],
             "user": "u%02d" % rnd.randrange(users), "account": ("acme", "globex", "initech")[rnd.randrange(3)],
             "input_tokens": inp, "output_tokens": out_t, "latency_ms": rnd.randrange(50, 9000),
             "request_id": "%s-%d-%d" % (prefix, seed, i), "ts": round(ts + i * 0.0005, 6)}
        if rnd.random() < 0.3:
            e["cache_read_tokens"] = rnd.randrange(0, inp)
        if rnd.random() < 0.2:
            e["reasoning_tokens"] = rnd.randrange(0, out_t)
        if rnd.random() < 0.5:
            nusd = rnd.randrange(1, 3000000)
            e["cost_usd"] = Decimal(nusd) / Decimal(10**9)
        if rnd.random() < 0.7:
            e["project"] = ("search", "chat", "rag")[rnd.randrange(3)]
        if rnd.random() < 0.05:
            e["status"] = "error"
            e["error_type"] = "rate_limit"
        out.append(e)
    return out


def wire(e):
    """JSON, with a reported cost written exactly (a decimal number)."""
    d = dict(e)
    cost = d.pop("cost_usd", None)
    text = json.dumps(d)
    if cost is not None:
        text = text[:-1] + ', "cost_usd": %s}' % format(cost, "f")
    return text


def send(c, events, per_datagram=4):
    for i in range(0, len(events), per_datagram):
        c.send_udp("\n".join(wire(e) for e in events[i:i + per_datagram]))


def ev_records(env, c, name="evtap"):
    """Every usage record the collector published (from its spool, with
    topic, src and seq)."""
    return durable_tap(env, c.client_cfg, name, ["ev."])


def tap_sums(recs, keyf=None):
    """{key: [count] + SUMS} over recs; keyf(rec) -> key (default: one key)."""
    out = {}
    for r in recs:
        k = keyf(r) if keyf else ()
        g = out.setdefault(k, [0] * (1 + len(SUMS)))
        g[0] += 1
        for i, f in enumerate(SUMS):
            g[i + 1] += r.get(f) or 0
    return out


def sql_sums(pg, group=(), where="true"):
    """The same from llm_events: {key: [count] + SUMS}."""
    cols = ", ".join('"%s"' % g for g in group)
    sel = (cols + ", " if cols else "") + "count(*) as n, " + \
        ", ".join("sum(%s)::bigint as %s" % (f, f) for f in SUMS)
    sql = "select %s from llm_events where %s" % (sel, where)
    if group:
        sql += " group by " + cols
    out = {}
    for r in pg_json(pg, sql):
        if not r["n"]:
            continue
        out[tuple(r[g] for g in group)] = [r["n"]] + [r[f] for f in SUMS]
    return out


def check_sums(pg, recs, group=(), what="llm_events"):
    want = tap_sums(recs, (lambda r: tuple(r.get(g) for g in group)))
    got = sql_sums(pg, group)
    if got != want:
        diff = [(k, want.get(k), got.get(k)) for k in sorted(set(want) | set(got), key=str)
                if want.get(k) != got.get(k)]
        raise CaseFailure("%s by %s differs from the collector's records (key, published, stored; "
                          "count, %s): %r" % (what, group or "all", ", ".join(SUMS), diff[:4]))


def check_no_duplicates(pg, recs, what):
    """The stored (request_id, cost) pairs are exactly the published ones."""
    ids = [r.get("request_id") for r in recs]
    check(all(ids) and len(set(ids)) == len(ids), "the published records' request ids are not unique")
    check_eq(pg.scalar("select count(*) - count(distinct request_id) from llm_events"), "0",
             "%s: rows stored twice (count - count(distinct request_id))" % what)
    got = sorted((r[0], int(r[1])) for r in pg.psql("select request_id, cost_nusd from llm_events"))
    want = sorted((r["request_id"], r["cost_nusd"]) for r in recs)
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        raise CaseFailure("%s: %d stored, %d published; missing %r; not published %r" %
                          (what, len(got), len(want), missing[:5], extra[:5]))


def utc_day(t):
    return time.strftime("%Y%m%d", time.gmtime(t))


def utc_date(t):
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def partitions(pg):
    return sorted(r[0] for r in pg.psql(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'llm_events'::regclass"))


def wait_for(what, fn, timeout=20.0, every=0.2):
    """Polls fn() until it returns something true; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise CaseFailure("%s not reached in %.0f s (last: %r)" % (what, timeout, last))


def emit(env, c, rate, count, seed, users=50, name="emit"):
    """tokmon-emit demo traffic in the background (each event with a request
    id); returns the process."""
    return env.spawn(name, [bin_path("tokmon-emit"), "-c", c.client_cfg, "--rate", str(rate),
                            "--count", str(count), "--users", str(users), "--seed", str(seed)])


def wait_emit(p, timeout):
    rc = p.wait(timeout)
    check(rc == 0, "tokmon-emit exited with %r: %s", rc, p.stderr()[-400:])


def wait_stored(w, recs, timeout=30.0):
    """Waits until llm_events holds as many rows as recs, and a moment more
    for rows that should not be there."""
    w.wait_rows(len(recs), timeout=timeout)
    time.sleep(0.3)


# ---- cases ---------------------------------------------------------------------

PG_TOTALS_CFG = """
[quota]
daily_tokens = 1000000
monthly_tokens = 20000000
daily_usd = 5
warn_pct = 90

[quota.user.vip]
daily_tokens = 50
monthly_tokens = -1
daily_usd = 1.5

[quota.account]
daily_tokens = 7777

[quota.account.acme]
monthly_usd = 12

[budget.daily]
scope = global
period = day
limit_usd = 100000

[budget.acme]
scope = account:acme
period = month
limit_usd = 0.5
warn_pct = 60
rollover = on
rollover_cap_usd = 0.25
"""


@case(timeout=90)
def pg_totals(env):
    """Collector, aggregator and writer: rows, sums, one event field by
    field, bus positions, the views, the rollups and the mirrored config
    against what the collector published."""
    pg = Postgres(env).start()
    c = env.collector(global_={"stats_interval": "1h"})
    a = Aggregator(env, c, sections=PG_TOTALS_CFG, aggregator={"close_delay": "200ms", "src": "it-aggregator"})
    w = Writer(env, c, pg, sections=PG_TOTALS_CFG, pgwriter={"batch_rows": "500"})

    # in a minute that has passed, so its roll.m buckets close at once
    base = time.time() - 100
    full = {"provider": "anthropic", "model": "claude-sonnet-4-5", "operation": "embed", "user": "full-user",
            "account": "acme", "project": "proj", "input_tokens": 5000, "cache_read_tokens": 1000,
            "cache_write_tokens": 300, "cache_write_1h_tokens": 200, "output_tokens": 700,
            "reasoning_tokens": 100, "latency_ms": 1234.567, "ttft_ms": 89.5, "status": "error",
            "http_status": 529, "error_type": "overloaded", "request_id": "req-full-1", "retries": 2,
            "ts": round(base - 1, 6), "tags": {"team": "core", "env": "prod \"quoted\""}}
    vip = {"provider": "openai", "model": "gpt-4o", "user": "vip", "account": "globex", "input_tokens": 90,
           "output_tokens": 10, "request_id": "req-vip-1", "ts": round(base - 0.5, 6)}
    events = make_events(3000, seed=21, ts=base)
    c.send_udp(json.dumps(full), json.dumps(vip))
    send(c, events)
    n = len(events) + 2
    c.wait_stats(lambda s: s.get("ingest_accepted_total") >= n, what="%d accepted" % n)
    recs = ev_records(env, c)
    check_eq(len(recs), n, "usage records the collector published")
    wait_stored(w, recs)

    # rows and sums: in all, per user and model, per account and project
    check_sums(pg, recs)
    check_sums(pg, recs, ("user", "provider", "model"))
    check_sums(pg, recs, ("account", "project", "operation", "status"))
    check_no_duplicates(pg, recs, "pg_totals")

    # one event, every field under the name the bus gives it
    rec = [r for r in recs if r.get("request_id") == "req-full-1"][0]
    row = pg_json(pg, "select to_jsonb(e) || jsonb_build_object("
                      "'ts', (extract(epoch from ts) * 1000000)::bigint, "
                      "'recv_ts', (extract(epoch from recv_ts) * 1000000)::bigint) as r "
                      "from llm_events e where request_id = 'req-full-1'")
    check_eq(len(row), 1, "rows of request req-full-1")
    row = row[0]["r"]
    for k, v in rec.items():
        if k in ("topic", "src", "seq"):
            continue
        check(k in row, "the record's field %r has no column of that name (columns: %s)", k, sorted(row))
        want = v // 1000 if k in ("ts", "recv_ts") else v  # microseconds, truncated
        check_eq(row[k], want, "column %s of req-full-1" % k)
    for k in set(row) - set(rec):
        check_eq(row[k], None, "column %s of req-full-1 (not in the record)" % k)
    check_eq((row["latency_us"], row["tags"], row["status"]), (1234567, full["tags"], "error"),
             "latency, tags and status of req-full-1 as sent")

    # the views
    total = tap_sums(recs)[()]
    cost = total[SUMS.index("cost_nusd") + 1]
    tokens = total[SUMS.index("input_tokens") + 1] + total[SUMS.index("output_tokens") + 1]
    errors = sum(1 for r in recs if r["status"] == "error")
    d = pg_json(pg, "select sum(calls)::bigint c, sum(requests)::bigint r, sum(errors)::bigint e, "
                    "sum(total_tokens)::bigint t, sum(cost_nusd)::bigint n, sum(cost_usd) usd, "
                    "max(users) u from daily_usage")[0]
    check_eq((d["c"], d["r"], d["e"], d["t"], d["n"], d["usd"]),
             (n, n, errors, tokens, cost, Decimal(cost) / Decimal(10**9)), "daily_usage (calls, requests, "
             "errors, tokens, nusd, usd)")
    if utc_day(base - 2) == utc_day(base + 2):  # one day
        check_eq(d["u"], len({r["user"] for r in recs}), "daily_usage users")
    h = pg_json(pg, "select sum(requests)::bigint r, sum(cost_nusd)::bigint n from hourly_usage_24h")[0]
    check_eq((h["r"], h["n"]), (n, cost), "hourly_usage_24h requests and cost")
    by_op = {r["operation"]: [r["requests"], r["total_tokens"], r["cost_nusd"]]
             for r in pg_json(pg, "select * from cost_by_operation")}
    want_op = {}
    for r in recs:
        g = want_op.setdefault(r["operation"], [0, 0, 0])
        g[0] += 1
        g[1] += r["input_tokens"] + r["output_tokens"]
        g[2] += r["cost_nusd"]
    check_eq(by_op, want_op, "cost_by_operation")
    by_model = {(r["provider"], r["model"]): [r["requests"], r["input_tokens"], r["output_tokens"], r["cost_nusd"]]
                for r in pg_json(pg, "select * from cost_by_model")}
    want_model = {}
    for r in recs:
        g = want_model.setdefault((r["provider"], r["model"]), [0, 0, 0, 0])
        g[0] += 1
        g[1] += r["input_tokens"]
        g[2] += r["output_tokens"]
        g[3] += r["cost_nusd"]
    check_eq(by_model, want_model, "cost_by_model")
    top = [(r["user"], r["cost_nusd"]) for r in pg_json(pg, "select * from top_users")]
    want_users = {}
    for r in recs:
        want_users[r["user"]] = want_users.get(r["user"], 0) + r["cost_nusd"]
    check_eq(sorted(top), sorted(want_users.items()), "top_users (user, cost)")
    check_eq([t[1] for t in top], sorted(want_users.values(), reverse=True), "top_users order (by cost)")

    # the minute rollups: once the buckets closed, the same sums as the rows
    # of their minutes, for each dimension
    def rollup_vs_events():
        for dim in ("model", "user", "account"):
            got = pg_json(pg, "select bucket_start, sum(requests)::bigint r, sum(errors)::bigint e, "
                              "sum(input_tokens)::bigint i, sum(cache_read_tokens)::bigint cr, "
                              "sum(output_tokens)::bigint o, sum(reasoning_tokens)::bigint rs, "
                              "sum(cost_nusd)::bigint n from llm_rollup where grain = 'm' and dim = '%s' "
                              "group by 1 order by 1" % dim)
            want = pg_json(pg, "select date_trunc('minute', ts) bucket_start, sum(requests)::bigint r, "
                               "(count(*) filter (where status = 'error'))::bigint e, "
                               "sum(input_tokens)::bigint i, sum(cache_read_tokens)::bigint cr, "
                               "sum(output_tokens)::bigint o, sum(reasoning_tokens)::bigint rs, "
                               "sum(cost_nusd)::bigint n from llm_events group by 1 order by 1")
            if got != want:
                return None
        return True
    try:
        wait_for("llm_rollup minute sums equal to llm_events", rollup_vs_events, timeout=20)
    except CaseFailure:
        raise CaseFailure("llm_rollup (grain m, dim model) %r != llm_events by minute %r" % (
            pg_json(pg, "select bucket_start, sum(requests) r, sum(cost_nusd) n from llm_rollup "
                        "where grain = 'm' and dim = 'model' group by 1 order by 1"),
            pg_json(pg, "select date_trunc('minute', ts) m, count(*) r, sum(cost_nusd) n from llm_events "
                        "group by 1 order by 1")))
    ru = pg_json(pg, "select sum(requests)::bigint r, sum(cost_nusd)::bigint n, sum(cost_usd) usd "
                     "from rollup_usage where grain = 'm' and dim = 'model'")[0]
    check_eq((ru["r"], ru["n"], ru["usd"]), (n, cost, Decimal(cost) / Decimal(10**9)),
             "rollup_usage (grain m, dim model): requests, nusd, usd")

    # budgets: the mirror of the config, and the aggregator's statuses
    check_eq(pg.psql("select name, scope, scope_value, period, limit_nusd, warn_pct, rollover, "
                     "rollover_cap_nusd from budgets order by name"),
             [["acme", "account", "acme", "month", "500000000", "60", "t", "250000000"],
              ["daily", "global", "", "day", "100000000000000", "80", "f", "100000000000000"]],
             "budgets")
    acme = sum(r["cost_nusd"] for r in recs if r.get("account") == "acme")

    def budgets_caught_up():
        rows = pg_json(pg, "select name, scope_value, limit_nusd, spent_nusd, state, "
                           "(select sum(cost_nusd) from llm_events e where e.ts >= b.period_start "
                           "and e.ts < b.period_end and (b.scope_value is null or e.account = b.scope_value))"
                           "::bigint in_period from budget_status b order by name")
        if len(rows) != 2:
            return None
        return rows if [(r["name"], r["spent_nusd"]) for r in rows] == \
            [("acme", rows[0]["in_period"]), ("daily", rows[-1]["in_period"])] else None
    rows = wait_for("budget_status spent equal to the events of the period", budgets_caught_up, timeout=15)
    check_eq([(r["name"], r["scope_value"], r["limit_nusd"], r["state"]) for r in rows],
             [("acme", "acme", 500000000, "exceeded"), ("daily", None, 100000000000000, "ok")],
             "budget_status (name, scope value, limit, state)")
    if utc_day(base - 2) == utc_day(time.time()):  # not across midnight: every event counts
        check_eq([r["spent_nusd"] for r in rows], [acme, cost], "budget_status spent (acme, daily)")
    # (crossed_ts is the receive time of the record that crossed, and the
    # aggregator reads its shard topics in no common order: no order here)
    check_eq(pg.psql("select crossing, spent_nusd * 100 >= limit_nusd * (case crossing when 'warning' "
                     "then 60 else 100 end) from budget_crossings where name = 'acme' order by crossing"),
             [["exceeded", "t"], ["warning", "t"]], "budget_crossings of acme (crossing, spent beyond it)")

    # quota limits mirrored, an override inheriting (-1, empty) the defaults
    got = pg.psql("select subject, id, \"window\", tokens, nusd, warn_pct from quota_limits "
                  "order by subject, id, \"window\"")
    want = [["account", "*", "5h", "0", "0", "80"], ["account", "*", "day", "7777", "0", "80"],
            ["account", "*", "month", "0", "0", "80"],
            ["account", "acme", "5h", "0", "0", "80"], ["account", "acme", "day", "7777", "0", "80"],
            ["account", "acme", "month", "0", "12000000000", "80"],
            ["user", "*", "5h", "0", "0", "90"], ["user", "*", "day", "1000000", "5000000000", "90"],
            ["user", "*", "month", "20000000", "0", "90"],
            ["user", "vip", "5h", "0", "0", "90"], ["user", "vip", "day", "50", "1500000000", "90"],
            ["user", "vip", "month", "20000000", "0", "90"]]
    check_eq(got, want, "quota_limits")
    wait_for("quota_history: vip's day tokens exceeded", lambda: pg.psql(
        "select state from quota_history where subject = 'user' and id = 'vip' and \"window\" = 'day' "
        "and unit = 'tokens' and state = 'exceeded'"), timeout=10)

    # the writer's counters through tokmonctl stats, and its bus positions
    st = w.stats()
    check_eq(st.get("pgw_rows_total", table="llm_events"), n, "pgw_rows_total{table=llm_events}")
    check_eq(st.get("pgw_dead_letter_total"), 0, "pgw_dead_letter_total")
    check_eq(st.get("pgw_connected"), 1, "pgw_connected")
    rc, out, err = w.ctl("stats", "--timeout", "0.8")
    check(rc == 0 and "tokmon-pgwriter" in out and w.src in out, "tokmonctl stats does not list the writer: %s %s",
          out[-600:], err)
    check_eq(pg.scalar("select count(*) from dead_letter"), "0", "dead letters")
    check(pg.scalar("select seq from bus_offsets where consumer = '%s' and src = '%s'" % (w.src, "it-aggregator"))
          is not None, "no bus position of the aggregator")

    # the collector publishes nothing unasked (stats_interval 1h): the
    # stored position catches up with its last seq at the writer's next
    # batch (the aggregator's budget statuses come every 500 ms)
    def offset_is_last():
        off = pg.scalar("select seq from bus_offsets where consumer = '%s' and src = '%s'" % (w.src, c.src))
        last = c.stats().get("bus_last_seq")  # publishes one more stats message: seq last + 1
        return (off, last) if off is not None and int(off) == last else None
    time.sleep(0.7)
    wait_for("bus_offsets of %s equal to its last seq" % c.src, offset_is_last, timeout=10, every=0.7)
    check(max(r["seq"] for r in recs) <= c.stats().get("bus_last_seq"), "seqs beyond the collector's last")


@case(timeout=90)
def pg_kill9(env):
    """The writer killed -9 twice in the middle of a stream of 3000 events a
    second, batches of 50 rows in flight: after the restarts every record is
    stored once."""
    pg = Postgres(env).start()
    c = env.collector()
    w = Writer(env, c, pg, pgwriter={"batch_rows": "50", "batch_time": "20ms"})
    n = 9000
    p = emit(env, c, 3000, n, seed=31)
    for pause in (1.0, 0.9):
        time.sleep(pause)
        before = int(pg.scalar("select count(*) from llm_events"))
        w.kill9()
        check(0 < before < n, "the kill came outside the stream (%d of %d rows stored)", before, n)
        w.start()
    wait_emit(p, 30)
    c.wait_stats(lambda s: s.get("ingest_accepted_total") >= n, what="%d accepted" % n)
    recs = ev_records(env, c)
    check_eq(len(recs), n, "usage records the collector published")
    wait_stored(w, recs)
    check_no_duplicates(pg, recs, "after two kill -9")
    check_sums(pg, recs, ("user", "model"))
    check_eq(len(w.procs), 3, "writer processes")
    check(all(p.p.returncode == -9 for p in w.procs[:2]), "the first two writers were not killed")
    last = max(r["seq"] for r in recs)
    off = int(pg.scalar("select seq from bus_offsets where consumer = '%s' and src = '%s'" % (w.src, c.src)))
    check(off >= last, "bus_offsets seq %d before the last usage message %d", off, last)


@case(timeout=100)
def pg_outage(env):
    """PostgreSQL stopped for 30 s while events keep coming: the writer
    stays up, reconnects when it is back, and catches up exactly."""
    pg = Postgres(env).start()
    c = env.collector()
    w = Writer(env, c, pg, pgwriter={"batch_rows": "200", "reconnect_max": "2s"})
    rate, secs = 150, 33
    p = emit(env, c, rate, rate * secs, seed=41)
    w.wait_rows(100, timeout=10)
    pg.stop()
    t_down = time.monotonic()
    wait_for("the writer noticing the outage", lambda: "PostgreSQL failed" in w.log(), timeout=5, every=0.05)
    while time.monotonic() - t_down < 30:
        check(w.proc.alive(), "the writer exited during the outage (status %r): %s",
              w.proc.p.poll(), w.log()[-600:])
        time.sleep(0.5)
    st = w.stats()  # while down: it still answers
    check_eq(st.get("pgw_connected"), 0, "pgw_connected during the outage")
    check(st.get("pgw_connect_errors_total") >= 3, "reconnection attempts during 30 s: %d",
          st.get("pgw_connect_errors_total"))
    pg.start()
    wait_emit(p, 20)
    n = rate * secs
    c.wait_stats(lambda s: s.get("ingest_accepted_total") >= n, what="%d accepted" % n)
    recs = ev_records(env, c)
    check_eq(len(recs), n, "usage records the collector published")
    wait_stored(w, recs, timeout=30)
    check_no_duplicates(pg, recs, "after a 30 s outage")
    check_sums(pg, recs)
    st = w.stats()
    check(st.get("pgw_reconnects_total") >= 1, "pgw_reconnects_total %d", st.get("pgw_reconnects_total"))
    check_eq(st.get("pgw_connected"), 1, "pgw_connected after the outage")
    check(w.proc.alive() and len(w.procs) == 1, "the writer did not stay up")
    check("connected to PostgreSQL" in w.log().split("PostgreSQL failed", 1)[1],
          "no reconnection logged: %s", w.log()[-800:])


@case(timeout=60)
def pg_partitions(env):
    """partitions_ahead = 3, raw_retention_days = 5: yesterday to today + 3
    exist; one of 10 days ago goes at the next maintenance; an event of 20
    days ago (and one 10 days ahead) goes to dead_letter, naming the
    retention, and the rest of its message is stored."""
    pg = Postgres(env).start()
    c = env.collector()
    w = Writer(env, c, pg, pgwriter={"partitions_ahead": "3", "raw_retention_days": "5",
                                     "maintenance_interval": "1s"})
    now = time.time()
    want = ["llm_events_p" + utc_day(now + d * DAY) for d in range(-1, 4)]
    got = partitions(pg)
    if got != want:  # midnight passed in between
        want = ["llm_events_p" + utc_day(time.time() + d * DAY) for d in range(-1, 4)]
    check_eq(got, want, "partitions of llm_events")
    old = now - 10 * DAY
    name = "llm_events_p" + utc_day(old)
    pg.psql("create table %s partition of llm_events for values from ('%s 00:00:00+00') to ('%s 00:00:00+00')"
            % (name, utc_date(old), utc_date(old + DAY)))
    pg.psql("insert into %s (ts, recv_ts, provider, model, operation, status, cost_nusd, cost_source) "
            "values ('%s 12:00:00+00', now(), 'p', 'm', 'chat', 'ok', 1, 'reported')" % (name, utc_date(old)))
    check_eq(pg.scalar("select count(*) from llm_events"), "1", "the old partition's row")
    wait_for("%s dropped" % name, lambda: name not in partitions(pg), timeout=10)
    check_eq(pg.scalar("select count(*) from llm_events"), "0", "rows after the drop")
    check("partitions_dropped=1" in w.log(), "the drop was not logged: %s", w.log()[-500:])
    check(w.stats().get("pgw_partitions_dropped_total") >= 1, "pgw_partitions_dropped_total")

    t = time.time()
    evs = [{"provider": "openai", "model": "gpt-4o", "user": "pu", "input_tokens": 10 + i, "output_tokens": 5,
            "request_id": "part-%d" % i, "ts": t - 30 + i} for i in range(4)]
    evs.insert(1, dict(evs[0], request_id="too-old", ts=t - 20 * DAY))
    evs.insert(3, dict(evs[0], request_id="too-new", ts=t + 10 * DAY))
    c.send_udp("\n".join(json.dumps(e) for e in evs))  # one datagram: one bus message
    recs = ev_records(env, c)
    check_eq(len(recs), 6, "records published")
    check_eq(len({r["seq"] for r in recs}), 1, "bus messages holding the six records")
    w.wait_rows(2, table="dead_letter", timeout=10)
    w.wait_rows(4, timeout=10)
    time.sleep(0.3)
    check_eq(sorted(r[0] for r in pg.psql("select request_id from llm_events")),
             ["part-0", "part-1", "part-2", "part-3"], "rows stored")
    dead = pg_json(pg, "select src, seq, topic, kind, reason, encode(record, 'hex') rec from dead_letter order by id")
    check_eq(len(dead), 2, "dead letters")
    import msgpack
    for d, rid in zip(dead, ("too-old", "too-new")):
        rec = msgpack.unpackb(bytes.fromhex(d["rec"]), raw=False)
        check_eq(rec.get("request_id"), rid, "request id of the dead letter")
        check_eq((d["src"], d["seq"], d["topic"], d["kind"]), (c.src, recs[0]["seq"], recs[0]["topic"], "usage"),
                 "dead letter of %s (src, seq, topic, kind)" % rid)
        check("raw_retention_days = 5" in d["reason"] and "partitions_ahead = 3" in d["reason"],
              "the reason does not name the retention: %r", d["reason"])
    st = w.stats()
    check_eq(st.get("pgw_dead_letter_total"), 2, "pgw_dead_letter_total")
    check_eq(partitions(pg), ["llm_events_p" + utc_day(time.time() + d * DAY) for d in range(-1, 4)],
             "partitions at the end")


@case(timeout=60)
def pg_dead_letter(env):
    """A row PostgreSQL refuses (a CHECK constraint added by the test) goes
    to dead_letter with PostgreSQL's reason and its batch is stored; a
    publisher on the bus sending a record with invalid UTF-8, a body that
    is not an array and a kind the writer does not store: dead letters too,
    and the writer goes on; a budget status refused by a CHECK constraint on
    budget_state (written through a staging table) likewise."""
    import msgpack
    pg = Postgres(env).start()
    c = env.collector()
    fake_pub = "tcp://127.0.0.1:%d" % free_port(udp=False)
    fake_replay = "tcp://127.0.0.1:%d" % free_port(udp=False)
    fake = FakePublisher("fake-collector", fake_pub, fake_replay)
    try:
        w = Writer(env, c, pg, bus={"collectd": c.bus["collectd"] + "," + fake_pub,
                                    "collectd_replay": c.bus["collectd_replay"] + "," + fake_replay})
        pg.psql("alter table llm_events add constraint test_cap check (cost_nusd < 1000000000000)")
        t = time.time() - 5
        # one user: one shard topic, so one bus message
        evs = [{"provider": "openai", "model": "gpt-4o-mini", "user": "d", "input_tokens": 100 + i,
                "output_tokens": 9, "request_id": "ok-%d" % i, "ts": t + i * 0.001} for i in range(6)]
        evs.insert(3, {"provider": "openai", "model": "gpt-4o", "user": "d", "input_tokens": 1,
                       "output_tokens": 1, "request_id": "expensive", "cost_usd": 5000, "ts": t})
        c.send_udp("\n".join(json.dumps(e) for e in evs))
        recs = ev_records(env, c)
        check_eq(len(recs), 7, "records published")
        check_eq(len({r["seq"] for r in recs}), 1, "bus messages holding the seven records")
        w.wait_rows(1, table="dead_letter", timeout=10)
        w.wait_rows(6, timeout=10)
        time.sleep(0.3)
        check_eq(sorted(r[0] for r in pg.psql("select request_id from llm_events")),
                 ["ok-%d" % i for i in range(6)], "rows stored")
        dead = pg_json(pg, "select src, seq, topic, kind, reason, encode(record, 'hex') rec from dead_letter")
        check_eq(len(dead), 1, "dead letters")
        d = dead[0]
        check("test_cap" in d["reason"] and "check constraint" in d["reason"],
              "the reason is not PostgreSQL's: %r", d["reason"])
        check_eq((d["src"], d["seq"], d["kind"]), (c.src, recs[0]["seq"], "usage"), "dead letter (src, seq, kind)")
        rec = msgpack.unpackb(bytes.fromhex(d["rec"]), raw=False)
        check_eq((rec["request_id"], rec["cost_nusd"]), ("expensive", 5000 * 10**9), "the dead letter's record")
        st = w.stats()
        check(st.get("pgw_batch_errors_total") >= 1, "the refused batch was not counted")
        check_eq(st.get("pgw_dead_letter_total"), 1, "pgw_dead_letter_total")
        check_eq(st.get("pgw_rows_total", table="llm_events"), 6, "pgw_rows_total{table=llm_events}")

        # a hostile publisher
        check(fake.hello.wait(10), "the writer never asked the fake publisher HELLO")
        now = time.time_ns()
        good = {"provider": "openai", "model": "gpt-4o", "operation": "chat", "user": "good", "status": "ok",
                "input_tokens": 70, "output_tokens": 7, "requests": 1, "ts": now, "recv_ts": now,
                "cost_nusd": 1234, "cost_source": "reported", "request_id": "fake-1"}
        topic = "ev.%02x" % (fnv1a64("good") & 0xff)
        # str-typed (not bin) bytes that are not UTF-8
        bad = msgpack.packb(dict(good, user=b"\xff\xfe bad \xc3", request_id="fake-bad"), use_bin_type=False)
        body = b"\x93" + msgpack.packb(good) + bad + msgpack.packb(dict(good, request_id="fake-2"))
        fake.publish(topic, "usage", body)
        fake.publish(topic, "usage", msgpack.packb({"not": "an array"}))
        fake.publish(topic, "quota", msgpack.packb([good]))
        fake.publish(topic, "usage", msgpack.packb([dict(good, request_id="fake-3")]))
        w.wait_rows(4, table="dead_letter", timeout=10)
        w.wait_rows(9, timeout=10)
        time.sleep(0.3)
        check_eq(sorted(r[0] for r in pg.psql("select request_id from llm_events where \"user\" = 'good'")),
                 ["fake-1", "fake-2", "fake-3"], "the fake publisher's good records")
        dead = pg_json(pg, "select src, seq, topic, kind, reason, record from dead_letter "
                           "where src = 'fake-collector' order by id")
        check_eq([(d["seq"], d["topic"], d["kind"]) for d in dead],
                 [(1, topic, "usage"), (2, topic, "usage"), (3, topic, "quota")], "the fake's dead letters")
        check("UTF-8" in dead[0]["reason"], "reason for the invalid UTF-8: %r", dead[0]["reason"])
        check("array" in dead[1]["reason"], "reason for a body that is no array: %r", dead[1]["reason"])
        check("kind" in dead[2]["reason"], "reason for an unexpected kind: %r", dead[2]["reason"])
        check_eq(pg.scalar("select seq from bus_offsets where consumer = '%s' and src = 'fake-collector'" % w.src),
                 "4", "the fake publisher's stored position")
        check(w.proc.alive(), "the writer died")
        # and it goes on
        c.send_udp(json.dumps(dict(evs[0], request_id="after")))
        w.wait_rows(10, timeout=10)
        check_eq(pg.scalar("select count(*) from llm_events where request_id = 'after'"), "1", "a later event")

        # a row refused where it goes from its staging table into its table
        # (budget_state): the same, the other rows of its batch stored
        pg.psql("alter table budget_state add constraint test_no_poison check (name <> 'poison')")
        Aggregator(env, c, aggregator={"src": "it-aggregator"},
                   sections="[budget.poison]\nlimit_usd = 1000\n[budget.fine]\nlimit_usd = 1000\n")
        c.send_udp(json.dumps(dict(evs[0], request_id="with-budgets")))
        w.wait_value("select count(*) from dead_letter where kind = 'budget'", lambda v: int(v) >= 1,
                     timeout=10, what="a budget status in dead_letter")
        w.wait_value("select count(*) from llm_events where request_id = 'with-budgets'", lambda v: v == "1",
                     timeout=10, what="the event beside the refused budget status")
        check_eq(pg.psql("select name, src from budget_state"), [["fine", "it-aggregator"]], "budget_state")
        d = pg_json(pg, "select src, topic, reason, encode(record, 'hex') rec from dead_letter "
                        "where kind = 'budget' order by id limit 1")[0]
        check("test_no_poison" in d["reason"], "reason of the refused budget status: %r", d["reason"])
        check_eq((d["src"], d["topic"], msgpack.unpackb(bytes.fromhex(d["rec"]), raw=False)["name"]),
                 ("it-aggregator", "budget", "poison"), "the refused budget status (src, topic, name)")
        check_eq(w.stats().get("pgw_reconnects_total"), 0, "reconnections (a refused row is no outage)")
        check(w.proc.alive(), "the writer died")
    finally:
        fake.close()


@case(timeout=60)
def pg_two_writers_migrate(env):
    """Two writers started at once on an empty database migrate it once;
    a writer refuses a database whose applied migration differs from its
    own (exits non-zero, saying a released migration was edited)."""
    pg = Postgres(env).start()
    c = env.collector()
    sections = "[budget.b1]\nscope = global\nlimit_usd = 10\n[quota.user.x]\ndaily_tokens = 5\n"
    w1 = Writer(env, c, pg, name="w1", sections=sections, start=False)
    w2 = Writer(env, c, pg, name="w2", sections=sections, start=False,
                bus={"pgwriter": "tcp://127.0.0.1:%d" % free_port(udp=False),
                     "pgwriter_replay": "tcp://127.0.0.1:%d" % free_port(udp=False)})
    w1.spawn()
    w2.spawn()
    w1.wait_started()
    w2.wait_started()
    files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(REPO, "writer", "migrations", "*.sql")))
    check(files, "no migrations found")
    check_eq(pg.psql("select version, name from schema_migrations order by version"),
             [[str(int(f.split("_")[0])), f] for f in files], "schema_migrations")
    for w in (w1, w2):
        check("level=error" not in w.log() and "level=warn" not in w.log(),
              "%s complained at start: %s", w.name, w.log()[-1000:])
    for f in files:
        applied = [w.name for w in (w1, w2) if "migration applied\" name=%s" % f in w.log()]
        check_eq(len(applied), 1, "writers that applied %s (%r)" % (f, applied))
    check_eq(pg.scalar("select count(*) from budgets"), "1", "budgets mirrored by two writers")
    check_eq(pg.scalar("select count(*) from quota_limits"), "9", "quota_limits mirrored by two writers")
    for w in (w1, w2):
        check(w.proc.alive(), "%s is not running", w.name)
        check_eq(w.stop(), 0, "%s's exit status" % w.name)

    pg.psql("update schema_migrations set checksum = 'x'")
    p = w1.spawn()
    rc = p.wait(20)
    check(rc is not None, "a writer on an edited migration did not exit: %s", p.stderr()[-500:])
    check(rc != 0, "a writer on an edited migration exited with status 0")
    log = p.stderr()
    check("released migration" in log and "edited" in log, "no word of an edited migration: %s", log[-800:])
    check_eq(pg.scalar("select count(*) from schema_migrations where checksum = 'x'"), str(len(files)),
             "schema_migrations left as it was")


@case(timeout=45)
def pg_reader_role(env):
    """tokmon_reader: a login role granted it reads llm_events and the views
    and may not write."""
    pg = Postgres(env).start()
    c = env.collector()
    w = Writer(env, c, pg)
    c.send_udp(json.dumps({"provider": "openai", "model": "gpt-4o", "user": "r1", "input_tokens": 10,
                           "output_tokens": 2, "request_id": "read-me"}))
    w.wait_rows(1)
    check_eq(pg.scalar("select rolcanlogin from pg_roles where rolname = 'tokmon_reader'"), "f",
             "tokmon_reader exists (and cannot log in)")
    pg.psql("create role api_user login; grant tokmon_reader to api_user")
    api = copy.copy(pg)  # the same cluster, as api_user
    api.name = "pg-api"
    api.conninfo = pg.conninfo.replace("user=postgres", "user=api_user")
    check("user=api_user" in api.conninfo, "conninfo %r", api.conninfo)
    check_eq(api.scalar("select current_user"), "api_user", "the login role")
    check_eq(api.scalar("select request_id from llm_events"), "read-me", "api_user reading llm_events")
    for view in ("daily_usage", "hourly_usage_24h", "cost_by_operation", "cost_by_model", "top_users",
                 "budget_status", "rollup_usage", "llm_rollup", "budgets", "quota_limits", "bus_offsets",
                 "dead_letter"):
        api.psql("select count(*) from %s" % view)
    for sql in ("insert into llm_events (ts, recv_ts, provider, model, operation, status, cost_nusd, "
                "cost_source) values (now(), now(), 'p', 'm', 'chat', 'ok', 1, 'reported')",
                "delete from bus_offsets", "update budgets set limit_nusd = 0"):
        rc, out, err = run(["/usr/bin/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, api.conninfo])
        check(rc != 0 and "permission denied" in err, "api_user ran %r: status %d: %s", sql, rc, err)
    check_eq(pg.scalar("select count(*) from llm_events"), "1", "rows after the refused insert")
