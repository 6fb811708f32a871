/*
 * Unit tests for kvs_pos: the position token's exact bytes (written out by
 * hand from the encoding in kvs.proto, never produced by kvs_pos itself),
 * canonical-only decoding, merging, and the text form kvs-cli uses.
 */
#include "kvs_err.h"
#include "kvs_pos.h"
#include "kvs_test.h"

#include <errno.h>

/* Encodes the set and checks the bytes. */
static void check_encoded(kvs_pos_set_t *s, const uint8_t *want, size_t n)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    CHECK_EQ(kvs_pos_set_encode(s, &b), 0);
    if (b.len != n || (n > 0 && memcmp(b.data, want, n) != 0)) {
        fprintf(stderr, "got %zu bytes:", b.len);
        for (size_t i = 0; i < b.len; i++)
            fprintf(stderr, " %02x", b.data[i]);
        fprintf(stderr, "\n");
    }
    CHECK_EQ(b.len, n);
    CHECK(n == 0 || memcmp(b.data, want, n) == 0);
    kvs_buf_free(&b);
}

KVS_TEST(encodes_exact_bytes)
{
    kvs_pos_set_t s;
    kvs_pos_set_init(&s);
    /* Added out of order, with a duplicate whose higher offset must win. */
    CHECK_EQ(kvs_pos_set_add(&s, "users", 5, 3, 17), 0);
    CHECK_EQ(kvs_pos_set_add(&s, "ab", 2, 200, 300), 0);
    CHECK_EQ(kvs_pos_set_add(&s, "users", 5, 1, 0), 0);
    CHECK_EQ(kvs_pos_set_add(&s, "users", 5, 3, 5), 0);
    static const uint8_t want[] = {
        0x01,                             /* version */
        0x02, 'a',  'b',  0x01,           /* topic "ab", 1 entry */
        0xc8, 0x01, 0xac, 0x02,           /* partition 200, offset 300 */
        0x05, 'u',  's',  'e',  'r', 's', /* topic "users" */
        0x02,                             /* 2 entries */
        0x01, 0x00,                       /* partition 1, offset 0 */
        0x03, 0x11,                       /* partition 3, offset 17 */
    };
    check_encoded(&s, want, sizeof(want));
    kvs_pos_set_free(&s);
}

KVS_TEST(empty_set_is_empty_token)
{
    kvs_pos_set_t s;
    kvs_pos_set_init(&s);
    check_encoded(&s, NULL, 0);
    CHECK(kvs_pos_valid(NULL, 0));
    CHECK_EQ(kvs_pos_find(NULL, 0, "t", 1, 0), -1);
    kvs_pos_set_free(&s);
}

KVS_TEST(large_offsets_round_trip)
{
    kvs_pos_set_t s;
    kvs_pos_set_init(&s);
    CHECK_EQ(kvs_pos_set_add(&s, "t", 1, 0x7fffffff, INT64_MAX), 0);
    CHECK_EQ(kvs_pos_set_add(&s, "t", 1, 0, 128), 0);
    kvs_buf_t b;
    kvs_buf_init(&b);
    CHECK_EQ(kvs_pos_set_encode(&s, &b), 0);
    CHECK(kvs_pos_valid(b.data, b.len));
    CHECK_EQ(kvs_pos_find(b.data, b.len, "t", 1, 0x7fffffff), INT64_MAX);
    CHECK_EQ(kvs_pos_find(b.data, b.len, "t", 1, 0), 128);
    CHECK_EQ(kvs_pos_find(b.data, b.len, "t", 1, 1), -1);
    CHECK_EQ(kvs_pos_find(b.data, b.len, "u", 1, 0), -1);
    /* 128 is the first offset needing two varint bytes: 0x80 0x01 */
    static const uint8_t head[] = {0x01, 0x01, 't', 0x02, 0x00, 0x80, 0x01};
    CHECK(memcmp(b.data, head, sizeof(head)) == 0);
    kvs_buf_free(&b);
    kvs_pos_set_free(&s);
}

KVS_TEST(rejects_bad_entries)
{
    kvs_pos_set_t s;
    kvs_pos_set_init(&s);
    char long_topic[KVS_POS_TOPIC_MAX + 1];
    memset(long_topic, 'x', sizeof(long_topic));
    CHECK_EQ(kvs_pos_set_add(&s, "", 0, 0, 0), KVS_EINVAL);
    CHECK_EQ(kvs_pos_set_add(&s, long_topic, sizeof(long_topic), 0, 0), KVS_EINVAL);
    CHECK_EQ(kvs_pos_set_add(&s, "t", 1, 0x80000000u, 0), KVS_EINVAL);
    CHECK_EQ(kvs_pos_set_add(&s, "t", 1, 0, -1), KVS_EINVAL);
    CHECK_EQ(s.n, 0);
    kvs_pos_set_free(&s);
}

/* Each token here breaks exactly one rule; none may decode. */
KVS_TEST(decodes_only_canonical_tokens)
{
    static const struct {
        const char *why;
        uint8_t b[16];
        size_t n;
    } bad[] = {
        {"version byte alone", {0x01}, 1},
        {"unknown version", {0x02, 0x01, 't', 0x01, 0x00, 0x00}, 6},
        {"empty topic", {0x01, 0x00, 0x01, 0x00, 0x00}, 5},
        {"zero entries", {0x01, 0x01, 't', 0x00}, 4},
        {"truncated entry", {0x01, 0x01, 't', 0x01, 0x00}, 5},
        {"topic past the end", {0x01, 0x05, 't'}, 3},
        {"partitions not increasing", {0x01, 0x01, 't', 0x02, 0x01, 0x00, 0x01, 0x00}, 8},
        {"partitions decreasing", {0x01, 0x01, 't', 0x02, 0x02, 0x00, 0x01, 0x00}, 8},
        {"topics not increasing",
         {0x01, 0x01, 'u', 0x01, 0x00, 0x00, 0x01, 't', 0x01, 0x00, 0x00},
         11},
        {"same topic twice", {0x01, 0x01, 't', 0x01, 0x00, 0x00, 0x01, 't', 0x01, 0x01, 0x00}, 11},
        {"partition 2^31", {0x01, 0x01, 't', 0x01, 0x80, 0x80, 0x80, 0x80, 0x08, 0x00}, 10},
        {"offset 2^63",
         {0x01, 0x01, 't', 0x01, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
         15},
        {"unterminated varint", {0x01, 0x01, 't', 0x01, 0x00, 0x80}, 6},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (kvs_pos_valid(bad[i].b, bad[i].n))
            fprintf(stderr, "accepted: %s\n", bad[i].why);
        CHECK(!kvs_pos_valid(bad[i].b, bad[i].n));
        char text[64];
        CHECK_EQ(kvs_pos_format(bad[i].b, bad[i].n, text, sizeof(text)), KVS_EPROTO);
        kvs_pos_set_t s;
        kvs_pos_set_init(&s);
        CHECK_EQ(kvs_pos_set_add_token(&s, bad[i].b, bad[i].n), KVS_EPROTO);
        kvs_pos_set_free(&s);
    }
    /* a topic name Kafka cannot have (a terminal escape) is not text to print */
    static const uint8_t esc[] = {0x01, 0x03, 0x1b, '[', 'm', 0x01, 0x00, 0x00};
    char shown[64] = "untouched";
    CHECK_EQ(kvs_pos_format(esc, sizeof(esc), shown, sizeof(shown)), KVS_EPROTO);
    CHECK(strchr(shown, 0x1b) == NULL);
    CHECK(kvs_pos_topic_chars_ok("a.b-c_D9", 8));
    CHECK(!kvs_pos_topic_chars_ok(".", 1) && !kvs_pos_topic_chars_ok("..", 2));
    CHECK(!kvs_pos_topic_chars_ok("a b", 3) && !kvs_pos_topic_chars_ok("a:b", 3));
    /* a shorter topic sorts first on a common prefix: "t" < "tt" */
    static const uint8_t ok[] = {0x01, 0x01, 't', 0x01, 0x00, 0x00,
                                 0x02, 't',  't', 0x01, 0x00, 0x00};
    CHECK(kvs_pos_valid(ok, sizeof(ok)));
}

KVS_TEST(merging_tokens_keeps_the_highest)
{
    kvs_pos_set_t a, m;
    kvs_buf_t ta, tb, out;
    kvs_pos_set_init(&a);
    kvs_pos_set_init(&m);
    kvs_buf_init(&ta);
    kvs_buf_init(&tb);
    kvs_buf_init(&out);
    CHECK_EQ(kvs_pos_set_add(&a, "t", 1, 0, 10), 0);
    CHECK_EQ(kvs_pos_set_add(&a, "t", 1, 1, 3), 0);
    CHECK_EQ(kvs_pos_set_encode(&a, &ta), 0);
    kvs_pos_set_clear(&a);
    CHECK_EQ(kvs_pos_set_add(&a, "t", 1, 0, 4), 0);
    CHECK_EQ(kvs_pos_set_add(&a, "t", 1, 2, 9), 0);
    CHECK_EQ(kvs_pos_set_add(&a, "s", 1, 7, 1), 0);
    CHECK_EQ(kvs_pos_set_encode(&a, &tb), 0);
    CHECK_EQ(kvs_pos_set_add_token(&m, ta.data, ta.len), 0);
    CHECK_EQ(kvs_pos_set_add_token(&m, tb.data, tb.len), 0);
    CHECK_EQ(kvs_pos_set_encode(&m, &out), 0);
    char text[128];
    CHECK_EQ(kvs_pos_format(out.data, out.len, text, sizeof(text)), 0);
    CHECK_STR(text, "s:7:1,t:0:10,t:1:3,t:2:9");
    kvs_buf_free(&ta);
    kvs_buf_free(&tb);
    kvs_buf_free(&out);
    kvs_pos_set_free(&a);
    kvs_pos_set_free(&m);
}

KVS_TEST(text_form_round_trip)
{
    kvs_pos_set_t s;
    kvs_buf_t b;
    char err[128], text[128];
    kvs_pos_set_init(&s);
    kvs_buf_init(&b);
    const char *in = "users:3:17,users:1:0,a.b-c_d:0:9223372036854775807";
    CHECK_EQ(kvs_pos_set_parse(&s, in, err, sizeof(err)), 0);
    CHECK_EQ(kvs_pos_set_encode(&s, &b), 0);
    CHECK_EQ(kvs_pos_format(b.data, b.len, text, sizeof(text)), 0);
    CHECK_STR(text, "a.b-c_d:0:9223372036854775807,users:1:0,users:3:17");
    /* cut short: whole entries only, then "..." */
    CHECK_EQ(kvs_pos_format(b.data, b.len, text, 40), 0);
    CHECK_STR(text, "a.b-c_d:0:9223372036854775807...");
    kvs_buf_free(&b);
    kvs_pos_set_free(&s);
}

KVS_TEST(text_form_errors)
{
    static const char *bad[] = {
        "",           "users",      "users:3",         ":3:4",           "users:x:4",
        "users:3:-1", "users:3:4,", "users:3:4;x:1:2", "u:2147483648:0", "u:1:9223372036854775808",
        "u:1:2:3",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvs_pos_set_t s;
        char err[128] = "";
        kvs_pos_set_init(&s);
        int rc = kvs_pos_set_parse(&s, bad[i], err, sizeof(err));
        if (rc == 0)
            fprintf(stderr, "accepted \"%s\"\n", bad[i]);
        CHECK_EQ(rc, KVS_EINVAL);
        CHECK(err[0] != '\0');
        kvs_pos_set_free(&s);
    }
}

KVS_TEST(many_entries_encode_in_order)
{
    /* 5000 entries added in reverse: sorting is n log n, and the result
     * walks back in increasing order. */
    kvs_pos_set_t s;
    kvs_buf_t b;
    kvs_pos_set_init(&s);
    kvs_buf_init(&b);
    for (uint32_t p = 5000; p-- > 0;)
        CHECK_EQ(kvs_pos_set_add(&s, "t", 1, p, (int64_t)p * 3), 0);
    CHECK_EQ(kvs_pos_set_encode(&s, &b), 0);
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    CHECK_EQ(kvs_pos_iter_init(&it, b.data, b.len), 0);
    for (uint32_t p = 0; p < 5000; p++) {
        CHECK_EQ(kvs_pos_iter_next(&it, &e), 1);
        CHECK_EQ(e.partition, p);
        CHECK_EQ(e.offset, (int64_t)p * 3);
    }
    CHECK_EQ(kvs_pos_iter_next(&it, &e), 0);
    kvs_buf_free(&b);
    kvs_pos_set_free(&s);
}

KVS_TEST(encoding_reserves_what_it_writes)
{
    /* A set as large as a client may send (a token of 4 MiB holds about a
     * million entries) is encoded into about its own size, not into the
     * worst case of every entry with a topic of its own (289 bytes each). */
    kvs_pos_set_t s;
    kvs_buf_t b;
    kvs_pos_set_init(&s);
    kvs_buf_init(&b);
    for (uint32_t p = 0; p < 100000; p++)
        CHECK_EQ(kvs_pos_set_add(&s, "t", 1, p, 1), 0);
    CHECK_EQ(kvs_pos_set_encode(&s, &b), 0);
    CHECK(b.len < 500000);
    CHECK(b.cap <= 2 * b.len);
    CHECK(kvs_pos_valid(b.data, b.len));
    kvs_buf_free(&b);
    kvs_pos_set_free(&s);
}

KVS_TEST(adding_one_topic_keeps_only_its_partitions_in_range)
{
    /* A client's token: other topics, and partitions no topic of 4 has. */
    kvs_pos_set_t in, s;
    kvs_buf_t tok, out;
    kvs_pos_set_init(&in);
    kvs_pos_set_init(&s);
    kvs_buf_init(&tok);
    kvs_buf_init(&out);
    for (uint32_t p = 0; p < 50000; p++) {
        CHECK_EQ(kvs_pos_set_add(&in, "users", 5, p, 7), 0);
        CHECK_EQ(kvs_pos_set_add(&in, "a", 1, p, 1), 0);
        CHECK_EQ(kvs_pos_set_add(&in, "zz", 2, p, 1), 0);
    }
    CHECK_EQ(kvs_pos_set_encode(&in, &tok), 0);
    CHECK_EQ(kvs_pos_set_add(&s, "users", 5, 2, 9), 0); /* higher than the token's: kept */
    CHECK_EQ(kvs_pos_set_add_topic(&s, tok.data, tok.len, "users", 5, 4), 0);
    CHECK_EQ(s.n, 5);
    CHECK_EQ(kvs_pos_set_encode(&s, &out), 0);
    static const uint8_t want[] = {1, 5, 'u', 's', 'e', 'r', 's', 4, 0, 7, 1, 7, 2, 9, 3, 7};
    CHECK_EQ(out.len, sizeof(want));
    CHECK(memcmp(out.data, want, sizeof(want)) == 0);
    /* a malformed token is refused */
    kvs_pos_set_clear(&s);
    CHECK_EQ(kvs_pos_set_add_topic(&s, tok.data, tok.len - 1, "users", 5, 4), KVS_EPROTO);
    kvs_buf_free(&tok);
    kvs_buf_free(&out);
    kvs_pos_set_free(&in);
    kvs_pos_set_free(&s);
}

KVS_TEST(encode_one_matches_a_set)
{
    uint8_t one[KVS_POS_ONE_MAX];
    char topic[KVS_POS_TOPIC_MAX];
    memset(topic, 'q', sizeof(topic));
    /* the largest one fits KVS_POS_ONE_MAX and decodes */
    size_t n = kvs_pos_encode_one(one, topic, sizeof(topic), 0x7fffffff, INT64_MAX);
    CHECK(n > 0 && n <= KVS_POS_ONE_MAX);
    CHECK(kvs_pos_valid(one, n));
    CHECK_EQ(kvs_pos_find(one, n, topic, sizeof(topic), 0x7fffffff), INT64_MAX);
    /* the same bytes a set encodes */
    kvs_pos_set_t s;
    kvs_pos_set_init(&s);
    CHECK_EQ(kvs_pos_set_add(&s, "users", 5, 3, 17), 0);
    n = kvs_pos_encode_one(one, "users", 5, 3, 17);
    check_encoded(&s, one, n);
    kvs_pos_set_free(&s);
    CHECK_EQ(kvs_pos_encode_one(one, "", 0, 0, 0), 0);
    CHECK_EQ(kvs_pos_encode_one(one, "t", 1, 0, -1), 0);
}

KVS_TEST_MAIN(KVS_CASE(encodes_exact_bytes), KVS_CASE(encode_one_matches_a_set),
              KVS_CASE(empty_set_is_empty_token), KVS_CASE(large_offsets_round_trip),
              KVS_CASE(rejects_bad_entries), KVS_CASE(decodes_only_canonical_tokens),
              KVS_CASE(merging_tokens_keeps_the_highest), KVS_CASE(text_form_round_trip),
              KVS_CASE(text_form_errors), KVS_CASE(many_entries_encode_in_order),
              KVS_CASE(encoding_reserves_what_it_writes),
              KVS_CASE(adding_one_topic_keeps_only_its_partitions_in_range))
