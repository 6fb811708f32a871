/*
 * kvs-ingest-bench: the helper behind tests/bench/ingest.sh. It is a
 * benchmark tool, not a test, and is not installed.
 *
 *   produce  writes N keyed records (keys "key%08d" uniform over K distinct
 *            keys, values of a given size) with the Java-compatible
 *            murmur2_random partitioner and generous batching, so that every
 *            message set holds many records (the mock cluster returns at most
 *            one message set per partition and fetch); waits for every
 *            delivery report and fails on any delivery error.
 *   check    asserts that every partition of the topic still starts at
 *            offset 0 (the mock cluster silently drops its oldest message
 *            sets beyond ~5 MiB per partition) and, with --records, that the
 *            topic holds exactly that many records.
 *   consume  (a) a bare librdkafka consumer: queries every partition's
 *            watermarks, assigns them all from the beginning and reads until
 *            it reached every high watermark. Timed from assign to the last
 *            record.
 *   lmdb     (b) consumes every record into memory (untimed), then times
 *            applying them to a fresh LMDB environment (one named database,
 *            MDB_NOSYNC as kvs runs with storage.sync: none, and with
 *            --writemap MDB_WRITEMAP too: LMDB's fastest, an upper bound) in write txns of
 *            --batch records: put for a payload, del for a null payload. Values
 *            are stored as kvs stores a raw-format binding's payload (an
 *            encoded kvs.Value), so the bytes written match kvs's.
 *
 * Every mode prints one human line on stdout, or with --json one JSON object.
 * Every wait is bounded by --timeout. Errors go to stderr, exit status 1 (2 for
 * usage errors).
 */
#include "kvs_resp.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SETS 64
#define CONSUME_BATCH 1024
#define WM_TIMEOUT_MS 10000

typedef struct opts_s {
    const char *mode;
    const char *brokers;
    const char *topic;
    const char *dir;
    const char *group;
    long long records;
    long long keys;
    long value_size;
    long batch;
    double timeout;
    unsigned long long seed;
    int json;
    int writemap;
    int nsets;
    const char *set_k[MAX_SETS];
    const char *set_v[MAX_SETS];
} opts_t;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kvs-ingest-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds used by this process, every thread (librdkafka's included). */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *f)
{
    fprintf(
        f, "usage: kvs-ingest-bench produce --brokers BS --topic T --records N [--value-size 100]\n"
           "                                [--keys K] [--seed S]\n"
           "       kvs-ingest-bench check   --brokers BS --topic T [--records N]\n"
           "       kvs-ingest-bench consume --brokers BS --topic T [--set KEY=VALUE]...\n"
           "       kvs-ingest-bench lmdb    --brokers BS --topic T --dir D [--batch 10000]\n"
           "                                [--writemap]\n"
           "common options: [--json] [--timeout SECONDS (default 300)] [--group ID]\n"
           "\n"
           "Benchmark helper for tests/bench/ingest.sh (not installed, not a test).\n"
           "  produce  N records, keys \"key%%08d\" uniform over K keys (default N/2), values of\n"
           "           --value-size bytes; partitioner murmur2_random, large batches; fails\n"
           "           on any delivery error; prints the produce rate\n"
           "  check    fails unless every partition's low watermark is 0 (nothing dropped)\n"
           "           and, with --records, the partitions hold exactly N records\n"
           "  consume  (a) bare consumer: assign every partition from the beginning, read\n"
           "           to the high watermarks; prints records, seconds, records/s. --set\n"
           "           passes librdkafka properties (fetch.wait.max.ms, queued.min.messages)\n"
           "  lmdb     (b) reads every record into memory (untimed), then times applying\n"
           "           them to a fresh LMDB env in D (MDB_NOSYNC, as kvs runs with\n"
           "           storage.sync none, plus MDB_WRITEMAP with --writemap) in txns of\n"
           "           --batch records\n");
}

static long long parse_ll(const char *name, const char *s, long long min)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < min) {
        fprintf(stderr, "kvs-ingest-bench: %s \"%s\" must be an integer >= %lld\n", name, s, min);
        exit(2);
    }
    return v;
}

static void parse(opts_t *o, int argc, char **argv)
{
    static const struct option lo[] = {{"brokers", required_argument, NULL, 'b'},
                                       {"topic", required_argument, NULL, 't'},
                                       {"records", required_argument, NULL, 'n'},
                                       {"value-size", required_argument, NULL, 'v'},
                                       {"keys", required_argument, NULL, 'k'},
                                       {"dir", required_argument, NULL, 'd'},
                                       {"batch", required_argument, NULL, 'B'},
                                       {"set", required_argument, NULL, 's'},
                                       {"seed", required_argument, NULL, 'S'},
                                       {"group", required_argument, NULL, 'g'},
                                       {"timeout", required_argument, NULL, 'T'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"writemap", no_argument, NULL, 'W'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    o->mode = argv[1];
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'b':
            o->brokers = optarg;
            break;
        case 't':
            o->topic = optarg;
            break;
        case 'n':
            o->records = parse_ll("--records", optarg, 0);
            break;
        case 'v':
            o->value_size = (long)parse_ll("--value-size", optarg, 0);
            break;
        case 'k':
            o->keys = parse_ll("--keys", optarg, 1);
            break;
        case 'd':
            o->dir = optarg;
            break;
        case 'B':
            o->batch = (long)parse_ll("--batch", optarg, 1);
            break;
        case 'S':
            o->seed = (unsigned long long)parse_ll("--seed", optarg, 0);
            break;
        case 'g':
            o->group = optarg;
            break;
        case 'T':
            o->timeout = (double)parse_ll("--timeout", optarg, 1);
            break;
        case 'j':
            o->json = 1;
            break;
        case 'W':
            o->writemap = 1;
            break;
        case 's': {
            char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || o->nsets == MAX_SETS) {
                fprintf(stderr, "kvs-ingest-bench: --set wants KEY=VALUE (at most %d)\n", MAX_SETS);
                exit(2);
            }
            *eq = '\0';
            o->set_k[o->nsets] = optarg;
            o->set_v[o->nsets++] = eq + 1;
            break;
        }
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc) {
        fprintf(stderr, "kvs-ingest-bench: unexpected argument \"%s\"\n", argv[optind]);
        exit(2);
    }
    if (o->brokers == NULL || o->topic == NULL) {
        fprintf(stderr, "kvs-ingest-bench: --brokers and --topic are required\n");
        exit(2);
    }
}

static void conf_set(rd_kafka_conf_t *c, const char *k, const char *v)
{
    char err[512];
    if (rd_kafka_conf_set(c, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK)
        die("librdkafka property %s=%s: %s", k, v, err);
}

/* ---- produce -------------------------------------------------------------------- */

static long long delivered, failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err == 0) {
        delivered++;
        return;
    }
    if (failed++ < 5)
        fprintf(stderr, "kvs-ingest-bench: delivery failed (partition %d): %s\n", m->partition,
                rd_kafka_err2str(m->err));
}

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: fast, good enough for uniform keys */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int do_produce(const opts_t *o)
{
    char err[512];
    if (o->records <= 0)
        die("produce: --records must be > 0");
    long long keys = o->keys > 0 ? o->keys : (o->records / 2 > 0 ? o->records / 2 : 1);
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    conf_set(c, "bootstrap.servers", o->brokers);
    conf_set(c, "partitioner", "murmur2_random");
    conf_set(c, "linger.ms", "100");
    conf_set(c, "batch.num.messages", "1000000");
    conf_set(c, "batch.size", "1000000");
    conf_set(c, "queue.buffering.max.messages", "2000000");
    conf_set(c, "queue.buffering.max.kbytes", "2097151");
    conf_set(c, "compression.codec", "none");
    conf_set(c, "message.timeout.ms", "120000");
    for (int i = 0; i < o->nsets; i++)
        conf_set(c, o->set_k[i], o->set_v[i]);
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (rk == NULL)
        die("cannot create the producer: %s", err);

    char *val = malloc((size_t)o->value_size + 1);
    if (val == NULL)
        die("out of memory");
    uint64_t rng = o->seed;
    double deadline = now_s() + o->timeout, t0 = now_s();
    for (long long i = 0; i < o->records; i++) {
        char key[32];
        int klen =
            snprintf(key, sizeof(key), "key%08lld", (long long)(rng_next(&rng) % (uint64_t)keys));
        /* printable, different for every record */
        for (long j = 0; j < o->value_size; j++)
            val[j] = (char)('a' + (i * 7 + j) % 26);
        for (;;) {
            rd_kafka_resp_err_t e =
                rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(o->topic), RD_KAFKA_V_KEY(key, (size_t)klen),
                                  RD_KAFKA_V_VALUE(val, (size_t)o->value_size),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (e == 0)
                break;
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                die("produce: %s", rd_kafka_err2str(e));
            rd_kafka_poll(rk, 10);
            if (now_s() > deadline)
                die("produce: timed out after %.0f s with the queue full", o->timeout);
        }
        if ((i & 4095) == 0)
            rd_kafka_poll(rk, 0);
        if (failed > 0)
            die("produce: %lld delivery error(s), stopping", failed);
    }
    double left = deadline - now_s();
    rd_kafka_resp_err_t e = rd_kafka_flush(rk, left > 0 ? (int)(left * 1000) : 0);
    double t1 = now_s();
    if (e != 0 || rd_kafka_outq_len(rk) > 0)
        die("produce: %d record(s) still undelivered after %.0f s", rd_kafka_outq_len(rk),
            o->timeout);
    if (failed > 0 || delivered != o->records)
        die("produce: %lld delivered, %lld failed, %lld produced", delivered, failed, o->records);
    rd_kafka_destroy(rk);
    free(val);
    double secs = t1 - t0, rate = (double)o->records / secs;
    if (o->json)
        printf("{\"mode\":\"produce\",\"records\":%lld,\"keys\":%lld,\"value_size\":%ld,"
               "\"seconds\":%.6f,\"rate\":%.1f}\n",
               o->records, keys, o->value_size, secs, rate);
    else
        printf("produce: %lld records (%lld keys, %ld-byte values) in %.3f s: %.0f records/s\n",
               o->records, keys, o->value_size, secs, rate);
    return 0;
}

/* ---- consumer shared by check, consume, lmdb ------------------------------------------ */

typedef struct topic_wm_s {
    int parts;
    int64_t *lo, *hi;
} topic_wm_t;

static rd_kafka_t *new_consumer(const opts_t *o)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    conf_set(c, "bootstrap.servers", o->brokers);
    /* librdkafka 2.0.2's rd_kafka_assign still wants a group.id; nothing is committed */
    conf_set(c, "group.id", o->group != NULL ? o->group : "kvs-ingest-bench");
    conf_set(c, "enable.auto.commit", "false");
    conf_set(c, "enable.auto.offset.store", "false");
    conf_set(c, "auto.offset.reset", "earliest");
    conf_set(c, "log.connection.close", "false");
    for (int i = 0; i < o->nsets; i++)
        conf_set(c, o->set_k[i], o->set_v[i]);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err));
    if (rk == NULL)
        die("cannot create the consumer: %s", err);
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

/* Partition count (from a list-all metadata request, so a misspelled topic is
 * not auto-created) and every partition's watermarks. */
static void query_watermarks(rd_kafka_t *rk, const opts_t *o, topic_wm_t *w)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, WM_TIMEOUT_MS);
    if (e != 0)
        die("metadata from %s: %s", o->brokers, rd_kafka_err2str(e));
    w->parts = -1;
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, o->topic) == 0 && md->topics[i].err == 0)
            w->parts = md->topics[i].partition_cnt;
    rd_kafka_metadata_destroy(md);
    if (w->parts <= 0)
        die("topic %s does not exist on %s", o->topic, o->brokers);
    w->lo = calloc((size_t)w->parts, sizeof(int64_t));
    w->hi = calloc((size_t)w->parts, sizeof(int64_t));
    if (w->lo == NULL || w->hi == NULL)
        die("out of memory");
    for (int p = 0; p < w->parts; p++) {
        e = rd_kafka_query_watermark_offsets(rk, o->topic, p, &w->lo[p], &w->hi[p], WM_TIMEOUT_MS);
        if (e != 0)
            die("watermarks of %s [%d]: %s", o->topic, p, rd_kafka_err2str(e));
    }
}

typedef void (*on_record_fn)(void *arg, const rd_kafka_message_t *m);

typedef struct consume_res_s {
    long long records;
    long long bytes;
    double seconds;
    double cpu;     /* CPU seconds of this process meanwhile */
    double max_gap; /* longest wait between two non-empty batches */
} consume_res_t;

/* Reads every partition from its low to its high watermark. Timed from
 * assign to the record that completes the last partition. */
static consume_res_t consume_to_end(rd_kafka_t *rk, const opts_t *o, const topic_wm_t *w,
                                    on_record_fn fn, void *arg)
{
    consume_res_t r = {0, 0, 0, 0, 0};
    int64_t *next = calloc((size_t)w->parts, sizeof(int64_t));
    if (next == NULL)
        die("out of memory");
    int left = 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(w->parts);
    for (int p = 0; p < w->parts; p++) {
        next[p] = w->lo[p];
        if (w->hi[p] > w->lo[p])
            left++;
        rd_kafka_topic_partition_list_add(l, o->topic, p)->offset = w->lo[p];
    }
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
    rd_kafka_message_t *msgs[CONSUME_BATCH];
    double t0 = now_s(), last = t0, deadline = t0 + o->timeout, last_warn = 0, c0 = cpu_s();
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e != 0)
        die("assign: %s", rd_kafka_err2str(e));
    while (left > 0) {
        /* rd_kafka_consume_batch_queue waits until the batch is full or its
         * timeout expires, which would add a timeout to every partial batch
         * (the last one in particular). So take what is queued without
         * waiting, and when nothing is, block for one record. */
        ssize_t n = rd_kafka_consume_batch_queue(q, 0, msgs, CONSUME_BATCH);
        if (n == 0) {
            msgs[0] = rd_kafka_consume_queue(q, 100);
            n = msgs[0] != NULL;
        }
        double t = now_s();
        if (n < 0)
            die("consume: %s", rd_kafka_err2str(rd_kafka_last_error()));
        if (t > deadline)
            die("consume: timed out after %.0f s with %d partition(s) unfinished, %lld records "
                "read",
                o->timeout, left, r.records);
        if (n == 0)
            continue;
        if (t - last > r.max_gap)
            r.max_gap = t - last;
        last = t;
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = msgs[i];
            if (m->err != 0) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && t - last_warn > 1) {
                    last_warn = t;
                    fprintf(stderr, "kvs-ingest-bench: consumer: %s\n", rd_kafka_message_errstr(m));
                }
            } else if (m->partition >= 0 && m->partition < w->parts &&
                       m->offset >= next[m->partition] && m->offset < w->hi[m->partition]) {
                int p = m->partition;
                r.records++;
                r.bytes += (long long)(m->len + m->key_len);
                if (fn != NULL)
                    fn(arg, m);
                next[p] = m->offset + 1;
                if (next[p] >= w->hi[p])
                    left--;
            }
            rd_kafka_message_destroy(m);
        }
    }
    r.seconds = now_s() - t0;
    r.cpu = cpu_s() - c0;
    rd_kafka_queue_destroy(q);
    free(next);
    return r;
}

/* ---- check ------------------------------------------------------------------------ */

static int do_check(const opts_t *o)
{
    rd_kafka_t *rk = new_consumer(o);
    topic_wm_t w;
    query_watermarks(rk, o, &w);
    int bad = 0;
    long long total = 0, maxp = 0;
    for (int p = 0; p < w.parts; p++) {
        if (w.lo[p] != 0) {
            fprintf(stderr,
                    "kvs-ingest-bench: %s [%d] starts at offset %" PRId64 ", not 0: the mock "
                    "cluster dropped records (use more partitions or fewer records)\n",
                    o->topic, p, w.lo[p]);
            bad = 1;
        }
        total += w.hi[p];
        if (w.hi[p] > maxp)
            maxp = w.hi[p];
    }
    if (o->records > 0 && total != o->records) {
        fprintf(stderr, "kvs-ingest-bench: %s holds %lld records, expected %lld\n", o->topic, total,
                o->records);
        bad = 1;
    }
    if (o->json)
        printf("{\"mode\":\"check\",\"partitions\":%d,\"records\":%lld,\"max_partition\":%lld,"
               "\"ok\":%s}\n",
               w.parts, total, maxp, bad ? "false" : "true");
    else
        printf("check: %s has %d partitions, %lld records (largest partition %lld): %s\n", o->topic,
               w.parts, total, maxp, bad ? "FAILED" : "ok");
    rd_kafka_destroy(rk);
    free(w.lo);
    free(w.hi);
    return bad;
}

/* ---- consume ------------------------------------------------------------------------ */

static int do_consume(const opts_t *o)
{
    rd_kafka_t *rk = new_consumer(o);
    topic_wm_t w;
    query_watermarks(rk, o, &w);
    consume_res_t r = consume_to_end(rk, o, &w, NULL, NULL);
    double rate = r.records / (r.seconds > 0 ? r.seconds : 1e-9);
    if (o->json)
        printf("{\"mode\":\"consume\",\"partitions\":%d,\"records\":%lld,\"bytes\":%lld,"
               "\"seconds\":%.6f,\"rate\":%.1f,\"cpu_seconds\":%.6f,\"max_gap_ms\":%.1f}\n",
               w.parts, r.records, r.bytes, r.seconds, rate, r.cpu, r.max_gap * 1000);
    else
        printf("consume: %lld records from %d partitions in %.3f s: %.0f records/s (%.2f "
               "CPU-s; longest wait for a batch %.0f ms)\n",
               r.records, w.parts, r.seconds, rate, r.cpu, r.max_gap * 1000);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    free(w.lo);
    free(w.hi);
    return 0;
}

/* ---- lmdb ------------------------------------------------------------------------ */

/* Records in memory: [u32 klen][u32 vlen or NULL_LEN][key][value]... */
#define NULL_LEN UINT32_MAX

typedef struct recs_s {
    uint8_t *p;
    size_t len, cap;
    long long n;
    long long keyless; /* skipped, as kvs skips them */
} recs_t;

static void recs_add(void *arg, const rd_kafka_message_t *m)
{
    recs_t *r = arg;
    if (m->key == NULL || m->key_len == 0) {
        r->keyless++;
        return;
    }
    size_t vlen = m->payload != NULL ? m->len : 0;
    size_t need = 8 + m->key_len + vlen;
    if (r->len + need > r->cap) {
        size_t cap = r->cap ? r->cap : 1 << 20;
        while (cap < r->len + need)
            cap *= 2;
        uint8_t *np = realloc(r->p, cap);
        if (np == NULL)
            die("out of memory holding %lld records", r->n);
        r->p = np;
        r->cap = cap;
    }
    uint32_t kl = (uint32_t)m->key_len, vl = m->payload != NULL ? (uint32_t)m->len : NULL_LEN;
    memcpy(r->p + r->len, &kl, 4);
    memcpy(r->p + r->len + 4, &vl, 4);
    if (kl > 0)
        memcpy(r->p + r->len + 8, m->key, kl);
    if (vlen > 0)
        memcpy(r->p + r->len + 8 + kl, m->payload, vlen);
    r->len += need;
    r->n++;
}

static void mdb_check(int rc, const char *what)
{
    if (rc != 0)
        die("%s: %s", what, mdb_strerror(rc));
}

static int do_lmdb(const opts_t *o)
{
    if (o->dir == NULL)
        die("lmdb: --dir is required");
    long batch = o->batch > 0 ? o->batch : 10000;
    rd_kafka_t *rk = new_consumer(o);
    topic_wm_t w;
    query_watermarks(rk, o, &w);
    recs_t recs = {NULL, 0, 0, 0, 0};
    consume_res_t cr = consume_to_end(rk, o, &w, recs_add, &recs);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);

    /* A fresh environment: refuse to reuse one. */
    if (mkdir(o->dir, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", o->dir, strerror(errno));
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", o->dir);
    if (access(path, F_OK) == 0)
        die("lmdb: %s exists; --dir must name a fresh directory", path);

    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    size_t map = (size_t)1 << 30;
    while (map < recs.len * 4 + ((size_t)64 << 20))
        map *= 2;
    mdb_check(mdb_env_create(&env), "mdb_env_create");
    mdb_check(mdb_env_set_maxdbs(env, 4), "mdb_env_set_maxdbs");
    mdb_check(mdb_env_set_mapsize(env, map), "mdb_env_set_mapsize");
    unsigned flags = MDB_NOTLS | MDB_NOSYNC | (o->writemap ? MDB_WRITEMAP : 0);
    mdb_check(mdb_env_open(env, o->dir, flags, 0644), "mdb_env_open");
    mdb_check(mdb_txn_begin(env, NULL, 0, &txn), "mdb_txn_begin");
    mdb_check(mdb_dbi_open(txn, o->topic, MDB_CREATE, &dbi), "mdb_dbi_open");
    mdb_check(mdb_txn_commit(txn), "mdb_txn_commit");

    uint8_t *scratch = NULL;
    size_t scap = 0;
    long long puts = 0, dels = 0, txns = 0;
    size_t off = 0;
    double t0 = now_s(), c0 = cpu_s();
    while (off < recs.len) {
        mdb_check(mdb_txn_begin(env, NULL, 0, &txn), "mdb_txn_begin");
        for (long i = 0; i < batch && off < recs.len; i++) {
            uint32_t kl, vl;
            memcpy(&kl, recs.p + off, 4);
            memcpy(&vl, recs.p + off + 4, 4);
            MDB_val k = {kl, recs.p + off + 8}, v;
            if (vl == NULL_LEN) {
                int rc = mdb_del(txn, dbi, &k, NULL);
                if (rc != 0 && rc != MDB_NOTFOUND)
                    mdb_check(rc, "mdb_del");
                dels++;
                off += 8 + kl;
            } else {
                if (scap < (size_t)vl + 16) {
                    scap = (size_t)vl + 16;
                    free(scratch);
                    if ((scratch = malloc(scap)) == NULL)
                        die("out of memory");
                }
                /* what kvs stores for a raw-format binding: an encoded Value */
                v.mv_size = kvs_value_encode_bytes(scratch, 0, recs.p + off + 8 + kl, vl);
                v.mv_data = scratch;
                mdb_check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
                puts++;
                off += 8 + (size_t)kl + vl;
            }
        }
        mdb_check(mdb_txn_commit(txn), "mdb_txn_commit");
        txns++;
    }
    double secs = now_s() - t0, cpu = cpu_s() - c0;
    MDB_stat st;
    mdb_check(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "mdb_txn_begin");
    mdb_check(mdb_stat(txn, dbi, &st), "mdb_stat");
    mdb_txn_abort(txn);
    mdb_env_close(env);
    free(scratch);
    free(recs.p);
    free(w.lo);
    free(w.hi);
    double rate = recs.n / (secs > 0 ? secs : 1e-9);
    if (o->json)
        printf("{\"mode\":\"lmdb\",\"records\":%lld,\"puts\":%lld,\"dels\":%lld,\"txns\":%lld,"
               "\"keyless\":%lld,\"writemap\":%s,\"batch\":%ld,\"entries\":%zu,\"seconds\":%.6f,"
               "\"rate\":%.1f,"
               "\"cpu_seconds\":%.6f,\"read_seconds\":%.6f}\n",
               recs.n, puts, dels, txns, recs.keyless, o->writemap ? "true" : "false", batch,
               st.ms_entries, secs, rate, cpu, cr.seconds);
    else
        printf("lmdb: %lld records (%lld puts, %lld dels, %zu distinct keys) in %lld txns of "
               "<= %ld%s: %.3f s, %.0f records/s (%.2f CPU-s)\n",
               recs.n, puts, dels, st.ms_entries, txns, batch, o->writemap ? ", write map" : "",
               secs, rate, cpu);
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o = {.value_size = 100, .batch = 10000, .timeout = 300, .seed = 42};
    parse(&o, argc, argv);
    if (strcmp(o.mode, "produce") == 0)
        return do_produce(&o);
    if (strcmp(o.mode, "check") == 0)
        return do_check(&o);
    if (strcmp(o.mode, "consume") == 0)
        return do_consume(&o);
    if (strcmp(o.mode, "lmdb") == 0)
        return do_lmdb(&o);
    fprintf(stderr, "kvs-ingest-bench: unknown mode \"%s\"; try --help\n", o.mode);
    return 2;
}
