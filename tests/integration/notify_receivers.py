#!/usr/bin/python3
"""Receivers for tokmon-alerter's notifications in integration tests: an HTTP
receiver (webhook, Slack and Telegram endpoints in one), an SMTP server, and
a helper that runs the real Alertmanager 0.25. Python 3 standard library only.

    notify_receivers.py http [--port 0] [--out requests.jsonl] [--fail PLAN]
                             [--control FILE] [--token TOKEN] [--user U --password P]
    notify_receivers.py smtp [--port 0] [--out mails.jsonl] [--auth "PLAIN LOGIN"]
                             [--user U --password P] [--rcpt-fail 451,550]
                             [--data-fail 452] [--tls-cert PEM --tls-key PEM] [--implicit-tls]

Each prints "listening PORT" on stdout (flushed) once it accepts connections;
SIGTERM or SIGINT stops it.

http: records every request, whatever its path, as one JSON line in --out:
  {"n", "t", "method", "path", "query", "kind", "headers": {lower-case name:
   value}, "auth": {"user", "password"} or null, "body" (text), "json" (the
   parsed body or null), "status" (what was answered), "token" (Telegram)}
and answers as the service would:
  * /bot<TOKEN>/<method> (kind "telegram"): {"ok": true, "result": {...}}
    (message_id, chat, date, text); failures in Telegram's shape,
    {"ok": false, "error_code": N, "description": ...}, a 429 with
    "parameters": {"retry_after": S}; with --token, another token gets 401;
  * /services/... (kind "slack"): "ok" as text/plain (failures: Slack's
    words, "rate_limited", "invalid_payload", ...);
  * /api/v2/alerts (kind "alertmanager"): 200, empty, as Alertmanager does;
  * anything else (kind "webhook"): 200 "ok".
  Only POST is answered so (others get 405). --user/--password: HTTP basic
  auth is required (401). Failures on demand, per request in arrival order:
  --fail takes a comma-separated plan of NNN (that status), NNNxK (K times),
  NNN:S (with Retry-After: S, and Telegram's retry_after S), close (drop
  the connection), hang:S (wait S seconds, then answer normally), ok; then
  normal answers. --control FILE: while FILE exists, its first line (one
  such item) applies to every request (tests create and remove it).

smtp: speaks EHLO/HELO, AUTH PLAIN and LOGIN (advertised with --auth;
required before MAIL when --user is given), MAIL, RCPT, DATA, RSET, NOOP,
VRFY, QUIT; STARTTLS only with --tls-cert/--tls-key (else 454), or TLS from
the first byte with --implicit-tls. --rcpt-fail/--data-fail: the answers to
RCPT / to the end of DATA, in arrival order, then 250. Each message accepted
is one JSON line in --out:
  {"n", "t", "peer", "helo", "tls", "auth": {"mech", "user", "password",
   "ok"} or null, "mail_from", "rcpt_to": [...], "data" (the message as
   received, dot-stuffing undone, CRLF kept), "headers": {name: decoded
   value} (first of each), "header_names" (all, in order), "subject"
   (decoded), "body" (decoded text, \n line ends), "bare_lf" (an LF without
   CR was sent),
   "max_line" (longest line, bytes)}

From harness.py-style code (these start the receivers with env.spawn, so
Env.close stops them by PID):

    import notify_receivers as nr
    rx = nr.HttpReceiver(env, fail="500x5")          # ready; rx.port, rx.url
    ... [notify.hook] url = %s/hook ... % rx.url
    reqs = rx.wait(6)                                # the first 6 requests
    mail = nr.SmtpReceiver(env, auth="PLAIN LOGIN", user="u", password="p")
    ... [notify.mail] type = email, url = mail.url, starttls = off ...
    m = mail.wait(1)[0]; m["rcpt_to"], m["subject"], m["body"]
    am = nr.Alertmanager(env)                        # the real one, ready
    ... [notify.am] type = alertmanager, url = am.url ...
    am.wait_alerts(lambda a: len(a) == 2)            # GET /api/v2/alerts
    am.groups()                                      # GET /api/v2/alerts/groups
"""

import argparse
import base64
import email.parser
import email.policy
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
AMTOOL = "/usr/bin/amtool"


# ---- shared --------------------------------------------------------------------

def read_jsonl(path):
    """The records of an --out file (none when it does not exist yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(x) for x in f if x.strip()]
    except FileNotFoundError:
        return []


def wait_listening(stream, timeout=10.0, what="receiver"):
    """Reads a receiver's stdout (a pipe) until "listening PORT"; returns PORT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError("%s exited before listening" % what)
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if line.startswith("listening "):
            return int(line.split()[1])
    raise RuntimeError("%s: not listening after %.0f s" % (what, timeout))


def wait_records(path, n, timeout=10.0, what="records"):
    """The records of path once there are at least n; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_jsonl(path)
        if len(rows) >= n:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError("%s: %d of %d after %.0f s in %s" % (what, len(rows), n, timeout, path))
        time.sleep(0.05)


class Recorder:
    """Appends JSON lines to a file (or nowhere), one writer at a time."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.n = 0
        self.f = open(path, "a", encoding="utf-8") if path else None

    def next_n(self):
        with self.lock:
            self.n += 1
            return self.n

    def write(self, rec):
        if not self.f:
            return
        line = json.dumps(rec, ensure_ascii=False, sort_keys=True)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()


# ---- plans ---------------------------------------------------------------------

PLAN_ITEM = re.compile(r"^(?:(ok|close)|hang:([0-9.]+)|([1-5][0-9][0-9])(?:x([0-9]+))?(?::([0-9]+))?)$")


def parse_plan(text):
    """ "500x5,429:2,close,hang:1.5,ok" -> a list of items, one per request:
    ("status", code, retry_after or None), ("close",), ("hang", s), ("ok",)."""
    out = []
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        m = PLAN_ITEM.match(item)
        if not m:
            raise ValueError("bad plan item %r" % item)
        word, hang, code, times, retry = m.groups()
        if word:
            out.append((word,))
        elif hang:
            out.append(("hang", float(hang)))
        else:
            it = ("status", int(code), int(retry) if retry else None)
            out.extend([it] * (int(times) if times else 1))
    return out


class Plan:
    def __init__(self, text, control):
        self.items = parse_plan(text or "")
        self.control = control
        self.lock = threading.Lock()
        self.i = 0

    def next(self):
        with self.lock:
            if self.i < len(self.items):
                self.i += 1
                return self.items[self.i - 1]
        if self.control and os.path.exists(self.control):
            try:
                with open(self.control) as f:
                    first = f.readline().strip()
                items = parse_plan(first)
                if items:
                    return items[0]
            except (OSError, ValueError):
                pass
        return ("ok",)


# ---- the HTTP receiver ---------------------------------------------------------

TELEGRAM_PATH = re.compile(r"^/bot([^/]+)/([A-Za-z]+)$")
SLACK_WORDS = {400: "invalid_payload", 403: "action_prohibited", 404: "no_service",
               410: "channel_is_archived", 429: "rate_limited", 500: "rollup_error"}
TELEGRAM_WORDS = {400: "Bad Request: chat not found", 401: "Unauthorized",
                  403: "Forbidden: bot was blocked by the user", 404: "Not Found",
                  429: "Too Many Requests: retry after %d"}


def kind_of(path):
    if TELEGRAM_PATH.match(path):
        return "telegram"
    if path.startswith("/services/"):
        return "slack"
    if path.rstrip("/").endswith("/api/v2/alerts"):
        return "alertmanager"
    return "webhook"


class HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "notify-receivers"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _answer(self, status, body, ctype, extra=None):
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        srv = self.server
        n = srv.rec.next_n()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        kind = kind_of(path)
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if raw else None
        except ValueError:
            parsed = None
        auth = None
        h = self.headers.get("Authorization") or ""
        if h.startswith("Basic "):
            try:
                u, _, p = base64.b64decode(h[6:]).decode("utf-8", "replace").partition(":")
                auth = {"user": u, "password": p}
            except ValueError:
                auth = {"user": None, "password": None}
        m = TELEGRAM_PATH.match(path)
        token = m.group(1) if m else None
        rec = {"n": n, "t": time.time(), "method": self.command, "path": path, "query": url.query,
               "kind": kind, "headers": {k.lower(): v for k, v in self.headers.items()},
               "auth": auth, "body": text, "json": parsed, "token": token}

        item = srv.plan.next()
        if item[0] == "close":
            rec["status"] = "close"
            srv.rec.write(rec)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if item[0] == "hang":
            time.sleep(item[1])
            item = ("ok",)
        status, retry = (item[1], item[2]) if item[0] == "status" else (200, None)
        if status == 200:  # checks that only a healthy answer makes
            if self.command != "POST":
                status = 405
            elif srv.user is not None and auth != {"user": srv.user, "password": srv.password}:
                status = 401
            elif kind == "telegram" and srv.token is not None and token != srv.token:
                status = 401
        rec["status"] = status
        srv.rec.write(rec)

        extra = {"Retry-After": str(retry)} if retry is not None else {}
        if status == 401 and kind != "telegram":
            extra["WWW-Authenticate"] = 'Basic realm="notify-receivers"'
        if kind == "telegram":
            if 200 <= status < 300:
                chat = parsed.get("chat_id") if isinstance(parsed, dict) else None
                result = {"message_id": n, "date": int(time.time()), "chat": {"id": chat},
                          "text": parsed.get("text") if isinstance(parsed, dict) else None}
                body = {"ok": True, "result": result}
            else:
                desc = TELEGRAM_WORDS.get(status, "Error %d" % status)
                if "%d" in desc:
                    desc = desc % (retry or 1)
                body = {"ok": False, "error_code": status, "description": desc}
                if status == 429:
                    body["parameters"] = {"retry_after": retry or 1}
            self._answer(status, json.dumps(body), "application/json")
        elif kind == "slack":
            word = "ok" if 200 <= status < 300 else SLACK_WORDS.get(status, "error_%d" % status)
            self._answer(status, word, "text/plain; charset=utf-8", extra)
        elif kind == "alertmanager":
            body = "" if 200 <= status < 300 else '{"code":%d,"message":"failure on demand"}' % status
            self._answer(status, body, "application/json", extra)
        else:
            self._answer(status, "ok" if 200 <= status < 300 else "failure on demand %d" % status,
                         "text/plain; charset=utf-8", extra)

    do_POST = do_GET = do_PUT = do_DELETE = _handle


def serve_http(args):
    srv = ThreadingHTTPServer((args.host, args.port), HttpHandler)
    srv.daemon_threads = True
    srv.rec = Recorder(args.out)
    srv.plan = Plan(args.fail, args.control)
    srv.token = args.token
    srv.user = args.user
    srv.password = args.password
    return srv


# ---- the SMTP server -----------------------------------------------------------

class SmtpHandler(socketserver.StreamRequestHandler):
    timeout = 60

    def setup(self):
        if self.server.implicit_tls:
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def reply(self, text):
        self.wfile.write((text + "\r\n").encode("utf-8"))
        self.wfile.flush()

    def readline(self):
        line = self.rfile.readline(1 << 20)
        if not line:
            return None
        return line

    def starttls(self):
        self.reply("220 2.0.0 ready to start TLS")
        self.wfile.flush()
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        self.rfile = self.request.makefile("rb", -1)
        self.wfile = self.request.makefile("wb", 0)

    def handle(self):
        srv = self.server
        st = {"helo": None, "tls": srv.implicit_tls, "auth": None, "from": None, "rcpt": []}
        self.reply("220 notify-receivers ESMTP")
        while True:
            raw = self.readline()
            if raw is None:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            arg = line[len(verb):].strip()
            if verb == "EHLO":
                st["helo"] = arg
                lines = ["notify-receivers", "8BITMIME", "SIZE 10485760"]
                if srv.auth:
                    lines.append("AUTH " + srv.auth)
                if srv.tls and not st["tls"]:
                    lines.append("STARTTLS")
                for i, x in enumerate(lines):
                    self.reply(("250 " if i == len(lines) - 1 else "250-") + x)
            elif verb == "HELO":
                st["helo"] = arg
                self.reply("250 notify-receivers")
            elif verb == "STARTTLS":
                if srv.tls and not st["tls"]:
                    self.starttls()
                    st = {"helo": None, "tls": True, "auth": None, "from": None, "rcpt": []}
                else:
                    self.reply("454 4.7.0 TLS not available")
            elif verb == "AUTH":
                if not self.auth(arg, st):
                    return
            elif verb == "MAIL":
                if srv.user is not None and not (st["auth"] and st["auth"]["ok"]):
                    self.reply("530 5.7.0 Authentication required")
                    continue
                m = re.match(r"(?i)FROM:\s*<([^>]*)>", arg)
                if not m:
                    self.reply("501 5.5.4 syntax: MAIL FROM:<address>")
                    continue
                st["from"] = m.group(1)
                st["rcpt"] = []
                self.reply("250 2.1.0 ok")
            elif verb == "RCPT":
                m = re.match(r"(?i)TO:\s*<([^>]*)>", arg)
                if st["from"] is None or not m:
                    self.reply("503 5.5.1 MAIL first" if m else "501 5.5.4 syntax: RCPT TO:<address>")
                    continue
                code = srv.next_code("rcpt")
                if code == 250:
                    st["rcpt"].append(m.group(1))
                    self.reply("250 2.1.5 ok")
                else:
                    self.reply("%d %s" % (code, "4.2.0 try again later" if code < 500 else "5.1.1 no such user"))
            elif verb == "DATA":
                if not st["rcpt"]:
                    self.reply("503 5.5.1 RCPT first")
                    continue
                self.reply("354 end with <CRLF>.<CRLF>")
                data = self.read_data()
                if data is None:
                    return
                code = srv.next_code("data")
                if code == 250:
                    n = srv.rec.next_n()
                    srv.rec.write(self.record(n, st, data))
                    self.reply("250 2.0.0 queued as %d" % n)
                else:
                    self.reply("%d %s" % (code, "4.3.0 try again later" if code < 500 else "5.6.0 refused"))
                st["from"] = None
                st["rcpt"] = []
            elif verb == "RSET":
                st["from"] = None
                st["rcpt"] = []
                self.reply("250 2.0.0 ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 ok")
            elif verb == "VRFY":
                self.reply("252 2.1.5 cannot verify")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 unknown command")

    def auth(self, arg, st):
        srv = self.server
        parts = arg.split()
        mech = parts[0].upper() if parts else ""
        offered = (srv.auth or "").upper().split()
        if mech not in offered:
            self.reply("504 5.5.4 mechanism not available")
            return True

        def b64(s):
            try:
                return base64.b64decode(s, validate=True).decode("utf-8", "replace")
            except ValueError:
                return None

        user = password = None
        if mech == "PLAIN":
            resp = parts[1] if len(parts) > 1 else None
            if resp is None:
                self.reply("334 ")
                raw = self.readline()
                if raw is None:
                    return False
                resp = raw.decode("ascii", "replace").strip()
            dec = b64(resp)
            if dec is not None and dec.count("\0") == 2:
                _, user, password = dec.split("\0")
        elif mech == "LOGIN":
            first = parts[1] if len(parts) > 1 else None
            if first is None:
                self.reply("334 VXNlcm5hbWU6")
                raw = self.readline()
                if raw is None:
                    return False
                first = raw.decode("ascii", "replace").strip()
            user = b64(first)
            self.reply("334 UGFzc3dvcmQ6")
            raw = self.readline()
            if raw is None:
                return False
            password = b64(raw.decode("ascii", "replace").strip())
        ok = user is not None and (srv.user is None or (user == srv.user and password == srv.password))
        st["auth"] = {"mech": mech, "user": user, "password": password, "ok": ok}
        self.reply("235 2.7.0 authenticated" if ok else "535 5.7.8 authentication failed")
        return True

    def read_data(self):
        lines = []
        while True:
            raw = self.readline()
            if raw is None:
                return None
            if raw in (b".\r\n", b".\n"):
                return b"".join(lines)
            if raw.startswith(b"."):
                raw = raw[1:]  # dot-stuffing undone
            lines.append(raw)

    def record(self, n, st, data):
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        headers = {}
        for k, v in msg.items():
            headers.setdefault(k, str(v))
        try:
            body = msg.get_content() if not msg.is_multipart() else None
        except (LookupError, KeyError, ValueError):
            body = None
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        if body is not None:
            body = body.replace("\r\n", "\n")
        bare_lf = bool(re.search(rb"(?<!\r)\n", data))
        return {"n": n, "t": time.time(), "peer": "%s:%d" % self.client_address[:2],
                "helo": st["helo"], "tls": st["tls"], "auth": st["auth"],
                "mail_from": st["from"], "rcpt_to": list(st["rcpt"]),
                "data": data.decode("utf-8", "replace"), "headers": headers,
                "header_names": list(msg.keys()), "subject": str(msg.get("Subject", "")),
                "body": body, "bare_lf": bare_lf,
                "max_line": max((len(x) for x in data.split(b"\r\n")), default=0)}


class SmtpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def next_code(self, which):
        with self.code_lock:
            plan = self.codes[which]
            return plan.pop(0) if plan else 250


def serve_smtp(args):
    srv = SmtpServer((args.host, args.port), SmtpHandler)
    srv.rec = Recorder(args.out)
    srv.auth = args.auth
    srv.user = args.user
    srv.password = args.password
    srv.code_lock = threading.Lock()
    srv.codes = {"rcpt": [int(x) for x in args.rcpt_fail.split(",") if x.strip()],
                 "data": [int(x) for x in args.data_fail.split(",") if x.strip()]}
    srv.tls = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key or None)
        srv.tls = ctx
    srv.implicit_tls = bool(args.implicit_tls and srv.tls)
    return srv


def main(argv=None):
    ap = argparse.ArgumentParser(description="Stand-in receivers for tokmon-alerter's notifications.")
    sub = ap.add_subparsers(dest="what", required=True)
    h = sub.add_parser("http", help="webhook, Slack and Telegram endpoint")
    h.add_argument("--fail", default="", help="plan: 500x5,429:2,close,hang:1.5,ok,...")
    h.add_argument("--control", help="while this file exists, its first line applies")
    h.add_argument("--token", help="the only Telegram bot token accepted")
    s = sub.add_parser("smtp", help="an SMTP server")
    s.add_argument("--auth", default="", help='mechanisms advertised, e.g. "PLAIN LOGIN"')
    s.add_argument("--rcpt-fail", default="", help="answers to RCPT, e.g. 451,550")
    s.add_argument("--data-fail", default="", help="answers to the end of DATA, e.g. 452")
    s.add_argument("--tls-cert", help="PEM certificate: offer STARTTLS")
    s.add_argument("--tls-key", help="PEM key (default: in --tls-cert)")
    s.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (smtps)")
    for p in (h, s):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--out", help="JSON lines: requests (http) or messages (smtp)")
        p.add_argument("--user")
        p.add_argument("--password")
    args = ap.parse_args(argv)
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")

    srv = serve_http(args) if args.what == "http" else serve_smtp(args)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    print("listening %d" % srv.server_address[1], flush=True)
    while not stop.is_set():
        stop.wait(0.2)
    srv.shutdown()
    srv.server_close()
    print("%s receiver: %d recorded" % (args.what, srv.rec.n), file=sys.stderr)
    return 0


# ---- for the cases: receivers as harness processes -----------------------------

class _Spawned:
    """A receiver started with env.spawn (stopped by PID when the Env closes)."""

    def __init__(self, env, name, what, extra, timeout=10.0):
        self.env = env
        self.name = name
        self.out = env.path(name + ".jsonl")
        args = [PYTHON, os.path.join(HERE, "notify_receivers.py"), what, "--out", self.out] + extra
        self.proc = env.spawn(name, args, stdout_pipe=True)
        self.port = wait_listening(self.proc.p.stdout, timeout, name)

    def records(self):
        return read_jsonl(self.out)

    def wait(self, n, timeout=10.0):
        """The first n records (waits for them; fails after timeout)."""
        return wait_records(self.out, n, timeout, self.name)[:n]

    def stop(self):
        return self.proc.stop()


class HttpReceiver(_Spawned):
    """notify_receivers.py http: url is http://127.0.0.1:PORT (add a path:
    /hook for a webhook, /services/T/B/X for Slack; Telegram's url is the
    base itself, the alerter adds /bot<token>/sendMessage)."""

    def __init__(self, env, name="notify-http", fail="", control=None, token=None, user=None,
                 password=None):
        extra = []
        if fail:
            extra += ["--fail", fail]
        if control:
            extra += ["--control", control]
        if token:
            extra += ["--token", token]
        if user is not None:
            extra += ["--user", user, "--password", password or ""]
        super().__init__(env, name, "http", extra)
        self.url = "http://127.0.0.1:%d" % self.port

    def requests(self, kind=None):
        return [r for r in self.records() if kind is None or r["kind"] == kind]


class SmtpReceiver(_Spawned):
    """notify_receivers.py smtp: url is smtp://127.0.0.1:PORT (smtps:// with
    implicit_tls)."""

    def __init__(self, env, name="notify-smtp", auth="", user=None, password=None, rcpt_fail="",
                 data_fail="", tls_cert=None, tls_key=None, implicit_tls=False):
        extra = []
        if auth:
            extra += ["--auth", auth]
        if user is not None:
            extra += ["--user", user, "--password", password or ""]
        if rcpt_fail:
            extra += ["--rcpt-fail", rcpt_fail]
        if data_fail:
            extra += ["--data-fail", data_fail]
        if tls_cert:
            extra += ["--tls-cert", tls_cert] + (["--tls-key", tls_key] if tls_key else [])
        if implicit_tls:
            extra += ["--implicit-tls"]
        super().__init__(env, name, "smtp", extra)
        self.url = "%s://127.0.0.1:%d" % ("smtps" if implicit_tls else "smtp", self.port)

    def mails(self):
        return self.records()


def self_signed_cert(env, name="notify-tls", cn="127.0.0.1"):
    """A self-signed certificate and key (PEM, openssl req) in the case's
    directory, for SmtpReceiver(tls_cert=...). Returns (cert, key)."""
    import subprocess
    cert, key = env.path(name + ".crt"), env.path(name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + cn, "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


# ---- the real Alertmanager -----------------------------------------------------

AM_CONFIG = """\
# generated by tests/integration/notify_receivers.py
route:
  receiver: blackhole
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: blackhole
"""


class Alertmanager:
    """Debian's prometheus-alertmanager (0.25) on 127.0.0.1 with its cluster
    listener off (--cluster.listen-address=), its state in the case's
    directory and config (YAML text; default: every alert to a receiver that
    sends nothing), checked with amtool first. Ready when the constructor
    returns; stopped by PID when the Env closes (or by stop()). url is what
    [notify.X] type = alertmanager takes."""

    def __init__(self, env, config=None, name="alertmanager", timeout=30.0, args=()):
        from harness import CaseFailure, free_port  # the cases' harness, same directory
        self.env = env
        self.name = name
        self.config_path = env.write(name + ".yml", config or AM_CONFIG)
        if os.path.exists(AMTOOL):
            import subprocess
            p = subprocess.run([AMTOOL, "check-config", self.config_path], capture_output=True,
                               timeout=30)
            if p.returncode != 0:
                raise CaseFailure("amtool check-config %s: %s" % (
                    self.config_path, (p.stdout + p.stderr).decode("utf-8", "replace").strip()))
        self.storage = env.path(name + "-data")
        os.makedirs(self.storage, exist_ok=True)
        self.port = free_port(udp=False)
        self.url = "http://127.0.0.1:%d" % self.port
        argv = [ALERTMANAGER, "--config.file=" + self.config_path, "--storage.path=" + self.storage,
                "--web.listen-address=127.0.0.1:%d" % self.port, "--cluster.listen-address=",
                "--log.level=info"] + list(args)
        self.proc = env.spawn(name, argv)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if not self.proc.alive():
                raise CaseFailure("alertmanager exited (status %r): %s" %
                                  (self.proc.p.poll(), self.proc.stderr().strip()[-800:]))
            if time.monotonic() > deadline:
                raise CaseFailure("alertmanager not ready after %.0f s: %s" %
                                  (timeout, self.proc.stderr().strip()[-800:]))
            time.sleep(0.1)

    def _get(self, path, query=None):
        url = self.url + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read().decode("utf-8"))

    def alerts(self, active=True, silenced=True, inhibited=True, unprocessed=True, filter=()):
        """GET /api/v2/alerts: the alerts Alertmanager holds (resolved ones
        drop out once their endsAt has passed). filter: matchers such as
        'alertname="LLMBudgetExceeded"'."""
        q = {"active": str(active).lower(), "silenced": str(silenced).lower(),
             "inhibited": str(inhibited).lower(), "unprocessed": str(unprocessed).lower()}
        if filter:
            q["filter"] = list(filter)
        return self._get("/api/v2/alerts", q)

    def groups(self):
        """GET /api/v2/alerts/groups."""
        return self._get("/api/v2/alerts/groups")

    def status(self):
        """GET /api/v2/status (version, config, cluster)."""
        return self._get("/api/v2/status")

    def post_alerts(self, alerts):
        """POST /api/v2/alerts, for a case's own setup; returns the status."""
        req = urllib.request.Request(self.url + "/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    def wait_alerts(self, pred, timeout=10.0, what="alerts", **kw):
        """alerts(**kw) once pred(alerts) holds; fails after timeout."""
        from harness import CaseFailure
        deadline = time.monotonic() + timeout
        while True:
            got = self.alerts(**kw)
            if pred(got):
                return got
            if time.monotonic() > deadline:
                raise CaseFailure("%s: not reached in %.0f s; alertmanager holds %s" %
                                  (what, timeout, json.dumps(got)[:1500]))
            time.sleep(0.1)

    def stop(self):
        return self.proc.stop()


if __name__ == "__main__":
    sys.exit(main())
