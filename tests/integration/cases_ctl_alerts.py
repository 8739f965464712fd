"""tokmonctl alerts and tokmonctl silence add|list|expire against a stand-in
for tokmon-alerter's control socket (FakeAlerter: a pyzmq ROUTER answering
as alerter/main.c's answer() does), until tokmon-alerter itself is built
with the others: the exact requests tokmonctl sends, the tables and JSON it
prints, what it refuses before asking (durations, matchers, options), what
it refuses in an answer, and its exit statuses."""

import json
import socket
import threading

from harness import SANITIZER_MARKS, bin_path, case, check, check_eq, free_port, run

S = 1000000000
T0 = 1763812800 * S  # 2025-11-22T12:00:00Z


def alert(name, state, severity, fp, labels, annotations, value, starts_at, ends_at=0):
    """An alert map as msg_alert_pack writes it (labels sorted by key)."""
    lab = dict(labels, alertname=name)
    if severity:
        lab["severity"] = severity
    a = {"alertname": name, "state": state, "severity": severity, "fingerprint": fp,
         "labels": dict(sorted(lab.items())), "annotations": annotations, "value": value,
         "starts_at": starts_at, "ts": T0 + 600 * S}
    if ends_at:
        a["ends_at"] = ends_at
    return a


# in no particular order, as the alerter's table iterates
ALERTS = [
    alert("QuotaWarning", "firing", "warning", "b1", {"user": "alice", "window": "day"},
          {"summary": "alice used 85% of the day's tokens"}, 0.85, T0 + 60 * S),
    alert("HighErrorRate", "pending", "warning", "c3", {"model": "openai/gpt-4o"},
          {"summary": "errors 12%\nof calls"}, 0.12, T0 + 120 * S),
    alert("BudgetExceeded", "firing", "critical", "e5", {"budget": "monthly"},
          {"summary": "budget monthly: $101 of $100"}, 101.0, T0 + 30 * S),
    alert("NoEvents", "resolved", "", "d4", {}, {}, 0.0, T0 - 3600 * S, T0 - 60 * S),
    alert("BudgetExceeded", "firing", "critical", "a2", {"budget": "daily"},
          {"summary": "budget daily: $5.20 of $5", "description": "spent 5.2 of 5"}, 5.2, T0),
]

# `tokmonctl alerts`: firing, pending, resolved; by name, then start
ALERTS_TABLE = """\
STATE     ALERTNAME       SEVERITY  SINCE                 LABELS                 SUMMARY
firing    BudgetExceeded  critical  2025-11-22T12:00:00Z  budget=daily           budget daily: $5.20 of $5
firing    BudgetExceeded  critical  2025-11-22T12:00:30Z  budget=monthly         budget monthly: $101 of $100
firing    QuotaWarning    warning   2025-11-22T12:01:00Z  user=alice window=day  alice used 85% of the day's tokens
pending   HighErrorRate   warning   2025-11-22T12:02:00Z  model=openai/gpt-4o    errors 12%?of calls
resolved  NoEvents        -         2025-11-22T11:00:00Z  -                      -
"""

SILENCES = [
    {"id": "00000000000000a1", "matchers": "alertname=NoEvents", "comment": "maintenance window",
     "by": "ops@db1", "created": T0, "until": T0 + 7200 * S},
    {"id": "00000000000000b2", "matchers": "user=~bob.* model!=x", "comment": "", "by": "",
     "created": T0 + 60 * S, "until": T0 + 86400 * S},
]

SILENCES_TABLE = """\
ID                MATCHERS              CREATED               UNTIL                 BY       COMMENT
00000000000000a1  alertname=NoEvents    2025-11-22T12:00:00Z  2025-11-22T14:00:00Z  ops@db1  maintenance window
00000000000000b2  user=~bob.* model!=x  2025-11-22T12:01:00Z  2025-11-23T12:00:00Z  -        -
"""

HEAD = {"ok": True, "shard": 0, "shards": 1}


class FakeAlerter:
    """tokmon-alerter's control socket as alerter/main.c answers on it:
    [identity, empty, request] -> [identity, empty, answer], from the
    alerts and silences held here. Every request is kept, decoded, in
    requests. answer, when set, answers instead: a function of the request
    giving a dict, raw bytes, or None (no answer at all)."""

    def __init__(self, alerts=(), silences=()):
        import zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = "tcp://127.0.0.1:%d" % free_port(udp=False)
        self.sock.bind(self.endpoint)
        self.alerts = list(alerts)
        self.silences = [dict(s) for s in silences]
        self.requests = []
        self.bad_frames = 0
        self.answer = None
        self.seq = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import msgpack
        while not self.stop:
            if not self.sock.poll(50):
                continue
            f = self.sock.recv_multipart()
            if len(f) != 3 or f[1] != b"":
                self.bad_frames += 1
                continue
            try:
                req = msgpack.unpackb(f[2], raw=False)
            except Exception:
                req = {"undecodable": f[2].hex()}
            self.requests.append(req)
            a = self.answer(req) if self.answer else self._answer(req)
            if a is None:
                continue
            self.sock.send_multipart([f[0], b"", a if isinstance(a, bytes) else msgpack.packb(a)])

    def _answer(self, req):
        q = req.get("q") if isinstance(req, dict) else None
        if q == "alerts":
            return dict(HEAD, alerts=self.alerts)
        if q == "silences":
            return dict(HEAD, silences=self.silences)
        if q == "silence_add":
            d = req.get("duration")
            if not isinstance(req.get("matchers"), str) or not isinstance(d, int) or not 0 < d <= 366 * 86400:
                return {"ok": False, "error": "silence_add needs matchers and a duration in seconds (at most a year)"}
            self.seq += 1
            sid = "%016x" % (0xfeed0000 + self.seq)
            self.silences.append({"id": sid, "matchers": req["matchers"], "comment": req.get("comment", ""),
                                  "by": req.get("by", ""), "created": T0, "until": T0 + d * S})
            return dict(HEAD, id=sid)
        if q == "silence_expire":
            for s in self.silences:
                if s["id"] == req.get("id"):
                    self.silences.remove(s)
                    return dict(HEAD)
            return {"ok": False, "error": "no active silence with that id"}
        return {"ok": False, "error": "unknown q: alerts, silences, silence_add or silence_expire"}

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()
        self.ctx.term()


def start(env, alerts=ALERTS, silences=SILENCES):
    """A FakeAlerter and a config naming it as [alerter] control."""
    fake = FakeAlerter(alerts, silences)
    cfg = env.write("ctl.ini", "[alerter]\ncontrol = %s\n" % fake.endpoint)
    return fake, cfg


def ctl(cfg, *args, user="tester"):
    """tokmonctl -c cfg args, with USER set: (status, stdout, stderr); a
    sanitizer report (make test) fails the case."""
    rc, out, err = run([bin_path("tokmonctl"), "-c", cfg] + list(args), env={"USER": user})
    for mark in SANITIZER_MARKS:
        check(mark not in err, "tokmonctl %s: sanitizer report: %s", " ".join(args), err)
    return rc, out, err


@case(timeout=60)
def ctl_alerts(env):
    """tokmonctl alerts asks {q: alerts} and prints every alert, firing
    first, as a table or JSON; --state keeps one state."""
    fake, cfg = start(env)
    try:
        rc, out, err = ctl(cfg, "alerts")
        check(rc == 0, "tokmonctl alerts: %d %s", rc, err)
        check_eq(out, ALERTS_TABLE, "the alerts table")
        check_eq(fake.requests, [{"q": "alerts"}], "the request")

        rc, out, err = ctl(cfg, "alerts", "--json")
        check(rc == 0, "tokmonctl alerts --json: %d %s", rc, err)
        j = json.loads(out)
        check_eq({k: j[k] for k in HEAD}, HEAD, "the JSON head")
        check_eq([(a["alertname"], a["fingerprint"]) for a in j["alerts"]],
                 [("BudgetExceeded", "a2"), ("BudgetExceeded", "e5"), ("QuotaWarning", "b1"),
                  ("HighErrorRate", "c3"), ("NoEvents", "d4")], "the JSON order")
        check_eq(j["alerts"][0], {
            "alertname": "BudgetExceeded", "state": "firing", "severity": "critical", "fingerprint": "a2",
            "labels": {"alertname": "BudgetExceeded", "budget": "daily", "severity": "critical"},
            "annotations": {"summary": "budget daily: $5.20 of $5", "description": "spent 5.2 of 5"},
            "value": 5.2, "starts_at": T0, "ends_at": 0, "ts": T0 + 600 * S}, "the first alert in JSON")
        check_eq((j["alerts"][3]["annotations"]["summary"], j["alerts"][4]["ends_at"],
                  j["alerts"][4]["severity"], j["alerts"][4]["labels"]),
                 ("errors 12%\nof calls", T0 - 60 * S, "", {"alertname": "NoEvents"}),
                 "a summary as sent, a resolved alert's end, no severity")

        rc, out, err = ctl(cfg, "alerts", "--state", "pending")
        check_eq((rc, out), (0, "STATE    ALERTNAME      SEVERITY  SINCE                 LABELS               SUMMARY\n"
                                "pending  HighErrorRate  warning   2025-11-22T12:02:00Z  model=openai/gpt-4o  "
                                "errors 12%?of calls\n"), "alerts --state pending")
        rc, out, err = ctl(cfg, "alerts", "--state", "firing", "--json")
        check_eq((rc, [a["fingerprint"] for a in json.loads(out)["alerts"]]), (0, ["a2", "e5", "b1"]),
                 "alerts --state firing --json")
        check_eq(fake.requests, [{"q": "alerts"}] * 4, "every request")

        # none: the header alone, and an empty list
        fake.alerts = []
        rc, out, err = ctl(cfg, "alerts")
        check_eq((rc, out), (0, "STATE  ALERTNAME  SEVERITY  SINCE  LABELS  SUMMARY\n"), "no alerts")
        rc, out, err = ctl(cfg, "alerts", "--json")
        check_eq((rc, json.loads(out)), (0, dict(HEAD, alerts=[])), "no alerts in JSON")

        # --endpoint instead of the config
        rc, out, err = run([bin_path("tokmonctl"), "-c", "/nonexistent/tokmon.ini", "alerts",
                            "--endpoint", fake.endpoint])
        check_eq((rc, out, err), (0, "STATE  ALERTNAME  SEVERITY  SINCE  LABELS  SUMMARY\n", ""),
                 "alerts --endpoint (the config not read)")
    finally:
        fake.close()


@case(timeout=60)
def ctl_silences(env):
    """tokmonctl silence add sends the matchers, the duration in seconds, the
    comment and who ($USER@hostname by default) and prints the id; list
    prints the active silences; expire ends one, and says so when the
    alerter knows none by that id."""
    fake, cfg = start(env)
    try:
        rc, out, err = ctl(cfg, "silence", "list")
        check(rc == 0, "silence list: %d %s", rc, err)
        check_eq(out, SILENCES_TABLE, "the silences table")
        check_eq(fake.requests, [{"q": "silences"}], "the list request")

        rc, out, err = ctl(cfg, "silence", "add", "alertname=BudgetExceeded", "user=~bob.*,model!=x",
                           "--duration", "2h", "--comment", "deploy, then watch", "project!~test.*")
        check(rc == 0, "silence add: %d %s", rc, err)
        check_eq((out, err), ("00000000feed0001\n", ""), "silence add prints the id alone")
        check_eq(fake.requests[-1], {
            "q": "silence_add", "matchers": "alertname=BudgetExceeded user=~bob.* model!=x project!~test.*",
            "duration": 7200, "comment": "deploy, then watch", "by": "tester@" + socket.gethostname()},
            "the silence_add request")

        # durations: the seconds sent
        for i, (text, secs) in enumerate([("90s", 90), ("300", 300), ("30m", 1800), ("1d", 86400),
                                          ("366d", 366 * 86400), ("01h", 3600)]):
            rc, out, err = ctl(cfg, "silence", "add", "alertname=X", "--duration", text, "--by", "me",
                               "--json")
            check(rc == 0, "silence add --duration %s: %d %s", text, rc, err)
            check_eq(json.loads(out), dict(HEAD, id="%016x" % (0xfeed0002 + i)), "add --json")
            check_eq(fake.requests[-1], {"q": "silence_add", "matchers": "alertname=X", "duration": secs,
                                         "comment": "", "by": "me"}, "--duration %s" % text)

        rc, out, err = ctl(cfg, "silence", "list", "--json")
        check(rc == 0, "silence list --json: %d %s", rc, err)
        j = json.loads(out)
        check_eq(len(j["silences"]), 9, "silences listed")
        check_eq(j["silences"][0], SILENCES[0], "a silence in JSON")
        check_eq(j["silences"][2]["until"], T0 + 7200 * S, "the added silence's end")

        rc, out, err = ctl(cfg, "silence", "expire", "00000000000000a1")
        check_eq((rc, out, err), (0, "", ""), "silence expire")
        check_eq(fake.requests[-1], {"q": "silence_expire", "id": "00000000000000a1"}, "the expire request")
        rc, out, err = ctl(cfg, "silence", "expire", "00000000feed0001", "--json")
        check_eq((rc, json.loads(out)), (0, dict(HEAD, id="00000000feed0001")), "silence expire --json")
        rc, out, err = ctl(cfg, "silence", "expire", "00000000000000a1")
        check_eq((rc, out, err), (1, "", "tokmonctl: the alerter says: no active silence with that id\n"),
                 "expiring it again")
        rc, out, err = ctl(cfg, "silence", "list")
        check(rc == 0 and "00000000000000a1" not in out and "feed0001" not in out and "00000000000000b2" in out,
              "the list after expiring: %s", out)
        check_eq(fake.bad_frames, 0, "requests that were not one frame")
    finally:
        fake.close()


# (arguments, a part of what stderr must say); each exits 2 and sends nothing
BAD = [
    (["silence", "add", "a=b"], "--duration is required"),
    (["silence", "add", "a=b", "--duration", "0"], "--duration: a duration such as 90s, 30m, 2h or 1d"),
    (["silence", "add", "a=b", "--duration", "0h"], "more than 0 and at most 366d"),
    (["silence", "add", "a=b", "--duration", "-1h"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", "2x"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", "1.5h"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", "2h30m"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", ""], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", " 2h"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", "h"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", "2H"], "--duration: a duration"),
    (["silence", "add", "a=b", "--duration", "367d"], "at most 366d"),
    (["silence", "add", "a=b", "--duration", "99999999999999999999s"], "--duration: a duration"),
    (["silence", "add", "--duration", "2h"], "name at least one MATCHER"),
    (["silence", "add", "alertname", "--duration", "2h"], "matcher 'alertname': expected NAME=VALUE"),
    (["silence", "add", "=x", "--duration", "2h"], "matcher '=x': expected"),
    (["silence", "add", "user~=bob", "--duration", "2h"], "matcher 'user~=bob': expected"),
    (["silence", "add", "user!bob", "--duration", "2h"], "matcher 'user!bob': expected"),
    (["silence", "add", "9user=x", "--duration", "2h"], "matcher '9user=x': expected"),
    (["silence", "add", "a=1", "summary=two words", "--duration", "2h"], "matcher 'words': expected"),
    (["silence", "add", "a=1", "user=~x{1,3}", "--duration", "2h"], "matcher '3}': expected"),
    (["silence", "add", "a=1", "", "--duration", "2h"], "matcher '': expected"),
    (["silence", "add", "a=1", " , ", "--duration", "2h"], "matcher ' , ': expected"),
    (["silence", "add", "a=" + "x" * 1100, "--duration", "2h"], "the matchers have more than 1024 bytes"),
    (["silence", "add", "a=b", "--duration", "2h", "--by", ""], "--by: 1 to 1024 bytes"),
    (["silence", "add", "a=b", "--duration", "2h", "--comment", "x" * 1025], "--comment: at most 1024 bytes"),
    (["silence", "add", "a=b", "--duration", "2h", "--timeout", "0"], "--timeout wants seconds"),
    (["silence", "add", "a=b", "--duration", "2h", "--nope"], "unrecognized option"),
    (["silence", "expire"], "name one silence ID"),
    (["silence", "expire", ""], "name one silence ID"),
    (["silence", "expire", "a1", "b2"], "name one silence ID"),
    (["silence", "list", "extra"], "unexpected 'extra'"),
    (["silence", "frob"], "unknown command 'frob': add, list or expire"),
    (["silence"], "Usage: tokmonctl [-c FILE] silence add"),
    (["alerts", "--state", "resolved"], "--state: firing or pending"),
    (["alerts", "--state", ""], "--state: firing or pending"),
    (["alerts", "extra"], "unexpected 'extra'"),
    (["alerts", "--timeout", "-1"], "--timeout wants seconds"),
    (["alerts", "--endpoint", "tcp://127.0.0.1:1,tcp://127.0.0.1:2"],
     "--endpoint: the alerter answers on one endpoint, not a list"),
]


@case(timeout=90)
def ctl_alerts_bad_input(env):
    """What tokmonctl refuses before asking: durations (0, negative,
    fractional, compound, unknown units, beyond 366 days), matchers without
    a label name or an operator, options; each exits 2 with a reason and
    sends nothing. Help exits 0."""
    fake, cfg = start(env)
    try:
        for args, want in BAD:
            rc, out, err = ctl(cfg, *args)
            check(rc == 2 and want in err and out == "",
                  "tokmonctl %r: expected status 2 and %r, got %d: %s%s", args, want, rc, out, err)
        check_eq(fake.requests, [], "requests sent for bad input")
        for args, want in [(["alerts", "--help"], "Usage: tokmonctl [-c FILE] alerts [--state firing|pending]"),
                           (["silence", "--help"], "Usage: tokmonctl [-c FILE] silence add MATCHER..."),
                           (["silence", "add", "-h"], "--duration DURATION how long from now"),
                           (["silence", "list", "--help"], "silence list [options]"),
                           (["silence", "expire", "--help"], "silence expire ID [options]"),
                           (["--help"], "silence add MATCHER... --duration DURATION")]:
            rc, out, err = ctl(cfg, *args)
            check(rc == 0 and want in out, "tokmonctl %r: %d %s %s", args, rc, out, err)
        check_eq(fake.requests, [], "requests sent for --help")
    finally:
        fake.close()


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


@case(timeout=60)
def ctl_alerts_bad_answers(env):
    """What tokmonctl refuses in an answer (ok false, not a map, an alert
    msg_alert_unpack refuses, a silence missing a field, an id one could
    not type again), no answer within --timeout, an empty [alerter]
    control: each a one-line reason and status 1."""
    fake, cfg = start(env)
    ep = fake.endpoint
    cases = [
        (["alerts"], lambda q: {"ok": False, "error": "the alerter is loading"},
         "tokmonctl: the alerter says: the alerter is loading\n"),
        (["alerts"], lambda q: {"ok": False}, "tokmonctl: the alerter says: (no reason given)\n"),
        (["alerts"], lambda q: b"\x93\x01\x02\x03", "tokmonctl: the answer from %s is not one msgpack map\n" % ep),
        (["alerts"], lambda q: dict(HEAD, alerts={"a": 1}),
         "tokmonctl: the answer from %s: the answer's \"alerts\" is missing or not an array\n" % ep),
        (["alerts"], lambda q: dict(HEAD),
         "tokmonctl: the answer from %s: the answer's \"alerts\" is missing or not an array\n" % ep),
        (["alerts"], lambda q: dict(HEAD, alerts=[ALERTS[0], without(ALERTS[1], "fingerprint")]),
         "tokmonctl: the answer from %s: alert 2 of the answer: alert record lacks alertname, "
         "fingerprint or ts, or has an unknown state\n" % ep),
        (["alerts"], lambda q: dict(HEAD, alerts=[dict(ALERTS[0], state="firng")]),
         "alert 1 of the answer: alert record lacks"),
        (["alerts"], lambda q: dict(HEAD, alerts=[dict(ALERTS[0], labels={"user": 7})]),
         "alert 1 of the answer: labels: entries must be strings"),
        (["silence", "list"], lambda q: dict(HEAD, silences=[dict(SILENCES[0], created="today")]),
         "tokmonctl: the answer from %s: silence 1 of the answer lacks a string id, matchers, comment "
         "or by, or an integer created or until\n" % ep),
        (["silence", "list"], lambda q: dict(HEAD, silences=[without(SILENCES[1], "by")]),
         "silence 1 of the answer lacks"),
        (["silence", "add", "a=b", "--duration", "1h"], lambda q: dict(HEAD),
         "tokmonctl: the answer from %s: the answer's \"id\" is missing or not 1 to 64 printable characters\n" % ep),
        (["silence", "add", "a=b", "--duration", "1h"], lambda q: dict(HEAD, id="12\n34"),
         "the answer's \"id\" is missing or not 1 to 64 printable characters"),
        (["silence", "add", "a=b", "--duration", "1h"], lambda q: dict(HEAD, id=""),
         "the answer's \"id\" is missing or not 1 to 64 printable characters"),
        (["silence", "add", "user=~(", "--duration", "1h"],
         lambda q: {"ok": False, "error": "matcher 'user=~(': not a valid regular expression"},
         "tokmonctl: the alerter says: matcher 'user=~(': not a valid regular expression\n"),
        (["silence", "expire", "nope", "--timeout", "0.5"], lambda q: None,
         "tokmonctl: no answer from the alerter at %s within 0.5s\n" % ep),
    ]
    try:
        for args, answer, want in cases:
            fake.answer = answer
            n = len(fake.requests)
            rc, out, err = ctl(cfg, *args)
            check(rc == 1 and out == "" and (err == want if want.endswith("\n") else want in err),
                  "tokmonctl %r: expected status 1 and %r, got %d: %s%s", args, want, rc, out, err)
            check_eq(len(fake.requests), n + 1, "requests for %r" % (args,))
        empty = env.write("empty.ini", "[alerter]\ncontrol =\n")
        rc, out, err = ctl(empty, "alerts")
        check_eq((rc, err), (1, "tokmonctl: [alerter] control: the alerter answers on one endpoint, "
                                "and it is empty\n"), "an empty [alerter] control")
    finally:
        fake.close()
