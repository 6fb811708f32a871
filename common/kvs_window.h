/*
 * kvs_window: counts events over the last minute, exactly enough to
 * enforce "at most N in any 60 seconds" (failed Auth attempts per client
 * address). A fixed one-minute window lets 2N through across its
 * boundary (N at the end of one minute, N at the start of the next); this
 * one keeps the last minute in 13 buckets of 5 s, so a count always covers
 * at least the 60 s before `now` (at most 65 s: it errs towards refusing).
 *
 * Pure: the caller passes the time (milliseconds of a monotonic clock), so
 * the rules are tested without waiting. 56 bytes; zeroed is empty.
 */
#ifndef KVS_WINDOW_H
#define KVS_WINDOW_H

#include <stdint.h>

#define KVS_WINDOW_MS 60000u       /* the span counted */
#define KVS_WINDOW_BUCKET_MS 5000u /* the resolution */
#define KVS_WINDOW_BUCKETS (KVS_WINDOW_MS / KVS_WINDOW_BUCKET_MS + 1)

typedef struct kvs_window_s {
    uint64_t bucket;                /* index (time / bucket ms) of the newest bucket */
    uint32_t n[KVS_WINDOW_BUCKETS]; /* events per bucket, a ring indexed by bucket index */
} kvs_window_t;

/* Counts one event at `now`. Saturates rather than wraps. */
void kvs_window_add(kvs_window_t *w, uint64_t now_ms);

/* Events counted in the window ending at `now` (which covers at least
 * [now - 60 s, now]). */
uint32_t kvs_window_count(kvs_window_t *w, uint64_t now_ms);

/* Milliseconds from `now` until the count falls below `limit` (0 when it
 * already is). */
uint64_t kvs_window_wait_ms(kvs_window_t *w, uint64_t now_ms, uint32_t limit);

#endif
