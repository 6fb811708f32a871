/*
 * Unit tests for kvs_reads: the read commands over a snapshot, here an
 * in-memory source (a sorted list of pairs of one table) that can be told
 * to fail, so what the module does with a source's answers and errors is
 * seen alone. Answers over a real store are covered through node_cmd
 * (test_cmd) and, from a router, by the integration tests.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_reads.h"
#include "kvs_test.h"

#define TABLE "t"

typedef struct fake_s {
    const char *keys[8];
    const char *vals[8]; /* strings, stored as encoded Values (enc) */
    uint8_t enc[8][800];
    size_t enc_len[8];
    size_t n;
    int fail_after; /* calls that succeed before every call fails (-1: never) */
    int calls;
} fake_t;

static int fake_fail(fake_t *f)
{
    return f->fail_after >= 0 && f->calls++ >= f->fail_after;
}

static int fake_get(void *arg, const char *table, const void *key, size_t klen, kvs_slice_t *val)
{
    fake_t *f = arg;
    if (fake_fail(f))
        return KVS_ESTORE;
    for (size_t i = 0; strcmp(table, TABLE) == 0 && i < f->n; i++)
        if (strlen(f->keys[i]) == klen && memcmp(f->keys[i], key, klen) == 0) {
            val->p = f->enc[i];
            val->len = f->enc_len[i];
            return 0;
        }
    return KVS_ENOTFOUND;
}

static int fake_scan(void *arg, const char *table, const void *from, size_t flen,
                     kvs_lmdb_scan_cb cb, void *cb_arg)
{
    fake_t *f = arg;
    if (fake_fail(f))
        return KVS_ESTORE;
    for (size_t i = 0; strcmp(table, TABLE) == 0 && i < f->n; i++) {
        size_t kl = strlen(f->keys[i]), m = kl < flen ? kl : flen;
        int c = flen > 0 ? memcmp(f->keys[i], from, m) : 0; /* from may be NULL when empty */
        if (flen > 0 && (c < 0 || (c == 0 && kl < flen)))
            continue; /* before `from` */
        kvs_slice_t k = {(const uint8_t *)f->keys[i], kl};
        kvs_slice_t v = {f->enc[i], f->enc_len[i]};
        if (cb(cb_arg, k, v) != 0)
            break;
    }
    return 0;
}

static int fake_count(void *arg, const char *table, uint64_t *n)
{
    fake_t *f = arg;
    *n = strcmp(table, TABLE) == 0 ? f->n : 0;
    return fake_fail(f) ? KVS_ESTORE : 0;
}

static char big[400];
static fake_t fake = {{"a", "b", "c", "d", "e"}, {"1", "22", big, big, big}, {{0}}, {0}, 5, -1, 0};
static kvs_arena_t arena;
static kvs_buf_t out;

static kvs_reads_src_t src(size_t max_frame)
{
    memset(big, 'x', sizeof(big) - 1);
    for (size_t i = 0; i < fake.n; i++)
        fake.enc_len[i] =
            kvs_value_encode_bytes(fake.enc[i], 1, fake.vals[i], strlen(fake.vals[i]));
    return (kvs_reads_src_t){fake_get, fake_scan, fake_count, &fake, max_frame};
}

/* Runs `req` and decodes the one frame answered; NULL when the source's
 * error came back instead (*rc says which). */
static Kvs__CommandResponse *run(const Kvs__CommandRequest *req, size_t max_frame, int *rc)
{
    kvs_reads_src_t s = src(max_frame);
    kvs_resp_t r;
    out.len = 0;
    kvs_resp_begin(&r, &out);
    *rc = kvs_reads_execute(&s, req, &r);
    if (*rc != 0) {
        kvs_resp_abort(&r);
        CHECK_EQ(out.len, 0);
        return NULL;
    }
    CHECK_EQ(kvs_reads_finish(&r, max_frame, req->command_case), 0);
    CHECK(out.len - KVS_FRAME_HEADER <= max_frame);
    return kvs__command_response__unpack(&arena.pb, out.len - KVS_FRAME_HEADER,
                                         out.data + KVS_FRAME_HEADER);
}

KVS_TEST(point_reads)
{
    int rc;
    kvs_arena_init(&arena);
    Kvs__Hget g = KVS__HGET__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGET;
    q.hget = &g;
    g.table = TABLE;
    g.key = (ProtobufCBinaryData){1, (uint8_t *)"b"};
    Kvs__CommandResponse *a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->status, 200);
    CHECK_EQ(a->n_values, 1); /* the stored bytes, as a Value field */
    CHECK_EQ(a->values[0]->string_value.len, 2);
    CHECK(memcmp(a->values[0]->string_value.data, "22", 2) == 0);
    g.key = (ProtobufCBinaryData){2, (uint8_t *)"zz"};
    a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->status, 404);
    CHECK_STR(a->message, "key \"zz\" not found in table \"t\"");
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HEXIST; /* Hexist shares Hget's shape */
    a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->status, 200);
    CHECK(a->values[0]->kind_case == KVS__VALUE__KIND_BOOL_VALUE && !a->values[0]->bool_value);
    kvs_arena_close(&arena);
}

/* An Hscan of TABLE, `count` pairs a page, from the start. */
static void hscan_of_table(Kvs__CommandRequest *q, Kvs__Hscan *m, uint32_t count)
{
    kvs__hscan__init(m);
    kvs__command_request__init(q);
    q->command_case = KVS__COMMAND_REQUEST__COMMAND_HSCAN;
    q->hscan = m;
    m->table = TABLE;
    m->count = count;
}

KVS_TEST(hscan_pages_continue_at_the_cursor)
{
    int rc;
    kvs_arena_init(&arena);
    Kvs__Hscan m;
    Kvs__CommandRequest q;
    hscan_of_table(&q, &m, 3);
    Kvs__CommandResponse *a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->n_pairs, 3);
    CHECK_EQ(a->cursor.len, 1);
    CHECK_EQ(a->cursor.data[0], 'd'); /* the first key not returned */
    m.cursor = a->cursor;
    a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->n_pairs, 2);
    CHECK_EQ(a->pairs[0]->key.data[0], 'd');
    CHECK_EQ(a->cursor.len, 0); /* done */
    kvs_arena_close(&arena);
}

/* An asker's answer_budget bounds the page as its own frame, but never
 * below the least max_frame (1 KiB): a budget under the room a page
 * keeps for its cursor (1024 bytes) wrapped around, and the page took
 * every pair of the count whatever its size (here all five, ~1,220
 * bytes, for a budget of 700: a hostile client's 10,000 large values). */
KVS_TEST(an_hscan_answer_budget_below_the_least_frame_bounds_the_page)
{
    int rc;
    kvs_arena_init(&arena);
    Kvs__Hscan m;
    Kvs__CommandRequest q;
    hscan_of_table(&q, &m, 5);
    static const uint32_t budgets[] = {1, 700, 1024};
    for (size_t i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++) {
        m.answer_budget = budgets[i];
        Kvs__CommandResponse *a = run(&q, 1 << 20, &rc);
        CHECK_EQ(a->status, 200);
        CHECK_EQ(a->n_pairs, 1); /* the least page: one pair */
        CHECK_EQ(a->cursor.len, 1);
    }
    m.answer_budget = 0; /* none: the worker's own frame */
    CHECK_EQ(run(&q, 1 << 20, &rc)->n_pairs, 5);
    kvs_arena_close(&arena);
}

KVS_TEST(answers_past_max_frame_are_413)
{
    int rc;
    kvs_arena_init(&arena);
    Kvs__Hgetall m = KVS__HGETALL__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    q.hgetall = &m;
    m.table = TABLE;
    Kvs__CommandResponse *a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->n_pairs, 5);
    a = run(&q, 1024, &rc); /* the pairs take about 1,220 bytes */
    CHECK_EQ(a->status, 413);
    CHECK_CONTAINS(a->message, "Hgetall answer would exceed limits.max_frame (1024 bytes)");
    CHECK_CONTAINS(a->message, "Hscan");
    /* An Info too large says what it lists (thirteen numbers per
     * partition: kvs.proto) and the limit that would hold it. */
    kvs_resp_t r;
    out.len = 0;
    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 200);
    kvs_resp_pair(&r, "k", 1, big, sizeof(big) - 1);
    CHECK_EQ(kvs_reads_finish(&r, 100, KVS__COMMAND_REQUEST__COMMAND_INFO), 0);
    a = kvs__command_response__unpack(&arena.pb, out.len - KVS_FRAME_HEADER,
                                      out.data + KVS_FRAME_HEADER);
    CHECK(a != NULL);
    CHECK_EQ(a->status, 413);
    CHECK_CONTAINS(a->message, "it lists thirteen numbers per Kafka partition this shard owns");
    CHECK_CONTAINS(a->message, "raise limits.max_frame to at least");
    kvs_arena_close(&arena);
}

KVS_TEST(keys_only_answers_keys_without_their_values)
{
    int rc;
    kvs_arena_init(&arena);
    Kvs__Hgetall m = KVS__HGETALL__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    q.hgetall = &m;
    m.table = TABLE;
    m.keys_only = 1;
    Kvs__CommandResponse *a = run(&q, 1024, &rc); /* whole pairs would not fit */
    CHECK_EQ(a->status, 200);
    CHECK_EQ(a->n_pairs, 5);
    for (size_t i = 0; i < a->n_pairs; i++) {
        CHECK(a->pairs[i]->value == NULL);
        CHECK_EQ(a->pairs[i]->key.len, strlen(fake.keys[i]));
        CHECK(memcmp(a->pairs[i]->key.data, fake.keys[i], a->pairs[i]->key.len) == 0);
    }
    kvs_arena_close(&arena);
}

/* kvs_reads_stored's answer for one stored value: its integer_value, or
 * -1 for an empty Value. */
static int64_t stored_length(const uint8_t *enc, size_t len)
{
    kvs_resp_t r;
    out.len = 0;
    kvs_resp_begin(&r, &out);
    r.value_lengths = 1;
    kvs_resp_status(&r, 200);
    kvs_reads_stored(&r, enc, len);
    CHECK_EQ(kvs_resp_end(&r), 0);
    Kvs__CommandResponse *a = kvs__command_response__unpack(&arena.pb, out.len - KVS_FRAME_HEADER,
                                                            out.data + KVS_FRAME_HEADER);
    CHECK(a != NULL && a->n_values == 1);
    if (a->values[0]->kind_case == KVS__VALUE__KIND__NOT_SET)
        return -1;
    CHECK_EQ(a->values[0]->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
    return a->values[0]->integer_value;
}

KVS_TEST(value_lengths_answer_each_stored_value_by_the_length_of_its_text)
{
    int rc;
    uint8_t enc[64];
    kvs_arena_init(&arena);
    CHECK_EQ(stored_length(enc, kvs_value_encode_bytes(enc, 1, "h\xc3\xa9llo", 6)), 6);
    CHECK_EQ(stored_length(enc, kvs_value_encode_bytes(enc, 0, "\0\1", 2)), 2);
    CHECK_EQ(stored_length(enc, kvs_value_encode_bytes(enc, 1, "", 0)), 0);
    CHECK_EQ(stored_length(enc, kvs_value_encode_int(enc, -1234)), 5);
    CHECK_EQ(stored_length(enc, kvs_value_encode_float(enc, 0.1)), 3); /* "0.1", as HGET shows */
    CHECK_EQ(stored_length(enc, kvs_value_encode_bool(enc, 1)), 1);
    CHECK_EQ(stored_length(NULL, 0), -1); /* absent */
    /* Through Hget and Hmget: the fake's values are strings. */
    Kvs__Hmget m = KVS__HMGET__INIT;
    ProtobufCBinaryData keys[2] = {{1, (uint8_t *)"b"}, {1, (uint8_t *)"z"}};
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    q.hmget = &m;
    q.value_lengths = 1;
    m.table = TABLE;
    m.keys = keys;
    m.n_keys = 2;
    Kvs__CommandResponse *a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->n_values, 2);
    CHECK_EQ(a->values[0]->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
    CHECK_EQ((size_t)a->values[0]->integer_value, strlen(fake.vals[1]));
    CHECK_EQ(a->values[1]->kind_case, KVS__VALUE__KIND__NOT_SET);
    kvs_arena_close(&arena);
}

/* A write's answer with value_lengths holds lengths (or nothing), never
 * the values: what kvs_reads_stored appends is bounded by
 * kvs_reads_stored_bound, and so is the answer of n keys by
 * kvs_reads_write_bound, whatever the stored values' size. A Value stored
 * from a Kafka record may hold several members; the last one counts. */
KVS_TEST(value_lengths_bound_what_a_write_answers)
{
    uint8_t enc[64], big[4000];
    kvs_arena_init(&arena);
    memset(big, 'x', sizeof(big));
    CHECK_EQ(kvs_reads_stored_bound(0, 4003), 4003);
    CHECK_EQ(kvs_reads_stored_bound(1, 4003), KVS_READS_LENGTH_MAX);
    CHECK_EQ(kvs_reads_stored_bound(1, 2), 2);
    CHECK_EQ(kvs_reads_stored_bound(1, 0), 0); /* absent: an empty Value */
    CHECK_EQ(kvs_reads_write_bound(0, 3, 12000), kvs_msg_answer_bound(3, 12000));
    CHECK_EQ(kvs_reads_write_bound(1, 3, 12000), kvs_msg_answer_bound(3, 3 * KVS_READS_LENGTH_MAX));
    CHECK_EQ(kvs_reads_write_bound(1, 3, 6), kvs_msg_answer_bound(3, 6));
    /* Each answered Value within its bound, the largest length too. */
    kvs_buf_t big_enc;
    kvs_buf_init(&big_enc);
    CHECK_EQ(kvs_buf_reserve(&big_enc, sizeof(big) + 16), 0);
    size_t n = kvs_value_encode_bytes(big_enc.data, 0, big, sizeof(big));
    kvs_resp_t r;
    out.len = 0;
    kvs_resp_begin(&r, &out);
    r.value_lengths = 1;
    kvs_resp_status(&r, 200);
    size_t before = kvs_resp_size(&r);
    kvs_reads_stored(&r, big_enc.data, n);
    CHECK(kvs_resp_size(&r) - before <= kvs_reads_stored_bound(1, n) + 8);
    kvs_resp_abort(&r);
    /* What a waiting write keeps instead of the value (node_ingest's
     * claim): the length, in the caller's buffer; an absent value as is. */
    uint8_t lbuf[16];
    const void *kept = NULL;
    size_t kn = kvs_reads_stored_length(KVS_VALUES_LENGTHS, big_enc.data, n, lbuf, &kept);
    CHECK(kept == lbuf && kn <= KVS_READS_LENGTH_MAX);
    CHECK_EQ(kn, kvs_value_encode_int(enc, (int64_t)sizeof(big)));
    CHECK(memcmp(lbuf, enc, kn) == 0);
    CHECK_EQ(kvs_reads_stored_length(KVS_VALUES_LENGTHS, big_enc.data, 0, lbuf, &kept), 0);
    CHECK(kept == big_enc.data);
    /* presence_only: a value that was there is a length of 0; none is none. */
    kn = kvs_reads_stored_length(KVS_VALUES_PRESENCE, big_enc.data, n, lbuf, &kept);
    CHECK(kept == lbuf);
    CHECK_EQ(kn, kvs_value_encode_int(enc, 0));
    CHECK(memcmp(lbuf, enc, kn) == 0);
    CHECK_EQ(kvs_reads_stored_length(KVS_VALUES_PRESENCE, big_enc.data, 0, lbuf, &kept), 0);
    /* ... and priced alike whatever it holds: no bound tells a length. */
    CHECK_EQ(kvs_reads_stored_bound(KVS_VALUES_PRESENCE, 3), KVS_READS_PRESENCE_SIZE);
    CHECK_EQ(kvs_reads_stored_bound(KVS_VALUES_PRESENCE, n), KVS_READS_PRESENCE_SIZE);
    CHECK_EQ(kvs_reads_stored_bound(KVS_VALUES_PRESENCE, 0), 0);
    CHECK_EQ(kvs_reads_write_bound(KVS_VALUES_PRESENCE, 3, 12000),
             kvs_msg_answer_bound(3, 3 * KVS_READS_PRESENCE_SIZE));
    CHECK_EQ(KVS_READS_PRESENCE_SIZE, kvs_value_encode_int(enc, 0));
    out.len = 0;
    kvs_resp_begin(&r, &out);
    r.value_lengths = KVS_VALUES_PRESENCE;
    kvs_resp_status(&r, 200);
    before = kvs_resp_size(&r);
    kvs_reads_stored(&r, big_enc.data, n);
    CHECK_EQ(kvs_resp_size(&r) - before, 2 + kvs_value_encode_int(enc, 0)); /* tag, length */
    kvs_resp_abort(&r);
    size_t m = kvs_value_encode_int(enc, INT64_MIN); /* 11 bytes: the largest integer_value */
    CHECK_EQ(m, KVS_READS_LENGTH_MAX);
    CHECK_EQ(stored_length(enc, m), 20);
    /* Two members one after another (text, then a number): the number. */
    m = kvs_value_encode_bytes(enc, 1, "abcdefghijklmnop", 16);
    m += kvs_value_encode_int(enc + m, 123);
    CHECK_EQ(stored_length(enc, m), 3);
    m = kvs_value_encode_int(enc, 123);
    m += kvs_value_encode_bytes(enc + m, 1, "abcdefghijklmnop", 16);
    CHECK_EQ(stored_length(enc, m), 16);
    kvs_buf_free(&big_enc);
    kvs_arena_close(&arena);
}

/* protobuf-c reads a bool_value of wire type 1, 2 or 5 too (ingestion
 * stores a Kafka record's payload that decodes as it came): its length is
 * a bool's, 1, never the bytes it takes, alone or after other members. */
KVS_TEST(value_lengths_read_a_bool_of_any_wire_type)
{
    uint8_t enc[600];
    kvs_value_peek_t v;
    kvs_arena_init(&arena);
    enc[0] = 5 << 3 | 2;
    enc[1] = 0x80 | (500 & 0x7f);
    enc[2] = 500 >> 7;
    memset(enc + 3, 't', 500);
    CHECK_EQ(stored_length(enc, 503), 1);
    uint8_t lbuf[16];
    const void *kept = NULL;
    CHECK(kvs_reads_stored_length(KVS_VALUES_LENGTHS, enc, 503, lbuf, &kept) <=
          KVS_READS_LENGTH_MAX);
    CHECK(kept == lbuf);
    /* As protobuf-c reads each: any byte read with a low bit set is true. */
    static const uint8_t f64[] = {5 << 3 | 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    static const uint8_t f32[] = {5 << 3 | 5, 0, 0, 1, 0};
    static const uint8_t empty[] = {5 << 3 | 2, 0};
    static const uint8_t zeros[] = {5 << 3 | 2, 2, 0, 0};
    static const uint8_t tail[] = {5 << 3 | 2, 2, 0};
    static const uint8_t groupish[] = {5 << 3 | 3, 5 << 3 | 4};
    const struct {
        const uint8_t *p;
        size_t n;
        int ok, b;
    } cases[] = {{f64, sizeof(f64), 1, 0},     {f32, sizeof(f32), 1, 1},
                 {empty, sizeof(empty), 1, 0}, {zeros, sizeof(zeros), 1, 1},
                 {tail, sizeof(tail), 0, 0},   {groupish, sizeof(groupish), 0, 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Kvs__Value *d = kvs__value__unpack(NULL, cases[i].n, cases[i].p);
        CHECK_EQ(d != NULL, cases[i].ok);
        CHECK_EQ(kvs_msg_value_peek(cases[i].p, cases[i].n, &v), cases[i].ok);
        if (d != NULL) {
            CHECK_EQ(v.kind, KVS__VALUE__KIND_BOOL_VALUE);
            CHECK_EQ(d->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
            CHECK_EQ(v.boolean, d->bool_value);
            CHECK_EQ(v.boolean, cases[i].b);
            kvs__value__free_unpacked(d, NULL);
        }
    }
    /* After a text, a 32-bit bool is the member read; before a number, not. */
    size_t m = kvs_value_encode_bytes(enc, 1, "abcdefghijklmnop", 16);
    memcpy(enc + m, f32, sizeof(f32));
    CHECK_EQ(stored_length(enc, m + sizeof(f32)), 1);
    memcpy(enc, f32, sizeof(f32));
    m = sizeof(f32) + kvs_value_encode_int(enc + sizeof(f32), 123456);
    CHECK_EQ(stored_length(enc, m), 6);
    kvs_arena_close(&arena);
}

KVS_TEST(a_source_error_is_returned_with_nothing_answered)
{
    int rc;
    kvs_arena_init(&arena);
    ProtobufCBinaryData keys[3] = {{1, (uint8_t *)"a"}, {1, (uint8_t *)"b"}, {1, (uint8_t *)"c"}};
    Kvs__Hmget m = KVS__HMGET__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    q.hmget = &m;
    m.table = TABLE;
    m.keys = keys;
    m.n_keys = 3;
    fake.fail_after = 2; /* the third key's lookup fails */
    CHECK(run(&q, 1 << 20, &rc) == NULL);
    CHECK_EQ(rc, KVS_ESTORE);
    fake.fail_after = -1;
    Kvs__CommandResponse *a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->n_values, 3);
    Kvs__Hlen l = KVS__HLEN__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HLEN;
    q.hlen = &l;
    l.table = TABLE;
    a = run(&q, 1 << 20, &rc);
    CHECK_EQ(a->values[0]->integer_value, 5);
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_PING; /* not a read */
    CHECK(run(&q, 1 << 20, &rc) == NULL);
    CHECK_EQ(rc, KVS_EINVAL);
    kvs_arena_close(&arena);
}

KVS_TEST_MAIN(KVS_CASE(point_reads), KVS_CASE(hscan_pages_continue_at_the_cursor),
              KVS_CASE(an_hscan_answer_budget_below_the_least_frame_bounds_the_page),
              KVS_CASE(answers_past_max_frame_are_413),
              KVS_CASE(keys_only_answers_keys_without_their_values),
              KVS_CASE(value_lengths_answer_each_stored_value_by_the_length_of_its_text),
              KVS_CASE(value_lengths_bound_what_a_write_answers),
              KVS_CASE(value_lengths_read_a_bool_of_any_wire_type),
              KVS_CASE(a_source_error_is_returned_with_nothing_answered))
