"""tokmon-alerter end to end: every built-in rule driven by crafted calls
through the real collector (and aggregator, for budgets, quotas and a stage
to lose), each transition read back on the bus (`alert`, with tokmon-tap)
and in the notifications; the receivers' payloads (Alertmanager's webhook
JSON, Slack, Telegram, e-mail over SMTP) checked by local receivers, one of
them failing five times first; a real Alertmanager 0.25 that receives,
groups and resolves; restarts (SIGTERM and kill -9) that fire nothing twice;
silences; the daily digest. One case also stores the transitions with
tokmon-pgwriter (alert_history) and reads tokmon_alerts_firing from
tokmon-exporter.

Windows and `for` durations are short here (error_window 2m so that a
minute boundary never empties it, error_for 1s, burn_for 0, latency_for 0,
no_events and stage_silent 3s, the expensive call held 1s), and budgets and
quotas tiny, so that a few calls cross 80 % and then 100 %."""

import datetime
import json
import time

import notify_receivers as nr
from harness import (Aggregator, Alerter, CaseFailure, Exporter, Postgres, Writer, bin_path, case, check,
                     check_eq, run, sample_sum)

S = 1000000000


# ---- helpers ---------------------------------------------------------------------

def emit(c, **flags):
    """One call through tokmon-emit (flags as --name value, _ for -)."""
    args = [bin_path("tokmon-emit"), "-c", c.client_cfg]
    for k, v in flags.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    rc, out, err = run(args, timeout=20)
    check(rc == 0, "tokmon-emit %s: status %d: %s", " ".join(args[3:]), rc, err.strip())


def call(model="gpt-4o", user="u", status="ok", tokens=(100, 50), latency_ms=300, cost="0.0001",
         provider="openai", **extra):
    e = {"provider": provider, "model": model, "user": user, "status": status,
         "input_tokens": tokens[0], "output_tokens": tokens[1], "latency_ms": latency_ms}
    e.update(extra)
    # cost_usd as a JSON number written exactly
    return json.dumps(e)[:-1] + ', "cost_usd": %s}' % cost


def send(c, lines):
    """JSON calls over TCP (newline-delimited; nothing lost), in blocks."""
    for i in range(0, len(lines), 200):
        c.send_tcp("\n".join(lines[i:i + 200]) + "\n")


class Alerts:
    """The transitions published on `alert`, read by a tap running for the
    whole case."""

    def __init__(self, c, n=100000, timeout=170):
        self.tap = c.tap(["alert"], n, timeout=timeout, name="tap-alert")

    def all(self, alertname=None, state=None, **labels):
        out = []
        for r in self.tap.records():
            if alertname and r["alertname"] != alertname:
                continue
            if state and r["state"] != state:
                continue
            if any(r["labels"].get(k) != v for k, v in labels.items()):
                continue
            out.append(r)
        return out

    def wait(self, alertname, state, timeout=15.0, **labels):
        """The first transition of alertname to state (with those labels)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.all(alertname, state, **labels)
            if got:
                return got[0]
            if time.monotonic() > deadline:
                raise CaseFailure("no %s %s %s on the bus in %.0f s; published: %s" % (
                    alertname, state, labels or "", timeout,
                    [(r["alertname"], r["state"]) for r in self.tap.records()]))
            time.sleep(0.05)


def notified(rx, alertname=None, status=None, path=None):
    """(request, alert) for every alert in the webhook notifications rx got
    (answered 200), optionally of one alertname and alert status."""
    out = []
    for r in rx.records():
        if r.get("status") != 200 or (path and r["path"] != path):
            continue
        body = r.get("json")
        if not isinstance(body, dict) or "alerts" not in body:
            continue
        for a in body["alerts"]:
            if alertname and a["labels"].get("alertname") != alertname:
                continue
            if status and a["status"] != status:
                continue
            out.append((r, a))
    return out


def wait_notified(rx, alertname, status, timeout=15.0, path=None):
    deadline = time.monotonic() + timeout
    while True:
        got = notified(rx, alertname, status, path)
        if got:
            return got
        if time.monotonic() > deadline:
            raise CaseFailure("no %s notification of %s in %.0f s; %s got %s" % (
                status, alertname, timeout, rx.name,
                [(a["labels"].get("alertname"), a["status"]) for _, a in notified(rx)]))
        time.sleep(0.05)


def labels_eq(rec, want, what):
    check_eq(rec["labels"], want, "labels of " + what)


def check_annotations(rec, what, **want):
    ann = rec["annotations"]
    for k, v in want.items():
        check_eq(ann.get(k), v, "annotation %s of %s" % (k, what))
    check(ann.get("summary"), "%s has no summary: %r", what, ann)
    check(ann.get("description"), "%s has no description: %r", what, ann)


def rfc3339_ns(text):
    """2026-11-22T19:36:06.645Z (or .645123456Z, or no fraction) -> unix ns."""
    base, _, frac = text.rstrip("Z").partition(".")
    dt = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * S + (int((frac + "000000000")[:9]) if frac else 0)


# ---- 1. the rules ---------------------------------------------------------------------

BUDGET_SECTIONS = """\
[budget.bu]
scope = user:bu
period = day
limit_usd = 0.10
warn_pct = 80

[quota.user.qu]
daily_tokens = 100
warn_pct = 80
"""


@case(timeout=90)
def alerter_budget_quota(env):
    """LLMBudgetWarning at 85 % of a $0.10 budget, then LLMBudgetExceeded at
    105 %, the warning inhibited in notifications while it fires (repeats
    every 2 s go on for the critical one only); LLMQuotaWarning then
    LLMQuotaExceeded for a user's daily tokens (the warning resolves as the
    state moves on). Every transition is in alert_history (tokmon-pgwriter)
    as on the bus; tokmon-exporter shows tokmon_alerts_firing."""
    c = env.collector(global_={"stats_interval": "500ms"})
    Aggregator(env, c, sections=BUDGET_SECTIONS)
    pg = Postgres(env).start()
    w = Writer(env, c, pg, sections=BUDGET_SECTIONS)
    rx = nr.HttpReceiver(env)
    al = Alerter(env, c, alerter={"repeat_interval": "2s", "stage_silent": "0", "high_cost_call_usd": "0"},
                 sections="[notify.hook]\nurl = %s/hook\n" % rx.url)
    ex = Exporter(env, al.cfg_path)
    bus = Alerts(c)

    emit(c, provider="openai", model="gpt-4o", user="bu", input_tokens=10, output_tokens=5, cost_usd="0.085")
    emit(c, provider="openai", model="gpt-4o", user="qu", input_tokens=85, output_tokens=0, cost_usd="0.0001")
    warn = bus.wait("LLMBudgetWarning", "firing", timeout=20)
    blabels = {"alertname": "LLMBudgetWarning", "severity": "warning", "budget": "bu", "scope": "user",
               "scope_value": "bu", "period": "day"}
    labels_eq(warn, blabels, "LLMBudgetWarning")
    check_annotations(warn, "LLMBudgetWarning", value="0.85", threshold="0.08", limit="0.10", spent="0.085")
    check_eq(warn["annotations"]["summary"], "Budget bu (user bu) is at 85% of $0.10 this day",
             "LLMBudgetWarning summary")
    check(abs(warn["value"] - 0.85) < 1e-9, "LLMBudgetWarning value %r", warn["value"])
    qwarn = bus.wait("LLMQuotaWarning", "firing")
    qlabels = {"alertname": "LLMQuotaWarning", "severity": "warning", "subject": "user", "id": "qu",
               "window": "day", "unit": "tokens"}
    labels_eq(qwarn, qlabels, "LLMQuotaWarning")
    check_annotations(qwarn, "LLMQuotaWarning", used="85 tokens", limit="100 tokens", value="0.85")
    check_eq(qwarn["annotations"]["summary"],
             "Quota of user qu nearly used: 85 tokens of 100 tokens this day (85%)", "LLMQuotaWarning summary")
    wait_notified(rx, "LLMBudgetWarning", "firing")
    wait_notified(rx, "LLMQuotaWarning", "firing")
    check(not bus.all("LLMBudgetExceeded") and not bus.all("LLMQuotaExceeded"), "exceeded before 100 %%")

    emit(c, provider="openai", model="gpt-4o", user="bu", input_tokens=10, output_tokens=5, cost_usd="0.02")
    emit(c, provider="openai", model="gpt-4o", user="qu", input_tokens=85, output_tokens=0, cost_usd="0.0001")
    exc = bus.wait("LLMBudgetExceeded", "firing")
    labels_eq(exc, dict(blabels, alertname="LLMBudgetExceeded", severity="critical"), "LLMBudgetExceeded")
    check_annotations(exc, "LLMBudgetExceeded", value="1.05", threshold="0.10", limit="0.10", spent="0.105")
    qexc = bus.wait("LLMQuotaExceeded", "firing")
    labels_eq(qexc, dict(qlabels, alertname="LLMQuotaExceeded", severity="critical"), "LLMQuotaExceeded")
    check_annotations(qexc, "LLMQuotaExceeded", used="170 tokens", limit="100 tokens", value="1.7")
    bus.wait("LLMQuotaWarning", "resolved")
    first_exc = wait_notified(rx, "LLMBudgetExceeded", "firing")[0][0]
    # the critical one repeats (repeat_interval 2s); the warning, still
    # firing, is no longer notified
    deadline = time.monotonic() + 15
    while len(notified(rx, "LLMBudgetExceeded", "firing")) < 3:
        check(time.monotonic() < deadline, "LLMBudgetExceeded not repeated: %d notifications",
              len(notified(rx, "LLMBudgetExceeded", "firing")))
        time.sleep(0.1)
    late_warn = [r for r, _ in notified(rx, "LLMBudgetWarning", "firing") if r["t"] > first_exc["t"] + 0.5]
    check(not late_warn, "LLMBudgetWarning notified while LLMBudgetExceeded fires: %d times", len(late_warn))
    check(al.stats().get("alerter_inhibited_total") > 0, "no inhibition counted")
    firing = {x["alertname"] for x in al.alerts("firing")}
    check_eq(firing, {"LLMBudgetWarning", "LLMBudgetExceeded", "LLMQuotaExceeded"}, "alerts firing")
    check_eq(len(bus.all("LLMBudgetWarning", "firing")), 1, "LLMBudgetWarning firing transitions")
    check_eq(len(bus.all("LLMBudgetExceeded", "firing")), 1, "LLMBudgetExceeded firing transitions")

    # the writer stores every transition the bus carried
    want = sorted((r["alertname"], r["state"], r["fingerprint"], r["src"]) for r in bus.all())
    w.wait_rows(len(want), table="alert_history")
    rows = pg.psql("select alertname, state, fingerprint, src from alert_history")
    check_eq(sorted(tuple(r) for r in rows), want, "alert_history against the bus")
    check_eq(pg.scalar("select labels->>'scope_value' from alert_history where alertname = 'LLMBudgetExceeded'"),
             "bu", "labels stored as JSON")
    # the exporter shows the alerter's gauge
    s = ex.wait_metric(lambda s: sample_sum(s, "tokmon_alerts_firing", daemon="tokmon-alerter") == 3,
                       what="tokmon_alerts_firing 3")
    check_eq(sample_sum(s, "tokmon_alerts_pending", daemon="tokmon-alerter"), 0, "tokmon_alerts_pending")


CALL_RULES = """\
[notify.hook]
url = %s/hook

[rule.UserErrorsCritical]
aggregate = error_ratio
by = user
window = 2m
op = >
threshold = 0.5
min_requests = 4
severity = critical
summary = user {{ $labels.user }} failed {{ $value }} of calls, over {{ $threshold }}

[rule.UserErrorsWarning]
aggregate = error_ratio
by = user
window = 2m
op = >
threshold = 0.2
min_requests = 4
severity = warning
"""


@case(timeout=90)
def alerter_call_rules(env):
    """The rules over the calls themselves: LLMNoEvents before any call (and
    resolved by the first), then one burst fires LLMExpensiveCall (resolved
    when its 1 s hold ends), LLMErrorRatioHigh (pending for error_for, then
    firing), LLMLatencyP95High, LLMTokenBurnRateHigh, LLMDailyCostHigh,
    LLMCostRateHigh and a [rule.NAME] of the operator's (templated summary);
    a second burst of healthy, fast calls resolves the error ratio, the user
    rule and the latency."""
    c = env.collector(global_={"stats_interval": "500ms"})
    rx = nr.HttpReceiver(env)
    al = Alerter(env, c, alerter={
        "high_cost_call_usd": "2.00", "high_cost_call_hold": "1s",
        "error_window": "2m", "error_for": "1s", "burn_tokens_per_hour": "5000", "burn_for": "0",
        "daily_cost_usd": "1.00", "cost_rate_usd": "0.50", "latency_p95": "2s", "latency_for": "0",
        "no_events": "3s", "stage_silent": "0"}, sections=CALL_RULES % rx.url)
    bus = Alerts(c)
    ne = bus.wait("LLMNoEvents", "firing", timeout=20)
    labels_eq(ne, {"alertname": "LLMNoEvents", "severity": "warning"}, "LLMNoEvents")
    check_annotations(ne, "LLMNoEvents", threshold="3")
    check(ne["annotations"]["description"].startswith("No call arrived since the alerter started"),
          "LLMNoEvents description: %r", ne["annotations"]["description"])
    wait_notified(rx, "LLMNoEvents", "firing")

    t0 = time.time_ns()
    lines = [call("gpt-4o", "ue", "error", cost="0.001") for _ in range(30)]            # errors
    lines += [call("gpt-4o-mini", "ul", latency_ms=5000, cost="0.001") for _ in range(20)]  # slow
    lines += [call("gpt-4.1-mini", "uw", "error", tokens=(10, 5), cost="0.001") for _ in range(6)]
    send(c, lines)
    emit(c, provider="anthropic", model="claude-3-5-sonnet-20241022", user="ux", input_tokens=1000,
         output_tokens=500, cost_usd="2.5", request_id="req-expensive")
    # tokens 50 x 150 + 6 x 15 + 1500 = 9090 in the hour; cost $2.556 today and this hour
    x = bus.wait("LLMExpensiveCall", "firing")
    labels_eq(x, {"alertname": "LLMExpensiveCall", "severity": "warning", "user": "ux",
                  "model": "claude-3-5-sonnet-20241022", "provider": "anthropic", "request_id": "req-expensive"},
              "LLMExpensiveCall")
    check_annotations(x, "LLMExpensiveCall", value="2.50", threshold="2.00")
    check_eq(x["annotations"]["summary"], "A call to anthropic/claude-3-5-sonnet-20241022 cost $2.50, over $2.00",
             "LLMExpensiveCall summary")
    pend = bus.wait("LLMErrorRatioHigh", "pending")
    fire = bus.wait("LLMErrorRatioHigh", "firing")
    mlabels = {"alertname": "LLMErrorRatioHigh", "severity": "warning", "provider": "openai", "model": "gpt-4o"}
    labels_eq(pend, mlabels, "LLMErrorRatioHigh pending")
    labels_eq(fire, mlabels, "LLMErrorRatioHigh")
    check_annotations(fire, "LLMErrorRatioHigh", value="1", threshold="0.05", requests="30", errors="30")
    check(fire["ts"] - pend["ts"] >= 1 * S, "LLMErrorRatioHigh fired %.3f s after pending (error_for 1s)",
          (fire["ts"] - pend["ts"]) / S)
    check_eq(fire["starts_at"], fire["ts"], "a firing alert starts when it fires")
    check_eq(pend["starts_at"], pend["ts"], "a pending alert starts when its condition began")
    lat = bus.wait("LLMLatencyP95High", "firing")
    labels_eq(lat, {"alertname": "LLMLatencyP95High", "severity": "warning", "provider": "openai",
                    "model": "gpt-4o-mini"}, "LLMLatencyP95High")
    check_annotations(lat, "LLMLatencyP95High", threshold="2")
    check(4.5 <= lat["value"] <= 5.5, "p95 latency %r, expected about 5 s", lat["value"])
    burn = bus.wait("LLMTokenBurnRateHigh", "firing")
    labels_eq(burn, {"alertname": "LLMTokenBurnRateHigh", "severity": "warning"}, "LLMTokenBurnRateHigh")
    check_annotations(burn, "LLMTokenBurnRateHigh", threshold="5000")
    check(5000 < burn["value"] <= 9090, "tokens in the hour: %r", burn["value"])
    daily = bus.wait("LLMDailyCostHigh", "firing")
    labels_eq(daily, {"alertname": "LLMDailyCostHigh", "severity": "warning"}, "LLMDailyCostHigh")
    check_annotations(daily, "LLMDailyCostHigh", threshold="1.00")
    check(daily["value"] > 1.0, "today's cost %r", daily["value"])
    rate = bus.wait("LLMCostRateHigh", "firing")
    labels_eq(rate, {"alertname": "LLMCostRateHigh", "severity": "warning"}, "LLMCostRateHigh")
    check_annotations(rate, "LLMCostRateHigh", threshold="0.50")
    check(rate["value"] > 0.5, "the hour's cost %r", rate["value"])
    for user in ("ue", "uw"):
        ur = bus.wait("UserErrorsCritical", "firing", user=user)
        labels_eq(ur, {"alertname": "UserErrorsCritical", "severity": "critical", "user": user},
                  "UserErrorsCritical")
        check_eq(ur["annotations"].get("summary"), "user %s failed 1 of calls, over 0.5" % user,
                 "templated summary")
        check_eq(ur["annotations"].get("threshold"), "0.5", "UserErrorsCritical threshold")
        uw = bus.wait("UserErrorsWarning", "firing", user=user)
        check_eq(uw["annotations"].get("summary"),
                 "UserErrorsWarning: error_ratio of user %s over the last 2m is 1 (> 0.2)" % user,
                 "UserErrorsWarning summary")
    ner = bus.wait("LLMNoEvents", "resolved")
    check(ner["ts"] >= t0, "LLMNoEvents resolved before the first call")
    xr = bus.wait("LLMExpensiveCall", "resolved")
    check(0.5 * S <= xr["ends_at"] - x["starts_at"] <= 5 * S, "the expensive call held %.3f s (1s from its arrival)",
          (xr["ends_at"] - x["starts_at"]) / S)
    check(not bus.all("LLMErrorRatioHigh", "resolved") and not bus.all("UserErrorsCritical", "resolved"),
          "error ratios resolved before healthy calls came")
    # the warning twin is inhibited while the critical one fires; uw's
    # critical ends (6 errors of 14 calls, too few for LLMErrorRatioHigh) and
    # its warning is told then
    wait_notified(rx, "UserErrorsCritical", "firing")
    time.sleep(1.2)  # another group_interval
    check(not notified(rx, "UserErrorsWarning"), "UserErrorsWarning notified while its critical twin fires")
    send(c, [call("gpt-4.1-mini", "uw", tokens=(10, 5), cost="0.000001") for _ in range(8)])
    bus.wait("UserErrorsCritical", "resolved", user="uw")
    told = wait_notified(rx, "UserErrorsWarning", "firing")
    check_eq(sorted(a["labels"]["user"] for _, a in told), ["uw"], "UserErrorsWarning told once the critical ends")
    # a burst of healthy, fast calls: 30 errors of 730, 20 slow of 820
    send(c, [call("gpt-4o", "ue", cost="0.000001") for _ in range(700)] +
         [call("gpt-4o-mini", "ul", latency_ms=10, cost="0.000001") for _ in range(800)])
    er = bus.wait("LLMErrorRatioHigh", "resolved", timeout=20)
    check_eq(er["fingerprint"], fire["fingerprint"], "the resolved error ratio is the one that fired")
    check(er["ends_at"] > 0, "a resolved alert has ends_at")
    bus.wait("UserErrorsCritical", "resolved", user="ue")
    bus.wait("UserErrorsWarning", "resolved", user="ue")
    bus.wait("LLMLatencyP95High", "resolved")
    # every firing one was notified, with its rule's labels
    for name in ("LLMExpensiveCall", "LLMErrorRatioHigh", "LLMLatencyP95High", "LLMTokenBurnRateHigh",
                 "LLMDailyCostHigh", "LLMCostRateHigh", "UserErrorsCritical"):
        got = wait_notified(rx, name, "firing")
        check_eq(got[0][1]["labels"], bus.all(name, "firing")[0]["labels"], "notified labels of " + name)
    wait_notified(rx, "LLMErrorRatioHigh", "resolved")
    wait_notified(rx, "LLMExpensiveCall", "resolved")
    check(not notified(rx, "LLMErrorRatioHigh", "pending"), "a pending alert was notified")
    time.sleep(1.2)  # another group_interval
    check(not [a for _, a in notified(rx, "UserErrorsWarning") if a["labels"]["user"] == "ue"],
          "ue's UserErrorsWarning, never told firing (inhibited), was told resolved")
    still = {(x["alertname"], x["labels"].get("user")) for x in al.alerts("firing")}
    check_eq(still, {("LLMTokenBurnRateHigh", None), ("LLMDailyCostHigh", None), ("LLMCostRateHigh", None),
                     ("UserErrorsWarning", "uw")}, "alerts still firing")


@case(timeout=90)
def alerter_stages(env):
    """TokmonStageSilent for an aggregator that stopped (its stats stop
    coming), resolved when it is back; TokmonBusGapLost when it comes back to
    a collector's spool that no longer holds its position (GONE: it counts
    bus_messages_lost_total, which its stats report)."""
    c = env.collector(start=False, global_={"stats_interval": "500ms"})
    c.bus.update({"spool_segment_size": "64K", "spool_max_size": "256K"})
    c.write_config()
    with open(c.client_cfg, "w") as f:
        f.write(c.config_text())
    c.start()
    a = Aggregator(env, c)
    rx = nr.HttpReceiver(env)
    al = Alerter(env, c, alerter={"stage_silent": "3s", "high_cost_call_usd": "0"},
                 sections="[notify.hook]\nurl = %s/hook\n" % rx.url)
    bus = Alerts(c)
    # the alerter has seen both stages' stats
    deadline = time.monotonic() + 15
    while al.stats().get("rules_stats_total") < 6:
        check(time.monotonic() < deadline, "the alerter reads no stats")
        time.sleep(0.2)
    time.sleep(1.0)
    check(not bus.all("TokmonStageSilent"), "a stage silent while both run: %s", bus.all("TokmonStageSilent"))
    agg_src = [l for l in a.log().splitlines() if 'msg="started"' in l][0].split(" src=")[1].split()[0]
    a.stop()
    t_stop = time.time_ns()
    silent = bus.wait("TokmonStageSilent", "firing", timeout=15)
    labels_eq(silent, {"alertname": "TokmonStageSilent", "severity": "warning", "daemon": "tokmon-aggregator",
                       "src": agg_src}, "TokmonStageSilent")
    check_annotations(silent, "TokmonStageSilent", threshold="3")
    check(silent["ts"] - t_stop >= 2.5 * S, "silent after %.2f s (stage_silent 3s)", (silent["ts"] - t_stop) / S)
    wait_notified(rx, "TokmonStageSilent", "firing")
    # while it is away, far more than the collector's spool keeps
    rc, out, err = run([bin_path("tokmon-emit"), "-c", c.client_cfg, "--rate", "5000", "--count", "6000",
                        "--seed", "3"], timeout=60)
    check(rc == 0, "tokmon-emit: %s", err)
    time.sleep(1.5)  # retention runs in the collector's loop
    a.start()
    gap = bus.wait("TokmonBusGapLost", "firing", timeout=20)
    labels_eq(gap, {"alertname": "TokmonBusGapLost", "severity": "warning", "daemon": "tokmon-aggregator",
                    "src": agg_src}, "TokmonBusGapLost")
    check(gap["value"] > 0, "messages lost: %r", gap["value"])
    check("bus messages it could not replay" in gap["annotations"]["summary"],
          "TokmonBusGapLost summary: %r", gap["annotations"]["summary"])
    check_eq(gap["annotations"].get("value"), "%d" % gap["value"], "TokmonBusGapLost value annotation")
    check(a.stats().get("bus_messages_lost_total") > 0, "the aggregator counted no loss")
    back = bus.wait("TokmonStageSilent", "resolved", timeout=15)
    check_eq(back["fingerprint"], silent["fingerprint"], "the stage back is the one that was silent")
    wait_notified(rx, "TokmonBusGapLost", "firing")
    wait_notified(rx, "TokmonStageSilent", "resolved")
    check(not bus.all("TokmonStageSilent", "firing", daemon="tokmon-collectd"), "the collector was called silent")


# ---- 2. receivers --------------------------------------------------------------------

@case(timeout=60)
def alerter_receivers(env):
    """One expensive call (held 1 s): the webhook gets Alertmanager's webhook
    JSON (version 4) firing then resolved, Slack {"text"}, Telegram
    /bot<token>/sendMessage with chat_id and text (token from token_file),
    e-mail over SMTP (From, To, Subject, body); a webhook answering 500 five
    times gets the firing notification exactly once after its retries."""
    c = env.collector()
    rx = nr.HttpReceiver(env, token="123456:ABC-token")
    bad = nr.HttpReceiver(env, name="notify-flaky", fail="500x5")
    mail = nr.SmtpReceiver(env)
    tok = env.write("telegram.token", "123456:ABC-token\n")
    sections = """\
[notify.hook]
url = {rx}/hook

[notify.slack]
type = slack
url = {rx}/services/T000/B000/XXXXXXXX

[notify.tg]
type = telegram
url = {rx}
token_file = {tok}
chat_id = -100123

[notify.mail]
type = email
url = {mail}
starttls = off
from = tokmon@example.org
to = ops@example.org, oncall@example.org

[notify.flaky]
url = {bad}/flaky
backoff_max = 200ms
""".format(rx=rx.url, bad=bad.url, mail=mail.url, tok=tok)
    al = Alerter(env, c, alerter={"high_cost_call_usd": "1.00", "high_cost_call_hold": "1s",
                                  "stage_silent": "0"}, sections=sections)
    bus = Alerts(c)
    time.sleep(0.5)
    emit(c, provider="openai", model="gpt-4o", user="rita", input_tokens=10, output_tokens=5, cost_usd="3.25",
         request_id="req-r1")
    fired = bus.wait("LLMExpensiveCall", "firing", timeout=20)
    resolved = bus.wait("LLMExpensiveCall", "resolved")
    summary = fired["annotations"]["summary"]
    title = "[FIRING:1] LLMExpensiveCall (model=gpt-4o provider=openai request_id=req-r1 user=rita)"

    # webhook: Alertmanager's webhook message
    hooks = [r for r in nr.wait_records(rx.out, 1, 15, "webhook") if r["path"] == "/hook"]
    deadline = time.monotonic() + 15
    while len(hooks) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        hooks = [r for r in rx.records() if r["path"] == "/hook"]
    check_eq(len(hooks), 2, "webhook notifications (firing, resolved)")
    h = hooks[0]
    check_eq(h["method"], "POST", "webhook method")
    check(h["headers"].get("content-type", "").startswith("application/json"), "webhook content type %r",
          h["headers"].get("content-type"))
    body = h["json"]
    labels = {"alertname": "LLMExpensiveCall", "severity": "warning", "model": "gpt-4o", "provider": "openai",
              "request_id": "req-r1", "user": "rita"}
    check_eq(body["version"], "4", "webhook version")
    check_eq(body["status"], "firing", "webhook status")
    check_eq(body["receiver"], "hook", "webhook receiver")
    check_eq(body["groupLabels"], {"alertname": "LLMExpensiveCall"}, "groupLabels")
    check_eq(body["commonLabels"], labels, "commonLabels")
    check_eq(body["commonAnnotations"], fired["annotations"], "commonAnnotations")
    check_eq(body["groupKey"], '{}:{alertname="LLMExpensiveCall"}', "groupKey")
    check_eq(body["truncatedAlerts"], 0, "truncatedAlerts")
    check("externalURL" in body, "no externalURL")
    check_eq(len(body["alerts"]), 1, "alerts in the webhook message")
    wa = body["alerts"][0]
    check_eq(wa["status"], "firing", "alert status")
    check_eq(wa["labels"], labels, "alert labels")
    check_eq(wa["annotations"], fired["annotations"], "alert annotations")
    check_eq(wa["fingerprint"], fired["fingerprint"], "alert fingerprint")
    check_eq(wa["endsAt"], "0001-01-01T00:00:00Z", "a firing alert's endsAt")
    check(abs(rfc3339_ns(wa["startsAt"]) - fired["starts_at"]) < 2 * 10**6, "startsAt %s, fired at %d",
          wa["startsAt"], fired["starts_at"])
    r = hooks[1]["json"]
    check_eq((r["status"], r["alerts"][0]["status"]), ("resolved", "resolved"), "the second webhook message")
    check(abs(rfc3339_ns(r["alerts"][0]["endsAt"]) - resolved["ends_at"]) < 2 * 10**6, "endsAt %s, resolved at %d",
          r["alerts"][0]["endsAt"], resolved["ends_at"])
    check(rfc3339_ns(r["alerts"][0]["endsAt"]) <= time.time_ns(), "endsAt in the future")

    # Slack
    slack = [x for x in rx.records() if x["kind"] == "slack"]
    check(len(slack) >= 1, "no Slack message")
    check_eq(slack[0]["path"], "/services/T000/B000/XXXXXXXX", "Slack path")
    check_eq(sorted(slack[0]["json"]), ["text"], "Slack body keys")
    check_eq(slack[0]["json"]["text"], title + "\n- " + summary, "Slack text")
    # Telegram
    tg = [x for x in rx.records() if x["kind"] == "telegram"]
    check(len(tg) >= 1, "no Telegram message")
    check_eq((tg[0]["path"], tg[0]["status"]), ("/bot123456:ABC-token/sendMessage", 200), "Telegram path")
    check_eq(tg[0]["json"]["chat_id"], "-100123", "Telegram chat_id")
    check_eq(tg[0]["json"]["text"], title + "\n- " + summary, "Telegram text")
    check_eq(tg[0]["json"].get("disable_web_page_preview"), True, "Telegram disable_web_page_preview")
    # e-mail
    m = mail.wait(1, 15)[0]
    check_eq(m["mail_from"], "tokmon@example.org", "MAIL FROM")
    check_eq(sorted(m["rcpt_to"]), ["oncall@example.org", "ops@example.org"], "RCPT TO")
    check_eq(m["subject"], title, "Subject")
    check("tokmon@example.org" in m["headers"].get("From", ""), "From: %r", m["headers"].get("From"))
    check("ops@example.org" in m["headers"].get("To", "") and "oncall@example.org" in m["headers"].get("To", ""),
          "To: %r", m["headers"].get("To"))
    check(m["body"] and summary in m["body"], "the mail body lacks the summary: %r", m["body"])
    check(not m["bare_lf"], "a bare LF in the mail")
    resolved_mail = mail.wait(2, 15)[1]
    check(resolved_mail["subject"].startswith("[RESOLVED]"), "second mail: %r", resolved_mail["subject"])

    # the flaky webhook: five 500s, then the same notification once
    reqs = nr.wait_records(bad.out, 7, 30, "flaky webhook")
    check_eq([x["status"] for x in reqs[:6]], [500] * 5 + [200], "the flaky webhook's answers")
    check(len({x["body"] for x in reqs[:6]}) == 1, "the retries did not send the same notification")
    ok = [x for x in reqs if x["status"] == 200]
    firing_ok = [x for x in ok if x["json"]["status"] == "firing"]
    check_eq(len(firing_ok), 1, "firing notifications accepted by the flaky webhook")
    check_eq(firing_ok[0]["json"]["alerts"][0]["fingerprint"], fired["fingerprint"], "the flaky webhook's alert")
    check_eq([x["json"]["status"] for x in ok], ["firing", "resolved"], "what the flaky webhook accepted")
    st = al.stats()
    check_eq(st.get("notify_deliveries_total", receiver="flaky", outcome="ok"), 2, "flaky deliveries ok")
    check_eq(st.get("notify_retries_total", receiver="flaky"), 5, "flaky retries")
    check_eq(st.get("notify_deliveries_total", receiver="flaky", outcome="failed"), 0, "flaky deliveries failed")


# ---- 3. a real Alertmanager ---------------------------------------------------------------

AM_CONFIG = """\
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: %s/from-am
        send_resolved: true
"""


@case(timeout=90)
def alerter_alertmanager(env):
    """A real Alertmanager 0.25: two expensive calls (held 6 s) arrive as two
    firing alerts (GET /api/v2/alerts), grouped in one group by alertname,
    re-sent every resend_interval (Alertmanager's endsAt moves forward), and
    resolved with endsAt <= now: they leave the active list and
    Alertmanager's own webhook tells them resolved."""
    c = env.collector()
    out = nr.HttpReceiver(env, name="am-webhook")
    rec = nr.HttpReceiver(env, name="am-posts")  # what the alerter posts, recorded
    am = nr.Alertmanager(env, config=AM_CONFIG % out.url)
    al = Alerter(env, c, alerter={"high_cost_call_usd": "1.00", "high_cost_call_hold": "6s", "stage_silent": "0",
                                  "resend_interval": "1s"},
                 sections="[notify.am]\ntype = alertmanager\nurl = %s\n\n[notify.rec]\ntype = alertmanager\nurl = %s\n"
                 % (am.url, rec.url))
    bus = Alerts(c)
    time.sleep(0.5)
    for rid, user in (("req-a1", "alice"), ("req-a2", "bob")):
        emit(c, provider="openai", model="gpt-4o", user=user, input_tokens=10, output_tokens=5, cost_usd="1.50",
             request_id=rid)
    flt = ['alertname="LLMExpensiveCall"']
    got = am.wait_alerts(lambda a: len(a) == 2, timeout=20, what="two alerts in Alertmanager", filter=flt)
    by_rid = {x["labels"]["request_id"]: x for x in got}
    check_eq(sorted(by_rid), ["req-a1", "req-a2"], "request ids in Alertmanager")
    fired = {r["labels"]["request_id"]: r for r in bus.all("LLMExpensiveCall", "firing")}
    for rid, x in by_rid.items():
        check_eq(x["labels"], {"alertname": "LLMExpensiveCall", "severity": "warning", "model": "gpt-4o",
                               "provider": "openai", "request_id": rid,
                               "user": "alice" if rid == "req-a1" else "bob"}, "labels in Alertmanager")
        check_eq(x["annotations"], fired[rid]["annotations"], "annotations in Alertmanager")
        check_eq(x["status"]["state"], "active", "state in Alertmanager")
        check(abs(rfc3339_ns(x["startsAt"]) - fired[rid]["starts_at"]) < 2 * 10**6, "startsAt %s", x["startsAt"])
    groups = [g for g in am.groups() if g["labels"].get("alertname") == "LLMExpensiveCall"]
    check_eq(len(groups), 1, "Alertmanager groups of LLMExpensiveCall")
    check_eq(groups[0]["labels"], {"alertname": "LLMExpensiveCall"}, "the group's labels")
    check_eq(sorted(a["labels"]["request_id"] for a in groups[0]["alerts"]), ["req-a1", "req-a2"],
             "alerts in the group")
    # re-sent every second: Alertmanager's endsAt (now + resolve_timeout) moves on
    ends0 = {rid: rfc3339_ns(x["endsAt"]) for rid, x in by_rid.items()}
    time.sleep(1.6)
    later = {x["labels"]["request_id"]: x for x in am.alerts(filter=flt)}
    for rid in ends0:
        check(rfc3339_ns(later[rid]["endsAt"]) > ends0[rid], "endsAt of %s not pushed forward: %s then %s", rid,
              ends0[rid], later[rid]["endsAt"])
    # its webhook got one group of two firing alerts
    deadline = time.monotonic() + 15
    while True:
        fw = [r["json"] for r in out.records() if r.get("json") and r["json"].get("status") == "firing"]
        if fw and len(fw[0]["alerts"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(fw and len(fw[0]["alerts"]) == 2, "Alertmanager's webhook: %s", [len(x["alerts"]) for x in fw])
    check_eq(fw[0]["groupLabels"], {"alertname": "LLMExpensiveCall"}, "Alertmanager's group labels")
    # resolved when the hold ends
    for rid in ("req-a1", "req-a2"):
        bus.wait("LLMExpensiveCall", "resolved", timeout=15, request_id=rid)
    am.wait_alerts(lambda a: not a, timeout=15, what="resolved alerts leave the active list", filter=flt)
    deadline = time.monotonic() + 15
    while True:
        rw = [r["json"] for r in out.records() if r.get("json") and r["json"].get("status") == "resolved"]
        if rw or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(rw, "Alertmanager never told them resolved")
    check_eq(sorted(a["labels"]["request_id"] for a in rw[-1]["alerts"]), ["req-a1", "req-a2"],
             "resolved alerts in Alertmanager's notification")
    for a in rw[-1]["alerts"]:
        check_eq(a["status"], "resolved", "status in Alertmanager's notification")
    # what the alerter posted: firing without endsAt, re-sent, then resolved with endsAt <= now
    posts = [(r["t"], x) for r in rec.records() if isinstance(r.get("json"), list) for x in r["json"]]
    firing_posts = [(t, x) for t, x in posts if "endsAt" not in x]
    res_posts = [(t, x) for t, x in posts if "endsAt" in x]
    check(len([1 for _, x in firing_posts if x["labels"]["request_id"] == "req-a1"]) >= 3,
          "req-a1 sent %d times while firing for 4 s or more (resend_interval 1s)",
          len([1 for _, x in firing_posts if x["labels"]["request_id"] == "req-a1"]))
    check_eq(sorted(x["labels"]["request_id"] for _, x in res_posts), ["req-a1", "req-a2"], "resolved posts")
    for t, x in res_posts:
        check(rfc3339_ns(x["endsAt"]) <= int(t * S) + 10**6, "resolved with endsAt %s after it was sent (%f)",
              x["endsAt"], t)
    check(al.stats().get("notify_deliveries_total", receiver="am", outcome="failed") == 0,
          "deliveries to Alertmanager failed")


# ---- 4. restart ------------------------------------------------------------------------

@case(timeout=90)
def alerter_restart(env):
    """A budget exceeded this period fires once: after SIGTERM and a start,
    and after kill -9 (the state saved) and a start, no second firing
    transition and no second notification; it is still firing. So does
    LLMNoEvents, firing since the only call: a restart is no call."""
    c = env.collector(global_={"stats_interval": "500ms"})
    Aggregator(env, c, sections=BUDGET_SECTIONS)
    rx = nr.HttpReceiver(env)
    al = Alerter(env, c, alerter={"stage_silent": "0", "high_cost_call_usd": "0", "no_events": "3s"},
                 sections="[notify.hook]\nurl = %s/hook\n" % rx.url)
    bus = Alerts(c)
    emit(c, provider="openai", model="gpt-4o", user="bu", input_tokens=10, output_tokens=5, cost_usd="0.25")
    exc = bus.wait("LLMBudgetExceeded", "firing", timeout=20)
    bus.wait("LLMBudgetWarning", "firing")
    wait_notified(rx, "LLMBudgetExceeded", "firing")
    bus.wait("LLMNoEvents", "firing")
    wait_notified(rx, "LLMNoEvents", "firing")
    time.sleep(1.5)
    check(not notified(rx, "LLMBudgetWarning"), "LLMBudgetWarning notified though its critical twin fired with it")
    n_notes = len(rx.records())

    def still_once(how):
        al.wait_alerts(lambda x: {y["alertname"] for y in x if y["state"] == "firing"} ==
                       {"LLMBudgetExceeded", "LLMBudgetWarning", "LLMNoEvents"}, what="firing after " + how)
        # a few evaluation rounds, budget statuses and group timers later
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            check(al.proc.alive(), "the alerter exited after %s", how)
            time.sleep(0.2)
        for name in ("LLMBudgetExceeded", "LLMNoEvents"):
            check_eq(len(bus.all(name, "firing")), 1, "%s firing transitions after %s" % (name, how))
        check_eq([(r["alertname"], r["state"]) for r in bus.all(state="resolved")], [],
                 "resolved transitions after " + how)
        check_eq(len(rx.records()), n_notes, "notifications after " + how)
        now = [x for x in al.alerts("firing") if x["alertname"] == "LLMBudgetExceeded"]
        check_eq(now[0]["starts_at"], exc["starts_at"], "the alert's start after " + how)

    check_eq(al.stop(), 0, "the alerter's exit status on SIGTERM")
    al.start()
    still_once("SIGTERM and a start")
    # kill -9 once its state is on disk
    time.sleep(1.0)
    al.kill9()
    al.start()
    still_once("kill -9 and a start")
    check("state loaded" in al.procs[-1].stderr(), "the state was not loaded")
    # one notification in all
    check_eq(len(notified(rx, "LLMBudgetExceeded", "firing")), 1, "LLMBudgetExceeded notifications")


# ---- 5. silences -----------------------------------------------------------------------

@case(timeout=60)
def alerter_silences(env):
    """tokmonctl silence add for a firing alert's labels: a new alert it
    matches is published on `alert` but not notified (another of the same
    group is); expire: it is notified."""
    c = env.collector()
    rx = nr.HttpReceiver(env)
    al = Alerter(env, c, alerter={"high_cost_call_usd": "1.00", "high_cost_call_hold": "1h", "stage_silent": "0"},
                 sections="[notify.hook]\nurl = %s/hook\n" % rx.url)
    bus = Alerts(c)
    time.sleep(0.5)

    def expensive(rid, user):
        emit(c, provider="openai", model="gpt-4o", user=user, input_tokens=10, output_tokens=5, cost_usd="1.50",
             request_id=rid)
        return bus.wait("LLMExpensiveCall", "firing", timeout=20, request_id=rid)

    def rids():
        return {a["labels"]["request_id"] for _, a in notified(rx, "LLMExpensiveCall", "firing")}

    expensive("req-s1", "sam")
    wait_notified(rx, "LLMExpensiveCall", "firing")
    rc, out, err = al.ctl("silence", "add", "alertname=LLMExpensiveCall", "user=sam", "--duration", "1h",
                          "--comment", "sam's batch job", "--by", "tester")
    check(rc == 0, "silence add: %d %s", rc, err)
    sid = out.strip()
    check(len(sid) == 16, "silence id %r", sid)
    rc, out, err = al.ctl("silence", "list", "--json")
    check(rc == 0, "silence list: %d %s", rc, err)
    sil = json.loads(out)["silences"]
    check_eq([(s["id"], s["matchers"], s["comment"], s["by"]) for s in sil],
             [(sid, "alertname=LLMExpensiveCall user=sam", "sam's batch job", "tester")], "the silences")
    n0 = len(rx.records())
    expensive("req-s2", "sam")   # silenced
    expensive("req-s3", "tom")   # not silenced
    deadline = time.monotonic() + 10
    while "req-s3" not in rids():
        check(time.monotonic() < deadline, "req-s3 (not silenced) not notified: %s", rids())
        time.sleep(0.1)
    time.sleep(1.5)  # another group_interval
    check("req-s2" not in rids(), "the silenced alert was notified")
    later = [r for r in rx.records()[n0:] if r.get("json")]
    for r in later:
        check("req-s1" not in r["body"], "an alert matching the silence was notified: %s", r["body"][:300])
    check(al.stats().get("alerter_silenced_total") > 0, "nothing counted silenced")
    check_eq({a["labels"]["request_id"] for a in al.alerts("firing")}, {"req-s1", "req-s2", "req-s3"},
             "tokmonctl alerts lists silenced alerts too")
    rc, out, err = al.ctl("silence", "expire", sid)
    check(rc == 0, "silence expire: %d %s", rc, err)
    deadline = time.monotonic() + 10
    while "req-s2" not in rids():
        check(time.monotonic() < deadline, "req-s2 not notified after its silence expired: %s", rids())
        time.sleep(0.1)
    rc, out, err = al.ctl("silence", "list", "--json")
    check_eq(json.loads(out)["silences"], [], "silences after expire")
    check_eq(len(bus.all("LLMExpensiveCall", "firing")), 3, "firing transitions")


# ---- 6. the daily digest ---------------------------------------------------------------

@case(timeout=60)
def alerter_digest(env):
    """digest_hour = the current hour (timezone UTC): one digest to the
    webhook ({"subject", "text"}: yesterday's totals, the alerts firing now),
    not sent again after a restart the same day. The state before holds an
    alert firing (an expensive call held for an hour) and no digest sent."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if now.hour == 23 and now.minute == 59 and now.second >= 30:
        time.sleep(61 - now.second)  # not across midnight
        now = datetime.datetime.now(datetime.timezone.utc)
    c = env.collector()
    rx = nr.HttpReceiver(env)
    al = Alerter(env, c, global_={"timezone": "UTC"},
                 alerter={"high_cost_call_usd": "1.00", "high_cost_call_hold": "1h", "stage_silent": "0"},
                 sections="[notify.hook]\nurl = %s/hook\n" % rx.url)
    bus = Alerts(c)
    time.sleep(0.5)
    emit(c, provider="openai", model="gpt-4o", user="dora", input_tokens=10, output_tokens=5, cost_usd="1.50",
         request_id="req-d1")
    bus.wait("LLMExpensiveCall", "firing", timeout=20)
    wait_notified(rx, "LLMExpensiveCall", "firing")
    check_eq(al.stop(), 0, "the alerter's exit status")
    n0 = len(rx.records())
    al.keys["digest_hour"] = str(now.hour)
    al.write_config()
    al.start()
    nr.wait_records(rx.out, n0 + 1, 15, "the digest")
    time.sleep(1.0)
    digests = [r for r in rx.records()[n0:] if isinstance(r.get("json"), dict) and "subject" in r["json"]]
    check_eq(len(digests), 1, "digests sent")
    check_eq(len(rx.records()), n0 + 1, "messages after the restart (the digest only)")
    d = digests[0]["json"]
    check_eq(sorted(d), ["subject", "text"], "the digest's keys")
    yday = (now.date() - datetime.timedelta(days=1)).isoformat()
    check_eq(d["subject"], "tokmon daily digest %s: $0.00, 0 tokens" % yday, "the digest's subject")
    text = d["text"]
    for want in ("LLM usage on %s\n" % yday, "  cost      $0.00\n", "  tokens    0\n", "  requests  0\n",
                 "  errors    0\n", "Top users by cost:\n  (none)\n", "Budgets at the end of the day:\n  (none)\n",
                 "Alerts that fired:\n  (none)\n",
                 "Firing now: 1\n"):
        check(want in text, "the digest lacks %r:\n%s", want, text)
    check("digest sent" in al.log(), "no 'digest sent' log line")
    # the same day again: no second digest
    check_eq(al.stop(), 0, "the alerter's exit status")
    al.start()
    time.sleep(2.5)
    again = [r for r in rx.records()[n0:] if isinstance(r.get("json"), dict) and "subject" in r["json"]]
    check_eq(len(again), 1, "digests after a restart the same day")
    check_eq(al.stats().get("alerter_digests_total"), 0, "digests counted by the restarted alerter")


@case(timeout=90)
def alerter_email_tls(env):
    """E-mail over TLS with a private CA ([notify.NAME] ca_file): STARTTLS
    on smtp:// with AUTH (the mail and the login only after the upgrade),
    and implicit TLS on smtps://; a server that offers no STARTTLS gets
    nothing when starttls is on."""
    c = env.collector()
    cert, key = nr.self_signed_cert(env)
    starttls = nr.SmtpReceiver(env, name="smtp-starttls", auth="PLAIN LOGIN", user="tokmon",
                               password="s3cret", tls_cert=cert, tls_key=key)
    implicit = nr.SmtpReceiver(env, name="smtp-implicit", tls_cert=cert, tls_key=key, implicit_tls=True)
    plain = nr.SmtpReceiver(env, name="smtp-plain")
    pw = env.write("smtp.pass", "s3cret\n")
    sections = """\
[notify.tls]
type = email
url = {a}
ca_file = {cert}
user = tokmon
password_file = {pw}
from = tokmon@example.org
to = ops@example.org

[notify.smtps]
type = email
url = {b}
ca_file = {cert}
from = tokmon@example.org
to = ops@example.org

[notify.refused]
type = email
url = {p}
retries = 0
from = tokmon@example.org
to = ops@example.org
""".format(a=starttls.url, b=implicit.url, p=plain.url, cert=cert, pw=pw)
    al = Alerter(env, c, alerter={"high_cost_call_usd": "1.00", "high_cost_call_hold": "30s",
                                  "stage_silent": "0"}, sections=sections)
    bus = Alerts(c)
    time.sleep(0.5)
    emit(c, provider="openai", model="gpt-4o", user="tls", input_tokens=10, output_tokens=5, cost_usd="2.00",
         request_id="req-tls")
    bus.wait("LLMExpensiveCall", "firing", timeout=20)
    check(implicit.url.startswith("smtps://"), "implicit TLS receiver url %r", implicit.url)
    for rx, what in ((starttls, "STARTTLS"), (implicit, "implicit TLS")):
        m = rx.wait(1, 20)[0]
        check(m["tls"], "%s: the mail went in the clear", what)
        check(m["subject"].startswith("[FIRING:1] LLMExpensiveCall"), "%s: subject %r", what, m["subject"])
    a = starttls.wait(1, 1)[0]["auth"]
    check(a and a["ok"] and a["user"] == "tokmon", "STARTTLS: AUTH %r", a)
    # the server without STARTTLS: refused, nothing sent in the clear
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "refused" not in al.proc.stderr() and "STARTTLS" not in al.proc.stderr():
        time.sleep(0.2)
    time.sleep(0.5)
    check(not plain.mails(), "a mail went to a server without STARTTLS: %r", plain.mails()[:1])
