/* fuzz_msgpack: libFuzzer target for msgpack from the outside: the usage
 * event decoder over a whole datagram of maps, the strict reader's
 * validation, and the bus envelope decoder (which unpacks with msgpack-c only
 * after mpr_validate has accepted the bytes). */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "event.h"
#include "mpr.h"
#include "msg.h"
#include "xalloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static scratch_t sc;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sc.p) {
        sc.cap = 1 << 17;
        sc.p = xmalloc(sc.cap);
    }
    uint8_t *copy = xmalloc(size ? size : 1);
    memcpy(copy, data, size);
    event_limits_t lim = { 16, 128 };

    /* events, as a datagram of concatenated maps */
    mpr_t r;
    mpr_init(&r, copy, size);
    while (r.p < r.end) {
        const uint8_t *before = r.p;
        event_t ev;
        bool resync;
        sc.len = 0;
        reason_t res = event_parse_msgpack(&r, &lim, &sc, &ev, &resync);
        if (r.p < before || r.p > r.end)
            abort();
        if (res == REASON_NONE && event_check_tokens(&ev.u) != REASON_NONE)
            abort(); /* an accepted event always has consistent tokens */
        if (!resync || r.p == before)
            break;
    }

    /* the envelope path: validate, then unpack */
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    bus_msg_t m;
    char err[256];
    if (bus_envelope_decode(copy, size, &up, &m, err, sizeof err) == 0) {
        if (m.body->type == MSGPACK_OBJECT_ARRAY) {
            for (uint32_t i = 0; i < m.body->via.array.size; i++) {
                msg_usage_t u;
                msg_sample_t s;
                msg_usage_unpack(&m.body->via.array.ptr[i], &u, err, sizeof err);
                msg_sample_unpack(&m.body->via.array.ptr[i], &s, err, sizeof err);
            }
        } else {
            static msg_stat_t entries[MSG_MAX_STATS];
            msg_stats_t st;
            msg_stats_unpack(m.body, &st, entries, MSG_MAX_STATS, err, sizeof err);
        }
    }
    msgpack_unpacked_destroy(&up);
    free(copy);
    return 0;
}
