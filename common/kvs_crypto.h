/*
 * kvs_crypto: the few primitives of OpenSSL's libcrypto kvs uses outside
 * TLS (tokens, kvs_token and kvs_auth; node_writes): random bytes,
 * PBKDF2-HMAC-SHA256, HMAC-SHA256, SHA-256 and a constant-time
 * comparison. The only file besides kvs_tls that includes OpenSSL's
 * headers. Every function is thread-safe.
 */
#ifndef KVS_CRYPTO_H
#define KVS_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define KVS_CRYPTO_SHA256 32 /* bytes of a SHA-256 digest */

/* Fills p[0..n) from the system's CSPRNG. Returns 0 or KVS_EINVAL. */
int kvs_crypto_random(void *p, size_t n);

/* PBKDF2-HMAC-SHA256 of pw[0..pwlen) with salt and `iterations` rounds:
 * 32 bytes into out. Returns 0 or KVS_EINVAL. Costs `iterations` HMACs:
 * never call it on an event loop's thread. */
int kvs_crypto_pbkdf2(const void *pw, size_t pwlen, const uint8_t *salt, size_t saltlen,
                      uint32_t iterations, uint8_t out[KVS_CRYPTO_SHA256]);

/* HMAC-SHA256 of msg under key: 32 bytes into out. Returns 0 or KVS_EINVAL. */
int kvs_crypto_hmac(const void *key, size_t klen, const void *msg, size_t mlen,
                    uint8_t out[KVS_CRYPTO_SHA256]);

/* SHA-256 of the concatenation of the n pieces p[i][0..len[i]) (a NULL
 * piece must have length 0): 32 bytes into out. Returns 0 or KVS_EINVAL. */
int kvs_crypto_sha256(const void *const *p, const size_t *len, size_t n,
                      uint8_t out[KVS_CRYPTO_SHA256]);

/* 1 when a[0..n) equals b[0..n), in time that depends only on n. */
int kvs_crypto_equal(const void *a, const void *b, size_t n);

#endif
