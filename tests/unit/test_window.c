/*
 * Unit tests for kvs_window: "at most N in any 60 s" holds across minute
 * boundaries (where a fixed window lets 2N through), events leave the
 * window when they are a minute old (within one bucket), and the wait it
 * reports is when the count really falls below the limit.
 */
#include "kvs_test.h"
#include "kvs_window.h"

#include <string.h>

/* An event stream that hits the window at every step: the count at t
 * must be at least the true number of events in [t - 60 s, t], and at
 * most the number in [t - 65 s, t]. */
KVS_TEST(count_covers_the_last_minute)
{
    kvs_window_t w;
    memset(&w, 0, sizeof(w));
    enum { EVENTS = 400 };
    uint64_t at[EVENTS];
    uint64_t t = 1000000; /* a monotonic clock does not start at 0 */
    for (int i = 0; i < EVENTS; i++) {
        t += (uint64_t)((i * 7919) % 2300); /* irregular gaps, 0 to 2.3 s */
        at[i] = t;
        kvs_window_add(&w, t);
        for (uint64_t probe = t; probe < t + 3 * KVS_WINDOW_MS; probe += 9973) {
            kvs_window_t copy = w;
            uint32_t in60 = 0, in65 = 0;
            for (int j = 0; j <= i; j++) {
                in60 += probe - at[j] <= KVS_WINDOW_MS;
                in65 += probe - at[j] < KVS_WINDOW_MS + KVS_WINDOW_BUCKET_MS;
            }
            uint32_t c = kvs_window_count(&copy, probe);
            CHECK(c >= in60);
            CHECK(c <= in65);
        }
    }
}

/* The attack on a fixed window: N at 59.9 s into a minute, N more just
 * after it. With a limit of N, the second N are refused. */
KVS_TEST(no_double_burst_across_a_boundary)
{
    const uint32_t limit = 20;
    kvs_window_t w;
    memset(&w, 0, sizeof(w));
    uint64_t t0 = 7 * KVS_WINDOW_MS + 59900;
    uint32_t accepted = 0;
    for (uint32_t i = 0; i < 2 * limit; i++) {
        uint64_t now = t0 + i * 10; /* 400 ms in all, across the boundary */
        if (kvs_window_count(&w, now) < limit) {
            kvs_window_add(&w, now);
            accepted++;
        }
    }
    CHECK_EQ(accepted, limit);
    /* Refused until the first events are a minute old, accepted after. */
    CHECK(kvs_window_count(&w, t0 + KVS_WINDOW_MS) >= limit);
    CHECK(kvs_window_count(&w, t0 + KVS_WINDOW_MS + KVS_WINDOW_BUCKET_MS + 1000) == 0);
}

KVS_TEST(wait_is_when_the_count_falls_below_the_limit)
{
    kvs_window_t w;
    memset(&w, 0, sizeof(w));
    uint64_t t = 5000000;
    CHECK_EQ(kvs_window_wait_ms(&w, t, 1), 0);
    kvs_window_add(&w, t);         /* 1 at t */
    kvs_window_add(&w, t + 20000); /* 1 at t + 20 s */
    kvs_window_add(&w, t + 20000);
    uint64_t now = t + 30000;
    CHECK_EQ(kvs_window_wait_ms(&w, now, 4), 0);
    uint64_t wait3 = kvs_window_wait_ms(&w, now, 3); /* the event at t must leave */
    uint64_t wait1 = kvs_window_wait_ms(&w, now, 1); /* all of them must leave */
    CHECK(wait3 > 0 && wait3 < wait1);
    kvs_window_t c = w;
    CHECK_EQ(kvs_window_count(&c, now + wait3 - 1), 3);
    c = w;
    CHECK_EQ(kvs_window_count(&c, now + wait3), 2);
    c = w;
    CHECK_EQ(kvs_window_count(&c, now + wait1 - 1), 2);
    c = w;
    CHECK_EQ(kvs_window_count(&c, now + wait1), 0);
    /* Bounded by the window's span plus one bucket. */
    CHECK(wait1 <= KVS_WINDOW_MS + KVS_WINDOW_BUCKET_MS);
}

KVS_TEST(long_idle_empties_and_counts_saturate)
{
    kvs_window_t w;
    memset(&w, 0, sizeof(w));
    w.n[3] = UINT32_MAX;
    w.n[4] = UINT32_MAX;
    w.bucket = 4;
    CHECK_EQ(kvs_window_count(&w, 4 * KVS_WINDOW_BUCKET_MS), UINT32_MAX);
    kvs_window_add(&w, 4 * KVS_WINDOW_BUCKET_MS);
    CHECK_EQ(w.n[4], UINT32_MAX);
    CHECK_EQ(kvs_window_count(&w, 1000000 * (uint64_t)KVS_WINDOW_MS), 0);
    kvs_window_add(&w, 1000000 * (uint64_t)KVS_WINDOW_MS);
    CHECK_EQ(kvs_window_count(&w, 1000000 * (uint64_t)KVS_WINDOW_MS + 1), 1);
}

KVS_TEST_MAIN(KVS_CASE(count_covers_the_last_minute), KVS_CASE(no_double_burst_across_a_boundary),
              KVS_CASE(wait_is_when_the_count_falls_below_the_limit),
              KVS_CASE(long_idle_empties_and_counts_saturate))
