/*
 * router: shared state of one kvs-router process, passed by pointer to the
 * client, route and main modules (no globals).
 */
#ifndef ROUTER_H
#define ROUTER_H

#include "kvs_auth.h"
#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_hook.h"
#include "kvs_metrics.h"
#include "kvs_msg.h"
#include "kvs_plugins.h"
#include "kvs_slowlog.h"
#include "router_link.h"
#include "router_local.h"
#include "router_replica.h"
#include "router_session.h"

#include <stdint.h>
#include <uv.h>

typedef struct router_s router_t;
typedef struct router_client_s router_client_t;
typedef struct router_req_s router_req_t;

struct router_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    router_link_t *links; /* one per replica of each shard: shard s's are sets[s] */
    uint32_t n_links;
    router_set_t *sets;     /* per shard: its replicas' links */
    router_budget_t budget; /* retries of reads on other replicas */
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
    kvs_list_t clients;      /* router_client_t, newest first */
    size_t n_clients;        /* both front doors */
    size_t n_resp_clients;   /* of which RESP */
    size_t n_admin_clients;  /* of which on the private socket (kvs-cli, the master's scrape) */
    /* Per front door (0 protobuf, 1 RESP), its clients that have yet to
     * authenticate, oldest first: at limits.max_clients the oldest makes
     * room for a new client (router_client.c, "Identity"). */
    kvs_unproven_t unproven[2];
    kvs_arena_t arena;       /* request decode scratch, reset per request */
    kvs_arena_t merge_arena; /* answer decode scratch, reset per merge */
    kvs_arena_t redis_arena; /* RESP command -> kvs request, reset per command */
    kvs_arena_t reply_arena; /* kvs answer -> RESP reply, reset per answer */
    kvs_buf_t redis_pack;    /* the packed kvs request of a RESP command */
    struct router_redis_cursors_s *redis_cursors; /* HSCAN cursors (router_redis) */
    uint64_t next_client_id;                      /* RESP clients' CLIENT ID counter */
    uint64_t next_conn_id;                        /* every connection's (hooks' conn_id) */
    kvs_listener_t resp_listener;                 /* router.resp_listen, when set */
    int resp_listening;
    /* <data_dir>/routerI.sock: this process's own, trusted. Two slots: a
     * listener taken again (router_clients_retake_admin) replaces the
     * other, which closes. */
    kvs_listener_t admin_listeners[2];
    int admin_cur;     /* the slot listening */
    int admin_closing; /* the other slot is still closing */
    int admin_listening;
    /* Its path, the inode of its file (router_ports_listen_own), and the
     * name it was bound under: routerI.next for a membership change's new
     * generation (--next; the master renames it over admin_path once the
     * generation serves), else admin_path itself. */
    char admin_path[108], admin_bound[108];
    uint64_t admin_ino;
    int admin_next;
    uint32_t proc_index;       /* this router process's index (router_procs.h) */
    size_t record_max;         /* the producers' message.max.bytes (kvs_record_max); 0: default */
    uint32_t n_procs;          /* router.processes, resolved */
    uint64_t id_base;          /* client ids and HSCAN cursor numbers: id_base | counter */
    uint64_t listen_inodes[2]; /* the listeners' sockets: router.listen, resp_listen */
    size_t n_listen;
    router_req_t *free_reqs; /* recycled requests: no malloc per request */
    size_t n_free_reqs;
    kvs_list_t release;     /* router_session_t whose held requests may go now, in order */
    uint32_t busy_sessions; /* sessions with requests at workers (router_route: fair share) */
    uint64_t orphan_units;  /* ... and what requests of clients gone still have there */
    uint32_t n_capped;      /* links with ROUTER_SHARD_CAP units or more (links[].units) */
    uv_timer_t cap_timer;   /* while sessions wait at a cap: their shards' replicas looked at */
    int cap_timer_on;       /* ... initialized (router_route_start) */
    kvs_buf_t scratch;      /* a request with positions attached, being sent */
    router_local_t *local;  /* reads of local shards answered here; NULL: local_reads off */
    kvs_buf_t local_out;    /* a part's answer built here, before it joins its merge */
    int draining;
    void (*on_drained)(router_t *r); /* all clients gone while draining */
    /* operations (router_ops.c) */
    kvs_hook_chain_t chain;       /* the request hooks: metrics, slow log, plugins */
    const kvs_plugins_t *plugins; /* loaded at start, or NULL */
    kvs_req_metrics_t reqm;       /* requests by command and status, end to end */
    kvs_slowlog_t slowlog;
    uint64_t accepted[2], refused[2]; /* clients, by protocol (0 kvs, 1 RESP) */
    /* More families for Metrics (the supervisor's, the process's), or NULL. */
    void (*add_metrics)(router_t *r, kvs_mb_t *b);
    struct router_http_s *http; /* router.metrics_listen, when set */
};

/* ---- clients (router_client.c) ------------------------------------------ */

/* Starts accepting clients on cfg->router_listen, and Redis protocol
 * clients on cfg->resp_listen when set, each on a socket of its own that
 * the node's other router processes share (SO_REUSEPORT, router_ports);
 * their inodes go to r->listen_inodes. Also listens on this process's own
 * unix socket (router_procs_admin_addr; kvs protocol, trusted like the
 * workers' sockets, no TLS, not counted in limits.max_clients), where the
 * master asks for its metrics and an operator may reach this process.
 * Returns 0 or a uv error. */
int router_clients_listen(router_t *r);

/* Descriptors a router process keeps for itself, beyond its clients: a
 * link to each replica of every shard (`links`, counted as at least one
 * per shard), with local reads (`local_reads`) data.mdb and lock.mdb of
 * every shard, 64 for the rest (worker spawns, the lock file, the log,
 * its own socket, name resolution), and ROUTER_ADMIN_MAX_CLIENTS for the
 * clients of its own socket. */
#define ROUTER_ADMIN_MAX_CLIENTS 32     /* clients of a router process's own socket at once */
#define ROUTER_SHARED_SLICE_NS 1000000u /* a client's slice while clients take turns */
uint64_t router_fd_reserve(const kvs_config_t *cfg, uint32_t links, int local_reads);

/* A reload: applies `next`'s limits.* to the clients (connected ones too,
 * see kvs_conn_group_set_limits) and recomputes the client cap. `next` is
 * only read during the call. */
void router_clients_reload(router_t *r, const kvs_config_t *next);

/* Stops accepting; every client is answered what it sent, then closed.
 * r->on_drained runs when the last one is gone. */
void router_clients_drain(router_t *r);

/* Binds this process's own socket again under its path (routerI.sock),
 * over whatever file is there, and closes the previous listener (the
 * connections it accepted stay). The master asks for it (SIGUSR2) when the
 * path was taken from this process: a process of the previous generation
 * that became ready after the switch took it over and removed it when it
 * drained. Returns 0 (also when draining or not listening: nothing to do)
 * or a uv error (logged; the previous listener stays). */
int router_clients_retake_admin(router_t *r);

/* Closes every client now. */
void router_clients_abort(router_t *r);

/* `req`, a request of `cl`, is complete (called by the route module); its
 * answer is in req->resp. */
void router_client_req_done(router_client_t *cl, router_req_t *req);

/* Queues a new request at `cl`'s FIFO tail (NULL when out of memory; the
 * client is then closed). */
router_req_t *router_client_enqueue(router_client_t *cl);

/* Whether the client is being closed (its connection is closing). */
int router_client_closing(const router_client_t *cl);

/* Whether `req` is the oldest request `cl` has not yet answered. */
int router_client_is_head(const router_client_t *cl, const router_req_t *req);

/* `req` of `cl` went through router_route (or was finished by the front
 * door): accounts its reservation and delivers it if it is done. */
void router_client_routed(router_client_t *cl, router_req_t *req);

/* Stop reading `cl`; close once every request received is answered
 * (Redis QUIT). */
void router_client_close_after_answers(router_client_t *cl);

/* The client's session (positions, held requests). */
router_session_t *router_client_session(router_client_t *cl);
/* The client's address, for a line its peer caused (it broke a rule),
 * when one may be logged now (kvs_conn_may_log: counted in its group's
 * budget); NULL when not. */
const char *router_client_peer_to_blame(router_client_t *cl);

/* `req` of client `cl` names a table (router_ops_note): the latest so far. */
void router_client_note_table(router_client_t *cl, const router_req_t *req);

/* Whether `cl` read a request naming a table after `req` (pipelined: it
 * may have run already, or run before `req` is answered). O(1), for
 * Hscan's page. */
int router_client_table_after(const router_client_t *cl, const router_req_t *req);

/* The client's connection holds `delta` more bytes for it (kvs_conn_hold):
 * requests held back count against its output limits. */
void router_client_hold(router_client_t *cl, ptrdiff_t delta);
/* The same for room kept for an answer on its way (kvs_conn_reserve):
 * counted in the client's own output limits, not in limits.output_buffers. */
void router_client_reserve(router_client_t *cl, ptrdiff_t delta);
/* Whether the client's output, less `not_output` bytes of it (requests
 * it holds), is at its high-water mark; if so, its draining calls
 * router_route_resume. */
int router_client_output_full(router_client_t *cl, size_t not_output);

/* What the client's connection counts as output that the router holds
 * for it outside the connection (kvs_conn_hold): held requests, answers
 * done behind an unanswered one, reservations. */
size_t router_client_held_output(const router_client_t *cl);

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

/* May `cl` run commands that need a right? (No users configured, or it is
 * authenticated.) */
int router_client_authenticated(const router_client_t *cl);

/* A RESP client's name (CLIENT SETNAME, HELLO ... SETNAME), shared by the
 * client and each request it sent while it had that name: each holds a
 * reference, so a request's hooks (the slow log) see the name it was sent
 * under, as Redis logs the name a command ran under. */
typedef struct router_name_s {
    uint32_t refs;
    char text[]; /* NUL-terminated */
} router_name_t;

/* A name of p[0..len) with one reference, or NULL when out of memory. */
router_name_t *router_name_new(const void *p, size_t len);

/* One more reference to `n` (NULL: none); returns n. */
router_name_t *router_name_ref(router_name_t *n);

/* Drops a reference (NULL: nothing); the last frees the name. */
void router_name_unref(router_name_t *n);

/* Sets the name `req` was sent under (a new reference; NULL: none), which
 * its hooks see as info.client_name. */
void router_req_set_name(router_req_t *req, router_name_t *n);

/* ---- requests (router_route.c) --------------------------------------------- */

/* A client request travelling through the router. The response is built in
 * `resp` (a complete frame); `done` says it is ready. Requests are kept in
 * their client's FIFO and leave in order. */
struct router_req_s {
    router_t *router;
    router_client_t *client; /* NULL once the client is gone */
    kvs_auth_conn_t *who;    /* its client's identity when users are configured, else NULL */
    router_req_t *next;      /* client FIFO */
    uint64_t seq;            /* its place among the client's requests (router_client_enqueue) */
    kvs_buf_t resp;
    size_t reserve;   /* output reserved for the answer while in flight (whole-table reads) */
    uint8_t raw;      /* resp holds the reply in the client's protocol (RESP), not a frame */
    uint8_t redis;    /* a RESP client's: the router's own words speak of fields, not keys */
    uint8_t rcmd;     /* RESP clients: how the kvs answer is shown (router_redis) */
    uint8_t rflags;   /* ... and its options */
    uint8_t rresp3;   /* ... in RESP3: the protocol when its command was read */
    uint8_t rfold;    /* ... one key of a DEL, UNLINK or EXISTS of several: ROUTER_FOLD_* */
    uint16_t rstatus; /* ... the status of an error reply the front door made, when not 400
                         (413 past a limit, 500 out of memory, 503 short of buffers) */
    void *rctx;       /* ... and its context (malloc'd, freed with the request) */
    int done;
    int in_route;
    Kvs__CommandRequest__CommandCase cmd; /* the request's command, once known */
    uint32_t parts_left;
    struct router_merge_s *merge; /* multi-part state, or NULL */
    int bound_write;              /* a write to a bound table, counted in the session's writes */
    int wrote_bound;    /* ... and stays so once answered (a later read's retry checks it) */
    router_try_t try0;  /* a single-part request's replicas (multi-part: the merge's) */
    int fwd_local;      /* a part went to a local worker: counted in the session's `forwarded` */
    uint32_t at_worker; /* what its parts at workers cost, counted in the session's `at_workers` */
    /* Held back by the session (router_session.h) until earlier writes
     * are answered: the request's bytes, kept until it is routed. */
    int held;
    int held_read;           /* it is a read of a bound table */
    size_t held_reserve;     /* output it holds for its answer meanwhile (answer_reserve) */
    int releasing;           /* being routed from the held list: not held again */
    router_req_t *held_next; /* the session's held list */
    kvs_buf_t held_payload;
    /* hooks: what they see of the request, and how far it got */
    kvs_request_info_t info;
    uint8_t stopped;  /* a RECEIVED hook stopped it: no EXECUTED */
    uint8_t executed; /* EXECUTED ran */
    /* A Slowlog read behind requests of its client still unanswered waits
     * to be the FIFO's head (router_ops_slowlog), so that it sees them
     * logged, as Redis runs one command after the other: its count and
     * reset until then. */
    uint8_t deferred;
    uint8_t slow_reset;
    uint32_t slow_count;
    uint8_t internal;    /* not a client's (a metrics scrape): no hooks, not counted */
    router_name_t *name; /* the client's name when it was read (a reference), or NULL */
    void (*on_done)(router_req_t *req); /* internal requests: the answer is in resp */
    void *done_arg;
    /* Past this point nothing is zeroed when a request is recycled. */
    char table_copy[KVS_MAX_TABLE + 1]; /* info.table, kept while hooks read it later */
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

/* Routes the held requests of the sessions on r->release that may go now
 * (the flusher's `before` step, so never inside another routing). */
void router_route_release(router_t *r);

/* Starts what routing needs of the loop (the cap's recheck timer: see
 * router_route.c). Returns 0 or a libuv error. */
int router_route_start(router_t *r);

/* Shard `shard` may have come below its cap (a link's units came down,
 * a link came up or went down: router_replica_capped): the sessions
 * waiting for it are released, in the order they were held (those that
 * find it capped still wait again). */
void router_route_cap_changed(router_t *r, uint32_t shard);

/* The client of session `s` may take answers again (its output drained
 * below the high-water mark): its held requests are released as far as
 * they may go, in the flusher's `before` step. */
void router_route_resume(router_t *r, router_session_t *s);

/* Forgets a closing client's held requests and its place on the release
 * list; the requests are freed. */
void router_route_forget(router_t *r, router_session_t *s);

/* A closing client's request still at workers frees itself when answered
 * (req->client becomes NULL); until then its work there keeps counting
 * against everyone's fair share (r->orphan_units): a client that pipelines
 * and closes at once, again and again, would otherwise leave work no
 * share counts, and each new connection a share of its own. */
void router_route_orphan(router_t *r, router_req_t *req);

/* Completes `req` with a status and message. */
void router_req_finish_status(router_req_t *req, uint32_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Marks `req` done (its answer is in req->resp) and tells its client. */
void router_req_complete(router_req_t *req);

/* For router_merge, which answers requests too: makes req->resp a frame
 * with `status`, the text in text[0..cap) (n = what snprintf reported;
 * cut to what fits max_frame beside the rest), whether a write may or may
 * not have happened (`unknown`: CommandResponse.outcome_unknown) and a
 * position (`tok`, or NULL)... */
void router_req_status_frame(router_req_t *req, uint32_t status, int unknown, const kvs_buf_t *tok,
                             char *text, size_t cap, int n);

/* ... makes req->resp the frame of payload[0..len) (empty when out of
 * memory: the client is closed) ... */
void router_req_set_answer(router_req_t *req, const uint8_t *payload, size_t len);

/* ... ends text[0..n) within `cap` bytes and what an answer of
 * limits.max_frame has room for, at a whole UTF-8 character ... */
void router_req_cut_message(const router_t *r, char *text, int n, size_t cap);

/* ... and notes a write answer's position `tok` in its connection's
 * session. */
void router_req_note_position(router_req_t *req, const uint8_t *tok, size_t len);

/* Frees a request (its client is done with it, or gone and it completed). */
void router_req_free(router_req_t *req);

/* ---- operations (router_ops.c) --------------------------------------------- */

/* Sets up metrics, the slow log (cfg's log.slow_*) and the hook chain
 * (built-in hooks, then `plugins`). Returns 0 or -ENOMEM. */
int router_ops_init(router_t *r, const kvs_config_t *cfg, const kvs_plugins_t *plugins);

/* Applies a reloaded config's slow log settings and rebuilds the chain.
 * Returns 0 or -ENOMEM (nothing changed). */
int router_ops_reload(router_t *r, const kvs_config_t *cfg);

/* Notes what hooks see of request `req`: command `cmd` on table[0..tlen)
 * (NULL: none), naming `keys` keys. The table is copied into the request
 * now while some hook reads it after RECEIVED (the slow log, plugins);
 * otherwise it points into the request's bytes until router_ops_forget
 * copies it. */
void router_ops_note(router_t *r, router_req_t *req, uint32_t cmd, const void *table, size_t tlen,
                     uint32_t keys);

/* RECEIVED for a valid, allowed request (noted). Returns 1 when a hook
 * stopped it, which is then answered (router_req_finish_status) with the
 * hook's status and message. A held request being released had its
 * RECEIVED already: 0. */
int router_ops_received(router_t *r, router_req_t *req);

/* The request's bytes are going: the table is copied into the request
 * if router_ops_note did not (a reload may add a hook that reads it while
 * the request is in flight). */
void router_ops_forget(router_req_t *req);

/* Slowlog: answers `req` from the router's own log (end-to-end times,
 * clients' addresses), emptying it afterwards if asked. */
void router_ops_slowlog(router_t *r, router_req_t *req, const Kvs__Slowlog *q);

/* Frees what router_ops_init allocated. */
void router_ops_close(router_t *r);

/* The router's own families (requests, clients, links); then
 * r->add_metrics's. */
void router_ops_metrics(router_t *r, kvs_mb_t *b);

/* The router's time for hooks, without a clock read per request: the time
 * of the latest read on its loop (a client's request, a worker's answers:
 * kvs_conn notes it once per read, and router_req_complete after a merge),
 * or the loop's own time (ms) when that is later (an answer a timer made,
 * such as a shard's timeout). */
static inline uint64_t router_now_ns(const router_t *r)
{
    uint64_t loop_ns = uv_now(r->loop) * 1000000u;
    return r->flusher.now_ns > loop_ns ? r->flusher.now_ns : loop_ns;
}

/* The loop's time in ms (uv_now), 0 without a loop (unit tests). */
static inline uint64_t router_now_ms(const router_t *r)
{
    return r->loop != NULL ? uv_now(r->loop) : 0;
}

/* Runs send event `ev` (BEFORE_SEND or AFTER_SEND) for `req`, whose
 * answer goes into its client's output now. Nothing registered, nothing
 * done. */
static inline void router_req_send_event(router_req_t *req, kvs_hook_event_t ev)
{
    router_t *r = req->router;
    char msg[KVS_HOOK_MSG];
    if (req->internal || !kvs_hook_any(&r->chain, ev))
        return;
    uint64_t now = router_now_ns(r); /* never before an earlier event's time */
    if (now > req->info.now_ns)
        req->info.now_ns = now;
    if (req->info.now_ns < req->info.received_ns)
        req->info.now_ns = req->info.received_ns;
    kvs_hook_run(&r->chain, ev, &req->info, msg, sizeof(msg));
}

/* The reply callback given to every link. */
void router_route_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                        const char *failure);

#endif
