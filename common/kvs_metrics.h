/*
 * kvs_metrics: counters and histograms cheap enough for every request, and
 * their Prometheus form.
 *
 * Collecting: plain uint64_t counters and fixed-bucket histograms owned by
 * one loop thread (no locks, no atomics, no allocation). A request costs
 * its counter increment and one histogram observation: a short scan of at
 * most 16 bucket bounds, one increment, one add.
 *
 * Reporting: a process builds its metric families (kvs.MetricFamily, the
 * messages of proto/kvs.proto) on demand with a builder, in arena memory;
 * they travel as they are in a Metrics answer (worker -> router), and
 * kvs_metrics_render writes any list of families as Prometheus text
 * exposition format 0.0.4, merging families of the same name (the router
 * and each worker report kvs_process_resident_memory_bytes, for example,
 * told apart by their labels).
 *
 * Names follow Prometheus conventions: the kvs_ prefix, base units
 * (seconds, bytes), _total for counters, histograms with le buckets.
 */
#ifndef KVS_METRICS_H
#define KVS_METRICS_H

#include "kvs_buf.h"
#include "kvs_msg.h"

#include "kvs_time.h"
#include "kvs_tls.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_HIST_MAX 16 /* bucket bounds per histogram (+Inf is one more) */

/* Request latency buckets: 100 us to 10 s. */
#define KVS_LATENCY_BUCKETS 16
extern const uint64_t kvs_latency_bounds_ns[KVS_LATENCY_BUCKETS];

/* A histogram: counts per bucket (the last one is +Inf) and the sum of the
 * observed values, in the unit the bounds use. */
typedef struct kvs_hist_s {
    uint64_t buckets[KVS_HIST_MAX + 1];
    uint64_t sum;
} kvs_hist_t;

/* Counts `v` in the first bucket whose bound is >= v (Prometheus's le). */
static inline void kvs_hist_observe(kvs_hist_t *h, const uint64_t *bounds, unsigned n, uint64_t v)
{
    unsigned i = 0;
    while (i < n && v > bounds[i])
        i++;
    h->buckets[i]++;
    h->sum += v;
}

/* ---- requests by command and status -------------------------------------- */

#define KVS_METRICS_COMMANDS 22 /* CommandRequest oneof cases 0..21; others count as 0 */

/* The statuses counted on their own; any other is "other". */
enum {
    KVS_MST_200,
    KVS_MST_207,
    KVS_MST_400,
    KVS_MST_401,
    KVS_MST_403,
    KVS_MST_404,
    KVS_MST_413,
    KVS_MST_500,
    KVS_MST_503,
    KVS_MST_507,
    KVS_MST_OTHER,
    KVS_METRICS_STATUSES
};

/* The index of a status in kvs_req_metrics_t.count. */
static inline unsigned kvs_metrics_status_index(uint32_t status)
{
    switch (status) {
    case 200:
        return KVS_MST_200;
    case 207:
        return KVS_MST_207;
    case 400:
        return KVS_MST_400;
    case 401:
        return KVS_MST_401;
    case 403:
        return KVS_MST_403;
    case 404:
        return KVS_MST_404;
    case 413:
        return KVS_MST_413;
    case 500:
        return KVS_MST_500;
    case 503:
        return KVS_MST_503;
    case 507:
        return KVS_MST_507;
    default:
        return KVS_MST_OTHER;
    }
}

/* Requests counted by command and status, with a latency histogram (ns)
 * per command. */
typedef struct kvs_req_metrics_s {
    uint64_t count[KVS_METRICS_COMMANDS][KVS_METRICS_STATUSES];
    kvs_hist_t latency[KVS_METRICS_COMMANDS];
} kvs_req_metrics_t;

/* One answered request: `command` a CommandRequest case, `ns` its time. */
static inline void kvs_req_metrics_count(kvs_req_metrics_t *m, uint32_t command, uint32_t status,
                                         uint64_t ns)
{
    unsigned c = command < KVS_METRICS_COMMANDS ? command : 0;
    m->count[c][kvs_metrics_status_index(status)]++;
    kvs_hist_observe(&m->latency[c], kvs_latency_bounds_ns, KVS_LATENCY_BUCKETS, ns);
}

/* ---- building families ------------------------------------------------------ */

/* Builds a list of metric families in arena memory. Errors (memory) are
 * sticky: check `failed` at the end. */
typedef struct kvs_mb_s {
    kvs_arena_t *arena;
    Kvs__MetricFamily **fams;
    size_t n, cap;
    int failed;
} kvs_mb_t;

void kvs_mb_init(kvs_mb_t *b, kvs_arena_t *arena);

/* A new family (help is copied). Returns NULL when out of memory. */
Kvs__MetricFamily *kvs_mb_family(kvs_mb_t *b, const char *name, Kvs__MetricFamily__Type type,
                                 const char *help);

/* Appends an existing family (one decoded from a worker's answer, say),
 * which must live as long as the list. */
void kvs_mb_add(kvs_mb_t *b, Kvs__MetricFamily *f);

/* A counter or gauge sample with `nlabels` label pairs given as
 * name1, value1, name2, value2, ... (const char *; copied). */
void kvs_mb_sample(kvs_mb_t *b, Kvs__MetricFamily *f, double value, unsigned nlabels, ...);

/* A histogram sample: `h` observed in units of `scale` (1e-9 for ns ->
 * seconds; 1 for counts) against `bounds` (n of them, in the same raw
 * unit). The family's bounds are set from the first sample. */
void kvs_mb_hist(kvs_mb_t *b, Kvs__MetricFamily *f, const kvs_hist_t *h, const uint64_t *bounds,
                 unsigned n, double scale, unsigned nlabels, ...);

/* Every family of `m`, with `labels` (nlabels pairs, e.g. "shard", "2")
 * before command and status: <prefix>requests_total and
 * <prefix>request_duration_seconds. */
void kvs_mb_requests(kvs_mb_t *b, const kvs_req_metrics_t *m, const char *prefix, const char *what,
                     unsigned nlabels, const char *const *labels);

/* kvs_tls_reloads_total: the SIGHUP reloads of each TLS context of
 * ctx[0..n) that is not NULL, by settings (tls.router, ...) and result
 * (ok, error: the previous material kept), labelled role=`role` and
 * who_label=`who` (shard; NULL: none, the caller's process label comes
 * later). */
void kvs_mb_tls_reloads(kvs_mb_t *b, kvs_tls_ctx_t *const *ctx, size_t n, const char *role,
                        const char *who_label, const char *who);

/* The process's own: kvs_process_resident_memory_bytes,
 * kvs_process_cpu_seconds_total, kvs_process_open_fds,
 * kvs_process_max_fds, kvs_process_start_time_seconds, labelled with
 * `labels` (role, and shard for a worker). start_time is the Unix time the
 * process started. */
void kvs_mb_process(kvs_mb_t *b, double start_time, unsigned nlabels, const char *const *labels);

/* Puts the label name="value" first on every sample of the families
 * added since the list held `from` of them (a process's own families,
 * told apart from another process's: router="1"). */
void kvs_mb_label_all(kvs_mb_t *b, size_t from, const char *name, const char *value);

/* A printf'd label value in the builder's arena ("" when out of memory). */
const char *kvs_mb_printf(kvs_mb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- text exposition ------------------------------------------------------- */

/* Appends families[0..n) to `out` in Prometheus text format: one HELP and
 * TYPE line per name, then the samples of every family of that name (in
 * list order; a later family of the same name but another type is left
 * out). Names and label names that Prometheus would not accept are left
 * out too. Returns 0 or -ENOMEM. */
int kvs_metrics_render(Kvs__MetricFamily *const *families, size_t n, kvs_buf_t *out);

/* The Unix time now, as a double (for start times). */
double kvs_metrics_unix_now(void);

#endif
