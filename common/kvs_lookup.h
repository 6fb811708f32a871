/*
 * kvs_lookup: a host name's lookup that a loop need not wait for.
 *
 * uv_getaddrinfo runs getaddrinfo in libuv's thread pool as a request the
 * loop counts: a loop with nothing else to do does not end before it
 * returns, however long the resolver takes (seconds per name with a dead
 * nameserver, and several names with search domains), and a request
 * already running cannot be canceled. So a worker whose snapshot copy was
 * done, from a peer named by address, would start serving only once a
 * lookup of another peer it had given up on returned.
 *
 * Here each lookup has a thread of its own (detached) and tells the loop
 * through a uv_async_t that is unreferenced: the loop is not held for it.
 * kvs_lookup_abandon ends the caller's interest at once: its callback is
 * never called, and the thread frees what it finds when it returns. What
 * both share is freed by the last of them.
 *
 * Nor does the loop stay alive for it: its owner has a deadline (a timer)
 * while it waits, as it should anyway.
 *
 * Threads: start and abandon on the loop's thread; the callback runs there.
 */
#ifndef KVS_LOOKUP_H
#define KVS_LOOKUP_H

#include "kvs_addr.h"

#include <netdb.h>
#include <uv.h>

typedef struct kvs_lookup_s kvs_lookup_t;

/* The lookup returned: status 0 and res (the caller's, to free with
 * freeaddrinfo; in the order to try them), or a uv error (UV_EAI_*) and
 * NULL. The lookup is over: `lk` must not be abandoned after. */
typedef void (*kvs_lookup_cb)(kvs_lookup_t *lk, void *data, int status, struct addrinfo *res);

/* At most this many lookup threads run in a process at once, given up on
 * or not: a resolver that hangs for good costs that many threads, not one
 * per lookup given up on. */
#define KVS_LOOKUP_MAX_THREADS 8

/* Starts looking up a's host (TCP; numeric ones too) and port. Returns 0
 * and *out, or a uv error: UV_EAGAIN when KVS_LOOKUP_MAX_THREADS run
 * already (the caller tries again later), no memory, no thread. */
int kvs_lookup_start(uv_loop_t *loop, const kvs_addr_t *a, kvs_lookup_cb cb, void *data,
                     kvs_lookup_t **out);

/* The caller no longer wants the answer: the callback is not called. */
void kvs_lookup_abandon(kvs_lookup_t *lk);

/* Tests: another bound than KVS_LOOKUP_MAX_THREADS. */
void kvs_lookup_set_max_threads(unsigned n);

#endif
