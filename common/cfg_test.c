/* cfg_test: table-driven tests of common/cfg: defaults, environment
 * overrides, typed values, file:line errors, [price.NAME] sections, derived
 * replay endpoints, reload helpers and the DESIGN section 9 example. Run one
 * test alone with `cfg_test NAME` (a cmocka filter pattern, e.g. `cfg_test
 * test_errors`). No real environment or file is needed: cfg_load_string
 * takes the text and an environ-style array. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cfg.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static char g_err[8192];

/* Loads text (NUL-terminated unless len is given) as "t.ini". */
static cfg_t *load_env_len(const char *text, size_t len, char *const *envp)
{
    memset(g_err, 'X', sizeof g_err); /* the loader must write a terminated message */
    return cfg_load_string(text, len, "t.ini", envp, g_err, sizeof g_err);
}

static cfg_t *load_env(const char *text, char *const *envp)
{
    return load_env_len(text, strlen(text), envp);
}

static cfg_t *load(const char *text) { return load_env(text, NULL); }

static cfg_t *must_load_env(const char *text, char *const *envp)
{
    cfg_t *c = load_env(text, envp);
    if (!c)
        fail_msg("config did not load:\n%s\nerrors:\n%s", text, g_err);
    return c;
}

static cfg_t *must_load(const char *text) { return must_load_env(text, NULL); }

static size_t err_lines(const char *err)
{
    if (!*err)
        return 0;
    size_t n = 1;
    for (const char *p = err; *p; p++)
        n += *p == '\n';
    return n;
}

static void assert_has(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected \"%s\" in:\n%s", needle, hay);
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults(void **state)
{
    (void)state;
    cfg_t *c = must_load("");
    char host[300] = "localhost", want_src[320];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    for (char *p = host; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') &&
            !strchr("_.-", *p))
            *p = '_';
    snprintf(want_src, sizeof want_src, "collectd@%s", host);

    assert_string_equal(c->path, "t.ini");
    /* [global] */
    assert_string_equal(c->global.instance, "local");
    assert_string_equal(c->global.state_dir, "/var/lib/tokmon");
    assert_string_equal(c->global.timezone, "UTC");
    assert_int_equal(c->global.log_format, CFG_LOG_KV);
    assert_int_equal(c->global.log_level, CFG_LVL_INFO);
    assert_int_equal(c->global.stats_interval, 5000);
    /* [bus]: replay endpoints are derived as PUB port + 10 */
    assert_string_equal(c->bus.collectd, "tcp://127.0.0.1:7701");
    assert_string_equal(c->bus.aggregator, "tcp://127.0.0.1:7702");
    assert_string_equal(c->bus.alerter, "tcp://127.0.0.1:7703");
    assert_string_equal(c->bus.collectd_replay, "tcp://127.0.0.1:7711");
    assert_string_equal(c->bus.aggregator_replay, "tcp://127.0.0.1:7712");
    assert_string_equal(c->bus.alerter_replay, "tcp://127.0.0.1:7713");
    assert_false(c->bus.curve);
    assert_int_equal(c->bus.sndhwm, 100000);
    assert_int_equal(c->bus.rcvhwm, 100000);
    /* [collectd] */
    assert_string_equal(c->collectd.udp, "127.0.0.1:8125");
    assert_string_equal(c->collectd.tcp, "127.0.0.1:8125");
    assert_string_equal(c->collectd.unix_path, "");
    assert_string_equal(c->collectd.src, want_src);
    assert_string_equal(c->collectd.prices, "/usr/share/tokmon/model_prices.json");
    assert_int_equal(c->collectd.auth, CFG_AUTH_OFF);
    assert_string_equal(c->collectd.auth_keys, "");
    assert_int_equal(c->collectd.auth_skew, 30000);
    assert_int_equal(c->collectd.replay_guard, 1000000);
    assert_int_equal(c->collectd.rcvbuf, 32 * 1024 * 1024);
    assert_int_equal(c->collectd.batch_max, 256);
    assert_int_equal(c->collectd.flush_interval, 2);
    assert_int_equal(c->collectd.max_line, 65536);
    assert_int_equal(c->collectd.tcp_max_clients, 1024);
    assert_int_equal(c->collectd.tcp_idle_timeout, 300000);
    assert_int_equal(c->collectd.tcp_block_timeout, 50);
    assert_int_equal(c->collectd.gauge_sign, CFG_GAUGE_AUTO);
    assert_int_equal(c->collectd.provider_aliases.n, 0);
    assert_int_equal(c->collectd.max_tags, 16);
    assert_int_equal(c->collectd.max_tag_len, 128);
    assert_int_equal(c->collectd.log_reject_every, 100);
    /* the rest */
    assert_string_equal(c->aggregator.query, "tcp://127.0.0.1:7720");
    assert_int_equal(c->quota.lim.daily_tokens, 100000);
    assert_int_equal(c->quota.lim.monthly_tokens, 2000000);
    assert_string_equal(c->pgwriter.database, "");
    assert_string_equal(c->exporter.http, "127.0.0.1:9464");
    assert_string_equal(c->exporter.api_key_file, "");
    assert_int_equal(c->alerter.high_cost_call_nusd, 500000000); /* $0.50 */
    assert_int_equal(c->nbudgets, 0);
    assert_int_equal(c->nnotifies, 0);
    assert_int_equal(c->nprices, 0);
    assert_int_equal(c->warnings.n, 0);
    cfg_destroy(&c);
    assert_null(c);
    cfg_destroy(&c); /* destroying NULL is a no-op */
}

static void test_pattern_defaults(void **state)
{
    (void)state;
    cfg_t *c = must_load("[budget.daily]\nlimit_usd = 10\n"
                         "[notify.ops]\nurl = http://127.0.0.1:9099/hook\n"
                         "[price.my-finetune]\ninput_cost_per_token = 1e-6\n");
    assert_int_equal(c->nbudgets, 1);
    assert_string_equal(c->budgets[0].name, "daily");
    assert_string_equal(c->budgets[0].scope, "global");
    assert_int_equal(c->budgets[0].period, CFG_PERIOD_DAY);
    assert_int_equal(c->budgets[0].limit_nusd, 10000000000LL);
    assert_int_equal(c->budgets[0].warn_pct, 80);
    assert_int_equal(c->nnotifies, 1);
    assert_string_equal(c->notifies[0].name, "ops");
    assert_int_equal(c->notifies[0].type, CFG_NOTIFY_WEBHOOK);
    assert_string_equal(c->notifies[0].url, "http://127.0.0.1:9099/hook");
    assert_int_equal(c->nprices, 1);
    assert_string_equal(c->prices[0].name, "my-finetune");
    assert_null(c->prices[0].litellm_provider);
    assert_string_equal(c->prices[0].rate[PRICE_F_INPUT], "1e-6");
    for (int f = 1; f < PRICE_NFIELDS; f++)
        assert_null(c->prices[0].rate[f]);
    cfg_destroy(&c);
}

/* ---- environment --------------------------------------------------------- */

typedef struct {
    const char *text; /* the file */
    const char *env;  /* one NAME=value */
    const char *section, *key;
    const char *want; /* the value, as text (see value_text) */
} env_case_t;

/* The value of a few keys as text, so one table can cover every type. */
static const char *value_text(const cfg_t *c, const char *section, const char *key, char *buf,
                              size_t cap)
{
#define S(sec, k, expr) if (!strcmp(section, sec) && !strcmp(key, k)) return snprintf(buf, cap, "%s", expr), buf
#define I(sec, k, expr) if (!strcmp(section, sec) && !strcmp(key, k)) return snprintf(buf, cap, "%lld", (long long)(expr)), buf
    S("global", "instance", c->global.instance);
    S("global", "state_dir", c->global.state_dir);
    I("global", "log_format", c->global.log_format);
    I("global", "stats_interval", c->global.stats_interval);
    S("bus", "collectd", c->bus.collectd);
    S("bus", "collectd_replay", c->bus.collectd_replay);
    I("bus", "curve", c->bus.curve);
    S("collectd", "udp", c->collectd.udp);
    I("collectd", "rcvbuf", c->collectd.rcvbuf);
    I("collectd", "provider_aliases", c->collectd.provider_aliases.n);
    I("quota", "daily_tokens", c->quota.lim.daily_tokens);
    I("alerter", "high_cost_call_usd", c->alerter.high_cost_call_nusd);
    I("budget.daily", "limit_usd", c->nbudgets ? c->budgets[0].limit_nusd : -2);
    I("budget.daily", "warn_pct", c->nbudgets ? c->budgets[0].warn_pct : -2);
    S("notify.ops", "url", c->nnotifies ? c->notifies[0].url : "-");
    S("price.openai/gpt-4o", "input_cost_per_token",
      c->nprices && c->prices[0].rate[PRICE_F_INPUT] ? c->prices[0].rate[PRICE_F_INPUT] : "-");
#undef S
#undef I
    fail_msg("value_text: no accessor for [%s] %s", section, key);
    return NULL;
}

static const env_case_t env_cases[] = {
    { "", "TOKMON_GLOBAL_INSTANCE=prod-eu", "global", "instance", "prod-eu" },
    { "", "TOKMON_GLOBAL_STATE_DIR=/srv/tokmon", "global", "state_dir", "/srv/tokmon" },
    { "", "TOKMON_GLOBAL_LOG_FORMAT=json", "global", "log_format", "1" },
    { "", "TOKMON_GLOBAL_STATS_INTERVAL=250ms", "global", "stats_interval", "250" },
    { "", "TOKMON_BUS_COLLECTD=tcp://10.0.0.1:9001", "bus", "collectd", "tcp://10.0.0.1:9001" },
    /* the derived replay endpoint follows the overridden PUB endpoint */
    { "", "TOKMON_BUS_COLLECTD=tcp://10.0.0.1:9001", "bus", "collectd_replay", "tcp://10.0.0.1:9011" },
    { "", "TOKMON_BUS_CURVE=on", "bus", "curve", "1" },
    { "", "TOKMON_COLLECTD_UDP=127.0.0.1:18125", "collectd", "udp", "127.0.0.1:18125" },
    { "", "TOKMON_COLLECTD_UDP=off", "collectd", "udp", "" },
    { "", "TOKMON_COLLECTD_RCVBUF=8M", "collectd", "rcvbuf", "8388608" },
    { "", "TOKMON_COLLECTD_PROVIDER_ALIASES=a=b,c=d", "collectd", "provider_aliases", "2" },
    { "", "TOKMON_QUOTA_DAILY_TOKENS=5", "quota", "daily_tokens", "5" },
    { "", "TOKMON_ALERTER_HIGH_COST_CALL_USD=1.25", "alerter", "high_cost_call_usd", "1250000000" },
    /* patterned sections: dots (and other punctuation) become underscores */
    { "[budget.daily]\nlimit_usd = 10\n", "TOKMON_BUDGET_DAILY_LIMIT_USD=25.5", "budget.daily",
      "limit_usd", "25500000000" },
    { "[budget.daily]\nlimit_usd = 10\n", "TOKMON_BUDGET_DAILY_WARN_PCT=90", "budget.daily",
      "warn_pct", "90" },
    { "[notify.ops]\nurl = http://a/\n", "TOKMON_NOTIFY_OPS_URL=http://b/", "notify.ops", "url",
      "http://b/" },
    { "[price.openai/gpt-4o]\ninput_cost_per_token = 2.5e-06\n",
      "TOKMON_PRICE_OPENAI_GPT_4O_INPUT_COST_PER_TOKEN=3e-06", "price.openai/gpt-4o",
      "input_cost_per_token", "3e-06" },
    /* the environment wins over the file */
    { "[global]\ninstance = from-file\n", "TOKMON_GLOBAL_INSTANCE=from-env", "global", "instance",
      "from-env" },
    { "[collectd]\nrcvbuf = 1M\n", "TOKMON_COLLECTD_RCVBUF=2M", "collectd", "rcvbuf", "2097152" },
    { "[budget.daily]\nlimit_usd = 10\n", "TOKMON_BUDGET_DAILY_LIMIT_USD=0.000000001",
      "budget.daily", "limit_usd", "1" },
    /* a variable that only starts like the name does not match */
    { "[global]\ninstance = from-file\n", "TOKMON_GLOBAL_INSTANCEX=from-env", "global", "instance",
      "from-file" },
};

static void test_env_overrides(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(env_cases); i++) {
        const env_case_t *t = &env_cases[i];
        char envvar[256];
        snprintf(envvar, sizeof envvar, "%s", t->env);
        char *envp[] = { "PATH=/usr/bin", "HOME=/root", envvar, NULL };
        cfg_t *c = load_env(t->text, envp);
        if (!c)
            fail_msg("case %zu (%s): did not load: %s", i, t->env, g_err);
        char buf[256], where[256], ename[256];
        const char *got = value_text(c, t->section, t->key, buf, sizeof buf);
        if (strcmp(got, t->want) != 0)
            fail_msg("case %zu (%s): [%s] %s is \"%s\", want \"%s\"", i, t->env, t->section, t->key,
                     got, t->want);
        /* the origin names the variable when it was the one used */
        snprintf(ename, sizeof ename, "env %.*s", (int)(strchr(t->env, '=') - t->env), t->env);
        cfg_origin(c, t->section, t->key, where, sizeof where);
        bool used = strcmp(t->section, "bus") != 0 || strcmp(t->key, "collectd_replay") != 0;
        used &= strstr(t->env, "INSTANCEX") == NULL;
        if (used && strcmp(where, ename) != 0)
            fail_msg("case %zu: origin of [%s] %s is \"%s\", want \"%s\"", i, t->section, t->key,
                     where, ename);
        cfg_destroy(&c);
    }
}

static void test_env_unknown_variable_warns(void **state)
{
    (void)state;
    char *envp[] = { "TOKMON_GLOBAL_NOPE=1", "TOKMON_CONFIG=/x.ini", "TOKMON_BIN=/b",
                     "TOKMON_REPO=/src", "TOKMONX=1", "OTHER=1",
                     "TOKMON_BUDGET_WEEKLY_LIMIT_USD=5", /* no such budget in the file */
                     NULL };
    cfg_t *c = must_load_env("", envp);
    assert_int_equal(c->warnings.n, 2);
    assert_has(c->warnings.v[0], "TOKMON_GLOBAL_NOPE");
    assert_has(c->warnings.v[1], "TOKMON_BUDGET_WEEKLY_LIMIT_USD");
    assert_int_equal(c->nbudgets, 0); /* the environment overrides; it does not create sections */
    cfg_destroy(&c);
}

static void test_env_bad_value_is_an_error(void **state)
{
    (void)state;
    char *envp[] = { "TOKMON_BUS_SNDHWM=lots", "TOKMON_BUDGET_DAILY_LIMIT_USD=-1", NULL };
    cfg_t *c = load_env("[budget.daily]\nlimit_usd = 10\n", envp);
    assert_null(c);
    assert_has(g_err, "env TOKMON_BUS_SNDHWM: [bus] sndhwm: 'lots' is not an integer");
    assert_has(g_err, "env TOKMON_BUDGET_DAILY_LIMIT_USD: [budget.daily] limit_usd:");
    assert_int_equal(err_lines(g_err), 2);
}

/* ---- errors -------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *text;
    size_t len;            /* 0: strlen(text) */
    const char *want[4];   /* substrings of the message */
    size_t nlines;         /* lines in the message */
} err_case_t;

#define LONG_X50 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define LONG_X200 LONG_X50 LONG_X50 LONG_X50 LONG_X50

static const err_case_t err_cases[] = {
    { "unknown section", "[global]\n\n[nope]\nx = 1\n", 0, { "t.ini:3: unknown section [nope]" }, 1 },
    { "bare pattern section", "[budget]\nlimit_usd = 1\n", 0, { "t.ini:1: unknown section [budget]" }, 1 },
    { "pattern without a name", "[budget.]\n", 0,
      { "t.ini:1: section [budget.] needs a name after the dot" }, 1 },
    { "unknown key", "[global]\ninstance = a\nnope = 1\n", 0, { "t.ini:3: [global] unknown key 'nope'" }, 1 },
    { "unknown key in a pattern section", "[budget.d]\nlimit_usd = 1\nlimit = 2\n", 0,
      { "t.ini:3: [budget.d] unknown key 'limit'" }, 1 },
    { "duplicate key", "[global]\ninstance = a\n\ninstance = b\n", 0,
      { "t.ini:4: [global] instance: set twice (first at line 2)" }, 1 },
    { "duplicate section", "[global]\ninstance = a\n[bus]\n[global]\nstate_dir = /x\n", 0,
      { "t.ini:4: section [global] appears twice (first at line 1)" }, 1 },
    { "duplicate pattern section", "[budget.d]\nlimit_usd = 1\n[budget.d]\nwarn_pct = 5\n", 0,
      { "t.ini:3: section [budget.d] appears twice (first at line 1)" }, 1 },
    { "bad int", "[bus]\nsndhwm = 12x\n", 0, { "t.ini:2: [bus] sndhwm: '12x' is not an integer" }, 1 },
    { "int with exponent", "[quota]\ndaily_tokens = 1e6\n", 0,
      { "t.ini:2: [quota] daily_tokens: '1e6' is not an integer" }, 1 },
    { "int beyond int64", "[quota]\ndaily_tokens = 9223372036854775808\n", 0,
      { "t.ini:2: [quota] daily_tokens: '9223372036854775808' is not an integer" }, 1 },
    { "int out of range", "[budget.d]\nlimit_usd = 1\nwarn_pct = 101\n", 0,
      { "t.ini:3: [budget.d] warn_pct: 101 is out of range [1, 100]" }, 1 },
    { "negative int", "[bus]\nsndhwm = -1\n", 0, { "t.ini:2: [bus] sndhwm: -1 is out of range" }, 1 },
    { "bad duration", "[collectd]\nauth_skew = 5 minutes\n", 0,
      { "t.ini:2: [collectd] auth_skew: '5 minutes' is not a duration" }, 1 },
    { "duration out of range", "[global]\nstats_interval = 1d\n", 0,
      { "t.ini:2: [global] stats_interval: 1d is out of range [100, 3600000]" }, 1 },
    { "bad size", "[collectd]\nrcvbuf = 32Q\n", 0, { "t.ini:2: [collectd] rcvbuf: '32Q' is not a size" }, 1 },
    { "size out of range", "[collectd]\nrcvbuf = 3G\n", 0,
      { "t.ini:2: [collectd] rcvbuf: 3G is out of range" }, 1 },
    { "bad bool", "[bus]\ncurve = maybe\n", 0, { "t.ini:2: [bus] curve: 'maybe' is not on/off" }, 1 },
    { "bad enum", "[collectd]\nauth = sometimes\n", 0,
      { "t.ini:2: [collectd] auth: 'sometimes' is not one of off, optional, required" }, 1 },
    { "enum is case-sensitive", "[global]\nlog_level = INFO\n", 0,
      { "t.ini:2: [global] log_level: 'INFO' is not one of error, warn, info, debug" }, 1 },
    { "money below a nano-dollar", "[alerter]\nhigh_cost_call_usd = 0.0000000001\n", 0,
      { "t.ini:2: [alerter] high_cost_call_usd: '0.0000000001' is not a non-negative dollar amount" }, 1 },
    { "negative money", "[budget.d]\nlimit_usd = -5\n", 0,
      { "t.ini:2: [budget.d] limit_usd: '-5' is not a non-negative dollar amount" }, 1 },
    { "money with a dollar sign", "[budget.d]\nlimit_usd = $5\n", 0,
      { "t.ini:2: [budget.d] limit_usd: '$5' is not" }, 1 },
    { "money beyond int64 nano-dollars", "[budget.d]\nlimit_usd = 9223372037\n", 0,
      { "t.ini:2: [budget.d] limit_usd: '9223372037' is not" }, 1 },
    { "bad decimal rate", "[price.x]\ninput_cost_per_token = 1e-25\n", 0,
      { "t.ini:2: [price.x] input_cost_per_token: '1e-25' is not a rate in USD per token" }, 1 },
    { "rate above the cost arithmetic's cap", "[price.x]\noutput_cost_per_token = 2\n", 0,
      { "t.ini:2: [price.x] output_cost_per_token: '2' is not a rate in USD per token from 0 to 1.2" }, 1 },
    { "rate that is not a number", "[price.x]\noutput_cost_per_token = cheap\n", 0,
      { "t.ini:2: [price.x] output_cost_per_token: 'cheap' is not" }, 1 },
    { "key outside a section", "instance = x\n[global]\n", 0,
      { "t.ini:1: key 'instance' outside of any [section]" }, 1 },
    { "syntax error", "[global]\nthis line has no equals sign\n", 0, { "t.ini:2: syntax error" }, 1 },
    { "unclosed section header", "[global\n", 0, { "t.ini:1: syntax error" }, 1 },
    /* inih reads a line into 200 bytes: 198 of text, the newline and a NUL */
    { "line longer than inih's limit", "[global]\nstate_dir = /" LONG_X200 "\ninstance = ok\n", 0,
      { "t.ini:2: line longer than 198 bytes" }, 1 },
    { "NUL byte", "[global]\ninstance = lo\0cal\n", 26, { "t.ini:2: NUL byte in file" }, 1 },
    { "no closing quote", "[global]\nstate_dir = \"/a b\n", 0,
      { "t.ini:2: [global] state_dir: no closing quote" }, 1 },
    { "a lone quote", "[global]\nstate_dir = \"\n", 0,
      { "t.ini:2: [global] state_dir: no closing quote" }, 1 },
    { "text after the closing quote", "[global]\nstate_dir = \"/a\" b\n", 0,
      { "t.ini:2: [global] state_dir: text after the closing quote" }, 1 },
    /* semantic checks name the section's line */
    { "missing limit_usd", "[global]\n[budget.daily]\nscope = global\n", 0,
      { "t.ini:2: [budget.daily] limit_usd is required" }, 1 },
    { "zero limit_usd", "[budget.daily]\nlimit_usd = 0\n", 0,
      { "t.ini:1: [budget.daily] limit_usd is required and must be above 0" }, 1 },
    { "bad budget scope", "[budget.daily]\nlimit_usd = 1\nscope = planet\n", 0,
      { "t.ini:1: [budget.daily] scope 'planet' is not global" }, 1 },
    { "global scope takes no value", "[budget.daily]\nlimit_usd = 1\nscope = global:x\n", 0,
      { "[budget.daily] scope 'global:x'" }, 1 },
    { "scope with an empty value", "[budget.daily]\nlimit_usd = 1\nscope = user:\n", 0,
      { "[budget.daily] scope 'user:'" }, 1 },
    { "bad budget name", "[budget.da ily]\nlimit_usd = 1\n", 0,
      { "t.ini:1: [budget.da ily] budget name 'da ily'" }, 1 },
    { "notifier without url", "[notify.ops]\ntype = slack\n", 0, { "t.ini:1: [notify.ops] url is required" }, 1 },
    { "email without to", "[notify.m]\ntype = email\nurl = smtp://h:25\nfrom = a@b\n", 0, { "t.ini:1: [notify.m] email needs from and to" }, 1 },
    { "telegram without a token", "[notify.t]\ntype = telegram\nchat_id = 1\n", 0, { "t.ini:1: [notify.t] telegram needs token_file and chat_id" }, 1 },
    { "rule with a bad aggregate", "[rule.r]\naggregate = mean\nthreshold = 1\n", 0, { "t.ini:1: [rule.r] aggregate 'mean' is not one of the allowed values" }, 1 },
    { "rule without a number", "[rule.r]\naggregate = cost\nthreshold = lots\n", 0, { "t.ini:1: [rule.r] threshold 'lots' is not a number" }, 1 },
    { "price with no rate", "[price.x]\nlitellm_provider = openai\n", 0,
      { "t.ini:1: [price.x] price 'x' sets no rate" }, 1 },
    { "bad endpoint: no port", "[bus]\ncollectd = tcp://127.0.0.1\n", 0,
      { "t.ini:2: [bus] collectd: 'tcp://127.0.0.1' is not a bus endpoint" }, 1 },
    { "bad endpoint: scheme", "[bus]\naggregator = http://127.0.0.1:7702\n", 0,
      { "t.ini:2: [bus] aggregator: 'http://127.0.0.1:7702' is not a bus endpoint" }, 1 },
    { "bad endpoint: port letters", "[aggregator]\nquery = tcp://h:77x\n", 0,
      { "t.ini:2: [aggregator] query: 'tcp://h:77x' is not a bus endpoint" }, 1 },
    { "bad endpoint: port above 65535", "[bus]\ncollectd = tcp://127.0.0.1:65536\n", 0,
      { "t.ini:2: [bus] collectd: 'tcp://127.0.0.1:65536' is not a bus endpoint" }, 1 },
    { "bad endpoint: port beyond long", "[bus]\ncollectd = tcp://h:99999999999999999999999\n", 0,
      { "t.ini:2: [bus] collectd: 'tcp://h:99999999999999999999999' is not a bus endpoint" }, 1 },
    { "bad endpoint: empty ipc", "[bus]\nalerter = ipc://\n", 0,
      { "t.ini:2: [bus] alerter: 'ipc://' is not a bus endpoint" }, 1 },
    { "empty publisher endpoint", "[bus]\nalerter =\n", 0,
      { "t.ini:1: [bus] alerter: no publisher endpoint" }, 1 },
    { "replay port cannot be derived", "[bus]\ncollectd = tcp://127.0.0.1:65530\n", 0,
      { "t.ini:1: [bus] cannot derive a replay port from 'tcp://127.0.0.1:65530'" }, 1 },
    { "bad listen address", "[collectd]\nudp = 127.0.0.1\n", 0,
      { "t.ini:2: [collectd] udp: '127.0.0.1' is not host:port (or off)" }, 1 },
    { "listen port too large", "[exporter]\nhttp = 127.0.0.1:65536\n", 0,
      { "t.ini:2: [exporter] http: '127.0.0.1:65536' is not host:port" }, 1 },
    { "no listener at all", "[collectd]\nudp = off\ntcp = off\n", 0,
      { "t.ini:1: [collectd] no listener" }, 1 },
    { "auth=required without auth_keys", "[collectd]\nauth = required\n", 0,
      { "t.ini:1: [collectd] auth = required needs auth_keys" }, 1 },
    { "auth=optional without auth_keys", "[collectd]\nauth = optional\n", 0,
      { "t.ini:1: [collectd] auth = optional needs auth_keys" }, 1 },
    { "bad provider alias", "[collectd]\nprovider_aliases = a=b, c\n", 0,
      { "t.ini:1: [collectd] provider_aliases entry 'c' is not from=to" }, 1 },
    { "bad src", "[collectd]\nsrc = a b\n", 0, { "t.ini:1: [collectd] src 'a b'" }, 1 },
    { "bad instance", "[global]\ninstance = a/b\n", 0, { "t.ini:1: [global] instance 'a/b'" }, 1 },
    { "empty state_dir", "[global]\nstate_dir =\n", 0, { "t.ini:1: [global] state_dir must not be empty" }, 1 },
    { "bad timezone", "[global]\ntimezone = Mars/Olympus_Mons\n", 0,
      { "t.ini:1: [global] timezone 'Mars/Olympus_Mons' is not a known zone" }, 1 },
    { "timezone escaping the zone directory", "[global]\ntimezone = ../../../etc/passwd\n", 0,
      { "timezone '../../../etc/passwd' is not a known zone" }, 1 },
    { "absolute timezone path", "[global]\ntimezone = /etc/passwd\n", 0,
      { "timezone '/etc/passwd' is not a known zone" }, 1 },
    { "timezone that is a directory", "[global]\ntimezone = Europe\n", 0,
      { "timezone 'Europe' is not a known zone" }, 1 },
};

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(err_cases); i++) {
        const err_case_t *t = &err_cases[i];
        size_t len = t->len ? t->len : strlen(t->text);
        cfg_t *c = load_env_len(t->text, len, NULL);
        if (c) {
            cfg_destroy(&c);
            fail_msg("case \"%s\": loaded, want an error", t->name);
        }
        assert_non_null(memchr(g_err, '\0', sizeof g_err));
        for (size_t k = 0; k < ARRAY_LEN(t->want) && t->want[k]; k++)
            if (!strstr(g_err, t->want[k]))
                fail_msg("case \"%s\": expected \"%s\" in:\n%s", t->name, t->want[k], g_err);
        if (err_lines(g_err) != t->nlines)
            fail_msg("case \"%s\": %zu lines, want %zu:\n%s", t->name, err_lines(g_err), t->nlines,
                     g_err);
    }
}

static void test_several_errors_at_once(void **state)
{
    (void)state;
    const char *text = "[global]\n"                  /* 1 */
                       "instance = a\n"              /* 2 */
                       "instance = b\n"              /* 3: set twice */
                       "colour = blue\n"             /* 4: unknown key */
                       "[bus]\n"                     /* 5 */
                       "sndhwm = many\n"             /* 6: bad int */
                       "curve = perhaps\n"           /* 7: bad bool */
                       "[nope]\n"                    /* 8: unknown section */
                       "[collectd]\n"                /* 9 */
                       "auth_skew = 1y\n";           /* 10: bad duration */
    assert_null(load(text));
    assert_has(g_err, "t.ini:3: [global] instance: set twice (first at line 2)");
    assert_has(g_err, "t.ini:4: [global] unknown key 'colour'");
    assert_has(g_err, "t.ini:6: [bus] sndhwm: 'many' is not an integer");
    assert_has(g_err, "t.ini:7: [bus] curve: 'perhaps' is not on/off");
    assert_has(g_err, "t.ini:8: unknown section [nope]");
    assert_has(g_err, "t.ini:10: [collectd] auth_skew: '1y' is not a duration");
    assert_int_equal(err_lines(g_err), 6);
    assert_int_equal(g_err[strlen(g_err) - 1] != '\n', 1); /* no trailing newline */
}

static void test_error_buffer_truncated(void **state)
{
    (void)state;
    char small[24];
    memset(small, 'X', sizeof small);
    const char *text = "[nope1]\n[nope2]\n[nope3]\n";
    cfg_t *c = cfg_load_string(text, strlen(text), "t.ini", NULL, small, sizeof small);
    assert_null(c);
    assert_true(strlen(small) < sizeof small);
    assert_memory_equal(small, "t.ini:1: unknown section", strlen(small) < 24 ? strlen(small) : 24);
    /* no buffer at all */
    assert_null(cfg_load_string(text, strlen(text), "t.ini", NULL, NULL, 0));
}

static void test_line_length_boundary(void **state)
{
    (void)state;
    /* "state_dir = /" is 13 bytes: 185 more make the longest line inih takes */
    char line[400], text[512];
    for (size_t extra = 183; extra <= 187; extra++) {
        memset(line, 'x', extra);
        line[extra] = '\0';
        snprintf(text, sizeof text, "[global]\nstate_dir = /%s\n", line);
        size_t linelen = 13 + extra;
        cfg_t *c = load(text);
        if (linelen <= 198) {
            if (!c)
                fail_msg("a %zu-byte line was refused: %s", linelen, g_err);
            assert_int_equal(strlen(c->global.state_dir), 1 + extra);
            cfg_destroy(&c);
        } else {
            if (c) {
                cfg_destroy(&c);
                fail_msg("a %zu-byte line was accepted", linelen);
            }
            assert_has(g_err, "t.ini:2: line longer than 198 bytes");
        }
    }
    /* the rest of a long line is skipped, and the next line keeps its number */
    assert_null(load("[global]\n; " LONG_X200 "\nnope = 1\n"));
    assert_has(g_err, "t.ini:2: line longer than 198 bytes");
    assert_has(g_err, "t.ini:3: [global] unknown key 'nope'");
    assert_int_equal(err_lines(g_err), 2);
}

/* ---- typed values -------------------------------------------------------- */

typedef struct {
    const char *value;
    int64_t want; /* -1: rejected */
} num_case_t;

static void run_num_table(const char *section, const char *key, const num_case_t *cases, size_t n,
                          int64_t (*get)(const cfg_t *))
{
    for (size_t i = 0; i < n; i++) {
        char text[256];
        snprintf(text, sizeof text, "[%s]\n%s = %s\n", section, key, cases[i].value);
        cfg_t *c = load(text);
        if (cases[i].want < 0) {
            if (c) {
                long long got = (long long)get(c);
                cfg_destroy(&c);
                fail_msg("[%s] %s = %s: accepted as %lld, want an error", section, key,
                         cases[i].value, got);
            }
            char where[64];
            snprintf(where, sizeof where, "t.ini:2: [%s] %s:", section, key);
            assert_has(g_err, where);
            continue;
        }
        if (!c)
            fail_msg("[%s] %s = %s: %s", section, key, cases[i].value, g_err);
        if (get(c) != cases[i].want)
            fail_msg("[%s] %s = %s: got %lld, want %lld", section, key, cases[i].value,
                     (long long)get(c), (long long)cases[i].want);
        cfg_destroy(&c);
    }
}

static int64_t get_auth_skew(const cfg_t *c) { return c->collectd.auth_skew; }
static int64_t get_rcvbuf(const cfg_t *c) { return c->collectd.rcvbuf; }
static int64_t get_max_line(const cfg_t *c) { return c->collectd.max_line; }
static int64_t get_high_cost(const cfg_t *c) { return c->alerter.high_cost_call_nusd; }
static int64_t get_curve(const cfg_t *c) { return c->bus.curve; }
static int64_t get_gauge_sign(const cfg_t *c) { return c->collectd.gauge_sign; }
static int64_t get_daily_tokens(const cfg_t *c) { return c->quota.lim.daily_tokens; }

static void test_durations(void **state)
{
    (void)state;
    static const num_case_t cases[] = {
        { "500ms", 500 },
        { "5s", 5000 },
        { "2m", 120000 },
        { "1h", 3600000 },
        { "1d", 86400000 },
        { "30", 30000 }, /* a bare number is seconds */
        { "1", 1000 },
        { "1ms", 1 },
        { "5S", 5000 }, /* units are case-insensitive */
        { "1500MS", 1500 },
        { "0", -1 },      /* below the key's minimum of 1 ms */
        { "0ms", -1 },
        { "2d", -1 },     /* above its maximum of a day */
        { "1.5s", -1 },
        { "5 s", -1 },
        { "-5s", -1 },
        { "+5s", -1 },
        { "5sec", -1 },
        { "s", -1 },
        { "5w", -1 },
        { "99999999999999999999ms", -1 },
        { "9223372036854775807s", -1 }, /* overflows when scaled */
    };
    run_num_table("collectd", "auth_skew", cases, ARRAY_LEN(cases), get_auth_skew);
}

static void test_sizes(void **state)
{
    (void)state;
    static const num_case_t rcvbuf[] = {
        { "64K", 65536 },
        { "32M", 33554432 },
        { "1G", 1073741824 },
        { "65536", 65536 },
        { "64k", 65536 },
        { "64KB", 65536 },
        { "64KiB", 65536 },
        { "8192b", 8192 },
        { "4095", -1 }, /* below 4096 */
        { "2G", -1 },   /* above INT_MAX */
        { "32Q", -1 },
        { "1.5M", -1 },
        { "M", -1 },
        { "-1M", -1 },
    };
    run_num_table("collectd", "rcvbuf", rcvbuf, ARRAY_LEN(rcvbuf), get_rcvbuf);
    static const num_case_t max_line[] = {
        { "64K", 65536 }, { "16M", 16777216 }, { "256", 256 }, { "255", -1 }, { "17M", -1 },
    };
    run_num_table("collectd", "max_line", max_line, ARRAY_LEN(max_line), get_max_line);
}

static void test_money(void **state)
{
    (void)state;
    static const num_case_t cases[] = {
        { "0.50", 500000000 },
        { "0.5", 500000000 },
        { "1", 1000000000 },
        { "0", 0 },
        { "10.000000001", 10000000001 },
        { "0.000000001", 1 },
        { "0.0000000010", 1 },       /* trailing zeros below the unit are exact */
        { "1e2", 100000000000 },
        { "2.5E-1", 250000000 },
        { "9223372036.854775807", INT64_MAX },
        { "0.0000000001", -1 },      /* a tenth of a nano-dollar */
        { "0.0000000015", -1 },
        { "9223372036.854775808", -1 },
        { "-0.5", -1 },
        { "+1", -1 },
        { ".5", -1 },
        { "1.", -1 },
        { "1,5", -1 },
        { "0x10", -1 },
        { "inf", -1 },
    };
    run_num_table("alerter", "high_cost_call_usd", cases, ARRAY_LEN(cases), get_high_cost);
}

static void test_bools_and_enums(void **state)
{
    (void)state;
    static const num_case_t curve[] = {
        { "on", 1 },  { "off", 0 }, { "true", 1 }, { "false", 0 }, { "yes", 1 },
        { "no", 0 },  { "1", 1 },   { "0", 0 },    { "ON", 1 },    { "False", 0 },
        { "2", -1 },  { "y", -1 },  { "onn", -1 }, { "", -1 },
    };
    run_num_table("bus", "curve", curve, ARRAY_LEN(curve), get_curve);
    static const num_case_t gauge[] = {
        { "auto", CFG_GAUGE_AUTO }, { "delta", CFG_GAUGE_DELTA },
        { "absolute", CFG_GAUGE_ABSOLUTE }, { "Delta", -1 }, { "relative", -1 }, { "", -1 },
    };
    run_num_table("collectd", "gauge_sign", gauge, ARRAY_LEN(gauge), get_gauge_sign);
    static const num_case_t ints[] = {
        { "0", 0 }, { "100000", 100000 }, { "9223372036854775807", INT64_MAX },
        { "-1", -1 }, { "1_000", -1 }, { "", -1 }, { "12 34", -1 }, { "0x10", -1 },
    };
    run_num_table("quota", "daily_tokens", ints, ARRAY_LEN(ints), get_daily_tokens);
}

typedef struct {
    const char *value;
    bool ok;
} str_case_t;

static void test_decimal_rates(void **state)
{
    (void)state;
    static const str_case_t cases[] = {
        { "2.5e-06", true },
        { "3.0001999999999996e-07", true }, /* the worst rate in the real table */
        { "0.000001", true },
        { "1e-24", true },
        { "0", true },
        { "0.0", true },
        { "1e-25", false },
        { "1.5e-24", false },
        { "-1e-6", false },
        { "2.5e-06 USD", false },
        { "abc", false },
        { "NaN", false },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char text[256];
        snprintf(text, sizeof text, "[price.x]\ninput_cost_per_token = %s\n", cases[i].value);
        cfg_t *c = load(text);
        if (!cases[i].ok) {
            if (c) {
                cfg_destroy(&c);
                fail_msg("rate %s accepted", cases[i].value);
            }
            assert_has(g_err, "t.ini:2: [price.x] input_cost_per_token:");
            continue;
        }
        if (!c)
            fail_msg("rate %s: %s", cases[i].value, g_err);
        /* rates are kept as their exact text, for prices.c to read */
        assert_string_equal(c->prices[0].rate[PRICE_F_INPUT], cases[i].value);
        cfg_destroy(&c);
    }
}

static void test_price_sections(void **state)
{
    (void)state;
    cfg_t *c = must_load("[price.default]\n"
                         "input_cost_per_token = 1e-06\n"
                         "output_cost_per_token = 2e-06\n"
                         "[price.bedrock/anthropic.claude-v2:1]\n"
                         "litellm_provider = bedrock\n"
                         "cache_creation_input_token_cost_above_1hr = 3e-05\n"
                         "output_cost_per_reasoning_token_above_200k_tokens = 4e-05\n"
                         "[price.acme/x]\n"
                         "input_cost_per_token = 0.000001\n"
                         "output_cost_per_token = 0.000002\n"
                         "cache_read_input_token_cost = 1e-7\n");
    assert_int_equal(c->nprices, 3);
    assert_string_equal(c->prices[0].name, "default");
    assert_string_equal(c->prices[0].rate[PRICE_F_INPUT], "1e-06");
    assert_string_equal(c->prices[0].rate[PRICE_F_OUTPUT], "2e-06");
    assert_string_equal(c->prices[1].name, "bedrock/anthropic.claude-v2:1");
    assert_string_equal(c->prices[1].litellm_provider, "bedrock");
    assert_null(c->prices[1].rate[PRICE_F_INPUT]);
    assert_string_equal(c->prices[1].rate[PRICE_F_CACHE_WRITE_1H], "3e-05");
    assert_string_equal(c->prices[1].rate[PRICE_F_REASONING_200K], "4e-05");
    assert_string_equal(c->prices[2].name, "acme/x");
    assert_string_equal(c->prices[2].rate[PRICE_F_CACHE_READ], "1e-7");
    char where[64];
    assert_string_equal(cfg_origin(c, "price.acme/x", "cache_read_input_token_cost", where,
                                   sizeof where),
                        "t.ini:11");
    cfg_destroy(&c);

    /* every field of prices_fields.h is a key */
    static const char *const fields[] = {
#define NAME(e, n) n,
        PRICE_FIELDS(NAME)
#undef NAME
    };
    for (size_t f = 0; f < ARRAY_LEN(fields); f++) {
        char text[256];
        snprintf(text, sizeof text, "[price.m]\n%s = 0.000001\n", fields[f]);
        c = must_load(text);
        assert_string_equal(c->prices[0].rate[f], "0.000001");
        cfg_destroy(&c);
    }
    assert_null(load("[price.m]\ninput_cost_per_image = 0.01\n"));
    assert_has(g_err, "t.ini:2: [price.m] unknown key 'input_cost_per_image'");
}

typedef struct {
    const char *pub;
    const char *replay; /* set explicitly, or NULL */
    const char *want;   /* NULL: an error */
} replay_case_t;

static void test_replay_endpoints(void **state)
{
    (void)state;
    static const replay_case_t cases[] = {
        { "tcp://127.0.0.1:7701", NULL, "tcp://127.0.0.1:7711" },
        { "tcp://*:5555", NULL, "tcp://*:5565" },
        { "tcp://[::1]:7000", NULL, "tcp://[::1]:7010" },
        { "tcp://bus.example.com:65525", NULL, "tcp://bus.example.com:65535" },
        { "tcp://127.0.0.1:65526", NULL, NULL },
        { "tcp://127.0.0.1:0", NULL, NULL },
        { "tcp://127.0.0.1:00000000000000000000000000007701", NULL, "tcp://127.0.0.1:7711" },
        { "tcp://*:*", NULL, NULL }, /* an ephemeral port has no +10 */
        { "ipc:///run/tokmon/collectd", NULL, "ipc:///run/tokmon/collectd.replay" },
        { "inproc://collectd", NULL, "inproc://collectd.replay" },
        { "tcp://127.0.0.1:7701", "tcp://127.0.0.1:9999", "tcp://127.0.0.1:9999" },
        { "tcp://127.0.0.1:65530", "tcp://127.0.0.1:9999", "tcp://127.0.0.1:9999" },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char text[512];
        int n = snprintf(text, sizeof text, "[bus]\ncollectd = %s\n", cases[i].pub);
        if (cases[i].replay)
            snprintf(text + n, sizeof text - (size_t)n, "collectd_replay = %s\n", cases[i].replay);
        cfg_t *c = load(text);
        if (!cases[i].want) {
            if (c) {
                cfg_destroy(&c);
                fail_msg("%s: loaded, want an error", cases[i].pub);
            }
            assert_has(g_err, "cannot derive a replay port");
            continue;
        }
        if (!c)
            fail_msg("%s: %s", cases[i].pub, g_err);
        assert_string_equal(c->bus.collectd_replay, cases[i].want);
        assert_string_equal(c->bus.aggregator_replay, "tcp://127.0.0.1:7712");
        cfg_destroy(&c);
    }
}

typedef struct {
    const char *line; /* "key = value" in [global] or [notify.n] */
    const char *want;
} quote_case_t;

static void test_quoted_values(void **state)
{
    (void)state;
    static const quote_case_t cases[] = {
        { "state_dir = \"/a b\"", "/a b" },
        { "state_dir = \"/a b\" ; comment", "/a b" },
        { "state_dir = \"/a ; b\"", "/a ; b" },     /* inih alone would cut at " ;" */
        { "state_dir = \"/a;b\"", "/a;b" },
        { "state_dir = \"  /padded  \"", "  /padded  " },
        { "state_dir=\"/nospace\"", "/nospace" },
        { "state_dir = /plain ; comment", "/plain" },
        { "state_dir = /a;b", "/a;b" },             /* ';' without a blank before is text */
        { "state_dir = /in\"side", "/in\"side" },   /* only a leading quote starts quoting */
        { "state_dir = \"\"", "" },                 /* rejected later: must not be empty */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char text[256];
        snprintf(text, sizeof text, "[global]\n%s\n", cases[i].line);
        cfg_t *c = load(text);
        if (!cases[i].want[0]) {
            assert_null(c);
            assert_has(g_err, "state_dir must not be empty");
            continue;
        }
        if (!c)
            fail_msg("%s: %s", cases[i].line, g_err);
        if (strcmp(c->global.state_dir, cases[i].want) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].line, c->global.state_dir,
                     cases[i].want);
        cfg_destroy(&c);
    }
    cfg_t *c = must_load("[notify.ops]\nurl = \"http://h/hook?a=1 ;b=2\"\n");
    assert_string_equal(c->notifies[0].url, "http://h/hook?a=1 ;b=2");
    cfg_destroy(&c);
}

static void test_whitespace_and_comments(void **state)
{
    (void)state;
    cfg_t *c = must_load("; a comment\n"
                         "# another\n"
                         "\r\n"
                         "  [global]  \r\n"
                         "  instance = indented\r\n"    /* not a continuation line */
                         "\tstate_dir=/tabbed\n"
                         "timezone   =   UTC   ; trailing comment\n"
                         "[collectd]\n"
                         "provider_aliases = Foo=bar , ,baz=qux,\n");
    assert_string_equal(c->global.instance, "indented");
    assert_string_equal(c->global.state_dir, "/tabbed");
    assert_string_equal(c->global.timezone, "UTC");
    assert_int_equal(c->collectd.provider_aliases.n, 2);
    assert_string_equal(c->collectd.provider_aliases.v[0], "Foo=bar");
    assert_string_equal(c->collectd.provider_aliases.v[1], "baz=qux");
    char where[64];
    assert_string_equal(cfg_origin(c, "global", "instance", where, sizeof where), "t.ini:5");
    cfg_destroy(&c);
    /* a file without a final newline */
    c = must_load("[global]\ninstance = last");
    assert_string_equal(c->global.instance, "last");
    cfg_destroy(&c);
}

static void test_timezones(void **state)
{
    (void)state;
    static const char *const ok[] = { "UTC", "Etc/UTC", "Europe/Paris", "America/New_York" };
    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        char text[128];
        snprintf(text, sizeof text, "[global]\ntimezone = %s\n", ok[i]);
        cfg_t *c = load(text);
        if (!c)
            fail_msg("timezone %s: %s", ok[i], g_err);
        assert_string_equal(c->global.timezone, ok[i]);
        cfg_destroy(&c);
    }
}

/* ---- origin and reload --------------------------------------------------- */

static void test_origin(void **state)
{
    (void)state;
    char *envp[] = { "TOKMON_COLLECTD_TCP=127.0.0.1:9000", NULL };
    cfg_t *c = must_load_env("[global]\n"
                             "instance = here\n"
                             "[collectd]\n"
                             "udp = 127.0.0.1:9001\n"
                             "tcp = 127.0.0.1:9002\n"
                             "[budget.daily]\n"
                             "limit_usd = 3\n",
                             envp);
    char w[128];
    assert_string_equal(cfg_origin(c, "global", "instance", w, sizeof w), "t.ini:2");
    assert_string_equal(cfg_origin(c, "collectd", "udp", w, sizeof w), "t.ini:4");
    assert_string_equal(cfg_origin(c, "collectd", "tcp", w, sizeof w), "env TOKMON_COLLECTD_TCP");
    assert_string_equal(c->collectd.tcp, "127.0.0.1:9000");
    assert_string_equal(cfg_origin(c, "budget.daily", "limit_usd", w, sizeof w), "t.ini:7");
    assert_string_equal(cfg_origin(c, "budget.daily", "warn_pct", w, sizeof w), "default");
    assert_string_equal(cfg_origin(c, "global", "state_dir", w, sizeof w), "default");
    assert_string_equal(cfg_origin(c, "nope", "nope", w, sizeof w), "default");
    /* a small buffer is truncated, not overrun */
    char tiny[4];
    assert_string_equal(cfg_origin(c, "global", "instance", tiny, sizeof tiny), "t.i");
    cfg_destroy(&c);
}

typedef struct {
    char names[16][64];
    size_t n;
} seen_t;

static void note_conflict(const char *section, const char *key, void *arg)
{
    seen_t *s = arg;
    assert_true(s->n < 16);
    snprintf(s->names[s->n++], sizeof s->names[0], "%s.%s", section, key);
}

static void test_reload_conflicts(void **state)
{
    (void)state;
    const char *base = "[global]\ninstance = a\nlog_level = info\n"
                       "[collectd]\nudp = 127.0.0.1:8125\nbatch_max = 256\n"
                       "[budget.daily]\nlimit_usd = 10\n";
    const char *next = "[global]\ninstance = b\nlog_level = debug\n"
                       "[collectd]\nudp = 127.0.0.1:9125\nbatch_max = 512\n"
                       "[budget.daily]\nlimit_usd = 20\n"
                       "[budget.weekly]\nlimit_usd = 50\n";
    cfg_t *old = must_load(base), *same = must_load(base), *nw = must_load(next);

    seen_t seen = { 0 };
    assert_int_equal(cfg_reload_conflicts(old, same, note_conflict, &seen), 0);
    assert_int_equal(seen.n, 0);

    /* instance and udp need a restart; log_level, batch_max and budgets do not */
    assert_int_equal(cfg_reload_conflicts(old, nw, note_conflict, &seen), 2);
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.names[0], "global.instance");
    assert_string_equal(seen.names[1], "collectd.udp");
    assert_int_equal(cfg_reload_conflicts(old, nw, NULL, NULL), 2);

    /* keep what is in force until a restart, take the rest */
    cfg_keep_restart_keys(nw, old);
    assert_string_equal(nw->global.instance, "a");
    assert_string_equal(nw->collectd.udp, "127.0.0.1:8125");
    assert_int_equal(nw->global.log_level, CFG_LVL_DEBUG);
    assert_int_equal(nw->collectd.batch_max, 512);
    assert_int_equal(nw->nbudgets, 2);
    assert_int_equal(nw->budgets[0].limit_nusd, 20000000000LL);
    /* old got nw's values in exchange, so both still free cleanly */
    assert_string_equal(old->global.instance, "b");
    assert_string_equal(old->collectd.udp, "127.0.0.1:9125");
    assert_int_equal(cfg_reload_conflicts(old, nw, NULL, NULL), 2);
    assert_int_equal(cfg_reload_conflicts(same, nw, NULL, NULL), 0);
    cfg_destroy(&old);
    cfg_destroy(&same);
    cfg_destroy(&nw);
}

static void test_reload_conflicts_every_type(void **state)
{
    (void)state;
    /* one restart-only key of each type: string, endpoint, listen, bool, int, size */
    cfg_t *a = must_load("");
    cfg_t *b = must_load("[global]\nstate_dir = /elsewhere\n"
                         "[bus]\ncollectd = tcp://127.0.0.1:7801\ncurve = on\nsndhwm = 5\n"
                         "[collectd]\nrcvbuf = 1M\ntcp = off\n"
                         "[pgwriter]\ndatabase = postgresql:///x\n");
    seen_t seen = { 0 };
    size_t n = cfg_reload_conflicts(a, b, note_conflict, &seen);
    /* collectd and its derived collectd_replay both differ */
    static const char *const want[] = { "global.state_dir", "bus.collectd", "bus.collectd_replay",
                                        "bus.curve",        "bus.sndhwm",   "collectd.tcp",
                                        "collectd.rcvbuf",  "pgwriter.database" };
    assert_int_equal(n, ARRAY_LEN(want));
    for (size_t i = 0; i < ARRAY_LEN(want); i++)
        assert_string_equal(seen.names[i], want[i]);
    cfg_keep_restart_keys(b, a);
    assert_int_equal(cfg_reload_conflicts(a, b, NULL, NULL), ARRAY_LEN(want));
    cfg_t *fresh = must_load("");
    assert_int_equal(cfg_reload_conflicts(fresh, b, NULL, NULL), 0);
    assert_false(b->bus.curve);
    assert_int_equal(b->collectd.rcvbuf, 32 << 20);
    cfg_destroy(&a);
    cfg_destroy(&b);
    cfg_destroy(&fresh);
}

/* ---- helpers and whole files --------------------------------------------- */

typedef struct {
    int64_t nusd;
    const char *want;
} usd_case_t;

static void test_format_usd(void **state)
{
    (void)state;
    static const usd_case_t cases[] = {
        { 0, "0" },
        { 1, "0.000000001" },
        { 500000000, "0.5" },
        { 10000000000LL, "10" },
        { 12345678901LL, "12.345678901" },
        { -1500000000LL, "-1.5" },
        { INT64_MAX, "9223372036.854775807" },
        { INT64_MIN, "-9223372036.854775808" },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char buf[64];
        assert_string_equal(cfg_format_usd(cases[i].nusd, buf, sizeof buf), cases[i].want);
    }
    char tiny[3] = "zz";
    assert_string_equal(cfg_format_usd(12345678901LL, tiny, sizeof tiny), "");
}

/* The example of DESIGN section 9, verbatim. */
static const char design_example[] =
    "[global]\n"
    "instance  = local              ; names this deployment\n"
    "state_dir = /var/lib/tokmon    ; spools and snapshots\n"
    "timezone  = UTC                ; calendar periods\n"
    "\n"
    "[bus]\n"
    "collectd   = tcp://127.0.0.1:7701   ; each publisher's PUB endpoint\n"
    "aggregator = tcp://127.0.0.1:7702\n"
    "alerter    = tcp://127.0.0.1:7703\n"
    "collectd_replay   = tcp://127.0.0.1:7711   ; each publisher's replay ROUTER\n"
    "aggregator_replay = tcp://127.0.0.1:7712   ; (default: its PUB port + 10)\n"
    "alerter_replay    = tcp://127.0.0.1:7713\n"
    "curve      = off\n"
    "\n"
    "[collectd]\n"
    "udp    = 127.0.0.1:8125\n"
    "tcp    = 127.0.0.1:8125\n"
    "prices = /usr/share/tokmon/model_prices.json\n"
    "auth   = off                     ; off | optional | required\n"
    "\n"
    "[aggregator]\n"
    "query = tcp://127.0.0.1:7720\n"
    "\n"
    "[quota]\n"
    "daily_tokens   = 100000\n"
    "monthly_tokens = 2000000\n"
    "\n"
    "[budget.daily]\n"
    "scope = global\n"
    "period = day\n"
    "limit_usd = 10\n"
    "warn_pct = 80\n"
    "\n"
    "[pgwriter]\n"
    "database = postgresql:///tokmon   ; a libpq connection string or URL\n"
    "\n"
    "[exporter]\n"
    "http = 127.0.0.1:9464\n"
    "api_key_file =\n"
    "\n"
    "[alerter]\n"
    "high_cost_call_usd = 0.50\n"
    "\n"
    "[notify.ops]\n"
    "type = webhook                    ; webhook | slack | telegram | email | alertmanager\n"
    "url  = http://127.0.0.1:9099/hook\n";

static void test_design_example(void **state)
{
    (void)state;
    cfg_t *c = must_load(design_example);
    assert_int_equal(c->warnings.n, 0);
    assert_string_equal(c->global.instance, "local");
    assert_string_equal(c->global.state_dir, "/var/lib/tokmon");
    assert_string_equal(c->global.timezone, "UTC");
    assert_string_equal(c->bus.collectd, "tcp://127.0.0.1:7701");
    assert_string_equal(c->bus.aggregator_replay, "tcp://127.0.0.1:7712");
    assert_string_equal(c->bus.alerter_replay, "tcp://127.0.0.1:7713");
    assert_false(c->bus.curve);
    assert_string_equal(c->collectd.udp, "127.0.0.1:8125");
    assert_string_equal(c->collectd.tcp, "127.0.0.1:8125");
    assert_string_equal(c->collectd.prices, "/usr/share/tokmon/model_prices.json");
    assert_int_equal(c->collectd.auth, CFG_AUTH_OFF);
    assert_string_equal(c->aggregator.query, "tcp://127.0.0.1:7720");
    assert_int_equal(c->quota.lim.daily_tokens, 100000);
    assert_int_equal(c->quota.lim.monthly_tokens, 2000000);
    assert_int_equal(c->nbudgets, 1);
    assert_string_equal(c->budgets[0].name, "daily");
    assert_string_equal(c->budgets[0].scope, "global");
    assert_int_equal(c->budgets[0].period, CFG_PERIOD_DAY);
    assert_int_equal(c->budgets[0].limit_nusd, 10000000000LL);
    assert_int_equal(c->budgets[0].warn_pct, 80);
    assert_string_equal(c->pgwriter.database, "postgresql:///tokmon");
    assert_string_equal(c->exporter.http, "127.0.0.1:9464");
    assert_string_equal(c->exporter.api_key_file, "");
    assert_int_equal(c->alerter.high_cost_call_nusd, 500000000);
    assert_int_equal(c->nnotifies, 1);
    assert_string_equal(c->notifies[0].name, "ops");
    assert_int_equal(c->notifies[0].type, CFG_NOTIFY_WEBHOOK);
    assert_string_equal(c->notifies[0].url, "http://127.0.0.1:9099/hook");
    char w[64];
    assert_string_equal(cfg_origin(c, "alerter", "high_cost_call_usd", w, sizeof w), "t.ini:42");
    cfg_destroy(&c);

    /* `TOKMON_COLLECTD_UDP=127.0.0.1:18125 make run` moves the listener */
    char *envp[] = { "TOKMON_COLLECTD_UDP=127.0.0.1:18125", NULL };
    c = must_load_env(design_example, envp);
    assert_string_equal(c->collectd.udp, "127.0.0.1:18125");
    assert_string_equal(c->collectd.tcp, "127.0.0.1:8125");
    cfg_destroy(&c);
}

static void test_budget_and_notify_values(void **state)
{
    (void)state;
    cfg_t *c = must_load("[budget.team-a]\nscope = project:search\nperiod = month\n"
                         "limit_usd = 1234.5\nwarn_pct = 1\n"
                         "[budget.users]\nscope = user\nperiod = week\nlimit_usd = 0.000000001\n"
                         "warn_pct = 100\n"
                         "[notify.mail]\ntype = email\nurl = smtp://127.0.0.1:25\nfrom = t@x\n"
                         "to = a@x, b@x\n"
                         "[notify.am]\ntype = alertmanager\nurl = http://am:9093\n"
                         "[rule.spend]\naggregate = cost\nby = user\nthreshold = 2.5\nwindow = 1h\n"
                         "for = 5m\nseverity = critical\n");
    assert_int_equal(c->nbudgets, 2);
    assert_string_equal(c->budgets[0].name, "team-a");
    assert_string_equal(c->budgets[0].scope, "project:search");
    assert_int_equal(c->budgets[0].period, CFG_PERIOD_MONTH);
    assert_int_equal(c->budgets[0].limit_nusd, 1234500000000LL);
    assert_int_equal(c->budgets[0].warn_pct, 1);
    assert_string_equal(c->budgets[1].scope, "user");
    assert_int_equal(c->budgets[1].period, CFG_PERIOD_WEEK);
    assert_int_equal(c->budgets[1].limit_nusd, 1);
    assert_int_equal(c->nnotifies, 2);
    assert_int_equal(c->notifies[0].type, CFG_NOTIFY_EMAIL);
    assert_string_equal(c->notifies[0].url, "smtp://127.0.0.1:25");
    assert_int_equal(c->notifies[0].to.n, 2);
    assert_string_equal(c->notifies[0].to.v[1], "b@x");
    assert_true(c->notifies[0].starttls);
    assert_int_equal(c->notifies[1].type, CFG_NOTIFY_ALERTMANAGER);
    assert_int_equal(c->nrules, 1);
    assert_string_equal(c->rules[0].aggregate, "cost");
    assert_string_equal(c->rules[0].by, "user");
    assert_string_equal(c->rules[0].threshold, "2.5");
    assert_int_equal(c->rules[0].window, 3600000);
    assert_int_equal(c->rules[0].for_ms, 300000);
    cfg_destroy(&c);
}

static void test_quota_sections(void **state)
{
    (void)state;
    cfg_t *c = must_load("[quota]\nwindow = 90m\nwindow_tokens = 5000\ndaily_usd = 2.5\n"
                         "[quota.account]\nmonthly_usd = 100\n"
                         "[quota.user.alice@example.com]\ndaily_tokens = 7\nwarn_pct = 50\n"
                         "[quota.user.bob]\nmonthly_usd = \n"
                         "[quota.account.acme]\ndaily_usd = 0\n"
                         "[budget.r]\nlimit_usd = 10\nrollover = on\n"
                         "[budget.s]\nlimit_usd = 10\nrollover = on\nrollover_cap_usd = 2\n");
    assert_int_equal(c->quota.window, 90 * 60000);
    assert_int_equal(c->quota.lim.daily_tokens, 100000); /* the default stays */
    assert_int_equal(c->quota.lim.window_tokens, 5000);
    assert_int_equal(c->quota.lim.daily_nusd, 2500000000LL);
    assert_int_equal(c->quota.lim.monthly_nusd, 0); /* empty: no limit */
    assert_int_equal(c->account_quota.monthly_nusd, 100000000000LL);
    assert_int_equal(c->account_quota.daily_tokens, 0);
    assert_int_equal(c->nuser_quotas, 2);
    assert_string_equal(c->user_quotas[0].name, "alice@example.com");
    assert_int_equal(c->user_quotas[0].lim.daily_tokens, 7);
    assert_int_equal(c->user_quotas[0].lim.monthly_tokens, -1); /* as the defaults */
    assert_int_equal(c->user_quotas[0].lim.daily_nusd, -1);
    assert_int_equal(c->user_quotas[0].lim.warn_pct, 50);
    assert_int_equal(c->user_quotas[1].lim.monthly_nusd, -1);
    assert_int_equal(c->naccount_quotas, 1);
    assert_int_equal(c->account_quotas[0].lim.daily_nusd, 0); /* explicitly none */
    assert_true(c->budgets[0].rollover);
    assert_int_equal(c->budgets[0].rollover_cap_nusd, 10000000000LL); /* the limit */
    assert_int_equal(c->budgets[1].rollover_cap_nusd, 2000000000LL);
    cfg_destroy(&c);
    static const err_case_t bad[] = {
        { "window not whole minutes", "[quota]\nwindow = 90s\n", 0, { "whole minutes" }, 1 },
        { "override warn_pct 0", "[quota.user.x]\nwarn_pct = 0\n", 0, { "warn_pct" }, 1 },
        { "override below -1", "[quota.user.x]\ndaily_tokens = -2\n", 0, { "out of range" }, 1 },
        { "unknown key in an override", "[quota.account.a]\nwindow = 1h\n", 0,
          { "unknown key 'window'" }, 1 },
        { "override without an id", "[quota.user.]\n", 0, { "needs a name" }, 1 },
        { "negative money", "[quota]\ndaily_usd = -1\n", 0, { "dollar amount" }, 1 },
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char err[1024];
        cfg_t *x = cfg_load_string(bad[i].text, strlen(bad[i].text), "t.ini", NULL, err, sizeof err);
        if (x || !strstr(err, bad[i].want[0]))
            fail_msg("%s: loaded=%d err=%s", bad[i].name, x != NULL, err);
    }
}

static void test_cfg_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/cfg_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "[global]\ninstance = from-file\n[nope]\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char err[512];
    cfg_t *c = cfg_load(path, err, sizeof err);
    assert_null(c);
    char want[128];
    snprintf(want, sizeof want, "%s:3: unknown section [nope]", path);
    assert_has(err, want);

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[global]\ninstance = from-file\n", f);
    fclose(f);
    c = cfg_load(path, err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    assert_string_equal(c->global.instance, "from-file");
    assert_string_equal(c->path, path);
    cfg_destroy(&c);
    unlink(path);

    assert_null(cfg_load("/nonexistent/tokmon.ini", err, sizeof err));
    assert_has(err, "/nonexistent/tokmon.ini: cannot open");
}

static void test_default_path(void **state)
{
    (void)state;
    const char *saved = getenv("TOKMON_CONFIG");
    char *copy = saved ? strdup(saved) : NULL;
    unsetenv("TOKMON_CONFIG");
    assert_string_equal(cfg_default_path(), CFG_DEFAULT_PATH);
    setenv("TOKMON_CONFIG", "", 1);
    assert_string_equal(cfg_default_path(), CFG_DEFAULT_PATH);
    setenv("TOKMON_CONFIG", "/etc/other.ini", 1);
    assert_string_equal(cfg_default_path(), "/etc/other.ini");
    if (copy)
        setenv("TOKMON_CONFIG", copy, 1);
    else
        unsetenv("TOKMON_CONFIG");
    free(copy);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_pattern_defaults),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_env_unknown_variable_warns),
        cmocka_unit_test(test_env_bad_value_is_an_error),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_several_errors_at_once),
        cmocka_unit_test(test_error_buffer_truncated),
        cmocka_unit_test(test_line_length_boundary),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_money),
        cmocka_unit_test(test_bools_and_enums),
        cmocka_unit_test(test_decimal_rates),
        cmocka_unit_test(test_price_sections),
        cmocka_unit_test(test_replay_endpoints),
        cmocka_unit_test(test_quoted_values),
        cmocka_unit_test(test_whitespace_and_comments),
        cmocka_unit_test(test_timezones),
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_reload_conflicts),
        cmocka_unit_test(test_reload_conflicts_every_type),
        cmocka_unit_test(test_format_usd),
        cmocka_unit_test(test_design_example),
        cmocka_unit_test(test_budget_and_notify_values),
        cmocka_unit_test(test_quota_sections),
        cmocka_unit_test(test_cfg_load_file),
        cmocka_unit_test(test_default_path),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("cfg", tests, NULL, NULL);
}
