/*
 * kvs_reads: the read commands (Hget Hexist Hmget Hmexist Hgetall Hscan
 * Hlen) answered from a read snapshot of one shard. One implementation for
 * every process that answers them: the worker (node_cmd, over its store)
 * and a router reading a local shard's environment (router_local), so
 * answers are the same bytes whoever gives them: statuses, messages,
 * values as stored, Hscan cursors (kvs_schema), 413s.
 *
 * The snapshot is a source (kvs_reads_src_t): three functions the caller
 * provides over whatever transaction it holds. Stored values are encoded
 * kvs.Values, copied into the answer (kvs_resp) without being decoded.
 *
 * No answer is larger than max_frame: a walk stops where the next pair
 * would not fit, a value stored under a larger max_frame becomes this
 * request's 413 naming its key, and kvs_reads_finish compares every answer
 * with the limit once more before its frame is closed.
 */
#ifndef KVS_READS_H
#define KVS_READS_H

#include "kvs_lmdb.h"
#include "kvs_msg.h"
#include "kvs_resp.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_SCAN_DEFAULT 100 /* Hscan.count 0 */
#define KVS_SCAN_MAX 10000   /* larger counts are cut to this */

/* A read snapshot of one shard. Each function returns 0, KVS_ENOTFOUND
 * (get: no such key or table) or another negative error (a storage error:
 * the answer being built is abandoned and the error returned). A table
 * that does not exist walks nothing and counts 0. Slices stay valid until
 * the next call. */
typedef struct kvs_reads_src_s {
    int (*get)(void *arg, const char *table, const void *key, size_t klen, kvs_slice_t *val);
    int (*scan)(void *arg, const char *table, const void *from, size_t flen, kvs_lmdb_scan_cb cb,
                void *cb_arg);
    int (*count)(void *arg, const char *table, uint64_t *n);
    void *arg;
    size_t max_frame; /* limits.max_frame: no answer may be larger */
} kvs_reads_src_t;

/* Whether kvs_reads answers `cmd`. */
int kvs_reads_is_read(Kvs__CommandRequest__CommandCase cmd);

/* Builds the answer to a decoded, validated read request in `r` (begun by
 * the caller; finish it with kvs_reads_finish). Returns 0 (answered: 200,
 * 404 or 413), KVS_EINVAL (not a read command; nothing written), or the
 * source's error (then abort `r`: what it holds is partial). */
int kvs_reads_execute(const kvs_reads_src_t *src, const Kvs__CommandRequest *req, kvs_resp_t *r);

/* Appends a stored value (its encoded bytes; len 0: none) to `values`, or,
 * when r->value_lengths (CommandRequest.value_lengths), the length of its
 * text as an integer_value: bytes of a string or binary value, decimal
 * digits of a number (a float as Redis prints it), 1 for a bool. Every
 * answer holding stored values uses this, on workers and in the router. */
void kvs_reads_stored(kvs_resp_t *r, const void *enc, size_t len);

/* The most bytes of an encoded Value kvs_reads_stored appends for a
 * stored value of `len` encoded bytes (0: none): `len`, or with
 * `value_lengths` at most KVS_READS_LENGTH_MAX (the integer_value of a
 * length is never larger than the Value it measures). */
#define KVS_READS_LENGTH_MAX 11 /* an integer_value: its tag and a 10-byte varint */
/* With KVS_VALUES_PRESENCE every stored value is priced alike, its
 * integer_value 0 (tag and one byte), however long it is, and a write's
 * bound prices every key it names so, there or not: no bound, and no 413
 * it makes, tells anything of what is stored, nor whether it is. */
#define KVS_READS_PRESENCE_SIZE 2
size_t kvs_reads_stored_bound(int value_lengths, size_t len);

/* The bound of a write's answer (kvs_msg_answer_bound) holding n previous
 * values, the kvs_reads_stored_bound of each (stored now, or for a key
 * repeated in the request an earlier pair's new value) adding up to at
 * most `bytes`. With `value_lengths` each previous value is a length or
 * nothing, so the bound is never more than n lengths' whatever `bytes`
 * is: a write that answers lengths is never refused for the size of
 * values it does not show. Workers check their answers against it before
 * they write; the router plans split writes' budgets with it. */
size_t kvs_reads_write_bound(int value_lengths, size_t n, size_t bytes);

/* What kvs_reads_stored appends with value_lengths (`mode`,
 * KVS_VALUES_LENGTHS or KVS_VALUES_PRESENCE) for the stored value
 * enc[0..len): the encoded integer_value of its length (0 for
 * KVS_VALUES_PRESENCE), written to `buf` (16 bytes),
 * or enc itself (empty, or a Value without a kind). Sets *out to it and
 * returns its length (at most KVS_READS_LENGTH_MAX when *out is buf).
 * For whoever keeps a previous value until its answer is built: with
 * value_lengths it keeps this, not the value. */
size_t kvs_reads_stored_length(int mode, const void *enc, size_t len, uint8_t buf[16],
                               const void **out);

/* Hget or Hexist of key[0..klen) in `table` (NUL-terminated), from a
 * request's wire bytes (kvs_msg_peek): the same answer as
 * kvs_reads_execute gives the decoded request. Same returns. */
int kvs_reads_key(const kvs_reads_src_t *src, Kvs__CommandRequest__CommandCase cmd,
                  const char *table, const void *key, size_t klen, kvs_resp_t *r);

/* Every answer's last step: an answer past max_frame (a value stored under
 * a larger limit, an Info listing many partitions, ...) becomes this
 * request's 413 with a hint for `cmd`; then the frame is closed. Returns
 * kvs_resp_end's result. */
int kvs_reads_finish(kvs_resp_t *r, size_t max_frame, Kvs__CommandRequest__CommandCase cmd);

/* Replaces what `r` holds with 413: "<cmd> answer would exceed
 * limits.max_frame (N bytes); <hint>". */
void kvs_reads_too_large(kvs_resp_t *r, size_t max_frame, const char *cmd, const char *hint);

/* Replaces what `r` holds with 413 for one value that no answer can hold
 * under max_frame (it was stored under a larger one): `need` is the answer's
 * payload size; `write` says the request was a write, which then wrote
 * nothing. */
void kvs_reads_value_too_large(kvs_resp_t *r, size_t max_frame, const char *cmd,
                               const ProtobufCBinaryData *key, size_t need, int write);

/* Its message alone, into out[0..cap) (a write that answers later, such
 * as a log-first one, refuses with it before it starts). */
void kvs_reads_value_too_large_text(char *out, size_t cap, size_t max_frame, const char *cmd,
                                    const ProtobufCBinaryData *key, size_t need, int write);

#endif
