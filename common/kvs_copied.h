/*
 * kvs_copied: a shard directory's copied-out file, the record a worker
 * that holds a shard alone keeps once it sent the shard's snapshot
 * (node_handoff writes it; the router's master reads it before a reload
 * takes the shard from this node). A few lines of text:
 *
 *   # kvs: ...            what it is, for whoever finds it
 *   peer HOST:PORT        who asked for the snapshot that raised the fence
 *   time 2026-12-03T15:05:35Z
 *   sent NAME HEX         a copy taken under this fence was sent whole to
 *                         node NAME, ending with checksum HEX (XXH3-128,
 *                         32 hex digits): that node's acknowledgement may
 *                         come later, on a connection of its own. A node
 *                         asks for one copy at a time, and asks again only
 *                         when it has none installed: its latest line is
 *                         the one that counts
 *   node NAME             a node of the map whose copy, taken under this
 *                         fence, it acknowledged as installed; one line
 *                         per node, none for a client's copy
 *
 * Only whole lines count: a line a crash cut short (no newline yet) is
 * no name, and the next append starts on a line of its own.
 *
 * The shard directory's unbound-rows file has the same form without the
 * peer, time and sent lines: it exists while the directory may hold rows
 * of tables bound to no topic that no other copy holds (node_handoff
 * writes it before such a table's first write, and at a start that finds
 * such rows), and its node lines name the nodes that acknowledged as
 * installed a copy of it taken since its last such write. The master
 * reads both before a reload takes the shard from this node.
 *
 * A node named counts no more once a map withdraws it from the shard (its
 * copy may be gone): the master drops it from both files (kvs_copied_drop)
 * as it takes each map, comparing with the holders file (node lines: the
 * shard's nodes in the map it last ran, kept across restarts). Both the
 * master and the worker change the files only under the shard
 * directory's lock (kvs_copied_lock).
 */
#ifndef KVS_COPIED_H
#define KVS_COPIED_H

#include "kvs_config.h"
#include "kvs_hash.h"

#include <stddef.h>

#define KVS_COPIED_FILE "copied-out"
#define KVS_UNBOUND_FILE "unbound-rows"
#define KVS_HOLDERS_FILE "holders"     /* the master's: the shard's nodes in the map it runs */
#define KVS_COPIED_LOCK "handoff.lock" /* taken by whoever changes the files above */
#define KVS_COPIED_LOCK_MS 2000u       /* the longest a lock is waited for */
#define KVS_COPIED_MAX (64u * 1024u)   /* bytes: a larger file is not one kvs wrote */
#define KVS_COPIED_NAMES 64            /* distinct nodes one fence records, at most */
#define KVS_COPIED_SENT 64             /* nodes one fence records copies sent to, at most */

typedef struct {
    char node[KVS_NODE_NAME_MAX + 1];
    uint8_t digest[KVS_HASH_LEN];
} kvs_copied_sent_t;

typedef struct {
    char peer[128];
    char time[64];
    size_t n_names;
    char names[KVS_COPIED_NAMES][KVS_NODE_NAME_MAX + 1];
    size_t n_sent; /* nodes with sent lines, each its latest; those past KVS_COPIED_SENT
                      are not kept */
    kvs_copied_sent_t sent[KVS_COPIED_SENT];
    size_t sent_lines; /* whole sent lines in the text, repeats and odd ones included */
    int whole;         /* the text ends with a newline (or is empty): an append needs none first */
    uint64_t withdrawals; /* holders: its "withdrawals N" line (0 without one) */
    size_t n_gone;        /* holders: its "withdrawn NAME" lines */
    char gone[KVS_COPIED_NAMES][KVS_NODE_NAME_MAX + 1];
} kvs_copied_t;

/* Parses text[0..len). Returns 0 with *out filled, or KVS_EINVAL when it
 * is not such a file: no peer or time line, a NUL byte, or more than
 * KVS_COPIED_NAMES distinct names. Repeated names count once. */
int kvs_copied_parse(const char *text, size_t len, kvs_copied_t *out);

/* Reads and parses `path` (not following a symlink). Returns 0, -ENOENT
 * when there is no such file, KVS_EINVAL when it is not one (above, or
 * larger than KVS_COPIED_MAX), or another negative errno. */
int kvs_copied_read(const char *path, kvs_copied_t *out);

/* kvs_copied_read for an unbound-rows file: any text kvs_copied_parse
 * takes, peer and time lines or not. */
int kvs_copied_read_names(const char *path, kvs_copied_t *out);

/* Takes the lock of shard directory `dir` (KVS_COPIED_LOCK in it, a
 * regular file, made if missing), waiting up to wait_ms. Returns the
 * descriptor for kvs_copied_unlock, or a negative errno (-ETIMEDOUT: held
 * all that time). */
int kvs_copied_lock(const char *dir, unsigned wait_ms);
void kvs_copied_unlock(int fd);

/* Under the caller's lock: drops from dir's copied-out and unbound-rows
 * every line naming one of names[0..n) ("node NAME", "sent NAME HEX"),
 * or with `all` every such line, and a line a crash cut short; each file
 * that changes is written afresh through a synced file renamed over it.
 * *dropped (may be NULL) counts the lines dropped. Returns 0 (also when
 * a file is missing), or a negative errno / KVS_EINVAL (a file kvs did
 * not write: the caller must not go on as if the names were dropped). */
int kvs_copied_drop(const char *dir, const char *const *names, size_t n, int all, size_t *dropped);

/* Writes dir's holders file afresh (synced, renamed over) naming
 * names[0..n), with the line "withdrawals N" (how many times a map
 * withdrew nodes from the shard: a copy whose acknowledgement comes after
 * that count moved is recorded by no one) and a line "withdrawn NAME" for
 * each of gone[0..n_gone), under the caller's lock. 0 or a negative
 * errno. */
int kvs_copied_write_holders(const char *dir, const char *const *names, size_t n,
                             uint64_t withdrawals, const char *const *gone, size_t n_gone);

/* Whether holders says `node` was withdrawn ("withdrawn NAME": a map
 * withdrew it from the shard and none gave it back since; a copy it asks
 * for is recorded by no one). */
int kvs_copied_gone(const kvs_copied_t *c, const char *node);

/* Whether `node` is one of the names. */
int kvs_copied_names(const kvs_copied_t *c, const char *node);

/* Whether the copy last sent to `node` ended with `digest` (its latest
 * sent line). */
int kvs_copied_was_sent(const kvs_copied_t *c, const char *node,
                        const uint8_t digest[KVS_HASH_LEN]);

/* Whether a sent line names `node`, with whatever checksum. */
int kvs_copied_sent_any(const kvs_copied_t *c, const char *node);

/* Whether `node` may be written as a name: 1 to KVS_NODE_NAME_MAX
 * printable bytes, no spaces. */
int kvs_copied_name_ok(const char *node);

#endif
