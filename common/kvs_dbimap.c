/*
 * kvs_dbimap: table name -> LMDB database handle (see kvs_dbimap.h).
 *
 * Linear probing with a keyed hash (SipHash-1-3 under a random key drawn
 * at init, so nobody outside the process can pick names that share a
 * probe run). Entries leave when the transaction that opened them failed
 * or when their owner takes them (a table dropped), by backward-shift
 * deletion, so no probe run is ever cut and nothing is allocated.
 */
#include "kvs_dbimap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

static void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = ROTL64(v[1], 13);
    v[1] ^= v[0];
    v[0] = ROTL64(v[0], 32);
    v[2] += v[3];
    v[3] = ROTL64(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = ROTL64(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = ROTL64(v[1], 17);
    v[1] ^= v[2];
    v[2] = ROTL64(v[2], 32);
}

/* SipHash-1-3 of the NUL-terminated `s` under `key`. */
static uint64_t name_hash(const uint64_t key[2], const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s), i = 0;
    uint64_t v[4] = {key[0] ^ 0x736f6d6570736575ull, key[1] ^ 0x646f72616e646f6dull,
                     key[0] ^ 0x6c7967656e657261ull, key[1] ^ 0x7465646279746573ull};
    for (; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (unsigned j = 0; j < 8; j++)
            w |= (uint64_t)p[i + j] << (8 * j);
        v[3] ^= w;
        sip_round(v);
        v[0] ^= w;
    }
    uint64_t last = (uint64_t)n << 56;
    for (unsigned j = 0; i + j < n; j++)
        last |= (uint64_t)p[i + j] << (8 * j);
    v[3] ^= last;
    sip_round(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(v);
    sip_round(v);
    sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* A random key; should the kernel give none, one nobody outside can
 * know in advance either (the clock, the pid, where the map lives). */
static void draw_key(kvs_dbimap_t *m)
{
    if (getrandom(m->key, sizeof(m->key), GRND_NONBLOCK) == (ssize_t)sizeof(m->key))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    m->key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
    m->key[1] = (uint64_t)getpid() * 0xc2b2ae3d27d4eb4full ^ (uint64_t)(uintptr_t)m->slots;
}

/* The slot holding `name`, or the empty slot where it would go. */
static kvs_dbimap_entry_t *slot(const kvs_dbimap_t *m, const char *name)
{
    uint32_t mask = m->cap - 1;
    for (uint32_t i = (uint32_t)name_hash(m->key, name) & mask;; i = (i + 1) & mask) {
        kvs_dbimap_entry_t *e = &m->slots[i];
        if (e->name == NULL || strcmp(e->name, name) == 0)
            return e;
    }
}

int kvs_dbimap_init(kvs_dbimap_t *m, uint32_t max_entries)
{
    memset(m, 0, sizeof(*m));
    uint32_t cap = 16;
    while (cap < 2 * ((uint64_t)max_entries + 1))
        cap *= 2;
    m->slots = calloc(cap, sizeof(*m->slots));
    if (m->slots == NULL)
        return -ENOMEM;
    m->cap = cap;
    m->max_entries = max_entries;
    draw_key(m);
    return 0;
}

void kvs_dbimap_free(kvs_dbimap_t *m)
{
    for (uint32_t i = 0; m->slots != NULL && i < m->cap; i++)
        free(m->slots[i].name);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

const kvs_dbimap_entry_t *kvs_dbimap_find(const kvs_dbimap_t *m, const char *name)
{
    const kvs_dbimap_entry_t *e = slot(m, name);
    return e->name != NULL ? e : NULL;
}

kvs_dbimap_entry_t *kvs_dbimap_lookup(kvs_dbimap_t *m, const char *name)
{
    kvs_dbimap_entry_t *e = slot(m, name);
    return e->name != NULL ? e : NULL;
}

int kvs_dbimap_add(kvs_dbimap_t *m, const char *name, unsigned int dbi, int pending)
{
    kvs_dbimap_entry_t *e = slot(m, name);
    if (e->name != NULL)
        return -EEXIST;
    if (m->n >= m->max_entries)
        return -ENOSPC;
    e->name = strdup(name);
    if (e->name == NULL)
        return -ENOMEM;
    e->dbi = dbi;
    e->pending = pending != 0;
    e->mark = 0;
    e->stamp = 0;
    m->n++;
    m->n_pending += e->pending;
    return 0;
}

/* Empties slot i, returning its entry (the name now the caller's), and moves the
 * entries of the probe run behind it back so that each stays reachable
 * from its home slot (deletion for linear probing: nothing is allocated,
 * so forgetting cannot fail). An entry of a run that wraps past the
 * array's end may move from its start to its end, behind a sweep going up:
 * sweeps go again until what they look for is gone. */
static kvs_dbimap_entry_t remove_at(kvs_dbimap_t *m, uint32_t i)
{
    uint32_t mask = m->cap - 1;
    kvs_dbimap_entry_t gone = m->slots[i];
    m->n--;
    m->n_pending -= m->slots[i].pending != 0;
    m->slots[i].name = NULL;
    for (uint32_t j = (i + 1) & mask; m->slots[j].name != NULL; j = (j + 1) & mask) {
        uint32_t home = (uint32_t)name_hash(m->key, m->slots[j].name) & mask;
        /* j stays where it is if its home lies cyclically in (i, j]. */
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        m->slots[i] = m->slots[j];
        m->slots[j].name = NULL;
        i = j;
    }
    return gone;
}

void kvs_dbimap_settle(kvs_dbimap_t *m, int drop_pending)
{
    if (!drop_pending) {
        for (uint32_t i = 0; m->n_pending > 0 && i < m->cap; i++) {
            if (m->slots[i].name != NULL && m->slots[i].pending) {
                m->slots[i].pending = 0;
                m->n_pending--;
            }
        }
        return;
    }
    while (m->n_pending > 0)
        for (uint32_t i = 0; i < m->cap; i++)
            /* A removal may move a later entry into slot i: look again. */
            while (m->slots[i].name != NULL && m->slots[i].pending)
                free(remove_at(m, i).name);
}

uint32_t kvs_dbimap_take(kvs_dbimap_t *m, unsigned int bits, kvs_dbimap_entry_t *out)
{
    uint32_t want = 0, n = 0;
    for (uint32_t i = 0; i < m->cap; i++)
        want += m->slots[i].name != NULL && (m->slots[i].mark & bits) != 0;
    while (n < want)
        for (uint32_t i = 0; i < m->cap; i++)
            while (m->slots[i].name != NULL && (m->slots[i].mark & bits) != 0)
                out[n++] = remove_at(m, i);
    return n;
}
