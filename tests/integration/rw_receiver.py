"""Receivers of Prometheus remote write for integration tests.

Receiver: an HTTP server in a thread of the test (127.0.0.1, a free port)
that records every request (path, headers, raw body, decoded series, the
problems rw_decode.check_request finds, arrival time) and answers from a
script (say [500, 429] then 204 for ever), so a test sees exactly what
tokmon-exporter sent and how it retried:

    with Receiver(answers=[500, 429], default=204) as rx:
        ... [exporter] remote_write_url = rx.url ...
        reqs = rx.wait(3, timeout=10)          # the first three requests
        check(not reqs[0].problems, ...)        # headers, label order, names
        reqs[2].series, reqs[2].value("llm_requests_total", model="gpt-4o")

Prometheus: a real Prometheus 2.42 with its receiver on, in a directory of
the case (PEERS.md): write_url for the exporter, query(expr) to read back.

    prom = Prometheus(env)          # harness.Env: stopped by PID with the case
    prom.start()
    ... remote_write_url = prom.write_url ...
    prom.wait_query('llm_requests_total{model="gpt-4o"}', timeout=10)

Both are standard library only (python3 in Debian).
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import rw_decode


class Request:
    """One request as received."""

    def __init__(self, method, path, headers, body, status):
        self.method = method
        self.path = path
        self.headers = headers  # [(name, value)] as sent
        self.body = body        # raw bytes (snappy)
        self.status = status    # what the receiver answered
        self.at = time.monotonic()
        self.wall = time.time()
        self.series = []
        self.error = None       # why the body did not decode, or None
        try:
            self.series = rw_decode.decode_body(body)
        except rw_decode.DecodeError as e:
            self.error = str(e)
        self.problems = rw_decode.check_request(headers, body)

    def header(self, name):
        """The value of header name (any case), or None."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self):
        return [k for k, _ in self.headers]

    def find(self, name, **labels):
        """The series named name whose labels include labels."""
        out = []
        for s in self.series:
            d = dict(s.labels)
            if d.get("__name__") == name and all(d.get(k) == v for k, v in labels.items()):
                out.append(s)
        return out

    def value(self, name, **labels):
        """The value of the one sample of the one series that matches, or None."""
        found = self.find(name, **labels)
        if len(found) != 1 or len(found[0].samples) != 1:
            return None
        return found[0].samples[0][0]

    def timestamps(self):
        return sorted({t for s in self.series for _, t in s.samples})

    def __repr__(self):
        return "<%s %s %d series -> %d%s>" % (self.method, self.path, len(self.series), self.status,
                                             " problems=%r" % self.problems if self.problems else "")


class Receiver:
    """A remote write receiver that records; see the module's text.
    answers: the statuses of the first requests, in order; default: the
    status of the rest. Answers of 4xx and 5xx carry a short text body."""

    def __init__(self, answers=(), default=204, path="/api/v1/write", delay=0.0):
        self.answers = list(answers)
        self.default = default
        self.path = path
        self.delay = delay  # seconds before each answer (a slow receiver)
        self._reqs = []
        self._cv = threading.Condition()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with rx._cv:
                    i = len(rx._reqs)
                    status = rx.answers[i] if i < len(rx.answers) else rx.default
                    if self.path != rx.path:
                        status = 404
                    req = Request("POST", self.path, list(self.headers.items()), body, status)
                    rx._reqs.append(req)
                    rx._cv.notify_all()
                if rx.delay:
                    time.sleep(rx.delay)
                text = b"" if status < 300 else ("status %d from the test receiver\n" % status).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        self.url = "http://127.0.0.1:%d%s" % (self.port, path)
        self._th = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05},
                                    daemon=True)
        self._th.start()

    def requests(self):
        with self._cv:
            return list(self._reqs)

    def wait(self, n, timeout=10.0):
        """The first n requests, waiting up to timeout seconds for them;
        raises AssertionError (a case failure) when they do not come."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self._reqs) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("remote write: %d requests after %.1fs, wanted %d" %
                                         (len(self._reqs), timeout, n))
                self._cv.wait(left)
            return list(self._reqs[:n])

    def wait_for(self, pred, timeout=10.0):
        """The first request for which pred(request) is true."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                while seen < len(self._reqs):
                    if pred(self._reqs[seen]):
                        return self._reqs[seen]
                    seen += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("remote write: no matching request among %d after %.1fs" %
                                         (len(self._reqs), timeout))
                self._cv.wait(left)

    def close(self):
        self._srv.shutdown()
        self._srv.server_close()
        self._th.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Prometheus:
    """prometheus --web.enable-remote-write-receiver on 127.0.0.1, its data
    in a directory of its own (env.dir when a harness.Env is given, so the
    case's Env stops it by PID and keeps its log on failure; else a
    temporary directory, stopped by stop())."""

    BINARY = "prometheus"

    def __init__(self, env=None, port=None, name="prometheus", extra_args=()):
        self.env = env
        self.name = name
        self.port = port or _free_port()
        self._own_dir = env is None
        self.dir = env.path(name) if env else tempfile.mkdtemp(prefix="tokmon-prom-")
        os.makedirs(self.dir, exist_ok=True)
        self.base = "http://127.0.0.1:%d" % self.port
        self.write_url = self.base + "/api/v1/write"
        self.extra_args = list(extra_args)
        self.proc = None
        self._popen = None
        self._log = None

    def start(self, timeout=15.0):
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1h\n")
        args = [self.BINARY, "--config.file=" + cfg,
                "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                "--web.listen-address=127.0.0.1:%d" % self.port,
                "--web.enable-remote-write-receiver", "--web.enable-lifecycle",
                "--log.level=warn"] + self.extra_args
        if self.env is not None:
            self.proc = self.env.spawn(self.name, args)
        else:
            self._log = open(os.path.join(self.dir, "prometheus.log"), "wb")
            self._popen = subprocess.Popen(args, stdout=self._log, stderr=self._log,
                                           stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if not self._alive():
                break
            time.sleep(0.05)
        raise AssertionError("prometheus did not become ready on port %d (log in %s)" %
                             (self.port, self.dir))

    def _alive(self):
        if self.proc is not None:
            return self.proc.alive()
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self):
        if self.proc is not None:
            return self.proc.pid
        return self._popen.pid if self._popen else None

    def query(self, expr, at=None):
        """The result of an instant query: [(labels dict, value float)]."""
        q = {"query": expr}
        if at is not None:
            q["time"] = "%.3f" % at
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode(q)
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        if doc.get("status") != "success":
            raise AssertionError("prometheus query %r: %r" % (expr, doc))
        return [(dict(x["metric"]), float(x["value"][1])) for x in doc["data"]["result"]]

    def wait_query(self, expr, timeout=10.0, pred=None):
        """Polls query(expr) until it returns something (and pred(result)
        holds, when given); returns the result."""
        deadline = time.monotonic() + timeout
        res = []
        while time.monotonic() < deadline:
            res = self.query(expr)
            if res and (pred is None or pred(res)):
                return res
            time.sleep(0.1)
        raise AssertionError("prometheus: %r gave %r after %.1fs" % (expr, res, timeout))

    def post(self, body, headers=None):
        """POSTs a body (already snappy-compressed) to the receiver: (status, text)."""
        h = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
             "X-Prometheus-Remote-Write-Version": "0.1.0"}
        h.update(headers or {})
        req = urllib.request.Request(self.write_url, data=body, headers=h, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def stop(self, keep=False):
        """Stops it (by PID). Without an Env, its temporary directory goes
        too unless keep."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        if self._log:
            self._log.close()
            self._log = None
        if self.proc is not None:
            self.proc.stop()
        if self._own_dir and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    """By hand: `rw_receiver.py` records what arrives on a free port and
    prints each request's headers, problems and series as they come."""
    import sys
    rx = Receiver()
    print("listening on", rx.url, flush=True)
    seen = 0
    try:
        while True:
            reqs = rx.wait(seen + 1, timeout=3600)
            for r in reqs[seen:]:
                print(r)
                for k, v in r.headers:
                    if k.lower() != "authorization":
                        print("  %s: %s" % (k, v))
                for p in r.problems:
                    print("  PROBLEM", p)
                for s in r.series[:50]:
                    print("  ", s.labels, s.samples)
                sys.stdout.flush()
            seen = len(reqs)
    except KeyboardInterrupt:
        rx.close()


if __name__ == "__main__":
    main()
