"""The reliable bus at its edges: a subscriber whose position the spool no
longer holds is told GONE, counts and logs the loss, and goes on from the
oldest message left; the spool survives a restart with its seq; with
curve = on, a subscriber with an allowed key reads the bus and one with a
key not on the allow-list, or the wrong server key, gets nothing."""

import json
import os
import time

from harness import bin_path, case, check, check_eq, run


def durable_tap(env, cfg, name, extra=()):
    return env.spawn(name, [bin_path("tokmon-tap"), "-c", cfg, "--state", env.path(name + ".state"),
                            "--output", env.path(name + ".jsonl"), "--exit-idle", "1.5", "ev."] + list(extra))


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def emit(c, n, seed=1):
    rc, out, err = run([bin_path("tokmon-emit"), "-c", c.client_cfg, "--rate", "5000", "--count", str(n),
                        "--seed", str(seed)], timeout=60)
    check(rc == 0, "tokmon-emit: %s", err)


@case(timeout=90)
def spool_gone(env):
    # tiny segments and a tiny cap: old messages leave the spool quickly
    c = env.collector(global_={"stats_interval": "1s"})
    c.bus.update({"spool_segment_size": "64K", "spool_max_size": "256K"})
    c.write_config()
    with open(c.client_cfg, "w") as f:
        f.write(c.config_text())
    c.proc.stop()
    c.start()
    emit(c, 200)
    tap = durable_tap(env, c.client_cfg, "t1")
    check_eq(tap.wait(30), 0, "first tap's exit status")
    first = count_lines(env.path("t1.jsonl"))
    check_eq(first, 200, "records read by the first tap")
    # while the tap is away, far more than the spool keeps
    emit(c, 6000, seed=2)
    time.sleep(1.5)  # retention runs in the collector's loop
    tap = durable_tap(env, c.client_cfg, "t1")
    check_eq(tap.wait(60), 0, "second tap's exit status")
    err = tap.stderr()
    check("LOST" in err and "spool no longer holds" in err, "the loss was not reported: %s", err[-600:])
    lost_line = [l for l in err.splitlines() if "applied" in l and "lost" in l][-1]
    check(" lost 1:" in lost_line or "lost 1: " in lost_line, "gaps lost not counted once: %s", lost_line)
    total = count_lines(env.path("t1.jsonl"))
    check(first < total < 6200, "after the loss the tap goes on from the oldest kept: %d records", total)
    st = c.stats()
    check(st.get("bus_replay_gone_total") >= 1, "the collector counted no GONE: %s", st.brief())
    check("spool no longer holds" in c.log(), "the collector did not log the GONE")
    check(st.get("bus_spool_bytes") <= 256 * 1024 + 70 * 1024, "spool over its cap: %d",
          st.get("bus_spool_bytes"))


@case(timeout=60)
def spool_restart(env):
    c = env.collector(global_={"stats_interval": "1s"})
    emit(c, 300)
    st = c.wait_stats(lambda s: s.get("ingest_accepted_total") >= 300)
    last = st.get("bus_last_seq")
    check(last > 0, "no seq published")
    c.stop()
    c.start()
    emit(c, 10, seed=3)
    st2 = c.wait_stats(lambda s: s.get("ingest_accepted_total") >= 10)
    check(st2.get("bus_last_seq") > last, "the seq went back after a restart: %d then %d", last,
          st2.get("bus_last_seq"))
    check_eq(st2.get("bus_spool_oldest_seq"), 1, "the spool's oldest seq after a restart")
    # a fresh reader gets both runs' records, once each
    tap = durable_tap(env, c.client_cfg, "all")
    check_eq(tap.wait(30), 0, "tap exit status")
    check_eq(count_lines(env.path("all.jsonl")), 310, "records in the spool across the restart")


def keygen(env, name):
    rc, out, err = run([bin_path("tokmonctl"), "keygen", "--curve"])
    check(rc == 0, "keygen --curve: %s", err)
    path = env.write(name, out)
    pub = [l.split("=", 1)[1].strip() for l in out.splitlines() if l.startswith("public")][0]
    return path, pub


@case(timeout=60)
def curve(env):
    server, server_pub = keygen(env, "server.key")
    good, good_pub = keygen(env, "good.key")
    bad, _ = keygen(env, "bad.key")
    allow = env.write("allow", "# clients let in\n%s\n" % good_pub)
    c = env.collector(start=False, global_={"stats_interval": "1s"})
    c.bus.update({"curve": "on", "curve_server_key": server, "curve_allow": allow,
                  "curve_server_public": server_pub})
    c.write_config()
    c.start()

    def client_cfg(name, key, server_public=server_pub):
        text = c.config_text().replace("curve_server_key = %s\n" % server, "")
        text = text.replace("curve_server_public = %s" % server_pub,
                            "curve_server_public = %s\ncurve_client_key = %s" % (server_public, key))
        return env.write(name, text)

    ok_cfg = client_cfg("ok.ini", good)
    c.client_cfg = ok_cfg  # the harness's own reads (counters) go with the allowed key
    taps = {
        "allowed": env.spawn("tap-allowed", [bin_path("tokmon-tap"), "-c", ok_cfg, "-n", "50", "-t", "15", "ev."],
                             stdout_pipe=False),
        "not allowed": env.spawn("tap-bad", [bin_path("tokmon-tap"), "-c", client_cfg("bad.ini", bad), "-t", "4",
                                             "ev."]),
        "wrong server key": env.spawn("tap-wrongserver", [bin_path("tokmon-tap"), "-c",
                                                          client_cfg("ws.ini", good, server_public=good_pub),
                                                          "-t", "4", "ev."]),
    }
    time.sleep(1.0)
    rc, out, err = run([bin_path("tokmon-emit"), "-c", ok_cfg, "--rate", "200", "--count", "50"], timeout=30)
    check(rc == 0, "tokmon-emit: %s", err)
    check_eq(taps["allowed"].wait(20), 0, "the allowed tap's exit status")
    check_eq(count_lines(taps["allowed"].out_path), 50, "records read with an allowed key")
    for name in ("not allowed", "wrong server key"):
        taps[name].wait(15)
        check_eq(count_lines(taps[name].out_path), 0, "records read with a %s" % name)
    # the reliable path too: a durable tap with the allowed key replays everything
    tap = durable_tap(env, ok_cfg, "durable")
    check_eq(tap.wait(30), 0, "durable tap exit status")
    check_eq(count_lines(env.path("durable.jsonl")), 50, "records replayed over CURVE")
    rc, out, err = run([bin_path("tokmonctl"), "-c", ok_cfg, "stats", "--json"])
    check(rc == 0 and "tokmon-collectd" in out, "tokmonctl stats over CURVE: %s", err)
    rc, out, err = run([bin_path("tokmonctl"), "-c", client_cfg("bad2.ini", bad), "stats", "--timeout", "1"])
    check(rc != 0, "tokmonctl stats with a key not allowed got an answer: %s", out[:200])


@case(timeout=60)
def spool_lost_publisher(env):
    """A publisher that lost its spool counts from 1 again: a subscriber
    whose position is above the publisher's last seq counts a reset and takes
    the new messages, instead of dropping them as duplicates."""
    import shutil
    c = env.collector(global_={"stats_interval": "1s"})
    emit(c, 300)
    tap = durable_tap(env, c.client_cfg, "t")
    check_eq(tap.wait(30), 0, "first tap's exit status")
    check_eq(count_lines(env.path("t.jsonl")), 300, "records before the loss")
    c.stop()
    shutil.rmtree(os.path.join(env.dir, "spool"))  # the publisher's disk is gone
    c.start()
    emit(c, 20, seed=9)
    time.sleep(0.3)
    tap = durable_tap(env, c.client_cfg, "t")
    check_eq(tap.wait(30), 0, "second tap's exit status")
    check_eq(count_lines(env.path("t.jsonl")), 320, "records after the publisher's reset")
    check("publisher resets 1" in tap.stderr(), "the reset was not counted: %s", tap.stderr()[-300:])
