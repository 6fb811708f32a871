/*
 * node_cmd: the nine hash commands plus Hscan and Ping, on one shard.
 *
 * Values are stored as encoded kvs.Value bytes, so reads copy stored bytes
 * straight into the response (kvs_resp) without decoding them. Writes that
 * return the previous value copy it into the response *before* writing,
 * because LMDB may reuse the page the old value lived on.
 *
 * Multi-key writes reserve room for all their keys first, so the whole
 * command lands in one LMDB txn: a crash shows all of it or none of it.
 *
 * Tables bound to a Kafka topic are not written here: their writes go to
 * node_writes (log-first, through the topic), and their reads pass
 * node_reads (the freshness rules) first, which lets them through to the
 * handlers here, answers 503, or makes them wait (ungated on their return).
 *
 * Every error a user can cause becomes a status and a message; storage
 * errors map to 507 (full, limit) or 500 (anything else).
 *
 * No answer is larger than limits.max_frame: a larger frame would break
 * the connection it goes on, and the router's link to this worker carries
 * every client's requests for the shard. Writes check before they write
 * (an Hset/Hdel's previous value once copied in, an Hmset/Hmdel's bound of
 * its previous values, against max_frame or the part's answer_budget), so
 * a 413 always means nothing was written. Every answer then passes one
 * last size comparison before its frame is closed (finish): a read of a
 * value stored under a larger max_frame, an Info of many partitions, or
 * anything else that outgrew the limit becomes that request's 413, with a
 * message saying what to do. An Hscan or Hgetall that meets a pair too
 * large to be answered names its key.
 *
 * With users configured (ctx->who), each request is authorized after it
 * was validated and before it touches storage; Auth goes to the server's
 * hook, which may answer later.
 */
#include "node_cmd.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_freshreq.h"
#include "kvs_log.h"
#include "kvs_place.h"
#include "kvs_reads.h"
#include "kvs_redis.h"
#include "kvs_resp.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

typedef int (*cmd_fn)(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r);

/* Replaces a partial response with an error for a storage failure. */
static void store_error(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *table, int err)
{
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    switch (err) {
    case KVS_EFULL:
        kvs_resp_status(r, KVS_STATUS_NO_SPACE);
        kvs_resp_message(r, "storage is full; nothing from this request was stored (free disk "
                            "space on the data directory)");
        break;
    case KVS_ELIMIT: {
        uint32_t emptied = node_store_tables_emptied(ctx->store);
        kvs_resp_status(r, KVS_STATUS_NO_SPACE);
        if (emptied > 0)
            kvs_resp_message(r,
                             "cannot create table \"%s\": this shard already holds "
                             "storage.max_tables (%u) tables, %u of them emptied and dropped once "
                             "the digest or snapshot reading the shard ends (try again then), or "
                             "raise the limit in config.yaml",
                             table, ctx->max_tables, emptied);
        else
            kvs_resp_message(r,
                             "cannot create table \"%s\": this shard already holds "
                             "storage.max_tables (%u) tables; raise the limit in config.yaml",
                             table, ctx->max_tables);
        break;
    }
    default:
        kvs_resp_status(r, KVS_STATUS_INTERNAL);
        kvs_resp_message(r, "storage error (%s); nothing from this request was stored",
                         kvs_strerror(err));
        break;
    }
}

/* Appends the stored value of `key` (or an empty Value) to `values`.
 * Returns 1 if found, 0 if not, or a negative error. */
static int append_stored(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *table,
                         const ProtobufCBinaryData *key)
{
    node_slice_t v;
    int rc = node_store_get(ctx->store, table, key->data, key->len, &v);
    if (rc == KVS_ENOTFOUND) {
        kvs_resp_value(r, NULL, 0);
        return 0;
    }
    if (rc != 0)
        return rc;
    kvs_reads_stored(r, v.p, v.len);
    return 1;
}

/* The response grew past max_frame: replace it with 413 (kvs_reads). */
static int too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *cmd, const char *hint)
{
    kvs_reads_too_large(r, ctx->max_frame, cmd, hint);
    return 0;
}

/* Encodes a request Value for storage into arena memory. Exact for every
 * kind: the C binding holds string_value with its length (a NUL inside
 * survives; see proto/kvs_c.cmake). */
static int encode_value(node_cmd_ctx_t *ctx, const Kvs__Value *v, node_slice_t *out)
{
    size_t n = kvs__value__get_packed_size(v);
    uint8_t *p = kvs_arena_alloc(&ctx->arena, n ? n : 1);
    if (p == NULL)
        return -ENOMEM;
    kvs__value__pack(v, p);
    out->p = p;
    out->len = n;
    return 0;
}

/* Every stored pair must be readable back: an Hget, Hscan or Hgetall answer
 * holding it (plus a cursor of up to a key) has to fit in max_frame. */
static int pair_fits(const node_cmd_ctx_t *ctx, size_t klen, size_t vlen)
{
    return klen + vlen <= kvs_msg_pair_max(ctx->max_frame);
}

static int pair_too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const ProtobufCBinaryData *key,
                          size_t vlen)
{
    if (pair_fits(ctx, key->len, vlen))
        return 0;
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r, KVS_MSG_PAIR_TOO_LARGE,
                     KVS_MSG_PAIR_TOO_LARGE_ARGS(ctx->max_frame, key->len, vlen));
    return 1;
}

/* An Hset's or Hdel's answer, holding the previous value, must fit before
 * the write happens: a previous value stored under a larger max_frame
 * makes it 413 and nothing is written; so does an answer that could not
 * be built (r->err: kvs_resp_end reports it). Returns 1 if it did. */
static int previous_too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *cmd,
                              const ProtobufCBinaryData *key)
{
    if (r->err != 0)
        return 1; /* no memory for the answer: nothing is written, the answer says why */
    size_t need = kvs_resp_size(r);
    if (need <= ctx->max_frame)
        return 0;
    kvs_reads_value_too_large(r, ctx->max_frame, cmd, key, need, 1);
    return 1;
}

/* ---- single-key --------------------------------------------------------- */

static int cmd_hset(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hset *m = req->hset;
    const ProtobufCBinaryData *key = &m->pair->key;
    node_slice_t enc;
    int rc = encode_value(ctx, m->pair->value, &enc);
    if (rc != 0)
        return rc;
    if (pair_too_large(ctx, r, key, enc.len))
        return 0;
    kvs_resp_status(r, KVS_STATUS_OK);
    rc = append_stored(ctx, r, m->table, key);
    if (rc < 0 || previous_too_large(ctx, r, "Hset", key) || (rc == 1 && m->if_absent))
        return rc < 0 ? rc : 0; /* present and if_absent: the previous value says so */
    return node_store_put(ctx->store, m->table, key->data, key->len, enc.p, enc.len);
}

/* ---- read-modify-write ---------------------------------------------------- */

/* How Hincr adds (Kvs__Hincr.by): int64, double, or Redis's long double. */
enum { BY_INT, BY_FLOAT, BY_DECIMAL };

/* The number a stored Value holds for Hincr, read as Redis reads the text
 * it shows for it (HGET): integer_value; float_value (as a float, or as an
 * integer when its text is a whole number: 5.0 shows as "5"); bool_value
 * as 0 or 1; or text (string_value, or binary_value's bytes, which HGET
 * shows as they are) that reads as a number with Redis's rules (string2ll
 * for HINCRBY, string2ld for HINCRBYFLOAT: "inf" is a number, then too
 * large to add to). BY_DECIMAL reads a float_value's text too, as the
 * long double Redis would read from it. Returns 0, or a 400 message. */
static const char *stored_number(node_cmd_ctx_t *ctx, const node_slice_t *v, int by, int64_t *i,
                                 double *d, long double *ld, int *nomem)
{
    Kvs__Value *val;
    char num[KVS_REDIS_DOUBLE_MAX];
    kvs_redis_arg_t text;
    int rc = kvs_msg_decode_value(&ctx->arena, v->p, v->len, &val);
    if (rc == -ENOMEM) { /* no verdict on the value: the request fails with 500 */
        *nomem = 1;
        return NULL;
    }
    if (rc != 0)
        return "the stored value cannot be read";
    const char *not = by != BY_INT ? "hash value is not a float" : "hash value is not an integer";
    switch (val->kind_case) {
    case KVS__VALUE__KIND_INTEGER_VALUE:
        *i = val->integer_value;
        *d = (double)val->integer_value;
        *ld = (long double)val->integer_value;
        return NULL;
    case KVS__VALUE__KIND_FLOAT_VALUE:
        *d = val->float_value;
        if (by == BY_FLOAT)
            return isnan(*d) ? not : NULL;
        text.p = (const uint8_t *)num;
        text.len = kvs_redis_format_double(num, val->float_value);
        if (by == BY_DECIMAL)
            return kvs_redis_arg_ldouble(&text, ld) == 0 ? NULL : not ;
        return kvs_redis_arg_int(&text, i) == 0 ? NULL : not ;
    case KVS__VALUE__KIND_BOOL_VALUE:
        *i = val->bool_value ? 1 : 0;
        *d = (double)*i;
        *ld = (long double)*i;
        return NULL;
    case KVS__VALUE__KIND_STRING_VALUE:
    case KVS__VALUE__KIND_BINARY_VALUE: /* HGET shows its bytes: Redis reads them */
        if (val->kind_case == KVS__VALUE__KIND_STRING_VALUE)
            text.p = val->string_value.data, text.len = val->string_value.len;
        else
            text.p = val->binary_value.data, text.len = val->binary_value.len;
        if (by == BY_DECIMAL)
            return kvs_redis_arg_ldouble(&text, ld) == 0 ? NULL : not ;
        if (by == BY_FLOAT)
            return kvs_redis_arg_double(&text, d) == 0 ? NULL : not ;
        return kvs_redis_arg_int(&text, i) == 0 ? NULL : not ;
    default:
        return not ;
    }
}

/* Hincr's new value, encoded into enc (KVS_REDIS_LDOUBLE_MAX + 16 bytes),
 * or a 400 message: the stored number (i, d or ld, as `by` read it) plus
 * the increment. BY_DECIMAL is Redis's HINCRBYFLOAT: long doubles, the
 * sum stored as the text Redis stores. */
static const char *hincr_sum(const Kvs__Hincr *m, int by, int64_t i, double d, long double ld,
                             uint8_t *enc, size_t *n)
{
    if (by == BY_INT) {
        if ((m->by_int > 0 && i > INT64_MAX - m->by_int) ||
            (m->by_int < 0 && i < INT64_MIN - m->by_int))
            return "increment or decrement would overflow";
        *n = kvs_value_encode_int(enc, i + m->by_int);
        return NULL;
    }
    if (by == BY_FLOAT) {
        if (!isfinite(d + m->by_float))
            return "increment would produce NaN or Infinity";
        *n = kvs_value_encode_float(enc, d + m->by_float);
        return NULL;
    }
    long double by_ld;
    kvs_redis_arg_t text = {(const uint8_t *)m->by_decimal, strlen(m->by_decimal)};
    if (kvs_redis_arg_ldouble(&text, &by_ld) != 0)
        return "value is not a valid float";
    if (isinf(by_ld))
        return "value is NaN or Infinity";
    if (!isfinite(ld + by_ld))
        return "increment would produce NaN or Infinity";
    char sum[KVS_REDIS_LDOUBLE_MAX];
    size_t len = kvs_redis_format_ldouble(sum, ld + by_ld);
    *n = kvs_value_encode_bytes(enc, 1, sum, len);
    return NULL;
}

/* Hincr: the stored number plus the increment, written in the same batch
 * as the read, so nothing can come between them (one writer per shard). */
static int cmd_hincr(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hincr *m = req->hincr;
    int by = m->by_case == KVS__HINCR__BY_BY_INT     ? BY_INT
             : m->by_case == KVS__HINCR__BY_BY_FLOAT ? BY_FLOAT
                                                     : BY_DECIMAL;
    int64_t i = 0;
    double d = 0;
    long double ld = 0;
    node_slice_t v;
    int rc = node_store_get(ctx->store, m->table, m->key.data, m->key.len, &v);
    if (rc != 0 && rc != KVS_ENOTFOUND)
        return rc;
    int nomem = 0;
    const char *bad = rc == 0 ? stored_number(ctx, &v, by, &i, &d, &ld, &nomem) : NULL;
    if (nomem)
        return -ENOMEM;
    uint8_t enc[KVS_REDIS_LDOUBLE_MAX + 16];
    size_t n = 0;
    if (bad == NULL)
        bad = hincr_sum(m, by, i, d, ld, enc, &n);
    if (bad != NULL) {
        kvs_resp_status(r, KVS_STATUS_BAD_REQUEST);
        kvs_resp_message(r, "Hincr of table \"%s\": %s; nothing was changed", m->table, bad);
        return 0;
    }
    if (pair_too_large(ctx, r, &m->key, n))
        return 0;
    rc = node_store_put(ctx->store, m->table, m->key.data, m->key.len, enc, n);
    if (rc != 0)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_value(r, enc, n);
    return 0;
}

static int cmd_hdel(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hdel *m = req->hdel;
    kvs_resp_status(r, KVS_STATUS_OK);
    int rc = append_stored(ctx, r, m->table, &m->key);
    if (rc <= 0)
        return rc; /* absent: nothing to delete, the empty Value says so */
    if (previous_too_large(ctx, r, "Hdel", &m->key))
        return 0;
    rc = node_store_del(ctx->store, m->table, m->key.data, m->key.len);
    return rc == KVS_ENOTFOUND ? 0 : rc;
}

/* What the keys of a multi-key write hold now. */
typedef struct stored_s {
    size_t bytes;     /* of the stored values as answered (kvs_reads_stored_bound) */
    size_t found;     /* keys that exist */
    size_t key_bytes; /* of the keys that exist */
    size_t largest;   /* the largest stored value as answered, and its key */
    const ProtobufCBinaryData *largest_key;
} stored_t;

/* Looks up `keys` before anything is written, to bound the answer (as
 * `r` answers stored values) and to price what a delete will write.
 * Returns a negative error or 0. */
static int stored_bytes(node_cmd_ctx_t *ctx, const kvs_resp_t *r, const char *table, size_t n,
                        const ProtobufCBinaryData *(*key_at)(const void *, size_t), const void *m,
                        stored_t *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        node_slice_t v;
        const ProtobufCBinaryData *k = key_at(m, i);
        int rc = node_store_get(ctx->store, table, k->data, k->len, &v);
        if (rc == 0) {
            size_t one = kvs_reads_stored_bound(r->value_lengths, v.len);
            out->bytes += one;
            if (out->largest_key == NULL || one > out->largest) {
                out->largest = one;
                out->largest_key = k;
            }
            out->found++;
            out->key_bytes += k->len;
        } else if (rc != KVS_ENOTFOUND) {
            return rc;
        }
    }
    return 0;
}

static const ProtobufCBinaryData *hmset_key(const void *m, size_t i)
{
    return &((const Kvs__Hmset *)m)->pairs[i]->key;
}

static const ProtobufCBinaryData *hmdel_key(const void *m, size_t i)
{
    return &((const Kvs__Hmdel *)m)->keys[i];
}

/* A multi-key write must know its answer fits before it writes: refusing
 * afterwards would report failure for applied writes. `bytes` is an upper
 * bound of the n previous values' bytes as `r` answers them (lengths
 * only, with value_lengths: kvs_reads_write_bound); the answer may take
 * at most max_frame, or `budget` when that is smaller and not 0 (the
 * router's share of the merged answer for this part). Returns 1 when it
 * answered 413. */
static int answer_too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *cmd, size_t n,
                            size_t bytes, uint32_t budget, const stored_t *old)
{
    size_t need = kvs_reads_write_bound(r->value_lengths, n, bytes);
    /* One previous value no answer can hold (stored under a larger
     * max_frame): fewer keys would not help, a larger limit would. */
    size_t alone =
        old->largest_key != NULL ? kvs_reads_write_bound(r->value_lengths, 1, old->largest) : 0;
    if (alone > ctx->max_frame) {
        kvs_reads_value_too_large(r, ctx->max_frame, cmd, old->largest_key, alone, 1);
        return 1;
    }
    if (budget == 0 || budget >= ctx->max_frame) {
        if (need <= ctx->max_frame)
            return 0;
        return too_large(ctx, r, cmd,
                         "nothing was written; send fewer keys per request (or raise "
                         "limits.max_frame)") == 0;
    }
    if (need <= budget)
        return 0;
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r,
                     "%s answer (the previous values of %zu key%s) could take up to %zu bytes, "
                     "more than its answer_budget of %u bytes (a split request's part gets "
                     "its share of limits.max_frame, %zu bytes, from the router); nothing was "
                     "written; send fewer keys per request",
                     cmd, n, n == 1 ? "" : "s", need, budget, ctx->max_frame);
    return 1;
}

/* ---- multi-key ------------------------------------------------------------ */

static int cmd_hmset(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hmset *m = req->hmset;
    size_t bytes = 0, news = 0;
    stored_t old;
    for (size_t i = 0; i < m->n_pairs; i++) {
        size_t vlen = kvs__value__get_packed_size(m->pairs[i]->value);
        if (pair_too_large(ctx, r, &m->pairs[i]->key, vlen))
            return 0;
        bytes += m->pairs[i]->key.len + vlen;
        news += kvs_reads_stored_bound(r->value_lengths, vlen);
    }
    /* A previous value is either stored now or, for a key repeated in the
     * request, an earlier pair's new value: both sums bound the answer. */
    int rc = stored_bytes(ctx, r, m->table, m->n_pairs, hmset_key, m, &old);
    if (rc != 0)
        return rc;
    if (answer_too_large(ctx, r, "Hmset", m->n_pairs, old.bytes + news, m->answer_budget, &old))
        return 0;
    rc = node_store_reserve(ctx->store, m->n_pairs, bytes, 1);
    if (rc != 0)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    for (size_t i = 0; i < m->n_pairs && rc == 0; i++) {
        const Kvs__Kvpair *p = m->pairs[i];
        node_slice_t enc;
        rc = encode_value(ctx, p->value, &enc);
        if (rc == 0)
            rc = append_stored(ctx, r, m->table, &p->key);
        if (rc >= 0)
            rc = node_store_put(ctx->store, m->table, p->key.data, p->key.len, enc.p, enc.len);
    }
    return node_store_reserve_end(ctx->store, rc);
}

static int cmd_hmdel(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hmdel *m = req->hmdel;
    stored_t old;
    int rc = stored_bytes(ctx, r, m->table, m->n_keys, hmdel_key, m, &old);
    if (rc != 0)
        return rc;
    if (answer_too_large(ctx, r, "Hmdel", m->n_keys, old.bytes, m->answer_budget, &old))
        return 0;
    /* Only keys that exist are written: deleting absent keys costs nothing. */
    if (old.found > 0)
        rc = node_store_reserve(ctx->store, old.found, old.key_bytes, 0);
    if (rc != 0)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    for (size_t i = 0; i < m->n_keys && rc >= 0; i++) {
        rc = append_stored(ctx, r, m->table, &m->keys[i]);
        if (rc == 1) {
            rc = node_store_del(ctx->store, m->table, m->keys[i].data, m->keys[i].len);
            if (rc == KVS_ENOTFOUND) /* the same key twice in one request */
                rc = 0;
        }
    }
    rc = rc < 0 ? rc : 0;
    return old.found > 0 ? node_store_reserve_end(ctx->store, rc) : rc;
}

/* Hclear: every key of the table on this shard, in one transaction; the
 * table is then dropped with the batch's commit (node_store: an emptied
 * table bound to no topic). Bound tables never get here (bound_request). */
static int cmd_hclear(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    uint64_t n;
    uint8_t enc[16];
    int rc = node_store_clear(ctx->store, req->hclear->table, &n); /* one write: priced there */
    int presence = r->value_lengths == KVS_VALUES_PRESENCE;        /* how many: not told */
    if (rc != 0 && n > 0) { /* a full disk's clear in pieces stopped midway (node_store.h) */
        char count[32];
        snprintf(count, sizeof(count), "%llu", (unsigned long long)n);
        kvs_resp_status(r, rc == KVS_EFULL ? KVS_STATUS_NO_SPACE : KVS_STATUS_INTERNAL);
        kvs_resp_message(r,
                         "%s: table \"%s\" was being emptied in pieces (the disk is full), and "
                         "%s of its keys were deleted (for good) before the rest could not be; "
                         "send it again once the disk has room",
                         kvs_strerror(rc), req->hclear->table, presence ? "some" : count);
        kvs_resp_outcome_unknown(r); /* neither done nor untouched */
        return 0;
    }
    if (rc != 0)
        return rc;
    if (presence && n > 0)
        n = 1;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_value(r, enc, kvs_value_encode_int(enc, n > INT64_MAX ? INT64_MAX : (int64_t)n));
    return 0;
}

/* ---- reads and the rest ------------------------------------------------------ */

/* The store as kvs_reads sees it: the turn's snapshot, or the open batch. */
static int src_get(void *arg, const char *table, const void *key, size_t klen, kvs_slice_t *val)
{
    return node_store_get(arg, table, key, klen, val);
}

static int src_scan(void *arg, const char *table, const void *from, size_t flen,
                    kvs_lmdb_scan_cb cb, void *cb_arg)
{
    return node_store_scan(arg, table, from, flen, cb, cb_arg);
}

static int src_count(void *arg, const char *table, uint64_t *n)
{
    return node_store_count(arg, table, n);
}

static void read_src(node_cmd_ctx_t *ctx, kvs_reads_src_t *src)
{
    *src = (kvs_reads_src_t){src_get, src_scan, src_count, ctx->store, ctx->max_frame};
}

/* Hget Hexist Hmget Hmexist Hgetall Hscan Hlen: kvs_reads, shared with the
 * routers that read local shards, so their answers are the same bytes. */
static int cmd_read(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    kvs_reads_src_t src;
    read_src(ctx, &src);
    return kvs_reads_execute(&src, req, r);
}

/* PONG, and with a cluster map its digest: a router linking to this
 * worker from another node compares it with its own. */
static int cmd_ping(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    (void)req;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_message(r, "PONG");
    if (ctx->cfg != NULL && ctx->cfg->has_map_digest)
        kvs_resp_cluster_map(r, ctx->cfg->map_digest, sizeof(ctx->cfg->map_digest));
    return 0;
}

static int cmd_info(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    char key[64];
    uint8_t enc[16];
    (void)req;
    kvs_resp_status(r, KVS_STATUS_OK);
    if (ctx->ingest != NULL)
        node_ingest_info(ctx->ingest, r); /* "kafka.*" sorts before "shard.*" */
    snprintf(key, sizeof(key), "shard.%03u.map_size", ctx->shard);
    kvs_resp_pair(r, key, strlen(key), enc,
                  kvs_value_encode_int(enc, (int64_t)node_store_map_size(ctx->store)));
    if (ctx->cfg != NULL && ctx->cfg->node_name[0] != '\0') { /* which replica answered */
        uint8_t name[KVS_NODE_NAME_MAX + 8];
        snprintf(key, sizeof(key), "shard.%03u.node", ctx->shard);
        kvs_resp_pair(
            r, key, strlen(key), name,
            kvs_value_encode_bytes(name, 1, ctx->cfg->node_name, strlen(ctx->cfg->node_name)));
    }
    snprintf(key, sizeof(key), "shard.%03u.replicas", ctx->shard);
    kvs_resp_pair(r, key, strlen(key), enc,
                  kvs_value_encode_int(enc, ctx->replicas > 0 ? ctx->replicas : 1));
    snprintf(key, sizeof(key), "shard.%03u.tables", ctx->shard);
    kvs_resp_pair(r, key, strlen(key), enc,
                  kvs_value_encode_int(enc, node_store_table_count(ctx->store)));
    return 0;
}

/* ---- operations -------------------------------------------------------------- */

/* Packs `ops` into the answer (field 7) with status 200. */
static int put_ops(node_cmd_ctx_t *ctx, kvs_resp_t *r, const Kvs__OpsAnswer *ops)
{
    size_t n = kvs__ops_answer__get_packed_size(ops);
    uint8_t *p = kvs_arena_alloc(&ctx->arena, n ? n : 1);
    if (p == NULL)
        return -ENOMEM;
    kvs__ops_answer__pack(ops, p);
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_ops(r, p, n);
    return 0;
}

static int cmd_metrics(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    kvs_mb_t b;
    (void)req;
    kvs_mb_init(&b, &ctx->arena);
    if (ctx->metrics != NULL)
        ctx->metrics(ctx->metrics_arg, &b);
    if (b.failed)
        return -ENOMEM;
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    ops.metrics = b.fams;
    ops.n_metrics = b.n;
    return put_ops(ctx, r, &ops);
}

static int cmd_slowlog(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    if (ctx->slowlog != NULL &&
        kvs_slowlog_answer(ctx->slowlog, req->slowlog->count, &ctx->arena, &ops) != 0)
        return -ENOMEM;
    int rc = put_ops(ctx, r, &ops); /* packed: the entries may go now */
    if (rc == 0 && ctx->slowlog != NULL && req->slowlog->reset)
        kvs_slowlog_reset(ctx->slowlog);
    return rc;
}

/* Every answer's last check before its frame is closed: one size
 * comparison (kvs_reads_finish). An answer past max_frame becomes this
 * request's 413; writes checked before writing, so none gets here with its
 * write applied. Returns kvs_resp_end's result. */
static int finish(node_cmd_ctx_t *ctx, kvs_resp_t *r, Kvs__CommandRequest__CommandCase cmd)
{
    return kvs_reads_finish(r, ctx->max_frame, cmd);
}

/* Rebuild: a bound table emptied and read again from its topic
 * (node_ingest_rebuild). */
static int cmd_rebuild(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const char *table = req->rebuild->table;
    const kvs_binding_t *b = ctx->cfg != NULL ? kvs_config_binding(ctx->cfg, table) : NULL;
    uint8_t enc[16];
    uint32_t n = 0;
    if (b == NULL || ctx->ingest == NULL) {
        kvs_resp_status(r, KVS_STATUS_BAD_REQUEST);
        if (b == NULL)
            kvs_resp_message(r,
                             "Rebuild: table \"%s\" is bound to no topic (kafka.bindings): only "
                             "a bound table can be rebuilt from its topic; nothing was changed",
                             table);
        else
            kvs_resp_message(r, "Rebuild: this worker ingests no Kafka records (kafka.brokers "
                                "is empty); nothing was changed");
        return 0;
    }
    int rc = node_ingest_rebuild(ctx->ingest, b, &n);
    if (rc == -ESHUTDOWN) {
        kvs_resp_status(r, KVS_STATUS_UNAVAILABLE);
        kvs_resp_message(r, "Rebuild: the worker is stopping; nothing was changed");
        return 0;
    }
    if (rc != 0)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_message(r,
                     "table %s emptied on shard %u; %u partition(s) of topic %s are read again "
                     "from their first record",
                     table, ctx->shard, n, b->topic);
    kvs_resp_value(r, enc, kvs_value_encode_int(enc, n));
    return 0;
}

static const cmd_fn commands[] = {
    [KVS__COMMAND_REQUEST__COMMAND_HGET] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_HGETALL] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_HMGET] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_HSET] = cmd_hset,
    [KVS__COMMAND_REQUEST__COMMAND_HMSET] = cmd_hmset,
    [KVS__COMMAND_REQUEST__COMMAND_HDEL] = cmd_hdel,
    [KVS__COMMAND_REQUEST__COMMAND_HMDEL] = cmd_hmdel,
    [KVS__COMMAND_REQUEST__COMMAND_HEXIST] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_HMEXIST] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_HSCAN] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_PING] = cmd_ping,
    [KVS__COMMAND_REQUEST__COMMAND_INFO] = cmd_info,
    [KVS__COMMAND_REQUEST__COMMAND_HINCR] = cmd_hincr,
    [KVS__COMMAND_REQUEST__COMMAND_HLEN] = cmd_read,
    [KVS__COMMAND_REQUEST__COMMAND_HCLEAR] = cmd_hclear,
    [KVS__COMMAND_REQUEST__COMMAND_METRICS] = cmd_metrics,
    [KVS__COMMAND_REQUEST__COMMAND_SLOWLOG] = cmd_slowlog,
    [KVS__COMMAND_REQUEST__COMMAND_REBUILD] = cmd_rebuild,
};

static int run_auth(node_cmd_ctx_t *ctx, const Kvs__Auth *m, kvs_buf_t *out)
{
    if (ctx->on_auth == NULL)
        return kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                                     "Auth: this server has no users configured (users: in "
                                     "config.yaml); every client may do everything");
    return ctx->on_auth(ctx->auth_arg, m, out);
}

/* Whether ctx->who may run `cmd` on the table; if not, its 401 or 403 is
 * appended (*rc: what to return). */
static int allowed(node_cmd_ctx_t *ctx, Kvs__CommandRequest__CommandCase cmd, const void *table,
                   size_t tlen, kvs_buf_t *out, int *rc)
{
    char msg[512];
    uint32_t st = kvs_auth_check(ctx->who, cmd, table, tlen, msg, sizeof(msg));
    if (st == KVS_STATUS_OK)
        return 1;
    *rc = kvs_msg_append_status(out, st, "%s", msg);
    return 0;
}

int node_cmd_execute(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_buf_t *out)
{
    kvs_resp_t r;
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_AUTH)
        return run_auth(ctx, req->auth, out);
    kvs_resp_begin(&r, out);
    r.value_lengths =
        kvs_msg_values_mode(req->command_case, req->value_lengths, req->presence_only);
    size_t c = (size_t)req->command_case;
    int rc = KVS_EINVAL;
    if (c < sizeof(commands) / sizeof(commands[0]) && commands[c] != NULL)
        rc = commands[c](ctx, req, &r);
    if (rc == -ENOMEM) {
        kvs_resp_abort(&r);
        return kvs_msg_append_status(out, KVS_STATUS_INTERNAL, "server out of memory");
    }
    if (rc == KVS_EINVAL) {
        kvs_resp_abort(&r);
        return kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST, "unsupported command");
    }
    if (rc != 0)
        store_error(ctx, &r, kvs_msg_request_table(req), rc);
    return finish(ctx, &r, req->command_case);
}

/* The single-key commands straight from their wire bytes (kvs_msg_peek
 * vouched for them): the same semantics as the handlers above, without
 * decoding; an Hset's Value bytes are stored exactly as they came. */
static int fast_path(node_cmd_ctx_t *ctx, const kvs_peek_t *pk, kvs_resp_t *r)
{
    char table[KVS_MAX_TABLE + 1];
    ProtobufCBinaryData key = {pk->key_len, (uint8_t *)pk->key};
    memcpy(table, pk->table, pk->table_len);
    table[pk->table_len] = '\0';
    int rc;
    kvs_reads_src_t src;
    switch (pk->cmd) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        read_src(ctx, &src);
        return kvs_reads_key(&src, pk->cmd, table, key.data, key.len, r);
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        if (pair_too_large(ctx, r, &key, pk->value_len))
            return 0;
        kvs_resp_status(r, KVS_STATUS_OK);
        rc = append_stored(ctx, r, table, &key);
        if (rc < 0 || previous_too_large(ctx, r, "Hset", &key))
            return rc < 0 ? rc : 0;
        return node_store_put(ctx->store, table, key.data, key.len, pk->value, pk->value_len);
    default: /* Hdel */
        kvs_resp_status(r, KVS_STATUS_OK);
        rc = append_stored(ctx, r, table, &key);
        if (rc <= 0)
            return rc;
        if (previous_too_large(ctx, r, "Hdel", &key))
            return 0;
        rc = node_store_del(ctx->store, table, key.data, key.len);
        return rc == KVS_ENOTFOUND ? 0 : rc;
    }
}

static int run_fast(node_cmd_ctx_t *ctx, const kvs_peek_t *pk, kvs_buf_t *out)
{
    kvs_resp_t r;
    kvs_resp_begin(&r, out);
    r.value_lengths = kvs_msg_values_mode(pk->cmd, pk->value_lengths, pk->presence_only);
    char table[KVS_MAX_TABLE + 1];
    int rc = fast_path(ctx, pk, &r);
    if (rc != 0) {
        memcpy(table, pk->table, pk->table_len);
        table[pk->table_len] = '\0';
        store_error(ctx, &r, table, rc);
    }
    return finish(ctx, &r, pk->cmd);
}

/* ---- tables bound to a Kafka topic ------------------------------------------------ */

/* A write to a table bound to no topic, on a shard with several replicas
 * (kvs-router refuses it the same way) or whose snapshot went to another
 * node (node_handoff): it would reach this copy only. One taken here is
 * recorded first (node_handoff_writing). A write with a pair
 * too large to store (kvs_msg_largest_pair) is answered that first (413), as it would be
 * at any other time: the refusal's 503 would have the client send it again
 * once the move is over, for nothing. Returns 1 when refused (answered), 0
 * to go on, or a negative error. */
static int unbound_refused(node_cmd_ctx_t *ctx, Kvs__CommandRequest__CommandCase cmd,
                           const void *table, size_t len, const Kvs__CommandRequest *req,
                           const kvs_peek_t *pk, kvs_buf_t *out)
{
    if (!kvs_msg_is_write(cmd) || ctx->ungated)
        return 0; /* reads: nothing more to look at */
    const char *copied = node_handoff_why(ctx->handoff);
    int rc;
    if (ctx->replicas < 2 && copied == NULL) {
        /* Taken here: recorded first as rows no other copy holds. */
        uint64_t batch = ctx->store != NULL ? node_store_batch_gen(ctx->store) : 0;
        if ((rc = node_handoff_writing(ctx->handoff, batch)) == 0)
            return 0;
        char why[300];
        /* A full disk or a size limit is 507 here as on every other write. */
        int full = node_store_err_code(-rc) == KVS_EFULL;
        if (rc == -EAGAIN)
            snprintf(why, sizeof(why),
                     "the cluster.nodes being taken gives shard %u to other nodes too, or not to "
                     "this one; nothing was written (send it again once the change is over)",
                     ctx->shard);
        else
            snprintf(why, sizeof(why),
                     "shard %u cannot record that it holds rows of such tables, which a move of "
                     "the shard must know (%s); nothing was written",
                     ctx->shard, kvs_strerror(rc));
        rc = kvs_msg_append_status(out, full ? KVS_STATUS_NO_SPACE : KVS_STATUS_UNAVAILABLE,
                                   "%s: table \"%.*s\" is bound to no Kafka topic, and %s",
                                   kvs_msg_command_name(cmd), (int)(len > 200 ? 200 : len),
                                   (const char *)table, why);
        return rc == 0 ? 1 : rc;
    }
    size_t klen, vlen;
    kvs_msg_largest_pair(req, pk, &klen, &vlen);
    if (!pair_fits(ctx, klen, vlen)) {
        rc = kvs_msg_append_status(out, KVS_STATUS_TOO_LARGE, KVS_MSG_PAIR_TOO_LARGE,
                                   KVS_MSG_PAIR_TOO_LARGE_ARGS(ctx->max_frame, klen, vlen));
        return rc == 0 ? 1 : rc;
    }
    if (ctx->replicas < 2) {
        rc = kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                   "%s: table \"%.*s\" is bound to no Kafka topic, and %s; nothing "
                                   "was written (send it again once the move is over)",
                                   kvs_msg_command_name(cmd), (int)(len > 200 ? 200 : len),
                                   (const char *)table, copied);
        return rc == 0 ? 1 : rc;
    }
    rc = kvs_msg_append_status(
        out, KVS_STATUS_BAD_REQUEST,
        "%s: table \"%.*s\" is bound to no Kafka topic, and shard %u has %u replicas: a write to "
        "an unbound table would reach one copy only. Bind the table to a topic (kafka.bindings) "
        "so every replica applies its writes, or serve shard %u from one node; nothing was "
        "written",
        kvs_msg_command_name(cmd), (int)(len > 200 ? 200 : len), (const char *)table, ctx->shard,
        ctx->replicas, ctx->shard);
    return rc == 0 ? 1 : rc;
}

/* Refuses a write to a table bound to no topic naming a key another shard
 * owns (placed as kvs-router places it: murmur2 over cluster.partitions).
 * kvs-router never sends one; through a worker's own socket or TCP
 * listener it would store the key where no read by key looks, and
 * whole-table reads would show it beside the owner's copy. Returns 1 when
 * refused (answered), 0 to go on, or a negative error. */
static int foreign_refused(node_cmd_ctx_t *ctx, Kvs__CommandRequest__CommandCase cmd,
                           const void *table, size_t tlen, const ProtobufCBinaryData *key,
                           kvs_buf_t *out)
{
    if (ctx->cfg == NULL || ctx->ungated || key == NULL)
        return 0;
    uint32_t owner =
        kvs_place_key_shard(key->data, key->len, ctx->cfg->partitions, ctx->cfg->shards);
    if (owner == ctx->shard)
        return 0;
    char shown[80];
    kvs_msg_quote(shown, sizeof(shown), key->data, key->len);
    int rc = kvs_msg_append_status(
        out, KVS_STATUS_BAD_REQUEST,
        "%s: key \"%s\" of table \"%.*s\" belongs to shard %u, not this shard (%u): send writes "
        "through kvs-router; nothing was written",
        kvs_msg_command_name(cmd), shown, (int)(tlen > 200 ? 200 : tlen), (const char *)table,
        owner, ctx->shard);
    return rc == 0 ? 1 : rc;
}

/* foreign_refused for every key a decoded write names. */
static int foreign_refused_req(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req,
                               const char *table, kvs_buf_t *out)
{
    size_t tlen = strlen(table);
    int rc = 0;
    switch (req->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        return foreign_refused(ctx, req->command_case, table, tlen, &req->hset->pair->key, out);
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
        return foreign_refused(ctx, req->command_case, table, tlen, &req->hdel->key, out);
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        return foreign_refused(ctx, req->command_case, table, tlen, &req->hincr->key, out);
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        for (size_t i = 0; i < req->hmset->n_pairs && rc == 0; i++)
            rc = foreign_refused(ctx, req->command_case, table, tlen, &req->hmset->pairs[i]->key,
                                 out);
        return rc;
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        for (size_t i = 0; i < req->hmdel->n_keys && rc == 0; i++)
            rc = foreign_refused(ctx, req->command_case, table, tlen, &req->hmdel->keys[i], out);
        return rc;
    default:
        return 0;
    }
}

/* The binding of table[0..len), or NULL (unbound, or no checks wanted). */
static const kvs_binding_t *bound_table(const node_cmd_ctx_t *ctx, const void *table, size_t len)
{
    if (ctx->cfg == NULL || ctx->cfg->n_bindings == 0 || ctx->ungated || table == NULL)
        return NULL;
    return kvs_config_binding_n(ctx->cfg, table, len);
}

/* A write to a bound table: through its topic (node_writes). */
static int bound_write(node_cmd_ctx_t *ctx, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                       kvs_buf_t *out)
{
    if (ctx->writes == NULL) {
        int rc = kvs_msg_append_status(
            out, KVS_STATUS_UNAVAILABLE,
            "%s: table \"%s\" is bound to Kafka topic %s, so writes to it go through the "
            "topic, but Kafka is off on this node (kafka.brokers is empty); nothing was written",
            kvs_msg_command_name(req->command_case), b->table, b->topic);
        return rc == 0 ? 1 : rc;
    }
    int rc = node_writes_request(ctx->writes, b, req, ctx->defer, ctx->wanted, ctx->defer_arg,
                                 &ctx->arena, out);
    return rc == 0 ? 1 : rc;
}

/* A request on a bound table, before the ordinary handlers. Returns 0 when
 * they should run it now, 1 when it was answered or deferred here, or a
 * negative error. */
static int bound_request(node_cmd_ctx_t *ctx, const kvs_binding_t *b,
                         const Kvs__CommandRequest *req, const uint8_t *payload, size_t len,
                         kvs_buf_t *out)
{
    const char *refused = NULL;
    switch (req->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        if (req->hset->if_absent)
            refused = "Hset with if_absent (Redis HSETNX)";
        else
            return bound_write(ctx, b, req, out);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        return bound_write(ctx, b, req, out);
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        refused = "Hincr (Redis HINCRBY/HINCRBYFLOAT)";
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HCLEAR: {
        int rc = kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST, KVS_MSG_HCLEAR_BOUND, b->table,
                                       b->topic);
        return rc == 0 ? 1 : rc;
    }
    default:
        if (!kvs_freshreq_applies(req->command_case))
            return 0; /* not a read: as for any table */
        break;
    }
    if (refused != NULL) {
        /* Their check and write must be one step on the data; through the
         * topic they would be two, with other writers in between. */
        int rc = kvs_msg_append_status(
            out, KVS_STATUS_BAD_REQUEST,
            "%s is not supported on table \"%s\": it is bound to Kafka topic %s, whose "
            "writes are produced, so a read-modify-write could interleave with other writers; "
            "nothing was written",
            refused, b->table, b->topic);
        return rc == 0 ? 1 : rc;
    }
    if (ctx->reads != NULL)
        return node_reads_admit(ctx->reads, b, req, payload, len, ctx->defer, ctx->defer_arg,
                                &ctx->arena, out);
    return 0;
}

/* The fast path's share of bound_request: a single-key read with no
 * options that may be served now takes the fast path (0); anything else
 * the full one (1): writes wait for Kafka (decoding is nothing beside
 * that), a read the freshness rules hold back is answered or waits. */
static int bound_peeked(node_cmd_ctx_t *ctx, const kvs_binding_t *b, const kvs_peek_t *pk)
{
    if (!kvs_freshreq_applies(pk->cmd))
        return 1;
    return ctx->reads != NULL && node_reads_admit_key(ctx->reads, b, pk->key, pk->key_len) != 0;
}

int node_cmd_frame_ungated(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, kvs_buf_t *out)
{
    int was = ctx->ungated;
    ctx->ungated = 1;
    int rc = node_cmd_frame(ctx, payload, len, out);
    ctx->ungated = was;
    return rc;
}

/* ---- hooks ------------------------------------------------------------------- */

/* A request begins: nothing known of it yet but when it arrived (the
 * caller sets info.received_ns before each frame, 0 meaning now). */
static void hook_begin(node_cmd_ctx_t *ctx)
{
    kvs_request_info_t *in = &ctx->info;
    in->struct_size = sizeof(*in);
    in->command = 0;
    in->command_name = "none";
    in->table = NULL;
    in->table_len = in->keys = in->write = in->status = 0;
    in->client_name = ""; /* a worker's clients (routers, kvs-cli) give no names */
    if (in->received_ns == 0)
        in->received_ns = kvs_now_ns();
}

/* Notes what the request asks for. The table must stay readable until
 * the caller of node_cmd_frame is done with `info`: the request's bytes
 * are; a decoded request's name lives in the arena, reset before
 * node_cmd_frame returns, so it is copied (`copy`). */
static void hook_note(node_cmd_ctx_t *ctx, Kvs__CommandRequest__CommandCase cmd, const void *table,
                      size_t table_len, uint32_t keys, int copy)
{
    kvs_request_info_t *in = &ctx->info;
    if (copy && table != NULL) {
        /* one byte past the longest name, as the router keeps it */
        table_len = table_len <= sizeof(ctx->table_copy) ? table_len : sizeof(ctx->table_copy);
        memcpy(ctx->table_copy, table, table_len);
        table = ctx->table_copy;
    }
    in->command = (uint32_t)cmd < KVS_METRICS_COMMANDS ? (uint32_t)cmd : 0;
    in->command_name = kvs_msg_command_name(cmd);
    in->table = table;
    in->table_len = table_len > UINT32_MAX ? UINT32_MAX : (uint32_t)table_len;
    in->keys = keys;
    in->write = (uint32_t)kvs_msg_is_write(cmd);
}

/* RECEIVED for a valid, allowed request. Returns 0, or the status a hook
 * stopped it with (its message in msg). */
static uint32_t hook_received(node_cmd_ctx_t *ctx, char *msg, size_t mlen)
{
    if (!kvs_hook_any(ctx->hooks, KVS_HOOK_RECEIVED))
        return 0;
    ctx->info.now_ns = kvs_now_ns();
    return kvs_hook_run(ctx->hooks, KVS_HOOK_RECEIVED, &ctx->info, msg, mlen);
}

/* Replaces the answer at out[start..) with a hook's `status` and `msg`. A
 * write's replacement keeps what the answer said of whether it happened
 * (kvs_msg_replaced_outcome): the write is in the open batch by now, and
 * the hook's error must not tell the client that nothing was written. */
static int hook_replace(kvs_buf_t *out, size_t start, int write, uint32_t status, char *msg)
{
    kvs_buf_t tok; /* a copy: the answer it lies in is overwritten */
    kvs_buf_init(&tok);
    int unknown = write ? kvs_msg_replaced_keep(out->data + start + KVS_FRAME_HEADER,
                                                out->len - start - KVS_FRAME_HEADER, &tok)
                        : 0;
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = status;
    r.message = msg;
    r.outcome_unknown = unknown != 0;
    r.position.data = tok.data;
    r.position.len = tok.len;
    out->len = start;
    int rc = kvs_msg_append(out, &r.base, SIZE_MAX);
    kvs_buf_free(&tok);
    return rc;
}

int node_cmd_executed(const kvs_hook_chain_t *hooks, kvs_request_info_t *in, kvs_buf_t *out,
                      size_t start)
{
    char msg[KVS_HOOK_MSG];
    in->status = kvs_msg_answer_status(out->data + start + KVS_FRAME_HEADER,
                                       out->len - start - KVS_FRAME_HEADER);
    in->now_ns = kvs_now_ns();
    uint32_t st = kvs_hook_run(hooks, KVS_HOOK_EXECUTED, in, msg, sizeof(msg));
    if (st == 0)
        return 0;
    in->status = st;
    return hook_replace(out, start, in->write != 0, st, msg);
}

/* EXECUTED once the answer appended at out[start..) is known; a hook may
 * replace it. An answer that comes later (a slot: nothing was appended
 * here) gets its EXECUTED from node_server when the slot is done. Returns
 * rc, or the result of appending the replacement. */
static int hook_executed(node_cmd_ctx_t *ctx, kvs_buf_t *out, size_t start, int rc)
{
    if (rc != 0 || out->len < start + KVS_FRAME_HEADER)
        return rc;
    return node_cmd_executed(ctx->hooks, &ctx->info, out, start);
}

/* The fast path: a valid single-key request (access control and RECEIVED
 * first). Returns 0 or a negative error when it is answered (or deferred),
 * 1 when the full path must run it (RECEIVED has run). */
static int frame_peeked(node_cmd_ctx_t *ctx, const kvs_peek_t *pk, int hooks, kvs_buf_t *out)
{
    char msg[KVS_HOOK_MSG];
    int rc;
    if (hooks)
        hook_note(ctx, pk->cmd, pk->table, pk->table_len, 1, 0);
    if (ctx->who != NULL && !allowed(ctx, pk->cmd, pk->table, pk->table_len, out, &rc))
        return rc;
    kvs_peek_t withheld;
    if (ctx->who != NULL && kvs_auth_withholds(ctx->who, pk->cmd, pk->table, pk->table_len)) {
        withheld = *pk; /* a user without read: its previous values are withheld */
        withheld.presence_only = 1;
        pk = &withheld;
    }
    uint32_t st = hooks ? hook_received(ctx, msg, sizeof(msg)) : 0;
    if (st != 0)
        return kvs_msg_append_status(out, st, "%s", msg);
    const kvs_binding_t *b = bound_table(ctx, pk->table, pk->table_len);
    rc = b == NULL ? unbound_refused(ctx, pk->cmd, pk->table, pk->table_len, NULL, pk, out) : 0;
    if (rc == 0 && b == NULL && kvs_msg_is_write(pk->cmd)) {
        ProtobufCBinaryData key = {pk->key_len, (uint8_t *)pk->key};
        rc = foreign_refused(ctx, pk->cmd, pk->table, pk->table_len, &key, out);
    }
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (b == NULL || !bound_peeked(ctx, b, pk))
        return run_fast(ctx, pk, out);
    return 1;
}

/* A valid, allowed request: the worker commands, then bound and unbound
 * tables. */
static int run_decoded(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, const char *table,
                       const uint8_t *payload, size_t len, kvs_buf_t *out)
{
    const kvs_binding_t *b = table != NULL ? bound_table(ctx, table, strlen(table)) : NULL;
    int rc;
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_DIGEST)
        return node_digest_request(ctx->digest, req, ctx->defer, ctx->defer_arg, out);
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_REBUILD)
        return node_cmd_execute(ctx, req, out);
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT)
        return ctx->snapshot != NULL
                   ? ctx->snapshot(ctx->snapshot_arg, req->snapshot, out)
                   : kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                           "Snapshot is not available on this server");
    if (b == NULL && table != NULL &&
        ((rc = unbound_refused(ctx, req->command_case, table, strlen(table), req, NULL, out)) !=
             0 ||
         (rc = foreign_refused_req(ctx, req, table, out)) != 0))
        return rc < 0 ? rc : 0;
    if (b == NULL || (rc = bound_request(ctx, b, req, payload, len, out)) == 0)
        return node_cmd_execute(ctx, req, out);
    return rc > 0 ? 0 : rc;
}

/* The full path: decode, validate, access control, RECEIVED (unless the
 * fast path ran it: `received`), run. */
static int frame_decoded(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, int hooks,
                         int received, kvs_buf_t *out)
{
    char msg[KVS_HOOK_MSG];
    int rc;
    uint32_t why;
    kvs_msg_refused_t refused;
    /* A command given several times in a row is merged first, as the
     * decoder reads it: the keys are counted in the bytes it decodes. */
    const uint8_t *sent = payload;
    size_t sent_len = len;
    if (kvs_msg_merge_request(&ctx->arena, &payload, &len) != 0)
        return kvs_msg_append_status(
            out, kvs_msg_decode_refusal(KVS_STATUS_INTERNAL, NULL, len, msg, sizeof(msg)), "%s",
            msg);
    why = kvs_msg_check_keys(payload, len, ctx->max_keys, &refused, msg, sizeof(msg));
    if (why != KVS_STATUS_OK) {
        if (hooks && !received) /* EXECUTED sees the command refused, and its table */
            hook_note(ctx, refused.cmd, refused.table, refused.table_len, refused.keys, 1);
        return kvs_msg_append_status(out, why, "%s", msg);
    }
    Kvs__CommandRequest *req = kvs_msg_decode_merged(&ctx->arena, payload, len, &why);
    if (req == NULL)
        return kvs_msg_append_status(
            out, kvs_msg_decode_refusal(why, payload, len, msg, sizeof(msg)), "%s", msg);
    uint32_t st = kvs_msg_check_request(req, payload, len, msg, sizeof(msg));
    if (st == KVS_STATUS_OK && payload != sent) /* what merging dropped or joined, unread */
        st = kvs_msg_check_wire(sent, sent_len, msg, sizeof(msg));
    const char *table = kvs_msg_request_table(req);
    size_t tlen = table != NULL ? strlen(table) : 0;
    if (hooks && !received) { /* EXECUTED sees what a refused request asked for too, as sent */
        size_t slen = tlen;
        const char *sent = st == KVS_STATUS_OK
                               ? table /* no NUL in it: strlen is its length */
                               : kvs_msg_request_table_sent(req, payload, len, &slen);
        hook_note(ctx, req->command_case, sent, slen, kvs_msg_request_keys(req), 1);
    }
    if (st != KVS_STATUS_OK)
        return kvs_msg_append_status(out, st, "%s", msg);
    if (ctx->who != NULL && !allowed(ctx, req->command_case, table, tlen, out, &rc))
        return rc; /* answered 401 or 403 */
    if (ctx->who != NULL && kvs_auth_withholds(ctx->who, req->command_case, table, tlen))
        req->presence_only = 1; /* a user without read: its previous values are withheld */
    st = hooks && !received ? hook_received(ctx, msg, sizeof(msg)) : 0;
    if (st != 0)
        return kvs_msg_append_status(out, st, "%s", msg);
    return run_decoded(ctx, req, table, payload, len, out);
}

int node_cmd_frame(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, kvs_buf_t *out)
{
    kvs_peek_t pk;
    size_t start = out->len;
    /* A read executed again once it may run (node_reads) had its events
     * when it arrived; its answer's come with its slot (node_server). */
    int hooks = ctx->hooks != NULL && !ctx->ungated;
    int rc = 1, received = 0;
    if (hooks)
        hook_begin(ctx);
    if (kvs_msg_peek(payload, len, &pk))
        received = (rc = frame_peeked(ctx, &pk, hooks, out)) == 1;
    if (rc == 1)
        rc = frame_decoded(ctx, payload, len, hooks, received, out);
    if (hooks)
        rc = hook_executed(ctx, out, start, rc);
    kvs_arena_reset(&ctx->arena);
    return rc;
}
