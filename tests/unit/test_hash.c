/*
 * test_hash: kvs_hash is XXH3-128 in its canonical form, checked against
 * vectors from the reference tool (xxhsum -H2), streamed and one-shot.
 * Also kvs_crypto_sha256 over pieces (FIPS 180-2's "abc" vector).
 */
#include "kvs_crypto.h"
#include "kvs_hash.h"
#include "kvs_test.h"

static void check_hex(const uint8_t d[KVS_HASH_LEN], const char *want)
{
    char hex[2 * KVS_HASH_LEN + 1];
    kvs_hash_hex(d, hex);
    CHECK_STR(hex, want);
}

KVS_TEST(vectors)
{
    uint8_t d[KVS_HASH_LEN];
    kvs_hash_once("", 0, d);
    check_hex(d, "99aa06d3014798d86001c324468d497f"); /* printf '' | xxhsum -H2 */
    kvs_hash_once("kvs", 3, d);
    check_hex(d, "dac306771e63937dd7c4f5fe919d4834");
    kvs_hash_once("abc", 3, d);
    check_hex(d, "06b05ab6733a618578af5f94892f3950");
}

KVS_TEST(streamed_equals_one_shot)
{
    uint8_t a[KVS_HASH_LEN], b[KVS_HASH_LEN];
    static uint8_t big[100000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 31 + 7);
    kvs_hash_t *h = kvs_hash_new();
    CHECK(h != NULL);
    for (size_t off = 0; off < sizeof(big); off += 997)
        kvs_hash_update(h, big + off, off + 997 > sizeof(big) ? sizeof(big) - off : 997);
    kvs_hash_digest(h, a);
    kvs_hash_once(big, sizeof(big), b);
    CHECK(memcmp(a, b, KVS_HASH_LEN) == 0);
    kvs_hash_free(h);
    /* Fields are length-prefixed: ("ab","c") and ("a","bc") differ. */
    kvs_hash_t *x = kvs_hash_new(), *y = kvs_hash_new();
    kvs_hash_field(x, "ab", 2);
    kvs_hash_field(x, "c", 1);
    kvs_hash_field(y, "a", 1);
    kvs_hash_field(y, "bc", 2);
    kvs_hash_digest(x, a);
    kvs_hash_digest(y, b);
    CHECK(memcmp(a, b, KVS_HASH_LEN) != 0);
    kvs_hash_once("\x02\x00\x00\x00"
                  "ab"
                  "\x01\x00\x00\x00"
                  "c",
                  11, b);
    CHECK(memcmp(a, b, KVS_HASH_LEN) == 0);
    kvs_hash_free(x);
    kvs_hash_free(y);
}

KVS_TEST(sha256_of_pieces)
{
    static const uint8_t want[KVS_CRYPTO_SHA256] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                                    0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                                    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                                    0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    uint8_t d[KVS_CRYPTO_SHA256];
    const void *p[] = {"a", NULL, "bc"};
    const size_t n[] = {1, 0, 2};
    CHECK_EQ(kvs_crypto_sha256(p, n, 3, d), 0);
    CHECK(kvs_crypto_equal(d, want, sizeof(d)));
    const void *one[] = {"abd"};
    CHECK_EQ(kvs_crypto_sha256(one, (const size_t[]){3}, 1, d), 0);
    CHECK(!kvs_crypto_equal(d, want, sizeof(d)));
}

/* kvs_hash_unhex takes back exactly what kvs_hash_hex writes. */
KVS_TEST(hex_round_trip)
{
    uint8_t d[KVS_HASH_LEN], back[KVS_HASH_LEN];
    char hex[2 * KVS_HASH_LEN + 1];
    for (int i = 0; i < KVS_HASH_LEN; i++)
        d[i] = (uint8_t)(i * 37 + 5);
    kvs_hash_hex(d, hex);
    CHECK_EQ(kvs_hash_unhex(hex, strlen(hex), back), 0);
    CHECK_EQ(memcmp(d, back, KVS_HASH_LEN), 0);
    CHECK_EQ(kvs_hash_unhex(hex, strlen(hex) - 1, back), -1); /* short */
    hex[3] = 'A';                                             /* kvs writes lowercase */
    CHECK_EQ(kvs_hash_unhex(hex, strlen(hex), back), -1);
    hex[3] = 'g';
    CHECK_EQ(kvs_hash_unhex(hex, strlen(hex), back), -1);
}

KVS_TEST_MAIN(KVS_CASE(hex_round_trip), KVS_CASE(vectors), KVS_CASE(streamed_equals_one_shot),
              KVS_CASE(sha256_of_pieces))
