"""A small harness for tokmon's integration tests.

Starts the real binaries ($TOKMON_BIN, default build/bin) on loopback with a
generated config on free ports in a temporary directory, reads the bus with
tokmon-tap and the collector's counters with `tokmonctl stats --json`, and
stops everything it started by PID when a case ends (also when it fails).
Python 3 standard library only; the cases add python3-msgpack and
python3-statsd where they replay those clients.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("TOKMON_BIN") or os.path.join(REPO, "build", "bin")
PRICES_JSON = os.path.join(REPO, "data", "model_prices.json")
HERE = os.path.dirname(os.path.abspath(__file__))
PG_SH = os.path.join(REPO, "scripts", "pg.sh")
PSQL = "/usr/bin/psql"

# Sanitizer builds (make test) print these on a finding; any is a failure.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ERROR: UndefinedBehaviorSanitizer")


class CaseFailure(AssertionError):
    pass


def check(cond, msg, *args):
    if not cond:
        raise CaseFailure(msg % args if args else msg)


def check_eq(got, want, what):
    if got != want:
        raise CaseFailure("%s: expected %r, got %r" % (what, want, got))


def bin_path(name):
    return os.path.join(BIN, name)


# ---- ports -------------------------------------------------------------------

_handed_out = set()


def free_port(udp=True, tcp=True):
    """A port that is free for TCP and UDP on 127.0.0.1 right now (bound to 0
    by the kernel), never the same one twice in a run."""
    for _ in range(200):
        socks = []
        try:
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
            socks.append(first)
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if tcp and udp:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(u)
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise CaseFailure("no free port found")


# ---- hashing -----------------------------------------------------------------

def fnv1a64(data):
    if isinstance(data, str):
        data = data.encode()
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_topic(user=None, account=None):
    key = user if user else account if account else ""
    return "ev.%02x" % (fnv1a64(key) & 0xff)


# ---- processes ---------------------------------------------------------------

class Proc:
    """A started process: its stderr (and stdout unless piped) go to files in
    the case's directory."""

    def __init__(self, env, name, args, stdout_pipe=False, stdin=None, extra_env=None):
        self.env = env
        self.name = name
        self.args = args
        self.err_path = env.path(name + ".stderr")
        self.out_path = env.path(name + ".stdout")
        self._err = open(self.err_path, "wb")
        self._out = None if stdout_pipe else open(self.out_path, "wb")
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if extra_env:
            e.update(extra_env)
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE if stdout_pipe else self._out,
                                  stderr=self._err, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  env=e, cwd=env.dir)
        self.pid = self.p.pid
        env.procs.append(self)

    def alive(self):
        return self.p.poll() is None

    def stderr(self):
        if not self._err.closed:
            self._err.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self):
        if self._out is None:
            return ""
        if not self._out.closed:
            self._out.flush()
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def pause(self, timeout=5.0):
        """SIGSTOP, and wait until the kernel shows the process stopped, so
        what is sent next is surely waiting in the kernel when it resumes."""
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open("/proc/%d/stat" % self.pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("T", "t"):
                return
            time.sleep(0.001)
        raise CaseFailure("%s (pid %d) did not stop on SIGSTOP" % (self.name, self.pid))

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            if self.wait(timeout) is None:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait()
        return self.p.returncode

    def close_files(self):
        for f in (self._err, self._out):
            if f:
                f.close()


def run(args, timeout=20, env=None, input=None):
    """Runs a command to completion: (status, stdout, stderr)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(args, capture_output=True, timeout=timeout, env=e, input=input)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


class Env:
    """Everything one case starts: a temporary directory and the processes in
    it. close() stops the processes by PID and checks their logs for
    sanitizer reports."""

    def __init__(self, case_name):
        self.name = case_name
        self.dir = tempfile.mkdtemp(prefix="tokmon-it-%s-" % case_name)
        self.procs = []
        self.collectors = []
        self.postgres = []
        self.notes = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def spawn(self, name, args, **kw):
        return Proc(self, name, args, **kw)

    def collector(self, **kw):
        c = Collector(self, **kw)
        self.collectors.append(c)
        return c

    def close(self, failed):
        problems = []
        for p in self.procs:
            if p.alive():
                try:
                    p.stop(timeout=5.0)
                except Exception as e:  # keep stopping the others
                    problems.append("%s: %s" % (p.name, e))
        for p in self.procs:
            p.close_files()
            try:
                text = p.stderr()
            except OSError:
                text = ""
            for mark in SANITIZER_MARKS:
                if mark in text:
                    i = text.index(mark)
                    problems.append("%s (pid %d) sanitizer report: %s" %
                                    (p.name, p.pid, text[max(0, i - 200):i + 600].strip()))
                    break
        # after the processes, so a writer stops before its database
        for pg in self.postgres:
            try:
                pg.close(failed or bool(problems))
            except Exception as e:  # keep closing the others
                problems.append("%s: %s" % (pg.name, e))
        if not failed and not problems:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


# ---- the bus -----------------------------------------------------------------

class Tap:
    """tokmon-tap --sync -n N -t T -e PREFIX...: started and subscribed when
    the constructor returns."""

    def __init__(self, env, cfg, prefixes, n, timeout, name="tap", ready_timeout=10.0):
        self.n = n
        self.timeout = timeout
        args = [bin_path("tokmon-tap"), "-c", cfg, "--sync", "-e", "-n", str(n), "-t", str(timeout)]
        args += list(prefixes)
        self.proc = env.spawn(name, args, stdout_pipe=True)
        self.lines = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if "tokmon-tap: ready" in self.proc.stderr():
                return
            if not self.proc.alive():
                break
            time.sleep(0.01)
        raise CaseFailure("tokmon-tap did not get ready (status %r): %s" %
                          (self.proc.p.poll(), self.proc.stderr().strip()[-500:]))

    def _read(self):
        for line in self.proc.p.stdout:
            self.lines.append(line)

    def wait(self, what="records"):
        """Waits for the tap to exit (count reached or timeout) and returns the
        records. Fails when fewer than n arrived."""
        rc = self.proc.wait(self.timeout + 10)
        if rc is None:
            self.proc.stop()
            raise CaseFailure("tokmon-tap did not exit")
        self._reader.join(5)
        recs = self.records()
        if len(recs) < self.n:
            raise CaseFailure("expected %d %s on the bus, got %d (tap status %r): %s" %
                              (self.n, what, len(recs), rc, summarize(recs)))
        return recs

    def records(self):
        out = []
        for line in list(self.lines):
            line = line.strip()
            if line:
                out.append(json.loads(line))
        return out


def summarize(recs, limit=5):
    parts = []
    for r in recs[:limit]:
        if "name" in r:
            parts.append("%s=%r" % (r.get("name"), r.get("value")))
        else:
            parts.append("%s/%s req=%s" % (r.get("provider"), r.get("model"), r.get("request_id")))
    if len(recs) > limit:
        parts.append("...")
    return "[" + ", ".join(parts) + "]"


class Stats:
    """The collector's counters from `tokmonctl stats --json`."""

    def __init__(self, obj):
        self.obj = obj
        self.counters = obj.get("counters", [])

    def get(self, name, **labels):
        for c in self.counters:
            if c["name"] == name and c.get("labels", {}) == labels:
                return c["value"]
        return 0

    def sum(self, name):
        return sum(c["value"] for c in self.counters if c["name"] == name)

    def by(self, name, label):
        out = {}
        for c in self.counters:
            if c["name"] == name and c["value"]:
                k = c.get("labels", {}).get(label)
                out[k] = out.get(k, 0) + c["value"]
        return out

    def rejected(self):
        return self.by("ingest_rejected_total", "reason")

    def dropped(self):
        return self.by("ingest_dropped_total", "kind")

    def invariant(self):
        """(ok, text) for received = accepted + sum(rejected) + sum(dropped)."""
        rec = self.get("ingest_received_total")
        acc = self.get("ingest_accepted_total")
        rej = self.sum("ingest_rejected_total")
        drop = self.sum("ingest_dropped_total")
        ok = rec == acc + rej + drop
        return ok, ("received %d, accepted %d + rejected %d %s + dropped %d %s = %d" %
                    (rec, acc, rej, self.rejected(), drop, self.dropped(), acc + rej + drop))

    def brief(self):
        return self.invariant()[1]


# ---- the collector -----------------------------------------------------------

class Collector:
    """tokmon-collectd with a generated config: UDP and TCP on one free port,
    a free bus port (and free ports for the other stages' endpoints, which
    tap and tokmonctl also connect to), optionally a unix socket."""

    def __init__(self, env, name="collectd", collectd=None, sections="", unix=False, start=True,
                 udp_port=None, prices=PRICES_JSON, global_=None):
        self.env = env
        self.name = name
        self.port = udp_port or free_port()
        self.bus_port = free_port()
        self.src = "it-" + name
        self.unix_path = env.path(name + ".sock") if unix else ""
        self.cfg_path = env.path(name + ".ini")
        self.proc = None
        self.keys = {
            "udp": "127.0.0.1:%d" % self.port,
            "tcp": "127.0.0.1:%d" % self.port,
            "src": self.src,
            "prices": prices,
            "flush_interval": "2ms",
        }
        if unix:
            self.keys["unix"] = self.unix_path
        if collectd:
            self.keys.update(collectd)
        self.global_keys = {"instance": "it", "state_dir": env.dir, "log_level": "info",
                            "stats_interval": "5s"}
        if global_:
            self.global_keys.update(global_)
        self.bus = {
            "collectd": "tcp://127.0.0.1:%d" % self.bus_port,
            "collectd_replay": "tcp://127.0.0.1:%d" % free_port(udp=False),
            "aggregator": "tcp://127.0.0.1:%d" % free_port(udp=False),
            "aggregator_replay": "tcp://127.0.0.1:%d" % free_port(udp=False),
            "alerter": "tcp://127.0.0.1:%d" % free_port(udp=False),
            "alerter_replay": "tcp://127.0.0.1:%d" % free_port(udp=False),
            "pgwriter": "tcp://127.0.0.1:%d" % free_port(udp=False),
            "pgwriter_replay": "tcp://127.0.0.1:%d" % free_port(udp=False),
        }
        self.sections = sections
        self.write_config()
        # tap and tokmonctl read their own copy, so a case may break the
        # collector's config (SIGHUP tests) without breaking the tools
        self.client_cfg = env.path(name + "-client.ini")
        with open(self.client_cfg, "w") as f:
            f.write(self.config_text())
        if start:
            self.start()

    def config_text(self, sections=None):
        out = ["; generated by tests/integration/harness.py", "[global]"]
        out += ["%s = %s" % kv for kv in self.global_keys.items()]
        out += ["", "[bus]"]
        out += ["%s = %s" % kv for kv in self.bus.items()]
        out += ["", "[collectd]"]
        out += ["%s = %s" % kv for kv in self.keys.items() if kv[1] is not None]
        out += ["", self.sections if sections is None else sections, ""]
        return "\n".join(out)

    def write_config(self, text=None):
        with open(self.cfg_path, "w") as f:
            f.write(self.config_text() if text is None else text)

    def start(self, timeout=10.0, args=()):
        self.proc = self.env.spawn(self.name, [bin_path("tokmon-collectd"), "-c", self.cfg_path] + list(args))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.proc.stderr()
            if 'msg="started"' in log or "msg=started" in log:
                return self
            if not self.proc.alive():
                raise CaseFailure("%s exited with status %r at start: %s" %
                                  (self.name, self.proc.p.returncode, log.strip()[-800:]))
            time.sleep(0.01)
        raise CaseFailure("%s did not log 'started' within %.0f s: %s" % (self.name, timeout, self.proc.stderr()[-800:]))

    def log(self):
        return self.proc.stderr() if self.proc else ""

    def started_field(self, key):
        """A key=value of the 'started' log line (e.g. price_version)."""
        for line in self.log().splitlines():
            if 'msg="started"' in line:
                for tok in line.split():
                    if tok.startswith(key + "="):
                        return tok[len(key) + 1:]
        return None

    # -- input

    def send_udp(self, *datagrams, sock=None):
        s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for d in datagrams:
                s.sendto(d.encode() if isinstance(d, str) else d, ("127.0.0.1", self.port))
        finally:
            if sock is None:
                s.close()

    def send_unix(self, *datagrams):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            for d in datagrams:
                s.sendto(d.encode() if isinstance(d, str) else d, self.unix_path)
        finally:
            s.close()

    def tcp(self, timeout=5.0):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s

    def send_tcp(self, data):
        s = self.tcp()
        try:
            s.sendall(data.encode() if isinstance(data, str) else data)
        finally:
            s.close()

    # -- output

    def tap(self, prefixes, n, timeout=10.0, name=None):
        return Tap(self.env, self.client_cfg, prefixes, n, timeout,
                   name=name or "tap-%s-%d" % (self.name, len(self.env.procs)))

    def stats(self, timeout=0.5, tries=6):
        """The collector's counters (as published when tokmonctl subscribes)."""
        last = ""
        for _ in range(tries):
            rc, out, err = run([bin_path("tokmonctl"), "-c", self.client_cfg, "stats", "--json",
                                "--timeout", str(timeout)], timeout=timeout + 10)
            if rc == 0:
                for obj in json.loads(out):
                    if obj.get("src") == self.src and obj.get("daemon") == "tokmon-collectd":
                        return Stats(obj)
                last = "no tokmon-collectd with src %s in %s" % (self.src, out[:300])
            else:
                last = "tokmonctl stats: status %d: %s" % (rc, err.strip())
        raise CaseFailure(last)

    def wait_stats(self, pred, timeout=8.0, what="counters"):
        """Polls the counters until pred(stats) is true; returns them. Fails
        with the last counters when it never becomes true."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise CaseFailure("%s not reached: %s" % (what, st.brief()))

    def wait_received(self, n, timeout=8.0):
        return self.wait_stats(lambda s: s.get("ingest_received_total") >= n, timeout,
                               "ingest_received_total >= %d" % n)

    def check_invariant(self, st=None):
        st = st or self.stats()
        ok, text = st.invariant()
        check(ok, "%s: counter invariant broken: %s", self.name, text)
        return st

    def stop(self, timeout=5.0):
        return self.proc.stop(timeout) if self.proc else None


# ---- PostgreSQL ----------------------------------------------------------------

def pid_alive(pid):
    """True while pid is a process that has not exited (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Postgres:
    """A private PostgreSQL 15 cluster (scripts/pg.sh) in env.path(name):
    unix socket only, on a free port number, trust authentication, database
    tokmon. start() returns self; stop() and start() again keep the data.
    Env.close() stops it and removes it with `pg.sh destroy` (which also
    removes the directory under /var/tmp that pg.sh uses when postgres
    cannot reach the case's directory); a failed case copies the server log
    to NAME.log in the case's directory and keeps the data, unless it was
    under /var/tmp."""

    def __init__(self, env, name="pg", start=False, timeout=60):
        self.env = env
        self.name = name
        self.dir = env.path(name)
        self.port = free_port(udp=False)
        self.timeout = timeout
        self.conninfo = None
        self.closed = False
        os.makedirs(self.dir, exist_ok=True)
        if os.geteuid() == 0:
            # the postgres user runs the server: let it traverse (not list)
            # the case's directory, so the cluster can live in it; when it
            # still cannot reach it, pg.sh keeps the cluster under /var/tmp
            os.chmod(env.dir, 0o711)
        env.postgres.append(self)
        if start:
            self.start()

    def _pg_sh(self, *args, timeout=None):
        return run([PG_SH] + list(args), timeout=timeout or self.timeout + 20,
                   env={"TOKMON_PG_FAST": "1", "TOKMON_PG_TIMEOUT": str(self.timeout)})

    def start(self):
        rc, out, err = self._pg_sh("start", self.dir, str(self.port))
        lines = out.strip().splitlines()
        if rc != 0 or len(lines) != 1 or not lines[0].startswith("host="):
            raise CaseFailure("pg.sh start %s: status %d: %s%s" % (self.dir, rc, out, err.strip()[-1500:]))
        self.conninfo = lines[0]
        self.port = int(self.conninfo.split("port=")[1].split()[0])
        if err.strip():
            self.env.notes.append(err.strip().splitlines()[-1])
        return self

    def stop(self, timeout=5.0):
        """Fast shutdown; returns when the postmaster process is gone."""
        pid = self.pid()
        rc, out, err = self._pg_sh("stop", self.dir)
        if rc != 0:
            raise CaseFailure("pg.sh stop %s: status %d: %s" % (self.dir, rc, err.strip()[-1500:]))
        # pg_ctl returns once postmaster.pid is gone, a moment before the exit
        deadline = time.monotonic() + timeout
        while pid and pid_alive(pid):
            if time.monotonic() > deadline:
                raise CaseFailure("%s: postmaster %d still running %.0f s after stop" % (self.name, pid, timeout))
            time.sleep(0.01)

    def running(self):
        return self._pg_sh("status", self.dir)[0] == 0

    def pid(self):
        """The postmaster's PID (DIR/data/postmaster.pid), or None."""
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def log(self):
        try:
            with open(os.path.join(self.dir, "log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def psql(self, sql, timeout=20):
        """Runs sql (one or more statements, in one transaction unless it
        says otherwise) with psql and returns the rows they return, each a
        list of strings (NULL and '' are both ""; a value holding a newline
        or a tab splits wrongly: select something simpler)."""
        check(self.conninfo, "%s: psql before start()", self.name)
        rc, out, err = run([PSQL, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                            "-c", sql, self.conninfo], timeout=timeout)
        if rc != 0:
            raise CaseFailure("psql %r: status %d: %s" % (sql[:200], rc, err.strip()[-1000:]))
        if out == "":
            return []
        return [line.split("\t") for line in out[:-1].split("\n")] if out.endswith("\n") else \
            [line.split("\t") for line in out.split("\n")]

    def scalar(self, sql, timeout=20):
        """The single value sql returns (None when it returns no row)."""
        rows = self.psql(sql, timeout)
        check(len(rows) <= 1 and all(len(r) == 1 for r in rows),
              "%s: expected one value from %r, got %r", self.name, sql[:200], rows[:5])
        return rows[0][0] if rows else None

    def close(self, failed):
        """Stops the server; removes the cluster unless the case failed."""
        if self.closed:
            return
        self.closed = True
        verbs = ["destroy"]
        if failed:
            verbs = ["stop"]
            if os.path.exists(os.path.join(self.dir, "home")):  # data under /var/tmp: do not leave it
                verbs.append("destroy")
        for verb in verbs:
            rc, out, err = self._pg_sh(verb, self.dir)
            if rc != 0:
                raise CaseFailure("pg.sh %s %s: status %d: %s" % (verb, self.dir, rc, err.strip()[-800:]))
            if verb == "stop":
                text = self.log()
                if text:
                    with open(self.env.path(self.name + ".log"), "w") as f:
                        f.write(text)


# ---- registry ----------------------------------------------------------------

CASES = []


def case(timeout=30):
    def deco(fn):
        CASES.append((fn.__name__, fn, timeout))
        return fn
    return deco


# ---- the aggregator ----------------------------------------------------------

class Aggregator:
    """tokmon-aggregator reading a Collector's bus, with that collector's
    config plus its own sections. With bus_endpoints (a list, one per shard)
    and query_endpoints, several aggregators share one config (shards)."""

    def __init__(self, env, collector, name="aggregator", sections="", aggregator=None,
                 shard=None, bus_endpoints=None, replay_endpoints=None, query_ports=None,
                 start=True):
        self.env = env
        self.c = collector
        self.name = name
        self.shard = shard  # "i/N" or None
        self.query_ports = query_ports or [free_port(udp=False)]
        keys = {"query": ",".join("tcp://127.0.0.1:%d" % p for p in self.query_ports),
                "snapshot_interval": "1s", "close_delay": "500ms", "lateness": "5m",
                "statsd_interval": "1s", "budget_interval": "500ms", "quota_sweep": "500ms"}
        if aggregator:
            keys.update(aggregator)
        bus = dict(collector.bus)
        if bus_endpoints:  # shards: every shard's config lists them all, the same
            bus["aggregator"] = ",".join(bus_endpoints)
            bus["aggregator_replay"] = ",".join(replay_endpoints)
        self.bus = bus
        text = ["; generated by tests/integration/harness.py", "[global]"]
        text += ["%s = %s" % kv for kv in collector.global_keys.items()]
        text += ["", "[bus]"] + ["%s = %s" % kv for kv in bus.items()]
        text += ["", "[collectd]"] + ["%s = %s" % kv for kv in collector.keys.items() if kv[1] is not None]
        text += ["", "[aggregator]"] + ["%s = %s" % kv for kv in keys.items()]
        text += ["", sections, ""]
        self.cfg_path = env.write(name + ".ini", "\n".join(text))
        self.proc = None
        if start:
            self.start()

    def args(self):
        a = [bin_path("tokmon-aggregator"), "-c", self.cfg_path]
        if self.shard:
            a += ["--shard", self.shard]
        return a

    def start(self, timeout=15.0):
        self.proc = self.env.spawn(self.name, self.args())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.proc.stderr()
            if 'msg="started"' in log:
                return self
            if not self.proc.alive():
                raise CaseFailure("%s exited with status %r at start: %s" %
                                  (self.name, self.proc.p.returncode, log.strip()[-800:]))
            time.sleep(0.01)
        raise CaseFailure("%s did not start within %.0f s: %s" % (self.name, timeout, self.proc.stderr()[-800:]))

    def kill9(self):
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout=10.0):
        return self.proc.stop(timeout) if self.proc else None

    def log(self):
        return self.proc.stderr() if self.proc else ""

    def query(self, req, port=None, timeout=5.0):
        """One question on the query socket (pyzmq, msgpack); the answer as a
        dict. Fails when it does not answer."""
        import msgpack
        import zmq
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect("tcp://127.0.0.1:%d" % (port or self.query_ports[0]))
            s.send(msgpack.packb(req))
            if not s.poll(int(timeout * 1000)):
                raise CaseFailure("%s did not answer %r within %.0f s" % (self.name, req, timeout))
            return msgpack.unpackb(s.recv(), raw=False)
        finally:
            s.close()

    def ctl(self, *args, timeout=20):
        """tokmonctl with this aggregator's config: (status, stdout, stderr)."""
        return run([bin_path("tokmonctl"), "-c", self.cfg_path] + list(args), timeout=timeout)

    def stats(self, timeout=0.8):
        """This aggregator's counters, from `tokmonctl stats --json`."""
        last = ""
        for _ in range(6):
            rc, out, err = self.ctl("stats", "--json", "--timeout", str(timeout))
            if rc == 0:
                for obj in json.loads(out):
                    if obj.get("daemon") == "tokmon-aggregator" and (
                            not self.shard or obj.get("src", "").endswith(".shard" + self.shard.split("/")[0])):
                        return Stats(obj)
                last = "no tokmon-aggregator in %s" % out[:300]
            else:
                last = "tokmonctl stats: status %d: %s" % (rc, err.strip())
        raise CaseFailure(last)


# ---- the PostgreSQL writer ---------------------------------------------------

class Writer:
    """tokmon-pgwriter reading a Collector's bus (its collectors and
    aggregators) into a Postgres, with the collector's config plus a
    [pgwriter] section (database = the cluster's conninfo, src = "it-NAME",
    batch_time 50ms unless pgwriter overrides) and sections (budgets and
    quotas to mirror: give it the aggregator's). bus overrides [bus] keys
    (a second writer needs its own pgwriter endpoints). start() waits until
    it has connected (schema migrated, partitions made) unless told not to."""

    def __init__(self, env, collector, pg, name="pgwriter", pgwriter=None, sections="", bus=None,
                 start=True):
        self.env = env
        self.c = collector
        self.pg = pg
        self.name = name
        self.src = "it-" + name
        keys = {"database": pg.conninfo, "src": self.src, "batch_time": "50ms",
                "reconnect_max": "1s"}
        if pgwriter:
            keys.update(pgwriter)
        self.keys = keys
        self.bus = dict(collector.bus)
        if bus:
            self.bus.update(bus)
        self.sections = sections
        self.cfg_path = env.path(name + ".ini")
        self.write_config()
        self.proc = None
        self.procs = []  # every process started as this writer, oldest first
        if start:
            self.start()

    def config_text(self):
        text = ["; generated by tests/integration/harness.py", "[global]"]
        text += ["%s = %s" % kv for kv in self.c.global_keys.items()]
        text += ["", "[bus]"] + ["%s = %s" % kv for kv in self.bus.items()]
        text += ["", "[collectd]"] + ["%s = %s" % kv for kv in self.c.keys.items() if kv[1] is not None]
        text += ["", "[pgwriter]"] + ["%s = %s" % kv for kv in self.keys.items() if kv[1] is not None]
        text += ["", self.sections, ""]
        return "\n".join(text)

    def write_config(self):
        with open(self.cfg_path, "w") as f:
            f.write(self.config_text())

    def spawn(self):
        """Starts the process without waiting for anything."""
        self.proc = self.env.spawn("%s-%d" % (self.name, len(self.procs)),
                                   [bin_path("tokmon-pgwriter"), "-c", self.cfg_path])
        self.procs.append(self.proc)
        return self.proc

    def start(self, timeout=30.0, connected=True):
        self.spawn()
        return self.wait_started(timeout, connected)

    def wait_started(self, timeout=30.0, connected=True):
        mark = "connected to PostgreSQL" if connected else 'msg="started"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.proc.stderr()
            if mark in log:
                return self
            if not self.proc.alive():
                raise CaseFailure("%s exited with status %r at start: %s" %
                                  (self.name, self.proc.p.returncode, log.strip()[-800:]))
            time.sleep(0.02)
        raise CaseFailure("%s did not log %r within %.0f s: %s" % (self.name, mark, timeout,
                                                                  self.proc.stderr()[-800:]))

    def kill9(self):
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout=10.0):
        return self.proc.stop(timeout) if self.proc else None

    def log(self):
        """The logs of every process started as this writer, in order."""
        return "".join(p.stderr() for p in self.procs)

    def ctl(self, *args, timeout=20):
        return run([bin_path("tokmonctl"), "-c", self.cfg_path] + list(args), timeout=timeout)

    def stats(self, timeout=0.8):
        """This writer's counters, from `tokmonctl stats --json`."""
        last = ""
        for _ in range(6):
            rc, out, err = self.ctl("stats", "--json", "--timeout", str(timeout))
            if rc == 0:
                for obj in json.loads(out):
                    if obj.get("daemon") == "tokmon-pgwriter" and obj.get("src") == self.src:
                        return Stats(obj)
                last = "no tokmon-pgwriter with src %s in %s" % (self.src, out[:300])
            else:
                last = "tokmonctl stats: status %d: %s" % (rc, err.strip())
        raise CaseFailure(last)

    def wait_value(self, sql, pred, timeout=30.0, what=None):
        """Polls sql (one value) until pred(value) is true; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.pg.scalar(sql)
            if pred(v):
                return v
            if not self.proc.alive():
                raise CaseFailure("%s exited (status %r) while waiting for %s: %s" %
                                  (self.name, self.proc.p.returncode, what or sql, self.log()[-800:]))
            if time.monotonic() > deadline:
                raise CaseFailure("%s not reached in %.0f s (last %r): %s" %
                                  (what or sql, timeout, v, self.log()[-600:]))
            time.sleep(0.1)

    def wait_rows(self, n, table="llm_events", timeout=30.0):
        """Waits until table holds at least n rows; returns the count."""
        return int(self.wait_value("select count(*) from %s" % table, lambda v: int(v) >= n, timeout,
                                   "%d rows in %s" % (n, table)))


# ---- the exporter ------------------------------------------------------------

class Exporter:
    """tokmon-exporter with a base config (a collector's or an aggregator's,
    copied as it is) plus an [exporter] section: http on a free port and the
    keys given (api_key: written to NAME.key and set as api_key_file).
    start() waits for its "started" line; metrics() scrapes /metrics."""

    def __init__(self, env, base_cfg, name="exporter", exporter=None, api_key=None, start=True):
        self.env = env
        self.name = name
        self.port = free_port(udp=False)
        self.base = "http://127.0.0.1:%d" % self.port
        keys = {"http": "127.0.0.1:%d" % self.port}
        if api_key:
            self.key_file = env.write(name + ".key", api_key + "\n")
            os.chmod(self.key_file, 0o600)
            keys["api_key_file"] = self.key_file
        keys.update(exporter or {})
        self.keys = keys
        with open(base_cfg) as f:
            text = f.read()
        text += "\n[exporter]\n" + "\n".join("%s = %s" % kv for kv in keys.items()) + "\n"
        self.cfg_path = env.write(name + ".ini", text)
        self.proc = None
        if start:
            self.start()

    def start(self, timeout=15.0):
        self.proc = self.env.spawn(self.name, [bin_path("tokmon-exporter"), "-c", self.cfg_path])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.proc.stderr()
            if 'msg="started"' in log or "msg=started" in log:
                return self
            if not self.proc.alive():
                raise CaseFailure("%s exited with status %r at start: %s" %
                                  (self.name, self.proc.p.returncode, log.strip()[-800:]))
            time.sleep(0.02)
        raise CaseFailure("%s did not start within %.0f s: %s" % (self.name, timeout, self.proc.stderr()[-800:]))

    def stop(self, timeout=10.0):
        return self.proc.stop(timeout) if self.proc else None

    def log(self):
        return self.proc.stderr() if self.proc else ""

    def get(self, path, headers=None, timeout=10.0):
        """(status, headers as a dict with lower-case names, raw body)."""
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path, headers=dict(headers or {}))
            r = c.getresponse()
            body = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, body
        finally:
            c.close()

    def metrics(self, accept=None, gzip=False, timeout=10.0):
        """GET /metrics: (content type, headers, body as text, gunzipped
        when it came gzipped). Fails on any status but 200."""
        h = {}
        if accept:
            h["Accept"] = accept
        if gzip:
            h["Accept-Encoding"] = "gzip"
        st, hd, body = self.get("/metrics", h, timeout)
        check(st == 200, "%s /metrics: status %d: %r", self.name, st, body[:300])
        if hd.get("content-encoding") == "gzip":
            import gzip as gz
            body = gz.decompress(body)
        return hd.get("content-type"), hd, body.decode("utf-8")

    def samples(self, text=None):
        """The samples of a text-format page (scraped now when not given):
        {(name, ((label, value), ...sorted)): float}."""
        if text is None:
            text = self.metrics()[2]
        return parse_samples(text)

    def wait_metric(self, pred, timeout=15.0, what="the metrics"):
        """Scrapes until pred(samples) is true; returns the samples."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.samples()
            if pred(s):
                return s
            if not self.proc.alive():
                raise CaseFailure("%s exited (status %r) while waiting for %s: %s" %
                                  (self.name, self.proc.p.returncode, what, self.log()[-800:]))
            if time.monotonic() > deadline:
                raise CaseFailure("%s not reached in %.0f s" % (what, timeout))
            time.sleep(0.1)


def _unescape_label(v):
    out, i = [], 0
    while i < len(v):
        ch = v[i]
        if ch == "\\" and i + 1 < len(v):
            n = v[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(n, "\\" + n))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_labels(s):
    """k="v",k="v" (escaped values) -> ((k, v), ...) in page order; raises
    ValueError on anything else."""
    out, i = [], 0
    while i < len(s):
        j = s.index("=", i)
        name = s[i:j]
        if s[j + 1] != '"':
            raise ValueError("label %r: no opening quote" % name)
        k = j + 2
        while True:
            if k >= len(s):
                raise ValueError("label %r: no closing quote" % name)
            if s[k] == "\\":
                k += 2
                continue
            if s[k] == '"':
                break
            k += 1
        out.append((name, _unescape_label(s[j + 2:k])))
        i = k + 1
        if i < len(s):
            if s[i] != ",":
                raise ValueError("after label %r: %r" % (name, s[i:i + 10]))
            i += 1
    return tuple(out)


def parse_sample_line(line):
    """name{labels} value [ts] -> (name, labels in page order, value string)."""
    if "{" in line.split(" ", 1)[0]:
        name, rest = line.split("{", 1)
        # the closing brace: the last '}' before the value
        k = rest.rindex("}")
        labels = parse_labels(rest[:k])
        tail = rest[k + 1:]
    else:
        name, tail = line.split(" ", 1)
        tail = " " + tail
        labels = ()
    if not tail.startswith(" "):
        raise ValueError("no space before the value: %r" % line)
    return name, labels, tail[1:].split(" ")[0]


def parse_samples(text):
    """{(name, sorted label pairs): float} of a text 0.0.4 or OpenMetrics page."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, labels, value = parse_sample_line(line)
        out[(name, tuple(sorted(labels)))] = float(value)
    return out


def sample_sum(samples, name, **labels):
    """The sum of the samples named name whose labels include labels."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


# ---- the alerter ---------------------------------------------------------------

class Alerter:
    """tokmon-alerter reading a Collector's bus (its collectors, aggregators
    and writers) with the collector's config plus an [alerter] section:
    control on a free port, src = it-NAME, and small intervals (eval 100ms,
    group_wait 0, group_interval 1s, repeat_interval 1h, resend_interval 1s,
    snapshot_interval 500ms), overridden by alerter=; sections holds its
    [notify.NAME] and [rule.NAME] (and whatever else the case wants in the
    file); global_ overrides [global] keys (timezone). Its state is
    state_path (in the collector's state_dir). start() waits for its
    "started" line; stop() (SIGTERM), kill9(), start() again keep the state.
    alerts() is `tokmonctl alerts --json`; ctl() runs any tokmonctl command
    with its config."""

    def __init__(self, env, collector, name="alerter", alerter=None, sections="", global_=None,
                 start=True):
        self.env = env
        self.c = collector
        self.name = name
        self.src = "it-" + name
        self.control_port = free_port(udp=False)
        self.control = "tcp://127.0.0.1:%d" % self.control_port
        keys = {"control": self.control, "src": self.src, "eval_interval": "100ms",
                "group_wait": "0", "group_interval": "1s", "repeat_interval": "1h",
                "resend_interval": "1s", "snapshot_interval": "500ms"}
        if alerter:
            keys.update(alerter)
        self.keys = keys
        self.global_keys = dict(collector.global_keys)
        if global_:
            self.global_keys.update(global_)
        self.sections = sections
        self.state_path = os.path.join(self.global_keys["state_dir"], "alerter", self.src + ".state")
        self.cfg_path = env.path(name + ".ini")
        self.write_config()
        self.proc = None
        self.procs = []  # every process started as this alerter, oldest first
        if start:
            self.start()

    def config_text(self):
        text = ["; generated by tests/integration/harness.py", "[global]"]
        text += ["%s = %s" % kv for kv in self.global_keys.items()]
        text += ["", "[bus]"] + ["%s = %s" % kv for kv in self.c.bus.items()]
        text += ["", "[collectd]"] + ["%s = %s" % kv for kv in self.c.keys.items() if kv[1] is not None]
        text += ["", "[alerter]"] + ["%s = %s" % kv for kv in self.keys.items() if kv[1] is not None]
        text += ["", self.sections, ""]
        return "\n".join(text)

    def write_config(self):
        with open(self.cfg_path, "w") as f:
            f.write(self.config_text())

    def start(self, timeout=15.0):
        self.proc = self.env.spawn("%s-%d" % (self.name, len(self.procs)),
                                   [bin_path("tokmon-alerter"), "-c", self.cfg_path])
        self.procs.append(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.proc.stderr()
            if 'msg="started"' in log or "msg=started" in log:
                return self
            if not self.proc.alive():
                raise CaseFailure("%s exited with status %r at start: %s" %
                                  (self.name, self.proc.p.returncode, log.strip()[-800:]))
            time.sleep(0.02)
        raise CaseFailure("%s did not start within %.0f s: %s" % (self.name, timeout, self.proc.stderr()[-800:]))

    def kill9(self):
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout=10.0):
        return self.proc.stop(timeout) if self.proc else None

    def log(self):
        """The logs of every process started as this alerter, in order."""
        return "".join(p.stderr() for p in self.procs)

    def ctl(self, *args, timeout=20):
        """tokmonctl with this alerter's config: (status, stdout, stderr)."""
        return run([bin_path("tokmonctl"), "-c", self.cfg_path] + list(args), timeout=timeout)

    def alerts(self, state=None):
        """The alerts it holds (`tokmonctl alerts --json`): a list of
        {alertname, state, severity, fingerprint, labels, annotations, value,
        starts_at, ends_at, ts}."""
        args = ["alerts", "--json"] + (["--state", state] if state else [])
        rc, out, err = self.ctl(*args)
        check(rc == 0, "tokmonctl alerts: status %d: %s", rc, err.strip()[-500:])
        return json.loads(out)["alerts"]

    def wait_alerts(self, pred, timeout=15.0, what="alerts"):
        """alerts() once pred(alerts) holds; fails after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.alerts()
            if pred(got):
                return got
            if not self.proc.alive():
                raise CaseFailure("%s exited (status %r) while waiting for %s: %s" %
                                  (self.name, self.proc.p.returncode, what, self.log()[-800:]))
            if time.monotonic() > deadline:
                raise CaseFailure("%s not reached in %.0f s; the alerter holds %s" %
                                  (what, timeout, json.dumps(got)[:1500]))
            time.sleep(0.1)

    def stats(self, timeout=0.8):
        """This alerter's counters, from `tokmonctl stats --json`."""
        last = ""
        for _ in range(6):
            rc, out, err = self.ctl("stats", "--json", "--timeout", str(timeout))
            if rc == 0:
                for obj in json.loads(out):
                    if obj.get("daemon") == "tokmon-alerter" and obj.get("src") == self.src:
                        return Stats(obj)
                last = "no tokmon-alerter with src %s in %s" % (self.src, out[:300])
            else:
                last = "tokmonctl stats: status %d: %s" % (rc, err.strip())
        raise CaseFailure(last)
