#!/usr/bin/python3
"""make bench-pgwriter: how fast tokmon-pgwriter stores priced calls in
PostgreSQL, against psql's plain COPY of the same rows into the same table.

    bench/pgwriter.py [BIN]        (BIN: the built binaries, default build/bin)

One run, about 5 minutes (BENCH_QUICK=1: about 40 s):

 1. A private PostgreSQL 15 (scripts/pg.sh in a temporary directory) with its
    default settings and track_commit_timestamp = on, so that for each row of
    llm_events pg_xact_commit_timestamp(xmin) - ts is the time from the
    collector's receipt of the call (tokmon-emit's demo events carry no ts,
    so ts is the collector's receive time, = recv_ts) to the commit of its
    row.
 2. tokmon-collectd (UDP on a free port, ipc bus in the temporary directory,
    its spool on) and tokmon-pgwriter (the defaults: batch_rows 10000,
    batch_time 500ms), a short warm-up.
 3. Catch-up: the writer is stopped, tokmon-emit puts BENCH_CATCHUP calls
    (400,000) into the collector, which keeps them in its spool; CHECKPOINT;
    the writer starts again and replays them. The time runs from its start to
    the commit timestamp of its last row (the sender is idle: the writer's
    rate without the sender competing for CPU).
 4. Sustained: tokmon-emit --rate R (msgpack, 16 records a datagram) for
    BENCH_STEP_SECONDS (15) each, R stepping up from 5,000 a second. A step
    passes when every call the collector accepted (ingest_accepted_total) is
    a row, the sender kept 95 % of its rate and the p99 delay is under 2 s.
    A failed rate is tried once more; after the second failure one step
    halfway between the best pass and it, time allowing. While a phase runs
    the script reads the writer's pgw_rows_total, not count(*), which would
    load the server being measured.
 5. Ceiling: the writer and the collector stop; the rows are exported with
    psql's \\copy (text), one file for the warm-up and catch-up and one per
    step, llm_events is truncated, and psql's \\copy llm_events (...) FROM
    'file' loads them again in the order the writer wrote them, each file
    timed (a CHECKPOINT before the catch-up's rows and before the steps', as
    the writer had): a ceiling for each figure, on the same rows at the same
    size of table.

Then a markdown table of the figures. Everything runs on 127.0.0.1 and unix
sockets; every process started here is stopped by its PID on exit, error or
Ctrl-C, and the cluster is destroyed.

Knobs: BENCH_QUICK=1, BENCH_STEP_SECONDS, BENCH_RATES ("5000 10000 ..."),
BENCH_CATCHUP, BENCH_DIR (/tmp), BENCH_PERF=1 (perf record -g of the writer
and its PostgreSQL backend during the catch-up; a summary is printed),
BENCH_PG_FAST=1 (the cluster with fsync, synchronous_commit and
full_page_writes off: not the default, reported as such).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "build/bin"))
QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
STEP_SECONDS = float(os.environ.get("BENCH_STEP_SECONDS", "4" if QUICK else "15"))
RATES = [int(x) for x in os.environ.get(
    "BENCH_RATES",
    "20000 60000" if QUICK else "5000 10000 20000 40000 60000 80000 100000 120000 150000").split()]
CATCHUP = int(os.environ.get("BENCH_CATCHUP", "200000" if QUICK else "400000"))
PERF = os.environ.get("BENCH_PERF", "0") == "1"
PG_FAST = os.environ.get("BENCH_PG_FAST", "0") == "1"
LAG_LIMIT = 2.0  # seconds: the p99 delay a step may have
DRAIN_SECONDS = 10 if QUICK else 30  # at most, after a step's sender ends
# no new step after this many seconds from the start, nor past this many rows
# in all (the ceiling loads them all again, at some 90,000 rows/s)
STEPS_UNTIL = 40 if QUICK else 250
STEPS_MAX_ROWS = 6500000
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
PSQL = os.path.join(PGBIN, "psql") if os.access(os.path.join(PGBIN, "psql"), os.X_OK) else "psql"
COLS = ('ts, recv_ts, provider, model, operation, "user", account, project, status, error_type, '
        'request_id, input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, '
        'output_tokens, reasoning_tokens, requests, latency_us, ttft_us, cost_nusd, cost_source, '
        'price_version, http_status, retries, signed, key_id, tags')
CLK = os.sysconf("SC_CLK_TCK")

# the caller's libpq settings must not redirect what this runs
# nor may TOKMON_* (each stage reads them as config overrides): the config
# written here is the whole of it
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TOKMON_"))}
PG_ENV = dict(ENV, PGBIN=PGBIN)
if PG_FAST:
    PG_ENV["TOKMON_PG_FAST"] = "1"


class Interrupted(Exception):
    pass


def on_term(signum, frame):
    raise Interrupted("signal %d" % signum)


T_START = time.monotonic()


def say(*a):
    print(*a, flush=True)


def step_say(text):
    """a progress line, with the seconds since the start"""
    print("%5.0f s %s" % (time.monotonic() - T_START, text), flush=True)


# ---- processes ----------------------------------------------------------------

PROCS = {}  # pid -> (name, Popen)


def start(name, argv, log):
    f = open(log, "ab")
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV)
    f.close()
    PROCS[p.pid] = (name, p)
    return p


def stop(p, sig=signal.SIGTERM, wait=15.0):
    """Stops one process started here, by its PID; KILL after wait seconds."""
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    PROCS.pop(p.pid, None)


def run_timed(argv, timeout):
    """Runs argv to its end; returns (status, output, wall seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=ENV)
    PROCS[p.pid] = ("run", p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p, signal.SIGKILL)
        raise RuntimeError("%s did not finish in %d s" % (argv[0], timeout))
    finally:
        PROCS.pop(p.pid, None)
    wall = time.monotonic() - t0
    return p.returncode, out.decode(errors="replace"), wall


def cpu_of(pid):
    """CPU seconds of a live process (all threads), 0 if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu():
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat)"""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy is user, nice,
    # system, irq and softirq (steal is the hypervisor's, not this machine's)
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK


def pg_cpu(postmaster):
    """CPU seconds of the whole cluster: the postmaster, its live children
    and the children it reaped (its cutime/cstime)."""
    total = 0.0
    try:
        with open("/proc/%d/stat" % postmaster) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            continue
    return total


# ---- PostgreSQL -----------------------------------------------------------------

def psql(conninfo, sql, timeout=120):
    r = subprocess.run([PSQL, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo,
                        "-c", sql], capture_output=True, text=True, timeout=timeout, env=ENV)
    if r.returncode:
        raise RuntimeError("psql: %s: %s" % (sql[:80], r.stderr.strip()))
    return r.stdout.strip()


class Session:
    """One psql kept open for the many small queries (counting rows while a
    phase runs): a new connection each time would fork a backend each time,
    whose CPU would count as the cluster's."""

    def __init__(self, conninfo):
        self.p = subprocess.Popen([PSQL, "-X", "-A", "-t", "-q", "-d", conninfo], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=ENV, bufsize=1)
        PROCS[self.p.pid] = ("psql", self.p)
        self.n = 0

    def query(self, sql):
        self.n += 1
        mark = "__done_%d__" % self.n
        self.p.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + mark + "\n")
        self.p.stdin.flush()
        out = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("psql session ended: %s" % "".join(out)[-500:])
            if line.rstrip("\n") == mark:
                break
            out.append(line)
        text = "".join(out).strip()
        if text.startswith("ERROR") or "\nERROR" in text:
            raise RuntimeError("psql: %s: %s" % (sql[:80], text))
        return text

    def close(self):
        stop(self.p)


def pg_sh(*args, timeout=120):
    r = subprocess.run([os.path.join(REPO, "scripts/pg.sh")] + list(args), capture_output=True,
                       text=True, timeout=timeout, env=PG_ENV)
    if r.returncode:
        raise RuntimeError("scripts/pg.sh %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout.strip()


def postmaster_pid(pgdir):
    with open(os.path.join(pgdir, "data", "postmaster.pid")) as f:
        return int(f.readline())


# ---- tokmon ---------------------------------------------------------------------

def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def udp_bound(port):
    a = "0100007F:%04X" % port
    with open("/proc/net/udp") as f:
        return sum(1 for line in f if line.split()[1:2] == [a])


def stats(cfg, need=("tokmon-collectd",)):
    """counters by daemon: {daemon: {name or name{labels}: value}}. tokmonctl
    waits its whole --timeout for the publishers of [bus] that do not run
    here (aggregator, alerter); every running stage answers a new stats
    subscriber at once, so a short timeout, and again when one is missing."""
    for _ in range(5):
        rc, out, _ = run_timed([os.path.join(BIN, "tokmonctl"), "-c", cfg, "stats", "--json",
                                "--timeout", "0.6"], 20)
        res = {}
        try:
            for st in json.loads(out[out.index("["):]):
                c = res.setdefault(st["daemon"], {})
                for x in st["counters"]:
                    key = x["name"]
                    if x["labels"]:
                        key += "{" + ",".join("%s=%s" % kv for kv in sorted(x["labels"].items())) + "}"
                    c[key] = x["value"]
        except (ValueError, KeyError):
            res = {}
        if all(n in res for n in need):
            return res
    raise RuntimeError("tokmonctl stats: no answer from %s: %s" % (", ".join(need), out.strip()[:500]))


def accepted(cfg):
    return stats(cfg)["tokmon-collectd"]["ingest_accepted_total"]


def d(s0, s1, daemon, name):
    """how much a counter of a daemon grew between two stats() readings"""
    return s1.get(daemon, {}).get(name, 0) - s0.get(daemon, {}).get(name, 0)


def wait_for(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def emit(port, rate, count, timeout):
    """tokmon-emit demo traffic; returns (records sent, achieved rate, CPU s)."""
    argv = [os.path.join(BIN, "tokmon-emit"), "--udp", "127.0.0.1:%d" % port, "--rate", str(rate),
            "--count", str(count), "--format", "msgpack", "--lines-per-datagram", "16",
            "--users", "10000", "--seed", str(int(time.time()) % 100000)]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=ENV)
    PROCS[p.pid] = ("tokmon-emit", p)
    try:
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                stop(p, signal.SIGKILL)
                raise RuntimeError("tokmon-emit did not finish in %d s" % timeout)
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        out = p.stdout.read().decode(errors="replace")
        p.stdout.close()
    finally:
        PROCS.pop(p.pid, None)
    m = re.search(r"sent (\d+) records in \d+ datagrams in ([\d.]+) s", out)
    if p.returncode or not m:
        raise RuntimeError("tokmon-emit: %s" % out.strip())
    sent, secs = int(m.group(1)), float(m.group(2))
    return sent, sent / secs if secs > 0 else 0.0, ru.ru_utime + ru.ru_stime


def log_problems(path, since=0):
    """warn and error lines of a daemon's log from byte offset since."""
    with open(path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [l for l in text.splitlines() if "level=warn" in l or "level=error" in l]


# ---- the run ----------------------------------------------------------------------

def fmt_rate(x):
    if x >= 1e6:
        return "%.2f M" % (x / 1e6)
    if x >= 1e3:
        return "%.1f k" % (x / 1e3) if x < 1e5 else "%.0f k" % (x / 1e3)
    return "%.0f" % x


def pct(a, b):
    return "%.0f %%" % (100.0 * a / b) if b else "n/a"


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    for b in ("tokmon-collectd", "tokmon-pgwriter", "tokmon-emit", "tokmonctl"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            sys.exit("bench/pgwriter.py: %s/%s missing (make all)" % (BIN, b))
    tmp = tempfile.mkdtemp(prefix="pgwbench.", dir=os.environ.get("BENCH_DIR", "/tmp"))
    pgdir = os.path.join(tmp, "pg")
    try:
        return run(tmp, pgdir)
    finally:
        # a second Ctrl-C must not cut the cleaning short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid, (name, p) in list(PROCS.items()):
            stop(p)
        try:
            pg_sh("destroy", pgdir)
        except Exception as e:  # noqa: BLE001 - report, go on cleaning
            print("bench/pgwriter.py: destroying the cluster: %s" % e, file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp, pgdir):
    t_begin = time.monotonic()
    load0 = os.getloadavg()
    say("== bench-pgwriter: %s, %d CPUs, load average %.2f %.2f %.2f%s" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.cpu_count(), *load0,
        ", BENCH_QUICK" if QUICK else ""))

    # -- PostgreSQL, with commit timestamps
    conninfo = pg_sh("start", pgdir)
    psql(conninfo, "ALTER SYSTEM SET track_commit_timestamp = on")
    pg_sh("stop", pgdir)
    conninfo = pg_sh("start", pgdir)
    pgdir_real = open(os.path.join(pgdir, "home")).read().strip() \
        if os.path.exists(os.path.join(pgdir, "home")) else pgdir
    pm = postmaster_pid(pgdir_real)
    names = ["server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
             "shared_buffers", "max_wal_size", "checkpoint_timeout", "wal_compression",
             "track_commit_timestamp"]
    vals = psql(conninfo, "SELECT " + ", ".join("current_setting('%s')" % n for n in names))
    settings = dict(zip(names, vals.split("|")))
    if settings["track_commit_timestamp"] != "on":
        raise RuntimeError("track_commit_timestamp is not on")
    step_say("PostgreSQL %s: %s" % (settings["server_version"], ", ".join(
        "%s=%s" % (n, settings[n]) for n in names[1:])))

    # -- the collector and the writer
    port = free_udp_port()
    cfg = os.path.join(tmp, "tokmon.ini")
    with open(cfg, "w") as f:
        f.write("""; generated by bench/pgwriter.py
[global]
instance = bench
state_dir = {tmp}/state
log_level = info
stats_interval = 1s
[bus]
collectd = ipc://{tmp}/collectd.bus
aggregator = ipc://{tmp}/aggregator.bus
alerter = ipc://{tmp}/alerter.bus
pgwriter = ipc://{tmp}/pgwriter.bus
spool_max_size = 2G
[collectd]
udp = 127.0.0.1:{port}
tcp = off
unix =
src = collectd@bench
prices = {repo}/data/model_prices.json
[pgwriter]
database = "{conninfo}"
src = pgwriter@bench
""".format(tmp=tmp, port=port, repo=REPO, conninfo=conninfo))
    os.makedirs(os.path.join(tmp, "state"))
    clog, wlog = os.path.join(tmp, "collectd.log"), os.path.join(tmp, "pgwriter.log")
    collectd = start("tokmon-collectd", [os.path.join(BIN, "tokmon-collectd"), "-c", cfg], clog)
    if not wait_for(lambda: udp_bound(port) == 1 or collectd.poll() is not None, 10) or \
            collectd.poll() is not None:
        raise RuntimeError("tokmon-collectd did not start: %s" % open(clog).read()[-2000:])

    def start_writer():
        off = os.path.getsize(wlog) if os.path.exists(wlog) else 0
        w = start("tokmon-pgwriter", [os.path.join(BIN, "tokmon-pgwriter"), "-c", cfg], wlog)

        def ready():
            if w.poll() is not None:
                raise RuntimeError("tokmon-pgwriter exited: %s" % open(wlog).read()[-2000:])
            with open(wlog) as f:
                f.seek(off)
                return "connected to PostgreSQL" in f.read()
        if not wait_for(ready, 30, 0.02):
            raise RuntimeError("tokmon-pgwriter did not connect: %s" % open(wlog).read()[-2000:])
        return w

    db = Session(conninfo)

    def rows(where="true"):
        return int(db.query("SELECT count(*) FROM llm_events WHERE " + where))

    def writer_backend():
        v = db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                     "AND datname = current_database() AND pid <> pg_backend_pid() "
                     "AND query NOT LIKE '%pg_stat_activity%'")
        return [int(x) for x in v.split()]

    def pg_counts():
        """(checkpoints, autovacuum + autoanalyze runs on llm_events' partitions)"""
        v = db.query("SELECT (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter), "
                     "(SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) FROM "
                     "pg_stat_user_tables WHERE relname LIKE 'llm_events%')")
        a, b = v.split("|")
        return int(a), int(b)

    def written():
        """rows the writer has committed to llm_events since it started (its
        own counter: polling count(*) would load the server being measured)"""
        return stats(cfg, ("tokmon-pgwriter",))["tokmon-pgwriter"].get(
            "pgw_rows_total{table=llm_events}", 0)

    def bus_counts():
        c = stats(cfg).get("tokmon-collectd", {})
        return c.get("bus_messages_total", 0), c.get("bus_records_total", 0)

    writer = start_writer()
    # warm-up: the schema, the partitions and the positions exist
    emit(port, 5000, 5000, 30)
    acc0 = accepted(cfg)
    if not wait_for(lambda: rows() >= acc0, 20, 0.2):
        raise RuntimeError("the warm-up's rows did not arrive")
    step_say("warm-up: %d rows" % acc0)

    # -- catch-up: the writer down, N calls into the collector's spool, the writer up
    stop(writer)
    base = rows()
    m0, r0 = bus_counts()
    t_emit = time.time()
    sent, _, _ = emit(port, 200000, CATCHUP, 60)
    wait_for(lambda: accepted(cfg) >= acc0 + sent, 20, 0.2)
    acc1 = accepted(cfg)
    catch_n = acc1 - acc0
    m1, r1 = bus_counts()
    db.query("CHECKPOINT")
    time.sleep(1)  # the collector's spool fsync (1 s) and the checkpoint's tail
    perf = None
    pg0, cc0, pgn0, mc0 = pg_cpu(pm), cpu_of(collectd.pid), pg_counts(), machine_cpu()
    t0w = time.time()
    t0 = time.monotonic()
    writer = start_writer()
    if PERF:
        pids = [writer.pid] + writer_backend()
        perf = start("perf", ["perf", "record", "-g", "-F", "999", "-o", os.path.join(tmp, "perf.data"),
                              "-p", ",".join(map(str, pids))], os.path.join(tmp, "perf.log"))
    backend = writer_backend()
    done = wait_for(lambda: written() >= catch_n, 120, 0.2)
    c_w, c_c = cpu_of(writer.pid), cpu_of(collectd.pid) - cc0
    pg_c = pg_cpu(pm) - pg0
    c_be = sum(cpu_of(b) for b in backend)  # its backend since it connected
    c_o = max(machine_cpu() - mc0 - c_w - c_c - pg_c, 0.0)
    time.sleep(0.5)
    pgn1 = pg_counts()
    if perf:
        stop(perf, signal.SIGINT, 30)
    if not done or rows() != base + catch_n:
        raise RuntimeError("catch-up: %d of %d rows after 120 s" % (rows() - base, catch_n))
    # the time from the writer's start to its last commit, from the commit timestamps
    first, last = (float(x) for x in db.query(
        "SELECT extract(epoch FROM min(pg_xact_commit_timestamp(xmin))), "
        "extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) FROM llm_events "
        "WHERE ts >= to_timestamp(%.6f)" % t_emit).split("|"))
    t_catch = last - t0w
    catch_rate = catch_n / t_catch
    step_say("catch-up: %d calls (%d sent; %.1f records a bus message) in the spool, all committed "
        "%.2f s after the writer started (first commit after %.2f s): %s rows/s; CPU: "
        "writer %.0f %%, PostgreSQL %.0f %% (its backend %.0f %%), collector (replay) %.0f %%, "
        "the rest of the machine %.0f %%; "
        "%d checkpoints, %d autovacuum/analyze runs" % (
            catch_n, sent, (r1 - r0) / max(m1 - m0, 1), t_catch, first - t0w, fmt_rate(catch_rate),
            100 * c_w / t_catch, 100 * pg_c / t_catch, 100 * c_be / t_catch, 100 * c_c / t_catch,
            100 * c_o / t_catch,
            pgn1[0] - pgn0[0], pgn1[1] - pgn0[1]))
    catchup = dict(rows=catch_n, secs=t_catch, rate=catch_rate, cpu_w=c_w / t_catch,
                   cpu_pg=pg_c / t_catch, cpu_c=c_c / t_catch, per_msg=(r1 - r0) / max(m1 - m0, 1),
                   first=first - t0w, cpu_be=c_be / catch_n, ckpt=pgn1[0] - pgn0[0],
                   av=pgn1[1] - pgn0[1])
    w_cpu_per_row = c_w / catch_n
    pg_cpu_per_row = pg_c / catch_n

    # -- sustained: steps of rising rate
    time.sleep(1)
    db.query("CHECKPOINT")
    t_steps_wall = time.time()
    steps = []
    rates = list(RATES)
    best, worst = None, None
    bisected = False
    retry_next = False
    i = 0
    while i < len(rates):
        r = rates[i]
        i += 1
        if time.monotonic() + STEP_SECONDS + 5 > T_START + STEPS_UNTIL or \
                sum(x["rows"] for x in steps) + r * STEP_SECONDS > STEPS_MAX_ROWS:
            step_say("(time or rows are up: no step at %d/s)" % r)
            break
        st = {"rate": r, "retry": retry_next, "t0": 0.0}
        retry_next = False
        a0 = accepted(cfg)
        s0 = stats(cfg, ("tokmon-collectd", "tokmon-pgwriter"))
        w0 = s0["tokmon-pgwriter"].get("pgw_rows_total{table=llm_events}", 0)
        cw0, cc0, pgc0, pgn0 = cpu_of(writer.pid), cpu_of(collectd.pid), pg_cpu(pm), pg_counts()
        m0 = machine_cpu()
        wl0 = os.path.getsize(wlog)
        t0w = time.time()
        st["t0"] = t0w
        sent, srate, ecpu = emit(port, r, int(r * STEP_SECONDS), STEP_SECONDS * 3 + 30)
        t_send = time.time() - t0w
        a1 = wait_for(lambda: (accepted(cfg) - a0 >= sent) and accepted(cfg), 3, 0.2) or accepted(cfg)
        acc = a1 - a0
        where = "ts >= to_timestamp(%.6f)" % t0w
        wait_for(lambda: written() - w0 >= acc, DRAIN_SECONDS, 0.1)
        t_all = time.time() - t0w
        cw, cc, pgc = cpu_of(writer.pid) - cw0, cpu_of(collectd.pid) - cc0, pg_cpu(pm) - pgc0
        # the rest: this script's own tools (tokmonctl, psql) and whatever else runs here
        other = max(machine_cpu() - m0 - cw - cc - pgc - ecpu, 0.0)
        pgn1 = pg_counts()
        s1 = stats(cfg, ("tokmon-collectd", "tokmon-pgwriter"))
        q = db.query(
                 "WITH d AS (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts)::float8 AS s "
                 "FROM llm_events WHERE %s) SELECT count(*), percentile_disc(0.5) WITHIN GROUP "
                 "(ORDER BY s), percentile_disc(0.99) WITHIN GROUP (ORDER BY s), max(s) FROM d" % where)
        n, p50, p99, mx = q.split("|")
        n = int(n)
        p50, p99, mx = (float(x) if x else float("nan") for x in (p50, p99, mx))
        # the p99 delay of each third of the step: a writer that falls behind grows it
        thirds = []
        for k in range(3):
            lo, hi = t0w + k * t_send / 3, t0w + (k + 1) * t_send / 3 if k < 2 else 1e12
            v = db.query("SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM "
                         "pg_xact_commit_timestamp(xmin) - ts)) FROM llm_events WHERE "
                         "ts >= to_timestamp(%.6f) AND ts < to_timestamp(%.6f)" % (lo, hi))
            thirds.append(float(v) if v else float("nan"))
        probs = log_problems(wlog, wl0)
        st.update(sent=sent, srate=srate, accepted=acc, rows=n, missing=acc - n, p50=p50, p99=p99,
                  max=mx, batches=d(s0, s1, "tokmon-pgwriter", "pgw_batches_total"),
                  per_msg=d(s0, s1, "tokmon-collectd", "bus_records_total") /
                  max(d(s0, s1, "tokmon-collectd", "bus_messages_total"), 1),
                  cpu_w=cw / t_all, cpu_c=cc / t_all, cpu_pg=pgc / t_all, cpu_e=ecpu / t_send,
                  problems=len(probs), thirds=thirds, cpu_o=other / t_all, ckpt=pgn1[0] - pgn0[0],
                  av=pgn1[1] - pgn0[1])
        why = []
        if srate < 0.95 * r:
            why.append("sender at %s/s" % fmt_rate(srate))
        if n < acc:
            why.append("%d rows missing after %d s" % (acc - n, DRAIN_SECONDS))
        if n > acc:
            why.append("%d rows more than accepted" % (n - acc))
        if not p99 < LAG_LIMIT:
            why.append("p99 delay %.2f s" % p99)
        if sent - acc > sent * 0.001:
            st["collector_lost"] = sent - acc
        st["ok"] = not why
        st["why"] = "; ".join(why)
        steps.append(st)
        step_say("step %7d/s: sent %d (%s/s), accepted %d, rows %d, delay p50 %.3f p99 %.3f max "
                 "%.3f s (p99 by thirds of the step %s), %d batches, %.1f records a bus message, "
                 "%d checkpoints, %d autovacuum/analyze runs, CPU writer %.0f %% collector %.0f %% "
                 "PostgreSQL %.0f %% emit %.0f %% the rest of the machine %.0f %%: %s" % (
                     r, sent, fmt_rate(srate), acc, n, p50, p99, mx,
                     " / ".join("%.2f" % x for x in thirds), st["batches"], st["per_msg"],
                     st["ckpt"], st["av"], 100 * st["cpu_w"], 100 * st["cpu_c"], 100 * st["cpu_pg"],
                     100 * st["cpu_e"], 100 * st["cpu_o"],
                     "pass" if st["ok"] else "FAIL (" + st["why"] + ")"))
        if not st["ok"] and not st.get("retry") and n >= acc:
            # once more before it counts: a neighbour on this shared machine
            # can stall a step (the rest of the machine's CPU says how much)
            st["why"] += "; tried again"
            rates.insert(i, r)
            retry_next = True
            time.sleep(1)
            continue
        if st["ok"]:
            best = st if not best or r > best["rate"] else best
        else:
            worst = st if not worst or r < worst["rate"] else worst
            if n < acc:  # let it finish before the next step
                wait_for(lambda: written() - w0 >= acc, 60, 0.5)
            if not bisected and best and worst and worst["rate"] - best["rate"] > best["rate"] // 8:
                bisected = True
                rates = [(best["rate"] + worst["rate"]) // 2]
                i = 0
            else:
                break
        time.sleep(1)
    chron = list(steps)
    steps.sort(key=lambda s: s["rate"])

    # -- the writer's view, then the ceiling with nothing else running
    wstats = stats(cfg, ("tokmon-collectd", "tokmon-pgwriter"))["tokmon-pgwriter"]
    stop(writer)
    stop(collectd)
    w_problems = log_problems(wlog)
    total = rows()
    # the rows in the order the writer wrote them: the warm-up and the catch-up,
    # then each step's (a step's rows were received after it started, and
    # before the next one started)
    chunks = [("catch-up", "ts < to_timestamp(%.6f)" % t_steps_wall, None)]
    for k, st in enumerate(chron):
        w = "ts >= to_timestamp(%.6f)" % st["t0"]
        if k + 1 < len(chron):
            w += " AND ts < to_timestamp(%.6f)" % chron[k + 1]["t0"]
        chunks.append(("step", w, st))
    files = []
    for k, (what, w, st) in enumerate(chunks):
        f = os.path.join(tmp, "rows%02d.txt" % k)
        rc, out, _ = run_timed([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c",
                                "\\copy (SELECT %s FROM llm_events WHERE %s) TO '%s'" % (COLS, w, f)],
                               300)
        if rc:
            raise RuntimeError("psql \\copy to %s: %s" % (f, out))
        with open(f, "rb") as fh:
            files.append((f, sum(1 for _ in fh)))
    if sum(n for _, n in files) != total:
        raise RuntimeError("exported %d rows of %d" % (sum(n for _, n in files), total))
    db.query("TRUNCATE llm_events")

    def load(f, n):
        """psql's \\copy of file f (n rows) into llm_events, timed"""
        pg0, pgn0 = pg_cpu(pm), pg_counts()
        t0 = time.monotonic()
        p = subprocess.Popen([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c",
                              "\\copy llm_events (%s) FROM '%s'" % (COLS, f)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV)
        PROCS[p.pid] = ("psql", p)
        be, c_be = None, 0.0
        while p.poll() is None and time.monotonic() - t0 < 600:
            if be is None:
                v = db.query("SELECT pid FROM pg_stat_activity WHERE query ILIKE "
                             "'copy%llm_events%from stdin%' AND pid <> pg_backend_pid()")
                be = int(v) if v.strip().isdigit() else None
            elif p.poll() is None:
                c_be = max(c_be, cpu_of(be))  # its last reading before it ends
            time.sleep(0.02)
        if p.poll() is None:
            stop(p, signal.SIGKILL)
            raise RuntimeError("psql \\copy from %s did not finish in 600 s" % f)
        secs = time.monotonic() - t0
        out = p.stdout.read().decode(errors="replace")
        p.stdout.close()
        PROCS.pop(p.pid, None)
        if p.returncode:
            raise RuntimeError("psql \\copy from %s: %s" % (f, out))
        # its backend's CPU reaches the postmaster's cutime when it is reaped; a
        # zombie's /proc entry shows none of it
        if be is not None:
            wait_for(lambda: not os.path.exists("/proc/%d" % be), 5, 0.02)
        pg_c = pg_cpu(pm) - pg0
        pgn1 = pg_counts()
        return dict(rows=n, secs=secs, rate=n / secs if n else 0.0, cpu_pg=pg_c / secs,
                    cpu_be=c_be / max(n, 1), ckpt=pgn1[0] - pgn0[0])

    # a checkpoint before the catch-up's rows and before the steps' rows, as
    # the writer had
    ceil = []
    for k, ((what, w, st), (f, n)) in enumerate(zip(chunks, files)):
        if k <= 1:
            db.query("CHECKPOINT")
        c = load(f, n)
        ceil.append(c)
        if st is not None:
            st["ceil"] = c["rate"]
    if rows() != total:
        raise RuntimeError("after \\copy: %d rows, not %d" % (rows(), total))
    c_steps = dict(rows=sum(c["rows"] for c in ceil[1:]), secs=sum(c["secs"] for c in ceil[1:]),
                   ckpt=sum(c["ckpt"] for c in ceil[1:]))
    c_steps["rate"] = c_steps["rows"] / c_steps["secs"] if c_steps["secs"] else 0.0
    c_steps["cpu_pg"] = sum(c["cpu_pg"] * c["secs"] for c in ceil[1:]) / max(c_steps["secs"], 1e-9)
    step_say("ceiling: psql \\copy of the catch-up's %d rows in %.2f s (%s rows/s, PostgreSQL CPU "
             "%.0f %%, %d checkpoints), then the steps' %d rows, one file a step, in %.2f s (%s rows/s, "
             "%.0f %%, %d checkpoints)" % (
                 ceil[0]["rows"], ceil[0]["secs"], fmt_rate(ceil[0]["rate"]), 100 * ceil[0]["cpu_pg"],
                 ceil[0]["ckpt"], c_steps["rows"], c_steps["secs"], fmt_rate(c_steps["rate"]),
                 100 * c_steps["cpu_pg"], c_steps["ckpt"]))

    perf_summary = None
    if PERF:
        perf_summary = perf_report(tmp)

    # -- the report
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no",
                            "writer", "common"], capture_output=True, text=True).stdout.strip()
    say("")
    say("tokmon-pgwriter against psql \\copy (%s, %d CPUs, commit %s%s%s; load average %.2f at "
        "the start)" % (time.strftime("%Y-%m-%d", time.gmtime()), os.cpu_count(), rev,
                        " + local changes" if dirty else "", ", BENCH_QUICK" if QUICK else "",
                        load0[0]))
    say("")
    say("PostgreSQL %s, %s: fsync=%s, synchronous_commit=%s, full_page_writes=%s, "
        "shared_buffers=%s, max_wal_size=%s, track_commit_timestamp=on; writer: batch_rows 10000, "
        "batch_time 500ms" % (settings["server_version"].split()[0],
                              "TOKMON_PG_FAST (not durable)" if PG_FAST else "the defaults",
                              settings["fsync"], settings["synchronous_commit"],
                              settings["full_page_writes"], settings["shared_buffers"],
                              settings["max_wal_size"]))
    say("")
    say("| rate offered | accepted | rows | delay p50 | p99 | max | p99 by thirds | batches | "
        "checkpoints | CPU writer | CPU PostgreSQL | CPU collectd | CPU emit | CPU rest | "
        "psql \\copy of these rows | |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in steps:
        note = "pass" if s["ok"] else "**fail**: " + s["why"]
        if s.get("collector_lost"):
            note += " (the collector lost %d of %d sent)" % (s["collector_lost"], s["sent"])
        say("| %s/s | %d | %d | %.2f s | %.2f s | %.2f s | %s | %d | %d | %.0f %% | %.0f %% | "
            "%.0f %% | %.0f %% | %.0f %% | %s/s | %s |" % (
                fmt_rate(s["rate"]), s["accepted"], s["rows"], s["p50"], s["p99"], s["max"],
                " / ".join("%.2f" % x for x in s["thirds"]), s["batches"], s["ckpt"],
                100 * s["cpu_w"], 100 * s["cpu_pg"], 100 * s["cpu_c"], 100 * s["cpu_e"],
                100 * s["cpu_o"], fmt_rate(s.get("ceil", 0)), note))
    say("")
    say("(CPU: share of one CPU over the step and its drain; PostgreSQL: every process of the "
        "cluster; rest: the machine's other CPU use, this script's tokmonctl and psql included. "
        "The last column: psql's \\copy of that step's rows, loaded again in the order the writer "
        "wrote them.)")
    say("")
    sus = best["rate"] if best else 0
    sus_ceil = best.get("ceil", 0) if best else 0
    fail_txt = "; %s/s failed" % fmt_rate(worst["rate"]) if worst else \
        "; none failed, so this is a floor"
    say("| | rows | s | rows/s | psql \\copy of the same rows | writer / ceiling |")
    say("|---|---|---|---|---|---|")
    say("| writer, sustained: the highest passing step%s | %d | %.0f | %s | %s | %s |" % (
        fail_txt, best["rows"] if best else 0, STEP_SECONDS, fmt_rate(sus), fmt_rate(sus_ceil),
        pct(sus, sus_ceil)))
    say("| writer, catch-up: %d calls from the collector's spool, no sender | %d | %.2f | %s | %s "
        "| %s |" % (catchup["rows"], catchup["rows"], catchup["secs"], fmt_rate(catchup["rate"]),
                    fmt_rate(ceil[0]["rate"]), pct(catchup["rate"], ceil[0]["rate"])))
    say("| psql \\copy of every step's rows | %d | %.2f | %s | | |" % (
        c_steps["rows"], c_steps["secs"], fmt_rate(c_steps["rate"])))
    say("")
    say("CPU per row, catch-up: writer %.1f µs, PostgreSQL %.1f µs (of which the writer's backend "
        "%.1f µs); psql \\copy of the same rows: PostgreSQL %.1f µs (the COPY's backend %.1f µs). "
        "Writer counters: %s." % (
            1e6 * w_cpu_per_row, 1e6 * pg_cpu_per_row, 1e6 * catchup["cpu_be"],
            1e6 * ceil[0]["cpu_pg"] * ceil[0]["secs"] / max(ceil[0]["rows"], 1),
            1e6 * ceil[0]["cpu_be"],
            ", ".join("%s %s" % (k, wstats.get(k, "?")) for k in (
                "pgw_batches_total", "pgw_batch_errors_total", "pgw_dead_letter_total",
                "pgw_refused_records_total", "pgw_reconnects_total", "bus_gaps_total",
                "bus_replays_total", "bus_messages_lost_total"))))
    goal = min(sus / sus_ceil if sus_ceil else 0,
               catchup["rate"] / ceil[0]["rate"] if ceil[0]["rate"] else 0)
    say("Goal (writer at least half the ceiling): %s%s." % (
        "met" if goal >= 0.5 else "NOT met",
        " (BENCH_QUICK: short phases, where the writer's start and the first batches weigh more, "
        "and a low top step; the full run's figures are the ones to quote)" if QUICK else ""))
    if w_problems:
        say("The writer logged %d warnings or errors; the first:" % len(w_problems))
        for l in w_problems[:5]:
            say("    " + l)
    else:
        say("The writer logged no warning or error.")
    if perf_summary:
        say("")
        say("perf (catch-up; writer and its backend), by process and symbol, self time:")
        say(perf_summary)
    say("")
    took = time.monotonic() - t_begin
    say("Reproduce: %smake bench-pgwriter (this run took %.0f s; the full run takes about 5 minutes, "
        "BENCH_QUICK=1 about 40 s), on a machine as quiet as it can be." % (
            "BENCH_QUICK=1 " if QUICK else "BENCH_PG_FAST=1 " if PG_FAST else "", took))
    return 0


def perf_report(tmp):
    """The share of each process in the samples, then each one's top symbols
    (self time, as a share of that process's samples)."""
    data = os.path.join(tmp, "perf.data")

    def report(*args):
        r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none"] +
                           list(args), capture_output=True, text=True, timeout=300)
        return [l.strip() for l in r.stdout.splitlines() if re.match(r"\s+\d+\.\d+%", l)]
    out = []
    comms = report("--sort", "comm")
    out.append("    by process: " + "; ".join(" ".join(l.split()) for l in comms[:4]))
    for l in comms[:2]:
        comm = l.split(None, 1)[1]
        out.append("    %s, its top symbols:" % comm)
        for x in report("--comms", comm, "--percentage", "relative", "--sort", "dso,sym",
                        "--percent-limit", "2")[:12]:
            out.append("        " + " ".join(x.split()))
    return "\n".join(out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as e:
        print("bench/pgwriter.py: interrupted (%s)" % e, file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print("bench/pgwriter.py: %s" % e, file=sys.stderr)
        sys.exit(1)
