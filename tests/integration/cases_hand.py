"""The worked examples of docs/PRICING.md: one call of every provider shape,
sent with tokmon-emit, read back with tokmon-tap, and each cost compared with
the figure worked out by hand (the arithmetic is in the doc and beside each
row), not with a recomputation."""

from harness import bin_path, case, check, check_eq, run

# (name, emit arguments, expected normalised tokens, expected cost_nusd)
EXAMPLES = [
    # gpt-4o: 200 x $2.50/M + 1,000 x $1.25/M + 300 x $10/M = $0.00475
    ("openai_cached", ["--provider", "openai", "--model", "gpt-4o", "--input-tokens", "1200",
                       "--cache-read-tokens", "1000", "--output-tokens", "300"],
     dict(input_tokens=1200, cache_read_tokens=1000, output_tokens=300), 4750000),
    # o3, OpenAI's own usage object: 3,808 x $2/M + 8,192 x $0.50/M + 700 x $8/M
    # + 2,800 x $8/M (no reasoning rate: the output rate) = $0.039712
    ("openai_reasoning_usage", ["--provider", "openai", "--model", "o3", "--usage",
                                '{"prompt_tokens":12000,"completion_tokens":3500,"total_tokens":15500,'
                                '"prompt_tokens_details":{"cached_tokens":8192},'
                                '"completion_tokens_details":{"reasoning_tokens":2800}}'],
     dict(input_tokens=12000, cache_read_tokens=8192, output_tokens=3500, reasoning_tokens=2800), 39712000),
    # claude-opus-4-1, Anthropic's usage object: 1,500 x $15/M + 20,000 x $1.50/M
    # + 3,000 x $18.75/M (5 m) + 2,000 x $30/M (1 h) + 800 x $75/M = $0.22875
    ("anthropic_cache_5m_1h", ["--provider", "anthropic", "--model", "claude-opus-4-1", "--usage",
                               '{"input_tokens":1500,"output_tokens":800,"cache_read_input_tokens":20000,'
                               '"cache_creation_input_tokens":5000,"cache_creation":'
                               '{"ephemeral_5m_input_tokens":3000,"ephemeral_1h_input_tokens":2000}}'],
     dict(input_tokens=26500, cache_read_tokens=20000, cache_write_tokens=3000, cache_write_1h_tokens=2000,
          output_tokens=800), 228750000),
    # claude-sonnet-4-5 has no 1-hour rate in the table: those writes fall back to
    # the input rate: 100 x $3/M + 1,000 x $0.30/M + 4,000 x $3/M + 50 x $15/M = $0.01335
    ("anthropic_1h_fallback", ["--provider", "anthropic", "--model", "claude-sonnet-4-5", "--usage",
                               '{"input_tokens":100,"output_tokens":50,"cache_read_input_tokens":1000,'
                               '"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":4000}}'],
     dict(input_tokens=5100, cache_read_tokens=1000, cache_write_1h_tokens=4000, output_tokens=50), 13350000),
    # gemini-2.5-flash, Gemini's usageMetadata with thoughts: 3,000 x $0.30/M
    # + 2,000 x $0.03/M + 400 x $2.50/M + 1,200 x $2.50/M (reasoning rate) = $0.00496
    ("gemini_thoughts", ["--provider", "gemini", "--model", "gemini-2.5-flash", "--usage",
                         '{"promptTokenCount":5000,"candidatesTokenCount":400,"cachedContentTokenCount":2000,'
                         '"thoughtsTokenCount":1200,"totalTokenCount":6600}'],
     dict(input_tokens=5000, cache_read_tokens=2000, output_tokens=1600, reasoning_tokens=1200), 4960000),
    # gemini-2.5-pro over 200,000 input tokens: the whole call at the higher tier:
    # 150,000 x $2.50/M + 100,000 x $0.25/M + 2,000 x $15/M + 3,000 x $15/M = $0.475
    ("gemini_over_200k", ["--provider", "gcp.gemini", "--model", "gemini-2.5-pro", "--usage",
                          '{"promptTokenCount":250000,"candidatesTokenCount":2000,"cachedContentTokenCount":100000,'
                          '"thoughtsTokenCount":3000}'],
     dict(input_tokens=250000, cache_read_tokens=100000, output_tokens=5000, reasoning_tokens=3000), 475000000),
    # claude-sonnet-4-5 at 210,000 input: 210,000 x $6/M + 1,000 x $22.50/M = $1.2825
    ("anthropic_over_200k", ["--provider", "anthropic", "--model", "claude-sonnet-4-5",
                             "--input-tokens", "210000", "--output-tokens", "1000"],
     dict(input_tokens=210000, output_tokens=1000), 1282500000),
    # exactly 200,000 is not over: 200,000 x $3/M + 1,000 x $15/M = $0.615
    ("anthropic_at_200k", ["--provider", "anthropic", "--model", "claude-sonnet-4-5",
                           "--input-tokens", "200000", "--output-tokens", "1000"],
     dict(input_tokens=200000, output_tokens=1000), 615000000),
    # [price.test/half] charges $0.0000000005 an input token: 3 tokens cost
    # 1.5 nano-dollars, rounded once, half to even: 2; one token: 0.5 -> 0
    ("half_even_up", ["--provider", "test", "--model", "half", "--input-tokens", "3"],
     dict(input_tokens=3), 2),
    ("half_even_down", ["--provider", "test", "--model", "half", "--input-tokens", "1"],
     dict(input_tokens=1), 0),
]

HALF = """[price.test/half]
litellm_provider = test
input_cost_per_token = 0.0000000005
output_cost_per_token = 0
"""


@case(timeout=60)
def hand_priced(env):
    c = env.collector(sections=HALF)
    tap = c.tap(["ev."], len(EXAMPLES), timeout=20)
    for i, (name, args, _, _) in enumerate(EXAMPLES):
        rc, out, err = run([bin_path("tokmon-emit"), "-c", c.client_cfg, "--request-id", name,
                            "--user", "hand-%d" % i] + args)
        check(rc == 0, "tokmon-emit %s: status %d: %s", name, rc, err)
    recs = {r["request_id"]: r for r in tap.wait("hand-priced records")}
    for name, _, tokens, nusd in EXAMPLES:
        r = recs.get(name)
        check(r is not None, "no record for %s", name)
        for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                  "output_tokens", "reasoning_tokens"):
            check_eq(r[k], tokens.get(k, 0), "%s %s" % (name, k))
        check_eq(r["cost_nusd"], nusd, name + " cost_nusd (worked out by hand)")
        check_eq(r["cost_source"], "priced", name + " cost_source")
    check_eq(recs["gemini_over_200k"]["provider"], "gemini", "gcp.gemini is recorded as gemini")
