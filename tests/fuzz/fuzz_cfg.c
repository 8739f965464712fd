/* fuzz_cfg: libFuzzer target for the config loader. The input is an INI
 * text; a fixed fake environment adds overrides. Loading must either succeed
 * with a config that frees cleanly, or fail with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "xalloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *const envp[] = { "TOKMON_COLLECTD_BATCH_MAX=64", "TOKMON_BUDGET_DAILY_LIMIT_USD=3.5",
                                  "TOKMON_NOPE=1", NULL };
    char err[4096];
    char *copy = xmalloc(size ? size : 1);
    memcpy(copy, data, size);
    cfg_t *c = cfg_load_string(copy, size, "fuzz.ini", envp, err, sizeof err);
    if (!c && !err[0])
        abort(); /* a refusal always says why */
    if (c) {
        cfg_t *d = cfg_load_string(copy, size, "fuzz.ini", envp, err, sizeof err);
        if (!d)
            abort(); /* loading is deterministic */
        cfg_reload_conflicts(c, d, NULL, NULL);
        cfg_keep_restart_keys(d, c);
        cfg_destroy(&d);
    }
    cfg_destroy(&c);
    free(copy);
    return 0;
}
