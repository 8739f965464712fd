#!/usr/bin/python3
"""A stand-in Loki for integration tests: receives pushes on
POST /loki/api/v1/push, checks every request against the push API's rules,
and answers as Loki would (204, or 400 with the reason), or with the failure
it was told to give. Python 3 standard library only.

    loki_receiver.py [--port 0] [--out accepted.jsonl] [--requests requests.jsonl]
                     [--fail 500,429:2,close,hang:1.5] [--control FILE]
                     [--user U --password P] [--tenant T] [--allow-identity]
                     [--no-cross-order] [--refuse-duplicates] [--min-ts NS]

Prints "listening PORT" on stdout (flushed) once it accepts connections.
SIGTERM or SIGINT stops it; a summary goes to stderr.

Checked on every request, in this order (the first problem answers 400, or
401/404/405/415 where Loki would):
  * path /loki/api/v1/push (404) and method POST (405);
  * --user/--password: HTTP basic auth with exactly these (401);
  * --tenant: X-Scope-OrgID equal to it (401);
  * Content-Type application/json (parameters allowed), Content-Encoding
    gzip (or none with --allow-identity; anything else 415);
  * a body that gunzips, is UTF-8, and is one JSON object without duplicate
    keys or NaN/Infinity: {"streams": [...]} with at least one stream;
  * each stream: {"stream": {labels}, "values": [...]}, at least one label
    and one value; label names [a-zA-Z_][a-zA-Z0-9_]* not starting with
    "__", at most 15 labels, values non-empty strings (no lone surrogates),
    at most 2048 bytes;
  * each value: ["<ns>", "<line>"] or ["<ns>", "<line>", {metadata}]; ns a
    string of decimal digits (no sign, no leading zero), within int64 and at
    least --min-ts (default 1e15: a value in seconds or milliseconds is
    refused); metadata names as label names, values strings;
  * per stream, timestamps never go back, within the request and (unless
    --no-cross-order) against what this receiver already accepted for that
    stream. The same timestamp with the same line again is a duplicate:
    like Loki, accepted and dropped silently (counted as "duplicates" in
    --requests, not written to --out), or refused with --refuse-duplicates.
    A batch resent after a lost answer (a timeout) is all duplicates.

Failures on demand, before the checks (the request is still checked and
logged in --requests, but nothing is accepted):
  * --fail: a comma-separated plan, one item per request in arrival order,
    then normal answers: NNN (that status), NNN:S (with Retry-After: S),
    close (drop the connection without an answer), hang:S (wait S seconds,
    then answer normally), ok (answer normally);
  * --control FILE: while FILE exists, its first line (same syntax, one
    item) applies to every request; tests create and remove it to switch
    a failure on and off. --fail items come first.

--out: one JSON line per accepted entry:
  {"request": N, "ts": "<ns>", "labels": {...}, "line": "...", "metadata": {...}}
--requests: one JSON line per request:
  {"request": N, "method", "path", "status", "reason", "headers": {...},
   "bytes", "entries", "streams"}
Both are flushed after every request.

From harness.py-style code:

    rx = env.spawn("loki", ["/usr/bin/python3", LOKI_RECEIVER, "--out", env.path("loki.jsonl"),
                            "--requests", env.path("loki-req.jsonl"), "--fail", "500,429"],
                   stdout_pipe=True)
    port = loki_receiver.wait_listening(rx.p.stdout)
    ... [exporter] loki_url = http://127.0.0.1:<port> ...
    entries = loki_receiver.read_jsonl(env.path("loki.jsonl"))

decode_body(raw, headers) and validate_push(text, ...) are importable for checks
without a server.
"""

import argparse
import base64
import gzip
import json
import os
import re
import signal
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PUSH_PATH = "/loki/api/v1/push"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_LABELS = 15
MAX_LABEL_VALUE = 2048
MAX_LABEL_NAME = 1024
INT64_MAX = 2 ** 63 - 1
MAX_BODY = 64 << 20


class Invalid(Exception):
    """A request Loki would refuse: status and reason."""

    def __init__(self, reason, status=400):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _no_dupes(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise Invalid("duplicate key %r" % k)
        seen[k] = v
    return seen


def _no_constants(name):
    raise Invalid("%s is not JSON" % name)


def _utf8_ok(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _label_name(name, what):
    if not isinstance(name, str) or not LABEL_NAME.match(name):
        raise Invalid("%s name %r is not valid" % (what, name))
    if len(name) > MAX_LABEL_NAME:
        raise Invalid("%s name %r too long" % (what, name[:40]))


def stream_key(labels):
    """A stream's identity: its labels, sorted."""
    return json.dumps(sorted(labels.items()), ensure_ascii=False)


def parse_ts(ts, min_ts):
    if not isinstance(ts, str):
        raise Invalid("timestamp %r is not a string" % (ts,))
    if not ts or not ts.isascii() or not ts.isdigit():
        raise Invalid("timestamp %r is not a decimal integer" % ts)
    if len(ts) > 1 and ts[0] == "0":
        raise Invalid("timestamp %r has a leading zero" % ts)
    v = int(ts)
    if v > INT64_MAX:
        raise Invalid("timestamp %s beyond int64" % ts)
    if v < min_ts:
        raise Invalid("timestamp %s is not in nanoseconds (below %d)" % (ts, min_ts))
    return v


def decode_body(raw, headers, allow_identity=False):
    """The JSON text of a request body, after the header checks."""
    ctype = headers.get("Content-Type")
    if ctype is None:
        raise Invalid("no Content-Type", 415)
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise Invalid("Content-Type %r is not application/json" % ctype, 415)
    enc = (headers.get("Content-Encoding") or "").strip().lower()
    if enc == "gzip":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise Invalid("body is not gzip: %s" % e)
    elif enc in ("", "identity"):
        if not allow_identity:
            raise Invalid("body not gzipped (Content-Encoding %r)" % enc, 415)
    else:
        raise Invalid("Content-Encoding %r not supported" % enc, 415)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid("body is not UTF-8: %s" % e)


def validate_push(text, last_ts=None, accepted=None, min_ts=10 ** 15, refuse_duplicates=False):
    """Checks a push body (JSON text). Returns the entries as dicts
    {ts, labels, line, metadata, _key, _dup} in body order. What was
    accepted before (read, not written): last_ts, stream key -> the latest
    ts; accepted, stream key -> set of (ts, line)."""
    last_ts = last_ts or {}
    accepted = accepted or {}
    try:
        doc = json.loads(text, object_pairs_hook=_no_dupes, parse_constant=_no_constants)
    except ValueError as e:
        raise Invalid("body is not JSON: %s" % e)
    if not isinstance(doc, dict) or set(doc) != {"streams"}:
        raise Invalid("body must be an object with only \"streams\"")
    streams = doc["streams"]
    if not isinstance(streams, list) or not streams:
        raise Invalid("\"streams\" must be a non-empty array")
    entries = []
    last = {}  # stream key -> the latest ts, this request included
    mine = {}  # stream key -> set of (ts, line) of this request
    for si, s in enumerate(streams):
        if not isinstance(s, dict) or not {"stream", "values"} <= set(s) or set(s) - {"stream", "values"}:
            raise Invalid("stream %d: must be {\"stream\": {...}, \"values\": [...]}" % si)
        labels, values = s["stream"], s["values"]
        if not isinstance(labels, dict) or not labels:
            raise Invalid("stream %d: no labels" % si)
        if len(labels) > MAX_LABELS:
            raise Invalid("stream %d: %d labels, at most %d" % (si, len(labels), MAX_LABELS))
        for k, v in labels.items():
            _label_name(k, "label")
            if k.startswith("__"):
                raise Invalid("stream %d: label %r is reserved" % (si, k))
            if not isinstance(v, str):
                raise Invalid("stream %d: label %s is not a string" % (si, k))
            if v == "":
                raise Invalid("stream %d: label %s is empty" % (si, k))
            if not _utf8_ok(v):
                raise Invalid("stream %d: label %s is not valid UTF-8" % (si, k))
            if len(v.encode("utf-8")) > MAX_LABEL_VALUE:
                raise Invalid("stream %d: label %s longer than %d bytes" % (si, k, MAX_LABEL_VALUE))
        if not isinstance(values, list) or not values:
            raise Invalid("stream %d: no values" % si)
        key = stream_key(labels)
        if key not in last and key in last_ts:
            last[key] = last_ts[key]
        mine.setdefault(key, set())
        before = accepted.get(key, ())
        for vi, v in enumerate(values):
            where = "stream %d value %d" % (si, vi)
            if not isinstance(v, list) or len(v) not in (2, 3):
                raise Invalid("%s: must be [ts, line] or [ts, line, {metadata}]" % where)
            ts = parse_ts(v[0], min_ts)
            line = v[1]
            if not isinstance(line, str):
                raise Invalid("%s: the line is not a string" % where)
            if not _utf8_ok(line):
                raise Invalid("%s: the line is not valid UTF-8" % where)
            md = {}
            if len(v) == 3:
                md = v[2]
                if not isinstance(md, dict):
                    raise Invalid("%s: structured metadata is not an object" % where)
                for mk, mv in md.items():
                    _label_name(mk, "%s: structured metadata" % where)
                    if not isinstance(mv, str):
                        raise Invalid("%s: structured metadata %s is not a string" % (where, mk))
                    if not _utf8_ok(mv):
                        raise Invalid("%s: structured metadata %s is not valid UTF-8" % (where, mk))
            dup = (ts, line) in before or (ts, line) in mine[key]
            if dup:
                if refuse_duplicates:
                    raise Invalid("%s: duplicate entry at %d in stream %s" % (where, ts, key))
            elif key in last and ts < last[key]:
                raise Invalid("%s: entry out of order: %d before %d in stream %s"
                              % (where, ts, last[key], key))
            else:
                last[key] = ts
                mine[key].add((ts, line))
            entries.append({"ts": v[0], "labels": labels, "line": line, "metadata": md, "_key": key,
                            "_dup": dup})
    return entries


def parse_action(item):
    """One --fail / control item: ("status", code, retry_after) | ("close",) |
    ("hang", seconds) | ("ok",)."""
    item = item.strip()
    if item in ("", "ok"):
        return ("ok",)
    if item == "close":
        return ("close",)
    if item.startswith("hang:"):
        return ("hang", float(item[5:]))
    code, _, ra = item.partition(":")
    c = int(code)
    if not 100 <= c <= 599:
        raise ValueError("status %d" % c)
    return ("status", c, ra or None)


class Receiver:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.plan = [parse_action(x) for x in args.fail.split(",")] if args.fail else []
        self.n = 0
        self.last_ts = {}       # stream key -> the latest accepted ts
        self.accepted_set = {}  # stream key -> set of (ts, line) accepted
        self.accepted = 0
        self.duplicates = 0
        self.counts = {}
        self.out = open(args.out, "a", encoding="utf-8") if args.out else None
        self.req_log = open(args.requests, "a", encoding="utf-8") if args.requests else None
        self.auth = None
        if args.user is not None or args.password is not None:
            tok = "%s:%s" % (args.user or "", args.password or "")
            self.auth = "Basic " + base64.b64encode(tok.encode("utf-8")).decode("ascii")

    def next_action(self):
        """The request's number and what to do with it (under the lock)."""
        self.n += 1
        if self.plan:
            return self.n, self.plan.pop(0)
        if self.args.control and os.path.exists(self.args.control):
            try:
                with open(self.args.control, encoding="utf-8") as f:
                    return self.n, parse_action(f.readline())
            except (OSError, ValueError) as e:
                sys.stderr.write("loki_receiver: control file: %s\n" % e)
        return self.n, ("ok",)

    def check(self, method, path, headers, raw):
        """Returns the entries, or raises Invalid."""
        if path.split("?")[0] != PUSH_PATH:
            raise Invalid("404 page not found: %s" % path, 404)
        if method != "POST":
            raise Invalid("method %s not allowed" % method, 405)
        if self.auth is not None and headers.get("Authorization") != self.auth:
            raise Invalid("bad or missing basic auth", 401)
        if self.args.tenant is not None and headers.get("X-Scope-OrgID") != self.args.tenant:
            raise Invalid("no org id" if not headers.get("X-Scope-OrgID") else "wrong org id", 401)
        text = decode_body(raw, headers, self.args.allow_identity)
        if not self.args.cross_order:
            return validate_push(text, None, None, self.args.min_ts, self.args.refuse_duplicates)
        return validate_push(text, self.last_ts, self.accepted_set, self.args.min_ts,
                             self.args.refuse_duplicates)

    def record(self, n, method, path, headers, raw, status, reason, entries, nstreams):
        self.counts[status] = self.counts.get(status, 0) + 1
        dups = 0
        if status == 204 and entries:
            for e in entries:
                key = e.pop("_key")
                if e.pop("_dup"):
                    dups += 1
                    continue
                ts = int(e["ts"])
                self.last_ts[key] = max(ts, self.last_ts.get(key, ts))
                self.accepted_set.setdefault(key, set()).add((ts, e["line"]))
                if self.out:
                    e["request"] = n
                    self.out.write(json.dumps(e, ensure_ascii=False) + "\n")
            self.accepted += len(entries) - dups
            self.duplicates += dups
            if self.out:
                self.out.flush()
        if self.req_log:
            keep = ("Content-Type", "Content-Encoding", "Content-Length", "Authorization",
                    "X-Scope-OrgID", "User-Agent", "Expect", "Transfer-Encoding")
            h = {k: headers.get(k) for k in keep if headers.get(k) is not None}
            self.req_log.write(json.dumps({
                "request": n, "method": method, "path": path, "status": status, "reason": reason,
                "headers": h, "bytes": len(raw), "entries": len(entries or []) - dups,
                "duplicates": dups, "streams": nstreams, "at": time.time()}, ensure_ascii=False) + "\n")
            self.req_log.flush()

    def close(self):
        for f in (self.out, self.req_log):
            if f:
                f.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loki-receiver"

    def log_message(self, fmt, *args):  # quiet: the --requests file is the log
        pass

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise Invalid("body too large", 413)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        n = int(n)
        if n > MAX_BODY:
            raise Invalid("body too large", 413)
        return self.rfile.read(n)

    def _answer(self, status, text="", retry_after=None):
        body = (text + "\n").encode("utf-8") if text else b""
        try:
            self.send_response(status)
            if body:
                self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            if body:
                self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            self.close_connection = True

    def _handle(self):
        rx = self.server.rx
        try:
            raw = self._read_body()
        except (Invalid, ValueError) as e:
            self._answer(getattr(e, "status", 400), str(e))
            self.close_connection = True
            return
        with rx.lock:
            n, action = rx.next_action()
        if action[0] == "hang":
            time.sleep(action[1])
        with rx.lock:
            entries, nstreams = [], 0
            try:
                entries = rx.check(self.command, self.path, self.headers, raw)
                nstreams = len({e["_key"] for e in entries})
                status, reason = 204, ""
            except Invalid as e:
                status, reason = e.status, e.reason
            if action[0] == "status":
                status, reason = action[1], "told to answer %d" % action[1]
            elif action[0] == "close":
                status, reason = 0, "told to close without an answer"
            rx.record(n, self.command, self.path, self.headers, raw, status, reason,
                      entries if status == 204 else [], nstreams)
        if status == 0:
            self.close_connection = True
            return
        self._answer(status, reason, action[2] if action[0] == "status" else None)

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle


def wait_listening(stream, timeout=10.0):
    """Reads the receiver's stdout (a pipe) until "listening PORT"; returns PORT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError("loki_receiver exited before listening")
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if line.startswith("listening "):
            return int(line.split()[1])
    raise RuntimeError("loki_receiver: not listening after %.0f s" % timeout)


def read_jsonl(path):
    """The records of a --out or --requests file (none when it does not exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(x) for x in f if x.strip()]
    except FileNotFoundError:
        return []


def main(argv=None):
    ap = argparse.ArgumentParser(description="A checking stand-in for Loki's push API.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", help="accepted entries, JSON lines")
    ap.add_argument("--requests", help="every request, JSON lines")
    ap.add_argument("--fail", default="", help="plan: 500,429:2,close,hang:1.5,ok,...")
    ap.add_argument("--control", help="file whose first line (one item) applies while it exists")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--password-file")
    ap.add_argument("--tenant")
    ap.add_argument("--allow-identity", action="store_true", help="accept bodies not gzipped")
    ap.add_argument("--no-cross-order", dest="cross_order", action="store_false",
                    help="check time order within each request only")
    ap.add_argument("--refuse-duplicates", action="store_true",
                    help="answer 400 to an entry already accepted (Loki drops it silently)")
    ap.add_argument("--min-ts", type=int, default=10 ** 15)
    args = ap.parse_args(argv)
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            args.password = f.readline().rstrip("\r\n")
    try:
        for x in (args.fail.split(",") if args.fail else []):
            parse_action(x)
    except ValueError as e:
        ap.error("--fail: %s" % e)

    rx = Receiver(args)
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    srv.rx = rx

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write("listening %d\n" % srv.server_address[1])
    sys.stdout.flush()
    try:
        srv.serve_forever(poll_interval=0.05)
    finally:
        srv.server_close()
        with rx.lock:
            sys.stderr.write("loki_receiver: requests=%d accepted_entries=%d duplicates=%d statuses=%s\n"
                             % (rx.n, rx.accepted, rx.duplicates, json.dumps(rx.counts, sort_keys=True)))
            rx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
