"""Cases 2-4: JSON usage events over UDP, TCP and the unix socket (aliases,
provider usage objects, the 200k tier, a reported cost), msgpack usage
events, and bad input of every kind."""

import json
import time

import msgpack

import harness
from harness import case, check, check_eq, shard_topic
from pricing import Prices, cost_nusd

TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                "output_tokens", "reasoning_tokens")


# DESIGN section 4: a usage record has the usage event's field names in their
# normalised meaning, plus ts, recv_ts, latency_us, ttft_us, cost_nusd,
# cost_source, price_version, signed (and key_id where signed)
RECORD_KEYS = {"provider", "model", "operation", "user", "account", "project", "input_tokens",
               "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
               "reasoning_tokens", "latency_us", "ttft_us", "status", "http_status", "error_type",
               "cost_nusd", "cost_source", "price_version", "request_id", "retries", "ts", "recv_ts", "tags",
               "signed"}


def _check_record(rec, exp, prices, price_version, what):
    """exp: the normalised fields expected (tokens default to 0); the cost is
    computed here from the table unless exp gives cost_nusd."""
    missing = RECORD_KEYS - set(rec)
    check(not missing, "%s: keys missing from the record: %s", what, sorted(missing))
    now = time.time_ns()
    check(abs(rec["recv_ts"] - now) < 120e9, "%s: recv_ts %r is not about now", what, rec["recv_ts"])
    if "ts" not in exp:
        check_eq(rec["ts"], rec["recv_ts"], what + " ts (none sent: the receive time)")
    check_eq(rec.get("requests", 1), exp.get("requests", 1), what + " requests")
    for k in TOKEN_FIELDS:
        check_eq(rec.get(k), exp.get(k, 0), "%s %s" % (what, k))
    for k, v in exp.items():
        if k in TOKEN_FIELDS or k == "nusd":
            continue
        check_eq(rec.get(k), v, "%s %s" % (what, k))
    check_eq(rec["topic"], shard_topic(exp.get("user", rec.get("user")), rec.get("account")),
             what + " topic (shard)")
    if "cost_nusd" not in exp:
        rates, src = prices.lookup(rec["provider"], rec["model"])
        want = cost_nusd(rates, **{k.replace("_tokens", ""): exp.get(k, 0) for k in TOKEN_FIELDS})
        check_eq(rec["cost_nusd"], want, what + " cost_nusd")
        check_eq(rec["cost_source"], src, what + " cost_source")
        check_eq(rec["price_version"], price_version, what + " price_version")
        if "nusd" in exp:  # worked out by hand as well
            check_eq(want, exp["nusd"], what + " cost by hand vs pricing.py")
    check_eq(rec["signed"], False, what + " signed")


def _by_request_id(recs):
    out = {}
    for r in recs:
        out.setdefault(r.get("request_id"), []).append(r)
    return out


def _verify(recs, events, prices, price_version):
    got = _by_request_id(recs)
    for rid, _, exp in events:
        check(rid in got, "record %s did not arrive (got %s)", rid, sorted(k for k in got if k))
        check_eq(len(got[rid]), 1, "records with request_id %s" % rid)
        _check_record(got[rid][0], exp, prices, price_version, rid)


# (request_id, event, expected record fields)
UDP_EVENTS = [
    ("j-alias",
     {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat",
      "user_id": "alice", "api_key_id": "key-1", "feature": "search", "prompt_tokens": 1200,
      "cached_tokens": 200, "completion_tokens": 300, "duration_ms": 812.5, "ttft_ms": 120,
      "http_status": 200, "correlation_id": "j-alias", "retries": 1, "tags": {"team": "core", "tier": "gold"}},
     dict(provider="openai", model="gpt-4o", operation="chat", user="alice", account="key-1",
          project="search", input_tokens=1200, cache_read_tokens=200, output_tokens=300,
          latency_us=812500, ttft_us=120000, http_status=200, status="ok", retries=1,
          tags={"team": "core", "tier": "gold"})),
    ("j-genai",
     {"gen_ai.system": "openai", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
      "gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 100, "op": "embeddings",
      "user": "bob", "customer_id": "cust-7", "project_id": "p-1", "request_id": "j-genai"},
     dict(provider="openai", model="gpt-4o-mini-2024-07-18", operation="embeddings", user="bob",
          account="cust-7", project="p-1", input_tokens=900, output_tokens=100)),
    ("j-anthropic-long",  # whole input over 200,000 tokens: the model's _above_200k rates
     {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "input_tokens": 300000,
      "cache_read_tokens": 50000, "cache_write_tokens": 20000, "output_tokens": 4000, "user": "frank",
      "request_id": "j-anthropic-long"},
     dict(provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=300000,
          cache_read_tokens=50000, cache_write_tokens=20000, output_tokens=4000)),
    ("j-200k",  # exactly 200,000: not above
     {"provider": "gemini", "model": "gemini-2.5-pro", "input_tokens": 200000, "output_tokens": 10,
      "account": "acct-9", "request_id": "j-200k"},
     dict(provider="gemini", model="gemini-2.5-pro", user=None, account="acct-9", input_tokens=200000,
          output_tokens=10)),
    ("j-reported",
     {"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.012345678,
      "user": "gina", "request_id": "j-reported"},
     dict(provider="openai", model="gpt-4o", input_tokens=10, output_tokens=5, cost_nusd=12345678,
          cost_source="reported")),
    ("j-error",
     {"provider": "openai", "model": "gpt-4o", "user": "hank", "request_id": "j-error", "http_status": 429,
      "error_type": "rate_limit", "input_tokens": 50},
     dict(status="error", http_status=429, error_type="rate_limit", input_tokens=50)),
    ("j-ts-rfc3339",
     {"provider": "openai", "model": "gpt-4o", "user": "ivy", "request_id": "j-ts-rfc3339",
      "ts": "2025-01-02T03:04:05.5Z", "input_tokens": 1},
     dict(ts=1735787045500000000, input_tokens=1)),
    ("j-ts-unix",
     {"provider": "openai", "model": "gpt-4o", "user": "ivy", "request_id": "j-ts-unix",
      "ts": 1735787045.25, "input_tokens": 2},
     dict(ts=1735787045250000000, input_tokens=2)),
    # amazon.nova-2-pro-preview-20251202-v1:0: input $0.0000021875 (2187.5 nano-dollars)
    # a token, cache read $5.46875e-7: half to even, and rounded once per call
    ("j-half-up",
     {"provider": "aws.bedrock", "model": "amazon.nova-2-pro-preview-20251202-v1:0", "user": "nova",
      "input_tokens": 1, "request_id": "j-half-up"},
     dict(provider="bedrock", input_tokens=1, nusd=2188)),
    ("j-half-down",
     {"provider": "aws.bedrock", "model": "amazon.nova-2-pro-preview-20251202-v1:0", "user": "nova",
      "input_tokens": 3, "request_id": "j-half-down"},
     dict(provider="bedrock", input_tokens=3, nusd=6562)),
    ("j-round-once",
     {"provider": "bedrock", "model": "amazon.nova-2-pro-preview-20251202-v1:0", "user": "nova",
      "input_tokens": 2, "cache_read_tokens": 1, "request_id": "j-round-once"},
     dict(provider="bedrock", input_tokens=2, cache_read_tokens=1, nusd=2734)),
    ("j-int-user",  # ids may be integers; kept as their digits
     {"provider": "openai", "model": "gpt-4o", "user": 12345, "account": 77, "request_id": "j-int-user",
      "input_tokens": 3, "ttft_ms": 1.5e2, "ts": "2025-01-02T05:04:05+02:00"},
     dict(user="12345", account="77", input_tokens=3, ttft_us=150000, ts=1735787045000000000)),
    ("j-dated",  # not in the table: priced as the model without its date suffix
     {"provider": "openai", "model": "gpt-4o-2099-12-31", "user": "lu", "request_id": "j-dated",
      "input_tokens": 1000, "output_tokens": 10},
     dict(model="gpt-4o-2099-12-31", input_tokens=1000, output_tokens=10, cost_source="priced")),
    ("j-dated-compact",
     {"provider": "anthropic", "model": "claude-sonnet-4-5-20990101", "user": "lu", "request_id": "j-dated-compact",
      "input_tokens": 1000, "cache_write_tokens": 100, "output_tokens": 10},
     dict(input_tokens=1000, cache_write_tokens=100, output_tokens=10, cost_source="priced")),
    ("j-vertex",  # "model" whose table provider matches
     {"provider": "vertex_ai", "model": "gemini-2.5-pro", "user": "lu", "request_id": "j-vertex",
      "input_tokens": 1000, "output_tokens": 10},
     dict(provider="vertex_ai", input_tokens=1000, output_tokens=10, cost_source="priced")),
    ("j-wrong-provider",  # the table's gemini-2.5-pro is not openai's
     {"provider": "openai", "model": "gemini-2.5-pro", "user": "lu", "request_id": "j-wrong-provider",
      "input_tokens": 1000},
     dict(input_tokens=1000, cost_source="unknown", cost_nusd=0)),
    ("j-tags",  # at most max_tags (16) tags; the rest dropped and counted
     {"provider": "openai", "model": "gpt-4o", "user": "tg", "request_id": "j-tags", "input_tokens": 1,
      "tags": {"t%02d" % i: "v%d" % i for i in range(20)}},
     dict(input_tokens=1, tags={"t%02d" % i: "v%d" % i for i in range(16)})),
    ("j-escapes",  # JSON escapes decoded; provider names are case-insensitive
     {"provider": "OpenAI", "model": "gpt-4o", "user": "Zo\u00eb", "request_id": "j-escapes", "input_tokens": 5,
      "tags": {"emoji": "\ud83d\ude00", "quote": "a\"b\\c"}},
     dict(provider="openai", user="Zo\u00eb", input_tokens=5, tags={"emoji": "\U0001F600", "quote": 'a"b\\c'})),
    ("j-unknown",
     {"provider": "acme", "model": "mystery-9", "user": "jo", "request_id": "j-unknown", "input_tokens": 77,
      "output_tokens": 7},
     dict(provider="acme", model="mystery-9", input_tokens=77, output_tokens=7, cost_nusd=0,
          cost_source="unknown")),
]

TCP_EVENTS = [
    ("j-openai",
     {"provider": "openai", "model": "o3", "user": "carol", "request_id": "j-openai",
      "usage": {"prompt_tokens": 5000, "completion_tokens": 1500, "total_tokens": 6500,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 1000, "audio_tokens": 0}}},
     dict(provider="openai", model="o3", input_tokens=5000, cache_read_tokens=1024, output_tokens=1500,
          reasoning_tokens=1000)),
    ("j-anthropic",
     {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "user": "dave", "request_id": "j-anthropic",
      "usage": {"input_tokens": 100, "output_tokens": 500, "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 1500,
                "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500}}},
     dict(provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=3600, cache_read_tokens=2000,
          cache_write_tokens=1000, cache_write_1h_tokens=500, output_tokens=500)),
    ("j-agree",  # top-level fields and the usage object agree
     {"provider": "anthropic", "model": "claude-3-5-sonnet-20241022", "input_tokens": 700, "user": "kim",
      "usage": {"input_tokens": 700, "output_tokens": 70}, "request_id": "j-agree"},
     dict(input_tokens=700, output_tokens=70)),
]

UNIX_EVENTS = [
    ("j-gemini",
     {"provider": "gcp.gemini", "model": "gemini-2.5-flash", "user": "erin", "request_id": "j-gemini",
      "usage": {"promptTokenCount": 4000, "candidatesTokenCount": 600, "thoughtsTokenCount": 900,
                "cachedContentTokenCount": 1000, "totalTokenCount": 5500}},
     dict(provider="gemini", model="gemini-2.5-flash", input_tokens=4000, cache_read_tokens=1000,
          output_tokens=1500, reasoning_tokens=900)),
    ("j-gemini-long",
     {"provider": "gemini", "model": "gemini-2.5-pro", "user": "erin", "request_id": "j-gemini-long",
      "usage": {"promptTokenCount": 250000, "candidatesTokenCount": 3000, "thoughtsTokenCount": 2000,
                "cachedContentTokenCount": 100000}},
     dict(provider="gemini", model="gemini-2.5-pro", input_tokens=250000, cache_read_tokens=100000,
          output_tokens=5000, reasoning_tokens=2000)),
]


@case(timeout=40)
def json_events(env):
    """JSON usage events over UDP (several in one datagram), TCP (newline
    framed) and the unix datagram socket: field aliases, OpenAI, Anthropic
    and Gemini usage objects normalised into disjoint buckets, cost to the
    nano-dollar (200k tier, exact boundary, reported cost_usd, unknown
    model counted as unpriced), shard topic, timestamps."""
    c = env.collector(unix=True)
    prices = Prices(harness.PRICES_JSON)
    version = c.started_field("price_version")
    n = len(UDP_EVENTS) + len(TCP_EVENTS) + len(UNIX_EVENTS)
    tap = c.tap(["ev."], n, timeout=15)
    lines = [json.dumps(e) for _, e, _ in UDP_EVENTS]
    c.send_udp("\n".join(lines[:4]), "\n".join(lines[4:]) + "\n")
    c.send_tcp("".join(json.dumps(e) + "\n" for _, e, _ in TCP_EVENTS))
    c.send_unix(*[json.dumps(e) for _, e, _ in UNIX_EVENTS])
    recs = tap.wait("usage records")
    _verify(recs, UDP_EVENTS + TCP_EVENTS + UNIX_EVENTS, prices, version)
    st = c.wait_received(n)
    check_eq(st.get("ingest_received_total"), n, "ingest_received_total")
    check_eq(st.get("ingest_accepted_total"), n, "ingest_accepted_total")
    check_eq(st.get("unpriced_requests_total", provider="acme", model="mystery-9"), 1,
             "unpriced_requests_total{provider=acme,model=mystery-9}")
    check_eq(st.get("unpriced_requests_total", provider="openai", model="gemini-2.5-pro"), 1,
             "unpriced_requests_total{provider=openai,model=gemini-2.5-pro}")
    check_eq(st.get("ingest_tags_dropped_total"), 4, "ingest_tags_dropped_total")
    c.check_invariant(st)


MSGPACK_EVENTS = [
    ("m-1",
     {"provider": "openai", "model": "gpt-4o", "user": "mp1", "input_tokens": 1000, "cache_read_tokens": 256,
      "output_tokens": 100, "latency_ms": 250.25, "request_id": "m-1"},
     dict(provider="openai", model="gpt-4o", user="mp1", input_tokens=1000, cache_read_tokens=256,
          output_tokens=100, latency_us=250250)),
    ("m-2",
     {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "user": "mp2", "request_id": "m-2",
      "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 300,
                "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 50}}},
     dict(input_tokens=400, cache_read_tokens=300, cache_write_tokens=40, cache_write_1h_tokens=50,
          output_tokens=20)),
    ("m-3",
     {"gen_ai.provider.name": "gcp.gemini", "gen_ai.request.model": "gemini-2.5-flash", "user_id": "mp3",
      "request_id": "m-3", "output_tokens": 12.0, "input_tokens": 30, "ts": 1735787045.5,
      "tags": {"k": "v", "n": 5}},
     dict(provider="gemini", model="gemini-2.5-flash", user="mp3", input_tokens=30, output_tokens=12,
          ts=1735787045500000000, tags={"k": "v", "n": "5"})),
    ("m-4",
     {"provider": "openai", "model": "o3", "user": "mp4", "request_id": "m-4", "cost_usd": 1.5,
      "input_tokens": 1, "usage": {"prompt_tokens": 1, "completion_tokens": 9,
                                   "completion_tokens_details": {"reasoning_tokens": 4}}},
     dict(input_tokens=1, output_tokens=9, reasoning_tokens=4, cost_nusd=1500000000, cost_source="reported")),
    ("m-5",
     {"provider": "openai", "model": "gpt-4o-mini", "user": "mp5", "request_id": "m-5",
      "input_tokens": 2 ** 32 + 5, "output_tokens": 3},
     dict(input_tokens=2 ** 32 + 5, output_tokens=3)),
    ("m-6",  # no price in the table: [price.default]
     {"provider": "acme", "model": "unheard-of", "user": 6, "request_id": "m-6", "input_tokens": 1000,
      "output_tokens": 100},
     dict(user="6", input_tokens=1000, output_tokens=100, cost_source="default")),
]
DEFAULT_PRICE = {"input_cost_per_token": "0.0000004", "output_cost_per_token": "0.0000016"}


@case(timeout=30)
def msgpack_events(env):
    """msgpack usage events over UDP: one map in a datagram, several maps
    back to back in one datagram, and maps separated by newlines."""
    c = env.collector(sections="[price.default]\n" + "".join("%s = %s\n" % kv for kv in DEFAULT_PRICE.items()))
    prices = Prices(harness.PRICES_JSON, {"default": DEFAULT_PRICE})
    version = c.started_field("price_version")
    packed = [msgpack.packb(e, use_bin_type=True) for _, e, _ in MSGPACK_EVENTS]
    n = len(packed)
    tap = c.tap(["ev."], n, timeout=15)
    c.send_udp(packed[0], packed[1] + packed[2] + packed[3], packed[4] + b"\n" + packed[5])
    recs = tap.wait("usage records")
    _verify(recs, MSGPACK_EVENTS, prices, version)
    st = c.wait_received(n)
    check_eq(st.get("ingest_received_total"), n, "ingest_received_total")
    check_eq(st.get("ingest_accepted_total"), n, "ingest_accepted_total")
    check_eq(st.get("ingest_datagrams_total"), 3, "ingest_datagrams_total")
    check_eq(st.get("unpriced_requests_total", provider="acme", model="unheard-of"), 1,
             "unpriced_requests_total{provider=acme,model=unheard-of}")
    c.check_invariant(st)


# ---- bad input ---------------------------------------------------------------

def _good(rid, user="good"):
    return json.dumps({"provider": "openai", "model": "gpt-4o", "user": user, "input_tokens": 10,
                       "output_tokens": 1, "request_id": rid})


def _ev(**kw):
    e = {"provider": "openai", "model": "gpt-4o"}
    e.update(kw)
    return json.dumps(e)


def _mp_str(s):
    b = s if isinstance(s, bytes) else s.encode()
    return bytes([0xa0 | len(b)]) + b


def _match_reasons(got, expected):
    """expected: a list of alternatives (a tuple of acceptable reasons per
    refused record). Returns None, or what does not match."""
    left = dict(got)
    for alts in sorted(expected, key=len):  # the certain ones first
        for r in alts:
            if left.get(r, 0) > 0:
                left[r] -= 1
                break
        else:
            return "no rejection counted for a record expected as %s" % "|".join(alts)
    extra = {k: v for k, v in left.items() if v}
    if extra:
        return "rejections not expected: %s" % extra
    return None


@case(timeout=40)
def bad_input(env):
    """Bad records never stop the collector: a datagram with good and bad
    lines keeps the good ones and counts each bad one by reason; empty
    datagram; invalid UTF-8 (StatsD, JSON, msgpack); NaN, Inf, negative,
    fractional and overflowing values; a cost beyond int64 nano-dollars; a
    line over max_line; truncated msgpack. Every rejection is counted."""
    c = env.collector(collectd={"max_line": "4096", "log_reject_every": "1"},
                      sections="[price.acme/huge]\nlitellm_provider = acme\n"
                               "input_cost_per_token = 1\noutput_cost_per_token = 1\n")
    expected = []   # reasons of the refused records, in order
    goods = ["b-good1", "b-good2", "b-good3", "b-good4", "b-good5", "b-good6"]
    n_samples = 1   # good.count
    tap = c.tap(["ev.", "metric"], len(goods) + n_samples, timeout=15)

    # A: one datagram, good lines among bad ones
    lines = [
        (_good("b-good1"), None),
        ("{bad json", ("bad_json",)),
        ("bad.type:1|x", ("bad_type",)),
        ("bad.value:abc|c", ("bad_value",)),
        ("bad.rate:1|c|@2", ("bad_rate",)),
        ('{"model":"gpt-4o","input_tokens":5}', ("missing_field",)),
        ("good.count:1|c", None),
        (_ev(input_tokens=-5), ("bad_value",)),
        (_ev(input_tokens=2 ** 41), ("token_overflow",)),
        (_ev(input_tokens=10, cache_read_tokens=20), ("bad_tokens",)),
        (_ev(output_tokens=10, reasoning_tokens=20), ("bad_tokens",)),
        (_ev(input_tokens=10, cache_read_tokens=6, cache_write_tokens=6), ("bad_tokens",)),
        ("x.nan:nan|g", ("bad_value",)),
        ("x.inf:inf|g", ("bad_value",)),
        ("x.big:1e400|g", ("bad_value",)),
        ('{"provider":"openai","model":"gpt-4o","input_tokens":1e30}', ("token_overflow",)),
        ('{"provider":"openai","model":"gpt-4o","input_tokens":18446744073709551616}', ("token_overflow",)),
        ('{"provider":"openai","model":"gpt-4o","input_tokens":1.5}', ("bad_value",)),
        ('{"provider":"openai","model":"gpt-4o","latency_ms":NaN}', ("bad_json",)),
        (_ev(latency_ms=-1), ("bad_value",)),
        (_ev(cost_usd=-0.5), ("bad_value",)),
        ('{"provider":"openai","model":"gpt-4o","cost_usd":1e30}', ("bad_value", "cost_overflow")),
        (json.dumps({"provider": "acme", "model": "huge", "input_tokens": 2 ** 40}), ("cost_overflow",)),
        ("llm.tokens:-5|c|#provider:openai,model:gpt-4o,type:input", ("bad_value",)),
        ("llm.tokens:5|c|#provider:openai,model:gpt-4o", ("missing_field",)),
        ("llm.tokens:5|c|#provider:openai,model:gpt-4o,type:bogus", ("bad_tags",)),
        ("llm.tokens:5|g|#provider:openai,model:gpt-4o,type:input", ("bad_type",)),
        (_ev(input_tokens=5, usage={"prompt_tokens": 6}), ("bad_tokens",)),
        (_ev(usage={"input_tokens": 1, "cache_creation_input_tokens": 10,
                    "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 4}}),
         ("bad_tokens",)),
        (_ev(usage={"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}), ("bad_tokens",)),
        (_ev(usage={"promptTokenCount": 10, "cachedContentTokenCount": 11}), ("bad_tokens",)),
        (_ev(status="maybe"), ("bad_field",)),
        ('{"provider":"openai","model":"gpt-4o","user":"a\\u0000b"}', ("bad_field", "bad_utf8")),
        ('{"provider":"openai","model":"gpt-4o","user":"\\ud800"}', ("bad_json", "bad_utf8", "bad_field")),
        (_ev(ts="yesterday"), ("bad_timestamp",)),
        ('{"provider":"openai","model":"gpt-4o","input_tokens":5,"input_tokens":6}', ("bad_field",)),
        ('{"provider":"openai","model":["gpt-4o"]}', ("bad_field",)),
        # not '{' nor a msgpack map: read as StatsD (DESIGN section 2), which it is not
        ('["not","an","object"]', ("bad_name", "bad_value", "bad_tags", "bad_json")),
        (_good("b-good2"), None),
    ]
    c.send_udp("\n".join(l for l, _ in lines))
    expected += [r for _, r in lines if r]

    # B: an empty datagram
    c.send_udp(b"")
    expected.append(("empty",))

    # C: invalid UTF-8 in a StatsD name, a JSON string, a StatsD tag
    c.send_udp(b"bad\xff.name:1|c\n" +
               b'{"provider":"openai","model":"gpt-4o","user":"\xff\xfe"}\n' +
               b"x.tag:1|c|#k:\xff\n" + _good("b-good3").encode())
    expected += [("bad_name",), ("bad_utf8", "bad_json"), ("bad_tags",)]

    # D: msgpack: a str that is not UTF-8; NaN, Inf, negative and 2^64 values;
    #    then a good map, all in one datagram
    bad_utf8 = (b"\x83" + _mp_str("provider") + _mp_str("openai") + _mp_str("model") + _mp_str("gpt-4o") +
                _mp_str("user") + _mp_str(b"\xff\xfe"))
    nan = msgpack.packb({"provider": "openai", "model": "gpt-4o", "input_tokens": float("nan")})
    inf = msgpack.packb({"provider": "openai", "model": "gpt-4o", "latency_ms": float("inf")})
    neg = msgpack.packb({"provider": "openai", "model": "gpt-4o", "output_tokens": -3})
    huge = msgpack.packb({"provider": "openai", "model": "gpt-4o", "input_tokens": 2 ** 64 - 1})
    good4 = msgpack.packb({"provider": "openai", "model": "gpt-4o", "user": "good", "input_tokens": 10,
                           "output_tokens": 1, "request_id": "b-good4"})
    c.send_udp(bad_utf8 + nan + inf + neg + huge + good4)
    expected += [("bad_utf8",), ("bad_value",), ("bad_value",), ("bad_value",), ("token_overflow",)]

    # E: truncated msgpack: alone, and after a good map
    good5 = msgpack.packb({"provider": "openai", "model": "gpt-4o", "user": "good", "input_tokens": 10,
                           "output_tokens": 1, "request_id": "b-good5"})
    c.send_udp(good4[:-4])
    c.send_udp(good5 + good4[:-4])
    expected += [("bad_msgpack",), ("bad_msgpack",)]

    # F: a line over max_line (4096) then a good line
    c.send_udp("x" * 5000 + "\n" + _good("b-good6"))
    expected.append(("line_too_long",))

    # G: a msgpack map whose provider is missing, and one that is not a map
    c.send_udp(msgpack.packb({"model": "gpt-4o", "input_tokens": 1}))
    expected.append(("missing_field",))

    recs = tap.wait("good records")
    check_eq(sorted(r["request_id"] for r in recs if r["topic"] != "metric"), goods, "good usage records")
    check_eq([r["name"] for r in recs if r["topic"] == "metric"], ["good.count"], "good samples")
    total = len(expected) + len(goods) + n_samples
    st = c.wait_received(total)
    err = _match_reasons(st.rejected(), expected)
    check(err is None, "%s; counted %s", err, st.rejected())
    check_eq(st.get("ingest_received_total"), total, "ingest_received_total")
    check_eq(st.get("ingest_accepted_total"), len(goods) + n_samples, "ingest_accepted_total")
    check_eq(st.get("ingest_usage_records_total"), len(goods), "ingest_usage_records_total")
    c.check_invariant(st)
    check(c.proc.alive(), "the collector died")
    log = c.log()
    check("record rejected" in log and "from=127.0.0.1:" in log,
          "rejections are not logged with their source address: %s", log[-500:])

    # and it still takes input, good lines in a bad datagram coming through
    tap = c.tap(["ev."], 2, timeout=10)
    c.send_udp("{bad\n" + _good("b-after1") + "\nbad.type:1|x\n" + _good("b-after2"))
    recs = tap.wait("records after the bad input")
    check_eq(sorted(r["request_id"] for r in recs), ["b-after1", "b-after2"], "records after")


@case(timeout=30)
def udp_kernel_drops(env):
    """What the kernel drops is counted (SO_RXQ_OVFL): with a small receive
    buffer and the collector stopped, 500 datagrams overflow the socket;
    afterwards received + ingest_kernel_drops_total = sent."""
    import signal
    import socket
    c = env.collector(collectd={"rcvbuf": "4096"})
    sent = 500
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.proc.pause()
    try:
        for i in range(sent):
            c.send_udp("drop.test:%d|c" % i, sock=s)
    finally:
        c.proc.signal(signal.SIGCONT)
    time.sleep(0.2)
    c.send_udp("drop.last:1|c", sock=s)  # carries the kernel's final drop count
    sent += 1
    st = c.wait_stats(lambda st: st.get("ingest_received_total") + st.sum("ingest_kernel_drops_total") >= sent,
                      what="received + kernel drops >= %d" % sent)
    got, drops = st.get("ingest_received_total"), st.sum("ingest_kernel_drops_total")
    check(drops > 0, "no kernel drops counted with a %d-byte buffer", st.sum("ingest_receive_buffer_bytes"))
    check_eq(got + drops, sent, "received %d + kernel drops %d" % (got, drops))
    s.close()
