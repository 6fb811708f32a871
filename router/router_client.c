/*
 * router_client: the router's client side. Accepts connections, turns each
 * frame into a router_req_t queued at the client's FIFO tail, and writes
 * answers strictly in FIFO order as their requests complete (a later
 * request that finishes first waits for the ones before it).
 *
 * Bounds: a client with limits.max_inflight requests in its FIFO is paused
 * (no more reading) until answers drain. Completed answers waiting for an
 * earlier request's are "held" output (kvs_conn_hold), and so is a whole
 * frame's worth for each whole-table read (Hgetall, Hscan, Info) in flight
 * (req->reserve), so kvs_conn's output limits count them: at the
 * high-water mark (a quarter of limits.client_output) the client's frames
 * stop being routed, past limits.client_output it is closed. Together these
 * bound what one client can make the router buffer, and how much work it
 * can queue on the links that all clients share. Requests a client's
 * session holds back (router_session.h: reads behind its writes to bound
 * tables) are held bytes too. Clients beyond limits.max_clients are
 * refused with 503.
 *
 * Identity (users configured): each client has a kvs_auth_conn_t, set by
 * its TLS certificate when the handshake completes, or by Auth. While an
 * Auth's token is being checked the client is paused (auth_req), so the
 * requests after it run as whoever it makes the client; the answer takes
 * its place in the FIFO like any other.
 * A client that has not authenticated is closed limits.auth_timeout
 * after it connected (kvs_conn_set_unproven), and the router keeps such
 * clients of each front door in connection order (r->unproven, a
 * kvs_unproven_t, which a worker's listeners use too): when a
 * front door is at limits.max_clients, a new client takes the place of
 * the oldest of them instead of being refused. One whose token is being
 * checked in the thread pool is spared (at most KVS_AUTH_MAX_WORKERS in the
 * process, so none of them can shield the others); one whose Auth waits
 * its turn is not (its attempt is dropped with it), and one whose Auth
 * failed goes to the head (the first to make room).
 * Clients nobody knows, however many and however fast, then never keep a
 * user out: a new client that authenticates within the time the flood
 * needs to open as many connections as there are unproven ones keeps its
 * place.
 *
 * Hooks: a request's info (what hooks see) starts at router_client_enqueue
 * with the client's address, the user it authenticated as (kvs_auth; ""
 * when nobody) and the time it was received (the time its bytes were
 * read, which kvs_conn notes once per read); router_route adds the rest. The send events run here,
 * as each answer goes into the client's output: BEFORE_SEND just before, AFTER_SEND just after (the
 * metrics hook and the slow log take the end-to-end time there).
 *
 * Lifetimes: a client that goes away leaves its unfinished requests
 * orphaned (req->client = NULL); each frees itself when its last part
 * answers. Held requests were never sent: they are freed with the client.
 * The client struct itself is freed in its connection's close callback,
 * after its FIFO was emptied or orphaned.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_redis.h"
#include "router.h"
#include "router_ports.h"
#include "router_procs.h"
#include "router_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUTER_FD_RESERVE 64
/* ROUTER_ADMIN_MAX_CLIENTS (router.h) caps the clients of a router
 * process's own socket (kvs-cli, the master's scrape): the node's own user
 * only, but a local tool opening thousands would take the descriptors the
 * links and the workers need. */

struct router_client_s {
    kvs_conn_t conn;
    router_t *router;
    int admin; /* on the private socket: ROUTER_ADMIN_MAX_CLIENTS, not limits.max_clients */
    router_session_t session;  /* positions of its writes, requests held behind them */
    uint64_t id;               /* unique within the process (hooks' conn_id) */
    int holding;               /* its run of frames holds local snapshots (router_local_hold) */
    router_req_t *head, *tail; /* FIFO of requests, oldest first */
    uint32_t inflight;
    uint64_t reqs_read;       /* requests read so far: each one's seq */
    uint64_t last_table;      /* seq of the latest one naming a table (router_client_note_table) */
    int closing_when_drained; /* peer hung up or broke framing: close once answered */
    int auth_closed;          /* limits.auth_failures reached: run nothing more it sent */
    router_redis_t *redis;    /* a RESP client (router.resp_listen), else NULL */
    kvs_auth_conn_t auth;     /* who it is (users configured) */
    router_req_t *auth_req;   /* an Auth whose token is being checked, or NULL */
    kvs_list_t link;          /* on the router's list of clients */
};

/* Appends the answer of `req` to the client's output in its protocol:
 * `payload` is the kvs answer (an encoded CommandResponse); RESP clients
 * get it converted, or req->resp as it is when the front door already
 * wrote the reply. Returns 0 or -ENOMEM. */
static int client_write(router_client_t *cl, router_req_t *req, const uint8_t *payload, size_t len)
{
    kvs_buf_t *out = &cl->conn.out;
    if (cl->redis != NULL) {
        if (req->raw && !req->rfold)
            return kvs_buf_append(out, req->resp.data, req->resp.len);
        /* A reply missing a piece (an array's header, a bulk's bytes)
         * would have the client take the rest for the next replies. */
        size_t start = out->len;
        unsigned long failures = kvs_redis_reply_failures();
        int rc = req->raw ? router_redis_fold(cl->redis, req, req->resp.data, req->resp.len, out)
                          : router_redis_answer(cl->redis, req, payload, len, out);
        if (rc == 0 && kvs_redis_reply_failures() != failures)
            rc = -ENOMEM;
        if (rc != 0)
            out->len = start;
        return rc;
    }
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    if (kvs_buf_reserve(out, sizeof(hdr) + len) != 0)
        return -ENOMEM;
    kvs_buf_put(out, hdr, sizeof(hdr));
    kvs_buf_put(out, payload, len);
    return 0;
}

/* Closes once every request received has been answered. A paused client
 * may still hold complete frames in its buffer: those count as received. */
static void client_maybe_close(router_client_t *cl)
{
    if (cl->closing_when_drained && cl->head == NULL && !kvs_conn_has_frame(&cl->conn))
        kvs_conn_close_after_flush(&cl->conn);
}

/* Pauses or resumes reading by the number of requests in flight. */
static void client_track_inflight(router_client_t *cl)
{
    kvs_conn_t *c = &cl->conn;
    c->owed = cl->inflight;
    if (c->flags & KVS_CONN_CLOSING)
        return;
    int paused = (c->flags & KVS_CONN_PAUSED) != 0;
    int hold = cl->inflight >= cl->router->cfg->max_inflight || cl->auth_req != NULL;
    if (!paused && hold)
        kvs_conn_pause(c);
    else if (paused && !hold)
        kvs_conn_resume(c);
}

/* The room kept for req's answer (req->reserve, kvs_conn_reserve) becomes
 * the answer, held until it moves into `out`; may close the client. */
static void client_reserved_answered(router_client_t *cl, router_req_t *req)
{
    kvs_conn_reserve(&cl->conn, -(ptrdiff_t)req->reserve);
    req->reserve = 0;
    kvs_conn_hold(&cl->conn, (ptrdiff_t)req->resp.len);
}

/* Runs the deferred Slowlog at the FIFO head in place: marked in_route,
 * its completion does not flush (a flush per Slowlog, nested, for a
 * pipeline of them), and its answer is accounted here as
 * router_client_req_done would. The loop then writes it. */
static void client_run_deferred(router_client_t *cl, router_req_t *req)
{
    Kvs__Slowlog q = KVS__SLOWLOG__INIT;
    q.count = req->slow_count;
    q.reset = req->slow_reset;
    req->deferred = 0;
    req->in_route = 1;
    router_ops_slowlog(cl->router, req, &q); /* completes it */
    req->in_route = 0;
    client_reserved_answered(cl, req);
}

/* Moves completed requests at the FIFO head into the output buffer. A
 * Slowlog that waited for the requests before it runs when it comes to
 * be the head, unless the client is being closed meanwhile (past its
 * output limit, say): it is then freed with the client. */
static void client_flush_done(router_client_t *cl)
{
    int wrote = 0;
    while (cl->head != NULL && (cl->head->done || cl->head->deferred)) {
        router_req_t *req = cl->head;
        if (!req->done) {
            if (cl->conn.flags & KVS_CONN_CLOSING)
                return;
            client_run_deferred(cl, req);
            if (cl->conn.flags & KVS_CONN_CLOSING) /* the answer passed the limit */
                return;
            continue;
        }
        cl->head = req->next;
        if (cl->head == NULL)
            cl->tail = NULL;
        cl->inflight--;
        size_t len = req->resp.len;
        int rc;
        router_req_send_event(req, KVS_HOOK_BEFORE_SEND);
        if (len == 0)
            rc = -ENOMEM;
        else if (cl->redis == NULL || (req->raw && !req->rfold)) /* a frame, or RESP already */
            rc = kvs_buf_append(&cl->conn.out, req->resp.data, len);
        else
            rc = client_write(cl, req, req->resp.data + KVS_FRAME_HEADER, len - KVS_FRAME_HEADER);
        if (rc != 0) {
            kvs_error("cannot queue an answer (out of memory); closing the client");
            router_req_free(req);
            kvs_conn_close(&cl->conn);
            return;
        }
        kvs_conn_hold(&cl->conn, -(ptrdiff_t)len); /* now in `out` instead */
        router_req_send_event(req, KVS_HOOK_AFTER_SEND);
        router_req_free(req);
        wrote = 1;
    }
    if (wrote)
        kvs_conn_queue(&cl->conn);
    client_track_inflight(cl);
    client_maybe_close(cl);
}

router_session_t *router_client_session(router_client_t *cl)
{
    return &cl->session;
}

const char *router_client_peer_to_blame(router_client_t *cl)
{
    return kvs_conn_may_log(&cl->conn) ? cl->conn.peer : NULL;
}

void router_client_hold(router_client_t *cl, ptrdiff_t delta)
{
    kvs_conn_hold(&cl->conn, delta);
}

void router_client_reserve(router_client_t *cl, ptrdiff_t delta)
{
    kvs_conn_reserve(&cl->conn, delta);
}

size_t router_client_held_output(const router_client_t *cl)
{
    return cl->conn.held + cl->conn.reserved;
}

int router_client_output_full(router_client_t *cl, size_t not_output)
{
    return kvs_conn_output_full(&cl->conn, not_output);
}

void router_client_req_done(router_client_t *cl, router_req_t *req)
{
    client_reserved_answered(cl, req); /* may close the client */
    client_flush_done(cl);
}

int router_client_deliver(router_client_t *cl, router_req_t *req, const uint8_t *payload,
                          size_t len)
{
    if (req != cl->head || (cl->conn.flags & KVS_CONN_CLOSING))
        return 0;
    router_req_send_event(req, KVS_HOOK_BEFORE_SEND);
    if (client_write(cl, req, payload, len) != 0)
        return 0;
    kvs_conn_reserve(&cl->conn, -(ptrdiff_t)req->reserve);
    cl->head = req->next;
    if (cl->head == NULL)
        cl->tail = NULL;
    cl->inflight--;
    router_req_send_event(req, KVS_HOOK_AFTER_SEND);
    router_req_free(req);
    kvs_conn_queue(&cl->conn);
    client_flush_done(cl); /* later answers may have been waiting on this one */
    return 1;
}

void router_client_note_table(router_client_t *cl, const router_req_t *req)
{
    if (req->seq > cl->last_table)
        cl->last_table = req->seq;
}

int router_client_table_after(const router_client_t *cl, const router_req_t *req)
{
    return cl->last_table > req->seq;
}

router_req_t *router_client_enqueue(router_client_t *cl)
{
    router_req_t *req = router_req_new(cl->router, cl);
    if (req == NULL) {
        kvs_error("out of memory for a request; closing the client");
        kvs_conn_close(&cl->conn);
        return NULL;
    }
    req->who = cl->router->auth != NULL ? &cl->auth : NULL;
    if (cl->tail != NULL)
        cl->tail->next = req;
    else
        cl->head = req;
    cl->tail = req;
    cl->inflight++;
    req->seq = ++cl->reqs_read;
    kvs_request_info_t *in = &req->info;
    in->struct_size = sizeof(*in);
    in->command_name = "none";
    const char *user = req->who != NULL ? kvs_auth_user_name(req->who) : NULL;
    in->peer = cl->conn.peer;
    in->identity = user != NULL ? user : ""; /* the user it authenticated as, both front doors */
    router_req_set_name(req, cl->redis != NULL ? router_redis_name(cl->redis) : NULL);
    req->redis = cl->redis != NULL;
    in->conn_id = cl->id;
    in->received_ns = cl->conn.read_ns; /* when its bytes were read: no clock read per request */
    return req;
}

int router_client_is_head(const router_client_t *cl, const router_req_t *req)
{
    return cl->head == req;
}

int router_client_closing(const router_client_t *cl)
{
    return (cl->conn.flags & KVS_CONN_CLOSING) != 0;
}

void router_client_routed(router_client_t *cl, router_req_t *req)
{
    kvs_conn_reserve(&cl->conn, (ptrdiff_t)req->reserve);
    if (req->done)
        router_client_req_done(cl, req);
    else
        client_track_inflight(cl);
}

void router_client_close_after_answers(router_client_t *cl)
{
    kvs_conn_stop_reading(&cl->conn);
    cl->closing_when_drained = 1;
    client_maybe_close(cl);
}

/* The end of a run of frames: the local snapshots its reads shared end
 * (router_local_hold). */
static void on_delivered(kvs_conn_t *c)
{
    router_client_t *cl = c->data;
    if (cl->holding) {
        cl->holding = 0;
        router_local_release(cl->router->local);
    }
    router_route_resume(cl->router, &cl->session); /* requests held for its output */
}

static void on_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    router_client_t *cl = c->data;
    if (!cl->holding) { /* the first frame of a run */
        cl->holding = 1;
        router_local_hold(cl->router->local);
    }
    if (cl->auth_closed) {
        /* Frames that arrived with the failing Auth (a pipeline) are
         * dropped, not run: another Auth among them would be checked past
         * limits.auth_failures. */
        router_client_close_after_answers(cl);
        return;
    }
    if (cl->redis != NULL) {
        router_redis_command(cl->redis, cl);
        return;
    }
    router_req_t *req = router_client_enqueue(cl);
    if (req == NULL)
        return;
    router_route(cl->router, req, payload, len);
    router_client_routed(cl, req);
}

static void on_conn_error(kvs_conn_t *c, int err)
{
    router_client_t *cl = c->data;
    router_t *r = cl->router;
    int capped = c->dec.max < r->cfg->max_frame; /* not authenticated: client_frame_limit */
    if (cl->redis != NULL &&
        (err == KVS_EPROTO || err == KVS_ELIMIT || err == KVS_ENOTLS || err == KVS_ETLSHELLO)) {
        router_req_t *req = router_client_enqueue(cl);
        if (req != NULL)
            router_redis_input_error(cl->redis, req, err, capped ? c->dec.max : 0);
    } else if (err == KVS_ETOOBIG || err == KVS_EPROTO) {
        router_req_t *req = router_client_enqueue(cl);
        if (req != NULL && err == KVS_ETOOBIG && capped)
            router_req_finish_status(req, KVS_STATUS_UNAUTHENTICATED,
                                     "frame of %u bytes from a client that has not "
                                     "authenticated, whose requests may be at most %u bytes: "
                                     "authenticate first (Auth, or a client certificate that "
                                     "names a user); the connection is closed",
                                     c->dec.bad_len, c->dec.max);
        else if (req != NULL && err == KVS_ETOOBIG)
            router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                     "frame of %u bytes exceeds limits.max_frame (%llu bytes); "
                                     "the connection is closed",
                                     c->dec.bad_len, (unsigned long long)r->cfg->max_frame);
        else if (req != NULL)
            router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                     "compressed frames are not supported (header bit 31 set); "
                                     "the connection is closed");
    } else if (err == KVS_ELIMIT) {
        router_req_t *req = router_client_enqueue(cl);
        if (req != NULL)
            router_req_finish_status(req, KVS_STATUS_UNAVAILABLE,
                                     "the server is short of memory for incomplete requests "
                                     "(limits.input_buffers); the connection is closed, retry");
    } else if (err == KVS_ENOTLS || err == KVS_ETLSHELLO) {
        /* In the clear either way: a plaintext client reads it, a TLS
         * client learns from its first bytes that this is no TLS port. */
        router_req_t *req = router_client_enqueue(cl);
        if (req != NULL)
            router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                     err == KVS_ENOTLS
                                         ? "this port requires TLS (tls.router); connect with "
                                           "TLS (kvs-cli --tls)"
                                         : "this port does not use TLS; connect without TLS");
    }
    cl->closing_when_drained = 1;
    client_flush_done(cl);
}

/* ---- identity ---------------------------------------------------------------- */

/* A client's largest request follows who it is: until it authenticates,
 * KVS_AUTH_UNAUTH_FRAME (enough for Ping and Auth), so that clients
 * nobody knows never hold the listener's input budget, and it has
 * limits.auth_timeout to authenticate in. Frames it sent
 * after an Auth are judged once that Auth is decided (it is paused
 * meanwhile). */
/* Not one to close at limits.max_clients: its token is being checked, or
 * waits its turn in the first lane (kvs_auth_conn_spared): a user's first
 * Auth queued behind a flood's is not closed before it is decided. Each
 * such client costs a flood an address with no failure in the last minute
 * and a check, after which that address waits in the second lane. */
static int auth_spared(const kvs_conn_t *c)
{
    const router_client_t *cl = c->data;
    return kvs_auth_conn_spared(&cl->auth);
}

/* A client whose Auth failed (it is still unproven): the first to make
 * room at limits.max_clients (kvs_unproven_to_front). */
static void unproven_to_front(router_client_t *cl)
{
    if (router_client_authenticated(cl) || cl->auth_req != NULL)
        return;
    kvs_unproven_to_front(&cl->router->unproven[cl->redis != NULL], &cl->conn);
}

static void client_frame_limit(router_client_t *cl)
{
    kvs_auth_bound_conn(&cl->conn, &cl->router->unproven[cl->redis != NULL],
                        (uint32_t)cl->router->cfg->max_frame, router_client_authenticated(cl));
}

/* limits.auth_failures reached: nothing more it sent runs (on_frame drops
 * what is buffered), and the connection closes once the answers before
 * are out. */
static void auth_refused_more(router_client_t *cl)
{
    kvs_conn_stop_reading(&cl->conn);
    cl->closing_when_drained = 1;
    cl->auth_closed = 1;
}

/* Answers an Auth of `cl`: a RESP HELLO ... AUTH takes effect now (its
 * protocol and name hold for the commands read after it), else the
 * answer is the check's status. */
static void auth_answer(router_client_t *cl, router_req_t *req, uint32_t status, const char *msg)
{
    if (cl->redis == NULL || !router_redis_auth_done(cl->redis, req, status))
        router_req_finish_status(req, status, "%s", msg);
}

static void on_auth_done(void *arg, uint32_t status, const char *msg, int close)
{
    router_client_t *cl = arg;
    router_req_t *req = cl->auth_req;
    cl->auth_req = NULL; /* before the answer: its flush resumes the client */
    client_frame_limit(cl);
    unproven_to_front(cl);
    if (close)
        auth_refused_more(cl);
    auth_answer(cl, req, status, msg);
}

void router_client_auth(router_client_t *cl, router_req_t *req, const Kvs__Auth *m)
{
    char msg[400];
    int close = 0;
    uint32_t st = kvs_auth_begin(cl->router->auth, &cl->auth, m, cl->conn.peer, on_auth_done, cl,
                                 msg, sizeof(msg), &close);
    if (st == 0) {
        cl->auth_req = req; /* answered by on_auth_done; the client waits */
        return;
    }
    client_frame_limit(cl);
    unproven_to_front(cl);
    if (close)
        auth_refused_more(cl);
    auth_answer(cl, req, st, msg);
}

int router_client_authenticated(const router_client_t *cl)
{
    return cl->router->auth == NULL || cl->auth.trusted || cl->auth.user != NULL;
}

static void on_tls_ready(kvs_conn_t *c)
{
    router_client_t *cl = c->data;
    const char *who = cl->router->auth != NULL
                          ? kvs_auth_by_certificate(cl->router->auth, &cl->auth, c->tls)
                          : NULL;
    client_frame_limit(cl);
    if (who != NULL)
        kvs_debug("%s: authenticated as \"%s\" by its certificate", c->peer, who);
}

static void on_conn_closed(kvs_conn_t *c)
{
    router_client_t *cl = c->data;
    router_t *r = cl->router;
    kvs_auth_conn_close(&cl->auth);
    kvs_unproven_closed(&r->unproven[cl->redis != NULL], &cl->conn);
    router_route_forget(r, &cl->session);
    for (router_req_t *req = cl->head, *next; req != NULL; req = next) {
        next = req->next;
        req->next = NULL;
        /* done; held (never sent); a Slowlog waiting for its turn; or an
         * Auth (no part will finish any of these) */
        if (req->done || req->held || req->deferred || req == cl->auth_req) {
            router_req_free(req);
        } else {
            router_route_orphan(r, req); /* frees itself when its parts answer */
            req->info.peer = "(gone)";   /* its name it holds itself */
        }
    }
    router_session_free(&cl->session);
    kvs_list_remove(&cl->link);
    r->n_clients--;
    if (cl->redis != NULL)
        r->n_resp_clients--;
    if (cl->admin)
        r->n_admin_clients--;
    router_redis_free(cl->redis);
    free(cl);
    if (r->draining && r->n_clients == 0 && r->on_drained != NULL)
        r->on_drained(r);
}

/* At limits.max_clients (or ROUTER_ADMIN_MAX_CLIENTS on the private
 * socket): accept only to say why, then close. */
static void refuse_client(router_t *r, uv_stream_t *server, int resp, int admin)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    int rc = 0;
    if (admin)
        rc = kvs_msg_append_status(&b, KVS_STATUS_UNAVAILABLE,
                                   "too many clients on this router process's own socket (%u at "
                                   "once); close some and retry",
                                   ROUTER_ADMIN_MAX_CLIENTS);
    else if (!resp) /* RESP: a fixed reply, router_redis_too_many_clients */
        rc = r->n_procs > 1
                 ? kvs_msg_append_status(&b, KVS_STATUS_UNAVAILABLE,
                                         "too many clients (%u, this router process's share of "
                                         "limits.max_clients over %u router processes); retry "
                                         "later",
                                         r->max_clients, r->n_procs)
                 : kvs_msg_append_status(&b, KVS_STATUS_UNAVAILABLE,
                                         "too many clients (limits.max_clients = %u); retry later",
                                         r->max_clients);
    /* (the private socket is never RESP, nor TLS) */
    const void *why = resp ? (const void *)router_redis_too_many_clients : b.data;
    size_t len = resp ? strlen(router_redis_too_many_clients) : b.len;
    if (rc != 0 || (r->tls != NULL && !admin)) { /* no memory for the reason; TLS: just close */
        why = NULL;
        len = 0;
    }
    kvs_conn_refuse(server, why, len);
    kvs_buf_free(&b);
    if (!admin)
        r->refused[resp != 0]++;
    uint64_t now = uv_now(r->loop);
    if (r->refused_log_ms == 0 || now - r->refused_log_ms >= 10000) {
        r->refused_log_ms = now;
        if (admin)
            kvs_warn("refusing clients of my own socket: %u connected at once (logged at most "
                     "every 10 s)",
                     ROUTER_ADMIN_MAX_CLIENTS);
        else if (r->n_procs > 1)
            kvs_warn("refusing %s clients: at %u, this router process's share of "
                     "limits.max_clients (split among %u router processes) (logged at most "
                     "every 10 s)",
                     resp ? "RESP" : "protobuf", r->max_clients, r->n_procs);
        else
            kvs_warn("refusing %s clients: at %u, limits.max_clients (logged at most "
                     "every 10 s)",
                     resp ? "RESP" : "protobuf", r->max_clients);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    router_t *r = server->data;
    if (status != 0) {
        kvs_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    int resp = server == &r->resp_listener.stream;
    int admin = server == &r->admin_listeners[r->admin_cur].stream; /* its own cap */
    size_t n = (resp ? r->n_resp_clients : r->n_clients - r->n_resp_clients - r->n_admin_clients) -
               r->unproven[resp].evicting;
    if (admin ? r->n_admin_clients >= ROUTER_ADMIN_MAX_CLIENTS
              : n >= r->max_clients &&
                    !kvs_unproven_evict(&r->unproven[resp], auth_spared, KVS_AUTH_SPARED)) {
        refuse_client(r, server, resp, admin);
        return;
    }
    router_client_t *cl = calloc(1, sizeof(*cl));
    if (cl == NULL ||
        (resp && (cl->redis = router_redis_new(
                      r, r->id_base | (++r->next_client_id & ROUTER_ID_COUNTER_MASK))) == NULL)) {
        kvs_error("out of memory accepting a client; closing it");
        free(cl);
        kvs_conn_refuse(server, NULL, 0); /* or the listener stops accepting */
        return;
    }
    cl->router = r;
    cl->id = ++r->next_conn_id;
    r->accepted[resp != 0]++;
    router_session_init(&cl->session);
    kvs_conn_init(&cl->conn, r->loop, server->type == UV_NAMED_PIPE, (uint32_t)r->cfg->max_frame,
                  on_frame, on_conn_error, on_conn_closed);
    if (resp) {
        cl->conn.codec = router_redis_codec(cl->redis);
        r->n_resp_clients++;
    }
    cl->conn.data = cl;
    cl->conn.flusher = &r->flusher;
    cl->conn.on_ready = on_tls_ready;
    cl->conn.on_delivered = on_delivered;
    cl->conn.stamp_reads = 1;
    /* A router commits nothing per turn (a worker does), so a client's
     * requests take a slice of its turn, not the worker's 20 ms; the
     * group bounds them all (router_client_listen). */
    cl->conn.turn_budget_ns = KVS_CONN_SLICE_NS;
    kvs_conn_join(&cl->conn, &r->group);
    kvs_list_push_front(&r->clients, &cl->link);
    r->n_clients++;
    cl->admin = admin;
    /* The master's scrape link stays connected, idle between scrapes:
     * limits.idle_timeout is for clients of the front doors. */
    cl->conn.keep_idle = admin;
    cl->conn.turn_exempt = admin; /* ... and its scrapes are not held behind clients */
    r->n_admin_clients += (size_t)admin;
    int rc = kvs_conn_accept_tls(&cl->conn, server, r->tls != NULL && !admin ? r->tls : NULL);
    /* Tokens only where nobody can overhear them. The private socket's
     * peers are the node's own user (its directory is private): trusted. */
    kvs_auth_conn_init(&cl->auth, admin,
                       admin || r->tls != NULL || kvs_conn_peer_is_local(&cl->conn));
    client_frame_limit(cl); /* before its first read (a callback to come) */
    if (rc != 0) {
        kvs_warn("accept failed: %s", kvs_strerror(rc));
        kvs_conn_close(&cl->conn);
    }
}

static void listen_failed(const char *where, int rc)
{
    if (rc == UV_EADDRINUSE)
        kvs_error("cannot listen on %s: %s (another process listens on this port without "
                  "sharing it, SO_REUSEPORT, or runs as another user; or a connection holds it "
                  "as its own local port, as any outgoing connection may a port in the kernel's "
                  "ephemeral range, net.ipv4.ip_local_port_range: `ss -tanp` shows which); stop "
                  "it or choose another port",
                  where, uv_strerror(rc));
    else
        kvs_error("cannot listen on %s: %s", where, uv_strerror(rc));
}

/* A client listener (`key`, at `text`) that other hosts can reach without
 * TLS is worth a warning at start: with no users, anyone who reaches it
 * may do everything; with users, no other host can authenticate. */
static void warn_exposed(const router_t *r, const char *key, const char *text,
                         const kvs_addr_t *addr)
{
    if (r->tls != NULL || kvs_addr_is_loopback(addr))
        return;
    if (r->auth == NULL)
        kvs_warn("%s %s is not a loopback address, clients connect without TLS and no users "
                 "are configured: anyone who can reach it can read and write every table (see "
                 "README, Security)",
                 key, text);
    else
        kvs_warn("%s %s is not a loopback address and clients connect without TLS: tokens sent "
                 "from other hosts are refused (they would travel in the clear), so those "
                 "clients cannot authenticate; enable tls.router",
                 key, text);
}

static int listen_resp(router_t *r)
{
    kvs_addr_t addr;
    char err[256];
    if (r->cfg->resp_listen[0] == '\0')
        return 0;
    int rc = kvs_addr_parse(r->cfg->resp_listen, 0, &addr, err, sizeof(err));
    if (rc != 0) {
        kvs_error("router.resp_listen: %s", err);
        return rc;
    }
    rc = router_ports_listen(r->loop, &addr, &r->resp_listener, on_connection,
                             &r->listen_inodes[r->n_listen]);
    if (rc != 0) {
        listen_failed(r->cfg->resp_listen, rc);
        return rc;
    }
    r->n_listen++;
    r->resp_listener.handle.data = r;
    r->resp_listening = 1;
    kvs_info("accepting Redis protocol clients on %s%s%s", r->cfg->resp_listen,
             r->tls ? " (TLS)" : "", r->auth ? ", users required" : "");
    warn_exposed(r, "router.resp_listen", r->cfg->resp_listen, &addr);
    return 0;
}

/* This process's own socket (router_procs_admin_addr), taken over from a
 * predecessor still draining (router_ports_listen_own). A process of a
 * membership change's new generation takes routerI.next instead: the
 * serving generation keeps routerI.sock until the master renames the new
 * one over it, so a change that fails leaves it where it was. */
static int listen_admin(router_t *r)
{
    kvs_addr_t path, bound;
    if (router_procs_admin_addr(r->cfg, r->proc_index, 0, &path) != 0 ||
        router_procs_admin_addr(r->cfg, r->proc_index, r->admin_next, &bound) != 0) {
        kvs_error("data_dir %s: router %u's own socket does not fit a unix socket address",
                  r->cfg->data_dir, r->proc_index);
        return UV_EINVAL;
    }
    memcpy(r->admin_path, path.path, sizeof(r->admin_path));
    memcpy(r->admin_bound, bound.path, sizeof(r->admin_bound));
    kvs_listener_t *l = &r->admin_listeners[r->admin_cur];
    int rc = router_ports_listen_own(r->loop, r->admin_bound, l, on_connection, &r->admin_ino);
    if (rc != 0) {
        char spec[200];
        snprintf(spec, sizeof(spec), "unix:%s", r->admin_bound);
        listen_failed(spec, rc);
        return rc;
    }
    l->handle.data = r;
    r->admin_listening = 1;
    return 0;
}

static void on_admin_closed(uv_handle_t *h)
{
    router_t *r = h->data;
    r->admin_closing = 0;
}

int router_clients_retake_admin(router_t *r)
{
    if (!r->admin_listening || r->draining)
        return 0;
    if (r->admin_closing) /* taken again a moment ago: it is this process's */
        return 0;
    /* Still ours: binding again would only reset the connections waiting
     * in the old listener's backlog. */
    if (router_ports_is_own(r->admin_path, r->admin_ino))
        return 0;
    int slot = !r->admin_cur;
    uint64_t ino;
    int rc = router_ports_listen_own(r->loop, r->admin_path, &r->admin_listeners[slot],
                                     on_connection, &ino);
    if (rc != 0) {
        kvs_warn("cannot take my own socket %s again: %s; /metrics and kvs-cli do not reach this "
                 "router process",
                 r->admin_path, uv_strerror(rc));
        return rc;
    }
    r->admin_listeners[slot].handle.data = r;
    r->admin_closing = 1;
    uv_close(&r->admin_listeners[r->admin_cur].handle, on_admin_closed);
    r->admin_cur = slot;
    memcpy(r->admin_bound, r->admin_path, sizeof(r->admin_bound));
    r->admin_ino = ino;
    kvs_info("took my own socket %s again", r->admin_path);
    return 0;
}

uint64_t router_fd_reserve(const kvs_config_t *cfg, uint32_t links, int local_reads)
{
    uint64_t n = links > cfg->shards ? links : cfg->shards;
    return n + (local_reads ? 2ull * cfg->shards : 0) + ROUTER_FD_RESERVE +
           ROUTER_ADMIN_MAX_CLIENTS;
}

int router_clients_listen(router_t *r)
{
    kvs_addr_t addr;
    char err[256];
    int rc = kvs_addr_parse(r->cfg->router_listen, 0, &addr, err, sizeof(err));
    if (rc != 0) {
        kvs_error("router.listen: %s", err);
        return rc;
    }
    kvs_conn_limits_t limits;
    kvs_conn_limits_from_config(&limits, r->cfg);
    rc = kvs_conn_group_init(&r->group, r->loop, &limits, "client");
    if (rc != 0)
        return rc;
    /* Each client's frames take a slice a turn (on_connection), all of
     * them together KVS_CONN_TURN_NS: a thousand clients
     * pipelining costly local reads would otherwise hold a turn for
     * seconds, the links' answers unread and the heartbeat unsent (the
     * master then kills the process, every client with it). */
    rc = kvs_conn_group_bound_turn(&r->group, KVS_CONN_TURN_NS);
    if (rc != 0)
        return rc;
    /* While clients take turns, a slice is ROUTER_SHARED_SLICE_NS: one
     * pipelining thousands of requests keeps another's request waiting
     * about that long, not a whole slice; one alone keeps whole slices. */
    kvs_conn_group_share_slices(&r->group, ROUTER_SHARED_SLICE_NS);
    /* Its own socket first: a process that cannot have it never joins
     * the client ports (whose backlog would be reset when it exits). */
    rc = listen_admin(r);
    if (rc != 0)
        return rc;
    r->max_clients =
        kvs_conn_max_clients(r->cfg->max_clients, r->cfg->resp_listen[0] ? 2 : 1,
                             (unsigned)router_fd_reserve(r->cfg, r->n_links, r->local != NULL));
    rc = router_ports_listen(r->loop, &addr, &r->listener, on_connection, &r->listen_inodes[0]);
    if (rc != 0) {
        listen_failed(r->cfg->router_listen, rc);
        return rc;
    }
    r->n_listen = 1;
    r->listener.handle.data = r;
    r->listening = 1;
    kvs_info("accepting clients on %s%s%s", r->cfg->router_listen, r->tls ? " (TLS)" : "",
             r->auth ? ", users required" : "");
    warn_exposed(r, "router.listen", r->cfg->router_listen, &addr);
    return listen_resp(r);
}

void router_clients_reload(router_t *r, const kvs_config_t *next)
{
    if (!r->listening)
        return; /* not accepting yet: router_clients_listen reads the new config */
    kvs_conn_limits_t limits;
    kvs_conn_limits_from_config(&limits, next);
    kvs_conn_group_set_limits(&r->group, &limits);
    /* The links and local reads are this process's, whatever `next` says
     * (a change of cluster.nodes starts new router processes). */
    r->max_clients =
        kvs_conn_max_clients(next->max_clients, next->resp_listen[0] ? 2 : 1,
                             (unsigned)router_fd_reserve(r->cfg, r->n_links, r->local != NULL));
}

void router_clients_drain(router_t *r)
{
    r->draining = 1;
    if (r->listening) {
        uv_close(&r->listener.handle, NULL);
        r->listening = 0;
    }
    if (r->resp_listening) {
        uv_close(&r->resp_listener.handle, NULL);
        r->resp_listening = 0;
    }
    if (r->admin_listening) {
        /* Whichever name it has now, unless a successor's is there. */
        router_ports_unlink_own(r->admin_path, r->admin_ino);
        router_ports_unlink_own(r->admin_bound, r->admin_ino);
        uv_close(&r->admin_listeners[r->admin_cur].handle, NULL);
        r->admin_listening = 0;
    }
    /* Stop reading new bytes, but answer every request already received,
     * including complete frames a paused client still has buffered. */
    kvs_list_t *pos, *tmp;
    KVS_LIST_EACH_SAFE(pos, tmp, &r->clients)
    {
        router_client_t *cl = KVS_LIST_ENTRY(pos, router_client_t, link);
        kvs_conn_stop_reading(&cl->conn);
        cl->closing_when_drained = 1;
        client_maybe_close(cl);
    }
    if (r->n_clients == 0 && r->on_drained != NULL)
        r->on_drained(r);
}

void router_clients_abort(router_t *r)
{
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &r->clients)
    {
        kvs_conn_close(&KVS_LIST_ENTRY(pos, router_client_t, link)->conn);
    }
}
