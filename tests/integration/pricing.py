"""An independent implementation of DESIGN section 3 (prices and the cost of
a call), written from the text of the design and not from the C code, so
the tests can check the collector's cost_nusd to the nano-dollar.

Rates are read from the JSON table's decimal text with decimal.Decimal
(json parse_float=Decimal), the cost of a call is computed exactly and
rounded once, half to even, to whole nano-dollars.
"""

import decimal
import json
import re
from decimal import Decimal

INPUT = "input_cost_per_token"
OUTPUT = "output_cost_per_token"
CACHE_READ = "cache_read_input_token_cost"
CACHE_WRITE = "cache_creation_input_token_cost"
CACHE_WRITE_1H = "cache_creation_input_token_cost_above_1hr"
REASONING = "output_cost_per_reasoning_token"
TIER = "_above_200k_tokens"
BASE_FIELDS = [INPUT, OUTPUT, CACHE_READ, CACHE_WRITE, CACHE_WRITE_1H, REASONING]
FIELDS = BASE_FIELDS + [f + TIER for f in BASE_FIELDS]
TIER_TOKENS = 200000

# DESIGN section 3: "gcp.gemini is gemini, aws.bedrock is bedrock, x_ai is xai, ..."
PROVIDER_ALIASES = {
    "gcp.gemini": "gemini", "google": "gemini", "aws.bedrock": "bedrock", "x_ai": "xai",
    "x.ai": "xai", "azure.ai.openai": "azure", "mistral_ai": "mistral",
}

_CTX = decimal.Context(prec=120, rounding=decimal.ROUND_HALF_EVEN)


def canon_provider(p):
    p = p.lower()
    return PROVIDER_ALIASES.get(p, p)


def table_provider(p):
    """LiteLLM's litellm_provider → the provider a caller names:
    "vertex_ai-language-models" → "vertex_ai", "text-completion-openai" →
    "openai", "bedrock_converse" → "bedrock"."""
    if not p:
        return ""
    if p.startswith("text-completion-"):
        p = p[len("text-completion-"):]
    p = p.split("-")[0].lower()
    return {"bedrock_converse": "bedrock", "cohere_chat": "cohere"}.get(p, p)


def _exact_rate(v):
    if isinstance(v, bool) or not isinstance(v, Decimal):
        return None
    if v < 0 or not v.is_finite():
        return None
    if (_CTX.multiply(v, Decimal(10) ** 24)) % 1 != 0:
        return None
    return v


_DATE = re.compile(r"^(.*)-\d{4}-\d{2}-\d{2}$")


def strip_suffix(m):
    """One trailing date or version suffix removed ("gpt-4o-2024-08-06" →
    "gpt-4o", "-20241022", "@20240620", "-v1", "-v2.1", "-latest", ":0",
    "-001"), or None."""
    g = _DATE.match(m)
    if g and g.group(1):
        return g.group(1)
    g = re.match(r"^(.+)([-@:])([^-@:]+)$", m)
    if not g:
        return None
    head, sep, seg = g.groups()
    if sep == ":":
        return head if seg.isdigit() else None
    if seg == "latest":
        return head
    if seg.isdigit():
        return head if len(seg) >= 3 else None
    if sep == "-" and re.match(r"^v\d[\d.]*$", seg):
        return head
    return None


class Prices:
    def __init__(self, path, overrides=None):
        """overrides: {NAME: {field: "decimal text", "litellm_provider": p}}
        as the config's [price.NAME] sections."""
        with open(path) as f:
            table = json.load(f, parse_float=Decimal, parse_int=Decimal)
        self.entries = {}
        self.default = None
        for key, v in table.items():
            if key == "sample_spec" or not isinstance(v, dict) or not key:
                continue
            rates, ok = {}, True
            for fld in FIELDS:
                if fld not in v or v[fld] is None:
                    continue
                r = _exact_rate(v[fld])
                if r is None:
                    ok = False
                    break
                rates[fld] = r
            if not ok or (INPUT not in rates and OUTPUT not in rates):
                continue
            self.entries[key] = (table_provider(v.get("litellm_provider") or ""), rates)
        for name, o in (overrides or {}).items():
            rates = {k: Decimal(v) for k, v in o.items() if k != "litellm_provider"}
            if name == "default":
                self.default = ("", rates)
            elif name in self.entries:
                prov, old = self.entries[name]
                new = dict(old)
                new.update(rates)
                if "litellm_provider" in o:
                    prov = table_provider(o["litellm_provider"])
                self.entries[name] = (prov, new)
            else:
                self.entries[name] = (table_provider(o.get("litellm_provider", "")), rates)

    def lookup(self, provider, model):
        """(rates, cost_source) with cost_source "priced", "default" or
        "unknown" (rates None)."""
        prov = canon_provider(provider)
        m = model
        while m is not None:
            e = self.entries.get(prov + "/" + m)
            if e:
                return e[1], "priced"
            e = self.entries.get(m)
            if e and (e[0] == "" or e[0] == prov):
                return e[1], "priced"
            m = strip_suffix(m)
        if self.default:
            return self.default[1], "default"
        return None, "unknown"

    def rates(self, key):
        return self.entries[key][1]


def cost_nusd(rates, input=0, cache_read=0, cache_write=0, cache_write_1h=0, output=0,
              reasoning=0):
    """DESIGN section 3: uncached input x input rate + cache read x cache read
    rate + cache write x cache creation rate + cache write 1 h x its rate +
    (output - reasoning) x output rate + reasoning x reasoning rate; missing
    cache rates fall back to the input rate, a missing reasoning rate to the
    output rate; a call whose whole input exceeds 200,000 tokens uses the
    model's _above_200k rates where it has them. Rounded once, half to even,
    to whole nano-dollars."""
    if rates is None:
        return 0
    tiered = any(f.endswith(TIER) for f in rates)
    above = tiered and input > TIER_TOKENS

    def rate(base, fallback=None):
        if above and base + TIER in rates:
            return rates[base + TIER]
        if base in rates:
            return rates[base]
        if fallback:
            return rate(fallback)
        return Decimal(0)

    c = _CTX
    uncached = input - cache_read - cache_write - cache_write_1h
    assert uncached >= 0 and reasoning <= output
    parts = [
        (uncached, rate(INPUT)),
        (cache_read, rate(CACHE_READ, INPUT)),
        (cache_write, rate(CACHE_WRITE, INPUT)),
        (cache_write_1h, rate(CACHE_WRITE_1H, INPUT)),
        (output - reasoning, rate(OUTPUT)),
        (reasoning, rate(REASONING, OUTPUT)),
    ]
    usd = Decimal(0)
    for n, r in parts:
        usd = c.add(usd, c.multiply(Decimal(n), r))
    nusd = c.multiply(usd, Decimal(10) ** 9).quantize(Decimal(1), rounding=decimal.ROUND_HALF_EVEN, context=c)
    return int(nusd)


def record_cost(prices, rec):
    """The expected (cost_nusd, cost_source) of a usage record from the bus,
    from its own normalised token fields."""
    rates, src = prices.lookup(rec["provider"], rec["model"])
    return cost_nusd(rates, rec["input_tokens"], rec["cache_read_tokens"], rec["cache_write_tokens"],
                     rec["cache_write_1h_tokens"], rec["output_tokens"], rec["reasoning_tokens"]), src
