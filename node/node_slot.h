/*
 * node_slot: an answer that comes later. Some requests cannot be answered
 * while they execute: a write to a bound table waits for Kafka and for its
 * own ingestion, a read waits until the worker applied the position it
 * asks for. The handler then takes a slot: the client's answers keep their
 * request order (later answers wait behind the slot), and the handler
 * fills the slot whenever the answer is known, from any callback.
 *
 * Implemented by node_server.c, which owns the clients; handlers reach it
 * through node_cmd_ctx_t.defer (NULL where nothing can wait, e.g. in unit
 * tests: the handler must then answer at once).
 *
 * Lifetime: a slot lives until node_slot_done. If its client disconnects
 * first, the slot stays valid (orphaned) and node_slot_done frees it.
 * Bounds: while a slot is open its request's size counts as output the
 * connection is owed (kvs_conn_hold), so a peer's waiting requests are
 * bounded by limits.client_output like its unread answers.
 */
#ifndef NODE_SLOT_H
#define NODE_SLOT_H

#include "kvs_buf.h"
#include "kvs_config.h"

#include <stddef.h>
#include <stdint.h>

typedef struct node_slot_s node_slot_t;

/* Takes a slot for the request being executed (its answer then comes
 * through the slot, and the handler writes nothing to its `out`). `cost`
 * is what waiting costs in memory (the request's size, say), held against
 * the connection's output limits until the slot is done. `ordered`: the
 * client's later requests are not executed before this one is answered
 * (a read that waits must not be overtaken by the reads and writes sent
 * after it, or a client would see time go backwards); otherwise they run
 * meanwhile and only their answers wait. Returns NULL when out of memory.
 * At most once per request. */
typedef node_slot_t *(*node_defer_fn)(void *arg, size_t cost, int ordered);

/* Whether the sender of the request being executed still waits for it
 * (the same `arg` as node_defer_fn's): asked right before a write is
 * handed to Kafka, where a write its sender gave up on must stop. */
typedef int (*node_wanted_fn)(void *arg);

/* Where the answer goes: append exactly one response frame, then call
 * node_slot_done. */
kvs_buf_t *node_slot_buf(node_slot_t *s);

/* The answer is in node_slot_buf(s); it leaves in request order, after the
 * current loop turn's commit. The slot must not be used afterwards. */
void node_slot_done(node_slot_t *s);

/* False once the client is gone (the answer would be dropped). */
int node_slot_wanted(const node_slot_t *s);

/* How long a worker lets a request wait before answering it anyway (503):
 * 4/5 of router.timeout, so the answer reaches the router before it gives
 * up on the worker (which would fail every request on that link). */
static inline uint64_t node_wait_ms(const kvs_config_t *cfg)
{
    uint64_t t = cfg->router_timeout_ms;
    return t - t / 5;
}

#endif
