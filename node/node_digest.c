/*
 * node_digest: Digest {table} (see kvs.proto), computed off the loop.
 *
 * A digest reads a whole table, which may take seconds: it runs in libuv's
 * thread pool (uv_queue_work) over a node_store view, one LMDB read
 * snapshot, so the worker keeps serving and writing meanwhile. The same
 * snapshot gives the position: the next offset stored for each partition
 * of the table's topic that this shard owns (node_ingest keeps them in
 * __kvs with the data, in the same transactions), so digest and position
 * describe exactly the same state.
 *
 * Hashing: XXH3-128 (kvs_hash) over every pair in key order, key and
 * stored value bytes each length-prefixed. Replicas store the same value
 * bytes for the same records (ingestion encodes a record the same way
 * everywhere), so equal positions and equal data give equal digests.
 *
 * Bounds: one digest at a time per worker (another is answered 503: its
 * cost is a thread and a read snapshot, which also holds LMDB map growth
 * off while it lasts); the request waits in a slot (node_slot), counted
 * against its connection's output limits. At shutdown a running digest
 * stops at the next key and is answered 503.
 *
 * Threads: the job's fields are written by the loop before uv_queue_work
 * and read back after its completion callback; `cancel` is the only field
 * both touch while it runs (an atomic).
 */
#include "node_digest.h"
#include "kvs_err.h"
#include "kvs_hash.h"
#include "kvs_log.h"
#include "kvs_place.h"
#include "kvs_pos.h"
#include "kvs_resp.h"
#include "kvs_schema.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct digest_job_s {
    uv_work_t work;
    node_digest_t *d;
    node_slot_t *slot;
    node_store_view_t *view;
    const kvs_binding_t *b; /* NULL: bound to no topic */
    char table[KVS_MAX_TABLE + 1];
    uint32_t nparts;
    uint32_t *parts; /* the topic's partitions this shard owns */
    int64_t *next;   /* ... and their next offsets in the snapshot (-1: none) */
    kvs_hash_t *hash;
    uint8_t digest[KVS_HASH_LEN];
    uint64_t keys;
    int rc;
} digest_job_t;

struct node_digest_s {
    uv_loop_t *loop;
    node_store_t *store;
    const kvs_config_t *cfg;
    uint32_t shard;
    digest_job_t *running;
    atomic_int cancel;
};

node_digest_t *node_digest_new(uv_loop_t *loop, node_store_t *store, const kvs_config_t *cfg,
                               uint32_t shard)
{
    node_digest_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->loop = loop;
    d->store = store;
    d->cfg = cfg;
    d->shard = shard;
    atomic_init(&d->cancel, 0);
    return d;
}

static void job_free(digest_job_t *j)
{
    free(j->parts);
    free(j->next);
    kvs_hash_free(j->hash);
    free(j);
}

/* ---- the thread ----------------------------------------------------------------- */

static int hash_pair(void *arg, node_slice_t key, node_slice_t val)
{
    digest_job_t *j = arg;
    if (atomic_load_explicit(&j->d->cancel, memory_order_relaxed)) {
        j->rc = -ECANCELED;
        return 1;
    }
    kvs_hash_field(j->hash, key.p, key.len);
    kvs_hash_field(j->hash, val.p, val.len);
    j->keys++;
    return 0;
}

static void digest_work(uv_work_t *w)
{
    digest_job_t *j = w->data;
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    node_slice_t v;
    kvs_schema_offsets_t o;
    if ((j->rc = node_store_view_begin(j->view)) != 0)
        return;
    for (uint32_t i = 0; i < j->nparts; i++) { /* the offsets records: kvs_schema */
        j->next[i] = kvs_schema_offsets_key(key, sizeof(key), j->b->topic, (int32_t)j->parts[i]) > 0 &&
                             node_store_view_meta(j->view, key, &v) == 0 &&
                             kvs_schema_offsets_decode(v.p, v.len, &o) == 0
                         ? o.next
                         : -1;
    }
    int rc = node_store_view_scan(j->view, hash_pair, j);
    if (j->rc == 0)
        j->rc = rc;
    kvs_hash_digest(j->hash, j->digest);
    node_store_view_end(j->view);
}

/* ---- answers -------------------------------------------------------------------- */

/* The snapshot's position: the offset of the last record applied, per
 * owned partition that has one. */
static int job_position(const digest_job_t *j, kvs_buf_t *tok)
{
    kvs_pos_set_t set;
    kvs_pos_set_init(&set);
    int rc = 0;
    for (uint32_t i = 0; rc == 0 && i < j->nparts; i++)
        if (j->next[i] > 0)
            rc = kvs_pos_set_add(&set, j->b->topic, strlen(j->b->topic), j->parts[i],
                                 j->next[i] - 1);
    if (rc == 0)
        rc = kvs_pos_set_encode(&set, tok);
    kvs_pos_set_free(&set);
    return rc;
}

static void answer(digest_job_t *j, kvs_buf_t *out)
{
    kvs_resp_t r;
    uint8_t enc[KVS_HASH_LEN + 8];
    kvs_buf_t tok;
    kvs_buf_init(&tok);
    if (j->rc == 0 && j->b != NULL && job_position(j, &tok) != 0)
        j->rc = -ENOMEM;
    if (j->rc != 0) {
        kvs_msg_append_status(
            out, KVS_STATUS_UNAVAILABLE,
            "Digest of table \"%s\" on shard %u did not complete: %s; retry", j->table, j->d->shard,
            j->rc == -ECANCELED ? "the worker is shutting down" : kvs_strerror(j->rc));
        kvs_buf_free(&tok);
        return;
    }
    kvs_resp_begin(&r, out);
    kvs_resp_status(&r, KVS_STATUS_OK);
    kvs_resp_message(&r, "table \"%s\", shard %u%s%s: %llu keys", j->table, j->d->shard,
                     j->d->cfg->node_name[0] ? ", node " : "", j->d->cfg->node_name,
                     (unsigned long long)j->keys);
    kvs_resp_value(&r, enc, kvs_value_encode_bytes(enc, 0, j->digest, KVS_HASH_LEN));
    kvs_resp_value(&r, enc, kvs_value_encode_int(enc, (int64_t)j->keys));
    kvs_resp_position(&r, tok.data, tok.len);
    if (kvs_resp_end(&r) != 0)
        kvs_msg_append_status(out, KVS_STATUS_INTERNAL, "server out of memory");
    kvs_buf_free(&tok);
}

static void digest_done(uv_work_t *w, int status)
{
    digest_job_t *j = w->data;
    node_digest_t *d = j->d;
    node_store_view_close(j->view);
    if (status != 0 && j->rc == 0)
        j->rc = status;
    answer(j, node_slot_buf(j->slot));
    node_slot_done(j->slot);
    d->running = NULL;
    job_free(j);
}

/* ---- the request ------------------------------------------------------------------ */

/* The job for `table`: its binding and owned partitions. */
static digest_job_t *job_new(node_digest_t *d, const char *table)
{
    digest_job_t *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->d = d;
    j->work.data = j;
    snprintf(j->table, sizeof(j->table), "%s", table);
    j->b = kvs_config_binding(d->cfg, table);
    uint32_t parts = j->b == NULL ? 0 : j->b->partitions ? j->b->partitions : d->cfg->partitions;
    j->parts = calloc(parts ? parts : 1, sizeof(*j->parts));
    j->next = calloc(parts ? parts : 1, sizeof(*j->next));
    j->hash = kvs_hash_new();
    if (j->parts == NULL || j->next == NULL || j->hash == NULL) {
        job_free(j);
        return NULL;
    }
    for (uint32_t p = 0; p < parts; p++)
        if (kvs_place_shard(p, d->cfg->shards) == d->shard)
            j->parts[j->nparts++] = p;
    return j;
}

int node_digest_request(node_digest_t *d, const Kvs__CommandRequest *req, node_defer_fn defer,
                        void *defer_arg, kvs_buf_t *out)
{
    const char *table = req->digest->table;
    if (d == NULL || defer == NULL)
        return kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                     "Digest is not available on this server");
    if (d->running != NULL || atomic_load(&d->cancel))
        return kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                     "shard %u is computing another digest (one at a time); "
                                     "retry shortly",
                                     d->shard);
    digest_job_t *j = job_new(d, table);
    if (j == NULL)
        return -ENOMEM;
    int rc = node_store_view_open(d->store, table, &j->view);
    if (rc == -EAGAIN) {
        job_free(j);
        return kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                     "table \"%s\" is being created on shard %u; retry shortly",
                                     table, d->shard);
    }
    if (rc == 0 && (j->slot = defer(defer_arg, sizeof(*j), 0)) == NULL)
        rc = -ENOMEM;
    if (rc == 0 && (rc = uv_queue_work(d->loop, &j->work, digest_work, digest_done)) != 0) {
        j->rc = rc;
        digest_done(&j->work, 0); /* answers the slot with the error */
        return 0;
    }
    if (rc != 0) {
        node_store_view_close(j->view);
        job_free(j);
        return rc;
    }
    d->running = j;
    return 0;
}

void node_digest_stop(node_digest_t *d)
{
    if (d != NULL)
        atomic_store(&d->cancel, 1);
}

void node_digest_free(node_digest_t *d)
{
    free(d);
}
