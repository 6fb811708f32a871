/*
 * kvs_resp: writes a CommandResponse frame directly in protobuf wire format.
 *
 * Stored values are kept as encoded kvs.Value bytes, and an encoded
 * repeated-message field is just tag + length + those bytes, so a response
 * can be assembled from storage without decoding or re-encoding anything.
 * The result is byte-for-byte a valid CommandResponse (fields in ascending
 * number order, as protobuf encoders emit them) that any protobuf runtime
 * parses.
 *
 * Usage: begin, then fields in this order: status, message, values, pairs,
 * cursor, position, ops (protobuf allows any order; keeping one makes output
 * canonical),
 * then end. Memory errors are sticky and reported by end.
 */
#ifndef KVS_RESP_H
#define KVS_RESP_H

#include "kvs_buf.h"

#include <stddef.h>
#include <stdint.h>

typedef struct kvs_resp_s {
    kvs_buf_t *out;
    size_t start; /* offset of the frame header in out */
    int err;
    int value_lengths; /* KVS_VALUES_*: stored values whole, as lengths or as presence
                        * (kvs_reads_stored); begin clears */
} kvs_resp_t;

/* Starts a frame at the end of `out` (reserves the header). */
void kvs_resp_begin(kvs_resp_t *r, kvs_buf_t *out);

void kvs_resp_status(kvs_resp_t *r, uint32_t status);

/* A printf-style message (truncated at 1 KiB). */
void kvs_resp_message(kvs_resp_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message as the n strings of parts, one after another (truncated at
 * 1 KiB): kvs_resp_message without formatting, for answers that are sent
 * often (a read of a missing key). */
void kvs_resp_message_parts(kvs_resp_t *r, const char *const *parts, size_t n);

/* One element of `values`: `enc` is an encoded kvs.Value (len 0 = empty
 * Value, meaning "no value"). */
void kvs_resp_value(kvs_resp_t *r, const void *enc, size_t len);

/* One element of `values` holding Value{bool_value: b}. */
void kvs_resp_bool(kvs_resp_t *r, int b);

/* One element of `pairs`: key bytes and an encoded kvs.Value. */
void kvs_resp_pair(kvs_resp_t *r, const void *key, size_t klen, const void *enc, size_t len);

/* One element of `pairs` with a key and no value (Hgetall keys_only). */
void kvs_resp_key(kvs_resp_t *r, const void *key, size_t klen);

void kvs_resp_cursor(kvs_resp_t *r, const void *cur, size_t len);

/* CommandResponse.position: a position token (kvs_pos); nothing when len
 * is 0. */
void kvs_resp_position(kvs_resp_t *r, const void *tok, size_t len);

/* `ops` (field 7): `packed` is an encoded kvs.OpsAnswer. */
void kvs_resp_ops(kvs_resp_t *r, const void *packed, size_t len);

/* `cluster_map` (field 9): a worker's map digest, in its Ping answer. */
void kvs_resp_cluster_map(kvs_resp_t *r, const void *digest, size_t len);

/* CommandResponse.outcome_unknown (field 8): an error answer to a write
 * that may or may not have happened. */
void kvs_resp_outcome_unknown(kvs_resp_t *r);

/* Payload bytes written so far (without the header). */
size_t kvs_resp_size(const kvs_resp_t *r);

/* Finishes the frame (writes the header). Returns 0, or -ENOMEM (the partial
 * frame is removed from `out`). */
int kvs_resp_end(kvs_resp_t *r);

/* Removes the partial frame from `out`, e.g. to write an error instead. */
void kvs_resp_abort(kvs_resp_t *r);

/* Helpers for building encoded kvs.Value bytes (for tools and tests).
 * Each writes into buf (at least 16 bytes for scalars: an int64 takes up to
 * 11) and returns the length; for string/binary the caller's buffer must
 * hold len + 11. */
size_t kvs_value_encode_int(uint8_t *buf, int64_t v);
size_t kvs_value_encode_float(uint8_t *buf, double v);
size_t kvs_value_encode_bool(uint8_t *buf, int v);
size_t kvs_value_encode_bytes(uint8_t *buf, int is_string, const void *p, size_t len);

#endif
