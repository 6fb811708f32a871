/*
 * kvs_hook: the request hook chain of one process (the router's, or a
 * worker's).
 *
 * Four events around every request (include/kvs_plugin.h says what each
 * means and what a hook may do). A chain is, per event, a plain array of
 * (function, state) pairs called in order: with nothing registered for an
 * event, running it is one load and one compare; the built-in metrics
 * hook is one indirect call. The chain is filled at start (built-in hooks,
 * then each plugin's) and rebuilt whole on a live reload (the slow log may
 * come or go); it is never changed while a request's event runs.
 *
 * The request a hook sees (kvs_request_info_t) lives in the request's own
 * state (the router's router_req_t, the worker's per-request record), filled
 * once when it is known, so running an event builds nothing. Its table
 * pointer points into the request's bytes, which are gone after RECEIVED
 * unless the owner copies the name: hooks that look at the request after
 * RECEIVED register with KVS_HOOK_KEEP_REQUEST, and the owner copies the
 * table while kvs_hook_keep_request says so (the metrics hook does not need
 * it, so with no plugin and no slow log nothing is copied).
 *
 * Threads: one chain per loop thread; nothing is shared.
 */
#ifndef KVS_HOOK_H
#define KVS_HOOK_H

#include "kvs_plugin.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_HOOK_MAX 16          /* hooks per event */
#define KVS_HOOK_KEEP_REQUEST 1u /* the hook reads table and peer after RECEIVED */
#define KVS_HOOK_MSG 512         /* room for a stopping hook's message */

typedef struct kvs_hook_s {
    kvs_hook_fn fn;
    void *state;
} kvs_hook_t;

typedef struct kvs_hook_chain_s {
    uint32_t n[KVS_HOOK_EVENTS];
    kvs_hook_t hooks[KVS_HOOK_EVENTS][KVS_HOOK_MAX];
    int keep_request; /* some hook reads the request after RECEIVED */
} kvs_hook_chain_t;

/* Empties the chain. */
void kvs_hook_chain_init(kvs_hook_chain_t *c);

/* Registers `fn` for every event in `events` (KVS_HOOK_MASK bits); flags:
 * KVS_HOOK_KEEP_REQUEST. Returns 0, or -1 (nothing registered) when an
 * event already has KVS_HOOK_MAX hooks or `events` names none. */
int kvs_hook_add(kvs_hook_chain_t *c, unsigned events, kvs_hook_fn fn, void *state, unsigned flags);

/* Whether owners must keep the request's table and peer readable after
 * RECEIVED. */
static inline int kvs_hook_keep_request(const kvs_hook_chain_t *c)
{
    return c->keep_request;
}

/* Whether anything is registered for `ev`. */
static inline int kvs_hook_any(const kvs_hook_chain_t *c, kvs_hook_event_t ev)
{
    return c->n[ev] != 0;
}

/* Slow part of kvs_hook_run: calls the hooks of `ev` from the first. */
uint32_t kvs_hook_call(const kvs_hook_chain_t *c, kvs_hook_event_t ev,
                       const kvs_request_info_t *req, char *msg, size_t msglen);

/* Runs event `ev` for `req` (req->now_ns set by the caller when a hook
 * wants it). Returns 0, or, at RECEIVED and EXECUTED, the status (400..599;
 * anything else a hook returned becomes 500) of the first hook that stopped
 * the request, its message in msg[0..msglen) (never empty). What hooks
 * return at the send events is ignored. */
static inline uint32_t kvs_hook_run(const kvs_hook_chain_t *c, kvs_hook_event_t ev,
                                    const kvs_request_info_t *req, char *msg, size_t msglen)
{
    if (c->n[ev] == 0)
        return 0;
    return kvs_hook_call(c, ev, req, msg, msglen);
}

#endif
