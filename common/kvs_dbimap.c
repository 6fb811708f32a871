/*
 * kvs_dbimap: table name -> LMDB database handle (see kvs_dbimap.h).
 *
 * Linear probing with FNV-1a. Entries leave only when the transaction that
 * opened them failed (tables are never dropped), by backward-shift
 * deletion, so no probe run is ever cut and nothing is allocated.
 */
#include "kvs_dbimap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* The slot holding `name`, or the empty slot where it would go. */
static kvs_dbimap_entry_t *slot(kvs_dbimap_entry_t *slots, uint32_t cap, const char *name)
{
    uint32_t mask = cap - 1;
    for (uint32_t i = name_hash(name) & mask;; i = (i + 1) & mask) {
        kvs_dbimap_entry_t *e = &slots[i];
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
    const kvs_dbimap_entry_t *e = slot(m->slots, m->cap, name);
    return e->name != NULL ? e : NULL;
}

int kvs_dbimap_add(kvs_dbimap_t *m, const char *name, unsigned int dbi, int pending)
{
    if (m->n >= m->max_entries)
        return -ENOSPC;
    kvs_dbimap_entry_t *e = slot(m->slots, m->cap, name);
    e->name = strdup(name);
    if (e->name == NULL)
        return -ENOMEM;
    e->dbi = dbi;
    e->pending = pending != 0;
    m->n++;
    m->n_pending += e->pending;
    return 0;
}

/* Empties slot i and moves the entries of the probe run behind it back so
 * that each stays reachable from its home slot (deletion for linear
 * probing: nothing is allocated, so forgetting cannot fail). */
static void remove_at(kvs_dbimap_t *m, uint32_t i)
{
    uint32_t mask = m->cap - 1;
    free(m->slots[i].name);
    m->slots[i].name = NULL;
    for (uint32_t j = (i + 1) & mask; m->slots[j].name != NULL; j = (j + 1) & mask) {
        uint32_t home = name_hash(m->slots[j].name) & mask;
        /* j stays where it is if its home lies cyclically in (i, j]. */
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        m->slots[i] = m->slots[j];
        m->slots[j].name = NULL;
        i = j;
    }
}

void kvs_dbimap_settle(kvs_dbimap_t *m, int drop_pending)
{
    if (m->n_pending == 0)
        return;
    for (uint32_t i = 0; i < m->cap; i++) {
        /* A removal may move a later entry into slot i: look again. */
        while (m->slots[i].name != NULL && m->slots[i].pending) {
            if (drop_pending) {
                remove_at(m, i);
                m->n--;
            } else {
                m->slots[i].pending = 0;
            }
        }
    }
    m->n_pending = 0;
}
