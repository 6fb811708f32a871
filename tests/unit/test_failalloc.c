/*
 * test_failalloc: allocation failures in kvs's parsers and codecs, one at a
 * time (kvs_failalloc.h). For each input a function call is made once
 * counting its allocations (K), then K more times with the n-th failing;
 * every run must end in the function's documented error or in the
 * reference result (a fallback may absorb a failure), leave its output
 * usable, and free everything once the caller has cleaned up.
 *
 * Inputs come from the fuzz corpora (tests/fuzz/corpus) and from the
 * shapes the module tests use. Covered: allocations of kvs_common and of
 * the statically linked libyaml and protobuf-c (see kvs_failalloc.h);
 * not covered: allocations inside shared libraries (libc's own, OpenSSL).
 */
#include "kvs_buf.h"
#include "kvs_config.h"
#include "kvs_err.h"
#include "kvs_failalloc.h"
#include "kvs_frame.h"
#include "kvs_msg.h"
#include "kvs_pos.h"
#include "kvs_redis.h"
#include "kvs_resp.h"
#include "kvs_test.h"

#include <dirent.h>
#include <errno.h>

#ifndef KVS_SOURCE_DIR
#error "KVS_SOURCE_DIR must name the source tree (for the fuzz corpora)"
#endif

/* ---- corpus files ------------------------------------------------------- */

typedef struct {
    char name[320];
    uint8_t *data;
    size_t len;
} input_t;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const input_t *)a)->name, ((const input_t *)b)->name);
}

/* Reads every file of tests/fuzz/corpus/<dir> (sorted by name) into a
 * fresh array; returns how many (at least one: checked). */
static size_t read_corpus(const char *dir, input_t **out)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/%s", KVS_SOURCE_DIR, dir);
    DIR *d = opendir(path);
    CHECK(d != NULL);
    size_t n = 0, cap = 0;
    input_t *v = NULL;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            CHECK((v = realloc(v, cap * sizeof(*v))) != NULL);
        }
        snprintf(v[n].name, sizeof(v[n].name), "%s/%s", dir, e->d_name);
        char file[1024];
        snprintf(file, sizeof(file), "%s/%s", path, e->d_name);
        FILE *f = fopen(file, "rb");
        CHECK(f != NULL);
        CHECK(fseek(f, 0, SEEK_END) == 0);
        long size = ftell(f);
        CHECK(size >= 0);
        rewind(f);
        CHECK((v[n].data = malloc((size_t)size + 1)) != NULL);
        CHECK(fread(v[n].data, 1, (size_t)size, f) == (size_t)size);
        v[n].data[size] = '\0';
        v[n].len = (size_t)size;
        fclose(f);
        n++;
    }
    closedir(d);
    CHECK(n > 0);
    qsort(v, n, sizeof(*v), by_name);
    *out = v;
    return n;
}

static void free_corpus(input_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].data);
    free(v);
}

/* ---- kvs_msg: request decoding and validation ---------------------------- */

/* protobuf-c's allocator for a request kvs_msg_decode_request decoded
 * with malloc: free, through the wrapper. */
static void *pb_malloc(void *d, size_t n)
{
    (void)d;
    return malloc(n);
}

static void pb_free(void *d, void *p)
{
    (void)d;
    free(p);
}

static ProtobufCAllocator pb_heap = {pb_malloc, pb_free, NULL};

/* What a decode gave: NULL-ness, status, and, for a request, its packed
 * bytes and what kvs_msg_validate said of it. */
typedef struct {
    int decoded;
    uint32_t status;
    uint8_t packed[1 << 16];
    size_t packed_len;
    uint32_t valid;
    char msg[512];
} decoded_t;

static void describe(const Kvs__CommandRequest *q, uint32_t status, decoded_t *d)
{
    memset(d, 0, sizeof(*d));
    d->decoded = q != NULL;
    d->status = q != NULL ? 0 : status;
    if (q == NULL)
        return;
    size_t n = protobuf_c_message_get_packed_size(&q->base);
    CHECK(n <= sizeof(d->packed));
    d->packed_len = protobuf_c_message_pack(&q->base, d->packed);
    d->valid = kvs_msg_validate(q, d->msg, sizeof(d->msg));
}

static int same_decode(const decoded_t *a, const decoded_t *b)
{
    return a->decoded == b->decoded && a->status == b->status && a->packed_len == b->packed_len &&
           memcmp(a->packed, b->packed, a->packed_len) == 0 && a->valid == b->valid &&
           strcmp(a->msg, b->msg) == 0;
}

typedef struct {
    const input_t *in;
    int use_arena;
    decoded_t ref, got;
} decode_ctx_t;

/* One decode (arena or malloc) of the input; the first run's result is
 * the reference. A failure may only turn a request into a refusal with
 * 413 or 400 (kvs_msg_decode_request's documented statuses) or be
 * absorbed (then the same request comes out). */
static void decode_step(void *arg)
{
    decode_ctx_t *c = arg;
    uint32_t status = 0;
    kvs_arena_t arena;
    kvs_arena_init(&arena);
    kvs_fa_on();
    Kvs__CommandRequest *q =
        kvs_msg_decode_request(c->use_arena ? &arena : NULL, c->in->data, c->in->len, &status);
    kvs_fa_off();
    decoded_t *d =
        kvs_fa_fail_at() == 0 && !c->ref.decoded && c->ref.status == 0 ? &c->ref : &c->got;
    describe(q, status, d);
    if (d != &c->ref && !same_decode(&c->ref, d)) {
        /* Out of memory, a request is refused with 500 (kvs_msg_decode_request:
         * it may be fine), whatever it would have been told otherwise. */
        if (!kvs_fa_failed() || d->decoded) {
            fprintf(stderr,
                    "%s (arena %d): fail_at=%ld: decoded %d status %u valid %u, "
                    "reference decoded %d status %u valid %u\n",
                    c->in->name, c->use_arena, kvs_fa_fail_at(), d->decoded, d->status, d->valid,
                    c->ref.decoded, c->ref.status, c->ref.valid);
            abort();
        }
        if (d->status != KVS_STATUS_INTERNAL) {
            fprintf(stderr,
                    "%s (arena %d): fail_at=%ld: a failed allocation refused a valid "
                    "request with %u\n",
                    c->in->name, c->use_arena, kvs_fa_fail_at(), d->status);
            abort();
        }
    }
    if (q == NULL && status == KVS_STATUS_INTERNAL) {
        char msg[256];
        CHECK_EQ(kvs_msg_decode_refusal(status, NULL, c->in->len, msg, sizeof(msg)), 500);
        CHECK_CONTAINS(msg, "server out of memory");
    }
    if (q != NULL && !c->use_arena)
        kvs__command_request__free_unpacked(q, &pb_heap);
    kvs_arena_close(&arena);
}

static void decode_corpus(int use_arena)
{
    input_t *v;
    size_t n = read_corpus("request", &v);
    static decode_ctx_t c;
    for (size_t i = 0; i < n; i++) {
        memset(&c, 0, sizeof(c));
        c.in = &v[i];
        c.use_arena = use_arena;
        kvs_failalloc_loop(v[i].name, decode_step, &c, 0);
    }
    free_corpus(v, n);
}

KVS_TEST(msg_decode_request_arena)
{
    decode_corpus(1);
}

KVS_TEST(msg_decode_request_malloc)
{
    decode_corpus(0);
}

/* ---- kvs_redis: the RESP parser -------------------------------------------- */

#define REDIS_MAX_REQUEST (1u << 20)

/* Parses stream[0..len) in one piece, command after command, appending
 * each to `log` (argc, then each argument's length and bytes). After
 * -ENOMEM the same bytes are offered again, as a caller that freed memory
 * would: the parser must pick up where it stood. Returns the end: 0 clean
 * (bytes left are an incomplete request), -1 protocol error. */
static int redis_run(const uint8_t *stream, size_t len, kvs_buf_t *log, int *nomem)
{
    kvs_redis_parser_t ps;
    kvs_redis_parser_init(&ps);
    size_t off = 0;
    int end = 0;
    while (off < len) {
        size_t used = 0;
        kvs_fa_on();
        int rc = kvs_redis_parse(&ps, stream + off, len - off, REDIS_MAX_REQUEST, &used);
        kvs_fa_off();
        if (rc == -ENOMEM) {
            CHECK(kvs_fa_failed());
            CHECK_EQ(used, 0);
            (*nomem)++;
            continue; /* the failure was one-shot: the retry must succeed */
        }
        if (rc == 0) {
            CHECK_EQ(used, 0);
            break;
        }
        if (rc < 0) {
            CHECK_EQ(rc, -1);
            CHECK(ps.error != NULL && strstr(ps.error, "Protocol error") != NULL);
            end = -1;
            break;
        }
        CHECK(used > 0 && used <= len - off);
        uint64_t n = ps.argc;
        CHECK(kvs_buf_append(log, &n, sizeof(n)) == 0);
        for (size_t i = 0; i < ps.argc; i++) {
            uint64_t alen = ps.argv[i].len;
            CHECK(kvs_buf_append(log, &alen, sizeof(alen)) == 0);
            CHECK(kvs_buf_append(log, ps.argv[i].p, ps.argv[i].len) == 0);
        }
        off += used;
    }
    kvs_redis_parser_close(&ps);
    return end;
}

typedef struct {
    const uint8_t *stream;
    size_t len;
    const char *name;
    kvs_buf_t ref;
    int ref_end, have_ref;
} redis_ctx_t;

static void redis_step(void *arg)
{
    redis_ctx_t *c = arg;
    kvs_buf_t log;
    kvs_buf_init(&log);
    int nomem = 0;
    int end = redis_run(c->stream, c->len, &log, &nomem);
    if (!c->have_ref) {
        c->ref = log;
        c->ref_end = end;
        c->have_ref = 1;
        return;
    }
    CHECK_EQ(nomem, kvs_fa_failed());
    if (end != c->ref_end || log.len != c->ref.len ||
        (log.len > 0 && memcmp(log.data, c->ref.data, log.len) != 0)) {
        fprintf(stderr, "%s: fail_at=%ld: different commands after -ENOMEM and a retry\n", c->name,
                kvs_fa_fail_at());
        abort();
    }
    kvs_buf_free(&log);
}

static void redis_loop(const char *name, const uint8_t *stream, size_t len, long min_allocs)
{
    static redis_ctx_t c;
    memset(&c, 0, sizeof(c));
    c.stream = stream;
    c.len = len;
    c.name = name;
    kvs_failalloc_loop(name, redis_step, &c, min_allocs);
    kvs_buf_free(&c.ref); /* allocated outside the counted runs' checks: see warm-up */
}

KVS_TEST(redis_parse_corpus)
{
    input_t *v;
    size_t n = read_corpus("redis", &v);
    for (size_t i = 0; i < n; i++) {
        /* byte 0 is fuzz_redis's piece size: the stream is the rest */
        if (v[i].len > 1)
            redis_loop(v[i].name, v[i].data + 1, v[i].len - 1, 0);
    }
    free_corpus(v, n);
}

/* Requests that make the parser grow its argument array past what it
 * keeps (KVS_REDIS_KEEP_ARGS), then shrink it, and an inline request
 * (scratch), so every allocation site is reached. */
KVS_TEST(redis_parse_grow)
{
    kvs_buf_t s;
    kvs_buf_init(&s);
    char line[64];
    int n = snprintf(line, sizeof(line), "*%d\r\n$4\r\nHDEL\r\n", KVS_REDIS_KEEP_ARGS + 100);
    CHECK(kvs_buf_append(&s, line, (size_t)n) == 0);
    for (int i = 1; i < KVS_REDIS_KEEP_ARGS + 100; i++) {
        n = snprintf(line, sizeof(line), "$%d\r\nk%d\r\n",
                     i < 10     ? 2
                     : i < 100  ? 3
                     : i < 1000 ? 4
                                : 5,
                     i);
        CHECK(kvs_buf_append(&s, line, (size_t)n) == 0);
    }
    static const char tail[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
                               "set \"a b\" 'c\\'d' e\r\n"
                               "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"
                               "PING\r\n";
    CHECK(kvs_buf_append(&s, tail, sizeof(tail) - 1) == 0);
    redis_loop("redis grow", s.data, s.len, 3);
    kvs_buf_free(&s);
}

/* ---- the bytes a step made --------------------------------------------------- */

/* The bytes of the first run (the warm-up, where nothing fails) are the
 * reference every later run must make again. */
typedef struct {
    kvs_buf_t ref;
    int have_ref;
} bytes_ctx_t;

/* Keeps `b` as the reference on the first run, else checks it equals the
 * reference and frees it. */
static void same_bytes(bytes_ctx_t *c, kvs_buf_t *b)
{
    if (!c->have_ref) {
        c->ref = *b;
        c->have_ref = 1;
        return;
    }
    CHECK_EQ(b->len, c->ref.len);
    CHECK(memcmp(b->data, c->ref.data, b->len) == 0);
    kvs_buf_free(b);
}

/* ---- kvs_redis: reply writers ---------------------------------------------- */

/* Every writer, into a buffer that already holds a reply: a failed one
 * returns -ENOMEM and leaves the buffer as it was (its len), so the
 * caller can write an error instead. */
static void writers_step(void *arg)
{
    bytes_ctx_t *c = arg;
    kvs_buf_t b;
    kvs_buf_init(&b);
    static uint8_t big[20000];
    memset(big, 'v', sizeof(big));
    int failures = 0;
#define W(call)                                                                                    \
    do {                                                                                           \
        size_t before = b.len;                                                                     \
        kvs_fa_on();                                                                               \
        int rc_ = (call);                                                                          \
        kvs_fa_off();                                                                              \
        if (rc_ != 0) {                                                                            \
            CHECK_EQ(rc_, -ENOMEM);                                                                \
            CHECK_EQ(b.len, before);                                                               \
            failures++;                                                                            \
            CHECK((call) == 0); /* and it works once memory is there */                            \
        }                                                                                          \
    } while (0)
    W(kvs_redis_simple(&b, "OK"));
    W(kvs_redis_error(&b, "ERR %s\nline", "two"));
    W(kvs_redis_integer(&b, -42));
    W(kvs_redis_bulk(&b, big, 5000));
    W(kvs_redis_null(&b, 0));
    W(kvs_redis_null(&b, 1));
    W(kvs_redis_array(&b, 3));
    W(kvs_redis_map(&b, 2, 1));
    W(kvs_redis_map(&b, 2, 0));
    W(kvs_redis_set(&b, 2, 1));
    W(kvs_redis_double(&b, 3.25, 1));
    W(kvs_redis_double(&b, -1e300, 0));
    W(kvs_redis_bool(&b, 1, 1));
    W(kvs_redis_bool(&b, 0, 0));
    W(kvs_redis_bulk(&b, big, sizeof(big)));
    W(kvs_redis_verbatim(&b, big, 9000, 1));
    W(kvs_redis_verbatim(&b, big, 100, 0));
#undef W
    CHECK_EQ(failures, kvs_fa_failed());
    same_bytes(c, &b);
}

KVS_TEST(redis_writers)
{
    static bytes_ctx_t c;
    kvs_failalloc_loop("redis writers", writers_step, &c, 3);
    kvs_buf_free(&c.ref);
}

/* ---- kvs_resp and kvs_msg_append: answers ---------------------------------- */

/* Builds answers of every shape after a frame already in the buffer. A
 * failed kvs_resp_end is -ENOMEM with the partial frame gone; a failed
 * kvs_msg_append is -ENOMEM with nothing appended; the answer is then
 * built again (as a worker would retry, or write an error instead). */
static void answers_step(void *arg)
{
    bytes_ctx_t *c = arg;
    kvs_buf_t b;
    kvs_buf_init(&b);
    static uint8_t big[12000];
    uint8_t val[16400];
    memset(big, 'x', sizeof(big));
    size_t vlen = kvs_value_encode_bytes(val, 1, big, 9000);
    uint8_t ival[16];
    size_t ilen = kvs_value_encode_int(ival, -7);
    int failures = 0;
    for (int shape = 0; shape < 4; shape++) {
        for (;;) {
            size_t before = b.len;
            kvs_resp_t r;
            kvs_fa_on();
            kvs_resp_begin(&r, &b);
            kvs_resp_status(&r, shape == 3 ? 503 : 200);
            if (shape == 0) {
                kvs_resp_value(&r, ival, ilen);
                kvs_resp_value(&r, val, vlen);
            } else if (shape == 1) {
                for (int i = 0; i < 40; i++)
                    kvs_resp_pair(&r, "key", 3, i % 2 ? ival : val, i % 2 ? ilen : vlen);
                kvs_resp_cursor(&r, big, 600);
                kvs_resp_position(&r, big, 20);
            } else if (shape == 2) {
                kvs_resp_bool(&r, 1);
                kvs_resp_key(&r, big, 5000);
                kvs_resp_ops(&r, "", 0);
            } else {
                kvs_resp_message(&r, "shard %d is %s", 3, "away");
                kvs_resp_outcome_unknown(&r);
            }
            int rc = kvs_resp_end(&r);
            kvs_fa_off();
            if (rc == 0)
                break;
            CHECK_EQ(rc, -ENOMEM);
            CHECK_EQ(b.len, before);
            failures++;
        }
    }
    for (;;) {
        size_t before = b.len;
        kvs_fa_on();
        int rc = kvs_msg_append_status(&b, 400, "bad %s", "request");
        kvs_fa_off();
        if (rc == 0)
            break;
        CHECK_EQ(rc, -ENOMEM);
        CHECK_EQ(b.len, before);
        failures++;
    }
    CHECK_EQ(failures, kvs_fa_failed());
    /* Every frame decodes as a CommandResponse. */
    size_t off = 0, frames = 0;
    while (off < b.len) {
        CHECK(b.len - off >= KVS_FRAME_HEADER);
        uint32_t plen = (uint32_t)b.data[off] << 24 | (uint32_t)b.data[off + 1] << 16 |
                        (uint32_t)b.data[off + 2] << 8 | b.data[off + 3];
        CHECK(plen <= b.len - off - KVS_FRAME_HEADER);
        kvs_fa_off();
        Kvs__CommandResponse *m =
            kvs__command_response__unpack(&pb_heap, plen, b.data + off + KVS_FRAME_HEADER);
        CHECK(m != NULL);
        kvs__command_response__free_unpacked(m, &pb_heap);
        off += KVS_FRAME_HEADER + plen;
        frames++;
    }
    CHECK_EQ(frames, 5);
    same_bytes(c, &b);
}

KVS_TEST(resp_answers)
{
    static bytes_ctx_t c;
    kvs_failalloc_loop("answers", answers_step, &c, 2);
    kvs_buf_free(&c.ref);
}

/* ---- kvs_pos: position tokens ------------------------------------------------ */

/* The text form parsed, merged with a token, one topic taken out, and
 * encoded: a failed call is -ENOMEM and the set stays one that
 * kvs_pos_set_free frees; the call is then made again. */
static void pos_step(void *arg)
{
    bytes_ctx_t *c = arg;
    kvs_pos_set_t s, t, u;
    kvs_buf_t tok, out;
    char err[128];
    kvs_pos_set_init(&s);
    kvs_pos_set_init(&t);
    kvs_pos_set_init(&u);
    kvs_buf_init(&tok);
    kvs_buf_init(&out);
    static char text[8192];
    size_t n = 0;
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "%s%s:%d:%d", i ? "," : "",
                              i % 3 == 0   ? "users"
                              : i % 3 == 1 ? "orders"
                                           : "a.b-c_d",
                              i % 40, i * 7);
    int failures = 0;
    int rc;
#define AGAIN(call)                                                                                \
    do {                                                                                           \
        for (;;) {                                                                                 \
            kvs_fa_on();                                                                           \
            rc = (call);                                                                           \
            kvs_fa_off();                                                                          \
            if (rc != -ENOMEM)                                                                     \
                break;                                                                             \
            failures++;                                                                            \
        }                                                                                          \
        CHECK_EQ(rc, 0);                                                                           \
    } while (0)
    AGAIN(kvs_pos_set_parse(&s, text, err, sizeof(err)));
    AGAIN(kvs_pos_set_encode(&s, &tok));
    AGAIN(kvs_pos_set_add(&t, "users", 5, 1, 99999));
    AGAIN(kvs_pos_set_add_token(&t, tok.data, tok.len));
    AGAIN(kvs_pos_set_add_topic(&u, tok.data, tok.len, "orders", 6, 16));
    AGAIN(kvs_pos_set_add_token(&u, tok.data, tok.len));
    AGAIN(kvs_pos_set_encode(&t, &out));
    AGAIN(kvs_pos_set_encode(&u, &out));
#undef AGAIN
    CHECK_EQ(failures, kvs_fa_failed());
    kvs_pos_set_free(&s);
    kvs_pos_set_free(&t);
    kvs_pos_set_free(&u);
    kvs_buf_free(&tok);
    same_bytes(c, &out);
}

KVS_TEST(pos_tokens)
{
    static bytes_ctx_t c;
    kvs_failalloc_loop("pos tokens", pos_step, &c, 5);
    kvs_buf_free(&c.ref);
}

/* ---- kvs_buf ------------------------------------------------------------------- */

static void buf_step(void *arg)
{
    (void)arg;
    kvs_buf_t b;
    kvs_buf_init(&b);
    static uint8_t chunk[3000];
    memset(chunk, 'c', sizeof(chunk));
    size_t want = 0;
    int failures = 0;
    for (int i = 0; i < 40; i++) {
        size_t before = b.len, cap = b.cap;
        uint8_t *data = b.data;
        kvs_fa_on();
        int rc = kvs_buf_append(&b, chunk, sizeof(chunk));
        kvs_fa_off();
        if (rc != 0) {
            CHECK_EQ(rc, -ENOMEM);
            CHECK(b.len == before && b.cap == cap && b.data == data);
            failures++;
            continue;
        }
        want += sizeof(chunk);
        if (i % 7 == 6) {
            kvs_buf_consume(&b, 1000);
            want -= 1000;
        }
    }
    CHECK_EQ(b.len, want);
    CHECK_EQ(failures, kvs_fa_failed());
    kvs_buf_free(&b);
}

KVS_TEST(buf_append)
{
    kvs_failalloc_loop("buf", buf_step, NULL, 4);
}

/* ---- kvs_msg_value_valid: ingestion's check of a `value` record --------------- */

/* Memory running out is never a verdict: a valid Value is 1 or -ENOMEM,
 * never 0 (ingestion would skip the record as malformed, for good). */
typedef struct value_ctx_s {
    uint8_t good[64], bad[64];
    size_t good_len, bad_len;
} value_ctx_t;

static void value_step(void *arg)
{
    value_ctx_t *c = arg;
    kvs_arena_t a;
    kvs_arena_init(&a);
    kvs_fa_on();
    int good = kvs_msg_value_valid(&a, c->good, c->good_len);
    kvs_fa_off();
    if (kvs_fa_failed())
        CHECK(good == -ENOMEM || good == 1);
    else
        CHECK_EQ(good, 1);
    int failed_before = kvs_fa_failed();
    kvs_fa_on();
    int bad = kvs_msg_value_valid(&a, c->bad, c->bad_len);
    kvs_fa_off();
    if (kvs_fa_failed() && !failed_before)
        CHECK(bad == -ENOMEM || bad == 0);
    else
        CHECK_EQ(bad, 0);
    kvs_arena_close(&a);
}

KVS_TEST(value_valid)
{
    value_ctx_t c;
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    static const char text[] = "h\xc3\xa9llo, a value long enough to be copied";
    v.string_value.data = (uint8_t *)text;
    v.string_value.len = sizeof(text) - 1;
    c.good_len = kvs__value__pack(&v, c.good);
    memcpy(c.bad, c.good, c.good_len);
    c.bad[c.good_len] = 0x30; /* field 6, varint: unknown */
    c.bad[c.good_len + 1] = 1;
    c.bad_len = c.good_len + 2;
    kvs_failalloc_loop("value valid", value_step, &c, 1);
}

/* ---- kvs_msg_replaced_keep: a hook's replacement of a write's answer ----------- */

/* Without memory for the position's copy, the replacement says the outcome
 * is unknown and carries no position: never "nothing was written". */
typedef struct keep_ctx_s {
    uint8_t answer[256];
    size_t len;
    size_t pos_len;
} keep_ctx_t;

static void keep_step(void *arg)
{
    keep_ctx_t *c = arg;
    kvs_buf_t pos;
    kvs_buf_init(&pos);
    kvs_fa_on();
    int unknown = kvs_msg_replaced_keep(c->answer, c->len, &pos);
    kvs_fa_off();
    if (kvs_fa_failed()) {
        CHECK_EQ(unknown, 1);
        CHECK_EQ(pos.len, 0);
    } else {
        CHECK_EQ(unknown, 0);
        CHECK_EQ(pos.len, c->pos_len);
    }
    kvs_buf_free(&pos);
}

KVS_TEST(replaced_keep)
{
    static keep_ctx_t c;
    static uint8_t tok[200];
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    memset(tok, 0x11, sizeof(tok));
    m.status = 200;
    m.position.data = tok;
    m.position.len = sizeof(tok);
    c.len = kvs__command_response__pack(&m, c.answer);
    c.pos_len = sizeof(tok);
    kvs_failalloc_loop("replaced keep", keep_step, &c, 1);
}

/* ---- kvs_config: loading a YAML text ----------------------------------------- */

/* Users, bindings, cluster.nodes, tls, plugins and properties: the
 * sections that allocate. */
static const char full_config[] =
    "data_dir: /var/lib/kvs\n"
    "cluster:\n"
    "  shards: 4\n"
    "  partitions: 16\n"
    "  nodes:\n"
    "    - {name: a, address: \"10.0.0.1:9600\", shards: [0, 1, 2, 3]}\n"
    "    - name: b\n"
    "      address: \"[::1]:9601\"\n"
    "      shards: [0, 1]\n"
    "    - &c {name: c, address: \"h3:9602\", shards: [2, 3]}\n"
    "router: {listen: \"127.0.0.1:9527\", timeout: 250ms}\n"
    "node: {listen: 127.0.0.1:9600}\n"
    "storage: {sync: full, map_size: 64MiB}\n"
    "limits: {max_frame: 1MiB, auth_failures: 5}\n"
    "kafka:\n"
    "  brokers: \"k1:9092,k2:9092\"\n"
    "  group_id: grp\n"
    "  bindings:\n"
    "    - {topic: users, table: users, format: string, partitions: 24}\n"
    "    - {topic: raw, table: blobs}\n"
    "    - {topic: vals, table: vals, format: value}\n"
    "  properties: {security.protocol: plaintext, \"fetch.wait.max.ms\": \"50\", "
    "sasl.password: s3cret}\n"
    "tls:\n"
    "  cert: /etc/kvs/node.crt\n"
    "  key: /etc/kvs/node.key\n"
    "  ca: /etc/kvs/ca.crt\n"
    "  router: {enabled: true, client_cert: optional}\n"
    "  link: {enabled: on, verify_host: false}\n"
    "users:\n"
    "  - name: alice\n"
    "    token: \"pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0$"
    "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE\"\n"
    "    allow: {\"orders*\": [read, write], \"*\": read}\n"
    "  - name: kvs-node\n"
    "    allow:\n"
    "      \"*\": [read, write, admin]\n"
    "log: {level: warn, format: json}\n";

typedef struct {
    const char *name;
    const char *text;
    size_t len;
    kvs_config_t *ref;
    int ref_rc;
    char ref_err[512];
    int have_ref;
} config_ctx_t;

static void config_step(void *arg)
{
    config_ctx_t *c = arg;
    kvs_config_t *cfg = (kvs_config_t *)1;
    char err[512] = "";
    kvs_fa_on();
    int rc = kvs_config_parse("config.yaml", c->text, c->len, &cfg, err, sizeof(err));
    kvs_fa_off();
    if (!c->have_ref) {
        CHECK(rc == 0 ? cfg != NULL : cfg == NULL);
        c->ref = cfg;
        c->ref_rc = rc;
        snprintf(c->ref_err, sizeof(c->ref_err), "%s", err);
        c->have_ref = 1;
        return;
    }
    if (rc == -ENOMEM && kvs_fa_failed()) {
        CHECK(cfg == NULL);
        CHECK_CONTAINS(err, "out of memory");
        return;
    }
    if (rc != c->ref_rc || (rc != 0 && strcmp(err, c->ref_err) != 0)) {
        fprintf(stderr, "%s: fail_at=%ld: rc %d \"%s\", reference rc %d \"%s\"\n", c->name,
                kvs_fa_fail_at(), rc, err, c->ref_rc, c->ref_err);
        abort();
    }
    if (rc == 0) {
        char changed[512], fixed[512];
        CHECK(cfg != NULL);
        CHECK_EQ(
            kvs_config_reload_check(c->ref, cfg, changed, sizeof(changed), fixed, sizeof(fixed)),
            0);
        CHECK_STR(changed, "");
        CHECK_STR(fixed, "");
        CHECK(kvs_config_map_eq(c->ref, cfg));
        CHECK_EQ(cfg->n_users, c->ref->n_users);
        CHECK_EQ(cfg->n_bindings, c->ref->n_bindings);
        CHECK_EQ(cfg->n_nodes, c->ref->n_nodes);
        CHECK_EQ(cfg->n_kafka_properties, c->ref->n_kafka_properties);
        kvs_config_free(cfg);
    } else {
        CHECK(cfg == NULL);
    }
}

static void config_loop(const char *name, const char *text, size_t len, long min_allocs)
{
    static config_ctx_t c;
    memset(&c, 0, sizeof(c));
    c.name = name;
    c.text = text;
    c.len = len;
    kvs_failalloc_loop(name, config_step, &c, min_allocs);
    kvs_config_free(c.ref);
}

KVS_TEST(config_parse_full)
{
    config_loop("full config", full_config, sizeof(full_config) - 1, 50);
}

/* The config corpus in two halves (the fuzzer's finds, f-*, and the
 * rest), each a few seconds under ASan. */
static void config_corpus(int finds)
{
    input_t *v;
    size_t n = read_corpus("config", &v);
    for (size_t i = 0; i < n; i++)
        if ((strncmp(v[i].name, "config/f-", 9) == 0) == finds)
            config_loop(v[i].name, (const char *)v[i].data, v[i].len, 0);
    free_corpus(v, n);
}

KVS_TEST(config_parse_corpus)
{
    config_corpus(0);
}

KVS_TEST(config_parse_corpus_finds)
{
    config_corpus(1);
}

KVS_TEST_MAIN(KVS_CASE(msg_decode_request_arena), KVS_CASE(msg_decode_request_malloc),
              KVS_CASE(redis_parse_corpus), KVS_CASE(redis_parse_grow), KVS_CASE(redis_writers),
              KVS_CASE(resp_answers), KVS_CASE(pos_tokens), KVS_CASE(buf_append),
              KVS_CASE(config_parse_full), KVS_CASE(config_parse_corpus),
              KVS_CASE(config_parse_corpus_finds), KVS_CASE(value_valid), KVS_CASE(replaced_keep))
