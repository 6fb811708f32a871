/*
 * kvs_fresh: the freshness rules (see kvs_fresh.h). Kept apart from any
 * state so the worker, and later the router, call the very same function.
 *
 * `next` unknown (-1) means nothing was applied and the brokers have not
 * said where the partition starts: for a minimum position that counts as
 * next = 0 (every record of the partition is still missing), for the lag
 * as unknown.
 *
 * Waiting is for records that exist: a read is "behind" only when the
 * record it needs is below the end offset the copy knows; one past it
 * (not written yet as far as the copy knows, or the end unknown because
 * the brokers cannot be reached) is "ahead" and refused at once, so that a
 * made-up position cannot make a reader wait out its whole time.
 */
#include "kvs_fresh.h"

#include <stddef.h>

int64_t kvs_fresh_lag(const kvs_fresh_part_t *p)
{
    if (p->next < 0 || p->end < 0)
        return -1;
    return p->end > p->next ? p->end - p->next : 0;
}

kvs_fresh_verdict_t kvs_fresh_decide(const kvs_fresh_part_t *p, uint64_t max_lag,
                                     int64_t min_offset, int accept_stale, uint64_t *count)
{
    int64_t lag = kvs_fresh_lag(p);
    if (count != NULL)
        *count = 0;
    if (p->topic_partitions != 0)
        return KVS_FRESH_RESIZED; /* no answer is right, however stale it may be */
    if (!accept_stale && p->diverged)
        return KVS_FRESH_DIVERGED;
    if (!accept_stale && p->settling && lag < 0)
        return KVS_FRESH_STARTING;
    if (!accept_stale && lag >= 0 && (uint64_t)lag > max_lag) {
        if (count != NULL)
            *count = (uint64_t)lag;
        return KVS_FRESH_CATCHING_UP;
    }
    int64_t next = p->next < 0 ? 0 : p->next;
    if (min_offset < 0 || next > min_offset)
        return KVS_FRESH_SERVE;
    if (count != NULL)
        *count = (uint64_t)(min_offset - next) + 1;
    if (p->end >= 0 && min_offset < p->end)
        return KVS_FRESH_BEHIND; /* the record is in the topic: it will be applied */
    return p->settling ? KVS_FRESH_STARTING : KVS_FRESH_AHEAD;
}

int kvs_fresh_serving(const kvs_fresh_part_t *p, uint64_t max_lag)
{
    return kvs_fresh_decide(p, max_lag, -1, 0, NULL) == KVS_FRESH_SERVE;
}
