/*
 * kvs_freshreq: the freshness rules over the partitions one read touches
 * (see kvs_freshreq.h). The rules themselves are kvs_fresh_decide's; this
 * module only finds the partitions, their positions and the worst verdict.
 */
#include "kvs_freshreq.h"
#include "kvs_place.h"
#include "kvs_reads.h"

#include <errno.h>
#include <string.h>

int kvs_freshreq_applies(Kvs__CommandRequest__CommandCase cmd)
{
    return kvs_reads_is_read(cmd);
}

void kvs_freshreq_init(kvs_freshreq_t *c, const kvs_config_t *cfg, uint32_t shard,
                       const kvs_binding_t *b, kvs_freshreq_lookup_fn lookup, void *arg)
{
    memset(c, 0, sizeof(*c));
    c->b = b;
    c->partitions = b->partitions > 0 ? b->partitions : cfg->partitions;
    c->shard = shard;
    c->shards = cfg->shards;
    c->max_lag = cfg->kafka_max_lag;
    c->lookup = lookup;
    c->arg = arg;
    c->need = -1;
    c->verdict = KVS_FRESH_SERVE;
}

static int64_t need_of(const kvs_freshreq_t *c, uint32_t p)
{
    size_t lo = 0, hi = c->npos;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->pos[mid].partition == p)
            return c->pos[mid].offset;
        if (c->pos[mid].partition < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

void kvs_freshreq_partition(kvs_freshreq_t *c, uint32_t p)
{
    kvs_fresh_part_t st = {.next = -1, .end = -1};
    uint64_t n;
    if (c->verdict >= KVS_FRESH_REFUSED)
        return; /* refused already: nothing changes that */
    if (c->lookup(c->arg, c->b, p, &st) != 0)
        return; /* not a partition of this copy: nothing here depends on it */
    int64_t need = need_of(c, p);
    kvs_fresh_verdict_t v = kvs_fresh_decide(&st, c->max_lag, need, c->stale, &n);
    if (v == KVS_FRESH_AHEAD && c->ahead != NULL)
        c->ahead(c->arg, c->b, p);
    if (v > c->verdict) {
        c->verdict = v;
        c->partition = p;
        c->count = n;
        c->need = need;
        c->state = st;
    }
}

static void owned_partitions(kvs_freshreq_t *c)
{
    for (uint32_t p = c->shard; p < c->partitions && c->verdict < KVS_FRESH_REFUSED; p += c->shards)
        kvs_freshreq_partition(c, p);
}

void kvs_freshreq_key(kvs_freshreq_t *c, const void *key, size_t len)
{
    if (c->b->partitioner == KVS_PARTITIONER_NONE) {
        owned_partitions(c);
        return;
    }
    kvs_freshreq_partition(c, kvs_place_partition_by(c->b->partitioner, key, len, c->partitions));
}

/* Collects the entries of b's topic from a min_position token. */
static int collect_positions(kvs_freshreq_t *c, const ProtobufCBinaryData *tok, kvs_arena_t *arena)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    size_t cap = 0;
    kvs_pos_entry_t *v = NULL;
    if (tok->len == 0)
        return 0;
    size_t tlen = strlen(c->b->topic);
    if (kvs_pos_iter_init(&it, tok->data, tok->len) != 0)
        return 0; /* validated before: cannot happen */
    while (kvs_pos_iter_next(&it, &e) == 1) {
        if (e.topic_len != tlen || memcmp(e.topic, c->b->topic, tlen) != 0)
            continue;
        /* Partitions come in increasing order: from here on none is one
         * the topic has, and none can hold a read back. A made-up token's
         * million entries cost nothing past this point. */
        if (e.partition >= c->partitions)
            break;
        if (c->npos == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            kvs_pos_entry_t *nv = kvs_arena_alloc(arena, ncap * sizeof(*nv));
            if (nv == NULL)
                return -ENOMEM;
            if (c->npos > 0)
                memcpy(nv, v, c->npos * sizeof(*v));
            v = nv;
            cap = ncap;
        }
        v[c->npos++] = e;
    }
    c->pos = v;
    return 0;
}

/* The partitions of many keys, each checked once however many keys it
 * holds: a request of a hundred thousand keys costs a hash per key and a
 * lookup per partition, not a lookup per key (or, with no partitioner, a
 * walk of every owned partition per key). */
static int keys_partitions(kvs_freshreq_t *c, const Kvs__Hmget *m, kvs_arena_t *arena)
{
    if (m->n_keys == 0)
        return 0;
    if (c->b->partitioner == KVS_PARTITIONER_NONE) {
        owned_partitions(c);
        return 0;
    }
    size_t bytes = (c->partitions + 7) / 8;
    uint8_t *seen = kvs_arena_alloc(arena, bytes);
    if (seen == NULL)
        return -ENOMEM;
    memset(seen, 0, bytes);
    for (size_t i = 0; i < m->n_keys && c->verdict < KVS_FRESH_REFUSED; i++) {
        uint32_t p = kvs_place_partition_by(c->b->partitioner, m->keys[i].data, m->keys[i].len,
                                            c->partitions);
        if (seen[p / 8] & (1u << (p % 8)))
            continue;
        seen[p / 8] |= (uint8_t)(1u << (p % 8));
        kvs_freshreq_partition(c, p);
    }
    return 0;
}

int kvs_freshreq_request(kvs_freshreq_t *c, const Kvs__CommandRequest *req, kvs_arena_t *arena)
{
    int rc = collect_positions(c, &req->min_position, arena);
    if (rc != 0)
        return rc;
    c->stale = req->accept_stale;
    switch (req->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        kvs_freshreq_key(c, req->hget->key.data, req->hget->key.len);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        kvs_freshreq_key(c, req->hexist->key.data, req->hexist->key.len);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        /* the two share their shape: {table, repeated keys} */
        return keys_partitions(c, req->hmget, arena);
    default: /* Hgetall, Hscan, Hlen: the whole table */
        owned_partitions(c);
        break;
    }
    return 0;
}
