/*
 * Unit tests for kvs_fresh: the catch-up gate and minimum positions, the
 * decision every reader of a partition makes.
 */
#include "kvs_fresh.h"
#include "kvs_test.h"

static kvs_fresh_verdict_t decide(int64_t next, int64_t end, uint64_t max_lag, int64_t min_off,
                                  int stale, uint64_t *count)
{
    kvs_fresh_part_t p = {.next = next, .end = end};
    return kvs_fresh_decide(&p, max_lag, min_off, stale, count);
}

KVS_TEST(lag)
{
    kvs_fresh_part_t p = {.next = 10, .end = 25};
    CHECK_EQ(kvs_fresh_lag(&p), 15);
    p.end = 10;
    CHECK_EQ(kvs_fresh_lag(&p), 0);
    p.end = 5; /* a watermark heard before the records applied since */
    CHECK_EQ(kvs_fresh_lag(&p), 0);
    p.end = -1;
    CHECK_EQ(kvs_fresh_lag(&p), -1);
    p.end = 5;
    p.next = -1;
    CHECK_EQ(kvs_fresh_lag(&p), -1);
}

KVS_TEST(catch_up_gate)
{
    uint64_t n = 99;
    /* at the limit: serves; one past it: catching up, with the lag */
    CHECK_EQ(decide(0, 100, 100, -1, 0, &n), KVS_FRESH_SERVE);
    CHECK_EQ(n, 0);
    CHECK_EQ(decide(0, 101, 100, -1, 0, &n), KVS_FRESH_CATCHING_UP);
    CHECK_EQ(n, 101);
    /* max_lag 0: only a copy that has everything serves */
    CHECK_EQ(decide(7, 7, 0, -1, 0, &n), KVS_FRESH_SERVE);
    CHECK_EQ(decide(7, 8, 0, -1, 0, &n), KVS_FRESH_CATCHING_UP);
    CHECK_EQ(n, 1);
    /* stale accepted: the gate is open */
    CHECK_EQ(decide(0, 1000000, 100, -1, 1, &n), KVS_FRESH_SERVE);
    /* unknown lag (brokers never reached): served from what is there */
    CHECK_EQ(decide(5, -1, 0, -1, 0, &n), KVS_FRESH_SERVE);
    CHECK_EQ(decide(-1, 100, 0, -1, 0, &n), KVS_FRESH_SERVE);
    CHECK(!kvs_fresh_serving(&(kvs_fresh_part_t){.next = 0, .end = 11}, 10));
    CHECK(kvs_fresh_serving(&(kvs_fresh_part_t){.next = 1, .end = 11}, 10));
    CHECK(kvs_fresh_serving(&(kvs_fresh_part_t){.next = 1, .end = -1}, 0));
}

KVS_TEST(minimum_position)
{
    uint64_t n = 0;
    /* position 9 = the record at offset 9: applied once next is 10 */
    CHECK_EQ(decide(10, 10, 100, 9, 0, &n), KVS_FRESH_SERVE);
    CHECK_EQ(decide(9, 10, 100, 9, 0, &n), KVS_FRESH_BEHIND);
    CHECK_EQ(n, 1);
    CHECK_EQ(decide(4, 10, 100, 9, 0, &n), KVS_FRESH_BEHIND);
    CHECK_EQ(n, 6);
    /* nothing applied, start unknown, brokers not reached: nothing to wait for */
    CHECK_EQ(decide(-1, -1, 100, 0, 0, &n), KVS_FRESH_AHEAD);
    CHECK_EQ(n, 1);
    CHECK_EQ(decide(-1, 1, 100, 0, 0, &n), KVS_FRESH_BEHIND);
    /* a position past the known end: ahead, refused at once */
    CHECK_EQ(decide(10, 10, 100, 50, 0, &n), KVS_FRESH_AHEAD);
    CHECK_EQ(n, 41);
    CHECK_EQ(decide(10, 11, 100, 10, 0, &n), KVS_FRESH_BEHIND); /* the last record: behind */
    CHECK_EQ(decide(10, 11, 100, 11, 0, &n), KVS_FRESH_AHEAD);  /* one past it: ahead */
    CHECK_EQ(decide(10, -1, 100, 10, 1, &n), KVS_FRESH_AHEAD);  /* end unknown */
    /* accepting stale data does not lift a position the read asked for */
    CHECK_EQ(decide(4, 10, 100, 9, 1, &n), KVS_FRESH_BEHIND);
    /* the gate comes first: a catching-up copy says so at once */
    CHECK_EQ(decide(0, 500, 100, 9, 0, &n), KVS_FRESH_CATCHING_UP);
    CHECK_EQ(n, 500);
    CHECK_EQ(decide(0, 500, 100, 9, 1, &n), KVS_FRESH_BEHIND);
    CHECK_EQ(n, 10);
    /* no count wanted */
    CHECK_EQ(decide(0, 500, 100, 9, 1, NULL), KVS_FRESH_BEHIND);
}

KVS_TEST(settling)
{
    uint64_t n = 99;
    kvs_fresh_part_t p = {.next = 40, .end = -1, .settling = 1};
    /* just started, end offset not heard yet: no reads, positions or not */
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 0, &n), KVS_FRESH_STARTING);
    CHECK_EQ(n, 0);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 10, 0, &n), KVS_FRESH_STARTING);
    CHECK(!kvs_fresh_serving(&p, 100));
    /* ... unless stale data is accepted; a position not applied yet still
     * waits for the end offset (only then can it tell behind from ahead) */
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 1, &n), KVS_FRESH_SERVE);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 39, 1, &n), KVS_FRESH_SERVE);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 45, 1, &n), KVS_FRESH_STARTING);
    CHECK_EQ(n, 6);
    /* once the end is known the lag decides, settling or not */
    p.end = 41;
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 0, &n), KVS_FRESH_SERVE);
    p.end = 400;
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 0, &n), KVS_FRESH_CATCHING_UP);
    /* the verdicts order from best to worst */
    CHECK(KVS_FRESH_SERVE < KVS_FRESH_BEHIND && KVS_FRESH_BEHIND < KVS_FRESH_STARTING &&
          KVS_FRESH_STARTING < KVS_FRESH_AHEAD && KVS_FRESH_AHEAD < KVS_FRESH_CATCHING_UP);
}

KVS_TEST(diverged)
{
    uint64_t n = 99;
    /* the log ends at 6 below the 62 applied: refused first of all */
    kvs_fresh_part_t p = {.next = 62, .end = 6, .diverged = 1};
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 0, &n), KVS_FRESH_DIVERGED);
    CHECK_EQ(n, 0);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 10, 0, &n), KVS_FRESH_DIVERGED);
    CHECK(!kvs_fresh_serving(&p, 100));
    p.settling = 1;
    p.end = -1;
    CHECK_EQ(kvs_fresh_decide(&p, 0, -1, 0, &n), KVS_FRESH_DIVERGED);
    /* stale accepted: what was applied is served; positions still count */
    p.settling = 0;
    p.end = 6;
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 1, &n), KVS_FRESH_SERVE);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 61, 1, &n), KVS_FRESH_SERVE);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 62, 1, &n), KVS_FRESH_AHEAD);
    /* the worst verdict of all, and one of those refused at once */
    CHECK(KVS_FRESH_CATCHING_UP < KVS_FRESH_DIVERGED);
    CHECK(KVS_FRESH_DIVERGED >= KVS_FRESH_REFUSED && KVS_FRESH_CATCHING_UP >= KVS_FRESH_REFUSED);
    CHECK(KVS_FRESH_AHEAD < KVS_FRESH_REFUSED);
}

KVS_TEST(resized)
{
    uint64_t n = 99;
    /* the topic has 8 partitions now, kvs placed it by 4: nothing serves,
     * a fresh partition, stale accepted or a position met included */
    kvs_fresh_part_t p = {.next = 10, .end = 10, .topic_partitions = 8};
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 0, &n), KVS_FRESH_RESIZED);
    CHECK_EQ(n, 0);
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 1, &n), KVS_FRESH_RESIZED);
    CHECK_EQ(kvs_fresh_decide(&p, 100, 5, 1, &n), KVS_FRESH_RESIZED);
    CHECK(!kvs_fresh_serving(&p, 100));
    /* before every other verdict */
    p.diverged = 1;
    p.settling = 1;
    CHECK_EQ(kvs_fresh_decide(&p, 0, -1, 0, &n), KVS_FRESH_RESIZED);
    CHECK(KVS_FRESH_DIVERGED < KVS_FRESH_RESIZED && KVS_FRESH_RESIZED >= KVS_FRESH_REFUSED);
    /* the same count again (0): the other rules decide */
    p.topic_partitions = 0;
    CHECK_EQ(kvs_fresh_decide(&p, 0, -1, 0, &n), KVS_FRESH_DIVERGED);
    p.diverged = 0;
    p.settling = 0;
    CHECK_EQ(kvs_fresh_decide(&p, 100, -1, 0, &n), KVS_FRESH_SERVE);
}

KVS_TEST_MAIN(KVS_CASE(lag), KVS_CASE(catch_up_gate), KVS_CASE(minimum_position),
              KVS_CASE(settling), KVS_CASE(diverged), KVS_CASE(resized))
