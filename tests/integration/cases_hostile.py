"""A million random and mutated datagrams against the real collector: it
neither crashes nor leaks (the sanitizer build reports leaks at exit, which
fails the case), every datagram is accounted for (received or dropped by the
kernel, counted), and every record received is accepted, rejected with a
reason, or dropped, as the counters say."""

import base64
import hashlib
import hmac
import os
import random
import socket
import time

import msgpack

from harness import case, check, check_eq

COUNT = int(os.environ.get("TOKMON_HOSTILE_COUNT", "1000000"))
KEY = bytes(range(32))

BASES = [
    b"llm.tokens:450|c|#provider:openai,model:gpt-4o,user:u1,type:input",
    b"llm.tokens:45|c|@0.5|#provider:anthropic,model:claude-sonnet-4-5,user:u2,type:cache_read\n"
    b"llm.requests:1|c|#provider:openai,model:gpt-4o,status:error\nllm.latency:1250:80|ms|#provider:openai,model:o3",
    b"page.views:3|c|@0.1|#env:prod\nqueue:+4|g\ntemp:-3|g|#dc:1\nusers:alice|s\nt:1:2:3|d|T1700000000|c:abc",
    b"m,env=prod,dc=1:5|ms\nm#a=b:1|h\nm.[k=v]x:2|c\n_e{5,4}:title|text|#t:1\n_sc|svc|0",
    b'{"provider":"openai","model":"gpt-4o","user":"u1","input_tokens":1200,"cache_read_tokens":1000,'
    b'"output_tokens":300,"latency_ms":812.5,"tags":{"env":"prod"}}',
    b'{"provider":"anthropic","model":"claude-opus-4-1","usage":{"input_tokens":10,"output_tokens":20,'
    b'"cache_read_input_tokens":100,"cache_creation":{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":4}}}',
    b'{"gen_ai.system":"gcp.gemini","gen_ai.request.model":"gemini-2.5-pro","usage":{"promptTokenCount":250000,'
    b'"candidatesTokenCount":10,"thoughtsTokenCount":5},"ts":"2026-11-22T10:00:00Z","cost_usd":0.5}',
    msgpack.packb({"provider": "openai", "model": "o3", "user": 42, "input_tokens": 100, "output_tokens": 50,
                   "reasoning_tokens": 30, "latency_ms": 1.5, "tags": {"a": "b", "n": 3}}),
    msgpack.packb({"provider": "p", "model": "m"}) + msgpack.packb({"provider": "x", "model": "y",
                                                                    "usage": {"prompt_tokens": 1}}),
]
SPECIAL = [b"\n", b"\0", b"\xff", b"{", b"}", b":", b"|", b"#", b"@", b",", b"=", b"[", b"]", b'"', b"\\",
           b"\xc0\x80", b"\xed\xa0\x80", b"1e400", b"-1", b"NaN", b"|sig:k1:1:", b"\x80", b"\xdf\xff\xff\xff\xff",
           b"\xdd\x00\x01\x00\x00", b"\r\n", b"99999999999999999999"]


def signed(payload, ms):
    head = payload + b"\n|sig:k1:%d:" % ms
    return head + base64.b64encode(hmac.new(KEY, head, hashlib.sha512).digest()[:32])


def mutate(rnd, d):
    d = bytearray(d)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(7)
        if op == 0 and d:
            i = rnd.randrange(len(d))
            d[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            i = rnd.randrange(len(d) + 1)
            d[i:i] = rnd.choice(SPECIAL)
        elif op == 2 and d:
            i = rnd.randrange(len(d))
            del d[i:i + rnd.randint(1, 8)]
        elif op == 3 and d:
            d = d[:rnd.randrange(len(d))]
        elif op == 4 and d:
            i = rnd.randrange(len(d))
            d[i:i] = d[i:i + rnd.randint(1, 32)]
        elif op == 5:
            d += b"\n" + rnd.choice(BASES)
        else:
            i = rnd.randrange(len(d) + 1)
            d[i:i] = os.urandom(rnd.randint(1, 16))
    return bytes(d)


@case(timeout=240)
def hostile_million(env):
    keys = env.write("keys", "k1 " + base64.b64encode(KEY).decode() + "\n")
    c = env.collector(collectd={"auth": "optional", "auth_keys": keys, "max_line": "4K",
                                "log_reject_every": "100000"})
    rnd = random.Random(20261122)
    now_ms = int(time.time() * 1000)
    pool = list(BASES) + [signed(b, now_ms) for b in BASES[:7]]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    addr = ("127.0.0.1", c.port)
    sent = 0
    t0 = time.monotonic()
    for i in range(COUNT):
        r = rnd.random()
        if r < 0.1:
            d = os.urandom(rnd.randint(0, 512))
        elif r < 0.15:
            d = rnd.choice(pool)  # intact: accepted (signed ones once, then replays)
        else:
            d = mutate(rnd, rnd.choice(pool))
        s.sendto(d[:65000], addr)
        sent += 1
        if i % 2000 == 1999:
            # keep within what the sanitizer build reads; whatever still
            # overflows is counted by the kernel and checked below
            ahead = sent / 60000.0 - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    s.close()
    st = c.wait_stats(lambda st: st.get("ingest_datagrams_total") + st.sum("ingest_kernel_drops_total") >= sent,
                      timeout=60, what="every datagram received or counted as dropped")
    check_eq(st.get("ingest_datagrams_total") + st.sum("ingest_kernel_drops_total"), sent,
             "datagrams received + kernel drops")
    check(c.proc.alive(), "the collector died")
    c.check_invariant(st)
    rej = st.rejected()
    check(st.get("ingest_accepted_total") > 0 and sum(rej.values()) > sent // 2,
          "expected both accepted and rejected records: %s", st.brief())
    for reason in ("bad_json", "bad_msgpack", "bad_value", "bad_signature", "replay", "empty"):
        check(rej.get(reason, 0) > 0, "no %s rejection among %s", reason, rej)
    rc = c.stop(timeout=30)
    check_eq(rc, 0, "exit status after SIGTERM (a leak report makes it non-zero)")
    env.notes.append("%d datagrams in %.1f s: %s" % (sent, time.monotonic() - t0, st.brief()))
