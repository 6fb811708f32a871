/*
 * router_link: the router's connection to one shard worker (local unix
 * socket or remote TCP), with a FIFO of requests awaiting their answer.
 *
 * Workers answer in request order, so the n-th response on a link belongs
 * to the n-th request sent: the FIFO needs no ids. A link is "up" once
 * connected; while down, sends fail at once (the caller answers 503) and the
 * link reconnects in the background (a TLS link is up once its handshake
 * completed; a link to this node's own worker once the process serving the
 * socket is known to be a child of the master: peer_parent). When the
 * connection breaks, or the oldest request waits past the timeout, every
 * pending request is failed with 503 and the link starts over: answers can
 * no longer be matched.
 */
#ifndef ROUTER_LINK_H
#define ROUTER_LINK_H

#include "kvs_addr.h"
#include "kvs_conn.h"

#include <protobuf-c/protobuf-c.h>

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct router_link_s router_link_t;

#define ROUTER_AVOID_MIN_MS 500   /* the first avoidance of a replica (router_link_avoid) */
#define ROUTER_AVOID_MAX_MS 30000 /* and the longest */

/* A pending request's answer arrived (payload = encoded CommandResponse,
 * valid during the call), or it failed: payload NULL and `failure` says
 * why. With len 0 the link failed (answer 503: the request may or may not
 * have been applied); with len > 0 the worker did answer, in len bytes,
 * more than max_frame, and that answer was dropped (the link is fine; a
 * read is answered 413, a write 500 as it may have been applied).
 * `ctx`/`part` are what router_link_send was given. */
typedef void (*router_link_reply_cb)(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                                     const char *failure);

/* The link came up (1) or went down (0). */
typedef void (*router_link_state_cb)(router_link_t *l, int up);

/* After router_link_stop: nothing touches the link any more. */
typedef void (*router_link_closed_cb)(router_link_t *l);

typedef struct router_link_pending_s {
    void *ctx;
    uint32_t part;
    uint64_t deadline; /* uv_now-based, ms */
    uint64_t start,
        end; /* where its bytes are in the connection's output (kvs_conn_queued_total) */
} router_link_pending_t;

struct router_link_s {
    uv_loop_t *loop;
    uint32_t shard;
    kvs_addr_t addr;
    char addr_text[160];
    /* The lines its connections' peers cause (a failing TLS handshake at
     * every reconnect): LINK_LOG_LINES per LINK_LOG_WINDOW_MS. */
    kvs_log_budget_t log_budget;
    char log_what[200];
    int flapping;     /* its last connection went down within BACKOFF_MAX_MS of coming up */
    kvs_conn_t *conn; /* NULL while down */
    uv_connect_t connect_req;
    struct kvs_lookup_s *lookup; /* a host name's lookup, in flight while `resolving` */
    int resolving;
    struct addrinfo *ai_list; /* the last lookup's addresses, while trying them */
    struct addrinfo *ai_next; /* the next one to try, or NULL */
    int connecting;
    int connect_late; /* ... and given up at timeout_ms: its cancellation is being called back */
    int handshaking;  /* TLS: connected, the handshake under way (bounded by timeout_ms) */
    int up;
    uint64_t units; /* the fair share's units of the parts in flight on it (router_send's; the
                     * shard cap: router_session.h); never touched here */
    int hung;       /* down since its worker left requests unanswered for timeout_ms (it is there,
                     * slow or stopped, serving from the same files), not since it closed or
                     * refused a connection: cleared by the next connection's outcome */
    int unanswered; /* the link's own Pings in a row that got no answer within timeout_ms
                     * (a worker that hangs on): from the second, its resets and
                     * reconnects are logged at debug level only */
    int stopping;
    uv_timer_t timer; /* reconnect backoff, and request deadlines */
    uint64_t backoff_ms;
    uint64_t up_since; /* uv_now when it last came up */
    uint64_t timeout_ms;
    uint64_t taken_mark; /* bytes its worker had taken at the oldest request's last due deadline */
    int taking;          /* ... which was one it still read (link_taking) */
    uint32_t max_frame;
    size_t max_queue;            /* bytes of requests queued before sends are refused (0: none) */
    router_link_pending_t *fifo; /* ring buffer */
    size_t head, count, cap;
    kvs_flusher_t *flusher;
    kvs_tls_ctx_t *tls; /* remote workers with tls.link: mutual TLS; NULL: plaintext */
    router_link_reply_cb on_reply;
    router_link_state_cb on_state;
    char last_error[320];
    int seen_up;      /* came up at least once (for the router's readiness) */
    const char *node; /* the replica's node name ("" without a map), for messages */
    /* This router's map digest (kvs_config_t.map_digest) on a link to
     * another node's worker (router_main sets it; NULL on every other
     * link): the link then asks its worker's with a Ping of its own as
     * it comes up (ctx: &map_ask), and warns when they differ: until a
     * worker answers it 200 (link_map_ask). */
    const uint8_t *map_digest;
    char map_ask;
    int map_asking;            /* a map Ping is in flight */
    int map_answered;          /* one was answered 200 (with or without a digest) */
    int map_lost;              /* ... and how many went unanswered */
    uint64_t map_next_ms;      /* uv_now before which a connection up asks no second time */
    uint32_t map_differs;      /* answers that named another map (a metric) */
    uint64_t avoid_until;      /* router_replica: prefer other replicas until then (uv_now) */
    uint64_t avoid_ms;         /* ... and the last avoidance, doubling while failures repeat */
    uint64_t oversized_log_ms; /* last log line about an oversized answer */
    uint64_t downs;            /* times the link went down after being up (metrics) */
    router_link_closed_cb on_closed; /* NULL, or set before router_link_stop */
    const char *what;                /* NULL: a shard's worker; "router": a router process's
                                        own socket (the master's scrape); for log lines */
    int timer_closed;
    /* A unix link to this node's own worker: the process serving the
     * socket must be a child of this pid (the master), or the connection
     * is dropped as if refused (a worker of an earlier run, stopped or
     * hung, that still holds the socket and the shard's lock); 0: no check. */
    pid_t peer_parent;
    pid_t foreign_pid; /* the last foreign peer logged (once per pid) */
    void *data;
};

/* Initializes and starts connecting (a host name is resolved
 * asynchronously, again at every reconnect). With `tls` (a client context,
 * which must outlive the link) every connection is TLS and the link is up
 * once the handshake completed, which must happen within `timeout_ms`.
 * Returns 0 or a uv error. */
int router_link_start(router_link_t *l, uv_loop_t *loop, uint32_t shard, const kvs_addr_t *addr,
                      uint64_t timeout_ms, uint32_t max_frame, kvs_flusher_t *flusher,
                      kvs_tls_ctx_t *tls, router_link_reply_cb on_reply,
                      router_link_state_cb on_state);

/* Queues one request frame (payload without header; the link adds it).
 * Returns 0, or KVS_ECLOSED when the link is down (l->last_error says
 * why), KVS_ELIMIT when max_queue bytes are already queued, KVS_ETOOBIG
 * when the frame would be larger than max_frame (the worker would close
 * the link, failing every request on it: nothing is sent), or -ENOMEM. */
int router_link_send(router_link_t *l, const uint8_t *payload, size_t len, void *ctx,
                     uint32_t part);

/* Same, packing a protobuf message. */
int router_link_send_msg(router_link_t *l, const ProtobufCMessage *m, void *ctx, uint32_t part);

/* Fails every pending request and closes the connection; no reconnect.
 * The link's handles are closed; `l` must stay valid until its on_closed
 * runs (a name lookup in flight still calls back into it), or until the
 * loop ended. A zeroed link that was never started, or one already
 * stopped, is left alone (no on_closed). */
void router_link_stop(router_link_t *l);

/* The replica behind `l` failed a request (the link broke or timed out,
 * or the worker answered 503) at `now` (uv_now): router_replica prefers
 * other replicas until l->avoid_until. One failure event counts once:
 * while the link is avoided, the failures of the requests that were in
 * flight with the first (a connection lost with 8 pending) change
 * nothing; a failure after the avoidance ran out doubles it (0.5 s, then
 * 1, 2, ... up to 30 s). */
static inline void router_link_avoid(router_link_t *l, uint64_t now)
{
    if (l->avoid_until > now)
        return; /* the same event: requests that were in flight with the first */
    l->avoid_ms = l->avoid_ms == 0                        ? ROUTER_AVOID_MIN_MS
                  : l->avoid_ms * 2 > ROUTER_AVOID_MAX_MS ? ROUTER_AVOID_MAX_MS
                                                          : l->avoid_ms * 2;
    l->avoid_until = now + l->avoid_ms;
}

/* `l` answered (anything but 503): it is not avoided any more. */
static inline void router_link_trust(router_link_t *l)
{
    l->avoid_ms = 0;
    l->avoid_until = 0;
    l->unanswered = 0;
}

/* True while the link's own Ping (a reconnect's hello, ctx: the link) is
 * unanswered: sent first on a new connection, it is the oldest pending
 * request until its answer, its failure or the link's fall pops it.
 * router_replica sends no request here then while another replica may
 * take it. */
static inline int router_link_asking(const router_link_t *l)
{
    return l->count > 0 && l->fifo[l->head].ctx == (const void *)l;
}

#endif
