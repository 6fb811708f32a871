/*
 * router_session: per-connection positions (see router_session.h). A
 * sorted array: a connection writes to few partitions, and lookups (one per
 * read of a bound table) are a binary search; inserts shift the tail,
 * bounded by the number of bound partitions.
 */
#include "router_session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void router_session_init(router_session_t *s)
{
    static uint32_t next_pref; /* one loop per process: no lock */
    memset(s, 0, sizeof(*s));
    s->replica_pref = next_pref++;
}

uint32_t router_session_read_cost(const router_session_t *s, uint32_t keys, int whole)
{
    uint32_t learnt = whole ? s->answer_per_part : s->answer_per_key;
    uint64_t per_key = learnt > 0 ? learnt : whole ? ROUTER_TABLE_GUESS : ROUTER_READ_GUESS;
    uint64_t units = (uint64_t)keys * per_key / ROUTER_FAIR_BYTES;
    return units < ROUTER_FAIR_TOTAL * 64 ? (uint32_t)units : ROUTER_FAIR_TOTAL * 64;
}

void router_session_note_read(router_session_t *s, size_t len, uint32_t keys, int whole)
{
    if (keys == 0)
        return;
    uint32_t *est = whole ? &s->answer_per_part : &s->answer_per_key;
    size_t per = len / keys;
    uint32_t per_key = per < UINT32_MAX ? (uint32_t)per : UINT32_MAX;
    if (*est == 0 || per_key >= *est)
        *est = per_key > 0 ? per_key : 1; /* at once: a large answer is no guess */
    else /* a quarter of the way down, and never to 0 ("none yet") */
        *est -= (*est - per_key) / 4 + (*est > 1);
}

void router_session_free(router_session_t *s)
{
    free(s->pos);
    s->pos = NULL;
    s->n = s->cap = 0;
    free(s->wshard);
    s->wshard = NULL;
    free(s->wpin);
    s->wpin = NULL;
}

/* Index of the first entry >= (binding, partition). */
static size_t lower_bound(const router_session_t *s, uint32_t binding, uint32_t partition)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const router_pos_t *p = &s->pos[mid];
        if (p->binding < binding || (p->binding == binding && p->partition < partition))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int put(router_session_t *s, uint32_t binding, uint32_t partition, int64_t offset)
{
    size_t i = lower_bound(s, binding, partition);
    if (i < s->n && s->pos[i].binding == binding && s->pos[i].partition == partition) {
        if (offset > s->pos[i].offset)
            s->pos[i].offset = offset;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        router_pos_t *n = realloc(s->pos, cap * sizeof(*n));
        if (n == NULL)
            return -ENOMEM;
        s->pos = n;
        s->cap = cap;
    }
    memmove(&s->pos[i + 1], &s->pos[i], (s->n - i) * sizeof(*s->pos));
    s->pos[i] = (router_pos_t){binding, partition, offset};
    s->n++;
    return 0;
}

/* The index of the binding of topic[0..len), or -1. */
static long binding_of_topic(const kvs_config_t *cfg, const char *topic, size_t len)
{
    for (size_t i = 0; i < cfg->n_bindings; i++)
        if (strlen(cfg->bindings[i].topic) == len &&
            memcmp(cfg->bindings[i].topic, topic, len) == 0)
            return (long)i;
    return -1;
}

int router_session_note(router_session_t *s, const kvs_config_t *cfg, const uint8_t *tok,
                        size_t len)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    if (len == 0 || !kvs_pos_valid(tok, len) || kvs_pos_iter_init(&it, tok, len) != 0)
        return 0;
    while (kvs_pos_iter_next(&it, &e) == 1) {
        long b = binding_of_topic(cfg, e.topic, e.topic_len);
        if (b < 0)
            continue;
        uint32_t parts =
            cfg->bindings[b].partitions ? cfg->bindings[b].partitions : cfg->partitions;
        if (e.partition >= parts)
            continue;
        int rc = put(s, (uint32_t)b, e.partition, e.offset);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int router_session_add(const router_session_t *s, const kvs_config_t *cfg, const kvs_binding_t *b,
                       int64_t partition, kvs_pos_set_t *set)
{
    uint32_t bi = (uint32_t)(b - cfg->bindings);
    size_t tlen = strlen(b->topic);
    size_t i = lower_bound(s, bi, partition < 0 ? 0 : (uint32_t)partition);
    for (; i < s->n && s->pos[i].binding == bi; i++) {
        if (partition >= 0 && s->pos[i].partition != (uint32_t)partition)
            break;
        int rc = kvs_pos_set_add(set, b->topic, tlen, s->pos[i].partition, s->pos[i].offset);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int64_t router_session_get(const router_session_t *s, const kvs_config_t *cfg,
                           const kvs_binding_t *b, uint32_t partition)
{
    uint32_t bi = (uint32_t)(b - cfg->bindings);
    size_t i = lower_bound(s, bi, partition);
    if (i < s->n && s->pos[i].binding == bi && s->pos[i].partition == partition)
        return s->pos[i].offset;
    return -1;
}
