/*
 * bench_hist: log-linear latency histogram (see bench_hist.h for the error
 * bound and the memory it takes).
 *
 * Bucket layout. Let S = BENCH_HIST_SUB_BITS and N = 2^S.
 *  - Values 0 .. N-1 map to buckets 0 .. N-1, one value each (exact).
 *  - A value v >= N with highest set bit m (2^m <= v < 2^(m+1)) keeps its
 *    top S+1 bits: bucket (m - S + 1) * N + (v >> (m - S)) - N. Each power of
 *    two thus owns N consecutive buckets of width 2^(m-S) <= v / N.
 *  - The layout is continuous: 2^S - 1 is bucket N - 1 and 2^S is bucket N.
 *  - Values >= 2^BENCH_HIST_MAX_BITS do not get a regular bucket; they are
 *    counted in `clamped`, an overflow bucket that sorts after every regular
 *    one and reports the exact maximum.
 *
 * Percentiles use the nearest-rank definition (the value whose rank is
 * ceil(p/100 * count)) and report the middle of that value's bucket clamped
 * to [min, max], so a distribution of one constant is reported exactly; the
 * first and last ranks report the exact min and max.
 *
 * Not thread-safe; kvs-bench records from its one loop thread.
 */
#include "bench_hist.h"

#include <math.h>
#include <string.h>

void bench_hist_init(bench_hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

size_t bench_hist_bucket(uint64_t v)
{
    if (v < BENCH_HIST_SUB_COUNT)
        return (size_t)v;
    unsigned m = 63u - (unsigned)__builtin_clzll(v);
    if (m >= BENCH_HIST_MAX_BITS)
        return BENCH_HIST_BUCKETS; /* the overflow bucket */
    unsigned shift = m - BENCH_HIST_SUB_BITS;
    return (size_t)(m - BENCH_HIST_SUB_BITS + 1) * BENCH_HIST_SUB_COUNT +
           (size_t)((v >> shift) - BENCH_HIST_SUB_COUNT);
}

void bench_hist_bucket_range(size_t idx, uint64_t *lo, uint64_t *hi)
{
    if (idx < BENCH_HIST_SUB_COUNT) {
        *lo = *hi = idx;
        return;
    }
    if (idx >= BENCH_HIST_BUCKETS) {
        *lo = (uint64_t)1 << BENCH_HIST_MAX_BITS;
        *hi = UINT64_MAX;
        return;
    }
    unsigned shift = (unsigned)(idx / BENCH_HIST_SUB_COUNT) - 1u;
    uint64_t sub = idx % BENCH_HIST_SUB_COUNT;
    *lo = (BENCH_HIST_SUB_COUNT + sub) << shift;
    *hi = *lo + ((uint64_t)1 << shift) - 1;
}

void bench_hist_record_n(bench_hist_t *h, uint64_t v, uint64_t n)
{
    if (n == 0)
        return;
    size_t idx = bench_hist_bucket(v);
    if (idx < BENCH_HIST_BUCKETS)
        h->counts[idx] += n;
    else
        h->clamped += n;
    h->count += n;
    h->sum += (double)v * (double)n;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void bench_hist_record(bench_hist_t *h, uint64_t v)
{
    bench_hist_record_n(h, v, 1);
}

void bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src)
{
    if (src->count == 0)
        return;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->clamped += src->clamped;
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

/* The nearest rank (1-based) of percentile p among `count` values. The small
 * slack keeps 99.9% of 1000 values at rank 999 despite binary rounding. */
static uint64_t percentile_rank(double p, uint64_t count)
{
    if (!(p > 0.0))
        p = 0.0;
    if (p > 100.0)
        p = 100.0;
    double x = p / 100.0 * (double)count;
    double r = ceil(x - 1e-9 * (x > 1.0 ? x : 1.0));
    if (r < 1.0)
        return 1;
    if (r >= (double)count)
        return count;
    return (uint64_t)r;
}

uint64_t bench_hist_percentile(const bench_hist_t *h, double p)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = percentile_rank(p, h->count), seen = 0;
    if (rank == h->count)
        return h->max; /* the extremes are known exactly */
    if (rank == 1)
        return h->min;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen < rank)
            continue;
        uint64_t lo, hi;
        bench_hist_bucket_range(i, &lo, &hi);
        uint64_t v = lo + (hi - lo) / 2;
        if (v < h->min)
            v = h->min;
        if (v > h->max)
            v = h->max;
        return v;
    }
    return h->max; /* the rank lies among the clamped values */
}

double bench_hist_mean(const bench_hist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
