/*
 * router_local: the router answers reads of its local shards itself, from
 * their LMDB environments opened read-only (router.local_reads, on by
 * default), instead of a round trip to the worker.
 *
 * What a read promises stays as it was:
 *  - the worker stays the only writer, and acknowledges a write only after
 *    its commit; a read here is served from a snapshot begun after the
 *    request arrived, which sees every commit made before it: a write
 *    acknowledged to anyone is seen;
 *  - reads of tables bound to a topic pass the same freshness rules
 *    (kvs_freshreq over kvs_fresh_decide) with the applied offsets read in
 *    the same snapshot as the data and what only the worker knows (end
 *    offsets, settling, a heartbeat) from its state page (kvs_shardstate).
 *    Anything but "serve" (catching up, behind a position, starting) goes
 *    to the worker, which waits or answers 503 as before;
 *  - answers are built by kvs_reads, the code the worker answers with.
 *
 * Local shards are those this node runs a worker of (the router's link to
 * it is a unix socket); with replicas (cluster.nodes) that is this node's
 * own replica, the one router_replica would pick first, and a read it
 * cannot serve goes the way of any read of the shard (its worker, then
 * the other replicas). Users' rights are checked by the caller before a
 * read gets here. Each router process (router.processes) has its own.
 *
 * A shard is read here only while all of these hold, else its reads go to
 * the worker as before:
 *  - its link is up (the worker is running: a dead or starting worker's
 *    shard is not served from files it may be replacing), or was reset
 *    because the worker left requests unanswered for router.timeout
 *    (router_link's `hung`: stuck on a slow disk or stopped, still serving
 *    from the same files), until the next connection attempt's outcome;
 *    a worker started meanwhile clears `live` first (next point);
 *  - its state page says the worker serves (live) from exactly the files
 *    (data.mdb and lock.mdb, by device and inode) this router has open.
 *    When they differ (a snapshot bootstrap replaced the directory, the
 *    worker recreated its files) the environment is closed and the one the
 *    worker names opened: no answer comes from files the worker left;
 *  - the environment opens and is the shard's (format, shard, placement).
 *    One that cannot be opened is logged once and tried again every second;
 *  - no read of these files faulted: a data.mdb or state page cut short
 *    (truncated, a damaged disk) makes a read of a missing page SIGBUS,
 *    which is caught, logged, and those files (by device and inode) are
 *    never read here again; the router process lives on.
 *
 * Resources: per local shard one read-only environment (two descriptors,
 * a map the size of the worker's), one reusable read transaction and so at
 * most one reader slot in its lock file (kvs_schema: the worker sizes the
 * reader table for many router processes), and the state page's mapping.
 * No snapshot outlives the run of requests that began it (one read from
 * one client's socket: router_local_hold). A timer (1 s) clears stale
 * reader slots (mdb_reader_check), notices a state page that was created
 * anew, and follows a worker that moved to other files.
 *
 * Threads: the router's loop thread only.
 */
#ifndef ROUTER_LOCAL_H
#define ROUTER_LOCAL_H

#include "kvs_buf.h"
#include "kvs_config.h"
#include "kvs_msg.h"
#include "router_link.h"

#include <stdint.h>
#include <uv.h>

typedef struct router_local_s router_local_t;

/* Sets up local reads of every shard this node runs a worker of (a link
 * over its unix socket, among the router's `n_links` links, which must
 * outlive this); nothing is opened before a shard's link first comes up.
 * Installs a SIGBUS handler for the process (router_local.c: a file cut
 * short faults its reads). Returns 0 and *out, -ENOMEM, or -errno from
 * sigaction. */
int router_local_new(uv_loop_t *loop, const kvs_config_t *cfg, const router_link_t *links,
                     uint32_t n_links, router_local_t **out);

/* The link to `shard`'s worker came up: look at its state page now. */
void router_local_link_up(router_local_t *lc, uint32_t shard);

/* Whether `shard` is one of this node's (its reads may be answered here). */
int router_local_is_local(const router_local_t *lc, uint32_t shard);

/* A decoded, valid request for `shard` (the whole request, or the part of
 * it this shard holds) on a table with binding `b` (NULL: unbound). When
 * it is a read that may be answered here, appends its answer (one frame)
 * to `out` and returns 1; otherwise returns 0 with `out` unchanged: send
 * it to the worker. */
int router_local_read(router_local_t *lc, uint32_t shard, const Kvs__CommandRequest *q,
                      const kvs_binding_t *b, kvs_buf_t *out);

/* The same for an Hget or Hexist straight from its wire bytes
 * (kvs_msg_peek); `min_offset` is the position the read must see on the
 * key's partition of b's topic (-1: none). */
int router_local_read_key(router_local_t *lc, uint32_t shard, const kvs_peek_t *pk,
                          const kvs_binding_t *b, int64_t min_offset, kvs_buf_t *out);

/* Reads served between router_local_hold and router_local_release share
 * one snapshot per shard instead of beginning one each. The caller holds
 * only around requests that were all read from their socket before the
 * first of them is served (one connection's run of frames), so the shared
 * snapshot still begins after each of them arrived and sees every write
 * acknowledged before. Holds nest (a run may start inside another's, when
 * a connection resumes): the held snapshots end with the last release.
 * Both take NULL (no local reads) and do nothing then. */
void router_local_hold(router_local_t *lc);
void router_local_release(router_local_t *lc);

/* Closes the timer; free with router_local_free after the loop ran. */
void router_local_stop(router_local_t *lc);
void router_local_free(router_local_t *lc);

#endif
