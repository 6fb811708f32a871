/*
 * Unit tests for tools/bench_hist: the latency histogram of kvs-bench.
 *
 * Percentiles are checked against the exact nearest-rank percentile of the
 * same data (computed here from the known distribution or by sorting) and
 * must fall within BENCH_HIST_REL_ERROR; min, max, count and mean must be
 * exact; merging must be indistinguishable from recording both streams.
 *
 * Distributions: uniform 1..1,000,000 (every value once), a constant, two
 * points (the percentile must jump exactly at the boundary), log-uniform
 * values over 40 bits against a sorted copy, and values past the tracked
 * range (clamped into the overflow bucket, still counted, max exact). The
 * bucket layout itself is checked for gaps, overlaps and width.
 */
#include "bench_hist.h"
#include "kvs_test.h"

#include <math.h>

static const double PCTS[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
#define N_PCTS (sizeof(PCTS) / sizeof(PCTS[0]))

static bench_hist_t *hist_new(void)
{
    bench_hist_t *h = malloc(sizeof(*h));
    CHECK(h != NULL);
    bench_hist_init(h);
    return h;
}

/* |got - want| <= BENCH_HIST_REL_ERROR * want */
static void check_close(uint64_t got, uint64_t want)
{
    double err = fabs((double)got - (double)want);
    if (err > BENCH_HIST_REL_ERROR * (double)want) {
        fprintf(stderr, "got %" PRIu64 ", want %" PRIu64 " (+-1%%)\n", got, want);
        CHECK(0);
    }
}

/* Exact nearest-rank percentile of sorted values. */
static uint64_t exact_percentile(const uint64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n - 1e-9);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

KVS_TEST(empty)
{
    bench_hist_t *h = hist_new();
    CHECK_EQ(h->count, 0);
    CHECK_EQ(bench_hist_percentile(h, 50), 0);
    CHECK(bench_hist_mean(h) == 0.0);
    free(h);
}

KVS_TEST(uniform)
{
    bench_hist_t *h = hist_new();
    for (uint64_t v = 1; v <= 1000000; v++)
        bench_hist_record(h, v);
    CHECK_EQ(h->count, 1000000);
    CHECK_EQ(h->min, 1);
    CHECK_EQ(h->max, 1000000);
    CHECK(fabs(bench_hist_mean(h) - 500000.5) < 1e-6);
    for (size_t i = 0; i < N_PCTS; i++) {
        uint64_t rank = (uint64_t)ceil(PCTS[i] / 100.0 * 1e6 - 1e-9);
        check_close(bench_hist_percentile(h, PCTS[i]), rank < 1 ? 1 : rank);
    }
    CHECK_EQ(bench_hist_percentile(h, 100), 1000000);
    free(h);
}

KVS_TEST(constant)
{
    bench_hist_t *h = hist_new();
    bench_hist_record_n(h, 123456789, 100000);
    for (size_t i = 0; i < N_PCTS; i++)
        CHECK_EQ(bench_hist_percentile(h, PCTS[i]), 123456789);
    CHECK(bench_hist_mean(h) == 123456789.0);
    CHECK_EQ(h->min, 123456789);
    CHECK_EQ(h->max, 123456789);
    free(h);
}

KVS_TEST(two_point)
{
    bench_hist_t *h = hist_new();
    bench_hist_record_n(h, 100, 900);
    for (int i = 0; i < 100; i++)
        bench_hist_record(h, 5000000);
    CHECK_EQ(bench_hist_percentile(h, 50), 100);
    CHECK_EQ(bench_hist_percentile(h, 90), 100);
    check_close(bench_hist_percentile(h, 90.1), 5000000);
    check_close(bench_hist_percentile(h, 99), 5000000);
    CHECK_EQ(bench_hist_percentile(h, 100), 5000000);
    CHECK(fabs(bench_hist_mean(h) - (900.0 * 100 + 100.0 * 5000000) / 1000.0) < 1e-6);
    free(h);
}

/* Log-uniform values from 1 ns to ~17 minutes, against a sorted copy. */
KVS_TEST(random_vs_sorted)
{
    enum { N = 200000 };
    uint64_t *v = malloc(N * sizeof(*v)), s = 0x9e3779b97f4a7c15ull, max = 0;
    CHECK(v != NULL);
    bench_hist_t *h = hist_new();
    for (size_t i = 0; i < N; i++) {
        uint64_t r = rng_next(&s);
        v[i] = (r >> 24) >> (r % 40); /* a 40-bit mantissa shifted 0..39 */
        v[i] += 1;
        bench_hist_record(h, v[i]);
        if (v[i] > max)
            max = v[i];
    }
    qsort(v, N, sizeof(*v), cmp_u64);
    for (size_t i = 0; i < N_PCTS; i++)
        check_close(bench_hist_percentile(h, PCTS[i]), exact_percentile(v, N, PCTS[i]));
    CHECK_EQ(h->max, max);
    CHECK_EQ(h->min, v[0]);
    CHECK_EQ(h->clamped, 0);
    free(v);
    free(h);
}

KVS_TEST(max_exact)
{
    bench_hist_t *h = hist_new();
    uint64_t s = 42, max = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t x = rng_next(&s) % 987654321;
        bench_hist_record(h, x);
        if (x > max)
            max = x;
    }
    bench_hist_record(h, 987654321 + 7); /* not a bucket boundary */
    CHECK_EQ(h->max, 987654328);
    CHECK_EQ(bench_hist_percentile(h, 100), 987654328);
    CHECK(max < 987654328);
    free(h);
}

KVS_TEST(merge_equals_both)
{
    bench_hist_t *a = hist_new(), *b = hist_new(), *both = hist_new();
    uint64_t s = 7;
    for (int i = 0; i < 50000; i++) {
        uint64_t x = rng_next(&s) % 100000, y = 1000000 + rng_next(&s) % 50000000;
        bench_hist_record(a, x);
        bench_hist_record(b, y);
        bench_hist_record(both, x);
        bench_hist_record(both, y);
    }
    bench_hist_record(b, UINT64_MAX);
    bench_hist_record(both, UINT64_MAX);
    bench_hist_merge(a, b);
    CHECK(memcmp(a->counts, both->counts, sizeof(a->counts)) == 0);
    CHECK_EQ(a->count, both->count);
    CHECK_EQ(a->clamped, both->clamped);
    CHECK(a->min == both->min && a->max == both->max);
    CHECK(fabs(a->sum - both->sum) <= 1e-9 * both->sum);
    for (size_t i = 0; i < N_PCTS; i++)
        CHECK(bench_hist_percentile(a, PCTS[i]) == bench_hist_percentile(both, PCTS[i]));
    bench_hist_t *empty = hist_new();
    bench_hist_merge(a, empty); /* merging nothing changes nothing */
    CHECK(a->min == both->min && a->count == both->count);
    free(a);
    free(b);
    free(both);
    free(empty);
}

KVS_TEST(huge_values)
{
    bench_hist_t *h = hist_new();
    uint64_t limit = (uint64_t)1 << BENCH_HIST_MAX_BITS;
    bench_hist_record_n(h, 1000, 97);
    bench_hist_record(h, limit - 1);  /* the last regular bucket */
    bench_hist_record(h, limit);      /* clamped */
    bench_hist_record(h, UINT64_MAX); /* clamped */
    CHECK_EQ(h->count, 100);
    CHECK_EQ(h->clamped, 2);
    CHECK(h->max == UINT64_MAX);
    CHECK_EQ(bench_hist_bucket(limit - 1), BENCH_HIST_BUCKETS - 1);
    CHECK_EQ(bench_hist_bucket(limit), BENCH_HIST_BUCKETS);
    check_close(bench_hist_percentile(h, 97), 1000);
    check_close(bench_hist_percentile(h, 98), limit - 1);
    CHECK(bench_hist_percentile(h, 99) == UINT64_MAX); /* among the clamped */
    CHECK(bench_hist_percentile(h, 100) == UINT64_MAX);
    CHECK(bench_hist_mean(h) > 1e17); /* no wrap-around */
    free(h);
}

/* Every bucket is contiguous with the next, contains what maps to it, and is
 * at most 1/128 of its lower bound wide. */
KVS_TEST(bucket_layout)
{
    uint64_t prev_hi = 0;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
        uint64_t lo, hi;
        bench_hist_bucket_range(i, &lo, &hi);
        CHECK(i == 0 || lo == prev_hi + 1);
        CHECK_EQ(bench_hist_bucket(lo), i);
        CHECK_EQ(bench_hist_bucket(hi), i);
        CHECK(hi - lo == 0 || (double)(hi - lo + 1) <= (double)lo / BENCH_HIST_SUB_COUNT);
        prev_hi = hi;
    }
    CHECK_EQ(prev_hi, ((uint64_t)1 << BENCH_HIST_MAX_BITS) - 1);
}

KVS_TEST_MAIN(KVS_CASE(empty), KVS_CASE(uniform), KVS_CASE(constant), KVS_CASE(two_point),
              KVS_CASE(random_vs_sorted), KVS_CASE(max_exact), KVS_CASE(merge_equals_both),
              KVS_CASE(huge_values), KVS_CASE(bucket_layout))
