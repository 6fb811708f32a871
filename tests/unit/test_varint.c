/*
 * Unit tests for kvs_varint: protobuf's varint bytes, written out by hand
 * from the encoding's definition, and the limits its reader shares with
 * protobuf-c's decoder.
 */
#include "kvs_err.h"
#include "kvs_test.h"
#include "kvs_varint.h"

#include <string.h>

KVS_TEST(encodes_exact_bytes)
{
    static const struct {
        uint64_t v;
        uint8_t bytes[KVS_VARINT_MAX];
        size_t n;
    } cases[] = {
        {0, {0x00}, 1},
        {1, {0x01}, 1},
        {127, {0x7f}, 1},
        {128, {0x80, 0x01}, 2},
        {300, {0xac, 0x02}, 2},
        {16383, {0xff, 0x7f}, 2},
        {16384, {0x80, 0x80, 0x01}, 3},
        {UINT32_MAX, {0xff, 0xff, 0xff, 0xff, 0x0f}, 5},
        {UINT64_MAX, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 10},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t out[KVS_VARINT_MAX + 1];
        memset(out, 0xee, sizeof(out));
        CHECK_EQ(kvs_varint_len(cases[i].v), cases[i].n);
        CHECK_EQ(kvs_varint_put(out, cases[i].v), cases[i].n);
        CHECK(memcmp(out, cases[i].bytes, cases[i].n) == 0);
        CHECK_EQ(out[cases[i].n], 0xee); /* nothing written past it */
        const uint8_t *p = cases[i].bytes;
        uint64_t v = 42;
        CHECK_EQ(kvs_varint_get(&p, cases[i].bytes + cases[i].n, &v), 0);
        CHECK_EQ(v, cases[i].v);
        CHECK(p == cases[i].bytes + cases[i].n);
    }
}

KVS_TEST(reads_one_varint_and_stops)
{
    static const uint8_t two[] = {0xac, 0x02, 0x05};
    const uint8_t *p = two;
    uint64_t v;
    CHECK_EQ(kvs_varint_get(&p, two + sizeof(two), &v), 0);
    CHECK_EQ(v, 300);
    CHECK_EQ(kvs_varint_get(&p, two + sizeof(two), &v), 0);
    CHECK_EQ(v, 5);
    CHECK(p == two + sizeof(two));
    CHECK_EQ(kvs_varint_get(&p, two + sizeof(two), &v), KVS_EPROTO); /* nothing left */
}

KVS_TEST(refuses_cut_short_and_too_long)
{
    static const uint8_t cut[] = {0x80, 0x80};
    const uint8_t *p = cut;
    uint64_t v = 7;
    CHECK_EQ(kvs_varint_get(&p, cut + sizeof(cut), &v), KVS_EPROTO);
    CHECK_EQ(v, 7); /* untouched on error */
    /* Eleven bytes: protobuf-c refuses it, so does the reader. */
    static const uint8_t eleven[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                     0x80, 0x80, 0x80, 0x80, 0x01};
    p = eleven;
    CHECK_EQ(kvs_varint_get(&p, eleven + sizeof(eleven), &v), KVS_EPROTO);
    /* Ten bytes with bits past 64: refused, as Go's protowire does
     * (protobuf-c reads a bool of them as true, C++ as false). */
    static const uint8_t high[] = {0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f};
    p = high;
    CHECK_EQ(kvs_varint_get(&p, high + sizeof(high), &v), KVS_EPROTO);
    CHECK_EQ(v, 7);
    /* Ten bytes ending in 1 (bit 63): the largest varint. */
    static const uint8_t top[] = {0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    p = top;
    CHECK_EQ(kvs_varint_get(&p, top + sizeof(top), &v), 0);
    CHECK_EQ(v, 0x8000000000000001ull);
    CHECK(p == top + sizeof(top));
}

KVS_TEST_MAIN(KVS_CASE(encodes_exact_bytes), KVS_CASE(reads_one_varint_and_stops),
              KVS_CASE(refuses_cut_short_and_too_long))
