"""Case 7: lifecycle: -n, --help, --version, SIGHUP (prices, a broken
config), SIGUSR1, SIGTERM flushing batched records, two collectors on one
UDP port."""

import json
import re
import signal
import socket
import time

import harness
from harness import bin_path, case, check, check_eq, run
from pricing import Prices, cost_nusd

BINARIES = ("tokmon-collectd", "tokmon-aggregator", "tokmon-pgwriter", "tokmon-exporter", "tokmon-alerter",
            "tokmon-emit", "tokmon-tap", "tokmonctl")


def _wait_log(c, pattern, timeout=5.0, start=0):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        m = rx.search(c.log(), start)
        if m:
            return m
        time.sleep(0.02)
    raise harness.CaseFailure("%s never logged /%s/: %s" % (c.name, pattern, c.log()[start:][-800:]))


def _event(rid, model="gpt-4o", provider="openai", user="life"):
    return json.dumps({"provider": provider, "model": model, "user": user, "input_tokens": 1000,
                       "cache_read_tokens": 200, "output_tokens": 100, "request_id": rid})


def _send_and_read(c, *events):
    tap = c.tap(["ev."], len(events), timeout=10)
    for e in events:
        c.send_udp(e)
    recs = {r["request_id"]: r for r in tap.wait("records")}
    return recs


@case(timeout=30)
def lifecycle_check_config(env):
    """tokmon-collectd -n: a good config exits 0; a bad value, an unknown key
    and a bad auth key file exit non-zero naming file:line."""
    c = env.collector(start=False)
    rc, out, err = run([bin_path("tokmon-collectd"), "-c", c.cfg_path, "-n"])
    check(rc == 0, "-n on a good config: status %d: %s %s", rc, out, err)
    check("valid" in out, "-n on a good config printed %r", out)

    good = c.config_text().splitlines()
    for what, key_line in (("a bad value", "flush_interval = soon"), ("an unknown key", "no_such_key = 1")):
        lines = list(good)
        i = lines.index("[collectd]") + 1
        lines.insert(i, key_line)
        c.write_config("\n".join(lines) + "\n")
        rc, out, err = run([bin_path("tokmon-collectd"), "-c", c.cfg_path, "-n"])
        check(rc != 0, "-n on a config with %s exited 0: %s", what, out)
        check("%s:%d" % (c.cfg_path, i + 1) in err, "-n on a config with %s: no %s:%d in %r", what, c.cfg_path,
              i + 1, err)

    keys = env.write("bad.keys", "# keys\nk1 not-base64!\n")
    c.keys.update({"auth": "required", "auth_keys": keys})
    c.write_config()
    rc, out, err = run([bin_path("tokmon-collectd"), "-c", c.cfg_path, "-n"])
    check(rc != 0, "-n with a bad auth key file exited 0: %s", out)
    check("%s:2" % keys in err, "-n with a bad key file: no %s:2 in %r", keys, err)

    # and the daemon itself refuses to start on a bad config, saying why
    c.keys.update({"auth": "off", "auth_keys": None, "flush_interval": "soon"})
    c.write_config()
    rc, out, err = run([bin_path("tokmon-collectd"), "-c", c.cfg_path], timeout=10)
    check(rc != 0 and c.cfg_path + ":" in err, "start on a bad config: status %d, %r", rc, err)


@case(timeout=30)
def lifecycle_help_version(env):
    """--help and --version on every binary exit 0 and print to stdout."""
    for b in BINARIES:
        rc, out, err = run([bin_path(b), "--help"])
        check(rc == 0 and "Usage" in out, "%s --help: status %d, stdout %r, stderr %r", b, rc, out[:200], err[:200])
        rc, out, err = run([bin_path(b), "--version"])
        check(rc == 0 and re.search(r"\d+\.\d+", out) and b in out,
              "%s --version: status %d, stdout %r, stderr %r", b, rc, out, err)


@case(timeout=40)
def lifecycle_sighup_prices(env):
    """SIGHUP with a [price.NAME] override added: the next record's cost and
    price_version change (an override of a table entry's rate, and a model
    the table does not have); the old price applied before."""
    c = env.collector()
    prices = Prices(harness.PRICES_JSON)
    v1 = c.started_field("price_version")
    recs = _send_and_read(c, _event("h-before"), _event("h-acme-before", provider="acme", model="acme-llm"))
    base = dict(input=1000, cache_read=200, output=100)
    want_before = cost_nusd(prices.rates("gpt-4o"), **base)
    check_eq(recs["h-before"]["cost_nusd"], want_before, "cost before the reload")
    check_eq(recs["h-before"]["price_version"], v1, "price_version before the reload")
    check_eq(recs["h-acme-before"]["cost_source"], "unknown", "cost_source of acme-llm before the reload")

    overrides = {"gpt-4o": {"input_cost_per_token": "0.000003"},
                 "acme/acme-llm": {"litellm_provider": "acme", "input_cost_per_token": "0.0000011",
                                   "output_cost_per_token": "0.0000023"}}
    c.sections = "".join("[price.%s]\n%s\n" % (n, "".join("%s = %s\n" % kv for kv in o.items()))
                         for n, o in overrides.items())
    c.write_config()
    mark = len(c.log())
    c.proc.signal(signal.SIGHUP)
    m = _wait_log(c, r'msg="reloaded".*price_version=(\w+)', start=mark)
    v2 = m.group(1)
    check(v2 != v1, "price_version did not change on reload (%s)", v1)
    after = Prices(harness.PRICES_JSON, overrides)
    recs = _send_and_read(c, _event("h-after"), _event("h-acme-after", provider="acme", model="acme-llm"))
    want_after = cost_nusd(after.rates("gpt-4o"), **base)
    check(want_after != want_before, "test error: the override does not change the cost")
    check_eq(recs["h-after"]["cost_nusd"], want_after, "cost after the reload")
    check_eq(recs["h-after"]["price_version"], v2, "price_version after the reload")
    rates, src = after.lookup("acme", "acme-llm")
    check_eq((recs["h-acme-after"]["cost_source"], recs["h-acme-after"]["cost_nusd"]),
             ("priced", cost_nusd(rates, **base)), "acme-llm after the reload (cost_source, cost_nusd)")
    st = c.stats()
    check_eq(st.get("reloads_total"), 1, "reloads_total")
    check_eq(st.get("reload_errors_total"), 0, "reload_errors_total")


@case(timeout=40)
def lifecycle_sighup_broken(env):
    """SIGHUP with a broken config: the collector keeps running on the old
    config and prices, logs why (file:line), counts reload_errors_total;
    a later SIGHUP with a good config is applied."""
    c = env.collector()
    prices = Prices(harness.PRICES_JSON)
    v1 = c.started_field("price_version")
    good_text = c.config_text()
    broken = good_text + "\n[collectd.oops\nthis is not a key value line\n"
    c.write_config(broken)
    mark = len(c.log())
    c.proc.signal(signal.SIGHUP)
    m = _wait_log(c, r'msg="reload failed[^"]*".*', start=mark)
    check(c.cfg_path + ":" in m.group(0), "the reload error does not name file:line: %s", m.group(0))
    time.sleep(0.1)
    check(c.proc.alive(), "the collector died on a broken config")
    recs = _send_and_read(c, _event("b-after-broken"))
    r = recs["b-after-broken"]
    check_eq((r["cost_nusd"], r["price_version"]),
             (cost_nusd(prices.rates("gpt-4o"), input=1000, cache_read=200, output=100), v1),
             "record after the failed reload (cost_nusd, price_version)")
    st = c.stats()
    check_eq(st.get("reload_errors_total"), 1, "reload_errors_total")
    check_eq(st.get("reloads_total"), 0, "reloads_total")
    # a price table that does not load is refused the same way
    c.keys["prices"] = env.write("broken-prices.json", '{"gpt-4o": {"input_cost_per_token": 1e-6,')
    c.write_config()
    c.proc.signal(signal.SIGHUP)
    _wait_log(c, r'msg="reload failed[^"]*".*broken-prices.json', start=mark + 1)
    c.keys["prices"] = harness.PRICES_JSON
    c.write_config(good_text)
    mark = len(c.log())
    c.proc.signal(signal.SIGHUP)
    _wait_log(c, r'msg="reloaded"', start=mark)
    recs = _send_and_read(c, _event("b-after-fixed"))
    check_eq(recs["b-after-fixed"]["price_version"], v1, "price_version after reloading the same config")
    st = c.stats()
    check_eq((st.get("reload_errors_total"), st.get("reloads_total")), (2, 1), "(reload_errors_total, reloads_total)")


@case(timeout=30)
def lifecycle_sigusr1(env):
    """SIGUSR1 prints the counters to stderr (and the collector keeps going)."""
    c = env.collector()
    _send_and_read(c, _event("u-1"), _event("u-2"), _event("u-3"))
    mark = len(c.log())
    c.proc.signal(signal.SIGUSR1)
    _wait_log(c, r"ingest_accepted_total.*value=3\b", start=mark)
    _wait_log(c, r"ingest_received_total.*value=3\b", start=mark)
    check(c.proc.alive(), "the collector died on SIGUSR1")
    _send_and_read(c, _event("u-4"))


@case(timeout=30)
def lifecycle_sigterm_flush(env):
    """flush_interval = 1000ms and a large batch_max keep records batched
    (none on the bus yet); SIGTERM publishes them, and the datagrams the
    kernel still holds (sent while the collector was stopped), publishes the
    final counters, and exits 0."""
    c = env.collector(collectd={"flush_interval": "1000ms", "batch_max": "65536"})
    tap = c.tap(["ev."], 8, timeout=10)
    # the last stats message is published at exit; how many come before it
    # depends on how subscriptions are noticed, so read until that one
    stats_tap = c.tap(["stats"], 1000, timeout=20)
    for i in range(5):
        c.send_udp(_event("t-%d" % i, user="u%d" % i))
    time.sleep(0.2)
    check_eq(tap.records(), [], "records on the bus before the flush interval")
    # three more held by the kernel: sent while the collector is stopped
    c.proc.pause()
    for i in range(5, 8):
        c.send_udp(_event("t-%d" % i, user="u%d" % i))
    c.proc.signal(signal.SIGTERM)
    c.proc.signal(signal.SIGCONT)
    rc = c.proc.wait(10)
    check(rc is not None, "the collector did not exit within 10 s of SIGTERM")
    check(rc == 0, "the collector exited with status %r on SIGTERM: %s", rc, c.log()[-600:])
    recs = tap.wait("records batched at SIGTERM")
    check_eq(sorted(r["request_id"] for r in recs), ["t-%d" % i for i in range(8)], "records")
    deadline = time.monotonic() + 5
    while True:
        final = [harness.Stats(r) for r in stats_tap.records()]
        final = [f for f in final if f.get("ingest_received_total") == 8]
        if final or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    check(final, "no final stats message with ingest_received_total 8 (got %s)",
          [harness.Stats(r).brief() for r in stats_tap.records()])
    final = final[-1]
    check_eq(final.get("ingest_accepted_total"), 8, "final ingest_accepted_total")
    ok, text = final.invariant()
    check(ok, "counter invariant broken at exit: %s", text)
    check('msg="stopped"' in c.log(), "no 'stopped' log line: %s", c.log()[-300:])


@case(timeout=30)
def lifecycle_sigterm_tcp(env):
    """SIGTERM and TCP: lines that clients sent before the collector was
    told to stop are in the kernel like the datagrams SIGTERM drains; they
    must be read and published too: a line from a connected client, and
    from a client whose connection was not yet accepted. (The collector is
    stopped with SIGSTOP while they send, so the order is certain.)"""
    c = env.collector()
    tap = c.tap(["ev."], 3, timeout=2)
    early = c.tcp()
    early.sendall((_event("tcp-early") + "\n").encode())
    time.sleep(0.2)  # read and published
    c.proc.pause()
    early.sendall((_event("tcp-connected") + "\n").encode())
    late = c.tcp()  # completes in the kernel's backlog
    late.sendall((_event("tcp-new") + "\n").encode())
    c.proc.signal(signal.SIGTERM)
    c.proc.signal(signal.SIGCONT)
    rc = c.proc.wait(10)
    early.close()
    late.close()
    check_eq(rc, 0, "exit status on SIGTERM")
    tap.proc.wait(10)
    got = sorted(r["request_id"] for r in tap.records())
    check_eq(got, ["tcp-connected", "tcp-early", "tcp-new"], "records published")


@case(timeout=30)
def lifecycle_sigterm_idle_client(env):
    """SIGTERM with a TCP client connected that has sent nothing yet: a
    clean exit with status 0 (and, in the sanitizer build, no report)."""
    c = env.collector()
    s = c.tcp()
    c.wait_stats(lambda st: st.get("tcp_clients") == 1, what="tcp_clients == 1")
    rc = c.stop(timeout=10)
    s.close()
    check_eq(rc, 0, "exit status on SIGTERM with an idle client connected")


@case(timeout=40)
def lifecycle_reuseport(env):
    """Two collectors on the same UDP (and TCP) port, SO_REUSEPORT: both
    start, and the datagrams of 64 senders are received once in all."""
    c1 = env.collector(name="c1")
    c2 = env.collector(name="c2", udp_port=c1.port)
    check(c1.proc.alive() and c2.proc.alive(), "both collectors should be running")
    n = 64
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for i, s in enumerate(socks):
            c1.send_udp(_event("r-%d" % i, user="u%d" % i), sock=s)
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 8
    while True:
        s1, s2 = c1.stats(), c2.stats()
        got = (s1.get("ingest_accepted_total"), s2.get("ingest_accepted_total"))
        if sum(got) >= n or time.monotonic() > deadline:
            break
    check_eq(sum(got), n, "records accepted by the two collectors together %r" % (got,))
    check(got[0] > 0 and got[1] > 0, "one collector got every datagram %r", got)


@case(timeout=30)
def lifecycle_env_override(env):
    """TOKMON_<SECTION>_<KEY> overrides the file and wins (DESIGN section 9):
    a bad value from the environment is named as such by -n; the UDP
    listener moves to the port the environment gives; TOKMON_CONFIG is the
    default config path."""
    c = env.collector(start=False)
    rc, out, err = run([bin_path("tokmon-collectd"), "-c", c.cfg_path, "-n"],
                       env={"TOKMON_COLLECTD_FLUSH_INTERVAL": "soon"})
    check(rc != 0 and "TOKMON_COLLECTD_FLUSH_INTERVAL" in err,
          "-n with a bad TOKMON_COLLECTD_FLUSH_INTERVAL: status %d, %r", rc, err)
    rc, out, err = run([bin_path("tokmon-collectd"), "-n"], env={"TOKMON_CONFIG": c.cfg_path})
    check(rc == 0 and c.cfg_path in out, "-n with TOKMON_CONFIG: status %d, %r %r", rc, out, err)
    other = harness.free_port()
    c.proc = env.spawn(c.name, [bin_path("tokmon-collectd"), "-c", c.cfg_path],
                       extra_env={"TOKMON_COLLECTD_UDP": "127.0.0.1:%d" % other})
    _wait_log(c, r'msg="started".*udp=127\.0\.0\.1:%d' % other)
    tap = c.tap(["ev."], 1, timeout=10)
    c.port = other  # send where the environment moved the listener
    c.send_udp(_event("env-1"))
    recs = tap.wait("records on the port from the environment")
    check_eq(recs[0]["request_id"], "env-1", "record")


@case(timeout=30)
def tools_cli(env):
    """The tools' own interface: tokmon-tap exits 3 when --count is not
    reached in --timeout, tokmon-emit --dry-run prints the datagram and
    refuses bad arguments with status 2, tokmonctl keygen refuses a bad key
    id and makes CURVE pairs, tokmonctl stats fails when no stage answers."""
    c = env.collector(start=False)
    rc, out, err = run([bin_path("tokmon-tap"), "-c", c.client_cfg, "-n", "1", "-t", "0.3", "ev."])
    check_eq(rc, 3, "tokmon-tap status when --count is not reached")
    rc, out, err = run([bin_path("tokmon-emit"), "--dry-run", "--provider", "openai", "--model", "gpt-4o",
                        "--input-tokens", "12", "--latency-ms", "3.5", "--tag", "k=v", "--usage",
                        '{"prompt_tokens":12}'])
    check(rc == 0, "tokmon-emit --dry-run: status %d: %s", rc, err)
    obj = json.loads(out)
    check_eq(obj, {"provider": "openai", "model": "gpt-4o", "input_tokens": 12, "latency_ms": 3.5,
                   "tags": {"k": "v"}, "usage": {"prompt_tokens": 12}}, "tokmon-emit --dry-run event")
    for bad in (["--provider", "openai"], ["--provider", "o", "--model", "m", "--input-tokens", "-1"],
                ["--provider", "o", "--model", "m", "--latency-ms", "nan"], ["--format", "xml", "--count", "1"]):
        rc, out, err = run([bin_path("tokmon-emit"), "--dry-run"] + bad)
        check_eq(rc, 2, "tokmon-emit %s status" % " ".join(bad))
    rc, out, err = run([bin_path("tokmonctl"), "keygen", "--id", "bad id!"])
    check_eq(rc, 2, "tokmonctl keygen with a bad id")
    rc, out, err = run([bin_path("tokmonctl"), "keygen", "--curve"])
    check(rc == 0 and re.search(r"^public = .{40}\nsecret = .{40}\n$", out), "keygen --curve: %d %r", rc, out)
    rc, out, err = run([bin_path("tokmonctl"), "-c", c.client_cfg, "stats", "--timeout", "0.3"])
    check(rc == 1 and "no stage answered" in err, "tokmonctl stats with nothing running: %d %r", rc, err)
