#!/usr/bin/python3
"""tokmon integration tests: runs every case (or the ones named on the
command line), one line per case, and exits non-zero when any fails.

    TOKMON_BIN=$PWD/build/bin /usr/bin/python3 tests/integration/run.py [CASE...]
    /usr/bin/python3 tests/integration/run.py --list

Each case starts the real binaries on loopback (free ports, a temporary
directory), stops them by PID when it ends, and is bounded in time. A failed
case keeps its directory (configs and logs) and prints where it is. After
each case the collector's counters must satisfy
received = accepted + sum(rejected) + sum(dropped).
"""

import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import CaseFailure, Env  # noqa: E402

import cases_statsd  # noqa: E402,F401
import cases_events  # noqa: E402,F401
import cases_tcp  # noqa: E402,F401
import cases_auth  # noqa: E402,F401
import cases_lifecycle  # noqa: E402,F401
import cases_demo  # noqa: E402,F401
import cases_hand  # noqa: E402,F401
import cases_hostile  # noqa: E402,F401
import cases_chaos  # noqa: E402,F401
import cases_bus  # noqa: E402,F401
import cases_aggregator  # noqa: E402,F401
import cases_deploy  # noqa: E402,F401
import cases_pg  # noqa: E402,F401
import cases_pgwriter  # noqa: E402,F401
import cases_exporter_api  # noqa: E402,F401
import cases_exporter  # noqa: E402,F401
import cases_ctl_alerts  # noqa: E402,F401
import cases_alerter  # noqa: E402,F401


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def run_case(name, fn, limit):
    env = Env(name)
    failed, reason = False, ""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        fn(env)
        # the counter invariant, on every collector still running
        for c in env.collectors:
            if c.proc and c.proc.alive():
                c.check_invariant()
    except CaseTimeout:
        failed, reason = True, "timed out after %d s" % limit
    except CaseFailure as e:
        failed, reason = True, str(e)
    except Exception as e:  # a bug in the test itself, or a tool misbehaving
        failed, reason = True, "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc())
    finally:
        signal.alarm(0)
    try:
        signal.alarm(20)
        problems = env.close(failed)
    except CaseTimeout:
        problems = ["timed out stopping the processes"]
    finally:
        signal.alarm(0)
    if problems:
        failed = True
        reason = "; ".join(([reason] if reason else []) + problems)
        env.close(True)
    if failed:
        reason += " [logs in %s]" % env.dir
    elif env.notes:
        reason = "; ".join(env.notes)
    return failed, reason


def main(argv):
    names = [n for n, _, _ in harness.CASES]
    if "--list" in argv:
        print("\n".join(names))
        return 0
    repeat = 1
    for a in argv:
        if a.startswith("--repeat="):
            repeat = int(a.split("=", 1)[1])
    want = [a for a in argv if not a.startswith("-")]
    unknown = [w for w in want if w not in names]
    if unknown:
        print("unknown case(s): %s\nknown: %s" % (", ".join(unknown), ", ".join(names)))
        return 2
    for tool in ("tokmon-collectd", "tokmon-emit", "tokmon-tap", "tokmonctl"):
        if not os.access(harness.bin_path(tool), os.X_OK):
            print("FAIL setup: %s not found (set TOKMON_BIN; build with make)" % harness.bin_path(tool))
            return 1
    selected = [c for c in harness.CASES if not want or c[0] in want] * repeat
    width = max(len(n) for n, _, _ in selected)
    failures = 0
    t0 = time.monotonic()
    for name, fn, limit in selected:
        t = time.monotonic()
        failed, reason = run_case(name, fn, limit)
        dt = time.monotonic() - t
        if failed:
            failures += 1
            print("FAIL %-*s %5.1fs  %s" % (width, name, dt, reason), flush=True)
        else:
            print("ok   %-*s %5.1fs%s" % (width, name, dt, "  " + reason if reason else ""), flush=True)
    total = time.monotonic() - t0
    print("%d of %d cases passed in %.1f s (TOKMON_BIN=%s)" %
          (len(selected) - failures, len(selected), total, harness.BIN))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
