"""The chaos test of the reliable bus (DESIGN section 4): tokmon-collectd
under steady UDP load of a known number of records, a durable subscriber
(tokmon-tap --state --output, an exactly-once consumer) counting what it
applied. The subscriber is SIGKILLed at random moments several times, and
the collector once: a second collector (its own src, bus port and spool) is
started on the same UDP port first (SO_REUSEPORT), then the first is killed
and restarted on its own spool, so it can still serve replays of what it
published. At the end a fresh subscriber reads every spool from the start;
the chaos subscriber must hold exactly the same records, none twice.

chaos_rolling stops the first collector with SIGTERM (a rolling restart):
then not one datagram may be lost. chaos_kill uses SIGKILL: what the killed
collector held unpublished (its socket buffer, a batch not yet flushed) is
gone with it and reported, but everything it published is applied once.
The publishers' high-water mark is small, so subscribers also lose messages
in flight and heal them by replay.

    make chaos                 # CHAOS_RUNS (20) runs of both, longer ones
    TOKMON_CHAOS_RECORDS=...   # records per run (default 20000 in make test)
"""

import json
import os
import random
import signal
import socket
import threading
import time

from harness import bin_path, case, check, check_eq

RECORDS = int(os.environ.get("TOKMON_CHAOS_RECORDS", "20000"))
RATE = int(os.environ.get("TOKMON_CHAOS_RATE", "4000"))
TAP_KILLS = int(os.environ.get("TOKMON_CHAOS_TAP_KILLS", "4"))

BUS = {"sndhwm": "200", "rcvhwm": "200", "spool_fsync": "10ms"}


def sender(port, n, rate, stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    t0 = time.monotonic()
    for i in range(n):
        if stop.is_set():
            break
        ev = {"provider": "openai", "model": "gpt-4o", "user": "u-%d" % (i % 977),
              "request_id": "r-%d" % i, "input_tokens": 100 + i % 50, "output_tokens": 10}
        s.sendto(json.dumps(ev, separators=(",", ":")).encode(), ("127.0.0.1", port))
        ahead = (i + 1) / rate - (time.monotonic() - t0)
        if ahead > 0.002:
            time.sleep(ahead)
    s.close()


def read_ids(path):
    ids = []
    if not os.path.exists(path):
        return ids
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                ids.append(json.loads(line)["request_id"])
    return ids


def tap_config(env, collectors, name):
    """A config for subscribers naming every collector's bus endpoints."""
    a = collectors[0]
    text = a.config_text().replace(
        "collectd = %s" % a.bus["collectd"],
        "collectd = %s" % ", ".join(c.bus["collectd"] for c in collectors)).replace(
        "collectd_replay = %s" % a.bus["collectd_replay"],
        "collectd_replay = %s" % ", ".join(c.bus["collectd_replay"] for c in collectors))
    return env.write(name, text)


def start_tap(env, cfg, state, out, name):
    return env.spawn(name, [bin_path("tokmon-tap"), "-c", cfg, "--state", state, "--output", out,
                            "-e", "ev."])


def chaos(env, kill_collector):
    seed = int(os.environ.get("TOKMON_CHAOS_SEED", "0")) or random.randrange(1 << 30)
    rnd = random.Random(seed)
    env.notes.append("seed %d" % seed)
    a = env.collector(name="collectd-a", collectd={"flush_interval": "5ms"},
                      global_={"stats_interval": "1s"})
    a.bus.update(BUS)
    a.write_config()
    a.proc.stop()
    a.start()
    b = env.collector(name="collectd-b", udp_port=a.port, start=False, collectd={"flush_interval": "5ms"})
    b.bus.update(BUS)
    b.write_config()
    cfg = tap_config(env, [a, b], "tap.ini")
    state, out = env.path("tap.state"), env.path("tap.jsonl")

    taps = [start_tap(env, cfg, state, out, "tap-0")]
    stop = threading.Event()
    th = threading.Thread(target=sender, args=(a.port, RECORDS, RATE, stop), daemon=True)
    duration = RECORDS / RATE
    th.start()
    t0 = time.monotonic()
    # the moments of the chaos, in seconds from the start
    kills = sorted(rnd.uniform(0.05, 0.95) * duration for _ in range(TAP_KILLS))
    pauses = [rnd.uniform(0.05, 0.95) * duration for _ in range(2)]
    handover = rnd.uniform(0.3, 0.7) * duration
    events = [(t, "tap") for t in kills] + [(t, "pause") for t in pauses] + [(handover, "collector")]
    for when, what in sorted(events):
        while time.monotonic() - t0 < when:
            time.sleep(0.005)
        if what == "pause":
            # a subscriber that stops reading for a while: its queue (rcvhwm)
            # and the publisher's (sndhwm) overflow, and replay must heal it
            victim = taps[-1]
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(rnd.uniform(0.3, 0.6))
            os.kill(victim.pid, signal.SIGCONT)
        elif what == "tap":
            victim = taps[-1]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(5)
            time.sleep(rnd.uniform(0, 0.3))
            taps.append(start_tap(env, cfg, state, out, "tap-%d" % len(taps)))
        else:
            b.start()  # the new one is on the port before the old one goes
            if kill_collector:
                os.kill(a.proc.pid, signal.SIGKILL)
                a.proc.wait(5)
            else:
                check_eq(a.proc.stop(10), 0, "collector A's exit status after SIGTERM")
            a.start()  # back on its own spool: it serves replays of what it published
    th.join()
    time.sleep(0.5)

    # a fresh reader of every spool, from the start
    ref = env.spawn("tap-reference", [bin_path("tokmon-tap"), "-c", cfg, "--state", env.path("ref.state"),
                                      "--output", env.path("ref.jsonl"), "-e", "--exit-idle", "2", "ev."])
    check(ref.wait(120) == 0, "the reference tap did not finish: %s", ref.stderr()[-500:])
    want = read_ids(env.path("ref.jsonl"))
    check_eq(len(want), len(set(want)), "records in the spools (each once)")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_ids(out)) < len(want):
        time.sleep(0.2)
    final = taps[-1]
    check_eq(final.stop(10), 0, "the chaos tap's exit status")
    got = read_ids(out)
    dups = len(got) - len(set(got))
    check_eq(dups, 0, "records applied twice")
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    check(not missing and not extra, "chaos tap vs the spools: %d missing (e.g. %s), %d extra",
          len(missing), sorted(missing)[:3], len(extra))
    lost_udp = RECORDS - len(want)
    healed = sum(int(t.stderr().split("(healed ")[1].split(",")[0]) for t in taps
                 if "(healed " in t.stderr())
    if kill_collector:
        # what the killed collector had not yet published: its socket buffer and batches
        check(lost_udp <= RECORDS // 20, "%d of %d records never reached a spool", lost_udp, RECORDS)
    else:
        check_eq(lost_udp, 0, "records lost in a rolling restart")
    env.notes.append("%d records, %d applied once each, %d tap kills, 2 pauses, %d gaps healed by the "
                     "last tap, %d lost with the killed collector" % (RECORDS, len(got), TAP_KILLS, healed,
                                                                      lost_udp))


@case(timeout=180)
def chaos_kill(env):
    chaos(env, kill_collector=True)


@case(timeout=180)
def chaos_rolling(env):
    chaos(env, kill_collector=False)
