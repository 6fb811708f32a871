/*
 * kvs_token: the stored form of tokens, and PBKDF2 over kvs_crypto.
 *
 * Base64 here is the RFC 4648 alphabet without padding; the decoder
 * refuses anything else (a stray character, a length no encoder makes,
 * non-zero bits left over), so every accepted text has exactly one
 * meaning.
 */
#include "kvs_token.h"
#include "kvs_crypto.h"
#include "kvs_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_encode(const uint8_t *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = B64[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = B64[v & 63];
    }
    out[o] = '\0';
    return o;
}

long kvs_token_b64_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *c = s[i] != '\0' ? strchr(B64, s[i]) : NULL;
        if (c == NULL)
            return -1;
        acc = acc << 6 | (uint32_t)(c - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return acc == 0 ? (long)o : -1; /* leftover bits must be zero */
}

int kvs_token_parse(const char *text, kvs_token_hash_t *out, const char **why)
{
    const char *p = text, *d1, *d2, *d3;
    size_t slen = strlen(KVS_TOKEN_SCHEME);
    memset(out, 0, sizeof(*out));
    *why = "not a token hash: expected pbkdf2-sha256$ITERATIONS$SALT$HASH (make one with kvs-cli "
           "hash-token)";
    if (strncmp(p, KVS_TOKEN_SCHEME, slen) != 0 || p[slen] != '$')
        return KVS_EINVAL;
    d1 = p + slen;
    d2 = strchr(d1 + 1, '$');
    d3 = d2 ? strchr(d2 + 1, '$') : NULL;
    if (d3 == NULL || strchr(d3 + 1, '$') != NULL)
        return KVS_EINVAL;
    char *end;
    unsigned long long it = strtoull(d1 + 1, &end, 10);
    if (end != d2 || d1[1] < '0' || d1[1] > '9' || it < KVS_TOKEN_MIN_ITERATIONS ||
        it > KVS_TOKEN_MAX_ITERATIONS) {
        *why = "the iteration count must be a number from 1000 to 100000000";
        return KVS_EINVAL;
    }
    long s = kvs_token_b64_decode(d2 + 1, (size_t)(d3 - d2 - 1), out->salt, sizeof(out->salt));
    if (s < 8) {
        *why = "the salt must be 8 to 64 bytes in base64 (RFC 4648, no padding)";
        return KVS_EINVAL;
    }
    uint8_t h[KVS_TOKEN_HASH + 1];
    if (kvs_token_b64_decode(d3 + 1, strlen(d3 + 1), h, sizeof(h)) != KVS_TOKEN_HASH) {
        *why = "the hash must be 32 bytes in base64 (RFC 4648, no padding)";
        return KVS_EINVAL;
    }
    memcpy(out->hash, h, KVS_TOKEN_HASH);
    out->iterations = (uint32_t)it;
    out->salt_len = (size_t)s;
    return 0;
}

int kvs_token_format(const kvs_token_hash_t *h, char *buf, size_t len)
{
    char salt[KVS_TOKEN_MAX_SALT * 4 / 3 + 4], hash[KVS_TOKEN_HASH * 4 / 3 + 4];
    b64_encode(h->salt, h->salt_len, salt);
    b64_encode(h->hash, KVS_TOKEN_HASH, hash);
    int n = snprintf(buf, len, "%s$%u$%s$%s", KVS_TOKEN_SCHEME, h->iterations, salt, hash);
    return n < 0 || (size_t)n >= len ? KVS_EINVAL : 0;
}

int kvs_token_make(const void *token, size_t len, uint32_t iterations, kvs_token_hash_t *out)
{
    memset(out, 0, sizeof(*out));
    if (len == 0 || len > KVS_TOKEN_MAX || iterations < KVS_TOKEN_MIN_ITERATIONS ||
        iterations > KVS_TOKEN_MAX_ITERATIONS)
        return KVS_EINVAL;
    out->iterations = iterations;
    out->salt_len = KVS_TOKEN_SALT;
    int rc = kvs_crypto_random(out->salt, out->salt_len);
    if (rc == 0)
        rc = kvs_crypto_pbkdf2(token, len, out->salt, out->salt_len, iterations, out->hash);
    return rc;
}

int kvs_token_check(const kvs_token_hash_t *h, const void *token, size_t len)
{
    uint8_t got[KVS_TOKEN_HASH];
    if (len > KVS_TOKEN_MAX)
        return 0;
    int rc = kvs_crypto_pbkdf2(token, len, h->salt, h->salt_len, h->iterations, got);
    if (rc != 0)
        return rc;
    return kvs_crypto_equal(got, h->hash, KVS_TOKEN_HASH);
}
