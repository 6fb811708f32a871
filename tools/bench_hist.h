/*
 * bench_hist: a latency histogram with bounded relative error, for kvs-bench.
 *
 * Log-linear buckets in the style of HdrHistogram: values below 2^7 each get
 * their own bucket; above that, every power-of-two range [2^m, 2^(m+1)) is
 * split into 128 equal buckets, so a bucket is never wider than 1/128 of the
 * smallest value it holds. A percentile is reported as the middle of its
 * bucket (clamped to the observed min and max), which is within 0.4% of the
 * true sample value; BENCH_HIST_REL_ERROR states the promised bound (1%).
 *
 * Memory is fixed (one array in the struct, about 34 KiB); recording is O(1)
 * with no allocation; a percentile query walks the buckets once. Values of
 * 2^40 and above (18 minutes in nanoseconds) are counted in `clamped`, an
 * overflow bucket above all others whose percentile is reported as the exact
 * max; min, max, count and mean always use the exact values.
 * The unit is the caller's: kvs-bench records nanoseconds.
 */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_HIST_SUB_BITS 7  /* 2^7 = 128 buckets per power of two */
#define BENCH_HIST_MAX_BITS 40 /* values >= 2^40 are clamped */
#define BENCH_HIST_SUB_COUNT (1u << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_BUCKETS ((BENCH_HIST_MAX_BITS - BENCH_HIST_SUB_BITS + 1) * BENCH_HIST_SUB_COUNT)
#define BENCH_HIST_REL_ERROR 0.01 /* promised bound on a percentile's relative error */

typedef struct bench_hist_s {
    uint64_t count;   /* values recorded */
    uint64_t clamped; /* of which >= 2^BENCH_HIST_MAX_BITS */
    uint64_t min;     /* exact; UINT64_MAX while empty */
    uint64_t max;     /* exact; 0 while empty */
    double sum;       /* for the mean; a double so huge values cannot wrap */
    uint64_t counts[BENCH_HIST_BUCKETS];
} bench_hist_t;

/* Empties `h` (no memory is allocated, ever). */
void bench_hist_init(bench_hist_t *h);

/* Records one value. O(1). */
void bench_hist_record(bench_hist_t *h, uint64_t v);

/* Records `n` occurrences of `v`. */
void bench_hist_record_n(bench_hist_t *h, uint64_t v, uint64_t n);

/* Adds everything recorded in `src` to `dst`: afterwards `dst` answers
 * exactly as if it had recorded both streams. */
void bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src);

/* The value at percentile `p` (0..100; out-of-range values are clamped):
 * the smallest recorded value v such that at least p% of the values are
 * <= v, within BENCH_HIST_REL_ERROR. 0 when empty. */
uint64_t bench_hist_percentile(const bench_hist_t *h, double p);

/* The arithmetic mean of the recorded values (exact up to double rounding);
 * 0 when empty. */
double bench_hist_mean(const bench_hist_t *h);

/* The bucket `v` falls in (BENCH_HIST_BUCKETS for a clamped value), and a
 * bucket's range [*lo, *hi] (inclusive). Exposed for tests. */
size_t bench_hist_bucket(uint64_t v);
void bench_hist_bucket_range(size_t idx, uint64_t *lo, uint64_t *hi);

#endif
