"""Case 5: the TCP listener: many clients at once, a slow client, a line far
over max_line, idle connections."""

import json
import time

from harness import case, check, check_eq


def _line(rid, user="tcp-user"):
    return (json.dumps({"provider": "openai", "model": "gpt-4o-mini", "user": user, "input_tokens": 100,
                        "output_tokens": 10, "request_id": rid}) + "\n").encode()


@case(timeout=40)
def tcp_many_clients(env):
    """200 clients connected at the same time, each sending one line: 200
    records, 200 connections counted."""
    c = env.collector()
    n = 200
    tap = c.tap(["ev."], n, timeout=20)
    socks = []
    try:
        for i in range(n):
            socks.append(c.tcp())
        for i, s in enumerate(socks):
            s.sendall(_line("many-%03d" % i, user="u%d" % i))
    finally:
        for s in socks:
            s.close()
    recs = tap.wait("records from 200 clients")
    check_eq(sorted(r["request_id"] for r in recs), ["many-%03d" % i for i in range(n)], "request ids")
    st = c.wait_stats(lambda s: s.get("tcp_connections_total") >= n and s.get("tcp_clients") == 0,
                      what="200 connections counted and closed")
    check_eq(st.get("tcp_connections_total"), n, "tcp_connections_total")
    check_eq(st.get("tcp_refused_total"), 0, "tcp_refused_total")
    check_eq(st.get("ingest_accepted_total"), n, "ingest_accepted_total")


@case(timeout=30)
def tcp_slow_client(env):
    """A client that sends half a line and stalls does not delay another
    client's records; its own record arrives when it finishes the line."""
    c = env.collector()
    tap = c.tap(["ev."], 2, timeout=15)
    whole = _line("slow-1", user="slow")
    slow = c.tcp()
    slow.sendall(whole[:40])
    time.sleep(0.2)
    t0 = time.monotonic()
    c.send_tcp(_line("fast-1", user="fast"))
    # the fast record must come out while the slow one is still stalled
    deadline = t0 + 3.0
    while time.monotonic() < deadline and not tap.records():
        time.sleep(0.01)
    recs = tap.records()
    check(recs, "a stalled client held up another client's record for 3 s")
    check_eq(recs[0]["request_id"], "fast-1", "first record")
    dt = time.monotonic() - t0
    check(dt < 1.0, "another client's record took %.2f s behind a stalled client", dt)
    time.sleep(0.3)
    check_eq(len(tap.records()), 1, "records before the slow client finished its line")
    slow.sendall(whole[40:])
    recs = tap.wait("records")
    check_eq([r["request_id"] for r in recs], ["fast-1", "slow-1"], "records")
    slow.close()
    st = c.wait_received(2)
    check_eq(st.get("ingest_accepted_total"), 2, "ingest_accepted_total")
    check_eq(st.rejected(), {}, "rejections")


@case(timeout=30)
def tcp_long_line(env):
    """A client sending a 1 MB line without a newline (max_line 64K): counted
    once as line_too_long, and the same connection keeps working after the
    newline that ends it; other clients are not disturbed."""
    c = env.collector(collectd={"max_line": "64K"})
    tap = c.tap(["ev."], 3, timeout=15)
    s = c.tcp(timeout=10)
    chunk = b"x" * 65536
    for _ in range(16):  # 1 MiB, no newline
        s.sendall(chunk)
    c.send_tcp(_line("other-1", user="other"))
    s.sendall(b"\n" + _line("after-1"))
    s.sendall(_line("after-2"))
    recs = tap.wait("records")
    check_eq(sorted(r["request_id"] for r in recs), ["after-1", "after-2", "other-1"], "records")
    # the connection is still open: one more line goes through
    tap2 = c.tap(["ev."], 1, timeout=10)
    s.sendall(_line("after-3"))
    recs = tap2.wait("records")
    check_eq(recs[0]["request_id"], "after-3", "record after the long line")
    s.close()
    st = c.wait_received(5)
    check_eq(st.rejected(), {"line_too_long": 1}, "rejections")
    check_eq(st.get("ingest_accepted_total"), 4, "ingest_accepted_total")
    check_eq(st.get("ingest_received_total"), 5, "ingest_received_total")


@case(timeout=30)
def tcp_idle_timeout(env):
    """tcp_idle_timeout = 1s: a client that connects and sends nothing is
    closed after about a second; one that keeps sending is not; a client
    that sent a line and went quiet has its line kept when it is closed."""
    c = env.collector(collectd={"tcp_idle_timeout": "1s"})
    tap = c.tap(["ev."], 5, timeout=15)
    idle = c.tcp()
    half = c.tcp()
    busy = c.tcp()
    t0 = time.monotonic()
    half.sendall(_line("idle-after-line", user="half"))
    idle.settimeout(5)
    busy_n = 0
    closed_at = None
    # keep `busy` active every 300 ms while waiting for `idle` to be closed
    idle.setblocking(False)
    while time.monotonic() - t0 < 4.0:
        if busy_n < 3 and time.monotonic() - t0 > 0.3 * (busy_n + 1):
            busy.sendall(_line("busy-%d" % busy_n, user="busy"))
            busy_n += 1
        try:
            data = idle.recv(16)
            if data == b"":
                closed_at = time.monotonic() - t0
                break
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed_at = time.monotonic() - t0
            break
        time.sleep(0.01)
    check(closed_at is not None, "an idle connection was not closed within 4 s (tcp_idle_timeout = 1s)")
    check(0.9 <= closed_at <= 2.5, "the idle connection was closed after %.2f s, not about 1 s", closed_at)
    check_eq(busy_n, 3, "lines the busy client sent before the idle one was closed")
    # busy sent within the last second: still open
    busy.sendall(_line("busy-last", user="busy"))
    recs = tap.wait("records")
    check_eq(sorted(r["request_id"] for r in recs),
             sorted(["idle-after-line", "busy-last", "busy-0", "busy-1", "busy-2"]), "records")
    c.wait_stats(lambda s: s.get("tcp_idle_closed_total") >= 2, what="tcp_idle_closed_total >= 2")
    for s in (idle, half, busy):
        s.close()


@case(timeout=30)
def tcp_max_clients(env):
    """tcp_max_clients = 2: a third connection is closed at once and counted
    in tcp_refused_total; the two others keep working."""
    c = env.collector(collectd={"tcp_max_clients": "2"})
    tap = c.tap(["ev."], 2, timeout=10)
    a, b = c.tcp(), c.tcp()
    c.wait_stats(lambda st: st.get("tcp_clients") == 2, what="tcp_clients == 2")
    third = c.tcp()
    third.settimeout(5)
    try:
        data = third.recv(16)
    except ConnectionResetError:
        data = b""
    check_eq(data, b"", "the third connection (closed by the collector)")
    a.sendall(_line("max-a"))
    b.sendall(_line("max-b"))
    recs = tap.wait("records")
    check_eq(sorted(r["request_id"] for r in recs), ["max-a", "max-b"], "records")
    st = c.stats()
    check_eq(st.get("tcp_refused_total"), 1, "tcp_refused_total")
    for s in (a, b, third):
        s.close()
