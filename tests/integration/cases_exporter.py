"""tokmon-exporter's outputs in a running pipeline (collector, aggregator,
exporter): /metrics as Prometheus text 0.0.4, OpenMetrics 1.0 and gzip,
checked by promtool and by a strict structure checker written here from
the two formats' rules, with values equal to the calls read back from the
bus; a real Prometheus 2.42 scraping it (OpenMetrics negotiated) and
receiving its remote write; remote write to a recording receiver (retries,
headers, label order, basic auth, no retry on 400); Loki push to the
validating receiver (retries, auth, tenant, labels and structured
metadata, a refused batch dropped and counted); the series cap, the top-K
users, and StatsD names that conflict (by type, or by the sample names
they would render)."""

import base64
import gzip
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import (HERE, Aggregator, CaseFailure, Exporter, bin_path, case, check, check_eq,
                     parse_samples, run, sample_sum)
from cases_aggregator import wire
import loki_receiver
import rw_receiver

PROMTOOL = "/usr/bin/promtool"
CT_TEXT = "text/plain; version=0.0.4; charset=utf-8"
OM_ACCEPT = "application/openmetrics-text; version=1.0.0"
CT_OM_PREFIX = "application/openmetrics-text; version=1.0.0"
LOKI_RECEIVER = os.path.join(HERE, "loki_receiver.py")
DAEMONS = ("tokmon-collectd", "tokmon-aggregator")


# ---- the pipeline ------------------------------------------------------------

def pipeline(env, sections="", aggregator=None):
    """A collector (counters published every second) and an aggregator."""
    c = env.collector(global_={"stats_interval": "1s"})
    a = Aggregator(env, c, sections=sections, aggregator=aggregator)
    return c, a


def stop_clean(*exporters):
    """SIGTERM: each exits 0 (what it still had to push went out or was
    counted dropped)."""
    for ex in exporters:
        rc = ex.stop()
        check(rc == 0, "%s exited with %r at SIGTERM: %s", ex.name, rc, ex.log()[-600:])


def daemons(samples):
    return {dict(ls).get("daemon") for (_, ls) in samples}


def wait_subscribed(*exporters, timeout=15.0):
    """Waits until each exporter shows the collector's and the aggregator's
    own counters: it is subscribed to both (it reads from live, so nothing
    may be sent before)."""
    for ex in exporters:
        ex.wait_metric(lambda s: set(DAEMONS) <= daemons(s), timeout,
                       "%s showing tokmon_* of %s" % (ex.name, ", ".join(DAEMONS)))


def emit_demo(c, n, seed, users=30, rate=3000):
    rc, out, err = run([bin_path("tokmon-emit"), "-c", c.client_cfg, "--rate", str(rate), "--count", str(n),
                        "--users", str(users), "--seed", str(seed)], timeout=30)
    check(rc == 0, "tokmon-emit: status %d: %s", rc, err.strip()[-500:])


ODD_MODEL = 'it "odd" \\ model\nline é'


def send_calls(c, n, seed=1):
    """n demo calls through tokmon-emit, and one whose model and user need
    escaping in every format, read back priced from the bus."""
    tap = c.tap(["ev."], n + 1, timeout=20)
    emit_demo(c, n, seed)
    c.send_udp(json.dumps({"provider": "openai", "model": ODD_MODEL, "operation": "chat", "user": 'u "q" \\',
                           "input_tokens": 5, "output_tokens": 1, "latency_ms": 3,
                           "request_id": "odd-%d" % seed}))
    recs = tap.wait("priced calls")
    check_eq(len(recs), n + 1, "calls on the bus")
    check(any(r["model"] == ODD_MODEL for r in recs), "the odd model did not arrive as sent")
    return recs


def usd(nusd):
    return Decimal(nusd) / 10 ** 9


def expect(recs):
    """What the page must show for these calls."""
    e = {"requests": 0, "errors": 0, "tokens": 0, "nusd": 0, "lat": 0, "ttft": 0, "lat_us": 0, "ttft_us": 0,
         "by_pmo": {}}
    for r in recs:
        e["requests"] += r["requests"]
        if r["status"] == "error":
            e["errors"] += r["requests"]
        e["tokens"] += r["input_tokens"] + r["output_tokens"]
        e["nusd"] += r["cost_nusd"]
        pmo = (r["provider"], r["model"], r["operation"])
        h = e["by_pmo"].setdefault(pmo, {"lat": [], "ttft": [], "nusd": 0})
        h["nusd"] += r["cost_nusd"]
        if r.get("latency_us") is not None:
            e["lat"] += 1
            e["lat_us"] += r["latency_us"]
            h["lat"].append(r["latency_us"])
        if r.get("ttft_us") is not None:
            e["ttft"] += 1
            e["ttft_us"] += r["ttft_us"]
            h["ttft"].append(r["ttft_us"])
    return e


BUCKETS_US = [10000 * 2 ** i for i in range(14)]  # 0.01 s .. 81.92 s


def want_buckets(values_us):
    """Cumulative bucket counts (le inclusive), +Inf last."""
    return [sum(1 for v in values_us if v <= b) for b in BUCKETS_US] + [len(values_us)]


# ---- the pages ------------------------------------------------------------------

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
VALUE = re.compile(r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?Inf|NaN)\Z")
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? ([^ ]+)( -?\d+(?:\.\d+)?)?\Z")
TYPES_TEXT = {"counter", "gauge", "histogram", "summary", "untyped"}
TYPES_OM = {"counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def check_escapes(s, allowed, what):
    i = 0
    while i < len(s):
        if s[i] == "\\":
            check(i + 1 < len(s) and s[i + 1] in allowed, "%s: bad escape in %r", what, s[:120])
            i += 2
            continue
        i += 1


def split_labels(body, what):
    """The label pairs of {...} (braces stripped), checking the grammar
    strictly: name="value" joined by commas, escapes \\\\ \\" \\n only."""
    out = []
    i = 0
    while i < len(body):
        m = re.match(r'([a-zA-Z_][a-zA-Z0-9_]*)="', body[i:])
        check(m, "%s: bad label at %r", what, body[i:i + 40])
        name = m.group(1)
        k = i + m.end()
        v = []
        while True:
            check(k < len(body), "%s: unterminated value of %s", what, name)
            ch = body[k]
            if ch == "\\":
                check(k + 1 < len(body) and body[k + 1] in '\\"n', "%s: bad escape in %s", what, name)
                v.append({"n": "\n"}.get(body[k + 1], body[k + 1]))
                k += 2
                continue
            if ch == '"':
                break
            check(ch != "\n", "%s: raw newline in %s", what, name)
            v.append(ch)
            k += 1
        out.append((name, "".join(v)))
        i = k + 1
        if i < len(body):
            check(body[i] == ",", "%s: %r after label %s", what, body[i:i + 10], name)
            i += 1
            check(i < len(body), "%s: trailing comma", what)
    return out


def check_page(text, om):
    """A strict structure check of a whole page; returns
    {family: {"type", "help", "samples": [(name, labels, value)]}} in page
    order. Text 0.0.4: a counter's TYPE names its sample (x_total). OpenMetrics:
    TYPE and HELP name the family (no _total for counters), counter samples
    end in _total, # EOF once and last, no other comments."""
    fmt = "OpenMetrics" if om else "text"
    check(text.endswith("\n"), "%s: the page does not end with a newline", fmt)
    lines = text[:-1].split("\n")
    if om:
        check(lines[-1] == "# EOF", "%s: the last line is %r, not # EOF", fmt, lines[-1][:80])
        check(lines.count("# EOF") == 1, "%s: # EOF %d times", fmt, lines.count("# EOF"))
        lines = lines[:-1]
    fams = {}
    order = []
    current = None
    closed = set()
    seen_series = set()
    owner = {}  # sample name -> family

    def family_for(name):
        if name in owner:
            return owner[name]
        # a sample before any metadata of its family: only the current family may own it
        return None

    def open_family(name, where):
        nonlocal current
        if current != name:
            check(name not in closed, "%s line %d: family %s interleaved (it appeared before)", fmt, where, name)
            if current is not None:
                closed.add(current)
            current = name
        if name not in fams:
            fams[name] = {"type": None, "help": None, "samples": [], "meta_done": False}
            order.append(name)
        return fams[name]

    for no, line in enumerate(lines, 1):
        check(line != "", "%s line %d: an empty line", fmt, no)
        check(line == line.rstrip(" \t") and not line.startswith(" "), "%s line %d: stray blanks: %r", fmt, no, line)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            check(len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE", "UNIT"),
                  "%s line %d: a comment that is no HELP/TYPE%s: %r", fmt, no, "/UNIT" if om else "", line[:100])
            check(om or parts[1] != "UNIT", "text line %d: UNIT", no)
            kind, name = parts[1], parts[2]
            check(NAME.match(name), "%s line %d: bad name %r", fmt, no, name)
            f = open_family(name, no)
            check(not f["samples"], "%s line %d: %s of %s after its samples", fmt, no, kind, name)
            if kind == "TYPE":
                check(len(parts) == 4, "%s line %d: TYPE without a type", fmt, no)
                t = parts[3]
                check(t in (TYPES_OM if om else TYPES_TEXT), "%s line %d: unknown type %r", fmt, no, t)
                check(f["type"] is None, "%s line %d: a second TYPE for %s", fmt, no, name)
                f["type"] = t
                if om and t == "counter":
                    check(not name.endswith("_total"), "OpenMetrics line %d: counter family %s ends in _total",
                          no, name)
                if not om and t == "counter":
                    check(name.endswith("_total"), "text line %d: counter %s without _total", no, name)
            elif kind == "HELP":
                check(f["help"] is None, "%s line %d: a second HELP for %s", fmt, no, name)
                f["help"] = parts[3] if len(parts) == 4 else ""
                check_escapes(f["help"], '\\"n' if om else "\\n", "%s line %d HELP" % (fmt, no))
            continue
        m = SAMPLE.match(line)
        check(m, "%s line %d: not a sample line (one space before the value): %r", fmt, no, line[:160])
        sname, lbody, value = m.group(1), m.group(2), m.group(3)
        check(VALUE.match(value), "%s line %d: bad value %r", fmt, no, value)
        labels = split_labels(lbody[1:-1], "%s line %d" % (fmt, no)) if lbody else []
        names = [k for k, _ in labels]
        check(len(set(names)) == len(names), "%s line %d: a label twice: %r", fmt, no, names)
        for k in names:
            check(LABEL.match(k) and not k.startswith("__"), "%s line %d: bad label name %r", fmt, no, k)
        # the family: the current one, when the name fits it
        check(current is not None and fams[current]["type"], "%s line %d: sample %s before any TYPE", fmt, no,
              sname)
        f = fams[current]
        fam, t = current, f["type"]
        if om:
            fits = any(sname == fam + s for s in SUFFIXES.get(t, ("",)))
        elif t == "counter":
            fits = sname == fam
        else:
            fits = any(sname == fam + s for s in SUFFIXES.get(t, ("",)) if s != "_created")
        check(fits, "%s line %d: sample %s does not belong to family %s (%s)", fmt, no, sname, fam, t)
        check(owner.setdefault(sname, fam) == fam, "%s line %d: sample name %s in two families", fmt, no, sname)
        key = (sname, tuple(sorted(labels)))
        check(key not in seen_series, "%s line %d: duplicate series %s%s", fmt, no, sname, lbody or "")
        seen_series.add(key)
        v = float(value)
        if t == "counter" or (t == "histogram" and sname.endswith(("_count", "_bucket"))):
            check(v >= 0 and v == v, "%s line %d: %s is %s", fmt, no, sname, value)
        f["samples"].append((sname, labels, value))
    # histograms: per label set, buckets sorted, cumulative, +Inf == _count, _sum there
    for fam in order:
        f = fams[fam]
        check(f["type"] is not None, "%s: family %s without TYPE", fmt, fam)
        check(f["samples"], "%s: family %s without samples", fmt, fam)
        if f["type"] != "histogram":
            continue
        sets = {}
        for sname, labels, value in f["samples"]:
            rest = tuple(sorted((k, v) for k, v in labels if k != "le"))
            s = sets.setdefault(rest, {"buckets": [], "sum": None, "count": None})
            if sname == fam + "_bucket":
                le = dict(labels).get("le")
                check(le is not None, "%s: %s bucket without le", fmt, fam)
                s["buckets"].append((le, float(value)))
            elif sname == fam + "_sum":
                s["sum"] = float(value)
            elif sname == fam + "_count":
                s["count"] = float(value)
        for rest, s in sets.items():
            what = "%s: %s%s" % (fmt, fam, dict(rest))
            b = s["buckets"]
            check(b and b[-1][0] == "+Inf", "%s: no le=\"+Inf\" last: %r", what, b[-3:])
            les = [float(le) for le, _ in b]
            check(les == sorted(les) and len(set(les)) == len(les), "%s: le not increasing: %r", what, les)
            counts = [v for _, v in b]
            check(counts == sorted(counts), "%s: buckets not cumulative: %r", what, counts)
            check(s["count"] is not None and s["sum"] is not None, "%s: no _count or _sum", what)
            check(counts[-1] == s["count"], "%s: +Inf %r != _count %r", what, counts[-1], s["count"])
    return {name: fams[name] for name in order}


def promtool(text):
    """(status, output lines) of promtool check metrics on text."""
    rc, out, err = run([PROMTOOL, "check", "metrics"], input=text.encode("utf-8"), timeout=30)
    return rc, [x for x in (out + err).splitlines() if x.strip()]


def check_text_page(ex, accept=None):
    """Scrapes in text 0.0.4 (Content-Type, promtool clean, structure);
    returns (text, families)."""
    ct, hd, text = ex.metrics(accept=accept)
    check_eq(ct, "text/plain; version=0.0.4; charset=utf-8", "Content-Type of the text page")
    rc, lines = promtool(text)
    check(rc == 0 and not lines, "promtool check metrics on the text page: status %d: %s", rc, lines[:20])
    return text, check_page(text, om=False)


def check_om_page(ex):
    """Scrapes in OpenMetrics (Content-Type, structure, promtool); returns
    (text, families)."""
    ct, hd, text = ex.metrics(accept=OM_ACCEPT)
    check(ct and ct.startswith(CT_OM_PREFIX), "Content-Type of the OpenMetrics page: %r", ct)
    check(text.endswith("# EOF\n"), "the OpenMetrics page does not end with # EOF")
    fams = check_page(text, om=True)
    promtool_om(text, fams)
    return text, fams


def promtool_om(text, fams):
    """promtool 2.42 has no OpenMetrics parser (prometheus/prometheus#8932)
    and reads the page as text 0.0.4. The two known consequences, and
    nothing else: (1) a HELP holding an escaped double quote (OpenMetrics
    must escape it, text 0.0.4 may not) is a parse error at the first such
    line, so the page is checked again with those HELP lines unescaped;
    (2) each counter's _total samples have "no help text" (the HELP names
    the family)."""
    lines = text.split("\n")
    quoted = [i for i, x in enumerate(lines, 1) if x.startswith("# HELP ") and '\\"' in x]
    rc, found = promtool(text)
    if quoted:
        want = "error while linting: text format parsing error in line %d: invalid escape sequence '\\\"'" % quoted[0]
        check(rc == 1 and found == [want], "promtool on the OpenMetrics page: status %d: %r, expected only %r",
              rc, found[:5], want)
        for i in quoted:
            lines[i - 1] = lines[i - 1].replace('\\"', '"')
        rc, found = promtool("\n".join(lines))
    want = {"%s_total no help text" % name for name, f in fams.items() if f["type"] == "counter" and f["help"]}
    got = set(found)
    check(rc in (0, 3) and got == want and len(found) == len(got),
          "promtool on the OpenMetrics page: status %d; findings other than the counters' missing help: %r; "
          "counters not flagged: %r", rc, sorted(got - want)[:10], sorted(want - got)[:10])


def series_keys(fams):
    return [(fam, [(s, tuple(sorted(ls))) for s, ls, _ in f["samples"]]) for fam, f in fams.items()]


def exact(samples_list, name, **labels):
    """The exact decimal sum of the page's samples (strings) named name."""
    tot = Decimal(0)
    for s, ls, v in samples_list:
        d = dict(ls)
        if s == name and all(d.get(k) == w for k, w in labels.items()):
            tot += Decimal(v)
    return tot


def flat(fams):
    return [x for f in fams.values() for x in f["samples"]]


def check_values(fams, e, types=True):
    """The llm_* families against the calls sent (exact decimals)."""
    s = flat(fams)
    check_eq(exact(s, "llm_requests_total"), Decimal(e["requests"]), "sum(llm_requests_total)")
    check_eq(exact(s, "llm_requests_total", status="error"), Decimal(e["errors"]),
             "sum(llm_requests_total{status=\"error\"})")
    check_eq(exact(s, "llm_tokens_total"), Decimal(e["tokens"]),
             "sum(llm_tokens_total) over type (input + output of the calls)")
    want_types, types = types, {dict(ls)["type"] for n, ls, _ in s if n == "llm_tokens_total"}
    check(types <= {"input", "cache_read", "cache_write", "output", "reasoning", "__other__"},
          "llm_tokens_total types: %r", types)
    check(not want_types or {"input", "cache_read", "output", "reasoning"} <= types,
          "llm_tokens_total types: %r", types)
    check_eq(exact(s, "llm_cost_usd_total"), usd(e["nusd"]), "sum(llm_cost_usd_total)")
    check_eq(exact(s, "llm_request_duration_seconds_count"), Decimal(e["lat"]),
             "llm_request_duration_seconds_count (calls with a latency)")
    check_eq(exact(s, "llm_request_duration_seconds_sum"), Decimal(e["lat_us"]) / 10 ** 6,
             "llm_request_duration_seconds_sum")
    check_eq(exact(s, "llm_time_to_first_token_seconds_count"), Decimal(e["ttft"]),
             "llm_time_to_first_token_seconds_count (calls with a ttft)")
    check_eq(exact(s, "llm_time_to_first_token_seconds_sum"), Decimal(e["ttft_us"]) / 10 ** 6,
             "llm_time_to_first_token_seconds_sum")
    # per provider/model/operation: cost and every bucket
    for (p, m, o), h in e["by_pmo"].items():
        lab = {"provider": p, "model": m, "operation": o}
        check_eq(exact(s, "llm_cost_usd_total", **lab), usd(h["nusd"]), "llm_cost_usd_total%r" % lab)
        for fam, key in (("llm_request_duration_seconds", "lat"), ("llm_time_to_first_token_seconds", "ttft")):
            if not h[key]:
                continue
            got = [(dict(ls)["le"], Decimal(v)) for n, ls, v in s
                   if n == fam + "_bucket" and all(dict(ls).get(k) == w for k, w in lab.items())]
            want = want_buckets(h[key])
            check_eq([v for _, v in got], [Decimal(x) for x in want], "%s_bucket%r" % (fam, lab))
            check_eq(got[0][0], "0.01", "first le of %s" % fam)


CALL_FAMILIES = ("llm_requests_total", "llm_tokens_total", "llm_cost_usd_total", "llm_request_duration_seconds",
                 "llm_time_to_first_token_seconds")


def llm_only(samples):
    """The samples of the call families (which hold still once every call
    is applied, unlike the budget forecasts)."""
    return {k: v for k, v in samples.items() if k[0].startswith(CALL_FAMILIES)}


def same_map(got, want, what):
    """got == want, or a failure naming a few differing keys."""
    if got == want:
        return
    keys = sorted(set(got) | set(want), key=repr)
    diff = [(k, want.get(k), got.get(k)) for k in keys if got.get(k) != want.get(k)]
    raise CaseFailure("%s: %d of %d keys differ (key, expected, got): %r" % (what, len(diff), len(keys), diff[:4]))


# ---- 1. formats and values ----------------------------------------------------------

@case(timeout=60)
def exp_metrics_formats(env):
    """Text 0.0.4 (promtool clean), OpenMetrics (strict checker; promtool's
    only findings are the counters' _total without help), gzip; values
    equal the calls read back from the bus; tokmon_* of every stage; the
    budget gauges."""
    c, a = pipeline(env, sections="[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 5\n")
    ex = Exporter(env, a.cfg_path)
    wait_subscribed(ex)
    recs = send_calls(c, 300, seed=7)
    e = expect(recs)
    check(e["errors"] > 0 and e["ttft"] < e["lat"] and len(e["by_pmo"]) >= 8,
          "the demo traffic lacks errors, calls without ttft or variety: %r",
          {k: e[k] for k in ("errors", "ttft", "lat")})
    check(any(r["cache_read_tokens"] for r in recs) and any(r["reasoning_tokens"] for r in recs),
          "the demo traffic has no cache or reasoning tokens")
    total = usd(e["nusd"])
    # everything applied: the calls, the budget's status, every stage's counters
    ex.wait_metric(lambda s: sample_sum(s, "llm_requests_total") == e["requests"] and
                   sample_sum(s, "llm_budget_spent_usd", budget="daily") > 0 and
                   sample_sum(s, "tokmon_ingest_accepted_total", daemon="tokmon-collectd") >= 301 and
                   sample_sum(s, "tokmon_agg_records_total", daemon="tokmon-aggregator", kind="usage") >= 301,
                   20, "300 calls, the budget and the stages' counters on /metrics")

    # (a) text 0.0.4
    text, fams = check_text_page(ex)
    # (d) values, exactly
    check_values(fams, e)
    spent = None
    deadline = time.monotonic() + 10
    while spent != total and time.monotonic() < deadline:  # the aggregator's next budget status
        text, fams = check_text_page(ex)
        spent = exact(flat(fams), "llm_budget_spent_usd", budget="daily")
        if spent != total:
            time.sleep(0.3)
    check_eq(spent, total, "llm_budget_spent_usd{budget=\"daily\"}")
    s = flat(fams)
    check_eq(exact(s, "llm_budget_limit_usd", budget="daily", scope="global", period="day"), Decimal(5),
             "llm_budget_limit_usd")
    ratio = exact(s, "llm_budget_spent_ratio", budget="daily")
    check(abs(ratio - total / 5) <= Decimal("1e-12"), "llm_budget_spent_ratio %s for %s of 5", ratio, total)
    methods = {dict(ls).get("method") for n, ls, _ in s if n == "llm_budget_forecast_usd"}
    check_eq(methods, {"avg", "rate"}, "llm_budget_forecast_usd methods")
    for fam in ("llm_quota_subjects", "llm_budget_exhaust_seconds"):
        check(fam in fams, "%s missing", fam)
    for d in DAEMONS + ("tokmon-exporter",):
        check(any(n.startswith("tokmon_") and dict(ls).get("daemon") == d for n, ls, _ in s),
              "no tokmon_* series with daemon=%s", d)
    check_eq(exact(s, "tokmon_ingest_accepted_total", daemon="tokmon-collectd"), Decimal(301),
             "tokmon_ingest_accepted_total of the collector")
    check_eq(exact(s, "tokmon_exporter_bad_records_total", daemon="tokmon-exporter"), Decimal(0),
             "tokmon_exporter_bad_records_total")
    check_eq(exact(s, "tokmon_exporter_conflicts_total", daemon="tokmon-exporter"), Decimal(0),
             "tokmon_exporter_conflicts_total")
    units = [f for f in fams if re.search(r"_(ms|us|ns|milliseconds|microseconds|nanoseconds)(_total)?$", f)]
    check(not units, "families named in ms/us/ns: %r", units)
    check("tokmon_exporter_scrape_duration_seconds" in fams, "the scrape duration is not in seconds")

    # (b) OpenMetrics: the same families, counters named as the format wants
    om_text, om_fams = check_om_page(ex)
    text_names = [f[:-6] if fams[f]["type"] == "counter" else f for f in fams]
    check_eq(list(om_fams), text_names, "families of the OpenMetrics page (in order)")
    check_values(om_fams, e)
    for f in om_fams.values():
        if f["type"] == "counter":
            check(all(n.endswith("_total") for n, _, _ in f["samples"]), "OpenMetrics counter samples")

    # (c) gzip: the same page, compressed
    st, hd, raw = ex.get("/metrics", {"Accept-Encoding": "gzip"})
    check_eq(st, 200, "gzip scrape status")
    check_eq(hd.get("content-encoding"), "gzip", "Content-Encoding with Accept-Encoding: gzip")
    check_eq(hd.get("content-type"), CT_TEXT, "Content-Type of the gzip page")
    check(raw[:2] == b"\x1f\x8b", "the gzip body is no gzip: %r", raw[:10])
    ztext = gzip.decompress(raw).decode("utf-8")
    zfams = check_page(ztext, om=False)
    plain, zs = parse_samples(text), parse_samples(ztext)
    same_map(llm_only(zs), llm_only(plain), "llm_* samples of the gzip page against the plain one")
    check_eq([(f, sorted(k)) for f, k in series_keys(zfams)], [(f, sorted(k)) for f, k in series_keys(fams)],
             "families and series of the gzip page against the plain one")
    st, hd, raw = ex.get("/metrics", {"Accept-Encoding": "gzip;q=0"})
    check(hd.get("content-encoding") is None and raw.startswith(b"# HELP"), "gzip;q=0 still gzipped")
    st, hd, raw = ex.get("/metrics", {"Accept-Encoding": "gzip", "Accept": OM_ACCEPT})
    check(hd.get("content-encoding") == "gzip" and gzip.decompress(raw).endswith(b"# EOF\n"),
          "OpenMetrics with gzip")
    same_map(llm_only(parse_samples(gzip.decompress(raw).decode())), llm_only(parse_samples(om_text)),
             "llm_* of the gzipped OpenMetrics page")
    stop_clean(ex)


# ---- 2. a real Prometheus scraping ----------------------------------------------------

class ScrapeRecorder:
    """A pass-through HTTP proxy to one port that records each request's
    Accept and Accept-Encoding and the answer's Content-Type."""

    def __init__(self, target_port):
        self.seen = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                h = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "accept-encoding")}
                req = urllib.request.Request("http://127.0.0.1:%d%s" % (target_port, self.path), headers=h)
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        status, body, rh = r.status, r.read(), dict(r.getheaders())
                except urllib.error.HTTPError as e:
                    status, body, rh = e.code, e.read(), dict(e.headers)
                except (OSError, urllib.error.URLError) as e:  # the exporter has stopped
                    status, body, rh = 502, str(e).encode(), {}
                rec.seen.append((h.get("Accept"), h.get("Accept-Encoding"), rh.get("Content-Type"),
                                 rh.get("Content-Encoding"), status))
                self.send_response(status)
                for k in ("Content-Type", "Content-Encoding"):
                    if rh.get(k):
                        self.send_header(k, rh[k])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.th = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.th.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def prometheus_get(prom, path):
    with urllib.request.urlopen(prom.base + path, timeout=5) as r:
        return json.load(r)


def scrape_config(prom, jobs):
    """Rewrites prom's config with scrape jobs {name: "host:port"} every
    second and reloads it."""
    lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:"]
    for name, target in jobs.items():
        lines += ["  - job_name: %s" % name, "    static_configs:", "      - targets: ['%s']" % target]
    with open(os.path.join(prom.dir, "prometheus.yml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    req = urllib.request.Request(prom.base + "/-/reload", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        check(r.status == 200, "prometheus reload: %d", r.status)


@case(timeout=60)
def exp_prometheus_scrape(env):
    """Prometheus 2.42 scrapes the exporter every second (negotiating
    OpenMetrics, gzipped): target up without error; the sums and every
    cost series queried back equal the page and the calls."""
    c, a = pipeline(env)
    ex = Exporter(env, a.cfg_path)
    wait_subscribed(ex)
    recs = send_calls(c, 200, seed=8)
    e = expect(recs)
    ex.wait_metric(lambda s: sample_sum(s, "llm_requests_total") == e["requests"], 15, "the calls on /metrics")
    proxy = ScrapeRecorder(ex.port)
    try:
        prom = rw_receiver.Prometheus(env)
        prom.start()
        scrape_config(prom, {"tokmon": "127.0.0.1:%d" % ex.port, "tokmon_recorded": "127.0.0.1:%d" % proxy.port})
        want_req = float(e["requests"])
        try:
            prom.wait_query('sum(llm_requests_total{job="tokmon"})', timeout=15,
                            pred=lambda r: r[0][1] == want_req)
        except AssertionError as err:
            raise CaseFailure("%s; targets: %s" % (err, json.dumps(prometheus_get(prom, "/api/v1/targets"))[:1500]))
        # both targets healthy, and scraped without an error
        deadline = time.monotonic() + 10
        while True:
            targets = prometheus_get(prom, "/api/v1/targets")["data"]["activeTargets"]
            health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
            if health == {"tokmon": ("up", ""), "tokmon_recorded": ("up", "")}:
                break
            check(time.monotonic() < deadline, "targets not all up without error: %r", health)
            time.sleep(0.2)
        up = prom.query('up{job="tokmon"}')
        check(up and up[0][1] == 1.0, "up{job=\"tokmon\"}: %r", up)
        # what Prometheus asked for and got: OpenMetrics, gzip
        check(proxy.seen, "no scrape went through the recording proxy")
        accept, enc, ct, cenc, status = proxy.seen[-1]
        check(accept and accept.startswith("application/openmetrics-text"),
              "Prometheus' Accept does not put OpenMetrics first: %r", accept)
        check(ct and ct.startswith(CT_OM_PREFIX), "the exporter answered Prometheus with %r", ct)
        check("gzip" in (enc or "") and cenc == "gzip", "Accept-Encoding %r answered with %r", enc, cenc)
        check(all(s[4] == 200 for s in proxy.seen), "a proxied scrape failed: %r", proxy.seen[-3:])
        # the sums, and each cost series exactly as the page has it
        got = prom.query('sum(llm_requests_total{job="tokmon"})')
        check_eq(got[0][1], want_req, "sum(llm_requests_total) in Prometheus")
        got = prom.query('sum(llm_cost_usd_total{job="tokmon"})')
        check(abs(Decimal(repr(got[0][1])) - usd(e["nusd"])) <= Decimal("1e-9"),
              "sum(llm_cost_usd_total) in Prometheus: %r, sent %s", got, usd(e["nusd"]))
        page = llm_only(ex.samples())
        series = prom.query('llm_cost_usd_total{job="tokmon"}')
        check_eq(len(series), len([k for k in page if k[0] == "llm_cost_usd_total"]), "cost series in Prometheus")
        for labels, v in series:
            key = ("llm_cost_usd_total", tuple(sorted((k, x) for k, x in labels.items()
                                                     if k not in ("__name__", "job", "instance"))))
            check_eq(v, page.get(key), "Prometheus' %r" % (key,))
        hist = prom.query('sum(llm_request_duration_seconds_count{job="tokmon"})')
        check_eq(hist[0][1], float(e["lat"]), "sum(llm_request_duration_seconds_count) in Prometheus")
        inf = prom.query('sum(llm_request_duration_seconds_bucket{job="tokmon",le="+Inf"})')
        check_eq(inf[0][1], float(e["lat"]), "sum of the +Inf buckets in Prometheus")
        stop_clean(ex)
    finally:
        proxy.close()


# ---- 3. remote write ----------------------------------------------------------------

def rw_llm(req):
    """{(name, sorted labels without __name__): value} of a request's call families."""
    out = {}
    for s in req.series:
        d = dict(s.labels)
        name = d.pop("__name__")
        if name.startswith(CALL_FAMILIES):
            out[(name, tuple(sorted(d.items())))] = s.samples[0][0]
    return out


def page_llm_nonempty(samples):
    """The page's call samples with empty-valued labels left out (remote
    write leaves them out: in Prometheus an empty label is no label)."""
    return {(n, tuple((k, v) for k, v in ls if v != "")): v for (n, ls), v in samples.items()
            if n.startswith(CALL_FAMILIES)}


def rw_counter(ex, name, **labels):
    return sample_sum(ex.samples(), "tokmon_" + name, daemon="tokmon-exporter", **labels)


@case(timeout=60)
def exp_remote_write(env):
    """Remote write every second: to a recording receiver answering 500
    twice (retried, the same body; headers, label order and names; basic
    auth; values equal /metrics), to one answering 400 first (not retried),
    and to a real Prometheus 2.42 (llm_requests_total queried back)."""
    c, a = pipeline(env)
    pw = env.write("rw.password", "s3cret-rw\n")
    rx = rw_receiver.Receiver(answers=[500, 500], default=204)
    rx400 = rw_receiver.Receiver(answers=[400], default=204)
    prom = rw_receiver.Prometheus(env)
    prom.start()
    exporters = []
    try:
        rwk = {"remote_write_interval": "1s", "remote_write_backoff_max": "200ms"}
        ex = Exporter(env, a.cfg_path, name="exporter-rx",
                      exporter=dict(rwk, remote_write_url=rx.url, remote_write_user="it-rw",
                                    remote_write_password_file=pw))
        ex4 = Exporter(env, a.cfg_path, name="exporter-400", exporter=dict(rwk, remote_write_url=rx400.url))
        exp = Exporter(env, a.cfg_path, name="exporter-prom", exporter=dict(rwk, remote_write_url=prom.write_url))
        exporters += [ex, ex4, exp]
        wait_subscribed(ex, ex4, exp)
        recs = send_calls(c, 200, seed=9)
        e = expect(recs)
        for x in (ex, ex4, exp):
            x.wait_metric(lambda s: sample_sum(s, "llm_requests_total") == e["requests"], 15,
                          "the calls on %s's /metrics" % x.name)

        # (a) 500, 500, then 204: the same request three times
        reqs = rx.wait(3, timeout=10)
        check_eq([r.status for r in reqs], [500, 500, 204], "answers of the first requests")
        check(reqs[0].body == reqs[1].body == reqs[2].body, "a retry sent another body")
        check(0.04 <= reqs[1].at - reqs[0].at <= 0.9 and 0.04 <= reqs[2].at - reqs[1].at <= 0.9,
              "retry waits %.3f and %.3f s", reqs[1].at - reqs[0].at, reqs[2].at - reqs[1].at)
        auth = "Basic " + base64.b64encode(b"it-rw:s3cret-rw").decode()
        for r in reqs:
            check(not r.problems and not r.error, "request problems: %r %r", r.problems, r.error)
            check_eq(r.path, "/api/v1/write", "remote write path")
            check_eq(r.header("Content-Encoding"), "snappy", "Content-Encoding")
            check_eq(r.header("Content-Type"), "application/x-protobuf", "Content-Type")
            check_eq(r.header("X-Prometheus-Remote-Write-Version"), "0.1.0", "X-Prometheus-Remote-Write-Version")
            check_eq(r.header("Authorization"), auth, "Authorization")
            check_eq(len({tuple(x.labels) for x in r.series}), len(r.series), "distinct series in a request")
            for s in r.series:
                names = [k for k, _ in s.labels]
                check(names == sorted(names) and names.count("__name__") == 1, "labels not sorted: %r", names)
                check(all(v != "" for _, v in s.labels), "an empty label value: %r", s.labels)
                check(len(s.samples) == 1, "series with %d samples", len(s.samples))
        # a later request (everything applied) equals the page, llm_* exactly
        want = page_llm_nonempty(ex.samples())
        t_page = time.time()
        later = rx.wait_for(lambda r: r.wall > t_page + 0.05 and r.status == 204, timeout=10)
        got = rw_llm(later)
        same_map(got, want, "the call families remote-written against /metrics")
        names_page = {n for (n, _) in ex.samples()}
        names_rw = {dict(s.labels)["__name__"] for s in later.series}
        diff = {n for n in names_page ^ names_rw if not n.startswith("tokmon_")}
        check(not diff, "metric names remote-written differ from the page: %r", sorted(diff)[:10])
        check_eq(sum(v for (n, _), v in got.items() if n == "llm_requests_total"), float(e["requests"]),
                 "sum(llm_requests_total) written")
        ex.wait_metric(lambda s: sample_sum(s, "tokmon_rw_retries_total", daemon="tokmon-exporter") == 2 and
                       sample_sum(s, "tokmon_rw_errors_total", reason="http_5xx") == 2, 5,
                       "tokmon_rw_retries_total 2, tokmon_rw_errors_total{reason=\"http_5xx\"} 2")

        # (a) 400: dropped, not retried; the next request is the next interval's
        r4 = rx400.wait(2, timeout=10)
        check_eq([r.status for r in r4], [400, 204], "answers of the receiver refusing the first request")
        check(r4[1].at - r4[0].at >= 0.5, "the request after a 400 came %.3f s later: a retry",
              r4[1].at - r4[0].at)
        check(r4[1].timestamps()[0] > r4[0].timestamps()[-1], "the request after a 400 carries the same samples")
        n400 = len(r4[0].series)
        ex4.wait_metric(lambda s: sample_sum(s, "tokmon_rw_dropped_total", daemon="tokmon-exporter",
                                             reason="rejected") == n400 and
                        sample_sum(s, "tokmon_rw_errors_total", daemon="tokmon-exporter", reason="http_4xx") == 1,
                        5, "tokmon_rw_dropped_total{reason=\"rejected\"} %d" % n400)
        check_eq(rw_counter(ex4, "rw_retries_total"), 0.0, "retries after a 400")
        check_text_page(ex4)  # with the tokmon_rw_* families: still promtool clean
        check_om_page(ex4)

        # (b) a real Prometheus with the receiver on
        want_req = float(e["requests"])
        prom.wait_query("sum(llm_requests_total)", timeout=10, pred=lambda r: r[0][1] == want_req)
        by_status = {l["status"]: v for l, v in prom.query("sum by (status) (llm_requests_total)")}
        check_eq(by_status.get("error"), float(e["errors"]), "errors in Prometheus")
        page = page_llm_nonempty(exp.samples())
        for labels, v in prom.query("llm_cost_usd_total"):
            key = ("llm_cost_usd_total", tuple(sorted((k, x) for k, x in labels.items() if k != "__name__")))
            check_eq(v, page.get(key), "Prometheus' remote-written %r" % (key,))
        check_eq(rw_counter(exp, "rw_errors_total"), 0.0, "errors writing to Prometheus")
        stop_clean(ex, ex4, exp)
    finally:
        for x in exporters:  # before their receivers go
            x.stop()
        rx.close()
        rx400.close()


# ---- 4. Loki push -------------------------------------------------------------------------

def loki(env, name, *args):
    p = env.spawn(name, ["/usr/bin/python3", LOKI_RECEIVER, "--out", env.path(name + ".jsonl"),
                         "--requests", env.path(name + "-req.jsonl")] + list(args), stdout_pipe=True)
    port = loki_receiver.wait_listening(p.p.stdout)
    return p, "http://127.0.0.1:%d" % port


def wait_file(pred, path, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        rows = loki_receiver.read_jsonl(path)
        if pred(rows):
            return rows
        if time.monotonic() > deadline:
            raise CaseFailure("%s not reached in %.0f s (%d rows in %s)" % (what, timeout, len(rows), path))
        time.sleep(0.1)


@case(timeout=60)
def exp_loki(env):
    """Loki push: every call once, as a JSON line with stream labels
    service/env/level/provider only and user/model/request_id in structured
    metadata; 500 and 429 retried; basic auth and X-Scope-OrgID; a batch
    refused with 400 dropped, not retried, counted in tokmon_loki_*."""
    c, a = pipeline(env)
    pw = env.write("loki.password", "s3cret-loki\n")
    rx1, url1 = loki(env, "loki", "--fail", "500,429", "--user", "it-loki", "--password-file", pw,
                     "--tenant", "it-tenant")
    rx2, url2 = loki(env, "loki400", "--fail", "400")
    lk = {"loki_batch_wait": "200ms", "loki_backoff_max": "300ms"}
    ex = Exporter(env, a.cfg_path, exporter=dict(lk, loki_url=url1, loki_user="it-loki", loki_password_file=pw,
                                                 loki_tenant="it-tenant"))
    ex2 = Exporter(env, a.cfg_path, name="exporter-400", exporter=dict(lk, loki_url=url2 + "/loki/api/v1/push"))
    wait_subscribed(ex, ex2)
    recs = send_calls(c, 80, seed=10)
    # the refusing receiver has answered its first batch before the rest comes
    wait_file(lambda rows: len(rows) >= 1, env.path("loki400-req.jsonl"), 10, "a first push to the 400 receiver")
    recs += send_calls(c, 80, seed=11)
    n = len(recs)
    by_id = {r["request_id"]: r for r in recs}
    check_eq(len(by_id), n, "distinct request ids sent")

    out = wait_file(lambda rows: len(rows) >= n, env.path("loki.jsonl"), 15, "%d entries at Loki" % n)
    time.sleep(0.3)  # anything sent twice would show now
    out = loki_receiver.read_jsonl(env.path("loki.jsonl"))
    ids = [x["metadata"].get("request_id") for x in out]
    check_eq(len(ids), n, "entries accepted by Loki")
    check_eq(sorted(ids), sorted(by_id), "request ids at Loki (each call exactly once)")
    for x in out:
        r = by_id[x["metadata"]["request_id"]]
        lab = x["labels"]
        check(set(lab) <= {"service", "env", "level", "provider"}, "stream labels %r", lab)
        check_eq(lab, {"service": "tokmon", "env": "it", "level": "error" if r["status"] == "error" else "info",
                       "provider": r["provider"]}, "stream labels of %s" % r["request_id"])
        md = x["metadata"]
        check(set(md) <= {"kind", "user", "account", "project", "model", "operation", "request_id"},
              "structured metadata keys %r", sorted(md))
        check_eq((md.get("kind"), md.get("user"), md.get("model")), ("call", r["user"], r["model"]),
                 "structured metadata of %s" % r["request_id"])
        line = json.loads(x["line"])
        check_eq((line["request_id"], line["cost_nusd"], line["input_tokens"], line["output_tokens"],
                  line.get("latency_us")), (r["request_id"], r["cost_nusd"], r["input_tokens"],
                                            r["output_tokens"], r.get("latency_us")),
                 "the line of %s" % r["request_id"])
        check_eq(Decimal(line["cost_usd"]), usd(r["cost_nusd"]), "cost_usd in the line")
    reqs = loki_receiver.read_jsonl(env.path("loki-req.jsonl"))
    check_eq([q["status"] for q in reqs[:2]], [500, 429], "the first two answers")
    check(reqs[0]["bytes"] == reqs[1]["bytes"] == reqs[2]["bytes"] and reqs[2]["entries"] > 0,
          "the retries did not send the refused batch again: %r", [(q["bytes"], q["entries"]) for q in reqs[:3]])
    check(all(q["status"] == 204 for q in reqs[2:]), "statuses after the failures: %r",
          [(q["status"], q["reason"]) for q in reqs if q["status"] != 204][:5])
    auth = "Basic " + base64.b64encode(b"it-loki:s3cret-loki").decode()
    for q in reqs:
        h = q["headers"]
        check_eq((h.get("Authorization"), h.get("X-Scope-OrgID"), h.get("Content-Encoding")),
                 (auth, "it-tenant", "gzip"), "headers of push %d" % q["request"])
        check(h.get("Content-Type", "").startswith("application/json"), "Content-Type %r", h.get("Content-Type"))
    ex.wait_metric(lambda s: sample_sum(s, "tokmon_loki_entries_sent_total", daemon="tokmon-exporter") == n, 5,
                   "tokmon_loki_entries_sent_total == %d" % n)
    s = ex.samples()
    mine = lambda name, **kw: sample_sum(s, "tokmon_" + name, daemon="tokmon-exporter", **kw)  # noqa: E731
    check_eq((mine("loki_retries_total"), mine("loki_push_errors_total", reason="http_5xx"),
              mine("loki_push_errors_total", reason="http_429"), mine("loki_dropped_total")), (2.0, 1.0, 1.0, 0.0),
             "retries, 5xx, 429, dropped")
    check_eq(mine("loki_entries_total", kind="call"), float(n), "tokmon_loki_entries_total{kind=\"call\"}")
    check_text_page(ex)  # with the tokmon_loki_* families: still promtool clean
    check_om_page(ex)

    # the receiver that refused the first batch: dropped, never sent again
    ex2.wait_metric(lambda s: sample_sum(s, "tokmon_loki_entries_sent_total", daemon="tokmon-exporter") +
                    sample_sum(s, "tokmon_loki_dropped_total", daemon="tokmon-exporter") >= n, 10,
                    "every entry sent or dropped by exporter-400")
    time.sleep(0.3)
    s = ex2.samples()
    mine = lambda name, **kw: sample_sum(s, "tokmon_" + name, daemon="tokmon-exporter", **kw)  # noqa: E731
    rejected, sent = mine("loki_dropped_total", reason="rejected"), mine("loki_entries_sent_total")
    check(rejected > 0 and rejected + sent == n and mine("loki_dropped_total") == rejected,
          "exporter-400: rejected %r + sent %r != %d (dropped %r)", rejected, sent, n, mine("loki_dropped_total"))
    check_eq((mine("loki_retries_total"), mine("loki_push_errors_total", reason="http_4xx"),
              mine("loki_push_errors_total")), (0.0, 1.0, 1.0), "exporter-400: retries, 4xx, all errors")
    reqs = loki_receiver.read_jsonl(env.path("loki400-req.jsonl"))
    check_eq(reqs[0]["status"], 400, "the first answer of the refusing receiver")
    check(all(q["status"] == 204 for q in reqs[1:]), "later answers: %r", [q["status"] for q in reqs])
    out2 = loki_receiver.read_jsonl(env.path("loki400.jsonl"))
    ids2 = [x["metadata"]["request_id"] for x in out2]
    check_eq(len(ids2), sent, "entries accepted by the refusing receiver")
    check(len(set(ids2)) == len(ids2) and set(ids2) <= set(by_id), "entries accepted twice or never sent")
    # the refused batch came first: what was accepted is the rest, in order
    check_eq(sorted(ids2), sorted(r["request_id"] for r in recs[int(rejected):]),
             "the entries after the refused batch")
    stop_clean(ex, ex2)


# ---- 5. cardinality and conflicts --------------------------------------------------------

def label_sets(fams, fam):
    """The distinct label sets (le left out) of a family's samples."""
    return {tuple(sorted((k, v) for k, v in ls if k != "le")) for _, ls, _ in fams[fam]["samples"]}


@case(timeout=60)
def exp_cardinality(env):
    """max_series = 20 with 60 models: at most 20 series per family plus
    the all-"__other__" one holding the rest (sums exact), folds counted;
    user_labels with top_k = 3: the three top users and "__other__"; a
    StatsD name first a counter then a gauge: the counter stays, the
    conflict is counted; StatsD names whose samples another family renders
    (x as a counter and x_total as a gauge, a timer x and a gauge x_count):
    one family only; the page stays valid."""
    c, a = pipeline(env, aggregator={"statsd_interval": "250ms", "close_delay": "100ms"})
    ex = Exporter(env, a.cfg_path, exporter={"max_series": "20", "user_labels": "on", "top_k": "3"})
    wait_subscribed(ex)
    # 60 models, 8 users whose costs differ
    events = []
    for i in range(240):
        nusd = 1000003 * (i % 8 + 1) + i  # user u<i%8>: distinct totals
        events.append({"provider": "openai", "model": "it-model-%02d" % (i % 60), "user": "u%d" % (i % 8),
                       "input_tokens": 100 + i, "output_tokens": 10 + i % 7, "latency_ms": 50 + i,
                       "cost_usd": "%d.%09d" % (nusd // 10 ** 9, nusd % 10 ** 9), "request_id": "card-%03d" % i})
    tap = c.tap(["ev."], len(events), timeout=20)
    for i in range(0, len(events), 4):
        c.send_udp("\n".join(wire(x) for x in events[i:i + 4]))
    recs = tap.wait("calls")
    e = expect(recs)
    check_eq(len({r["model"] for r in recs}), 60, "distinct models on the bus")
    check(all(r["cost_source"] == "reported" for r in recs), "costs not as reported: %r",
          {r["cost_source"] for r in recs})
    ex.wait_metric(lambda s: sample_sum(s, "llm_requests_total") == e["requests"] and
                   sample_sum(s, "tokmon_exporter_series_folded_total", family="llm_requests") > 0, 15,
                   "the calls and tokmon_exporter_series_folded_total{family=\"llm_requests\"} > 0")
    text, fams = check_text_page(ex)
    check_om_page(ex)
    other4 = (("model", "__other__"), ("operation", "__other__"), ("provider", "__other__"),
              ("status", "__other__"))
    for fam in ("llm_requests_total", "llm_tokens_total", "llm_cost_usd_total", "llm_request_duration_seconds"):
        sets = label_sets(fams, fam)
        others = [ls for ls in sets if any(v == "__other__" for _, v in ls)]
        check(len(others) == 1 and all(v == "__other__" for _, v in others[0]),
              "%s: the folded series %r", fam, others)
        check(len(sets) - 1 <= 20, "%s: %d series besides __other__", fam, len(sets) - 1)
    check(other4 in label_sets(fams, "llm_requests_total"), "no llm_requests_total with every label __other__")
    # every family the cap applies to (not the derived budget, quota and top-K gauges)
    derived = ("llm_budget_", "llm_quota_", "llm_user", "llm_account")
    capped = 0
    for fam in fams:
        if fam.startswith(derived):
            continue
        sets = label_sets(fams, fam)
        others = [ls for ls in sets if ls and all(v == "__other__" for _, v in ls)]
        check(len(sets) - len(others) <= 20 and len(others) <= 1, "%s: %d series (%d folded ones)", fam,
              len(sets), len(others))
        capped += bool(others)
    check(capped >= 5, "only %d families folded series", capped)
    check_values(fams, dict(e, by_pmo={}), types=False)  # the sums stay exact
    s = flat(fams)
    folded = exact(s, "llm_requests_total", model="__other__")
    check(folded > 0, "no request folded")
    check(exact(s, "tokmon_exporter_folded_total", daemon="tokmon-exporter") >= folded,
          "tokmon_exporter_folded_total below the requests folded")

    # top users: 3 and __other__, today's costs and tokens exactly
    per_user = {}
    for r in recs:
        u = per_user.setdefault(r["user"], [0, 0])
        u[0] += r["cost_nusd"]
        u[1] += r["input_tokens"] + r["output_tokens"]
    ranked = sorted(per_user.items(), key=lambda kv: -kv[1][0])
    top, rest = ranked[:3], ranked[3:]
    got = {dict(ls)["user"]: Decimal(v) for n, ls, v in s if n == "llm_user_cost_usd"}
    want = {u: usd(x[0]) for u, x in top}
    want["__other__"] = usd(sum(x[0] for _, x in rest))
    check_eq(got, want, "llm_user_cost_usd")
    got = {dict(ls)["user"]: Decimal(v) for n, ls, v in s if n == "llm_user_tokens"}
    want = {u: Decimal(x[1]) for u, x in top}
    want["__other__"] = Decimal(sum(x[1] for _, x in rest))
    check_eq(got, want, "llm_user_tokens")
    check_eq(exact(s, "llm_users_folded"), Decimal(len(per_user) - 3), "llm_users_folded")

    # a StatsD name as a counter, then as a gauge: kept a counter, the conflict counted
    c.send_udp("it.conflict:1|c")
    ex.wait_metric(lambda s: sample_sum(s, "it_conflict_total") == 1.0, 10, "it_conflict_total 1")
    before = rw_counter(ex, "exporter_conflicts_total")
    c.send_udp("it.conflict:1|g")
    ex.wait_metric(lambda s: sample_sum(s, "tokmon_exporter_conflicts_total", daemon="tokmon-exporter") > before,
                   10, "tokmon_exporter_conflicts_total counting the gauge")
    # names whose samples another family would render: one family keeps
    # the sample name (a page with two is refused whole by Prometheus)
    c.send_udp("it.clash:1|c\nit.clash_total:5|g\nit.tmr:5|ms\nit.tmr_count:3|g")
    ex.wait_metric(lambda s: ("it_tmr_sum", ()) in s and ("it_clash_total", ()) in s, 10,
                   "it_tmr and it_clash_total on the page")
    text, fams = check_text_page(ex)
    check_eq(fams.get("it_conflict_total", {}).get("type"), "counter", "it_conflict_total's type")
    check("it_conflict" not in fams, "it_conflict shown as a gauge too")
    check_eq(exact(flat(fams), "it_conflict_total"), Decimal(1), "it_conflict_total")
    check_eq(fams.get("it_tmr", {}).get("type"), "summary", "it_tmr's type")
    check("it_tmr_count" not in fams, "the gauge it_tmr_count beside the summary it_tmr")
    check_eq(exact(flat(fams), "it_tmr_count"), Decimal(1), "it_tmr_count")
    check_eq(len([f for f in fams.values() if any(n == "it_clash_total" for n, _, _ in f["samples"])]), 1,
             "families rendering it_clash_total")
    check_om_page(ex)
    stop_clean(ex)
