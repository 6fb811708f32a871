/*
 * kvs_dbimap: table name -> LMDB database handle, for a process that opens
 * an environment's tables by name: the worker's writer (node_store) and
 * every reader of an environment (kvs_lmdb).
 *
 * Open addressing over a power-of-two array sized once for the most tables
 * the environment may hold (storage.max_tables), so it never grows and a
 * lookup is one hash and, mostly, one string compare: it runs for every
 * request. Clients choose table names, so the hash is keyed (SipHash-1-3,
 * a random key per map): names chosen to collide under a fixed hash would
 * pile into one probe run, and every lookup near it would compare its
 * name against all of them (up to storage.max_tables). An entry added while the transaction that
 * opened its handle has not committed yet is "pending": if that transaction does not commit, LMDB
 * closes the handle, and kvs_dbimap_settle(m, 1) forgets every pending entry; if it commits,
 * kvs_dbimap_settle(m, 0) keeps them. An owner that closes handles (the
 * worker drops emptied tables) takes their entries out with kvs_dbimap_take,
 * by the bits it set in each entry's mark.
 *
 * Handles are LMDB's MDB_dbi (an unsigned int): this module does not
 * include lmdb.h.
 */
#ifndef KVS_DBIMAP_H
#define KVS_DBIMAP_H

#include <stdint.h>

typedef struct kvs_dbimap_entry_s {
    char *name; /* NULL = empty slot */
    unsigned int dbi;
    int pending;       /* its transaction has not committed yet */
    unsigned int mark; /* the owner's bits: 0 when added */
    uint64_t stamp;    /* the owner's: 0 when added */
} kvs_dbimap_entry_t;

typedef struct kvs_dbimap_s {
    kvs_dbimap_entry_t *slots;
    uint32_t cap; /* a power of two, at least twice max_entries */
    uint32_t n, n_pending;
    uint32_t max_entries;
    uint64_t key[2]; /* the hash's key: random, per map */
} kvs_dbimap_t;

/* Room for max_entries names. Returns 0 or -ENOMEM. */
int kvs_dbimap_init(kvs_dbimap_t *m, uint32_t max_entries);
void kvs_dbimap_free(kvs_dbimap_t *m);

/* The entry of `name`, or NULL. */
const kvs_dbimap_entry_t *kvs_dbimap_find(const kvs_dbimap_t *m, const char *name);

/* The entry of `name`, for its owner to change its mark, or NULL. */
kvs_dbimap_entry_t *kvs_dbimap_lookup(kvs_dbimap_t *m, const char *name);

/* Adds `name`. Returns 0, -EEXIST (present), -ENOSPC (max_entries
 * reached) or -ENOMEM; nothing is added on error. */
int kvs_dbimap_add(kvs_dbimap_t *m, const char *name, unsigned int dbi, int pending);

/* The transaction that opened the pending entries ended: committed
 * (drop_pending 0: they stay, no longer pending) or not (1: forgotten).
 * Cannot fail. */
void kvs_dbimap_settle(kvs_dbimap_t *m, int drop_pending);

/* Removes every entry whose mark has one of `bits`, pending or not, and
 * copies them to out[0..) (room for max_entries), whose names are now the
 * caller's to free. Returns how many. Cannot fail. */
uint32_t kvs_dbimap_take(kvs_dbimap_t *m, unsigned int bits, kvs_dbimap_entry_t *out);

#endif
