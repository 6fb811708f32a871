/*
 * router_route: where each request goes, and how answers come back.
 *
 *  - Bad input is answered here with kvs_msg_validate, the function the
 *    workers use, so the router's 400s read exactly like a worker's.
 *  - Single-key commands (Hget Hset Hdel Hexist) are forwarded as the
 *    client's raw payload, and the worker's raw answer is passed back: no
 *    re-encoding on the hot path.
 *  - Multi-key commands (Hmget Hmset Hmdel Hmexist) are split per shard
 *    (one sub-request per shard, sent in parallel) and merged back into the
 *    client's key order. Each shard applies its part atomically; there is
 *    no atomicity across shards.
 *  - Hgetall (and Info) fan out to every shard and k-way merge the pairs
 *    into one key-ordered answer, refused with 413 past limits.max_frame.
 *  - Hscan walks shards one after another. The router's cursor is
 *    'S' + shard (2 bytes, big-endian) + the worker's own cursor.
 *  - A table bound to a topic is placed by its binding's partitioner (the
 *    one its producers use). With `partitioner: none` no function of the
 *    key gives its shard: reads (Hget Hexist Hmget Hmexist) go to every
 *    shard owning one of the table's partitions and the answer is taken
 *    from the shard that has the key; writes are refused (400), since kvs
 *    could not say where a key it wrote belongs, nor find it later beside
 *    the records of the same key the producers place.
 *
 * With users configured, every request is authorized before it is routed
 * (req->who, kvs_auth_check): on the fast path from the peeked table, on
 * the full path after validation, so bad input still gets its 400 and a
 * refused request costs no shard a thing. Auth is the client module's.
 *
 * A request with several parts keeps a route_merge_t; the parts' raw
 * answers are copied in as they arrive and decoded once all are in.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_place.h"
#include "router.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CURSOR_TAG 'S'

typedef struct route_merge_s {
    Kvs__CommandRequest__CommandCase cmd;
    router_t *router;
    uint32_t nparts;
    uint32_t *part_shard; /* shard of each part */
    kvs_buf_t *answers;   /* raw answer payload of each part */
    uint8_t *failed;      /* part failed at the link (answers holds the message) */
    size_t nkeys;
    uint32_t *key_part;  /* multi-key: the part each key went to */
    uint32_t *key_index; /* ... and its index inside that part */
    int anywhere;        /* every part got the whole request: the key may be on any */
} route_merge_t;

/* ---- request lifecycle ---------------------------------------------------- */

#define REQ_POOL_MAX 4096
#define REQ_KEEP_BUF 16384 /* a recycled request keeps a response buffer this small */

router_req_t *router_req_new(router_t *r, router_client_t *cl)
{
    router_req_t *req = r->free_reqs;
    if (req != NULL) {
        r->free_reqs = req->next;
        r->n_free_reqs--;
        kvs_buf_t keep = req->resp;
        memset(req, 0, sizeof(*req));
        req->resp = keep;
        req->resp.len = 0;
    } else if ((req = calloc(1, sizeof(*req))) == NULL) {
        return NULL;
    }
    req->router = r;
    req->client = cl;
    return req;
}

void router_reqs_release(router_t *r)
{
    while (r->free_reqs != NULL) {
        router_req_t *req = r->free_reqs;
        r->free_reqs = req->next;
        kvs_buf_free(&req->resp);
        free(req);
    }
    r->n_free_reqs = 0;
}

static void merge_free(route_merge_t *m)
{
    if (m == NULL)
        return;
    for (uint32_t i = 0; i < m->nparts; i++)
        kvs_buf_free(&m->answers[i]);
    free(m->answers);
    free(m->part_shard);
    free(m->failed);
    free(m->key_part);
    free(m->key_index);
    free(m);
}

void router_req_free(router_req_t *req)
{
    router_t *r = req->router;
    merge_free(req->merge);
    req->merge = NULL;
    if (req->resp.cap > REQ_KEEP_BUF)
        kvs_buf_free(&req->resp);
    if (r->n_free_reqs >= REQ_POOL_MAX) {
        kvs_buf_free(&req->resp);
        free(req);
        return;
    }
    req->next = r->free_reqs;
    r->free_reqs = req;
    r->n_free_reqs++;
}

static void req_complete(router_req_t *req)
{
    req->done = 1;
    merge_free(req->merge);
    req->merge = NULL;
    if (req->client == NULL) {
        if (!req->in_route)
            router_req_free(req); /* its client left; nobody wants the answer */
        return;
    }
    if (!req->in_route)
        router_client_req_done(req->client, req);
}

void router_req_finish_status(router_req_t *req, uint32_t status, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    req->resp.len = 0;
    if (kvs_msg_append_status(&req->resp, status, "%s", text) != 0)
        req->resp.len = 0; /* out of memory: the client gets nothing and is closed */
    req_complete(req);
}

/* ---- answers ----------------------------------------------------------------- */

static void set_frame(kvs_buf_t *b, const uint8_t *payload, size_t len)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    b->len = 0;
    if (kvs_buf_append(b, hdr, sizeof(hdr)) != 0 || kvs_buf_append(b, payload, len) != 0)
        b->len = 0;
}

static void merge_finish(router_req_t *req);

void router_route_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                        const char *failure)
{
    router_req_t *req = ctx;
    if (req == NULL)
        return; /* an internal probe */
    route_merge_t *m = req->merge;
    if (m == NULL) { /* single part: pass the worker's answer through */
        if (failure != NULL)
            router_req_finish_status(req, KVS_STATUS_UNAVAILABLE, "%s", failure);
        else if (req->client == NULL || req->in_route ||
                 !router_client_deliver(req->client, req, payload, len)) {
            set_frame(&req->resp, payload, len);
            req_complete(req);
        }
        return;
    }
    kvs_buf_t *a = &m->answers[part];
    a->len = 0;
    if (failure != NULL) {
        m->failed[part] = 1;
        kvs_buf_append(a, failure, strlen(failure) + 1);
    } else {
        kvs_buf_append(a, payload, len);
    }
    if (--req->parts_left == 0)
        merge_finish(req);
}

/* The failure message of part `i`, with a warning when it was one part of
 * a write split over shards: each shard applies its own part, so the other
 * shards may have stored theirs whatever this one says. */
static void finish_part_failure(router_req_t *req, uint32_t i, uint32_t status, const char *msg)
{
    route_merge_t *m = req->merge;
    int split_write = m->nparts > 1 && (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET ||
                                        m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMDEL);
    if (split_write)
        router_req_finish_status(req, status,
                                 "%s (for the keys on shard %u; %s spans %u shards and is not "
                                 "atomic across them: other shards may have applied their keys)",
                                 msg, m->part_shard[i], kvs_msg_command_name(m->cmd), m->nparts);
    else
        router_req_finish_status(req, status, "%s", msg);
}

/* Info stands in for a shard that could not answer with a single pair,
 * "shard.<id>.unavailable" = 1, so the rest of the cluster is still shown
 * (Info is what an operator asks for when something is down). */
static Kvs__CommandResponse *info_unavailable(kvs_arena_t *arena, uint32_t shard)
{
    Kvs__CommandResponse *r = kvs_arena_alloc(arena, sizeof(*r));
    Kvs__Kvpair *p = kvs_arena_alloc(arena, sizeof(*p));
    Kvs__Kvpair **pp = kvs_arena_alloc(arena, sizeof(*pp));
    Kvs__Value *v = kvs_arena_alloc(arena, sizeof(*v));
    char *key = kvs_arena_alloc(arena, 32);
    if (r == NULL || p == NULL || pp == NULL || v == NULL || key == NULL)
        return NULL;
    kvs__command_response__init(r);
    kvs__kvpair__init(p);
    kvs__value__init(v);
    int n = snprintf(key, 32, "shard.%03u.unavailable", shard);
    v->kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    v->integer_value = 1;
    p->key.data = (uint8_t *)key;
    p->key.len = (size_t)n;
    p->value = v;
    pp[0] = p;
    r->status = KVS_STATUS_OK;
    r->n_pairs = 1;
    r->pairs = pp;
    return r;
}

/* Decodes every part's answer. If a part failed (or answered non-200),
 * finishes `req` with that status and returns NULL; for Info such a part
 * becomes info_unavailable instead. */
static Kvs__CommandResponse **decode_parts(router_req_t *req, kvs_arena_t *arena)
{
    route_merge_t *m = req->merge;
    Kvs__CommandResponse **rs = kvs_arena_alloc(arena, m->nparts * sizeof(*rs));
    if (rs == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < m->nparts; i++) {
        if (m->cmd == KVS__COMMAND_REQUEST__COMMAND_INFO &&
            (m->failed[i] ||
             (rs[i] = kvs__command_response__unpack(&arena->pb, m->answers[i].len,
                                                    m->answers[i].data)) == NULL ||
             rs[i]->status != KVS_STATUS_OK)) {
            if ((rs[i] = info_unavailable(arena, m->part_shard[i])) == NULL) {
                router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
                return NULL;
            }
            continue;
        }
        if (m->failed[i]) {
            finish_part_failure(req, i, KVS_STATUS_UNAVAILABLE, (const char *)m->answers[i].data);
            return NULL;
        }
        rs[i] = kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        if (rs[i] == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u sent an answer that is not a CommandResponse",
                                     m->part_shard[i]);
            return NULL;
        }
        if (rs[i]->status != KVS_STATUS_OK) {
            finish_part_failure(req, i, rs[i]->status, rs[i]->message);
            return NULL;
        }
    }
    return rs;
}

/* Packs `resp` as the client's answer, or 413 when it is too large. */
static void finish_packed(router_req_t *req, Kvs__CommandResponse *resp, const char *cmd,
                          const char *hint)
{
    router_t *r = req->merge->router;
    req->resp.len = 0;
    int rc = kvs_msg_append(&req->resp, &resp->base, r->cfg->max_frame);
    if (rc == KVS_ETOOBIG) {
        router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                 "%s answer would exceed limits.max_frame (%llu bytes); %s", cmd,
                                 (unsigned long long)r->cfg->max_frame, hint);
        return;
    }
    if (rc != 0) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    req_complete(req);
}

static void merge_keys(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    route_merge_t *m = req->merge;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    out.status = KVS_STATUS_OK;
    out.n_values = m->nkeys;
    out.values = kvs_arena_alloc(arena, m->nkeys * sizeof(*out.values));
    if (out.values == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    for (size_t i = 0; i < m->nkeys; i++) {
        Kvs__CommandResponse *pr = rs[m->key_part[i]];
        if (m->key_index[i] >= pr->n_values) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u answered %zu values for more keys",
                                     m->part_shard[m->key_part[i]], pr->n_values);
            return;
        }
        out.values[i] = pr->values[m->key_index[i]];
    }
    finish_packed(req, &out, kvs_msg_command_name(m->cmd), "ask for fewer keys per request");
}

static int key_cmp(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->data, b->data, n);
    return c != 0 ? c : (a->len > b->len) - (a->len < b->len);
}

/* k-way merge of the shards' key-ordered pairs. */
static void merge_pairs(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    route_merge_t *m = req->merge;
    size_t total = 0;
    for (uint32_t i = 0; i < m->nparts; i++)
        total += rs[i]->n_pairs;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    out.status = KVS_STATUS_OK;
    out.pairs = kvs_arena_alloc(arena, (total ? total : 1) * sizeof(*out.pairs));
    size_t *pos = kvs_arena_alloc(arena, m->nparts * sizeof(*pos));
    if (out.pairs == NULL || pos == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    memset(pos, 0, m->nparts * sizeof(*pos));
    for (out.n_pairs = 0; out.n_pairs < total; out.n_pairs++) {
        uint32_t best = UINT32_MAX;
        for (uint32_t i = 0; i < m->nparts; i++) {
            if (pos[i] == rs[i]->n_pairs)
                continue;
            if (best == UINT32_MAX ||
                key_cmp(&rs[i]->pairs[pos[i]]->key, &rs[best]->pairs[pos[best]]->key) < 0)
                best = i;
        }
        out.pairs[out.n_pairs] = rs[best]->pairs[pos[best]++];
    }
    finish_packed(req, &out, kvs_msg_command_name(m->cmd), "read the table in pages with Hscan");
}

/* Rewrites a worker's Hscan cursor into the router's. */
static void merge_scan(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    route_merge_t *m = req->merge;
    Kvs__CommandResponse *w = rs[0];
    uint32_t shard = m->part_shard[0], next = shard;
    ProtobufCBinaryData inner = w->cursor;
    if (inner.len == 0) {
        next = shard + 1; /* this shard is done */
        inner.data = NULL;
    }
    if (next < m->router->shards) {
        uint8_t *c = kvs_arena_alloc(arena, 3 + inner.len);
        if (c == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
            return;
        }
        c[0] = CURSOR_TAG;
        c[1] = (uint8_t)(next >> 8);
        c[2] = (uint8_t)next;
        if (inner.len > 0)
            memcpy(c + 3, inner.data, inner.len);
        w->cursor.data = c;
        w->cursor.len = 3 + inner.len;
    } else {
        w->cursor.len = 0;
        w->cursor.data = NULL;
    }
    finish_packed(req, w, "Hscan", "ask for a smaller count");
}

/* ---- partitioner none: merging "who has it" ----------------------------------- */

/* True when a part's answer to Hget or Hexist says the key is there. */
static int found_one(Kvs__CommandRequest__CommandCase cmd, const Kvs__CommandResponse *r)
{
    if (r->status != KVS_STATUS_OK)
        return 0;
    if (cmd != KVS__COMMAND_REQUEST__COMMAND_HEXIST)
        return 1;
    return r->n_values == 1 && r->values[0]->kind_case == KVS__VALUE__KIND_BOOL_VALUE &&
           r->values[0]->bool_value;
}

/* Hget or Hexist asked of every owning shard: the answer of the shard that
 * has the key, passed through as it came. Otherwise an error a shard gave
 * (other than "not found"), else 503 if a shard could not answer (the key
 * may be there), else one shard's "not found" answer. */
static void merge_found_one(router_req_t *req, kvs_arena_t *arena)
{
    route_merge_t *m = req->merge;
    uint32_t miss = UINT32_MAX, failed = UINT32_MAX;
    Kvs__CommandResponse *error = NULL;
    for (uint32_t i = 0; i < m->nparts; i++) {
        if (m->failed[i]) {
            failed = failed == UINT32_MAX ? i : failed;
            continue;
        }
        Kvs__CommandResponse *r =
            kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        if (r == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u sent an answer that is not a CommandResponse",
                                     m->part_shard[i]);
            return;
        }
        if (found_one(m->cmd, r)) {
            set_frame(&req->resp, m->answers[i].data, m->answers[i].len);
            req_complete(req);
            return;
        }
        if (r->status == KVS_STATUS_NOT_FOUND || r->status == KVS_STATUS_OK)
            miss = miss == UINT32_MAX ? i : miss;
        else if (error == NULL)
            error = r;
    }
    if (error != NULL)
        router_req_finish_status(req, error->status, "%s", error->message);
    else if (failed != UINT32_MAX)
        router_req_finish_status(req, KVS_STATUS_UNAVAILABLE,
                                 "%s (the table has partitioner: none, so its keys may be on any "
                                 "shard that owns one of its partitions; whether this one is "
                                 "stored is unknown until that shard answers)",
                                 (const char *)m->answers[failed].data);
    else {
        set_frame(&req->resp, m->answers[miss].data, m->answers[miss].len);
        req_complete(req);
    }
}

/* Hmget or Hmexist asked of every owning shard, each answering for every
 * key: per key, the value of the first shard that has it (Hmget: a Value
 * with a kind; Hmexist: true), else the first shard's "missing". */
static void merge_found_keys(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    route_merge_t *m = req->merge;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    out.status = KVS_STATUS_OK;
    out.n_values = m->nkeys;
    out.values = kvs_arena_alloc(arena, m->nkeys * sizeof(*out.values));
    if (out.values == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    for (uint32_t p = 0; p < m->nparts; p++)
        if (rs[p]->n_values != m->nkeys) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u answered %zu values for %zu keys", m->part_shard[p],
                                     rs[p]->n_values, m->nkeys);
            return;
        }
    for (size_t i = 0; i < m->nkeys; i++) {
        out.values[i] = rs[0]->values[i];
        for (uint32_t p = 0; p < m->nparts; p++) {
            const Kvs__Value *v = rs[p]->values[i];
            if (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMEXIST
                    ? v->kind_case == KVS__VALUE__KIND_BOOL_VALUE && v->bool_value
                    : v->kind_case != KVS__VALUE__KIND__NOT_SET) {
                out.values[i] = rs[p]->values[i];
                break;
            }
        }
    }
    finish_packed(req, &out, kvs_msg_command_name(m->cmd), "ask for fewer keys per request");
}

static void merge_finish(router_req_t *req)
{
    route_merge_t *m = req->merge;
    kvs_arena_t *arena = &m->router->merge_arena;
    if (m->anywhere && (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HGET ||
                        m->cmd == KVS__COMMAND_REQUEST__COMMAND_HEXIST)) {
        merge_found_one(req, arena);
        kvs_arena_reset(arena);
        return;
    }
    Kvs__CommandResponse **rs = decode_parts(req, arena);
    if (rs != NULL && m->anywhere) {
        merge_found_keys(req, rs, arena);
    } else if (rs != NULL) {
        switch (m->cmd) {
        case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
        case KVS__COMMAND_REQUEST__COMMAND_INFO:
            merge_pairs(req, rs, arena);
            break;
        case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
            merge_scan(req, rs, arena);
            break;
        default:
            merge_keys(req, rs, arena);
            break;
        }
    }
    kvs_arena_reset(arena);
}

/* ---- sending -------------------------------------------------------------------- */

static route_merge_t *merge_new(router_t *r, Kvs__CommandRequest__CommandCase cmd, uint32_t nparts,
                                size_t nkeys)
{
    route_merge_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->cmd = cmd;
    m->router = r;
    m->nparts = nparts;
    m->nkeys = nkeys;
    m->part_shard = calloc(nparts, sizeof(*m->part_shard));
    m->answers = calloc(nparts, sizeof(*m->answers));
    m->failed = calloc(nparts, 1);
    m->key_part = calloc(nkeys ? nkeys : 1, sizeof(*m->key_part));
    m->key_index = calloc(nkeys ? nkeys : 1, sizeof(*m->key_index));
    if (!m->part_shard || !m->answers || !m->failed || !m->key_part || !m->key_index) {
        merge_free(m);
        return NULL;
    }
    return m;
}

/* Sends part `part` to `shard`; a down link fails the part at once. */
static void send_part(router_t *r, router_req_t *req, uint32_t part, uint32_t shard,
                      const ProtobufCMessage *msg, const uint8_t *raw, size_t rawlen)
{
    router_link_t *l = &r->links[shard];
    int rc = msg != NULL ? router_link_send_msg(l, msg, req, part)
                         : router_link_send(l, raw, rawlen, req, part);
    if (rc == 0)
        return;
    char why[400];
    if (rc == KVS_ECLOSED)
        snprintf(why, sizeof(why), "shard %u is unavailable: %s; retry shortly", shard,
                 l->last_error[0] ? l->last_error : "its connection is closing");
    else if (rc == KVS_ELIMIT)
        snprintf(why, sizeof(why),
                 "shard %u is overloaded: %zu bytes of requests are waiting for it "
                 "(limits.client_output); nothing was sent, retry shortly",
                 shard, l->max_queue);
    else
        snprintf(why, sizeof(why), "shard %u: cannot forward: %s", shard, kvs_strerror(rc));
    router_route_reply(req, part, NULL, 0, why);
}

/* The binding of the table named table[0..len), or NULL (unbound). */
static const kvs_binding_t *table_binding(const router_t *r, const void *table, size_t len)
{
    return r->cfg->n_bindings > 0 ? kvs_config_binding_n(r->cfg, table, len) : NULL;
}

/* The shard of `key` in a table with binding `b` (NULL: bound to no topic,
 * placed by murmur2 over cluster.partitions). A table bound to a topic is
 * placed by the topic's partition count and its producers' partitioner, so
 * a key lands on the shard that ingests its partition. b->partitioner must
 * not be none. */
static uint32_t place_key(const router_t *r, const kvs_binding_t *b, const void *key, size_t len)
{
    if (b == NULL)
        return kvs_place_key_shard(key, len, r->cfg->partitions, r->shards);
    uint32_t partitions = b->partitions > 0 ? b->partitions : r->cfg->partitions;
    return kvs_place_shard(kvs_place_partition_by(b->partitioner, key, len, partitions), r->shards);
}

/* The keys of a multi-key request, whatever its type. */
static size_t request_keys(const Kvs__CommandRequest *q, const ProtobufCBinaryData **keys)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        *keys = q->hmget->keys;
        return q->hmget->n_keys;
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        *keys = q->hmdel->keys;
        return q->hmdel->n_keys;
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        *keys = q->hmexist->keys;
        return q->hmexist->n_keys;
    default:
        *keys = NULL;
        return 0;
    }
}

static const ProtobufCBinaryData *nth_key(const Kvs__CommandRequest *q, size_t i)
{
    const ProtobufCBinaryData *keys;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET)
        return &q->hmset->pairs[i]->key;
    request_keys(q, &keys);
    return &keys[i];
}

static size_t nkeys_of(const Kvs__CommandRequest *q)
{
    const ProtobufCBinaryData *keys;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET)
        return q->hmset->n_pairs;
    return request_keys(q, &keys);
}

/* Builds the sub-request holding keys sel[0..n) of `q`, in arena memory. */
static int build_subrequest(router_t *r, const Kvs__CommandRequest *q, const size_t *sel, size_t n,
                            Kvs__CommandRequest *sub)
{
    kvs_arena_t *a = &r->arena;
    kvs__command_request__init(sub);
    sub->command_case = q->command_case;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET) {
        Kvs__Hmset *m = kvs_arena_alloc(a, sizeof(*m));
        Kvs__Kvpair **pairs = kvs_arena_alloc(a, n * sizeof(*pairs));
        if (m == NULL || pairs == NULL)
            return -ENOMEM;
        kvs__hmset__init(m);
        m->table = q->hmset->table;
        for (size_t i = 0; i < n; i++)
            pairs[i] = q->hmset->pairs[sel[i]];
        m->pairs = pairs;
        m->n_pairs = n;
        sub->hmset = m;
        return 0;
    }
    /* Hmget, Hmdel and Hmexist have the same shape: {table, repeated keys}. */
    Kvs__Hmget *m = kvs_arena_alloc(a, sizeof(*m));
    ProtobufCBinaryData *keys = kvs_arena_alloc(a, n * sizeof(*keys));
    if (m == NULL || keys == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        keys[i] = *nth_key(q, sel[i]);
    const ProtobufCMessageDescriptor *d =
        q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMGET   ? &kvs__hmget__descriptor
        : q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMDEL ? &kvs__hmdel__descriptor
                                                                 : &kvs__hmexist__descriptor;
    protobuf_c_message_init(d, m);
    m->table = (char *)kvs_msg_request_table(q);
    m->keys = keys;
    m->n_keys = n;
    sub->hmget = m; /* the oneof members share storage */
    return 0;
}

/* Splits a multi-key request on a table with binding `b` (or NULL) per shard. */
static void route_multi(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                        const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    size_t n = nkeys_of(q);
    uint32_t *shard_of = kvs_arena_alloc(&r->arena, n * sizeof(*shard_of));
    uint32_t *part_of_shard = kvs_arena_alloc(&r->arena, r->shards * sizeof(*part_of_shard));
    if (shard_of == NULL || part_of_shard == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    uint32_t nparts = 0;
    for (uint32_t s = 0; s < r->shards; s++)
        part_of_shard[s] = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        const ProtobufCBinaryData *key = nth_key(q, i);
        shard_of[i] = place_key(r, b, key->data, key->len);
        if (part_of_shard[shard_of[i]] == UINT32_MAX)
            part_of_shard[shard_of[i]] = nparts++;
    }
    if (nparts == 1) { /* all keys on one shard: forward as is */
        req->parts_left = 1;
        send_part(r, req, 0, shard_of[0], NULL, raw, rawlen);
        return;
    }
    route_merge_t *m = merge_new(r, q->command_case, nparts, n);
    size_t *sel = kvs_arena_alloc(&r->arena, n * sizeof(*sel));
    if (m == NULL || sel == NULL) {
        merge_free(m);
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    req->merge = m;
    req->parts_left = nparts;
    uint32_t *count = kvs_arena_alloc(&r->arena, nparts * sizeof(*count));
    if (count == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    memset(count, 0, nparts * sizeof(*count));
    for (size_t i = 0; i < n; i++) {
        uint32_t p = part_of_shard[shard_of[i]];
        m->part_shard[p] = shard_of[i];
        m->key_part[i] = p;
        m->key_index[i] = count[p]++;
    }
    for (uint32_t p = 0; p < nparts; p++) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (m->key_part[i] == p)
                sel[k++] = i;
        Kvs__CommandRequest sub;
        if (build_subrequest(r, q, sel, k, &sub) != 0)
            router_route_reply(req, p, NULL, 0, "router out of memory");
        else
            send_part(r, req, p, m->part_shard[p], &sub.base, NULL, 0);
    }
}

/* Hgetall and Info: the same request to every shard, pairs merged. */
static void route_fanout(router_t *r, router_req_t *req, Kvs__CommandRequest__CommandCase cmd,
                         const uint8_t *raw, size_t rawlen)
{
    req->reserve = r->cfg->max_frame; /* the answer may be as large as a frame */
    route_merge_t *m = merge_new(r, cmd, r->shards, 0);
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    req->merge = m;
    req->parts_left = r->shards;
    for (uint32_t s = 0; s < r->shards; s++) {
        m->part_shard[s] = s;
        send_part(r, req, s, s, NULL, raw, rawlen);
    }
}

static void route_hscan(router_t *r, router_req_t *req, const Kvs__CommandRequest *q)
{
    const ProtobufCBinaryData *c = &q->hscan->cursor;
    uint32_t shard = 0;
    req->reserve = r->cfg->max_frame;
    if (c->len > 0) {
        if (c->len < 3 || c->data[0] != CURSOR_TAG ||
            (shard = (uint32_t)c->data[1] << 8 | c->data[2]) >= r->shards) {
            router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                     "Hscan.cursor is not a cursor this cluster returned; start "
                                     "with an empty cursor");
            return;
        }
    }
    route_merge_t *m = merge_new(r, KVS__COMMAND_REQUEST__COMMAND_HSCAN, 1, 0);
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    m->part_shard[0] = shard;
    req->merge = m;
    req->parts_left = 1;
    Kvs__Hscan inner = *q->hscan;
    inner.cursor.data = c->len > 3 ? c->data + 3 : NULL;
    inner.cursor.len = c->len > 3 ? c->len - 3 : 0;
    Kvs__CommandRequest sub = KVS__COMMAND_REQUEST__INIT;
    sub.command_case = KVS__COMMAND_REQUEST__COMMAND_HSCAN;
    sub.hscan = &inner;
    send_part(r, req, 0, shard, &sub.base, NULL, 0);
}

static const ProtobufCBinaryData *single_key(const Kvs__CommandRequest *q)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        return &q->hget->key;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        return &q->hset->pair->key; /* validated: the pair is there */
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
        return &q->hdel->key;
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        return &q->hexist->key;
    default:
        return NULL;
    }
}

/* A read of a `partitioner: none` table: the whole request goes to every
 * shard owning one of the table's partitions, and the answers are merged
 * by who has each key. */
static void route_anywhere(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                           const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    uint32_t partitions = b->partitions > 0 ? b->partitions : r->cfg->partitions;
    uint32_t n = kvs_place_owning_shards(partitions, r->shards);
    if (n == 1) { /* one shard owns every partition: forward as is */
        req->parts_left = 1;
        send_part(r, req, 0, 0, NULL, raw, rawlen);
        return;
    }
    route_merge_t *m = merge_new(r, q->command_case, n, nkeys_of(q));
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    m->anywhere = 1;
    req->merge = m;
    req->parts_left = n;
    for (uint32_t s = 0; s < n; s++) {
        m->part_shard[s] = s;
        send_part(r, req, s, s, NULL, raw, rawlen);
    }
}

/* Requests on a table bound with `partitioner: none` that need placement:
 * point reads ask every owning shard; writes are refused. Returns 0 when
 * `q` needs no placement (Hgetall, Hscan) and takes the usual path. */
static int route_unplaced(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                          const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        route_anywhere(r, req, q, b, raw, rawlen);
        return 1;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        router_req_finish_status(
            req, KVS_STATUS_BAD_REQUEST,
            "%s: table \"%s\" is bound to Kafka topic \"%s\" with partitioner: none, so its "
            "producers choose each key's partition and kvs cannot place a write; produce it to "
            "topic \"%s\" instead (or bind the table with the partitioner its producers use)",
            kvs_msg_command_name(q->command_case), b->table, b->topic, b->topic);
        return 1;
    default:
        return 0;
    }
}

/* Whether req's client may run `cmd` on the table (NULL: none); if not,
 * answers 401 or 403. */
static int route_allowed(router_req_t *req, Kvs__CommandRequest__CommandCase cmd, const void *table,
                         size_t tlen)
{
    char msg[512];
    uint32_t st = kvs_auth_check(req->who, cmd, table, tlen, msg, sizeof(msg));
    if (st == KVS_STATUS_OK)
        return 1;
    router_req_finish_status(req, st, "%s", msg);
    return 0;
}

static void route_decoded(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                          const uint8_t *raw, size_t rawlen)
{
    const char *table = kvs_msg_request_table(q);
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_AUTH) {
        if (r->auth != NULL && req->client != NULL)
            router_client_auth(req->client, req, q->auth);
        else
            router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                     "Auth: this server has no users configured (users: in "
                                     "config.yaml); every client may do everything");
        return;
    }
    if (req->who != NULL &&
        !route_allowed(req, q->command_case, table, table != NULL ? strlen(table) : 0))
        return;
    const kvs_binding_t *b = table != NULL ? table_binding(r, table, strlen(table)) : NULL;
    if (b != NULL && b->partitioner == KVS_PARTITIONER_NONE &&
        route_unplaced(r, req, q, b, raw, rawlen))
        return;
    const ProtobufCBinaryData *key = single_key(q);
    if (key != NULL) {
        req->parts_left = 1;
        send_part(r, req, 0, place_key(r, b, key->data, key->len), NULL, raw, rawlen);
        return;
    }
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_PING:
        router_req_finish_status(req, KVS_STATUS_OK, "PONG");
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
    case KVS__COMMAND_REQUEST__COMMAND_INFO:
        route_fanout(r, req, q->command_case, raw, rawlen);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
        route_hscan(r, req, q);
        break;
    default:
        route_multi(r, req, q, b, raw, rawlen);
        break;
    }
}

void router_route(router_t *r, router_req_t *req, const uint8_t *payload, size_t len)
{
    char msg[512];
    kvs_peek_t pk;
    req->in_route = 1;
    if (kvs_msg_peek(payload, len, &pk)) { /* hot path: valid single-key request */
        if (req->who != NULL && !route_allowed(req, pk.cmd, pk.table, pk.table_len)) {
            req->in_route = 0;
            return;
        }
        const kvs_binding_t *b = table_binding(r, pk.table, pk.table_len);
        if (b == NULL || b->partitioner != KVS_PARTITIONER_NONE) {
            req->parts_left = 1;
            send_part(r, req, 0, place_key(r, b, pk.key, pk.key_len), NULL, payload, len);
            req->in_route = 0;
            return;
        } /* partitioner none: the full path asks every owning shard */
    }
    Kvs__CommandRequest *q = kvs_msg_decode_request(&r->arena, payload, len);
    if (q == NULL) {
        router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                 "frame payload (%zu bytes) is not a valid kvs.CommandRequest",
                                 len);
    } else {
        uint32_t st = kvs_msg_validate(q, msg, sizeof(msg));
        if (st == KVS_STATUS_OK)
            st = kvs_msg_check_strings(payload, len, msg, sizeof(msg));
        if (st != KVS_STATUS_OK)
            router_req_finish_status(req, st, "%s", msg);
        else
            route_decoded(r, req, q, payload, len);
    }
    kvs_arena_reset(&r->arena);
    req->in_route = 0;
}
