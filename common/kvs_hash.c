/*
 * kvs_hash: XXH3-128 from libxxhash (Debian's libxxhash-dev), the one
 * wrapper around xxhash.h. The state is libxxhash's own (allocated: its
 * size is not part of the stable API).
 */
#include "kvs_hash.h"

#include <assert.h>
#include <xxhash.h>

kvs_hash_t *kvs_hash_new(void)
{
    XXH3_state_t *st = XXH3_createState();
    if (st == NULL)
        return NULL;
    XXH3_128bits_reset(st);
    return (kvs_hash_t *)st; /* the state is the handle */
}

void kvs_hash_update(kvs_hash_t *h, const void *p, size_t len)
{
    if (len > 0)
        XXH3_128bits_update((XXH3_state_t *)h, p, len);
}

void kvs_hash_field(kvs_hash_t *h, const void *p, size_t len)
{
    assert(len <= UINT32_MAX);
    uint8_t n[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24)};
    kvs_hash_update(h, n, sizeof(n));
    kvs_hash_update(h, p, len);
}

void kvs_hash_digest(const kvs_hash_t *h, uint8_t out[KVS_HASH_LEN])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest((const XXH3_state_t *)h));
    for (int i = 0; i < KVS_HASH_LEN; i++)
        out[i] = c.digest[i];
}

void kvs_hash_free(kvs_hash_t *h)
{
    if (h != NULL)
        XXH3_freeState((XXH3_state_t *)h);
}

void kvs_hash_once(const void *p, size_t len, uint8_t out[KVS_HASH_LEN])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(p, len));
    for (int i = 0; i < KVS_HASH_LEN; i++)
        out[i] = c.digest[i];
}

void kvs_hash_hex(const uint8_t d[KVS_HASH_LEN], char out[2 * KVS_HASH_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < KVS_HASH_LEN; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[2 * KVS_HASH_LEN] = '\0';
}

static int hex_digit(char ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

int kvs_hash_unhex(const char *text, size_t len, uint8_t out[KVS_HASH_LEN])
{
    if (len != 2 * KVS_HASH_LEN)
        return -1;
    for (size_t i = 0; i < KVS_HASH_LEN; i++) {
        int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
