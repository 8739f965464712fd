"""Case 6: signed datagrams (DESIGN section 2, common/auth.h). Keys from
`tokmonctl keygen`; datagrams signed by tokmon-emit --key-file, and built
here with Python's hmac: libsodium crypto_auth is HMAC-SHA-512-256, the
first 32 bytes of HMAC-SHA-512, over everything before the base64 MAC."""

import base64
import hashlib
import hmac
import json
import time

from harness import bin_path, case, check, check_eq, run


def keygen(env, key_id):
    rc, out, err = run([bin_path("tokmonctl"), "keygen", "--id", key_id])
    check(rc == 0, "tokmonctl keygen --id %s: status %d: %s", key_id, rc, err)
    parts = out.split()
    check(len(parts) == 2 and parts[0] == key_id, "tokmonctl keygen printed %r", out)
    key = base64.b64decode(parts[1])
    check_eq(len(key), 32, "key bytes")
    path = env.write("keys-%s" % key_id, out)
    return key, path, out


def sign(payload, key_id, key, ms=None):
    """payload + "\\n|sig:<id>:<unix-ms>:<base64 HMAC-SHA-512-256>"."""
    if isinstance(payload, str):
        payload = payload.encode()
    if ms is None:
        ms = time.time_ns() // 1000000
    head = b"\n|sig:%s:%d:" % (key_id.encode(), ms)
    mac = hmac.new(key, payload + head, hashlib.sha512).digest()[:32]
    return payload + head + base64.b64encode(mac)


def ev(rid, user="signer", **kw):
    e = {"provider": "openai", "model": "gpt-4o", "user": user, "input_tokens": 100, "output_tokens": 10,
         "request_id": rid}
    e.update(kw)
    return json.dumps(e)


def emit_signed(c, key_file, rid, fmt="json"):
    rc, out, err = run([bin_path("tokmon-emit"), "--udp", "127.0.0.1:%d" % c.port, "--key-file", key_file,
                        "--provider", "openai", "--model", "gpt-4o", "--user", "emitter", "--input-tokens", "100",
                        "--output-tokens", "10", "--request-id", rid, "--format", fmt])
    check(rc == 0, "tokmon-emit --key-file --format %s: status %d: %s", fmt, rc, err)


@case(timeout=40)
def signed_required(env):
    """auth = required: tokmon-emit --key-file and Python-signed datagrams
    are accepted with signed=true and key_id=k1 (also a signed TCP block and
    a signed datagram of several records); unsigned → unsigned, tampered →
    bad_signature, another key under k1's id → bad_signature, unknown key id
    → unknown_key, the same datagram again → replay, signed 10 minutes ago
    or ahead → stale, a malformed |sig line → bad_sig_line."""
    k1, k1_path, _ = keygen(env, "k1")
    k2, _, _ = keygen(env, "k2")
    c = env.collector(collectd={"auth": "required", "auth_keys": k1_path})
    check_eq(c.started_field("auth"), "required", "auth mode logged at start")
    good_ids = ["s-emit", "s-emit-mp", "s-py", "s-multi-1", "s-multi-2", "s-multi-3", "s-tcp-1", "s-tcp-2"]
    tap = c.tap(["ev."], len(good_ids), timeout=15)

    emit_signed(c, k1_path, "s-emit")
    emit_signed(c, k1_path, "s-emit-mp", fmt="msgpack")
    good = sign(ev("s-py"), "k1", k1)
    c.send_udp(good)
    c.send_udp(sign("\n".join([ev("s-multi-1"), ev("s-multi-2", user="other"), ev("s-multi-3")]), "k1", k1))
    now = time.time_ns() // 1000000
    bad = [
        (ev("x-unsigned"), "unsigned"),
        (good.replace(b'"input_tokens": 100', b'"input_tokens": 900'), "bad_signature"),
        (sign(ev("x-wrong-key"), "k1", k2), "bad_signature"),
        (sign(ev("x-unknown"), "k2", k2), "unknown_key"),
        (good, "replay"),
        (sign(ev("x-stale"), "k1", k1, ms=now - 600000), "stale"),
        (sign(ev("x-future"), "k1", k1, ms=now + 600000), "stale"),
        (ev("x-malformed").encode() + b"\n|sig:k1:not-a-time:AAAA", "bad_sig_line"),
    ]
    for d, _ in bad:
        c.send_udp(d)
    # TCP: a block of lines ended by its |sig line; then an unsigned line
    s = c.tcp()
    s.sendall(sign(ev("s-tcp-1") + "\n" + ev("s-tcp-2"), "k1", k1) + b"\n")
    s.sendall((ev("x-tcp-unsigned") + "\n").encode())
    recs = tap.wait("signed records")
    check_eq(sorted(r["request_id"] for r in recs), sorted(good_ids), "accepted records")
    for r in recs:
        check(r["signed"] is True and r.get("key_id") == "k1",
              "record %s: signed=%r key_id=%r, expected signed=true key_id=k1", r["request_id"], r["signed"],
              r.get("key_id"))
    want = {}
    for _, reason in bad:
        want[reason] = want.get(reason, 0) + 1
    want["unsigned"] += 1  # the unsigned TCP line, after tcp_block_timeout
    total = len(good_ids) + sum(want.values())
    st = c.wait_stats(lambda st: st.sum("ingest_rejected_total") >= sum(want.values()),
                      what="%d rejections" % sum(want.values()))
    check_eq(st.rejected(), want, "rejections by reason")
    check_eq(st.get("ingest_accepted_total"), len(good_ids), "ingest_accepted_total")
    check_eq(st.get("ingest_received_total"), total, "ingest_received_total")
    check_eq(st.by("ingest_auth_failures_total", "reason"), want, "ingest_auth_failures_total")
    s.close()


@case(timeout=30)
def signed_optional(env):
    """auth = optional: unsigned and signed datagrams are both accepted, the
    signed ones marked signed=true with their key_id; a bad signature is
    still refused (it is not downgraded to unsigned)."""
    k1, k1_path, _ = keygen(env, "k1")
    c = env.collector(collectd={"auth": "optional", "auth_keys": k1_path})
    tap = c.tap(["ev."], 3, timeout=15)
    c.send_udp(ev("o-plain"))
    c.send_udp(sign(ev("o-signed"), "k1", k1))
    c.send_udp(sign(ev("o-bad"), "k1", k1).replace(b"o-bad", b"o-BAD"))
    emit_signed(c, k1_path, "o-emit")
    recs = {r["request_id"]: r for r in tap.wait("records")}
    check_eq(sorted(recs), ["o-emit", "o-plain", "o-signed"], "accepted records")
    check(recs["o-plain"]["signed"] is False and "key_id" not in recs["o-plain"],
          "unsigned record marked: %r", recs["o-plain"])
    for rid in ("o-signed", "o-emit"):
        check(recs[rid]["signed"] is True and recs[rid].get("key_id") == "k1", "record %s: signed=%r key_id=%r",
              rid, recs[rid]["signed"], recs[rid].get("key_id"))
    st = c.wait_received(4)
    check_eq(st.rejected(), {"bad_signature": 1}, "rejections")
    check_eq(st.get("ingest_signed_total"), 2, "ingest_signed_total")


@case(timeout=30)
def signed_tcp_mixed(env):
    """TCP under auth = optional: an unsigned line followed at once by a
    signed block on the same connection. DESIGN: optional "accepts both and
    marks signed ones", so the line is accepted unsigned and the block
    signed, whatever the timing; sent 200 ms apart they are (control), sent
    together they must be too."""
    k1, k1_path, _ = keygen(env, "k1")
    c = env.collector(collectd={"auth": "optional", "auth_keys": k1_path})
    tap = c.tap(["ev."], 4, timeout=5)
    s = c.tcp()
    # control: apart by more than tcp_block_timeout (50 ms)
    s.sendall((ev("t-plain-apart") + "\n").encode())
    time.sleep(0.2)
    s.sendall(sign(ev("t-signed-apart"), "k1", k1) + b"\n")
    time.sleep(0.2)
    # the same bytes in one write
    s.sendall((ev("t-plain-together") + "\n").encode() + sign(ev("t-signed-together"), "k1", k1) + b"\n")
    recs = tap.records()
    deadline = time.monotonic() + 3
    while len(recs) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
        recs = tap.records()
    s.close()
    got = {r["request_id"]: r["signed"] for r in recs}
    st = c.stats()
    check_eq(got, {"t-plain-apart": False, "t-signed-apart": True, "t-plain-together": False,
                   "t-signed-together": True},
             "records and their signed flag (rejected: %s)" % st.rejected())
