/*
 * node_server: the worker's network side. Accepts clients on a unix socket
 * and/or TCP, runs each request frame through node_cmd as it arrives, and at
 * the end of every loop turn (the flusher's `before` step) commits the
 * turn's write batch, then writes every client's responses in one go.
 *
 * Acknowledgement rule: a response is written only after the batch it ran
 * in has committed. Responses are encoded immediately (in request order)
 * into the client's output buffer, which is not flushed before the commit.
 *
 * Batch failure: each client remembers where in its output buffer its
 * first response of the current batch starts (mark) and how many responses
 * followed (marked). If the batch cannot commit, those responses are cut
 * off and replaced by as many error responses, so nothing that was not
 * stored is acknowledged and no uncommitted read is shown. A failure raised
 * while a client's own request executes is applied after that request
 * returns, so the handler's partial output is never cut under its feet.
 *
 * Deferred answers (node_slot.h): a request that cannot be answered while
 * it executes takes a slot in its client's FIFO of pending answers. While
 * a client's FIFO is not empty, every later answer is built in a slot of
 * its own (behind the earlier ones) instead of in the output buffer. Slots
 * move into the output buffer, in order, at the end of the loop turn,
 * after the commit: so the acknowledgement rule holds for them too, and a
 * batch failure rewrites a slot built inside the failed batch like any
 * other answer of that batch. A slot's request counts as owed output
 * (kvs_conn_hold) while it waits, so waiting requests are bounded by the
 * connection's output limits.
 *
 * Identity (users configured): TCP clients are authenticated by their TLS
 * certificate (a remote router's included) or by Auth, and every request
 * is authorized (node_cmd); unix socket clients (the local router) are
 * trusted. An Auth whose token is being checked pauses its client; its
 * answer is appended when the check is done, in a later turn, so it never
 * belongs to a write batch. As at the router's front doors, a client that
 * has not authenticated is closed limits.auth_timeout after it connected,
 * and a listener at limits.max_clients closes the oldest such client to
 * take a new one (kvs_unproven_t) instead of refusing it, sparing those
 * whose token is being checked right now: silent connections cannot keep
 * a remote router or a user out.
 *
 * Hooks: the worker's chain (kvs_hook) holds the built-in metrics hook and
 * the slow log (both at EXECUTED: a worker's service time) and the
 * plugins' hooks. node_cmd runs RECEIVED and EXECUTED as each request
 * runs; a request answered through a slot keeps what hooks see of it (its
 * info, with table and peer copied) in the slot, and its EXECUTED runs
 * when the slot is done. Only when some hook wants the send events does
 * each answer leave a record for the turn's end: BEFORE_SEND runs after
 * the commit, once the turn's answers (slots included) are in the output
 * buffers, AFTER_SEND once they were handed to the sockets.
 *
 * Shutdown: stop listening, let every client's queued responses (and
 * waiting answers, which the owner of the waits fails on shutdown) drain,
 * then close. The caller closes the store after the loop ends.
 */
#include "node_server.h"
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_hash.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_resp.h"
#include "kvs_testhook.h"
#include "kvs_time.h"
#include "node_cmd.h"
#include "node_slot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Descriptors kept back from clients: LMDB's files, Kafka's sockets and
 * pipes, the log. */
#define NODE_FD_RESERVE 128

/* The least a unix socket takes, whatever limits.max_clients says: it is
 * the node's own door (its directory is private), where the links of its
 * router processes come in (up to KVS_ROUTER_PROCESSES_MAX, twice that
 * while a membership change runs two generations), the master's probe and
 * scrape, and local tools. A cap on clients must never refuse them: a
 * router process whose link is refused cannot serve its shard at all. */
#define NODE_OWN_CLIENTS (2u * KVS_ROUTER_PROCESSES_MAX + 32u)

typedef struct node_client_s node_client_t;

/* What hooks see of a request, kept past its frame: for the send events
 * (a turn's records), and in a slot whose answer comes later. */
typedef struct turn_rec_s {
    kvs_request_info_t info;
    char table[KVS_MAX_TABLE + 2]; /* a refused name's 201 bytes (hook_note) and a NUL */
    char peer[64];
} turn_rec_t;

/* A run's writes check their peer again once this long passed since the
 * last check (on_frame): far below any router.timeout worth having, far
 * above the time a write takes. */
#define PEER_RECHECK_NS 1000000u
#define TURN_RECS_KEEP 4096 /* a record array larger than this is given back after its turn */

struct node_slot_s {
    node_client_t *cl; /* NULL once the client is gone */
    node_server_t *srv;
    node_slot_t *next; /* the client's FIFO */
    kvs_buf_t buf;     /* the answer */
    uint64_t gen;      /* batch the answer was built in (0: none) */
    size_t held;       /* bytes held against the connection for it */
    int done;
    int deferred;   /* a handler holds it (node_slot_done will come) */
    int ordered;    /* the client's later requests wait for this answer */
    int has_rec;    /* `rec` describes its request (hooks) */
    int executed;   /* EXECUTED ran for it */
    turn_rec_t rec; /* what hooks see of its request */
};

struct node_client_s {
    kvs_conn_t conn;
    node_server_t *srv;
    uint64_t id;               /* unique within the process, for hooks */
    int listener;              /* index of the listener it came through */
    uint64_t mark_gen;         /* batch generation `mark` refers to (0 = none) */
    size_t mark;               /* out offset of the first response in that batch */
    uint32_t marked;           /* responses since mark */
    node_client_t *batch_next; /* members of the current turn */
    int on_batch_list;
    node_slot_t *head, *tail;  /* answers that wait (FIFO), oldest first */
    size_t open;               /* slots not done yet */
    node_client_t *ready_next; /* clients whose FIFO head may be done */
    int on_ready_list;
    int waiting_ordered;        /* paused behind an ordered slot */
    node_client_t *resume_next; /* clients to resume on the next loop turn */
    int on_resume_list;
    kvs_auth_conn_t auth;         /* who it is (users configured) */
    int auth_close;               /* Auth failed too often: close after its answer */
    int error_close;              /* input ended with answers owed: close once they are out */
    node_slot_t *auth_slot;       /* the Auth whose token is being checked, or NULL */
    kvs_list_t link;              /* on the list of all clients */
    int streaming;                /* handed to the snapshot sender: serves nothing else */
    int acking;                   /* its stream ended: waits for the receiver's acknowledgement */
    node_handoff_mark_t ack_mark; /* when the copy was taken (node_handoff) */
    char ack_node[KVS_NODE_NAME_MAX + 1]; /* the receiver's node, "" for a client */
    uint8_t ack_hash[KVS_HASH_LEN];       /* the copy's checksum, which it must echo */
    uint64_t peer_checked_ns; /* uv_hrtime this run of frames found its peer there; 0: not yet */
};

/* How long a receiver has, once its stream was all written to it (a slow
 * reader is not cut off: kvs_conn_set_deadline), to acknowledge the copy
 * on the stream's connection: installing it is a sync and a rename.
 * One that misses it says it again on a connection of its own
 * (node_ack), recorded through the sent line; the stream's connection
 * does not hold a client slot for ever. A test build's
 * KVS_TEST_SNAPSHOT_ACK_WAIT_MS replaces it (a test need not wait 30 s). */
#define ACK_WAIT_MS 30000u

/* A write batch's failure: its generation (0: none) and error. */
typedef struct exec_fail_s {
    uint64_t gen;
    int err;
} exec_fail_t;

struct node_server_s {
    uv_loop_t *loop;
    node_store_t *store;
    node_cmd_ctx_t cmd;
    uint32_t max_frame;
    kvs_listener_t listeners[2];
    kvs_tls_ctx_t *listener_tls[2]; /* TLS of each listener, or NULL */
    size_t listener_clients[2];     /* clients per listener, each capped (listener_cap) */
    kvs_unproven_t unproven[2];     /* each listener's clients yet to authenticate */
    int n_listeners;
    uint32_t max_clients;
    uint64_t refused_log_ms;
    uint64_t gone_log_ms; /* last line about writes of a peer that was gone */
    uint64_t left_log_ms; /* ... about a write its peer left while it ran */
    kvs_auth_t *auth;
    kvs_conn_group_t groups[2]; /* each listener's clients, under limits.* */
    int unix_listener[2];       /* groups[i] is a unix socket's: no output budget */
    kvs_flusher_t flusher;
    uv_timer_t sync_timer;
    int sync_timer_on;
    kvs_list_t clients; /* node_client_t, newest first */
    size_t n_clients;
    node_client_t *batch_members;
    node_client_t *ready;  /* clients with done slots to move out */
    node_client_t *resume; /* clients to resume (from resume_timer) */
    uv_timer_t resume_timer;
    uv_idle_t kick;           /* active while answers wait for the turn's end: no blocking poll */
    node_client_t *executing; /* client whose request is running */
    uint64_t exec_started_ns; /* ... when it began (uv_hrtime), for writes; else 0 */
    node_slot_t *exec_slot;   /* the slot its answer goes into, if any */
    int exec_deferred;        /* ... taken by the handler (answer later) */
    exec_fail_t exec_fail;    /* a batch failure raised during it (take_exec_fail) */
    int stopping;
    node_server_stopped_cb on_stopped;
    void *stopped_arg;
    int closing_handles;
    node_server_turn_cb turn_cb;
    void *turn_arg;
    node_snapshot_t *snapshot; /* the Snapshot command's sender, or NULL */
    node_handoff_t *handoff;   /* the fence the Snapshot command raises, or NULL */
    int fence_raised;          /* by the snapshot being sent: lowered if it is not delivered */
    uint64_t ack_wait_ms;      /* ACK_WAIT_MS (KVS_TEST_SNAPSHOT_ACK_WAIT_MS in a test build) */
    char ack_why[200];         /* the log line's reason when it passes */
    /* operations */
    kvs_hook_chain_t chain;
    const kvs_plugins_t *plugins;
    kvs_req_metrics_t reqm;
    kvs_slowlog_t slowlog;
    uint64_t next_client_id;
    uint64_t reloads[3]; /* ok, error, refused */
    double start_time;
    char shard_label[16];
    turn_rec_t *recs; /* requests of this turn, for the send events */
    size_t n_recs, cap_recs;
    kvs_log_budget_t batch_errs; /* lines about failed write batches and periodic syncs */
};

/* ---- batch failure ----------------------------------------------------- */

/* A batch whose commit failed writing LMDB's meta page (KVS_EBROKEN) may be
 * on disk or not: its answers say outcome_unknown. */
static int append_unknown(kvs_buf_t *out)
{
    kvs_resp_t r;
    kvs_resp_begin(&r, out);
    kvs_resp_status(&r, KVS_STATUS_INTERNAL);
    kvs_resp_message(&r, "storage error: writing the commit of the write batch holding this "
                         "request failed, and it may or may not be stored (read the keys to "
                         "find out); this shard's worker restarts");
    kvs_resp_outcome_unknown(&r);
    return kvs_resp_end(&r);
}

/* Appends n error answers for requests of a failed batch. Returns 0, or an
 * error when not all of them fit (out of memory): then `out` holds fewer
 * answers than requests, and the caller must not send it as it is. */
static int append_batch_errors(kvs_buf_t *out, uint32_t n, int err, const char *cause)
{
    for (uint32_t i = 0; i < n; i++) {
        int rc;
        if (err == KVS_EFULL)
            rc = kvs_msg_append_status(out, KVS_STATUS_NO_SPACE,
                                       "storage is full: the write batch holding this request "
                                       "was not stored (free disk space on the data directory)");
        else if (err == KVS_EBROKEN)
            rc = append_unknown(out);
        else
            rc = kvs_msg_append_status(out, KVS_STATUS_INTERNAL,
                                       "storage error (%s): the write batch holding this request "
                                       "was not stored",
                                       err == KVS_ESTORE ? cause : kvs_strerror(err));
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Replaces a client's responses from the failed batch with errors: those
 * in its output buffer since the mark, and those waiting in slots. */
static void rewrite_failed(node_client_t *cl, uint64_t gen, int err, size_t from, uint32_t extra)
{
    kvs_buf_t *out = &cl->conn.out;
    uint32_t n = extra;
    if (cl->mark_gen == gen) {
        from = cl->mark;
        n += cl->marked;
    }
    if (n > 0) {
        if (out->len > from)
            out->len = from;
        /* Fewer answers than requests would have the client take each
         * later answer for the request before it (a 200 for a write that
         * failed): without room for all of them, the connection goes. */
        if (append_batch_errors(out, n, err, node_store_cause(cl->srv->store)) != 0) {
            kvs_error("out of memory for the answers of a failed write batch; closing the "
                      "connection");
            out->len = from;
            kvs_conn_close(&cl->conn);
        }
    }
    cl->mark_gen = 0;
    cl->marked = 0;
    for (node_slot_t *s = cl->head; s != NULL; s = s->next) {
        if (!s->done || s->gen != gen)
            continue;
        size_t before = s->buf.len;
        s->buf.len = 0;
        /* An error that does not fit leaves the slot empty (a failed
         * append adds nothing): flush_slots closes the connection. */
        (void)append_batch_errors(&s->buf, 1, err, node_store_cause(cl->srv->store));
        kvs_conn_hold(&cl->conn, (ptrdiff_t)s->buf.len - (ptrdiff_t)before);
        s->held = s->held - before + s->buf.len;
        s->gen = 0;
    }
}

static int has_gen(const node_client_t *cl, uint64_t gen)
{
    if (cl->mark_gen == gen)
        return 1;
    for (const node_slot_t *s = cl->head; s != NULL; s = s->next)
        if (s->done && s->gen == gen)
            return 1;
    return 0;
}

void node_server_flush_logs(node_server_t *srv)
{
    kvs_log_budget_flush(&srv->batch_errs, uv_now(srv->loop));
}

static void on_batch_failed(void *arg, uint64_t gen, int err)
{
    node_server_t *srv = arg;
    /* a full disk fails every batch until room is made: a few lines, then a count */
    if (kvs_log_budget_take(&srv->batch_errs, uv_now(srv->loop)))
        kvs_error("write batch %llu failed: %s; its requests are answered with errors",
                  (unsigned long long)gen, kvs_strerror(err));
    for (node_client_t *cl = srv->batch_members; cl != NULL; cl = cl->batch_next) {
        if (cl == srv->executing) {
            srv->exec_fail = (exec_fail_t){gen, err}; /* applied when its request returns */
            continue;
        }
        if (has_gen(cl, gen))
            rewrite_failed(cl, gen, err, cl->mark, 0);
    }
    if (srv->executing != NULL && srv->exec_fail.gen == 0)
        srv->exec_fail = (exec_fail_t){gen, err};
}

static void batch_list_add(node_server_t *srv, node_client_t *cl)
{
    if (!cl->on_batch_list) {
        cl->on_batch_list = 1;
        cl->batch_next = srv->batch_members;
        srv->batch_members = cl;
    }
}

/* The batch failure raised while the request that just returned ran,
 * taken out of `srv` at once on every path out of on_frame (one left
 * behind would fail the next request run, whose write a later batch
 * stores). */
static exec_fail_t take_exec_fail(node_server_t *srv)
{
    exec_fail_t f = srv->exec_fail;
    srv->exec_fail.gen = 0;
    return f;
}

/* After a request ran: note that its response belongs to the open batch,
 * or apply the failure `f` raised while it ran. `slot` is where the
 * answer went (finished already), or NULL: the output buffer, from offset
 * `before`. */
static void track_batch(node_client_t *cl, node_slot_t *slot, size_t before, exec_fail_t f)
{
    node_server_t *srv = cl->srv;
    if (f.gen != 0) {
        if (slot != NULL) {
            slot->gen = f.gen;
            rewrite_failed(cl, f.gen, f.err, 0, 0);
        } else {
            rewrite_failed(cl, f.gen, f.err, before, 1);
        }
        return;
    }
    uint64_t gen = node_store_batch_gen(srv->store);
    if (gen == 0)
        return;
    if (slot != NULL) {
        slot->gen = gen;
    } else {
        if (cl->mark_gen != gen) {
            cl->mark_gen = gen;
            cl->mark = before;
            cl->marked = 0;
        }
        cl->marked++;
    }
    batch_list_add(srv, cl);
}

/* ---- send events -------------------------------------------------------------- */

/* Whether any hook wants the send events (then each answer leaves a
 * record for the turn's end). */
static int send_events_wanted(const node_server_t *srv)
{
    return kvs_hook_any(&srv->chain, KVS_HOOK_BEFORE_SEND) ||
           kvs_hook_any(&srv->chain, KVS_HOOK_AFTER_SEND);
}

/* Copies `in` into `r`, with its table and peer (which die with the
 * request's bytes and its connection). */
static void rec_fill(turn_rec_t *r, const kvs_request_info_t *in)
{
    size_t n = in->table != NULL && in->table_len < sizeof(r->table) ? in->table_len : 0;
    r->info = *in;
    memcpy(r->table, in->table != NULL ? in->table : "", n);
    r->table[n] = '\0';
    r->info.table = in->table != NULL ? r->table : NULL;
    r->info.table_len = (uint32_t)n;
    snprintf(r->peer, sizeof(r->peer), "%s", in->peer != NULL ? in->peer : "");
    r->info.peer = r->peer;
}

/* Keeps a request answered this turn for the turn's send events. */
static void keep_record(node_server_t *srv, const kvs_request_info_t *in)
{
    if (srv->n_recs == srv->cap_recs) {
        size_t cap = srv->cap_recs ? srv->cap_recs * 2 : 64;
        turn_rec_t *r = realloc(srv->recs, cap * sizeof(*r));
        if (r == NULL) {
            kvs_warn("out of memory: a request's send hooks are skipped");
            return;
        }
        srv->recs = r;
        srv->cap_recs = cap;
    }
    rec_fill(&srv->recs[srv->n_recs++], in);
}

static void run_send_event(node_server_t *srv, kvs_hook_event_t ev)
{
    char msg[KVS_HOOK_MSG];
    if (srv->n_recs == 0 || !kvs_hook_any(&srv->chain, ev))
        return;
    uint64_t now = kvs_now_ns();
    for (size_t i = 0; i < srv->n_recs; i++) {
        srv->recs[i].info.now_ns = now;
        kvs_hook_run(&srv->chain, ev, &srv->recs[i].info, msg, sizeof(msg));
    }
}

/* The flusher's `after` step: the turn's answers went to the sockets. */
static void on_flushed(kvs_flusher_t *f)
{
    node_server_t *srv = f->data;
    run_send_event(srv, KVS_HOOK_AFTER_SEND);
    srv->n_recs = 0;
    if (srv->cap_recs > TURN_RECS_KEEP) {
        free(srv->recs);
        srv->recs = NULL;
        srv->cap_recs = 0;
    }
}

/* ---- slots ------------------------------------------------------------------ */

static node_slot_t *slot_push(node_client_t *cl)
{
    node_slot_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->cl = cl;
    s->srv = cl->srv;
    if (cl->tail != NULL)
        cl->tail->next = s;
    else
        cl->head = s;
    cl->tail = s;
    cl->open++;
    cl->conn.owed = cl->open;
    return s;
}

static void slot_free(node_slot_t *s)
{
    kvs_buf_free(&s->buf);
    free(s);
}

static void on_kick(uv_idle_t *h)
{
    (void)h; /* its being active is what counts: the loop does not block before its turn ends */
}

/* A slot answered from a timer must not wait for whatever wakes the loop
 * next: the idle handle keeps the poll from blocking until flush_slots. */
static void ready_add(node_server_t *srv, node_client_t *cl)
{
    if (!cl->on_ready_list) {
        cl->on_ready_list = 1;
        cl->ready_next = srv->ready;
        srv->ready = cl;
        if (!uv_is_closing((uv_handle_t *)&srv->kick))
            uv_idle_start(&srv->kick, on_kick);
    }
}

static void on_resume_timer(uv_timer_t *t)
{
    node_server_t *srv = t->data;
    while (srv->resume != NULL) {
        node_client_t *cl = srv->resume;
        srv->resume = cl->resume_next;
        cl->on_resume_list = 0;
        if (!cl->waiting_ordered)
            kvs_conn_resume(&cl->conn); /* runs its buffered requests now */
    }
}

/* An ordered slot is answered: the client's later requests may run, but
 * not from here (this may be inside the turn's commit step, where a
 * request would write into a batch that is already committed): on the
 * next loop turn. */
static void resume_later(node_server_t *srv, node_client_t *cl)
{
    cl->waiting_ordered = 0;
    if (!cl->on_resume_list) {
        cl->on_resume_list = 1;
        cl->resume_next = srv->resume;
        srv->resume = cl;
    }
    uv_timer_start(&srv->resume_timer, on_resume_timer, 0, 0);
}

/* Marks a slot answered; its bytes are held for the connection until they
 * move into its output buffer. */
static void slot_finish(node_slot_t *s)
{
    node_client_t *cl = s->cl;
    s->done = 1;
    if (s->ordered)
        resume_later(cl->srv, cl);
    cl->open--;
    cl->conn.owed = cl->open;
    kvs_conn_hold(&cl->conn, (ptrdiff_t)s->buf.len - (ptrdiff_t)s->held);
    s->held = s->buf.len;
    ready_add(cl->srv, cl);
}

static node_slot_t *defer_current(void *arg, size_t cost, int ordered)
{
    node_server_t *srv = arg;
    node_client_t *cl = srv->executing;
    if (cl == NULL || srv->exec_deferred)
        return NULL;
    if (srv->exec_slot == NULL && (srv->exec_slot = slot_push(cl)) == NULL)
        return NULL;
    srv->exec_deferred = 1;
    srv->exec_slot->deferred = 1;
    srv->exec_slot->held = cost;
    srv->exec_slot->ordered = ordered;
    kvs_conn_hold(&cl->conn, (ptrdiff_t)cost);
    if (ordered) {
        cl->waiting_ordered = 1;
        kvs_conn_pause(&cl->conn);
    }
    return srv->exec_slot;
}

kvs_buf_t *node_slot_buf(node_slot_t *s)
{
    return &s->buf;
}

int node_slot_wanted(const node_slot_t *s)
{
    return s->cl != NULL;
}

void node_slot_done(node_slot_t *s)
{
    if (s->has_rec && !s->executed && s->buf.len >= KVS_FRAME_HEADER) {
        s->executed = 1; /* its answer is known now (the client may be gone: it ran all the same) */
        if (node_cmd_executed(&s->srv->chain, &s->rec.info, &s->buf, 0) != 0)
            kvs_error("out of memory replacing an answer a hook stopped; the answer stays");
    }
    if (s->cl == NULL) {
        slot_free(s); /* orphaned: nobody wants the answer */
        return;
    }
    slot_finish(s);
}

/* Moves the done slots at the head of each ready client's FIFO into its
 * output buffer (after the turn's commit). */
static void flush_slots(node_server_t *srv)
{
    uv_idle_stop(&srv->kick);
    while (srv->ready != NULL) {
        node_client_t *cl = srv->ready;
        srv->ready = cl->ready_next;
        cl->on_ready_list = 0;
        int moved = 0;
        while (cl->head != NULL && cl->head->done) {
            node_slot_t *s = cl->head;
            cl->head = s->next;
            if (cl->head == NULL)
                cl->tail = NULL;
            /* An empty slot is an answer that could not be built (even
             * its 500): sending nothing for it would have the client take
             * each later answer for the request before, so the connection
             * goes, as the router's client does (client_flush_done). */
            if (s->buf.len == 0 || kvs_buf_append(&cl->conn.out, s->buf.data, s->buf.len) != 0) {
                kvs_error("%s (out of memory); closing the connection",
                          s->buf.len == 0 ? "an answer could not be built"
                                          : "cannot queue an answer");
                slot_free(s);
                kvs_conn_close(&cl->conn);
                break;
            }
            kvs_conn_hold(&cl->conn, -(ptrdiff_t)s->held);
            if (s->has_rec && send_events_wanted(srv))
                keep_record(srv, &s->rec.info);
            slot_free(s);
            moved = 1;
        }
        if (moved)
            kvs_conn_queue(&cl->conn);
        if ((srv->stopping || cl->auth_close || cl->error_close) && cl->head == NULL)
            kvs_conn_close_after_flush(&cl->conn);
    }
}

static void resume_list_remove(node_server_t *srv, node_client_t *cl)
{
    for (node_client_t **p = &srv->resume; *p != NULL; p = &(*p)->resume_next) {
        if (*p == cl) {
            *p = cl->resume_next;
            break;
        }
    }
    cl->on_resume_list = 0;
}

static void ready_list_remove(node_server_t *srv, node_client_t *cl)
{
    for (node_client_t **p = &srv->ready; *p != NULL; p = &(*p)->ready_next) {
        if (*p == cl) {
            *p = cl->ready_next;
            break;
        }
    }
    cl->on_ready_list = 0;
}

static void batch_list_remove(node_server_t *srv, node_client_t *cl)
{
    for (node_client_t **p = &srv->batch_members; *p != NULL; p = &(*p)->batch_next) {
        if (*p == cl) {
            *p = cl->batch_next;
            break;
        }
    }
    cl->on_batch_list = 0;
}

static void wake_flusher(void *arg)
{
    kvs_flusher_wake(arg);
}

/* The flusher's `before` step: end of a loop turn. */
static void on_turn_end(kvs_flusher_t *f)
{
    node_server_t *srv = f->data;
    int rc = node_store_end_turn(srv->store); /* failures were handled by on_batch_failed */
    if (srv->turn_cb != NULL)
        srv->turn_cb(srv->turn_arg, rc);
    node_snapshot_turn_end(srv->snapshot);
    while (srv->batch_members != NULL) {
        node_client_t *cl = srv->batch_members;
        srv->batch_members = cl->batch_next;
        cl->on_batch_list = 0;
        cl->mark_gen = 0;
        cl->marked = 0;
        for (node_slot_t *sl = cl->head; sl != NULL; sl = sl->next)
            sl->gen = 0; /* committed */
        if (cl->head != NULL && cl->head->done)
            ready_add(srv, cl);
    }
    flush_slots(srv);
    run_send_event(srv, KVS_HOOK_BEFORE_SEND);
}

/* ---- clients ------------------------------------------------------------- */

/* ---- identity ---------------------------------------------------------------- */

/* A client's largest request follows who it is: until it authenticates,
 * KVS_AUTH_UNAUTH_FRAME (enough for Ping and Auth), so that clients
 * nobody knows never hold the listener's input budget, and it has
 * limits.auth_timeout to authenticate in. */
static void client_frame_limit(node_client_t *cl)
{
    node_server_t *srv = cl->srv;
    kvs_auth_bound_conn(&cl->conn, &srv->unproven[cl->listener], srv->max_frame,
                        srv->auth == NULL || cl->auth.trusted ||
                            kvs_auth_user_name(&cl->auth) != NULL);
}

/* After an Auth: a client it left unproven (it failed) is the first to
 * make room at limits.max_clients (kvs_unproven_to_front). */
static void auth_failed(node_client_t *cl)
{
    if (cl->auth_slot == NULL)
        kvs_unproven_to_front(&cl->srv->unproven[cl->listener], &cl->conn);
}

/* Not one to close at limits.max_clients: its token is being checked,
 * or waits its turn in the first lane (kvs_auth_conn_spared). */
static int auth_spared(const kvs_conn_t *c)
{
    const node_client_t *cl = c->data;
    return kvs_auth_conn_spared(&cl->auth);
}

static void on_auth_done(void *arg, uint32_t status, const char *msg, int close)
{
    node_client_t *cl = arg;
    node_slot_t *slot = cl->auth_slot;
    cl->auth_slot = NULL;
    client_frame_limit(cl);
    auth_failed(cl);
    if (slot == NULL)
        return;
    kvs_msg_append_status(node_slot_buf(slot), status, "%s", msg);
    if (close)
        cl->auth_close = 1; /* closed once its answer is out (flush_slots) */
    node_slot_done(slot);
}

/* node_cmd's Auth hook, for the client being executed. A token check runs
 * in the thread pool: the answer takes an ordered slot, so the client's
 * later requests wait and run as whoever the Auth makes it, and answers
 * keep their order. */
static int node_auth(void *arg, const Kvs__Auth *m, kvs_buf_t *out)
{
    node_server_t *srv = arg;
    node_client_t *cl = srv->executing;
    char msg[400];
    uint32_t st = kvs_auth_begin(srv->auth, &cl->auth, m, cl->conn.peer, on_auth_done, cl, msg,
                                 sizeof(msg), &cl->auth_close);
    if (st != 0) {
        client_frame_limit(cl);
        auth_failed(cl);
        return kvs_msg_append_status(out, st, "%s", msg);
    }
    if ((cl->auth_slot = defer_current(srv, 64, 1)) == NULL)
        return -ENOMEM; /* the connection is closed, which cancels the check */
    return 0;
}

static void on_tls_ready(kvs_conn_t *c)
{
    node_client_t *cl = c->data;
    node_server_t *srv = cl->srv;
    const char *who =
        srv->auth != NULL ? kvs_auth_by_certificate(srv->auth, &cl->auth, c->tls) : NULL;
    client_frame_limit(cl);
    if (who != NULL)
        kvs_debug("%s: authenticated as \"%s\" by its certificate", c->peer, who);
    else if (srv->auth != NULL && kvs_tls_peer_verified(c->tls) && kvs_conn_may_log(c))
        kvs_warn("%s: its certificate names no user (users: in config.yaml; a router's node "
                 "certificate needs one), so it may only Ping and Auth",
                 c->peer);
}

/* What hooks see of the client of the request about to run. */
static void hook_identity(node_server_t *srv, node_client_t *cl)
{
    kvs_request_info_t *in = &srv->cmd.info;
    const char *user = srv->auth != NULL ? kvs_auth_user_name(&cl->auth) : NULL;
    in->peer = cl->conn.peer;
    in->identity = user != NULL ? user : "";
    in->conn_id = cl->id;
    in->received_ns = cl->conn.read_ns; /* noted once per read by kvs_conn */
}

/* The peer of `cl` closed (or reset) the connection before this worker
 * read the writes it had sent: it gave up on them. A router does so when
 * a worker leaves its requests unanswered for router.timeout (it was
 * stopped, or overloaded), answers the client 503 ("may or may not have
 * been applied"), and sends the client's next writes on, perhaps to
 * another replica, which acknowledges them. Running the abandoned writes
 * now would put them after those in the topic (or in LMDB) and undo
 * acknowledged writes, on every replica. So they are dropped with the
 * connection, unanswered (nobody is there to read an answer). */
/* Whether a line last logged at *last (uv_now; 0: never) may be logged
 * again now: at most every 10 s. Notes the time when it may. */
static int log_due(node_server_t *srv, uint64_t *last)
{
    uint64_t now = uv_now(srv->loop);
    if (*last != 0 && now - *last < 10000)
        return 0;
    *last = now;
    return 1;
}

static void drop_abandoned(node_server_t *srv, node_client_t *cl)
{
    if (log_due(srv, &srv->gone_log_ms)) {
        kvs_warn("%s closed its connection before this worker read the writes it had sent: "
                 "they are not run (the sender answered them as unavailable; logged at most "
                 "every 10 s)",
                 cl->conn.peer);
    }
    kvs_conn_close(&cl->conn);
}

/* The end of a run of frames: the next run's first write checks its peer
 * again. */
static void on_delivered(kvs_conn_t *c)
{
    node_client_t *cl = c->data;
    cl->peer_checked_ns = 0;
}

static void on_ack(node_server_t *srv, node_client_t *cl, const uint8_t *payload, size_t len);

/* node_wanted_fn: a write that has run PEER_RECHECK_NS or more (a hook, a
 * slow disk, the process stopped inside it) is asked whether its peer is
 * still there, as on_frame asks before it runs (one poll(2), only then):
 * a router that waited router.timeout for it answered it of unknown
 * outcome and dropped the link, and the connection's next writes may
 * have gone through another replica since. */
static int exec_wanted(void *arg)
{
    node_server_t *srv = arg;
    node_client_t *cl = srv->executing;
    if (cl == NULL || srv->exec_started_ns == 0)
        return 1;
    uint64_t ran = uv_hrtime() - srv->exec_started_ns;
    if (ran < PEER_RECHECK_NS || !kvs_conn_peer_gone(&cl->conn))
        return 1;
    if (log_due(srv, &srv->left_log_ms)) {
        kvs_warn("%s closed its connection while this worker ran a write it had sent (for %llu "
                 "ms): it is not sent to Kafka (the sender answered it as of unknown outcome; "
                 "logged at most every 10 s)",
                 cl->conn.peer, (unsigned long long)(ran / 1000000));
    }
    return 0;
}

static void on_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    node_client_t *cl = c->data;
    node_server_t *srv = cl->srv;
    node_slot_t *slot = NULL;
    if (cl->streaming) {
        if (cl->acking)
            on_ack(srv, cl, payload, len);
        return;
    }
    /* Before the first write of a run (the frames of one read), and again
     * before a later one once PEER_RECHECK_NS passed since: one poll(2),
     * paid by writes only. The worker may have hung on an earlier frame
     * of the run (a slow disk, a hook) for long enough that the router
     * gave up on the rest meanwhile. */
    srv->exec_started_ns = 0;
    if (kvs_msg_frame_writes(payload, len)) {
        uint64_t now = uv_hrtime();
        srv->exec_started_ns = now;
        if (cl->peer_checked_ns == 0 || now - cl->peer_checked_ns >= PEER_RECHECK_NS) {
            cl->peer_checked_ns = now;
            if (kvs_conn_peer_gone(c)) {
                drop_abandoned(srv, cl);
                return;
            }
        }
    }
    if (cl->head != NULL && (slot = slot_push(cl)) == NULL) {
        kvs_error("out of memory for an answer; closing the connection");
        kvs_conn_close(c);
        return;
    }
    kvs_buf_t *out = slot != NULL ? &slot->buf : &c->out;
    size_t before = out->len;
    srv->executing = cl;
    srv->exec_slot = slot;
    srv->exec_deferred = 0;
    srv->cmd.who = srv->auth != NULL ? &cl->auth : NULL;
    hook_identity(srv, cl);
    int rc = node_cmd_frame(&srv->cmd, payload, len, out);
    exec_fail_t fail = take_exec_fail(srv);
    if (cl->streaming) { /* Snapshot took the connection: nothing else is answered on it */
        srv->executing = NULL;
        srv->exec_slot = NULL;
        return;
    }
    slot = srv->exec_slot;
    int deferred = srv->exec_deferred;
    srv->executing = NULL;
    srv->exec_slot = NULL;
    if (rc != 0) {
        kvs_error("cannot build a response (%s); closing the connection", kvs_strerror(rc));
        kvs_conn_close(c);
        return;
    }
    if (slot != NULL && (deferred || send_events_wanted(srv))) {
        rec_fill(&slot->rec, &srv->cmd.info); /* EXECUTED (if deferred) and the send events */
        slot->has_rec = 1;
        slot->executed = !deferred;
    } else if (slot == NULL && send_events_wanted(srv)) {
        keep_record(srv, &srv->cmd.info);
    }
    if (deferred) {
        /* No answer yet; but a batch that failed while it ran may hold
         * earlier answers of this client. */
        if (fail.gen != 0 && has_gen(cl, fail.gen))
            rewrite_failed(cl, fail.gen, fail.err, cl->mark, 0);
        return;
    }
    if (slot != NULL)
        slot_finish(slot);
    track_batch(cl, slot, before, fail);
    if (slot == NULL && cl->auth_close) /* Auth failed once too often */
        kvs_conn_close_after_flush(c);
    else if (slot == NULL)
        kvs_conn_queue(c);
}

static void on_conn_error(kvs_conn_t *c, int err)
{
    node_client_t *cl = c->data;
    /* Answers still owed (a Digest from its thread, a write waiting for
     * Kafka...) go first, in request order: the error's answer takes a
     * slot behind them, and the connection closes once they are out. At
     * the end of its input (a client that shut down its sending side) the
     * owed answers still go out, then EOF. A broken TLS stream cannot
     * carry them. */
    if (cl->head != NULL && err == KVS_ECLOSED) {
        cl->error_close = 1;
        return;
    }
    int answered = err == KVS_ETOOBIG || err == KVS_EPROTO || err == KVS_ELIMIT ||
                   err == KVS_ENOTLS || err == KVS_ETLSHELLO;
    node_slot_t *slot = NULL;
    if (cl->head != NULL && answered && (slot = slot_push(cl)) == NULL) {
        kvs_error("out of memory for an answer; closing the connection");
        kvs_conn_close(c);
        return;
    }
    kvs_buf_t *out = slot != NULL ? &slot->buf : &c->out;
    if (err == KVS_ETOOBIG && c->dec.max < cl->srv->max_frame) { /* client_frame_limit */
        kvs_msg_append_status(out, KVS_STATUS_UNAUTHENTICATED,
                              "frame of %u bytes from a client that has not authenticated, "
                              "whose requests may be at most %u bytes: authenticate first (Auth, "
                              "or a client certificate that names a user); the connection is "
                              "closed",
                              c->dec.bad_len, c->dec.max);
    } else if (err == KVS_ETOOBIG) {
        if (kvs_conn_may_log(c))
            kvs_warn("client %s sent a frame header announcing %u bytes (limits.max_frame is "
                     "%u); closing it",
                     c->peer, c->dec.bad_len, cl->srv->max_frame);
        kvs_msg_append_status(out, KVS_STATUS_TOO_LARGE,
                              "frame of %u bytes exceeds limits.max_frame (%u bytes); the "
                              "connection is closed",
                              c->dec.bad_len, cl->srv->max_frame);
    } else if (err == KVS_EPROTO) {
        kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                              "compressed frames are not supported (header bit 31 set); the "
                              "connection is closed");
    } else if (err == KVS_ELIMIT) {
        kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                              "the server is short of memory for incomplete requests "
                              "(limits.input_buffers); the connection is closed, retry");
    } else if (err == KVS_ENOTLS) { /* sent in the clear: the client speaks plaintext */
        kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                              "this port requires TLS (tls.node); connect with TLS and a client "
                              "certificate");
    } else if (err == KVS_ETLSHELLO) {
        kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                              "this port does not use TLS; connect without TLS");
    }
    if (slot != NULL) {
        cl->error_close = 1;
        slot_finish(slot);
        return;
    }
    kvs_conn_close_after_flush(c); /* after the turn's commit, via the flusher */
}

static void maybe_stopped(node_server_t *srv);

static void on_conn_closed(kvs_conn_t *c)
{
    node_client_t *cl = c->data;
    node_server_t *srv = cl->srv;
    kvs_unproven_closed(&srv->unproven[cl->listener], c);
    kvs_auth_conn_close(&cl->auth); /* a token check in flight is cancelled: */
    if (cl->auth_slot != NULL) {    /* its slot will never be answered */
        cl->auth_slot->deferred = 0;
        cl->auth_slot = NULL;
    }
    if (cl->streaming)
        node_snapshot_gone(srv->snapshot, c);
    if (cl->on_batch_list)
        batch_list_remove(srv, cl);
    if (cl->on_ready_list)
        ready_list_remove(srv, cl);
    if (cl->on_resume_list)
        resume_list_remove(srv, cl);
    for (node_slot_t *sl = cl->head, *next; sl != NULL; sl = next) {
        next = sl->next;
        if (sl->done || !sl->deferred)
            slot_free(sl);
        else
            sl->cl = NULL; /* freed by node_slot_done */
    }
    kvs_list_remove(&cl->link);
    srv->n_clients--;
    srv->listener_clients[cl->listener]--;
    free(cl);
    maybe_stopped(srv);
}

/* The most clients `server` takes at once: limits.max_clients (lowered to
 * fit the descriptor limit), and on a unix socket never fewer than
 * NODE_OWN_CLIENTS. */
static uint32_t listener_cap(const node_server_t *srv, const uv_stream_t *server)
{
    if (server->type == UV_NAMED_PIPE && srv->max_clients < NODE_OWN_CLIENTS)
        return NODE_OWN_CLIENTS;
    return srv->max_clients;
}

/* At its cap on this listener: accept only to say why. */
static void refuse_client(node_server_t *srv, uv_stream_t *server, int li)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    uint32_t cap = listener_cap(srv, server);
    if (kvs_msg_append_status(&b, KVS_STATUS_UNAVAILABLE,
                              cap == srv->max_clients
                                  ? "too many clients (limits.max_clients = %u); retry later"
                                  : "too many clients on this worker's own socket (%u at once); "
                                    "close some and retry",
                              cap) != 0)
        b.len = 0; /* no memory for the reason: refused all the same */
    kvs_conn_refuse(server, srv->listener_tls[li] != NULL || b.len == 0 ? NULL : b.data, b.len);
    kvs_buf_free(&b);
    uint64_t now = uv_now(srv->loop);
    if (srv->refused_log_ms == 0 || now - srv->refused_log_ms >= 10000) {
        srv->refused_log_ms = now;
        if (cap == srv->max_clients)
            kvs_warn("refusing clients: limits.max_clients (%u) reached on a listener (logged "
                     "at most every 10 s)",
                     cap);
        else
            kvs_warn("refusing clients of my own socket: %u connected at once (logged at most "
                     "every 10 s)",
                     cap);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    node_server_t *srv = server->data;
    if (status != 0) {
        kvs_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    int li = server == &srv->listeners[1].stream ? 1 : 0;
    if (srv->listener_clients[li] - srv->unproven[li].evicting >= listener_cap(srv, server) &&
        !kvs_unproven_evict(&srv->unproven[li], auth_spared, KVS_AUTH_SPARED)) {
        refuse_client(srv, server, li);
        return;
    }
    node_client_t *cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        kvs_error("out of memory accepting a client; closing it");
        kvs_conn_refuse(server, NULL, 0); /* or the listener stops accepting */
        return;
    }
    cl->srv = srv;
    cl->id = ++srv->next_client_id;
    cl->listener = li;
    srv->listener_clients[li]++;
    int is_unix = server->type == UV_NAMED_PIPE;
    kvs_conn_init(&cl->conn, srv->loop, is_unix, srv->max_frame, on_frame, on_conn_error,
                  on_conn_closed);
    cl->conn.data = cl;
    cl->conn.flusher = &srv->flusher;
    cl->conn.on_ready = on_tls_ready;
    cl->conn.on_delivered = on_delivered;
    cl->conn.stamp_reads = 1;
    kvs_conn_join(&cl->conn, &srv->groups[li]);
    kvs_list_push_front(&srv->clients, &cl->link);
    srv->n_clients++;
    int rc = kvs_conn_accept_tls(&cl->conn, server, srv->listener_tls[li]);
    /* Unix socket peers are the node's own user; tokens only where nobody can overhear them. */
    kvs_auth_conn_init(&cl->auth, is_unix,
                       srv->listener_tls[li] != NULL || kvs_conn_peer_is_local(&cl->conn));
    client_frame_limit(cl); /* before its first read (a callback to come) */
    if (rc != 0) {
        kvs_warn("accept failed: %s", kvs_strerror(rc));
        kvs_conn_close(&cl->conn);
    }
}

/* ---- sync timer (storage.sync: batch) -------------------------------------- */

static void on_sync_timer(uv_timer_t *t)
{
    node_server_t *srv = t->data;
    int rc = node_store_sync(srv->store);
    /* a full disk fails it every interval until room is made */
    if (rc != 0 && kvs_log_budget_take(&srv->batch_errs, uv_now(srv->loop)))
        kvs_error("periodic sync failed: %s", kvs_strerror(rc));
}

/* ---- operations ----------------------------------------------------------------- */

/* The built-in metrics hook (EXECUTED): one counter, one histogram. */
static uint32_t metrics_hook(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                             char *msg, size_t msglen)
{
    node_server_t *srv = state;
    (void)ev;
    (void)msg;
    (void)msglen;
    kvs_req_metrics_count(&srv->reqm, req->command, req->status, req->now_ns - req->received_ns);
    return 0;
}

/* Builds the chain: metrics, the slow log when on, then the plugins. */
static void build_chain(node_server_t *srv)
{
    kvs_hook_chain_init(&srv->chain);
    kvs_hook_add(&srv->chain, KVS_HOOK_MASK(KVS_HOOK_EXECUTED), metrics_hook, srv, 0);
    if (kvs_slowlog_on(&srv->slowlog))
        kvs_hook_add(&srv->chain, KVS_HOOK_MASK(KVS_HOOK_EXECUTED), kvs_slowlog_hook, &srv->slowlog,
                     0);
    if (kvs_plugins_attach(srv->plugins, &srv->chain) != 0)
        kvs_warn("the request hook chain is full: some plugin hooks are left out");
}

static void store_metrics(node_server_t *srv, kvs_mb_t *b)
{
    node_store_stats_t st;
    const char *sh = srv->shard_label;
    node_store_stats(srv->store, &st);
    static const struct {
        const char *name, *help;
    } gauges[] = {
        {"kvs_lmdb_map_size_bytes", "Size of the LMDB map (address space, not disk), bytes."},
        {"kvs_lmdb_page_size_bytes", "LMDB page size, bytes."},
        {"kvs_lmdb_pages_used", "Pages of the LMDB data file in use (last page number + 1)."},
        {"kvs_lmdb_readers", "LMDB reader slots in use."},
        {"kvs_lmdb_max_readers", "LMDB reader slots."},
        {"kvs_lmdb_tables", "Tables (named LMDB databases) in the shard."},
    };
    double v[] = {(double)st.map_size, (double)st.page_size,   (double)st.pages_used,
                  (double)st.readers,  (double)st.max_readers, (double)st.tables};
    for (size_t i = 0; i < sizeof(gauges) / sizeof(gauges[0]); i++)
        kvs_mb_sample(
            b, kvs_mb_family(b, gauges[i].name, KVS__METRIC_FAMILY__TYPE__GAUGE, gauges[i].help),
            v[i], 1, "shard", sh);
    kvs_mb_hist(b,
                kvs_mb_family(b, "kvs_commit_batch_writes", KVS__METRIC_FAMILY__TYPE__HISTOGRAM,
                              "Writes per committed group-commit batch (client writes and Kafka "
                              "records with their offsets)."),
                st.batch_writes, node_store_batch_bounds, NODE_BATCH_BUCKETS, 1, 1, "shard", sh);
    kvs_mb_hist(b,
                kvs_mb_family(b, "kvs_commit_duration_seconds", KVS__METRIC_FAMILY__TYPE__HISTOGRAM,
                              "Time an LMDB commit of a batch took (its disk sync included)."),
                st.commit_ns, kvs_latency_bounds_ns, KVS_LATENCY_BUCKETS, 1e-9, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_commit_failures_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Batches that failed to commit or were aborted (their requests "
                                "were answered with errors)."),
                  (double)st.failed_batches, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_commit_recommits_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Commits anew (storage.sync batch) so that a new meta page is "
                                "synced after a failed commit or sync left none."),
                  (double)st.recommits, 1, "shard", sh);
}

static void conn_metrics(node_server_t *srv, kvs_mb_t *b)
{
    const char *sh = srv->shard_label;
    uint64_t joined = 0, in = 0, out = 0, evicted = 0, owed = 0, out_evicted = 0;
    for (int i = 0; i < 2; i++) {
        evicted += srv->unproven[i].evicted;
        joined += srv->groups[i].joined;
        in += srv->groups[i].bytes_in;
        out += srv->groups[i].bytes_out;
        owed += srv->groups[i].output_used;
        out_evicted += srv->groups[i].output_evicted;
    }
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_connections", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                "Connections open to the worker (the router's links included)."),
                  (double)srv->n_clients, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_connections_accepted_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Connections the worker accepted."),
                  (double)joined, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_connections_evicted_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Connections that had not authenticated, closed at "
                                "limits.max_clients to make room for a new one."),
                  (double)evicted, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_received_bytes_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Bytes the worker read from its connections."),
                  (double)in, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_sent_bytes_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Bytes the worker wrote to its connections."),
                  (double)out, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_output_bytes", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                "Memory the answers of the worker's connections take together "
                                "(its TCP port's brought within limits.output_buffers at each "
                                "loop turn's end)."),
                  (double)owed, 1, "shard", sh);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_worker_output_evictions_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Connections to the TCP port closed, their answers taking the "
                                "most, because all of theirs together passed "
                                "limits.output_buffers."),
                  (double)out_evicted, 1, "shard", sh);
}

/* node_cmd's Metrics: every family of this worker. */
static void server_metrics(void *arg, kvs_mb_t *b)
{
    node_server_t *srv = arg;
    const char *labels[] = {"shard", srv->shard_label};
    const char *process[] = {"role", "node", "shard", srv->shard_label};
    kvs_mb_requests(b, &srv->reqm, "kvs_worker_", "a worker executed (its service time)", 1,
                    labels);
    conn_metrics(srv, b);
    store_metrics(srv, b);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_shard_replicas", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                "Copies of the shard in the cluster (cluster.nodes; 1 without "
                                "replicas), this worker's included."),
                  (double)srv->cmd.replicas, 1, "shard", srv->shard_label);
    if (srv->cmd.ingest != NULL)
        node_ingest_metrics(srv->cmd.ingest, b, srv->shard_label);
    Kvs__MetricFamily *f =
        kvs_mb_family(b, "kvs_config_reloads_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Configuration reloads (SIGHUP) by result: ok, error (the file did not "
                      "load), refused (a key that cannot change live changed).");
    static const char *const results[] = {"ok", "error", "refused"};
    for (int i = 0; i < 3; i++)
        kvs_mb_sample(b, f, (double)srv->reloads[i], 3, "role", "node", "shard", srv->shard_label,
                      "result", results[i]);
    kvs_tls_ctx_t *tls = NULL; /* tls.node: the TCP listeners' (they share it) */
    for (int i = 0; i < srv->n_listeners && tls == NULL; i++)
        tls = srv->listener_tls[i];
    kvs_mb_tls_reloads(b, &tls, 1, "node", "shard", srv->shard_label);
    kvs_mb_process(b, srv->start_time, 2, process);
}

void node_server_count_reload(node_server_t *srv, const char *result)
{
    int i = strcmp(result, "ok") == 0 ? 0 : strcmp(result, "error") == 0 ? 1 : 2;
    srv->reloads[i]++;
}

/* Listener i's limits: `all`, but a unix socket's connections (the
 * node's own router processes' links, the master's scrapes, the local
 * tools: the node's own user) share no output budget, as the router's
 * private socket does not: a link carries many clients' answers and
 * always reads, and is never one to close for them. */
static kvs_conn_limits_t listener_limits(const node_server_t *srv, int i,
                                         const kvs_conn_limits_t *all)
{
    kvs_conn_limits_t l = *all;
    if (srv->unix_listener[i])
        l.output_budget = 0;
    return l;
}

int node_server_reload(node_server_t *srv, const kvs_config_t *cfg)
{
    kvs_conn_limits_t limits;
    if (kvs_slowlog_configure(&srv->slowlog, cfg->slow_threshold_ms, cfg->slow_max) != 0)
        return -ENOMEM;
    build_chain(srv);
    kvs_conn_limits_from_config(&limits, cfg);
    limits.idle_timeout_ms = 0; /* as at start (node_server_start says why) */
    for (int i = 0; i < 2; i++) {
        kvs_conn_limits_t l = listener_limits(srv, i, &limits);
        kvs_conn_group_set_limits(&srv->groups[i], &l);
    }
    srv->max_clients =
        kvs_conn_max_clients(cfg->max_clients, (unsigned)srv->n_listeners, NODE_FD_RESERVE);
    /* Only a changed interval touches the timer, and the next sync stays
     * no later than it was due: restarting it at every reload put the
     * sync a whole interval off each time, so reloads more frequent than
     * storage.sync_interval kept the last commit's meta page unsynced
     * for as long as they went on. */
    uint64_t every = cfg->sync_interval_ms;
    if (srv->sync_timer_on && cfg->sync == KVS_SYNC_BATCH &&
        uv_timer_get_repeat(&srv->sync_timer) != every) {
        uint64_t due = uv_timer_get_due_in(&srv->sync_timer);
        uv_timer_start(&srv->sync_timer, on_sync_timer, due < every ? due : every, every);
    }
    srv->cmd.replicas = kvs_config_replica_count(cfg, srv->cmd.shard); /* cluster.nodes is live */
    if (srv->handoff != NULL)
        node_handoff_update(srv->handoff, cfg);
    return 0;
}

/* ---- start / stop -------------------------------------------------------------- */

static int add_listener(node_server_t *srv, const kvs_addr_t *a, kvs_tls_ctx_t *tls)
{
    char text[160];
    kvs_listener_t *l = &srv->listeners[srv->n_listeners];
    srv->listener_tls[srv->n_listeners] = a->is_unix ? NULL : tls;
    int rc = kvs_listen(srv->loop, a, l, on_connection);
    if (rc != 0) {
        kvs_error("cannot listen on %s: %s", kvs_addr_format(a, text, sizeof(text)),
                  uv_strerror(rc));
        return rc;
    }
    l->handle.data = srv;
    srv->n_listeners++;
    kvs_info("listening on %s%s", kvs_addr_format(a, text, sizeof(text)),
             srv->listener_tls[srv->n_listeners - 1] ? " (TLS)" : "");
    if (!a->is_unix && tls == NULL && srv->auth == NULL && !kvs_addr_is_loopback(a))
        kvs_warn("%s is not a loopback address, clients connect without TLS and no users are "
                 "configured: anyone who can reach it can read and write this shard (see README, "
                 "Security)",
                 text);
    else if (!a->is_unix && tls == NULL && !kvs_addr_is_loopback(a))
        kvs_warn("%s is not a loopback address and clients connect without TLS: other hosts "
                 "cannot authenticate (routers of other nodes included); enable tls.node",
                 text);
    return 0;
}

int node_server_start(const node_server_opts_t *o, node_server_t **out)
{
    node_server_t *srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return -ENOMEM;
    srv->loop = o->loop;
    kvs_list_init(&srv->clients);
    kvs_unproven_init(&srv->unproven[0]);
    kvs_unproven_init(&srv->unproven[1]);
    kvs_log_budget_init(&srv->batch_errs, "lines about failed write batches and syncs",
                        KVS_LOG_PEER_LINES, KVS_LOG_PEER_WINDOW_MS);
    srv->store = o->store;
    srv->max_frame = o->max_frame;
    srv->ack_wait_ms = ACK_WAIT_MS;
    if (kvs_test_hook_u64("KVS_TEST_SNAPSHOT_ACK_WAIT_MS", &srv->ack_wait_ms)) {
        if (srv->ack_wait_ms == 0)
            srv->ack_wait_ms = 1; /* 0 would take the deadline away */
        kvs_warn("test hook: a snapshot's receiver has %llu ms to acknowledge it "
                 "(KVS_TEST_SNAPSHOT_ACK_WAIT_MS)",
                 (unsigned long long)srv->ack_wait_ms);
    }
    int whole = srv->ack_wait_ms % 1000 == 0;
    snprintf(srv->ack_why, sizeof(srv->ack_why),
             "its snapshot stream was all written %llu %s ago and it has not acknowledged the "
             "copy on it (an acknowledgement on a connection of its own still counts)",
             (unsigned long long)(whole ? srv->ack_wait_ms / 1000 : srv->ack_wait_ms),
             whole ? "s" : "ms");
    srv->cmd.store = o->store;
    srv->cmd.max_frame = o->max_frame;
    srv->cmd.max_tables = o->max_tables;
    srv->cmd.max_keys = o->limits != NULL ? o->limits->max_keys : 0;
    srv->cmd.shard = o->shard;
    srv->cmd.defer = defer_current;
    srv->cmd.wanted = exec_wanted;
    srv->cmd.defer_arg = srv;
    srv->cmd.cfg = o->limits;
    srv->auth = o->auth;
    if (o->auth != NULL) {
        srv->cmd.on_auth = node_auth;
        srv->cmd.auth_arg = srv;
    }
    srv->cmd.replicas = kvs_config_replica_count(o->limits, o->shard);
    kvs_arena_init(&srv->cmd.arena);
    srv->plugins = o->plugins;
    srv->start_time = kvs_metrics_unix_now();
    snprintf(srv->shard_label, sizeof(srv->shard_label), "%u", o->shard);
    kvs_slowlog_init(&srv->slowlog);
    if (kvs_slowlog_configure(&srv->slowlog, o->limits->slow_threshold_ms, o->limits->slow_max) !=
        0) {
        free(srv);
        return -ENOMEM;
    }
    build_chain(srv);
    srv->cmd.hooks = &srv->chain;
    srv->cmd.slowlog = &srv->slowlog;
    srv->cmd.metrics = server_metrics;
    srv->cmd.metrics_arg = srv;
    srv->max_clients =
        kvs_conn_max_clients(o->limits->max_clients, (unsigned)o->n_addrs, NODE_FD_RESERVE);
    kvs_conn_limits_t limits;
    kvs_conn_limits_from_config(&limits, o->limits);
    /* A router's link to its workers is idle whenever its clients are: an
     * idle timeout here would only break links. And each listener has its
     * own input budget, so clients of the TCP listener cannot starve the
     * local router's link on the unix socket. */
    limits.idle_timeout_ms = 0;
    uv_timer_init(o->loop, &srv->resume_timer);
    srv->resume_timer.data = srv;
    uv_idle_init(o->loop, &srv->kick);
    srv->kick.data = srv;
    int rc = kvs_flusher_init(&srv->flusher, o->loop, on_turn_end, srv);
    srv->flusher.after = on_flushed;
    for (size_t i = 0; i < o->n_addrs && i < 2; i++)
        srv->unix_listener[i] = o->addrs[i].is_unix;
    for (int i = 0; rc == 0 && i < 2; i++) {
        kvs_conn_limits_t l = listener_limits(srv, i, &limits);
        rc = kvs_conn_group_init(&srv->groups[i], o->loop, &l, "client");
        if (rc == 0 && srv->unix_listener[i])
            kvs_conn_group_drain_past_limit(&srv->groups[i]); /* links survive a reload */
    }
    for (size_t i = 0; rc == 0 && i < o->n_addrs && i < 2; i++)
        rc = add_listener(srv, &o->addrs[i], o->tls);
    if (rc == 0 && o->sync_interval_ms > 0) {
        uv_timer_init(o->loop, &srv->sync_timer);
        srv->sync_timer.data = srv;
        uv_timer_start(&srv->sync_timer, on_sync_timer, o->sync_interval_ms, o->sync_interval_ms);
        srv->sync_timer_on = 1;
    }
    if (rc != 0) {
        /* Handles already open are closed by the caller's loop teardown. */
        return rc;
    }
    if (srv->store != NULL) /* a batch opened in a timer commits at once */
        node_store_set_wake(srv->store, wake_flusher, &srv->flusher);
    *out = srv;
    return 0;
}

void node_server_set_ingest(node_server_t *srv, node_ingest_t *ingest, node_server_turn_cb cb,
                            void *arg)
{
    srv->cmd.ingest = ingest;
    srv->turn_cb = cb;
    srv->turn_arg = arg;
}

void node_server_set_reads(node_server_t *srv, node_reads_t *reads)
{
    srv->cmd.reads = reads;
}

void node_server_set_writes(node_server_t *srv, node_writes_t *writes)
{
    srv->cmd.writes = writes;
}

void node_server_set_digest(node_server_t *srv, node_digest_t *digest)
{
    srv->cmd.digest = digest;
}

/* A Snapshot.installed on a connection of its own: a receiver saying
 * again that it installed a copy this worker sent (node_ack), since it
 * cannot tell whether the stream's acknowledgement arrived. */
static int reack(node_server_t *srv, const Kvs__Snapshot *req, kvs_buf_t *out)
{
    if (req->installed.len != KVS_HASH_LEN || !kvs_copied_name_ok(req->node))
        return kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                                     "Snapshot.installed takes a node's name and the %d-byte "
                                     "checksum its copy ended with",
                                     KVS_HASH_LEN);
    if (srv->handoff == NULL)
        return kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE, "Snapshot is not available here");
    int rc = node_handoff_reack(srv->handoff, req->node, req->installed.data);
    if (rc == -ENOENT)
        return kvs_msg_append_status(out, KVS_STATUS_NOT_FOUND,
                                     "shard %u has no record of a copy with this checksum sent "
                                     "to node %s under the fence that stands (none stands, or "
                                     "it is another's): nothing to acknowledge",
                                     srv->cmd.shard, req->node);
    if (rc != 0)
        return kvs_msg_append_status(out, KVS_STATUS_INTERNAL,
                                     "cannot record node %s as holding a copy of shard %u: %s",
                                     req->node, srv->cmd.shard, kvs_strerror(rc));
    return kvs_msg_append_status(out, KVS_STATUS_OK,
                                 "node %s is recorded as holding a copy of shard %u", req->node,
                                 srv->cmd.shard);
}

/* node_cmd's Snapshot hook: the client that asked becomes the stream's
 * receiver, if the request is alone on its connection. */
static int take_snapshot(void *arg, const Kvs__Snapshot *req, kvs_buf_t *out)
{
    node_server_t *srv = arg;
    node_client_t *cl = srv->executing;
    if (req->installed.len > 0)
        return reack(srv, req, out);
    if (cl == NULL || srv->snapshot == NULL)
        return kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE, "Snapshot is not available here");
    if (cl->head != NULL || srv->exec_slot != NULL || kvs_conn_has_frame(&cl->conn) ||
        kvs_conn_backlog(&cl->conn) > 0 || out->len > 0)
        return kvs_msg_append_status(out, KVS_STATUS_BAD_REQUEST,
                                     "Snapshot must be alone on its connection (the stream "
                                     "takes it over): open a connection for it");
    /* The fence first, then the copy: node_snapshot starts it after this
     * turn's commit, so every write of an unbound table acknowledged here
     * is in it, and none comes after (node_handoff). */
    int raised = 0;
    /* Only a node can take the shard over, and a node names itself (even
     * to one that runs no map yet: a move onto a map starts there): a copy
     * asked for without a name (a backup, kvs-cli) is no move, and no map
     * would ever lift a fence raised for it. */
    if (srv->handoff != NULL && !node_snapshot_busy(srv->snapshot) && srv->cmd.cfg != NULL &&
        kvs_copied_name_ok(req->node)) {
        int rc = node_handoff_fence(srv->handoff, cl->conn.peer, srv->cmd.cfg, &raised);
        if (rc != 0)
            return kvs_msg_append_status(out, KVS_STATUS_INTERNAL,
                                         "cannot record the snapshot of shard %u before sending "
                                         "it: %s",
                                         srv->cmd.shard, kvs_strerror(rc));
    }
    /* A node of the map acknowledges its copy once installed (kvs.proto):
     * only then is it recorded as holding one. */
    int keep = srv->handoff != NULL && kvs_copied_name_ok(req->node);
    int rc = node_snapshot_start(srv->snapshot, &cl->conn, keep, out);
    if (rc != 0 && raised)
        node_handoff_unfence(srv->handoff); /* not sent */
    if (rc == 0)                    /* this snapshot's: snapshot_done lowers it if not delivered */
        srv->fence_raised = raised; /* (not a refusal's: one snapshot may be in flight) */
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (keep) {
        snprintf(cl->ack_node, sizeof(cl->ack_node), "%s", req->node);
        cl->ack_mark = node_handoff_mark(srv->handoff);
    }
    cl->streaming = 1;
    kvs_conn_pause(&cl->conn);
    kvs_flusher_wake(&srv->flusher); /* the turn's end starts the copy */
    return 0;
}

/* node_snapshot's end: a fence raised for a snapshot that was not
 * delivered comes down (no copy exists). A delivered one's receiver, a
 * node, is heard once more: its acknowledgement (on_ack), within
 * ACK_WAIT_MS. */
static void snapshot_done(void *arg, kvs_conn_t *kept, const uint8_t *delivered)
{
    node_server_t *srv = arg;
    if (srv->fence_raised && delivered == NULL)
        node_handoff_unfence(srv->handoff);
    srv->fence_raised = 0;
    if (kept != NULL) {
        node_client_t *cl = kept->data;
        cl->acking = 1;
        memcpy(cl->ack_hash, delivered, KVS_HASH_LEN);
        node_handoff_sent(srv->handoff, cl->ack_node, delivered, cl->ack_mark);
        kvs_conn_set_deadline(kept, srv->ack_wait_ms, srv->ack_why);
        kvs_conn_resume(kept);
    }
}

/* A frame from a receiver whose stream ended: its acknowledgement that
 * the copy is installed records its node (node_handoff_copied); the
 * connection has served its purpose either way. */
static void on_ack(node_server_t *srv, node_client_t *cl, const uint8_t *payload, size_t len)
{
    Kvs__CommandRequest *q = kvs__command_request__unpack(NULL, len, payload);
    if (q != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT &&
        q->snapshot->installed.len == KVS_HASH_LEN &&
        memcmp(q->snapshot->installed.data, cl->ack_hash, KVS_HASH_LEN) == 0 &&
        strcmp(q->snapshot->node, cl->ack_node) == 0)
        node_handoff_copied(srv->handoff, cl->ack_node, cl->ack_mark);
    else
        kvs_warn("%s: its snapshot stream ended, and it sent something other than the copy's "
                 "acknowledgement: closed, node %s not recorded",
                 cl->conn.peer, cl->ack_node);
    kvs__command_request__free_unpacked(q, NULL);
    cl->acking = 0;
    /* The stream's last frames may still be queued (a receiver that sent
     * its frame early is read in the turn the stream ended): they are
     * owed, so they go out before the connection closes. */
    kvs_conn_close_after_flush(&cl->conn);
}

void node_server_set_snapshot(node_server_t *srv, node_snapshot_t *sn, node_handoff_t *handoff)
{
    srv->snapshot = sn;
    srv->handoff = handoff;
    srv->cmd.handoff = handoff;
    if (sn != NULL && handoff != NULL)
        node_snapshot_set_done(sn, snapshot_done, srv);
    srv->cmd.snapshot = sn != NULL ? take_snapshot : NULL;
    srv->cmd.snapshot_arg = srv;
}

int node_server_execute(void *arg, const uint8_t *payload, size_t len, kvs_buf_t *out)
{
    node_server_t *srv = arg;
    return node_cmd_frame_ungated(&srv->cmd, payload, len, out);
}

void node_server_fail_cb(void *arg, uint64_t gen, int err)
{
    on_batch_failed(arg, gen, err);
}

static void on_handle_closed(uv_handle_t *h)
{
    node_server_t *srv = h->data;
    if (--srv->closing_handles == 0 && srv->on_stopped != NULL)
        srv->on_stopped(srv->stopped_arg);
}

static void close_handle(node_server_t *srv, uv_handle_t *h)
{
    h->data = srv;
    srv->closing_handles++;
    uv_close(h, on_handle_closed);
}

/* kvs_flusher_close's callback: its handle's data is the flusher. */
static void on_flusher_closed(uv_handle_t *h)
{
    kvs_flusher_t *f = h->data;
    h->data = f->data;
    on_handle_closed(h);
}

static void maybe_stopped(node_server_t *srv)
{
    if (!srv->stopping || srv->n_clients > 0 || srv->closing_handles > 0)
        return;
    node_store_end_turn(srv->store);
    srv->closing_handles++;
    kvs_flusher_close(&srv->flusher, on_flusher_closed); /* its check and idle handles */
    for (int i = 0; i < 2; i++) {
        uv_timer_stop(&srv->groups[i].sweep);
        close_handle(srv, (uv_handle_t *)&srv->groups[i].sweep);
    }
    close_handle(srv, (uv_handle_t *)&srv->resume_timer);
    close_handle(srv, (uv_handle_t *)&srv->kick);
    if (srv->sync_timer_on)
        close_handle(srv, (uv_handle_t *)&srv->sync_timer);
}

void node_server_stop(node_server_t *srv, node_server_stopped_cb cb, void *arg)
{
    if (srv->stopping)
        return;
    srv->stopping = 1;
    srv->on_stopped = cb;
    srv->stopped_arg = arg;
    for (int i = 0; i < srv->n_listeners; i++)
        uv_close(&srv->listeners[i].handle, NULL);
    srv->n_listeners = 0;
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &srv->clients)
    {
        node_client_t *cl = KVS_LIST_ENTRY(pos, node_client_t, link);
        if (cl->streaming)
            kvs_conn_close(&cl->conn); /* a snapshot is not worth the wait */
        else if (cl->head == NULL)
            kvs_conn_close_after_flush(&cl->conn);
        else
            kvs_conn_stop_reading(&cl->conn); /* closed once its answers are out */
    }
    kvs_info("shutting down: %zu client(s) draining", srv->n_clients);
    maybe_stopped(srv);
}

void node_server_free(node_server_t *srv)
{
    if (srv == NULL)
        return;
    kvs_arena_close(&srv->cmd.arena);
    kvs_slowlog_free(&srv->slowlog);
    free(srv->recs);
    free(srv);
}

size_t node_server_clients(const node_server_t *srv)
{
    return srv->n_clients;
}

void node_server_abort_clients(node_server_t *srv)
{
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &srv->clients)
    {
        kvs_conn_close(&KVS_LIST_ENTRY(pos, node_client_t, link)->conn);
    }
}
