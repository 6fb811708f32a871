/*
 * kvs_window: events in the last minute, in 5-second buckets (see
 * kvs_window.h).
 */
#include "kvs_window.h"

/* Moves the newest bucket to now's, emptying the buckets that fell out of
 * the window (a clock that went backwards counts in the newest bucket). */
static void advance(kvs_window_t *w, uint64_t now_ms)
{
    uint64_t b = now_ms / KVS_WINDOW_BUCKET_MS;
    if (b <= w->bucket)
        return;
    if (b - w->bucket >= KVS_WINDOW_BUCKETS) {
        for (unsigned i = 0; i < KVS_WINDOW_BUCKETS; i++)
            w->n[i] = 0;
    } else {
        for (uint64_t i = w->bucket + 1; i <= b; i++)
            w->n[i % KVS_WINDOW_BUCKETS] = 0;
    }
    w->bucket = b;
}

void kvs_window_add(kvs_window_t *w, uint64_t now_ms)
{
    advance(w, now_ms);
    uint32_t *c = &w->n[w->bucket % KVS_WINDOW_BUCKETS];
    if (*c < UINT32_MAX)
        (*c)++;
}

uint32_t kvs_window_count(kvs_window_t *w, uint64_t now_ms)
{
    advance(w, now_ms);
    uint64_t sum = 0;
    for (unsigned i = 0; i < KVS_WINDOW_BUCKETS; i++)
        sum += w->n[i];
    return sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
}

uint64_t kvs_window_wait_ms(kvs_window_t *w, uint64_t now_ms, uint32_t limit)
{
    uint64_t left = kvs_window_count(w, now_ms);
    if (left < limit)
        return 0;
    /* Oldest bucket first: bucket b leaves the window when the newest
     * bucket is b + KVS_WINDOW_BUCKETS. */
    uint64_t oldest = w->bucket + 1 >= KVS_WINDOW_BUCKETS ? w->bucket + 1 - KVS_WINDOW_BUCKETS : 0;
    for (uint64_t b = oldest; b <= w->bucket; b++) {
        left -= w->n[b % KVS_WINDOW_BUCKETS];
        if (left < limit) {
            uint64_t at = (b + KVS_WINDOW_BUCKETS) * KVS_WINDOW_BUCKET_MS;
            return at > now_ms ? at - now_ms : 0;
        }
    }
    return KVS_WINDOW_MS; /* unreachable: an empty window counts 0 */
}
