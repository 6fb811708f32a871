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
 * Every error a user can cause becomes a status and a message; storage
 * errors map to 507 (full, limit) or 500 (anything else).
 *
 * With users configured (ctx->who), each request is authorized after it
 * was validated and before it touches storage; Auth goes to the server's
 * hook, which may answer later.
 */
#include "node_cmd.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_resp.h"

#include <errno.h>
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
    case KVS_ELIMIT:
        kvs_resp_status(r, KVS_STATUS_NO_SPACE);
        kvs_resp_message(r,
                         "cannot create table \"%s\": this shard already holds storage.max_tables "
                         "(%u) tables; raise the limit in config.yaml",
                         table, ctx->max_tables);
        break;
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
    kvs_resp_value(r, v.p, v.len);
    return 1;
}

/* The response grew past max_frame: replace it with 413. */
static int too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *cmd, const char *hint)
{
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r, "%s answer would exceed limits.max_frame (%zu bytes); %s", cmd,
                     ctx->max_frame, hint);
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
static int pair_too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const ProtobufCBinaryData *key,
                          size_t vlen)
{
    size_t need = key->len + vlen + KVS_MAX_KEY + 64;
    if (need <= ctx->max_frame)
        return 0;
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r,
                     "value of %zu bytes is too large: an answer holding it must fit in "
                     "limits.max_frame (%zu bytes), so keys plus values may be at most %zu bytes",
                     vlen, ctx->max_frame, ctx->max_frame - KVS_MAX_KEY - 64);
    return 1;
}

/* ---- single-key --------------------------------------------------------- */

/* Hget's 404, naming table and key (as the original protocol does); a key
 * that is not printable text is shown escaped. */
static void not_found(kvs_resp_t *r, const char *table, const ProtobufCBinaryData *key)
{
    char shown[256];
    kvs_resp_status(r, KVS_STATUS_NOT_FOUND);
    kvs_resp_message(r, "key \"%s\" not found in table \"%s\"",
                     kvs_msg_quote(shown, sizeof(shown), key->data, key->len), table);
}

static int cmd_hget(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hget *m = req->hget;
    node_slice_t v;
    int rc = node_store_get(ctx->store, m->table, m->key.data, m->key.len, &v);
    if (rc == KVS_ENOTFOUND) {
        not_found(r, m->table, &m->key);
        return 0;
    }
    if (rc != 0)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_value(r, v.p, v.len);
    return 0;
}

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
    if (rc < 0)
        return rc;
    return node_store_put(ctx->store, m->table, key->data, key->len, enc.p, enc.len);
}

static int cmd_hdel(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hdel *m = req->hdel;
    kvs_resp_status(r, KVS_STATUS_OK);
    int rc = append_stored(ctx, r, m->table, &m->key);
    if (rc <= 0)
        return rc; /* absent: nothing to delete, the empty Value says so */
    rc = node_store_del(ctx->store, m->table, m->key.data, m->key.len);
    return rc == KVS_ENOTFOUND ? 0 : rc;
}

static int cmd_hexist(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hexist *m = req->hexist;
    node_slice_t v;
    int rc = node_store_get(ctx->store, m->table, m->key.data, m->key.len, &v);
    if (rc != 0 && rc != KVS_ENOTFOUND)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_bool(r, rc == 0);
    return 0;
}

/* Bytes the stored values of `keys` take, for bounding an answer before
 * anything is written. Returns a negative error, or 0 with *total set. */
static int stored_bytes(node_cmd_ctx_t *ctx, const char *table, size_t n,
                        const ProtobufCBinaryData *(*key_at)(const void *, size_t), const void *m,
                        size_t *total)
{
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        node_slice_t v;
        const ProtobufCBinaryData *k = key_at(m, i);
        int rc = node_store_get(ctx->store, table, k->data, k->len, &v);
        if (rc == 0)
            *total += v.len;
        else if (rc != KVS_ENOTFOUND)
            return rc;
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

/* A multi-key write must know its answer fits max_frame before it writes:
 * refusing afterwards would report failure for applied writes. `bound` is
 * an upper bound of the previous values' bytes. */
static int answer_too_large(node_cmd_ctx_t *ctx, kvs_resp_t *r, const char *cmd, size_t n,
                            size_t bound)
{
    if (bound + 8 * n + 64 <= ctx->max_frame)
        return 0;
    return too_large(ctx, r, cmd, "nothing was written; send fewer keys per request") == 0;
}

/* ---- multi-key ------------------------------------------------------------ */

static int cmd_hmget(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hmget *m = req->hmget;
    kvs_resp_status(r, KVS_STATUS_OK);
    for (size_t i = 0; i < m->n_keys; i++) {
        int rc = append_stored(ctx, r, m->table, &m->keys[i]);
        if (rc < 0)
            return rc;
        if (kvs_resp_size(r) > ctx->max_frame)
            return too_large(ctx, r, "Hmget", "ask for fewer keys per request");
    }
    return 0;
}

static int cmd_hmexist(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hmexist *m = req->hmexist;
    if (answer_too_large(ctx, r, "Hmexist", m->n_keys, 0))
        return 0;
    kvs_resp_status(r, KVS_STATUS_OK);
    for (size_t i = 0; i < m->n_keys; i++) {
        node_slice_t v;
        int rc = node_store_get(ctx->store, m->table, m->keys[i].data, m->keys[i].len, &v);
        if (rc != 0 && rc != KVS_ENOTFOUND)
            return rc;
        kvs_resp_bool(r, rc == 0);
    }
    return 0;
}

static int cmd_hmset(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hmset *m = req->hmset;
    size_t bytes = 0, news = 0, olds;
    for (size_t i = 0; i < m->n_pairs; i++) {
        size_t vlen = kvs__value__get_packed_size(m->pairs[i]->value);
        if (pair_too_large(ctx, r, &m->pairs[i]->key, vlen))
            return 0;
        bytes += m->pairs[i]->key.len + vlen;
        news += vlen;
    }
    /* A previous value is either stored now or, for a key repeated in the
     * request, an earlier pair's new value: both sums bound the answer. */
    int rc = stored_bytes(ctx, m->table, m->n_pairs, hmset_key, m, &olds);
    if (rc != 0)
        return rc;
    if (answer_too_large(ctx, r, "Hmset", m->n_pairs, olds + news))
        return 0;
    rc = node_store_reserve(ctx->store, m->n_pairs, bytes);
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
    node_store_reserve_end(ctx->store);
    return rc;
}

static int cmd_hmdel(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hmdel *m = req->hmdel;
    size_t bytes = 0, olds;
    for (size_t i = 0; i < m->n_keys; i++)
        bytes += m->keys[i].len;
    int rc = stored_bytes(ctx, m->table, m->n_keys, hmdel_key, m, &olds);
    if (rc != 0)
        return rc;
    if (answer_too_large(ctx, r, "Hmdel", m->n_keys, olds))
        return 0;
    rc = node_store_reserve(ctx->store, m->n_keys, bytes);
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
    node_store_reserve_end(ctx->store);
    return rc < 0 ? rc : 0;
}

/* ---- whole table ------------------------------------------------------------ */

typedef struct scan_state_s {
    node_cmd_ctx_t *ctx;
    kvs_resp_t *r;
    uint32_t left;     /* pairs still wanted (UINT32_MAX: all) */
    uint32_t taken;    /* pairs added so far */
    size_t limit;      /* response bytes allowed */
    int overflow;      /* stopped because of `limit` */
    node_slice_t next; /* first key not returned, copied */
    uint8_t next_buf[KVS_MAX_KEY];
} scan_state_t;

static int scan_one(void *arg, node_slice_t key, node_slice_t val)
{
    scan_state_t *st = arg;
    /* The first pair is always taken, however large, so a walk always
     * makes progress; later ones must fit the soft limit. */
    if (st->left == 0 ||
        (st->taken > 0 && kvs_resp_size(st->r) + key.len + val.len + 16 > st->limit)) {
        st->overflow = st->left != 0;
        size_t n = key.len < sizeof(st->next_buf) ? key.len : sizeof(st->next_buf);
        memcpy(st->next_buf, key.p, n);
        st->next.p = st->next_buf;
        st->next.len = n;
        return 1;
    }
    kvs_resp_pair(st->r, key.p, key.len, val.p, val.len);
    st->left--;
    st->taken++;
    return 0;
}

static int cmd_hgetall(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    scan_state_t st = {.ctx = ctx, .r = r, .left = UINT32_MAX, .limit = ctx->max_frame};
    kvs_resp_status(r, KVS_STATUS_OK);
    int rc = node_store_scan(ctx->store, req->hgetall->table, NULL, 0, scan_one, &st);
    if (rc != 0)
        return rc;
    if (st.overflow || kvs_resp_size(r) > ctx->max_frame)
        return too_large(ctx, r, "Hgetall", "read the table in pages with Hscan");
    return 0;
}

static int cmd_hscan(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    const Kvs__Hscan *m = req->hscan;
    uint32_t count = m->count == 0 ? NODE_SCAN_DEFAULT : m->count;
    if (count > NODE_SCAN_MAX)
        count = NODE_SCAN_MAX;
    /* Leave room for the cursor and the frame itself. */
    scan_state_t st = {.ctx = ctx, .r = r, .left = count, .limit = ctx->max_frame - 1024};
    kvs_resp_status(r, KVS_STATUS_OK);
    int rc = node_store_scan(ctx->store, m->table, m->cursor.data, m->cursor.len, scan_one, &st);
    if (rc != 0)
        return rc;
    if (st.next.len > 0)
        kvs_resp_cursor(r, st.next.p, st.next.len);
    return 0;
}

static int cmd_ping(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    (void)ctx;
    (void)req;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_message(r, "PONG");
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
    snprintf(key, sizeof(key), "shard.%03u.tables", ctx->shard);
    kvs_resp_pair(r, key, strlen(key), enc,
                  kvs_value_encode_int(enc, node_store_table_count(ctx->store)));
    return 0;
}

static const cmd_fn commands[] = {
    [KVS__COMMAND_REQUEST__COMMAND_HGET] = cmd_hget,
    [KVS__COMMAND_REQUEST__COMMAND_HGETALL] = cmd_hgetall,
    [KVS__COMMAND_REQUEST__COMMAND_HMGET] = cmd_hmget,
    [KVS__COMMAND_REQUEST__COMMAND_HSET] = cmd_hset,
    [KVS__COMMAND_REQUEST__COMMAND_HMSET] = cmd_hmset,
    [KVS__COMMAND_REQUEST__COMMAND_HDEL] = cmd_hdel,
    [KVS__COMMAND_REQUEST__COMMAND_HMDEL] = cmd_hmdel,
    [KVS__COMMAND_REQUEST__COMMAND_HEXIST] = cmd_hexist,
    [KVS__COMMAND_REQUEST__COMMAND_HMEXIST] = cmd_hmexist,
    [KVS__COMMAND_REQUEST__COMMAND_HSCAN] = cmd_hscan,
    [KVS__COMMAND_REQUEST__COMMAND_PING] = cmd_ping,
    [KVS__COMMAND_REQUEST__COMMAND_INFO] = cmd_info,
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
    return kvs_resp_end(&r);
}

/* The single-key commands straight from their wire bytes (kvs_msg_peek
 * vouched for them): the same semantics as the handlers above, without
 * decoding; an Hset's Value bytes are stored exactly as they came. */
static int fast_path(node_cmd_ctx_t *ctx, const kvs_peek_t *pk, kvs_resp_t *r)
{
    char table[KVS_MAX_TABLE + 1];
    ProtobufCBinaryData key = {pk->key_len, (uint8_t *)pk->key};
    node_slice_t v;
    memcpy(table, pk->table, pk->table_len);
    table[pk->table_len] = '\0';
    int rc;
    switch (pk->cmd) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        rc = node_store_get(ctx->store, table, key.data, key.len, &v);
        if (rc == KVS_ENOTFOUND) {
            not_found(r, table, &key);
            return 0;
        }
        if (rc == 0) {
            kvs_resp_status(r, KVS_STATUS_OK);
            kvs_resp_value(r, v.p, v.len);
        }
        return rc;
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        rc = node_store_get(ctx->store, table, key.data, key.len, &v);
        if (rc != 0 && rc != KVS_ENOTFOUND)
            return rc;
        kvs_resp_status(r, KVS_STATUS_OK);
        kvs_resp_bool(r, rc == 0);
        return 0;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        if (pair_too_large(ctx, r, &key, pk->value_len))
            return 0;
        kvs_resp_status(r, KVS_STATUS_OK);
        rc = append_stored(ctx, r, table, &key);
        return rc < 0
                   ? rc
                   : node_store_put(ctx->store, table, key.data, key.len, pk->value, pk->value_len);
    default: /* Hdel */
        kvs_resp_status(r, KVS_STATUS_OK);
        rc = append_stored(ctx, r, table, &key);
        if (rc <= 0)
            return rc;
        rc = node_store_del(ctx->store, table, key.data, key.len);
        return rc == KVS_ENOTFOUND ? 0 : rc;
    }
}

static int run_fast(node_cmd_ctx_t *ctx, const kvs_peek_t *pk, kvs_buf_t *out)
{
    kvs_resp_t r;
    kvs_resp_begin(&r, out);
    char table[KVS_MAX_TABLE + 1];
    int rc = fast_path(ctx, pk, &r);
    if (rc != 0) {
        memcpy(table, pk->table, pk->table_len);
        table[pk->table_len] = '\0';
        store_error(ctx, &r, table, rc);
    }
    return kvs_resp_end(&r);
}

int node_cmd_frame(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, kvs_buf_t *out)
{
    char msg[512];
    kvs_peek_t pk;
    int rc;
    if (kvs_msg_peek(payload, len, &pk)) {
        if (ctx->who != NULL && !allowed(ctx, pk.cmd, pk.table, pk.table_len, out, &rc))
            return rc;
        return run_fast(ctx, &pk, out);
    }
    Kvs__CommandRequest *req = kvs_msg_decode_request(&ctx->arena, payload, len);
    if (req == NULL) {
        rc = kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                                   "frame payload (%zu bytes) is not a valid kvs.CommandRequest",
                                   len);
    } else {
        uint32_t st = kvs_msg_validate(req, msg, sizeof(msg));
        if (st == KVS_STATUS_OK)
            st = kvs_msg_check_strings(payload, len, msg, sizeof(msg));
        const char *table = st == KVS_STATUS_OK ? kvs_msg_request_table(req) : NULL;
        if (st != KVS_STATUS_OK)
            rc = kvs_msg_append_status(out, st, "%s", msg);
        else if (ctx->who == NULL || allowed(ctx, req->command_case, table,
                                             table != NULL ? strlen(table) : 0, out, &rc))
            rc = node_cmd_execute(ctx, req, out);
    }
    kvs_arena_reset(&ctx->arena);
    return rc;
}
