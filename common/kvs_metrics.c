/*
 * kvs_metrics: histograms, the family builder and the Prometheus text
 * renderer (see kvs_metrics.h).
 *
 * The builder keeps everything in the caller's arena: families, samples,
 * label strings (copied, so labels may come from anywhere) and the growing
 * family list (doubled by copying; the old array stays in the arena until
 * it is reset, which is cheap for a list of a few dozen pointers).
 *
 * The renderer writes exposition format 0.0.4: `# HELP name text` (with \\
 * and \n escaped), `# TYPE name counter|gauge|histogram`, then samples
 * `name{label="value",...} number` (label values escape \\, " and \n).
 * Histograms become cumulative `name_bucket{...,le="B"}` lines, +Inf last,
 * then `name_sum` and `name_count`. Numbers are printed with the fewest
 * digits that read back as the same double, so bounds show as 0.00025,
 * not 0.00025000000000000001.
 */
#include "kvs_metrics.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

const uint64_t kvs_latency_bounds_ns[KVS_LATENCY_BUCKETS] = {
    100000,   250000,    500000,    1000000,   2500000,    5000000,    10000000,   25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000,
};

/* ---- builder ------------------------------------------------------------------ */

void kvs_mb_init(kvs_mb_t *b, kvs_arena_t *arena)
{
    memset(b, 0, sizeof(*b));
    b->arena = arena;
}

static void *mb_alloc(kvs_mb_t *b, size_t n)
{
    void *p = b->failed ? NULL : kvs_arena_alloc(b->arena, n ? n : 1);
    if (p == NULL)
        b->failed = 1;
    return p;
}

static char *mb_strdup(kvs_mb_t *b, const char *s)
{
    size_t n = strlen(s);
    char *p = mb_alloc(b, n + 1);
    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

const char *kvs_mb_printf(kvs_mb_t *b, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    const char *p = mb_strdup(b, text);
    return p != NULL ? p : "";
}

/* Room for one more family in the list. */
static int mb_room(kvs_mb_t *b)
{
    if (b->n < b->cap)
        return 0;
    size_t cap = b->cap ? b->cap * 2 : 32;
    Kvs__MetricFamily **fams = mb_alloc(b, cap * sizeof(*fams));
    if (fams == NULL)
        return -1;
    if (b->n > 0)
        memcpy(fams, b->fams, b->n * sizeof(*fams));
    b->fams = fams;
    b->cap = cap;
    return 0;
}

void kvs_mb_add(kvs_mb_t *b, Kvs__MetricFamily *f)
{
    if (mb_room(b) == 0)
        b->fams[b->n++] = f;
}

Kvs__MetricFamily *kvs_mb_family(kvs_mb_t *b, const char *name, Kvs__MetricFamily__Type type,
                                 const char *help)
{
    if (mb_room(b) != 0)
        return NULL;
    Kvs__MetricFamily *f = mb_alloc(b, sizeof(*f));
    if (f == NULL)
        return NULL;
    kvs__metric_family__init(f);
    f->name = mb_strdup(b, name);
    f->help = mb_strdup(b, help);
    f->type = type;
    if (f->name == NULL || f->help == NULL)
        return NULL;
    b->fams[b->n++] = f;
    return f;
}

#define MB_MAX_LABELS 8 /* label pairs per sample */

/* A new sample of `f` with labels[0..2*nlabels) (name, value, ...); NULL
 * when out of memory. */
static Kvs__MetricSample *mb_new_sample(kvs_mb_t *b, Kvs__MetricFamily *f, unsigned nlabels,
                                        const char *const *labels)
{
    if (f == NULL || b->failed)
        return NULL;
    /* Samples are added one at a time; the array grows by doubling. */
    size_t n = f->n_samples;
    if (n == 0 || (n & (n - 1)) == 0) {
        Kvs__MetricSample **arr = mb_alloc(b, (n ? 2 * n : 1) * sizeof(*arr));
        if (arr == NULL)
            return NULL;
        if (n > 0)
            memcpy(arr, f->samples, n * sizeof(*arr));
        f->samples = arr;
    }
    Kvs__MetricSample *s = mb_alloc(b, sizeof(*s));
    char **copy = mb_alloc(b, 2 * (nlabels ? nlabels : 1) * sizeof(char *));
    if (s == NULL || copy == NULL)
        return NULL;
    kvs__metric_sample__init(s);
    for (unsigned i = 0; i < 2 * nlabels; i++)
        if ((copy[i] = mb_strdup(b, labels[i] ? labels[i] : "")) == NULL)
            return NULL;
    s->labels = copy;
    s->n_labels = 2 * nlabels;
    f->samples[f->n_samples++] = s;
    return s;
}

/* Collects nlabels pairs of const char * from `ap` into labels. */
static unsigned mb_collect(unsigned nlabels, va_list ap, const char **labels)
{
    if (nlabels > MB_MAX_LABELS)
        nlabels = MB_MAX_LABELS;
    for (unsigned i = 0; i < 2 * nlabels; i++)
        labels[i] = va_arg(ap, const char *);
    return nlabels;
}

void kvs_mb_tls_reloads(kvs_mb_t *b, kvs_tls_ctx_t *const *ctx, size_t n, const char *role,
                        const char *who_label, const char *who)
{
    Kvs__MetricFamily *f =
        kvs_mb_family(b, "kvs_tls_reloads_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "TLS certificate, key and CA reloads (SIGHUP) by settings and result: ok, "
                      "error (the files did not load: the previous material is still used).");
    for (size_t i = 0; i < n; i++) {
        uint64_t ok, failed;
        if (ctx[i] == NULL)
            continue;
        kvs_tls_ctx_reloads(ctx[i], &ok, &failed);
        const char *what = kvs_tls_ctx_what(ctx[i]);
        if (who_label != NULL) {
            kvs_mb_sample(b, f, (double)ok, 4, "role", role, who_label, who, "tls", what, "result",
                          "ok");
            kvs_mb_sample(b, f, (double)failed, 4, "role", role, who_label, who, "tls", what,
                          "result", "error");
        } else {
            kvs_mb_sample(b, f, (double)ok, 3, "role", role, "tls", what, "result", "ok");
            kvs_mb_sample(b, f, (double)failed, 3, "role", role, "tls", what, "result", "error");
        }
    }
}

void kvs_mb_sample(kvs_mb_t *b, Kvs__MetricFamily *f, double value, unsigned nlabels, ...)
{
    const char *labels[2 * MB_MAX_LABELS];
    va_list ap;
    va_start(ap, nlabels);
    nlabels = mb_collect(nlabels, ap, labels);
    va_end(ap);
    Kvs__MetricSample *s = mb_new_sample(b, f, nlabels, labels);
    if (s != NULL)
        s->value = value;
}

/* Copies a histogram into sample `s` (and the bounds into `f` once). */
static void mb_fill_hist(kvs_mb_t *b, Kvs__MetricFamily *f, Kvs__MetricSample *s,
                         const kvs_hist_t *h, const uint64_t *bounds, unsigned n, double scale)
{
    if (f->n_bounds == 0) {
        f->bounds = mb_alloc(b, n * sizeof(double));
        if (f->bounds == NULL)
            return;
        for (unsigned i = 0; i < n; i++)
            f->bounds[i] = (double)bounds[i] * scale;
        f->n_bounds = n;
    }
    s->buckets = mb_alloc(b, (n + 1) * sizeof(uint64_t));
    if (s->buckets == NULL)
        return;
    memcpy(s->buckets, h->buckets, (n + 1) * sizeof(uint64_t));
    s->n_buckets = n + 1;
    s->sum = (double)h->sum * scale;
}

void kvs_mb_hist(kvs_mb_t *b, Kvs__MetricFamily *f, const kvs_hist_t *h, const uint64_t *bounds,
                 unsigned n, double scale, unsigned nlabels, ...)
{
    const char *labels[2 * MB_MAX_LABELS];
    va_list ap;
    va_start(ap, nlabels);
    nlabels = mb_collect(nlabels, ap, labels);
    va_end(ap);
    Kvs__MetricSample *s = mb_new_sample(b, f, nlabels, labels);
    if (s != NULL)
        mb_fill_hist(b, f, s, h, bounds, n, scale);
}

/* A sample with `base` labels (nbase pairs) plus the pairs k1=v1 and
 * k2=v2 when those names are not NULL. */
static Kvs__MetricSample *mb_sample_with(kvs_mb_t *b, Kvs__MetricFamily *f, unsigned nbase,
                                         const char *const *base, const char *k1, const char *v1,
                                         const char *k2, const char *v2)
{
    const char *labels[2 * MB_MAX_LABELS];
    unsigned n = 0;
    for (; n < nbase && n + 2 < MB_MAX_LABELS; n++) {
        labels[2 * n] = base[2 * n];
        labels[2 * n + 1] = base[2 * n + 1];
    }
    if (k1 != NULL) {
        labels[2 * n] = k1;
        labels[2 * n++ + 1] = v1;
    }
    if (k2 != NULL) {
        labels[2 * n] = k2;
        labels[2 * n++ + 1] = v2;
    }
    return mb_new_sample(b, f, n, labels);
}

static const char *const status_labels[KVS_METRICS_STATUSES] = {
    "200", "207", "400", "401", "403", "404", "413", "500", "503", "507", "other"};

void kvs_mb_requests(kvs_mb_t *b, const kvs_req_metrics_t *m, const char *prefix, const char *what,
                     unsigned nlabels, const char *const *labels)
{
    char name[96], help[256];
    snprintf(name, sizeof(name), "%srequests_total", prefix);
    snprintf(help, sizeof(help), "Requests %s, by command and answer status.", what);
    Kvs__MetricFamily *f = kvs_mb_family(b, name, KVS__METRIC_FAMILY__TYPE__COUNTER, help);
    for (unsigned c = 0; c < KVS_METRICS_COMMANDS; c++)
        for (unsigned s = 0; s < KVS_METRICS_STATUSES; s++) {
            if (m->count[c][s] == 0)
                continue;
            const char *cmd = kvs_msg_command_name((Kvs__CommandRequest__CommandCase)c);
            Kvs__MetricSample *x =
                mb_sample_with(b, f, nlabels, labels, "command", cmd, "status", status_labels[s]);
            if (x != NULL)
                x->value = (double)m->count[c][s];
        }
    snprintf(name, sizeof(name), "%srequest_duration_seconds", prefix);
    snprintf(help, sizeof(help), "Time to answer requests %s, by command.", what);
    f = kvs_mb_family(b, name, KVS__METRIC_FAMILY__TYPE__HISTOGRAM, help);
    for (unsigned c = 0; c < KVS_METRICS_COMMANDS; c++) {
        uint64_t total = 0;
        for (unsigned i = 0; i <= KVS_LATENCY_BUCKETS; i++)
            total += m->latency[c].buckets[i];
        if (total == 0)
            continue;
        const char *cmd = kvs_msg_command_name((Kvs__CommandRequest__CommandCase)c);
        Kvs__MetricSample *x = mb_sample_with(b, f, nlabels, labels, "command", cmd, NULL, NULL);
        if (x != NULL)
            mb_fill_hist(b, f, x, &m->latency[c], kvs_latency_bounds_ns, KVS_LATENCY_BUCKETS, 1e-9);
    }
}

void kvs_mb_label_all(kvs_mb_t *b, size_t from, const char *name, const char *value)
{
    const char *n = mb_strdup(b, name), *v = mb_strdup(b, value);
    for (size_t i = from; i < b->n && !b->failed; i++) {
        Kvs__MetricFamily *f = b->fams[i];
        for (size_t k = 0; k < f->n_samples; k++) {
            Kvs__MetricSample *x = f->samples[k];
            char **labels = mb_alloc(b, (x->n_labels + 2) * sizeof(char *));
            if (labels == NULL)
                return;
            labels[0] = (char *)n;
            labels[1] = (char *)v;
            if (x->n_labels > 0)
                memcpy(labels + 2, x->labels, x->n_labels * sizeof(char *));
            x->labels = labels;
            x->n_labels += 2;
        }
    }
}

/* ---- process -------------------------------------------------------------------- */

/* Resident memory in bytes, from /proc/self/statm (0 when unreadable). */
static double resident_bytes(void)
{
    unsigned long long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f == NULL)
        return 0;
    int n = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    return n == 2 ? (double)resident * (double)sysconf(_SC_PAGESIZE) : 0;
}

static double open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    double n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

void kvs_mb_process(kvs_mb_t *b, double start_time, unsigned nlabels, const char *const *labels)
{
    struct rusage ru;
    struct rlimit rl;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
              (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (double)rl.rlim_cur : 0;
    struct {
        const char *name, *help;
        Kvs__MetricFamily__Type type;
        double value;
    } rows[] = {
        {"kvs_process_resident_memory_bytes", "Resident memory of the process, in bytes.",
         KVS__METRIC_FAMILY__TYPE__GAUGE, resident_bytes()},
        {"kvs_process_cpu_seconds_total", "CPU time the process used (user and system), seconds.",
         KVS__METRIC_FAMILY__TYPE__COUNTER, cpu},
        {"kvs_process_open_fds", "File descriptors the process has open.",
         KVS__METRIC_FAMILY__TYPE__GAUGE, open_fds()},
        {"kvs_process_max_fds", "The process's limit of open file descriptors.",
         KVS__METRIC_FAMILY__TYPE__GAUGE, max_fds},
        {"kvs_process_start_time_seconds", "When the process started, seconds since the epoch.",
         KVS__METRIC_FAMILY__TYPE__GAUGE, start_time},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        Kvs__MetricFamily *f = kvs_mb_family(b, rows[i].name, rows[i].type, rows[i].help);
        Kvs__MetricSample *s = mb_sample_with(b, f, nlabels, labels, NULL, NULL, NULL, NULL);
        if (s != NULL)
            s->value = rows[i].value;
    }
}

double kvs_metrics_unix_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* ---- rendering ---------------------------------------------------------------------- */

static int valid_name(const char *s, int colon)
{
    if (s == NULL || s[0] == '\0' || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || (colon && *s == ':')))
            return 0;
    return 1;
}

typedef struct out_s {
    kvs_buf_t *b;
    int err;
} out_t;

static void put(out_t *o, const char *p, size_t n)
{
    if (o->err == 0 && kvs_buf_append(o->b, p, n) != 0)
        o->err = -ENOMEM;
}

static void puts_(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Text with `\\`, `\n` (and `"` when quoted) escaped. */
static void put_escaped(out_t *o, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            puts_(o, "\\\\");
        else if (*s == '\n')
            puts_(o, "\\n");
        else if (quote && *s == '"')
            puts_(o, "\\\"");
        else
            put(o, s, 1);
    }
}

/* The shortest text that reads back as `v`. */
static void put_number(out_t *o, double v)
{
    char text[40];
    if (isnan(v)) {
        puts_(o, "NaN");
        return;
    }
    if (isinf(v)) {
        puts_(o, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 9007199254740992.0) { /* a whole number: all its digits */
        snprintf(text, sizeof(text), "%.0f", v);
        puts_(o, text);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(text, sizeof(text), "%.*g", prec, v);
        if (strtod(text, NULL) == v)
            break;
    }
    puts_(o, text);
}

/* `{a="1",b="2"` plus `extra` (a complete `le="..."` or NULL), then `}`;
 * nothing at all without labels. */
static void put_labels(out_t *o, const Kvs__MetricSample *s, const char *le_name, double le)
{
    size_t pairs = s->n_labels / 2;
    int any = 0;
    for (size_t i = 0; i < pairs; i++) {
        if (!valid_name(s->labels[2 * i], 0))
            continue;
        puts_(o, any ? "," : "{");
        puts_(o, s->labels[2 * i]);
        puts_(o, "=\"");
        put_escaped(o, s->labels[2 * i + 1], 1);
        puts_(o, "\"");
        any = 1;
    }
    if (le_name != NULL) {
        puts_(o, any ? ",le=\"" : "{le=\"");
        put_number(o, le);
        puts_(o, "\"");
        any = 1;
    }
    if (any)
        puts_(o, "}");
}

static void put_sample(out_t *o, const char *name, const char *suffix, const Kvs__MetricSample *s,
                       int with_le, double le, double value)
{
    puts_(o, name);
    puts_(o, suffix);
    put_labels(o, s, with_le ? "le" : NULL, le);
    puts_(o, " ");
    put_number(o, value);
    puts_(o, "\n");
}

static void put_histogram(out_t *o, const Kvs__MetricFamily *f, const Kvs__MetricSample *s)
{
    if (s->n_buckets != f->n_bounds + 1)
        return; /* malformed: no partial histogram */
    uint64_t cum = 0;
    for (size_t i = 0; i < s->n_buckets; i++) {
        cum += s->buckets[i];
        put_sample(o, f->name, "_bucket", s, 1, i < f->n_bounds ? f->bounds[i] : INFINITY,
                   (double)cum);
    }
    put_sample(o, f->name, "_sum", s, 0, 0, s->sum);
    put_sample(o, f->name, "_count", s, 0, 0, (double)cum);
}

static const char *type_name(Kvs__MetricFamily__Type t)
{
    return t == KVS__METRIC_FAMILY__TYPE__COUNTER ? "counter"
           : t == KVS__METRIC_FAMILY__TYPE__GAUGE ? "gauge"
                                                  : "histogram";
}

int kvs_metrics_render(Kvs__MetricFamily *const *families, size_t n, kvs_buf_t *out)
{
    out_t o = {out, 0};
    for (size_t i = 0; i < n; i++) {
        const Kvs__MetricFamily *f = families[i];
        int seen = !valid_name(f->name, 1);
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(families[j]->name, f->name) == 0;
        if (seen)
            continue; /* rendered with the first of its name */
        puts_(&o, "# HELP ");
        puts_(&o, f->name);
        puts_(&o, " ");
        put_escaped(&o, f->help, 0);
        puts_(&o, "\n# TYPE ");
        puts_(&o, f->name);
        puts_(&o, " ");
        puts_(&o, type_name(f->type));
        puts_(&o, "\n");
        for (size_t j = i; j < n; j++) {
            const Kvs__MetricFamily *g = families[j];
            if (strcmp(g->name, f->name) != 0 || g->type != f->type)
                continue;
            for (size_t k = 0; k < g->n_samples; k++) {
                if (g->type == KVS__METRIC_FAMILY__TYPE__HISTOGRAM)
                    put_histogram(&o, g, g->samples[k]);
                else
                    put_sample(&o, g->name, "", g->samples[k], 0, 0, g->samples[k]->value);
            }
        }
    }
    return o.err;
}
