/*
 * kvs_token: how users' tokens are stored in config.yaml, as salted,
 * deliberately slow hashes (never the token itself):
 *
 *   pbkdf2-sha256$<iterations>$<salt>$<hash>
 *
 * salt and hash in base64 (RFC 4648 alphabet, no padding); the hash is
 * PBKDF2-HMAC-SHA256(token, salt, iterations), 32 bytes. `kvs-cli
 * hash-token` makes one. Parsing is pure (the config loader checks the
 * format); making and checking run PBKDF2, which takes a good fraction of a
 * second at the default cost: never on an event loop's thread.
 */
#ifndef KVS_TOKEN_H
#define KVS_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#define KVS_TOKEN_SCHEME "pbkdf2-sha256"
#define KVS_TOKEN_ITERATIONS 600000u /* default: OWASP's 2023 figure for PBKDF2-HMAC-SHA256 */
#define KVS_TOKEN_MIN_ITERATIONS 1000u
#define KVS_TOKEN_MAX_ITERATIONS 100000000u
#define KVS_TOKEN_SALT 16u     /* bytes of salt kvs_token_make draws */
#define KVS_TOKEN_MAX_SALT 64u /* longest salt accepted */
#define KVS_TOKEN_HASH 32u
#define KVS_TOKEN_TEXT 200u /* room for any formatted hash, with its NUL */
#define KVS_TOKEN_MAX 1024u /* longest token accepted */

typedef struct kvs_token_hash_s {
    uint32_t iterations;
    uint8_t salt[KVS_TOKEN_MAX_SALT];
    size_t salt_len;
    uint8_t hash[KVS_TOKEN_HASH];
} kvs_token_hash_t;

/* Parses the text form. Returns 0, or KVS_EINVAL with a reason in *why
 * (a static string) naming what is wrong. */
int kvs_token_parse(const char *text, kvs_token_hash_t *out, const char **why);

/* Decodes base64 s[0..n) (RFC 4648's alphabet, without padding; leftover
 * bits must be zero) into out, which has room for cap bytes. Returns the
 * byte count, or -1. */
long kvs_token_b64_decode(const char *s, size_t n, uint8_t *out, size_t cap);

/* Writes the text form into buf[0..len) (KVS_TOKEN_TEXT is enough).
 * Returns 0 or KVS_EINVAL when it does not fit. */
int kvs_token_format(const kvs_token_hash_t *h, char *buf, size_t len);

/* Hashes token[0..len) with a fresh random salt and `iterations`. Returns
 * 0, or KVS_EINVAL (iterations out of range, token empty or too long, no
 * randomness). */
int kvs_token_make(const void *token, size_t len, uint32_t iterations, kvs_token_hash_t *out);

/* 1 when token[0..len) hashes to h (compared in constant time), 0 when
 * not, or KVS_EINVAL. */
int kvs_token_check(const kvs_token_hash_t *h, const void *token, size_t len);

#endif
