/*
 * kvs-bench: a load generator for kvs routers and nodes, in the spirit of
 * redis-benchmark.
 *
 *   kvs-bench [-c CLIENTS] [-n REQUESTS] [-P PIPELINE] [-r KEYSPACE] [-d BYTES]
 *             [-t hset,hget,hmget,mixed,ping] [--json | -q] ...
 *
 * One libuv loop drives every connection (kvs_conn, with a kvs_flusher so
 * all requests queued in one loop turn leave in one write per connection).
 * Each connection keeps up to PIPELINE requests in flight: every response
 * decoded frees a window slot that is refilled at once, so the window stays
 * full; requests refilled while one read's worth of responses is handled go
 * out together at the end of that loop turn. The tests in -t run one after
 * the other over the same connections.
 *
 * Cost per request, kept far below the server's: a request is a memcpy of a
 * frame packed once per test kind with protobuf-c (a template), with the 12
 * key digits patched in place; a response is not unpacked, only scanned for
 * its status field (full decoding happens for the first error message only).
 *
 * Latency is measured per request from the moment its frame was queued to
 * the moment its response was seen (uv_hrtime, nanoseconds), in a
 * log-linear histogram (bench_hist, <= 1% error). The clock is read once per
 * burst of responses that arrived together, and that reading also stamps
 * the requests queued in their place. Responses on a connection come back
 * in request order, so a ring of send times per connection matches them.
 *
 * TLS (--tls and friends, like redis-benchmark's): every connection runs
 * kvs_conn over kvs_tls, so the load and its measurements go through the
 * same TLS code the servers use; a connection counts as connected once its
 * handshake completed. With --user, each connection sends Auth first and
 * counts as connected once it was answered 200.
 *
 * Memory: everything is allocated at start-up (clients, rings, templates);
 * connection output buffers grow to one window of requests and stay there.
 * A server that stops answering ends the run: when --timeout seconds pass
 * without a connection completing or an answer arriving, kvs-bench says so
 * and exits 1 (a watchdog timer compares the clock with the last progress).
 *
 * Exit status: 0 when every test ran to the end and each had at least one
 * answer that was not an error (error statuses are reported, not fatal:
 * some 503s under load are a result); 1 when a test's every answer was an
 * error (its numbers measure the error path, not the command: a denied
 * table, a too-large value), when the server cannot be reached, stops
 * answering or a connection breaks mid-run; 2 for usage errors.
 */
#include "bench_hist.h"
#include "cli_resolve.h"
#include "cli_text.h"
#include "kvs_addr.h"
#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_frame.h"
#include "kvs_msg.h"
#include "kvs_varint.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define BENCH_KEY_DIGITS 12 /* "key:%012d" */
#define BENCH_KEY_PREFIX "key:"
#define BENCH_MAX_TESTS 32
#define BENCH_MAX_STATUS 8 /* distinct statuses tracked by value */
#define BENCH_PROGRESS_MS 250
#define BENCH_WATCHDOG_MS 100
/* The largest frame --max-frame may allow, as the largest limits.max_frame
 * (1 GiB). By default a frame may take what the workload needs
 * (bench_frame_need) and at least BENCH_FRAME_FLOOR, kvs's default
 * limits.max_frame: a server that announces more (hostile, or holding
 * values a run with a larger -d wrote) ends the run at its frame header,
 * before any of it is buffered, rather than costing the load generator
 * up to 1 GiB per connection. */
#define BENCH_MAX_FRAME (1u << 30)
#define BENCH_FRAME_FLOOR (4u << 20)
#define BENCH_MAX_VALUE BENCH_MAX_FRAME /* a request must still fit a frame */

typedef enum { K_HSET, K_HGET, K_HMGET, K_PING, K_COUNT, K_MIXED = K_COUNT } bench_kind_t;

typedef struct bench_test_s {
    const char *name;  /* as given to -t */
    const char *title; /* as reported */
    bench_kind_t kind;
} bench_test_t;

static const bench_test_t TESTS[] = {
    {"hset", "HSET", K_HSET},    {"hget", "HGET", K_HGET}, {"hmget", "HMGET", K_HMGET},
    {"mixed", "MIXED", K_MIXED}, {"ping", "PING", K_PING},
};

/* A packed request frame and where its key digits are, per kind. */
typedef struct bench_tmpl_s {
    kvs_buf_t frame;
    uint32_t *digits; /* offset of each key's first digit */
    unsigned nkeys;
} bench_tmpl_t;

typedef struct bench_opts_s {
    uint64_t clients, requests, pipeline, keyspace, value_size, keys, warmup, seed;
    uint64_t timeout;   /* seconds without progress before giving up; 0: never */
    uint64_t max_frame; /* --max-frame; 0: bench_frame_need's */
    double read_ratio;
    const char *table;
    const bench_test_t *tests[BENCH_MAX_TESTS];
    unsigned ntests;
    kvs_addr_t addr;
    int json, quiet;
    int tls, insecure;
    const char *cacert, *cert, *key;
    const char *user, *token; /* --user, --token (or KVS_TOKEN) */
} bench_opts_t;

typedef struct bench_status_s {
    uint32_t status;
    uint64_t count;
} bench_status_t;

/* One run of one test: what is measured and reported. */
typedef struct bench_run_s {
    const bench_test_t *test;
    int measured; /* 0 during --warmup */
    uint64_t total, issued, done;
    uint64_t start_ns, end_ns;
    uint64_t errors, not_found, other_status;
    bench_status_t status[BENCH_MAX_STATUS];
    unsigned nstatus;
    char first_error[256];
    bench_hist_t hist;
} bench_run_t;

typedef struct bench_s bench_t;

typedef struct bench_client_s {
    kvs_conn_t conn;
    uv_connect_t connect;
    bench_t *b;
    unsigned id;
    uint64_t head, inflight; /* ring of send times: [head, head + inflight) */
    uint64_t *sent_at;
    uint64_t clock; /* see client_clock */
    int clock_valid;
    int authing; /* its Auth is unanswered */
} bench_client_t;

struct bench_s {
    bench_opts_t o;
    uv_loop_t *loop;
    kvs_tls_ctx_t *tls; /* --tls: the client context; NULL: plaintext */
    kvs_flusher_t flusher;
    uv_timer_t progress;
    int progress_on; /* stderr is a terminal */
    uv_timer_t watchdog;
    uint64_t last_ns; /* when a connection or an answer last came */
    bench_client_t *clients;
    uint64_t connected;
    int finishing;
    unsigned next_test; /* index into o.tests of the test after this run */
    bench_tmpl_t tmpl[K_COUNT];
    uint8_t *value;
    uint64_t rng;
    char name[400];             /* the server, for messages */
    char last_error[256];       /* an error answer, warmup included, for a broken connection */
    uint32_t last_error_status; /* its status: the text is taken when the status changes */
    unsigned all_failed;        /* tests whose every measured answer was an error */
    bench_run_t run;
};

/* ---- small helpers -------------------------------------------------------------- */

static void progress_clear(bench_t *b)
{
    if (b->progress_on)
        fputs("\r\033[K", stderr);
}

/* Reports a failure that ends the run and exits with status 1. */
static void bench_fail(bench_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bench_fail(bench_t *b, const char *fmt, ...)
{
    va_list ap;
    progress_clear(b);
    fflush(stdout);
    fputs("kvs-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: plenty random for picking keys, and a few ns per call */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

static const char DIGIT_PAIRS[] = "00010203040506070809101112131415161718192021222324"
                                  "25262728293031323334353637383940414243444546474849"
                                  "50515253545556575859606162636465666768697071727374"
                                  "75767778798081828384858687888990919293949596979899";

/* Writes v < 10^6 as 6 digits, zero-padded. */
static void put_6digits(uint8_t *p, uint32_t v)
{
    uint32_t hi = v / 10000, mid = v / 100 % 100, lo = v % 100;
    memcpy(p, DIGIT_PAIRS + 2 * hi, 2);
    memcpy(p + 2, DIGIT_PAIRS + 2 * mid, 2);
    memcpy(p + 4, DIGIT_PAIRS + 2 * lo, 2);
}

/* Writes v < 10^12 as BENCH_KEY_DIGITS digits, zero-padded: two pairs at a
 * time from a table, in 32-bit arithmetic (this runs for every key sent). */
static void put_digits(uint8_t *p, uint64_t v)
{
    put_6digits(p, (uint32_t)(v / 1000000));
    put_6digits(p + 6, (uint32_t)(v % 1000000));
}

/* A uniform number in [0, n) from one random draw, without a division. */
static uint64_t rng_below(uint64_t *s, uint64_t n)
{
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)rng_next(s) * n) >> 64);
}

/* ---- request templates ------------------------------------------------------------ */

/* The messages one request is made of; they live on the packer's stack. */
typedef struct bench_msgs_s {
    Kvs__CommandRequest req;
    Kvs__Hset hset;
    Kvs__Kvpair pair;
    Kvs__Hget hget;
    Kvs__Hmget hmget;
    Kvs__Ping ping;
    Kvs__Value val;
} bench_msgs_t;

/* Points m->req at a request of `kind` on key `k` (every hmget key is `k`;
 * `keys` has room for them). */
static void fill_request(bench_t *b, bench_kind_t kind, ProtobufCBinaryData k,
                         ProtobufCBinaryData *keys, bench_msgs_t *m)
{
    *m = (bench_msgs_t){
        KVS__COMMAND_REQUEST__INIT, KVS__HSET__INIT, KVS__KVPAIR__INIT, KVS__HGET__INIT,
        KVS__HMGET__INIT,           KVS__PING__INIT, KVS__VALUE__INIT};
    m->val.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    m->val.string_value.data = b->value;
    m->val.string_value.len = (size_t)b->o.value_size;
    m->hset.table = m->hget.table = m->hmget.table = (char *)b->o.table;
    m->pair.key = m->hget.key = k;
    m->pair.value = &m->val;
    m->hset.pair = &m->pair;
    for (uint64_t i = 0; kind == K_HMGET && i < b->o.keys; i++)
        keys[i] = k;
    m->hmget.n_keys = kind == K_HMGET ? b->o.keys : 0;
    m->hmget.keys = keys;
    switch (kind) {
    case K_HSET:
        m->req.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
        m->req.hset = &m->hset;
        break;
    case K_HGET:
        m->req.command_case = KVS__COMMAND_REQUEST__COMMAND_HGET;
        m->req.hget = &m->hget;
        break;
    case K_HMGET:
        m->req.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
        m->req.hmget = &m->hmget;
        break;
    default:
        m->req.command_case = KVS__COMMAND_REQUEST__COMMAND_PING;
        m->req.ping = &m->ping;
        break;
    }
}

/* Packs one request frame of `kind` whose keys are all "key:DDDD..." with
 * every digit `digit` into `out` (emptied first). Returns 0 or an error. */
static int pack_request(bench_t *b, bench_kind_t kind, char digit, kvs_buf_t *out)
{
    char key[sizeof(BENCH_KEY_PREFIX) + BENCH_KEY_DIGITS];
    memcpy(key, BENCH_KEY_PREFIX, sizeof(BENCH_KEY_PREFIX) - 1);
    memset(key + sizeof(BENCH_KEY_PREFIX) - 1, digit, BENCH_KEY_DIGITS);
    ProtobufCBinaryData k = {sizeof(key) - 1, (uint8_t *)key};
    ProtobufCBinaryData *keys = calloc(b->o.keys, sizeof(*keys));
    if (keys == NULL)
        return -ENOMEM;
    bench_msgs_t m;
    fill_request(b, kind, k, keys, &m);
    out->len = 0;
    int rc = kvs_msg_append(out, &m.req.base, (size_t)b->o.max_frame);
    free(keys);
    return rc;
}

/* Builds the template of `kind`: the request packed with all-zero digits,
 * and the digit offsets found by diffing it against all-one digits (so no
 * table name or value can be mistaken for a key). */
static int tmpl_build(bench_t *b, bench_kind_t kind, bench_tmpl_t *t)
{
    kvs_buf_t other;
    kvs_buf_init(&other);
    kvs_buf_init(&t->frame);
    int rc = pack_request(b, kind, '0', &t->frame);
    if (rc == 0)
        rc = pack_request(b, kind, '1', &other);
    if (rc == 0 && other.len != t->frame.len)
        rc = KVS_EPROTO;
    unsigned want = kind == K_HMGET ? (unsigned)b->o.keys : kind == K_PING ? 0u : 1u;
    t->digits = rc == 0 ? calloc(want ? want : 1, sizeof(*t->digits)) : NULL;
    if (rc == 0 && t->digits == NULL)
        rc = -ENOMEM;
    t->nkeys = 0;
    for (size_t i = 0; rc == 0 && i < other.len; i++) {
        if (t->frame.data[i] == other.data[i])
            continue;
        if (t->nkeys == want || i + BENCH_KEY_DIGITS > other.len) {
            rc = KVS_EPROTO;
            break;
        }
        t->digits[t->nkeys++] = (uint32_t)i;
        i += BENCH_KEY_DIGITS - 1;
    }
    if (rc == 0 && t->nkeys != want)
        rc = KVS_EPROTO;
    kvs_buf_free(&other);
    return rc;
}

/* The value every hset writes: printable bytes, made once. */
static int make_value(bench_t *b)
{
    static const char set[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    b->value = malloc(b->o.value_size + 1);
    if (b->value == NULL)
        return -ENOMEM;
    for (uint64_t i = 0; i < b->o.value_size; i++)
        b->value[i] = (uint8_t)set[rng_next(&b->rng) % (sizeof(set) - 1)];
    b->value[b->o.value_size] = '\0';
    return 0;
}

static void tmpl_init_all(bench_t *b)
{
    if (make_value(b) != 0)
        bench_fail(b, "out of memory");
    for (int k = 0; k < K_COUNT; k++) {
        int rc = tmpl_build(b, (bench_kind_t)k, &b->tmpl[k]);
        if (rc == KVS_ETOOBIG)
            bench_fail(b,
                       "a request does not fit in a %" PRIu64 "-byte frame (lower -d or "
                       "--keys, or raise --max-frame)",
                       b->o.max_frame);
        if (rc != 0)
            bench_fail(b, "cannot build the %s request template: %s", TESTS[k].title,
                       kvs_strerror(rc));
    }
}

static void tmpl_free_all(bench_t *b)
{
    for (int k = 0; k < K_COUNT; k++) {
        kvs_buf_free(&b->tmpl[k].frame);
        free(b->tmpl[k].digits);
    }
    free(b->value);
}

/* ---- responses -------------------------------------------------------------------- */

/* Finds CommandResponse.status (field 1, varint) without unpacking the
 * rest; absent means 0 (proto3). Returns 0 or KVS_EPROTO. */
static int response_status(const uint8_t *p, size_t len, uint32_t *status)
{
    const uint8_t *end = p + len;
    if (len >= 3 && p[0] == 0x08 && (p[1] & 0x80) && !(p[2] & 0x80)) {
        *status = (uint32_t)(p[1] & 0x7f) | (uint32_t)p[2] << 7; /* status 128..16383 first */
        return 0;
    }
    *status = 0;
    while (p < end) {
        uint64_t tag, v;
        if (kvs_varint_get(&p, end, &tag) != 0 || tag >> 3 == 0) /* field 0: not protobuf */
            return KVS_EPROTO;
        switch (tag & 7) {
        case 0:
            if (kvs_varint_get(&p, end, &v) != 0)
                return KVS_EPROTO;
            if (tag >> 3 == 1) {
                *status = (uint32_t)v;
                return 0;
            }
            break;
        case 2:
            if (kvs_varint_get(&p, end, &v) != 0 || v > (uint64_t)(end - p))
                return KVS_EPROTO;
            p += v;
            break;
        case 1:
        case 5:
            if ((size_t)(end - p) < ((tag & 7) == 1 ? 8u : 4u))
                return KVS_EPROTO;
            p += (tag & 7) == 1 ? 8 : 4;
            break;
        default:
            return KVS_EPROTO;
        }
    }
    return 0;
}

/* Writes "STATUS message" of an error answer into `out`, made printable. */
static void error_text(char *out, size_t cap, uint32_t st, const uint8_t *p, size_t len)
{
    Kvs__CommandResponse *m = kvs_msg_decode_response(NULL, p, len, NULL);
    int n = snprintf(out, cap, "%" PRIu32 " ", st);
    cli_text_copy(out + n, cap - (size_t)n, m != NULL && m->message != NULL ? m->message : "");
    if (m != NULL)
        kvs__command_response__free_unpacked(m, NULL);
}

/* Whether `st` answers `r`'s command with an error (only Hget answers 404
 * for a key never written: a miss, not an error). */
static int is_error(const bench_run_t *r, uint32_t st)
{
    if (st == KVS_STATUS_NOT_FOUND)
        return r->test->kind != K_HGET && r->test->kind != K_MIXED;
    return st != KVS_STATUS_OK;
}

static void count_status(bench_run_t *r, uint32_t st, const uint8_t *p, size_t len)
{
    unsigned i;
    for (i = 0; i < r->nstatus && r->status[i].status != st; i++)
        ;
    if (i < r->nstatus) {
        r->status[i].count++;
    } else if (i < BENCH_MAX_STATUS) {
        r->status[i].status = st;
        r->status[i].count = 1;
        r->nstatus++;
    } else {
        r->other_status++;
    }
    if (is_error(r, st)) {
        if (r->errors++ == 0)
            error_text(r->first_error, sizeof(r->first_error), st, p, len);
    } else if (st == KVS_STATUS_NOT_FOUND) {
        r->not_found++;
    }
}

/* ---- requests --------------------------------------------------------------------- */

/* Appends one request to c's output, queued at time `now`. */
static void client_send(bench_client_t *c, uint64_t now)
{
    bench_t *b = c->b;
    bench_kind_t kind = b->run.test->kind;
    if (kind == K_MIXED) {
        double u = (double)(rng_next(&b->rng) >> 11) * 0x1.0p-53;
        kind = u < b->o.read_ratio ? K_HGET : K_HSET;
    }
    const bench_tmpl_t *t = &b->tmpl[kind];
    kvs_buf_t *out = &c->conn.out;
    if (kvs_buf_reserve(out, t->frame.len) != 0)
        bench_fail(b, "out of memory");
    uint8_t *p = out->data + out->len;
    memcpy(p, t->frame.data, t->frame.len);
    for (unsigned i = 0; b->o.keyspace > 0 && i < t->nkeys; i++)
        put_digits(p + t->digits[i], rng_below(&b->rng, b->o.keyspace));
    out->len += t->frame.len;
    uint64_t slot = (c->head + c->inflight) % b->o.pipeline;
    c->sent_at[slot] = now;
    c->inflight++;
    b->run.issued++;
}

/* Tops c's window up to the pipeline depth while requests remain, noting
 * `now` as their queueing time; what is appended leaves at the end of this
 * loop turn (the flusher). */
static void client_fill(bench_client_t *c, uint64_t now)
{
    bench_t *b = c->b;
    int sent = 0;
    while (c->inflight < b->o.pipeline && b->run.issued < b->run.total) {
        client_send(c, now);
        sent = 1;
    }
    if (sent)
        kvs_conn_queue(&c->conn);
}

/* ---- reporting -------------------------------------------------------------------- */

static double run_seconds(const bench_run_t *r)
{
    uint64_t ns = r->end_ns > r->start_ns ? r->end_ns - r->start_ns : 1;
    return (double)ns / 1e9;
}

static double pct_ms(const bench_run_t *r, double p)
{
    return (double)bench_hist_percentile(&r->hist, p) / 1e6;
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void report_json(const bench_t *b, const bench_run_t *r)
{
    const bench_hist_t *h = &r->hist;
    double s = run_seconds(r);
    printf("{\"test\":\"%s\",\"requests\":%" PRIu64 ",\"seconds\":%.6f,\"ops_per_sec\":%.2f,"
           "\"errors\":%" PRIu64 ",\"not_found\":%" PRIu64 ",\"status\":{",
           r->test->name, r->done, s, (double)r->done / s, r->errors, r->not_found);
    for (unsigned i = 0; i < r->nstatus; i++)
        printf("%s\"%" PRIu32 "\":%" PRIu64, i ? "," : "", r->status[i].status, r->status[i].count);
    if (r->other_status > 0)
        printf("%s\"other\":%" PRIu64, r->nstatus ? "," : "", r->other_status);
    printf("},\"latency_us\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p99_9\":%.3f,"
           "\"max\":%.3f,\"mean\":%.3f},",
           pct_ms(r, 50) * 1e3, pct_ms(r, 90) * 1e3, pct_ms(r, 99) * 1e3, pct_ms(r, 99.9) * 1e3,
           (double)h->max / 1e3, bench_hist_mean(h) / 1e3);
    printf("\"clients\":%" PRIu64 ",\"pipeline\":%" PRIu64 ",\"value_size\":%" PRIu64
           ",\"keyspace\":%" PRIu64 ",\"table\":",
           b->o.clients, b->o.pipeline, b->o.value_size, b->o.keyspace);
    json_string(b->o.table);
    if (r->test->kind == K_HMGET)
        printf(",\"keys_per_request\":%" PRIu64, b->o.keys);
    if (r->test->kind == K_MIXED)
        printf(",\"read_ratio\":%.3f", b->o.read_ratio);
    if (r->first_error[0] != '\0') {
        printf(",\"first_error\":");
        json_string(r->first_error);
    }
    printf("}\n");
}

static void report_human(const bench_t *b, const bench_run_t *r)
{
    double s = run_seconds(r);
    printf("====== %s ======\n", r->test->title);
    printf("  %" PRIu64 " requests completed in %.3f seconds\n", r->done, s);
    printf("  %" PRIu64 " parallel clients, pipeline %" PRIu64 "\n", b->o.clients, b->o.pipeline);
    printf("  %" PRIu64 " bytes values, key space %" PRIu64 ", table \"%s\"", b->o.value_size,
           b->o.keyspace, b->o.table);
    if (r->test->kind == K_HMGET)
        printf(", %" PRIu64 " keys per request", b->o.keys);
    if (r->test->kind == K_MIXED)
        printf(", %.0f%% reads", b->o.read_ratio * 100.0);
    printf("\n\n  throughput: %.2f requests per second\n", (double)r->done / s);
    printf("  latency (msec): mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
           bench_hist_mean(&r->hist) / 1e6, pct_ms(r, 50), pct_ms(r, 90), pct_ms(r, 99),
           pct_ms(r, 99.9), (double)r->hist.max / 1e6);
    printf("  status:");
    for (unsigned i = 0; i < r->nstatus; i++)
        printf(" %" PRIu32 " x %" PRIu64, r->status[i].status, r->status[i].count);
    if (r->other_status > 0)
        printf(" other x %" PRIu64, r->other_status);
    printf("\n  errors: %" PRIu64 ", not found: %" PRIu64 "\n", r->errors, r->not_found);
    if (r->first_error[0] != '\0')
        printf("  first error: %s\n", r->first_error);
    printf("\n");
}

static void report(const bench_t *b, const bench_run_t *r)
{
    if (b->o.json)
        report_json(b, r);
    else if (b->o.quiet && r->errors == 0)
        printf("%s: %.2f requests per second, p50=%.3f msec\n", r->test->title,
               (double)r->done / run_seconds(r), pct_ms(r, 50));
    else if (b->o.quiet)
        printf("%s: %.2f requests per second, p50=%.3f msec, %" PRIu64 " errors (first: %s)\n",
               r->test->title, (double)r->done / run_seconds(r), pct_ms(r, 50), r->errors,
               r->first_error);
    else
        report_human(b, r);
    fflush(stdout);
}

/* ---- runs ------------------------------------------------------------------------- */

static void on_progress(uv_timer_t *t)
{
    bench_t *b = t->data;
    const bench_run_t *r = &b->run;
    double s = (double)(uv_hrtime() - r->start_ns) / 1e9;
    fprintf(stderr, "\r\033[K%s%s: %.2f rps, %.0f%% done", r->test->title,
            r->measured ? "" : " (warmup)", s > 0 ? (double)r->done / s : 0.0,
            100.0 * (double)r->done / (double)r->total);
}

static void bench_shutdown(bench_t *b);

/* Starts a run of `test`: measured, or a warmup of --warmup requests. */
static void run_start(bench_t *b, const bench_test_t *test, int measured)
{
    bench_run_t *r = &b->run;
    memset(r, 0, offsetof(bench_run_t, hist));
    bench_hist_init(&r->hist);
    r->test = test;
    r->measured = measured;
    r->total = measured ? b->o.requests : b->o.warmup;
    r->start_ns = uv_hrtime();
    if (b->progress_on)
        uv_timer_start(&b->progress, on_progress, BENCH_PROGRESS_MS, BENCH_PROGRESS_MS);
    for (uint64_t i = 0; i < b->o.clients; i++)
        client_fill(&b->clients[i], uv_hrtime());
}

/* Starts the next run: the warmup of the next test, or its measured run,
 * or shuts down when every test has run. */
static void run_next(bench_t *b)
{
    const bench_run_t *r = &b->run;
    if (r->test != NULL && !r->measured) {
        run_start(b, r->test, 1);
        return;
    }
    if (b->next_test == b->o.ntests) {
        bench_shutdown(b);
        return;
    }
    const bench_test_t *t = b->o.tests[b->next_test++];
    run_start(b, t, b->o.warmup == 0);
}

static void run_finish(bench_t *b)
{
    bench_run_t *r = &b->run;
    r->end_ns = uv_hrtime();
    if (b->progress_on) {
        uv_timer_stop(&b->progress);
        progress_clear(b);
    }
    if (r->measured) {
        report(b, r);
        if (r->done > 0 && r->errors == r->done)
            b->all_failed++;
    }
    run_next(b);
}

/* ---- connections ------------------------------------------------------------------ */

/* Whether another complete frame is already buffered in `d`. */
static int frame_buffered(const kvs_frame_dec_t *d)
{
    size_t avail = d->end - d->start;
    return avail >= KVS_FRAME_HEADER &&
           avail - KVS_FRAME_HEADER >= kvs_frame_get_header(d->buf + d->start, NULL);
}

/* The clock for a response (and for the requests it makes room for): read
 * once per burst of frames that arrived together, since a clock read costs
 * as much as handling a frame and the frames of a burst are handled within
 * a microsecond or two of each other. */
static uint64_t client_clock(bench_client_t *c)
{
    if (!c->clock_valid) {
        c->clock = uv_hrtime();
        c->clock_valid = 1;
    }
    if (!frame_buffered(&c->conn.dec))
        c->clock_valid = 0; /* the next frame comes with a later read */
    return c->clock;
}

static void client_connected(bench_client_t *c);

/* The answer to a connection's Auth. */
static void auth_answered(bench_client_t *c, const uint8_t *payload, size_t len)
{
    bench_t *b = c->b;
    uint32_t st;
    c->authing = 0;
    if (response_status(payload, len, &st) != 0 || st != KVS_STATUS_OK) {
        Kvs__CommandResponse *m = kvs_msg_decode_response(NULL, payload, len, NULL);
        char why[512];
        cli_text_copy(why, sizeof(why),
                      m != NULL && m->message != NULL ? m->message : "no valid answer");
        bench_fail(b, "authentication as \"%s\" failed: %s", b->o.user, why);
    }
    client_connected(c);
}

/* --timeout: ends the run when nothing came for that long. */
static void on_watchdog(uv_timer_t *t)
{
    bench_t *b = t->data;
    uint64_t quiet = uv_hrtime() - b->last_ns;
    if (b->finishing || quiet < b->o.timeout * 1000000000ull)
        return;
    bench_fail(b,
               "%s answered nothing for %" PRIu64 " s during %s (%" PRIu64 " of %" PRIu64
               " responses received; see --timeout)",
               b->name, b->o.timeout, b->run.test ? b->run.test->title : "start-up", b->run.done,
               b->run.total);
}

static void on_frame(kvs_conn_t *conn, const uint8_t *payload, size_t len)
{
    bench_client_t *c = conn->data;
    bench_t *b = c->b;
    b->last_ns = uv_hrtime();
    if (c->authing) {
        auth_answered(c, payload, len);
        return;
    }
    uint64_t now = client_clock(c);
    uint32_t st;
    if (c->inflight == 0)
        bench_fail(b, "%s sent a response nobody asked for (connection %u)", b->name, c->id);
    if (response_status(payload, len, &st) != 0)
        bench_fail(b, "%s sent a response that is not a kvs.CommandResponse (%zu bytes)", b->name,
                   len);
    uint64_t t0 = c->sent_at[c->head];
    c->head = c->head + 1 == b->o.pipeline ? 0 : c->head + 1;
    c->inflight--;
    bench_run_t *r = &b->run;
    if (r->measured) {
        bench_hist_record(&r->hist, now - t0);
        count_status(r, st, payload, len);
    }
    if (is_error(r, st) && st != b->last_error_status) {
        /* A server that answers an error and then closes (413 for a frame
         * past limits.max_frame) says why in that answer. */
        b->last_error_status = st;
        error_text(b->last_error, sizeof(b->last_error), st, payload, len);
    }
    if (++r->done == r->total) {
        run_finish(b);
        return;
    }
    client_fill(c, now);
}

static void on_conn_error(kvs_conn_t *conn, int err)
{
    bench_client_t *c = conn->data;
    bench_t *b = c->b;
    if (b->finishing) {
        kvs_conn_close(conn);
        return;
    }
    char too_big[160];
    snprintf(too_big, sizeof(too_big),
             "a response frame is larger than %" PRIu64 " bytes (--max-frame: by default what "
             "this workload's answers need, at least 4 MiB)",
             b->o.max_frame);
    const char *why = err == KVS_ECLOSED   ? "the server closed the connection"
                      : err == KVS_ETOOBIG ? too_big
                      : err == KVS_EPROTO  ? "a response frame has the compressed bit set"
                      : err == KVS_ETLS || err == KVS_ENOTLS ? kvs_conn_tls_error(conn)
                                                             : kvs_strerror(err);
    bench_fail(b,
               "connection %u to %s broke during %s (%" PRIu64 " of %" PRIu64
               " responses received): %s%s%s",
               c->id, b->name, b->run.test ? b->run.test->title : "start-up", b->run.done,
               b->run.total, why, b->last_error[0] != '\0' ? "; the last error answer was " : "",
               b->last_error);
}

static void on_conn_close(kvs_conn_t *conn)
{
    bench_client_t *c = conn->data;
    bench_t *b = c->b;
    if (!b->finishing)
        bench_fail(b, "connection %u to %s broke during %s: write failed%s%s", c->id, b->name,
                   b->run.test ? b->run.test->title : "start-up",
                   b->last_error[0] != '\0' ? "; the last error answer was " : "", b->last_error);
}

/* The connection can carry requests (connected; for TLS, handshaken). */
static void client_connected(bench_client_t *c)
{
    bench_t *b = c->b;
    b->last_ns = uv_hrtime();
    if (++b->connected == b->o.clients)
        run_next(b);
}

/* Sends Auth (--user), or counts the connection as connected. */
static void client_start(bench_client_t *c)
{
    bench_t *b = c->b;
    if (b->o.user == NULL) {
        client_connected(c);
        return;
    }
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Auth m = KVS__AUTH__INIT;
    m.user = (char *)b->o.user;
    m.token = (char *)(b->o.token != NULL ? b->o.token : "");
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_AUTH;
    req.auth = &m;
    if (kvs_msg_append(&c->conn.out, &req.base, SIZE_MAX) != 0)
        bench_fail(b, "out of memory");
    c->authing = 1;
    kvs_conn_queue(&c->conn);
}

static void on_tls_ready(kvs_conn_t *conn)
{
    client_start(conn->data);
}

static void on_connect(uv_connect_t *req, int status)
{
    bench_client_t *c = req->data;
    bench_t *b = c->b;
    if (status != 0)
        bench_fail(b, "cannot connect to %s: %s (is the server running?)", b->name,
                   uv_strerror(status));
    int rc = kvs_conn_start(&c->conn);
    if (rc != 0)
        bench_fail(b, "cannot read from %s: %s", b->name,
                   rc == KVS_ETLS ? kvs_conn_tls_error(&c->conn) : uv_strerror(rc));
    if (b->tls == NULL)
        client_start(c);
}

/* Initializes every client and starts connecting them all. */
static void clients_connect(bench_t *b)
{
    struct sockaddr_storage ss;
    const kvs_addr_t *a = &b->o.addr;
    if (!a->is_unix) { /* before the loop runs: --timeout bounds the lookup itself */
        char port[8];
        const char *why;
        struct addrinfo *res;
        snprintf(port, sizeof(port), "%u", a->port);
        if (cli_resolve(a->host, port, (double)b->o.timeout, &res, &why) != 0)
            bench_fail(b, "cannot resolve %s: %s", b->name, why);
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        freeaddrinfo(res);
    }
    int rc = 0;
    for (uint64_t i = 0; i < b->o.clients; i++) {
        bench_client_t *c = &b->clients[i];
        c->b = b;
        c->id = (unsigned)i;
        c->sent_at = calloc(b->o.pipeline, sizeof(*c->sent_at));
        if (c->sent_at == NULL)
            bench_fail(b, "out of memory");
        rc = kvs_conn_init(&c->conn, b->loop, a->is_unix, (size_t)b->o.max_frame, on_frame,
                           on_conn_error, on_conn_close);
        if (rc != 0)
            bench_fail(b, "cannot create a connection: %s", uv_strerror(rc));
        c->conn.data = c;
        c->conn.flusher = &b->flusher;
        c->conn.on_ready = on_tls_ready;
        if (b->tls != NULL && kvs_conn_use_tls(&c->conn, b->tls, a->is_unix ? NULL : a->host) != 0)
            bench_fail(b, "out of memory");
        c->connect.data = c;
        if (a->is_unix)
            uv_pipe_connect(&c->connect, &c->conn.h.pipe, a->path, on_connect);
        else
            rc = uv_tcp_connect(&c->connect, &c->conn.h.tcp, (const struct sockaddr *)&ss,
                                on_connect);
        if (rc != 0)
            bench_fail(b, "cannot connect to %s: %s", b->name, uv_strerror(rc));
    }
}

static void bench_shutdown(bench_t *b)
{
    b->finishing = 1;
    for (uint64_t i = 0; i < b->o.clients; i++)
        kvs_conn_close(&b->clients[i].conn);
    kvs_flusher_close(&b->flusher, NULL);
    uv_close((uv_handle_t *)&b->progress, NULL);
    uv_close((uv_handle_t *)&b->watchdog, NULL);
}

/* ---- options ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvs-bench [OPTIONS]\n"
            "\n"
            "Load generator for a kvs router or node, like redis-benchmark: CLIENTS\n"
            "connections on one event loop, each keeping PIPELINE requests in flight, until\n"
            "REQUESTS responses came back; then the next test. Reports ops/s and latency\n"
            "percentiles (queued-to-answered, histogram with <= 1%% error).\n"
            "\n"
            "Connection:\n"
            "  -h, --host HOST        server host (default 127.0.0.1); IPv6 as ::1 or [::1]\n"
            "  -p, --port PORT        server port (default 9527)\n"
            "  -s, --socket PATH      unix socket; overrides --host and --port\n"
            "      --tls              connect with TLS (the certificate must name --host)\n"
            "      --cacert FILE      CA bundle to verify the server with (default: system)\n"
            "      --cert FILE        client certificate, for servers that ask for one\n"
            "      --key FILE         its private key (default: --cert)\n"
            "      --insecure         do not verify the server's certificate (testing only)\n"
            "      --user NAME        authenticate every connection as NAME (Auth)\n"
            "      --token TOKEN      its token (default: the environment variable KVS_TOKEN)\n"
            "      --timeout SECONDS  give up when no connection completes and no answer\n"
            "                         comes for this long (default 10; 0 = wait forever)\n"
            "      --max-frame SIZE   largest frame sent or taken, 1KiB..1GiB (\"64MiB\" or\n"
            "                         bytes); a larger answer ends the run (default: what\n"
            "                         the workload needs, at least 4MiB, kvs's default)\n"
            "Workload:\n"
            "  -c, --clients N        parallel connections (default 50)\n"
            "  -n, --requests N       requests per test (default 100000)\n"
            "  -P, --pipeline N       requests in flight per connection (default 1)\n"
            "  -r, --keyspace N       random keys key:%%012d drawn from [0, N) (default 100000;\n"
            "                         0 = always the one key key:000000000000)\n"
            "  -d, --data-size N      value size in bytes for hset (default 100)\n"
            "  -t, --tests LIST       comma-separated, run in order (default hset,hget):\n"
            "                           hset   Hset of a random key\n"
            "                           hget   Hget of a random key\n"
            "                           hmget  Hmget of --keys random keys\n"
            "                           mixed  hget with probability --read-ratio, else hset\n"
            "                           ping   Ping (answered by the router itself)\n"
            "      --keys K           keys per hmget (default 10)\n"
            "      --read-ratio F     share of reads in mixed, 0..1 (default 0.9)\n"
            "      --table NAME       table to use (default bench)\n"
            "      --warmup N         requests sent before each test, not measured (default 0)\n"
            "      --seed N           random seed for keys and values (default 1)\n"
            "Output:\n"
            "      --json             one JSON object per test on stdout\n"
            "  -q, --quiet            one line per test\n"
            "      --help             this help\n"
            "      --version          print the version\n"
            "\n"
            "Statuses: every answer other than 200 is counted by status. 404 (Hget of a key\n"
            "never written) is counted as \"not found\", not as an error: run hset before\n"
            "hget (as the default order does) so most keys exist; with -r R and -n N about\n"
            "R*exp(-N/R) keys are still missing. Any other status counts as an error.\n"
            "Exit status: 0 when all tests ran, 1 when every answer of a test was an error,\n"
            "the server cannot be reached, stops answering (--timeout) or a connection\n"
            "breaks, 2 for usage errors.\n");
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("kvs-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see kvs-bench --help)\n", stderr);
    exit(2);
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0 || v < min || v > max)
        usage_error("%s wants a whole number from %" PRIu64 " to %" PRIu64 ", got \"%s\"", opt, min,
                    max, s);
    return (uint64_t)v;
}

static double parse_ratio(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno != 0 || !(v >= 0.0 && v <= 1.0))
        usage_error("%s wants a number from 0 to 1, got \"%s\"", opt, s);
    return v;
}

static void parse_tests(bench_opts_t *o, const char *list)
{
    char buf[512];
    if (strlen(list) >= sizeof(buf))
        usage_error("-t list is too long");
    strcpy(buf, list);
    o->ntests = 0;
    for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i;
        for (i = 0; i < sizeof(TESTS) / sizeof(TESTS[0]); i++)
            if (strcasecmp(tok, TESTS[i].name) == 0)
                break;
        if (i == sizeof(TESTS) / sizeof(TESTS[0]))
            usage_error("unknown test \"%s\" in -t (known: hset, hget, hmget, mixed, ping)", tok);
        if (o->ntests == BENCH_MAX_TESTS)
            usage_error("-t names more than %d tests", BENCH_MAX_TESTS);
        o->tests[o->ntests++] = &TESTS[i];
    }
    if (o->ntests == 0)
        usage_error("-t names no test");
}

static void opts_defaults(bench_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->clients = 50;
    o->requests = 100000;
    o->pipeline = 1;
    o->keyspace = 100000;
    o->value_size = 100;
    o->keys = 10;
    o->seed = 1;
    o->read_ratio = 0.9;
    o->timeout = 10;
    o->table = "bench";
    snprintf(o->addr.host, sizeof(o->addr.host), "127.0.0.1");
    o->addr.port = 9527;
    parse_tests(o, "hset,hget");
}

enum {
    OPT_KEYS = 256,
    OPT_RATIO,
    OPT_TABLE,
    OPT_WARMUP,
    OPT_SEED,
    OPT_JSON,
    OPT_HELP,
    OPT_VERSION,
    OPT_TLS,
    OPT_CACERT,
    OPT_CERT,
    OPT_KEY,
    OPT_INSECURE,
    OPT_USER,
    OPT_TOKEN,
    OPT_TIMEOUT,
    OPT_MAX_FRAME,
};

static const struct option LONG_OPTS[] = {{"host", required_argument, NULL, 'h'},
                                          {"port", required_argument, NULL, 'p'},
                                          {"socket", required_argument, NULL, 's'},
                                          {"clients", required_argument, NULL, 'c'},
                                          {"requests", required_argument, NULL, 'n'},
                                          {"pipeline", required_argument, NULL, 'P'},
                                          {"keyspace", required_argument, NULL, 'r'},
                                          {"data-size", required_argument, NULL, 'd'},
                                          {"tests", required_argument, NULL, 't'},
                                          {"quiet", no_argument, NULL, 'q'},
                                          {"keys", required_argument, NULL, OPT_KEYS},
                                          {"read-ratio", required_argument, NULL, OPT_RATIO},
                                          {"table", required_argument, NULL, OPT_TABLE},
                                          {"warmup", required_argument, NULL, OPT_WARMUP},
                                          {"seed", required_argument, NULL, OPT_SEED},
                                          {"json", no_argument, NULL, OPT_JSON},
                                          {"help", no_argument, NULL, OPT_HELP},
                                          {"version", no_argument, NULL, OPT_VERSION},
                                          {"tls", no_argument, NULL, OPT_TLS},
                                          {"cacert", required_argument, NULL, OPT_CACERT},
                                          {"cert", required_argument, NULL, OPT_CERT},
                                          {"key", required_argument, NULL, OPT_KEY},
                                          {"insecure", no_argument, NULL, OPT_INSECURE},
                                          {"user", required_argument, NULL, OPT_USER},
                                          {"token", required_argument, NULL, OPT_TOKEN},
                                          {"timeout", required_argument, NULL, OPT_TIMEOUT},
                                          {"max-frame", required_argument, NULL, OPT_MAX_FRAME},
                                          {NULL, 0, NULL, 0}};

/* Applies one connection option; returns 0 if `ch` is not one. */
static int parse_conn_opt(bench_opts_t *o, int ch, const char *arg)
{
    if (ch == 'h') {
        if (kvs_addr_host_arg(arg, o->addr.host, sizeof(o->addr.host)) != 0)
            usage_error("--host wants a host name or address, got \"%s\"", arg);
    } else if (ch == 'p') {
        o->addr.port = (uint16_t)parse_u64("--port", arg, 1, 65535);
    } else if (ch == 's') {
        if (strlen(arg) >= sizeof(o->addr.path) || arg[0] == '\0')
            usage_error("--socket path must be 1 to %zu bytes", sizeof(o->addr.path) - 1);
        snprintf(o->addr.path, sizeof(o->addr.path), "%s", arg);
        o->addr.is_unix = 1;
    } else if (ch == OPT_USER) {
        o->user = arg;
    } else if (ch == OPT_TOKEN) {
        o->token = arg;
    } else if (ch == OPT_TIMEOUT) {
        o->timeout = parse_u64("--timeout", arg, 0, 86400);
    } else if (ch == OPT_MAX_FRAME) {
        uint64_t v;
        if (kvs_config_parse_size(arg, &v) != 0 || v < 1024 || v > BENCH_MAX_FRAME)
            usage_error("--max-frame wants a size from 1KiB to 1GiB, got \"%s\"", arg);
        o->max_frame = v;
    } else if (ch >= OPT_TLS && ch <= OPT_INSECURE) {
        o->tls = 1;
        if (ch == OPT_CACERT)
            o->cacert = arg;
        else if (ch == OPT_CERT)
            o->cert = arg;
        else if (ch == OPT_KEY)
            o->key = arg;
        else if (ch == OPT_INSECURE)
            o->insecure = 1;
    } else {
        return 0;
    }
    return 1;
}

/* The TLS client context of --tls, --cacert, --cert, --key, --insecure. */
static kvs_tls_ctx_t *tls_setup(const bench_opts_t *o)
{
    char err[600];
    kvs_tls_ctx_t *c = NULL;
    kvs_tls_opts_t t = {
        .role = KVS_TLS_CLIENT,
        .cert = o->cert,
        .key = o->key != NULL ? o->key : o->cert,
        .ca = o->cacert,
        .peer = o->insecure ? KVS_TLS_PEER_NONE : KVS_TLS_PEER_REQUIRE,
        .min_version = KVS_TLS_V12,
        .max_version = KVS_TLS_V13,
        .what = "--tls",
    };
    int rc = kvs_tls_ctx_new(&t, &c, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "kvs-bench: %s\n", rc == KVS_ECONFIG ? err : kvs_strerror(rc));
        exit(2);
    }
    return c;
}

/* Applies one workload or output option; returns 0 if `ch` is not one. */
static int parse_load_opt(bench_opts_t *o, int ch, const char *arg)
{
    switch (ch) {
    case 'c':
        o->clients = parse_u64("-c", arg, 1, 10000);
        break;
    case 'n':
        o->requests = parse_u64("-n", arg, 1, 1000000000000ull);
        break;
    case 'P':
        o->pipeline = parse_u64("-P", arg, 1, 100000);
        break;
    case 'r':
        o->keyspace = parse_u64("-r", arg, 0, 1000000000000ull);
        break;
    case 'd':
        o->value_size = parse_u64("-d", arg, 0, BENCH_MAX_VALUE);
        break;
    case 't':
        parse_tests(o, arg);
        break;
    case 'q':
        o->quiet = 1;
        break;
    case OPT_KEYS:
        o->keys = parse_u64("--keys", arg, 1, 10000);
        break;
    case OPT_RATIO:
        o->read_ratio = parse_ratio("--read-ratio", arg);
        break;
    case OPT_WARMUP:
        o->warmup = parse_u64("--warmup", arg, 0, 1000000000000ull);
        break;
    case OPT_SEED:
        o->seed = parse_u64("--seed", arg, 0, UINT64_MAX);
        break;
    case OPT_JSON:
        o->json = 1;
        break;
    case OPT_TABLE:
        if (arg[0] == '\0' || strlen(arg) > KVS_MAX_TABLE)
            usage_error("--table wants a name of 1 to %d bytes", KVS_MAX_TABLE);
        o->table = arg;
        break;
    default:
        return 0;
    }
    return 1;
}

/* The frames the workload needs: its requests, and the answers a server
 * holding only values of this run's size gives them (an Hmget's --keys
 * values, an Hset's previous value), each pair with room to spare for
 * keys and framing; at least BENCH_FRAME_FLOOR, at most BENCH_MAX_FRAME. */
static uint64_t bench_frame_need(const bench_opts_t *o)
{
    uint64_t need = (o->keys + 1) * (o->value_size + 1024) + 65536;
    if (need < BENCH_FRAME_FLOOR)
        need = BENCH_FRAME_FLOOR;
    return need > BENCH_MAX_FRAME ? BENCH_MAX_FRAME : need;
}

static void parse_args(int argc, char **argv, bench_opts_t *o)
{
    int ch;
    opts_defaults(o);
    while ((ch = getopt_long(argc, argv, "h:p:s:c:n:P:r:d:t:q", LONG_OPTS, NULL)) != -1) {
        if (ch == OPT_HELP) {
            usage(stdout);
            exit(kvs_fs_stdout_done("kvs-bench"));
        }
        if (ch == OPT_VERSION) {
            printf("kvs-bench %s\n", KVS_VERSION);
            exit(kvs_fs_stdout_done("kvs-bench"));
        }
        if (!parse_conn_opt(o, ch, optarg) && !parse_load_opt(o, ch, optarg)) {
            fputs("kvs-bench: see kvs-bench --help\n", stderr);
            exit(2);
        }
    }
    if (optind != argc)
        usage_error("unexpected argument \"%s\"", argv[optind]);
    if (o->user != NULL && o->token == NULL)
        o->token = getenv("KVS_TOKEN");
    if (o->max_frame == 0)
        o->max_frame = bench_frame_need(o);
}

/* ---- main ------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    static bench_t b; /* large (the histogram): static, not on the stack */
    /* Before --help and --version: a closed pipe is EPIPE (exit 74), not a death. */
    signal(SIGPIPE, SIG_IGN);
    parse_args(argc, argv, &b.o);
    b.loop = uv_default_loop();
    b.rng = b.o.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    kvs_addr_format(&b.o.addr, b.name, sizeof(b.name));
    b.progress_on = isatty(STDERR_FILENO);
    if (b.o.tls)
        b.tls = tls_setup(&b.o);
    tmpl_init_all(&b);
    b.clients = calloc(b.o.clients, sizeof(*b.clients));
    if (b.clients == NULL || kvs_flusher_init(&b.flusher, b.loop, NULL, &b) != 0 ||
        uv_timer_init(b.loop, &b.progress) != 0 || uv_timer_init(b.loop, &b.watchdog) != 0)
        bench_fail(&b, "cannot set up the event loop");
    b.progress.data = &b;
    b.watchdog.data = &b;
    b.last_ns = uv_hrtime();
    if (b.o.timeout > 0 &&
        uv_timer_start(&b.watchdog, on_watchdog, BENCH_WATCHDOG_MS, BENCH_WATCHDOG_MS) != 0)
        bench_fail(&b, "cannot set up the event loop");
    clients_connect(&b);
    uv_run(b.loop, UV_RUN_DEFAULT);
    for (uint64_t i = 0; i < b.o.clients; i++)
        free(b.clients[i].sent_at);
    free(b.clients);
    tmpl_free_all(&b);
    uv_loop_close(b.loop);
    kvs_tls_ctx_free(b.tls);
    if (b.all_failed > 0) {
        fprintf(stderr,
                "kvs-bench: every answer of %u test%s was an error: the numbers above measure "
                "the error path\n",
                b.all_failed, b.all_failed == 1 ? "" : "s");
        return 1;
    }
    return kvs_fs_stdout_done("kvs-bench");
}
