/*
 * router: shared state of one kvs-router process, passed by pointer to the
 * client, route and main modules (no globals).
 */
#ifndef ROUTER_H
#define ROUTER_H

#include "kvs_auth.h"
#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_msg.h"
#include "router_link.h"

#include <stdint.h>
#include <uv.h>

typedef struct router_s router_t;
typedef struct router_client_s router_client_t;
typedef struct router_req_s router_req_t;

struct router_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    router_link_t *links; /* one per shard, index = shard id */
    uint32_t shards;
    kvs_flusher_t flusher;
    kvs_conn_group_t group; /* the clients, under limits.* */
    uint32_t max_clients;   /* limits.max_clients, fitted to the descriptor limit */
    uint64_t refused_log_ms;
    kvs_listener_t listener;
    int listening;
    kvs_tls_ctx_t *tls;      /* tls.router: the client listener's, or NULL */
    kvs_tls_ctx_t *link_tls; /* tls.link: links to remote workers, or NULL */
    kvs_auth_t *auth;        /* users, or NULL when none are configured */
    router_client_t *clients;
    size_t n_clients;
    kvs_arena_t arena;       /* request decode scratch, reset per request */
    kvs_arena_t merge_arena; /* answer decode scratch, reset per merge */
    router_req_t *free_reqs; /* recycled requests: no malloc per request */
    size_t n_free_reqs;
    int draining;
    void (*on_drained)(router_t *r); /* all clients gone while draining */
};

/* ---- clients (router_client.c) ------------------------------------------ */

/* Starts accepting clients on cfg->router_listen. Returns 0 or a uv error. */
int router_clients_listen(router_t *r);

/* Stops accepting; every client is answered what it sent, then closed.
 * r->on_drained runs when the last one is gone. */
void router_clients_drain(router_t *r);

/* Closes every client now. */
void router_clients_abort(router_t *r);

/* `req`, a request of `cl`, is complete (called by the route module); its
 * answer is in req->resp. */
void router_client_req_done(router_client_t *cl, router_req_t *req);

/* A single-part request's answer arrived: when `req` is at the head of its
 * client's FIFO, the frame goes straight into the client's output (one
 * copy) and 1 is returned, `req` then being freed; otherwise 0, and the
 * caller keeps the answer in req->resp. */
int router_client_deliver(router_client_t *cl, router_req_t *req, const uint8_t *payload,
                          size_t len);

/* An Auth request `req` of `cl` (validated; `m` valid during the call):
 * answered now or, once its token is checked, later; the client reads
 * nothing more meanwhile. */
void router_client_auth(router_client_t *cl, router_req_t *req, const Kvs__Auth *m);

/* ---- requests (router_route.c) --------------------------------------------- */

/* A client request travelling through the router. The response is built in
 * `resp` (a complete frame); `done` says it is ready. Requests are kept in
 * their client's FIFO and leave in order. */
struct router_req_s {
    router_t *router;
    router_client_t *client; /* NULL once the client is gone */
    kvs_auth_conn_t *who;    /* its client's identity when users are configured, else NULL */
    router_req_t *next;      /* client FIFO */
    kvs_buf_t resp;
    size_t reserve; /* output reserved for the answer while in flight (whole-table reads) */
    int done;
    int in_route;
    uint32_t parts_left;
    struct route_merge_s *merge; /* multi-part state, or NULL */
};

/* Allocates a request for `cl` (which queues it at its FIFO tail before
 * routing it), recycling freed ones. Returns NULL on memory exhaustion. */
router_req_t *router_req_new(router_t *r, router_client_t *cl);

/* Frees the recycled requests (at shutdown). */
void router_reqs_release(router_t *r);

/* Routes one request frame: answers it locally (bad input, Ping) or
 * forwards it to the shard(s). Parts that complete during this call do not
 * notify the client (req->in_route); the caller checks req->done after. */
void router_route(router_t *r, router_req_t *req, const uint8_t *payload, size_t len);

/* Completes `req` with a status and message. */
void router_req_finish_status(router_req_t *req, uint32_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Frees a request (its client is done with it, or gone and it completed). */
void router_req_free(router_req_t *req);

/* The reply callback given to every link. */
void router_route_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                        const char *failure);

#endif
