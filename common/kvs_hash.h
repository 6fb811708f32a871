/*
 * kvs_hash: a fast 128-bit non-cryptographic hash, streamed. The only
 * file that includes xxhash.h (libxxhash, XXH3-128): digests of tables
 * (proving two replicas hold the same data) and checksums of snapshot
 * streams. Not a defence against a malicious peer, which could forge
 * either; a check against corruption and divergence.
 *
 * The digest form is XXH3-128's canonical one: 16 bytes, high half first
 * (XXH128_canonicalFromHash), so it reads the same on every machine and
 * in every tool that implements XXH3.
 */
#ifndef KVS_HASH_H
#define KVS_HASH_H

#include <stddef.h>
#include <stdint.h>

#define KVS_HASH_LEN 16

typedef struct kvs_hash_s kvs_hash_t;

/* A fresh hash state (seed 0), or NULL when out of memory. */
kvs_hash_t *kvs_hash_new(void);

/* Adds p[0..len) to the hashed stream. */
void kvs_hash_update(kvs_hash_t *h, const void *p, size_t len);

/* Adds a length-prefixed field: len as 4 little-endian bytes (it must be
 * below 2^32), then the bytes, so that ("ab","c") and ("a","bc") differ. */
void kvs_hash_field(kvs_hash_t *h, const void *p, size_t len);

/* The canonical digest of what was added so far (the state stays usable). */
void kvs_hash_digest(const kvs_hash_t *h, uint8_t out[KVS_HASH_LEN]);

void kvs_hash_free(kvs_hash_t *h);

/* One-shot: the canonical digest of p[0..len). */
void kvs_hash_once(const void *p, size_t len, uint8_t out[KVS_HASH_LEN]);

/* Lowercase hex of a digest into out (33 bytes with the NUL). */
void kvs_hash_hex(const uint8_t d[KVS_HASH_LEN], char out[2 * KVS_HASH_LEN + 1]);

/* The digest kvs_hash_hex wrote: text[0..len) must be exactly its 32
 * lowercase hex digits. Returns 0 with out[] filled, or -1. */
int kvs_hash_unhex(const char *text, size_t len, uint8_t out[KVS_HASH_LEN]);

#endif
