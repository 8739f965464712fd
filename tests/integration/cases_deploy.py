"""The deployment files: every systemd unit under deploy/systemd passes
`systemd-analyze verify` (with the binaries it names pointed at the build),
and its ExecStartPre check accepts the local config."""

import os
import re
import shutil

from harness import BIN, REPO, case, check, run


@case(timeout=60)
def systemd_units_verify(env):
    units_dir = os.path.join(REPO, "deploy", "systemd")
    units = sorted(f for f in os.listdir(units_dir) if f.endswith(".service"))
    check(len(units) >= 2, "expected a unit per stage, found %r", units)
    tool = shutil.which("systemd-analyze")
    check(tool, "systemd-analyze is missing (scripts/deps.sh installs systemd)")
    local_cfg = os.path.join(REPO, "deploy", "local", "tokmon.ini")
    for u in units:
        with open(os.path.join(units_dir, u)) as f:
            text = f.read()
        binary = u[:-len(".service")]
        check(os.path.exists(os.path.join(BIN, binary)), "%s names %s, which is not built", u, binary)
        # the unit as installed, with the build's binaries in place of /usr/bin
        text = re.sub(r"/usr/bin/(tokmon[a-z-]*)", lambda m: os.path.join(BIN, m.group(1)), text)
        path = env.write(u, text)
        rc, out, err = run([tool, "verify", path], timeout=30)
        # another stage's unit named in After= is not an error of this one
        lines = [l for l in (out + err).splitlines() if l.strip() and ".service' not found" not in l
                 and "not found." not in l]
        check(rc == 0 and not lines, "systemd-analyze verify %s: %d %s", u, rc, "\n".join(lines))
        check("Type=notify" in text and "WatchdogSec=" in text, "%s: not Type=notify with a watchdog", u)
        rc, out, err = run([os.path.join(BIN, binary), "-c", local_cfg, "-n"], timeout=20,
                           env={"TOKMON_CONFIG": local_cfg})
        check(rc == 0, "%s -n on deploy/local/tokmon.ini: %s", binary, err)
